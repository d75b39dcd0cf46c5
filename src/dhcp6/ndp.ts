// Router advertisements the pod bridge sends (RFC 4861 section 4.2; RDNSS and DNSSL from
// RFC 8106) and the router solicitations it answers (section 4.1). ICMPv6 bodies only:
// the kernel adds the IPv6 header and the checksum on a raw ICMPv6 socket.
import { ipv6ToBytes, prefixOf6 } from "../util/ipv6";
import { macToBuffer, macToString } from "../util/mac";
import { encodeDomainList } from "./codec";

/** linux/icmpv6.h */
export const ICMPV6_ROUTER_SOLICITATION = 133;
export const ICMPV6_ROUTER_ADVERTISEMENT = 134;
/** RFC 4861 section 4.6, RFC 8106 section 5 */
const OPT_SOURCE_LLADDR = 1;
const OPT_PREFIX_INFO = 3;
const OPT_MTU = 5;
const OPT_RDNSS = 25;
const OPT_DNSSL = 31;
const FLAG_MANAGED = 0x80;
const FLAG_OTHER = 0x40;
const PIO_ON_LINK = 0x80;
const PIO_AUTONOMOUS = 0x40;
/** RFC 4861 section 6.2.1: AdvDefaultLifetime may be at most 9000 s. */
const MAX_ROUTER_LIFETIME = 9000;
export const ALL_NODES = "ff02::1";
export const ALL_ROUTERS = "ff02::2";
/** RS and RA travel one link only: anything else was forwarded (RFC 4861 section 6.1). */
export const NDP_HOP_LIMIT = 255;

export interface OnLinkPrefix {
  prefix: string;
  prefixLength: number;
}

export interface RouterAdvertisement {
  /** The bridge's MAC: where the guest sends what it routes. */
  sourceMac: string;
  /** Seconds the guest keeps the default route through the RA's source; > 0. */
  routerLifetime: number;
  mtu?: number;
  dns: string[];
  search: string[];
  /** Seconds RDNSS and DNSSL stay valid. */
  dnsLifetime: number;
  /** Prefixes really on the link (Flannel-style /64); none for a /128 (RFC 5942). */
  onLink: OnLinkPrefix[];
  /** Valid and preferred lifetime of the on-link prefixes. */
  prefixLifetime: number;
}

/** An option: type, length in units of 8 bytes, value padded to fit. */
function ndpOption(type: number, value: Buffer): Buffer {
  const units = Math.ceil((value.length + 2) / 8);
  const out = Buffer.alloc(units * 8);
  out[0] = type;
  out[1] = units;
  value.copy(out, 2);
  return out;
}

/**
 * The RA for one pod bridge: M and O set (the address and DNS come by DHCPv6, RDNSS for
 * clients that read only the RA), a router lifetime so the guest routes via the bridge.
 */
export function buildRouterAdvertisement(ra: RouterAdvertisement): Buffer {
  if (!Number.isInteger(ra.routerLifetime) || ra.routerLifetime < 1) {
    throw new Error(`RA router lifetime ${ra.routerLifetime}: must be > 0`);
  }
  const header = Buffer.alloc(16);
  header[0] = ICMPV6_ROUTER_ADVERTISEMENT;
  header[4] = 64; // Cur Hop Limit the guest should use
  header[5] = FLAG_MANAGED | FLAG_OTHER;
  header.writeUInt16BE(Math.min(ra.routerLifetime, MAX_ROUTER_LIFETIME), 6);
  // Reachable time and retrans timer 0: unspecified, the guest keeps its own.
  const options: Buffer[] = [ndpOption(OPT_SOURCE_LLADDR, macToBuffer(ra.sourceMac))];
  if (ra.mtu !== undefined) {
    const value = Buffer.alloc(6);
    value.writeUInt32BE(ra.mtu, 2);
    options.push(ndpOption(OPT_MTU, value));
  }
  for (const p of ra.onLink) {
    const value = Buffer.alloc(30);
    value[0] = p.prefixLength;
    // L only: the address comes from DHCPv6, so SLAAC (A) must not invent a second one.
    value[1] = PIO_ON_LINK;
    value.writeUInt32BE(ra.prefixLifetime, 2);
    value.writeUInt32BE(ra.prefixLifetime, 6);
    ipv6ToBytes(prefixOf6(p.prefix, p.prefixLength)).copy(value, 14);
    options.push(ndpOption(OPT_PREFIX_INFO, value));
  }
  if (ra.dns.length > 0) {
    const value = Buffer.alloc(6 + 16 * ra.dns.length);
    value.writeUInt32BE(ra.dnsLifetime, 2);
    ra.dns.forEach((a, i) => {
      ipv6ToBytes(a).copy(value, 6 + 16 * i);
    });
    options.push(ndpOption(OPT_RDNSS, value));
  }
  if (ra.search.length > 0) {
    const lifetime = Buffer.alloc(6);
    lifetime.writeUInt32BE(ra.dnsLifetime, 2);
    options.push(ndpOption(OPT_DNSSL, Buffer.concat([lifetime, encodeDomainList(ra.search)])));
  }
  return Buffer.concat([header, ...options]);
}

export const PIO_FLAGS = { ON_LINK: PIO_ON_LINK, AUTONOMOUS: PIO_AUTONOMOUS } as const;

export class NdpParseError extends Error {
  constructor(detail: string) {
    super(`router solicitation: ${detail}`);
    this.name = "NdpParseError";
  }
}

export interface RouterSolicitation {
  /** The source link-layer option's MAC, when the solicitation has one. */
  sourceMac?: string;
}

/** RFC 4861 section 6.1.1 checks a router makes on an RS (the hop limit is the socket's). */
export function parseRouterSolicitation(buf: Buffer, source: string): RouterSolicitation {
  if (buf.length < 8) throw new NdpParseError(`${buf.length} bytes < 8`);
  if (buf[0] !== ICMPV6_ROUTER_SOLICITATION) throw new NdpParseError(`type ${buf[0]}`);
  if (buf[1] !== 0) throw new NdpParseError(`code ${buf[1]}`);
  const unspecified = ipv6ToBytes(source).every((b) => b === 0);
  const rs: RouterSolicitation = {};
  for (let i = 8; i < buf.length; ) {
    if (i + 2 > buf.length) throw new NdpParseError(`option header at ${i} cut off`);
    const units = buf[i + 1]!;
    if (units === 0) throw new NdpParseError(`option ${buf[i]} of length 0`);
    if (i + units * 8 > buf.length) throw new NdpParseError(`option ${buf[i]} runs past the end`);
    if (buf[i] === OPT_SOURCE_LLADDR) {
      if (unspecified) throw new NdpParseError("source link-layer option from ::");
      if (units === 1) {
        rs.sourceMac = macToString(buf.subarray(i + 2, i + 8));
      }
    }
    i += units * 8;
  }
  return rs;
}
