// Starts a NIC's IPv6 for its guest: the netns becomes its router, then RA + DHCPv6 serve
// it on the pod bridge. Only for a NIC that has IPv6: an IPv4-only pod sends no RAs.
import { type Ipv6Log, Ipv6Server } from "../dhcp6";
import type { Rtnl } from "../sys/rtnl";
import type { StepHook } from "../util/steps";
import { routeGuestIpv6 } from "./guest-ipv6";
import type { PodInterface } from "./types";

export async function routeNicIpv6(rtnl: Rtnl, nsPath: string, iface: PodInterface): Promise<void> {
  if (iface.ipv6) await routeGuestIpv6(rtnl, nsPath, iface, iface.ipv6);
}

/** On the caller's connection `rtnl`; the reply cache is attached after it returns. */
export async function serveNicIpv6(
  rtnl: Rtnl,
  nsPath: string,
  iface: PodInterface,
  leaseSeconds: number,
  log: Ipv6Log,
  steps?: StepHook,
): Promise<Ipv6Server | undefined> {
  const ipv6 = iface.ipv6;
  if (!ipv6) return undefined;
  return Ipv6Server.start({
    nsPath,
    device: iface.bridge,
    leases: [
      {
        mac: iface.guestMac,
        address: ipv6.address,
        dns: ipv6.nameservers,
        search: iface.dns.search,
        leaseSeconds,
      },
    ],
    mtu: iface.mtu,
    dns: ipv6.nameservers,
    search: iface.dns.search,
    onLink: ipv6.onLink ? [ipv6.onLink] : [],
    log,
    // Replies to requests seen before come from the kernel, back into the tap.
    replyPort: iface.tap,
    replyCacheInBackground: true,
    rtnl,
    ...(steps ? { steps } : {}),
  });
}
