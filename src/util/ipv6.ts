// IPv6 addresses as text and as the 16 bytes the wire carries (RFC 4291 section 2.2 in,
// RFC 5952 out), and the few address facts the DHCPv6 and RA code needs.

/** Parses an IPv6 address (a "%zone" suffix is ignored); throws on anything else. */
export function ipv6ToBytes(text: string): Buffer {
  const address = text.split("%")[0]!;
  const fail = () => new Error(`IPv6 ${JSON.stringify(text)}: not an IPv6 address`);
  if (!/^[0-9a-fA-F:.]+$/.test(address)) throw fail();
  const halves = address.split("::");
  if (halves.length > 2) throw fail();
  const groups = (part: string): number[] => {
    if (part === "") return [];
    const out: number[] = [];
    const pieces = part.split(":");
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i]!;
      if (i === pieces.length - 1 && p.includes(".")) {
        const octets = p.split(".");
        if (octets.length !== 4 || octets.some((o) => !/^\d{1,3}$/.test(o) || Number(o) > 255)) {
          throw fail();
        }
        const [a, b, c, d] = octets.map(Number) as [number, number, number, number];
        out.push((a << 8) | b, (c << 8) | d);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(p)) throw fail();
        out.push(Number.parseInt(p, 16));
      }
    }
    return out;
  };
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) throw fail();
  const all = [...head, ...new Array<number>(halves.length === 2 ? missing : 0).fill(0), ...tail];
  const out = Buffer.alloc(16);
  for (let i = 0; i < 8; i++) out.writeUInt16BE(all[i]!, i * 2);
  return out;
}

/** RFC 5952 text: lower case, the longest run of two or more zero groups as "::". */
export function bytesToIpv6(bytes: Buffer, offset = 0): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push(bytes.readUInt16BE(offset + i * 2));
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (list: number[]) => list.map((x) => x.toString(16)).join(":");
  if (best < 0) return hex(g);
  return `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

/** The canonical form of an address given as text. */
export function normalIpv6(text: string): string {
  return bytesToIpv6(ipv6ToBytes(text));
}

export function isIpv6(text: string): boolean {
  try {
    ipv6ToBytes(text);
    return true;
  } catch {
    return false;
  }
}

/** fe80::/10, for a well-formed address as text: the first group is fe80 to febf. */
export function isLinkLocal(text: string): boolean {
  return /^fe[89ab][0-9a-f]:/i.test(text);
}

/** Whether `address` lies in `prefix`/`prefixLength`. */
export function inPrefix6(address: string, prefix: string, prefixLength: number): boolean {
  const a = ipv6ToBytes(address);
  const p = ipv6ToBytes(prefix);
  for (let bit = 0; bit < prefixLength; bit++) {
    const mask = 0x80 >> (bit % 8);
    if ((a[bit >> 3]! & mask) !== (p[bit >> 3]! & mask)) return false;
  }
  return true;
}

/** The first `prefixLength` bits of `address`, the rest zero. */
export function prefixOf6(address: string, prefixLength: number): string {
  const a = ipv6ToBytes(address);
  for (let bit = prefixLength; bit < 128; bit++) a[bit >> 3]! &= ~(0x80 >> (bit % 8));
  return bytesToIpv6(a);
}

/** The MAC inside a modified EUI-64 interface id (RFC 4291 appendix A), if it is one. */
export function macFromEui64(text: string): string | undefined {
  const b = ipv6ToBytes(text);
  if (b[11] !== 0xff || b[12] !== 0xfe) return undefined;
  const mac = [b[8]! ^ 0x02, b[9]!, b[10]!, b[13]!, b[14]!, b[15]!];
  return mac.map((x) => x.toString(16).padStart(2, "0")).join(":");
}

/** fe80:: plus the modified EUI-64 of `mac`: the link-local the kernel gives a link. */
export function linkLocalOfMac(mac: string): string {
  const m = mac.split(":").map((h) => Number.parseInt(h, 16));
  const b = Buffer.alloc(16);
  b[0] = 0xfe;
  b[1] = 0x80;
  b.set([m[0]! ^ 0x02, m[1]!, m[2]!, 0xff, 0xfe, m[3]!, m[4]!, m[5]!], 8);
  return bytesToIpv6(b);
}
