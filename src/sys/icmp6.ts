// A raw ICMPv6 socket in a pod's netns, bound to one device there: the pod bridge's router
// advertisements go out and its router solicitations come in through it (Node's dgram
// cannot send ICMPv6). The kernel adds the IPv6 header and the checksum, and tells each
// datagram's hop limit (NDP's check that it was not forwarded).
import * as libc from "./libc";
import { joinGroup, Socket6, type Socket6Device, setIntOption } from "./socket6";

export interface Icmp6SocketOptions extends Socket6Device {
  /** The only ICMPv6 types delivered (ICMP6_FILTER), e.g. [133] for router solicitations. */
  accept: number[];
  /** Multicast groups joined on the device, e.g. ff02::2 (all routers). */
  groups: string[];
  /** Hop limit of everything sent: 255 for NDP (RFC 4861 section 6.1). */
  hopLimit: number;
}

export function openIcmp6Socket(nsPath: string, options: Icmp6SocketOptions): Socket6 {
  return Socket6.open(
    nsPath,
    options,
    { type: libc.SOCK_RAW, protocol: libc.IPPROTO_ICMPV6, label: "icmpv6", receiveHopLimit: true },
    (fd, where) => {
      // struct icmp6_filter, linux/icmpv6.h: a set bit blocks that type.
      const filter = Buffer.alloc(32, 0xff);
      for (const type of options.accept) {
        const word = (type >> 5) * 4;
        filter.writeUInt32LE((filter.readUInt32LE(word) & ~(1 << (type & 31))) >>> 0, word);
      }
      libc.check(
        libc.setsockopt(fd, libc.IPPROTO_ICMPV6, libc.ICMP6_FILTER, filter, filter.length),
        `ICMP6_FILTER for ${where}`,
      );
      const { IPPROTO_IPV6, IPV6_UNICAST_HOPS, IPV6_MULTICAST_HOPS, IPV6_MULTICAST_LOOP } = libc;
      setIntOption(fd, IPPROTO_IPV6, IPV6_UNICAST_HOPS, options.hopLimit, `hop limit for ${where}`);
      setIntOption(
        fd,
        IPPROTO_IPV6,
        IPV6_MULTICAST_HOPS,
        options.hopLimit,
        `hop limit for ${where}`,
      );
      setIntOption(fd, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, 0, `multicast loop for ${where}`);
      for (const group of options.groups) {
        joinGroup(fd, group, options.ifindex, `join ${group} for ${where}`);
      }
    },
  );
}
