// What the guest must be told so that it has the reachability the pod's netns had: the
// address with the mask the netns really routes on-link, and every other route as a
// classless static route. guestViewOf is pure: it reads a snapshot, so each network style
// is testable; readGuestView takes that snapshot off the netns.
import type { AddressInfo, LinkInfo, RouteInfo, Rtnl } from "../sys/rtnl";
import type { GuestRoute, IpAddress } from "./types";

export interface NetnsSnapshot {
  link: LinkInfo;
  addresses: AddressInfo[];
  /** Routes of the main table, both families. */
  routes: RouteInfo[];
}

export interface GuestView {
  /** All global addresses of the link: the IPv4 one is served, IPv6 ones are kept. */
  addresses: IpAddress[];
  /** The IPv4 address served by DHCP, with the mask the netns routes on-link. */
  ipv4?: IpAddress;
  gateway?: string;
  routes: GuestRoute[];
  mtu: number;
}

const RT_SCOPE_UNIVERSE = 0;
const RTN_UNICAST = 1;

function ipv4ToInt(ip: string): number {
  return ip.split(".").reduce((n, o) => (n << 8) + Number(o), 0) >>> 0;
}

function maskOf(prefixLength: number): number {
  return prefixLength === 0 ? 0 : (~0 << (32 - prefixLength)) >>> 0;
}

function contains(network: string, prefixLength: number, ip: string): boolean {
  const mask = maskOf(prefixLength);
  return (ipv4ToInt(network) & mask) >>> 0 === (ipv4ToInt(ip) & mask) >>> 0;
}

/**
 * Reads the guest's view off one interface of the netns. The kernel's connected route is
 * what makes a prefix on-link: plugins such as ptp delete it and route the subnet via the
 * gateway, and then the guest must get a /32, or it would ARP for neighbours it can't reach.
 */
export function guestViewOf(snapshot: NetnsSnapshot): GuestView {
  const { link } = snapshot;
  const addresses = snapshot.addresses
    .filter((a) => a.index === link.index && a.scope === RT_SCOPE_UNIVERSE)
    .map((a) => ({ family: a.family, address: a.address, prefixLength: a.prefixLength }));
  const routes = snapshot.routes.filter(
    (r) => r.family === 4 && r.oif === link.index && r.type === RTN_UNICAST,
  );
  const v4 = addresses.find((a) => a.family === 4);
  if (!v4) return { addresses, routes: [], mtu: link.mtu };

  const connected = routes.find(
    (r) =>
      !r.gateway &&
      r.dstLength === v4.prefixLength &&
      r.dstLength < 32 &&
      contains(r.dst, r.dstLength, v4.address),
  );
  const prefixLength = connected ? connected.dstLength : 32;
  const guestRoutes: GuestRoute[] = [];
  for (const r of routes) {
    if (r === connected) continue;
    guestRoutes.push({ dst: r.dst, prefixLength: r.dstLength, gateway: r.gateway ?? "0.0.0.0" });
  }
  // RFC 3442 clients apply routes in order: on-link routes first, so the gateways that
  // later routes use are reachable when they are added; most specific first within each.
  guestRoutes.sort(
    (a, b) =>
      Number(a.gateway !== "0.0.0.0") - Number(b.gateway !== "0.0.0.0") ||
      b.prefixLength - a.prefixLength,
  );
  const defaultRoute = guestRoutes.find((r) => r.prefixLength === 0);
  const view: GuestView = {
    addresses,
    ipv4: { family: 4, address: v4.address, prefixLength },
    routes: guestRoutes,
    mtu: link.mtu,
  };
  if (defaultRoute && defaultRoute.gateway !== "0.0.0.0") view.gateway = defaultRoute.gateway;
  return view;
}

/** The view for a second NIC: no default route, so the first NIC keeps it. */
export function withoutDefaultRoute(view: GuestView): GuestView {
  const { gateway: _dropped, ...rest } = view;
  return { ...rest, routes: view.routes.filter((r) => r.prefixLength !== 0) };
}

/** Reads what the plugins really built for `ifname`: the netns is the truth. */
export async function readGuestView(
  rtnl: Rtnl,
  ifname: string,
): Promise<GuestView & { mac: string }> {
  const link = await rtnl.link(ifname);
  // guestViewOf uses IPv4 routes only: IPv6 ones are not dumped.
  const [addresses, routes] = await Promise.all([rtnl.addresses(), rtnl.routes(4)]);
  return { ...guestViewOf({ link, addresses, routes }), mac: link.mac };
}
