// IP address arithmetic, pure: parsing and formatting both families, masks, and prefix
// membership. The one place vmlet does it (the guard, the DHCP codec, netlink, the guest
// view and the pod annotations all use it).

/** An IPv4 route as the guest is told it (DHCP option 121) and the netns holds it. */
export interface Ipv4Route {
  /** Destination network; "0.0.0.0" with prefixLength 0 for the default route. */
  dst: string;
  prefixLength: number;
  /** ON_LINK for a route on the link. */
  gateway: string;
}

/** The gateway of an on-link route. */
export const ON_LINK = "0.0.0.0";

/** An IPv4 address as an unsigned 32-bit number; throws naming the text when it is not one. */
export function ipv4ToUint32(ip: string): number {
  const parts = ip.split(".");
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) {
    throw new Error(`${JSON.stringify(ip)} is not an IPv4 address`);
  }
  return parts.reduce((n, p) => n * 256 + Number(p), 0);
}

export function uint32ToIpv4(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join(".");
}

/** The netmask of `bits` leading ones as a number; below 0 is 0, above 32 is all ones. */
export function maskOf(bits: number): number {
  return bits <= 0 ? 0 : bits >= 32 ? 0xffffffff : (0xffffffff << (32 - bits)) >>> 0;
}

/** A prefix length as the dotted mask DHCP option 1 carries: 24 → 255.255.255.0. */
export function prefixToMask(prefixLength: number): string {
  if (!Number.isInteger(prefixLength) || prefixLength < 0 || prefixLength > 32) {
    throw new Error(`prefix length ${prefixLength}: expected 0..32`);
  }
  return uint32ToIpv4(maskOf(prefixLength));
}

/** True when the IPv4 address `ip` lies in `network`/`prefixLength`. */
export function inIpv4Prefix(ip: string, network: string, prefixLength: number): boolean {
  const mask = maskOf(prefixLength);
  return (ipv4ToUint32(ip) & mask) >>> 0 === (ipv4ToUint32(network) & mask) >>> 0;
}

/** The four big-endian words of an IPv6 address (with :: and an embedded IPv4 tail). */
export function ipv6Words(address: string): number[] {
  let text = address;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const w = ipv4ToUint32(v4[1]);
    text = `${text.slice(0, -v4[1].length)}${(w >>> 16).toString(16)}:${(w & 0xffff).toString(16)}`;
  }
  const halves = text.split("::");
  if (halves.length > 2) throw new Error(`${JSON.stringify(address)}: two "::"`);
  const part = (s: string) => (s === "" ? [] : s.split(":"));
  const head = part(halves[0]);
  const tail = halves.length === 2 ? part(halves[1]) : [];
  const fill = 8 - head.length - tail.length;
  if ((halves.length === 2 && fill < 1) || (halves.length === 1 && fill !== 0)) {
    throw new Error(`${JSON.stringify(address)} is not an IPv6 address`);
  }
  const groups = [...head, ...new Array<string>(halves.length === 2 ? fill : 0).fill("0"), ...tail];
  if (groups.some((g) => !/^[0-9a-fA-F]{1,4}$/.test(g))) {
    throw new Error(`${JSON.stringify(address)} is not an IPv6 address`);
  }
  const n = groups.map((g) => Number.parseInt(g, 16));
  return [0, 1, 2, 3].map((i) => ((n[2 * i] << 16) | n[2 * i + 1]) >>> 0);
}

/** An address's words: one for IPv4, four for IPv6. */
export function ipWords(address: string): number[] {
  return address.includes(":") ? ipv6Words(address) : [ipv4ToUint32(address)];
}

/** True when no bit after the first `prefixLength` of the address is set. */
export function hostBitsClear(address: string, prefixLength: number): boolean {
  return ipWords(address).every((w, i) => (w & ~maskOf(prefixLength - 32 * i)) >>> 0 === 0);
}

/** An address in network order: 4 bytes for IPv4, 16 for IPv6. */
export function ipToBytes(address: string): Buffer {
  const words = ipWords(address);
  const out = Buffer.alloc(4 * words.length);
  for (const [i, w] of words.entries()) out.writeUInt32BE(w, 4 * i);
  return out;
}

/** 4 or 16 bytes in network order as text; IPv6 compressed as RFC 5952 asks. */
export function bytesToIp(buf: Buffer): string {
  if (buf.length === 4) return [...buf].join(".");
  const words: string[] = [];
  for (let i = 0; i < 16; i += 2) words.push(buf.readUInt16BE(i).toString(16));
  // The longest run of two or more zero groups becomes "::".
  let best = { start: -1, len: 0 };
  for (let i = 0; i < 8; ) {
    if (words[i] !== "0") {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === "0") j++;
    if (j - i > best.len && j - i > 1) best = { start: i, len: j - i };
    i = j;
  }
  if (best.start < 0) return words.join(":");
  return `${words.slice(0, best.start).join(":")}::${words.slice(best.start + best.len).join(":")}`;
}
