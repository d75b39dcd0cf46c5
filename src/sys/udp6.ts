// A UDP socket on [::]:port in a pod's netns, bound to one device there and joined to
// multicast groups on it (by interface index: the name means nothing outside the netns).
import * as libc from "./libc";
import { joinGroup, Socket6, type Socket6Device, setIntOption, sockaddrIn6 } from "./socket6";

export interface Udp6SocketOptions extends Socket6Device {
  port: number;
  /** Multicast groups joined on the device, e.g. ff02::1:2 for DHCPv6 servers. */
  groups: string[];
}

export function openUdp6Socket(nsPath: string, options: Udp6SocketOptions): Socket6 {
  return Socket6.open(
    nsPath,
    options,
    { type: libc.SOCK_DGRAM, protocol: libc.IPPROTO_UDP, label: `udp [::]:${options.port}` },
    (fd, where) => {
      setIntOption(fd, libc.SOL_SOCKET, libc.SO_REUSEADDR, 1, `SO_REUSEADDR for ${where}`);
      setIntOption(fd, libc.IPPROTO_IPV6, libc.IPV6_V6ONLY, 1, `IPV6_V6ONLY for ${where}`);
      const sa = sockaddrIn6("::", options.port, 0);
      libc.check(libc.bind(fd, sa, sa.length), `bind ${where}`);
      for (const group of options.groups) {
        joinGroup(fd, group, options.ifindex, `join ${group} for ${where}`);
      }
    },
  );
}
