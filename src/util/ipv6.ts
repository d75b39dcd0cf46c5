// IPv6 facts the DHCPv6 and RA code needs (link-local, prefixes, EUI-64), on util/ip's
// parsing and formatting.
import { bytesToIp, ipToBytes } from "./ip";

/** Parses an IPv6 address (a "%zone" suffix is ignored); throws on anything else. */
export function ipv6ToBytes(text: string): Buffer {
  const address = text.split("%")[0]!;
  if (!address.includes(":")) throw new Error(`IPv6 ${JSON.stringify(text)}: not an IPv6 address`);
  try {
    return ipToBytes(address);
  } catch (error) {
    throw new Error(`IPv6 ${JSON.stringify(text)}: not an IPv6 address`, { cause: error });
  }
}

/** RFC 5952 text of the 16 bytes at `offset`. */
export function bytesToIpv6(bytes: Buffer, offset = 0): string {
  return bytesToIp(bytes.subarray(offset, offset + 16));
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
