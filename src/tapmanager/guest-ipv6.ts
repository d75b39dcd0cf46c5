// The guest's IPv6: what the netns had (the pod's address, the on-link prefix if its
// connected route says so, the routes through the veth), and the pod netns turned into the
// guest's first-hop router. The guest routes through the bridge's link-local address (the
// RA's source): a Calico-style /128 has no on-link neighbours, and a Flannel-style gateway
// is a global address that no RA may come from.

import {
  type AddressInfo,
  ignoringRtnlErrors,
  type LinkInfo,
  type RouteInfo,
  type Rtnl,
} from "../sys/rtnl";
import { writeSysctl } from "../sys/sysctl";
import { isLinkLocal } from "../util/ipv6";
import type { PodIpv6 } from "./types";

/** What the netns read gives; the DNS servers come from the pod's DNS config. */
export type GuestIpv6 = Omit<PodIpv6, "nameservers">;

const RT_SCOPE_UNIVERSE = 0;
const RTN_UNICAST = 1;
const ZERO6 = "::";

/** Pure: the guest's IPv6 from a snapshot of the link, its addresses and IPv6 routes. */
export function guestIpv6Of(
  link: LinkInfo,
  addresses: AddressInfo[],
  routes: RouteInfo[],
): GuestIpv6 | undefined {
  const v6 = addresses.find(
    (a) => a.family === 6 && a.index === link.index && a.scope === RT_SCOPE_UNIVERSE,
  );
  if (!v6) return undefined;
  const own = routes.filter(
    (r) =>
      r.family === 6 &&
      r.oif === link.index &&
      r.type === RTN_UNICAST &&
      // fe80::/64 is every link's own; the bridge has its one.
      !(r.dstLength > 0 && isLinkLocal(r.dst)),
  );
  const connected = own.find(
    (r) => !r.gateway && r.dstLength === v6.prefixLength && r.dstLength < 128,
  );
  const out: GuestIpv6 = {
    address: v6.address,
    prefixLength: v6.prefixLength,
    routes: own
      .map((r) => ({ dst: r.dst, prefixLength: r.dstLength, gateway: r.gateway ?? ZERO6 }))
      .sort(
        (a, b) =>
          Number(a.gateway !== ZERO6) - Number(b.gateway !== ZERO6) ||
          b.prefixLength - a.prefixLength,
      ),
  };
  if (connected) out.onLink = { prefix: connected.dst, prefixLength: connected.dstLength };
  const gateway = own.find((r) => r.dstLength === 0 && r.gateway)?.gateway;
  if (gateway) out.gateway = gateway;
  return out;
}

/** Reads the guest's IPv6 off `ifname`; undefined for a link without a global IPv6 address. */
export async function readGuestIpv6(rtnl: Rtnl, ifname: string): Promise<GuestIpv6 | undefined> {
  const link = await rtnl.link(ifname);
  return guestIpv6Of(link, await rtnl.addressesOf(link.index), await rtnl.routesVia(link.index));
}

/**
 * Makes the pod netns the guest's IPv6 router: forwarding on, the netns's routes moved
 * from the veth (a bridge port, deaf to replies) to the bridge. The guest's own address
 * stays reachable from the node by NDP through the bridge, as it was on the veth. Safe
 * to run again (recovery): each step tolerates what is already there.
 */
export async function routeGuestIpv6(
  rtnl: Rtnl,
  nsPath: string,
  names: { ifname: string; bridge: string },
  ipv6: GuestIpv6,
): Promise<void> {
  writeSysctl(nsPath, "net/ipv6/conf/all/forwarding", "1");
  // A router ignores RAs; the guest's would be dropped by the guard anyway.
  writeSysctl(nsPath, `net/ipv6/conf/${names.bridge}/accept_ra`, "0");
  for (const route of ipv6.routes) {
    const spec = {
      dst: route.dst,
      dstLength: route.prefixLength,
      ...(route.gateway === ZERO6 ? {} : { gateway: route.gateway }),
    };
    await ignoringRtnlErrors(["ESRCH", "ENOENT"], () =>
      rtnl.deleteRoute({ ...spec, device: names.ifname }),
    );
    await ignoringRtnlErrors(["EEXIST"], () => rtnl.addRoute({ ...spec, device: names.bridge }));
  }
}

/** The view for a second NIC: no default route, so the first NIC keeps it. */
export function withoutDefaultRoute6(ipv6: GuestIpv6): GuestIpv6 {
  const { gateway: _dropped, ...rest } = ipv6;
  return { ...rest, routes: ipv6.routes.filter((r) => r.prefixLength !== 0) };
}
