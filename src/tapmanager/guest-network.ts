// The one owner of what the guest is told about its network. guestViewOf turns a netns
// snapshot into the guest's view (the address with the mask the netns really routes
// on-link, the gateway, every other route, the MTU); the view is what the tapmanager
// persists, and leaseOf derives the DHCP lease from it. Both are pure, so each network
// style is testable; readGuestView takes the snapshot off the netns. How the routes are
// ordered and encoded for option 121 is dhcp/'s business (RFC 3442).
import type { DhcpLease } from "../dhcp/server";
import type { AddressInfo, LinkInfo, RouteInfo, Rtnl } from "../sys/rtnl";
import { RT_SCOPE_UNIVERSE, RTN_UNICAST } from "../sys/uapi";
import { type Ipv4Route, inIpv4Prefix, ON_LINK } from "../util/ip";
import type { IpAddress, PodInterface } from "./types";

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
  routes: Ipv4Route[];
  mtu: number;
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
      inIpv4Prefix(v4.address, r.dst, r.dstLength),
  );
  const guestRoutes = routes
    .filter((r) => r !== connected)
    .map((r) => ({ dst: r.dst, prefixLength: r.dstLength, gateway: r.gateway ?? ON_LINK }));
  const gateway = guestRoutes.find((r) => r.prefixLength === 0 && r.gateway !== ON_LINK)?.gateway;
  return {
    addresses,
    ipv4: { family: 4, address: v4.address, prefixLength: connected ? connected.dstLength : 32 },
    routes: guestRoutes,
    mtu: link.mtu,
    ...(gateway ? { gateway } : {}),
  };
}

/** The view for a second NIC: no default route, so the first NIC keeps it. */
export function withoutDefaultRoute(view: GuestView): GuestView {
  const { gateway: _dropped, ...rest } = view;
  return { ...rest, routes: view.routes.filter((r) => r.prefixLength !== 0) };
}

/**
 * One read of what the plugins really built for `ifname` (the netns is the truth): the
 * link, its addresses and the main table's routes out of it, both families, the dumps
 * filtered in the kernel.
 */
export async function readNicSnapshot(rtnl: Rtnl, ifname: string): Promise<NetnsSnapshot> {
  const link = await rtnl.link(ifname);
  const addresses = await rtnl.addressesOf(link.index);
  const routes = await rtnl.routesVia(link.index);
  return { link, addresses, routes };
}

/** Reads the guest's view off `ifname` (readNicSnapshot, then guestViewOf). */
export async function readGuestView(
  rtnl: Rtnl,
  ifname: string,
): Promise<GuestView & { mac: string }> {
  const snapshot = await readNicSnapshot(rtnl, ifname);
  return { ...guestViewOf(snapshot), mac: snapshot.link.mac };
}

/** A NIC's view as persisted: what leaseOf needs. */
export type GuestNic = Pick<PodInterface, "guestMac" | "mtu" | "routes" | "dns" | "gateway"> & {
  ipv4?: IpAddress;
};

/** The DHCP lease a NIC's guest gets, derived from its view; none without IPv4. */
export function leaseOf(
  nic: GuestNic,
  hostname: string,
  leaseSeconds: number,
): DhcpLease | undefined {
  if (!nic.ipv4) return undefined;
  return {
    mac: nic.guestMac,
    ip: nic.ipv4.address,
    prefixLength: nic.ipv4.prefixLength,
    routes: nic.routes.map((r) => ({ ...r })),
    mtu: nic.mtu,
    dns: nic.dns.nameservers,
    search: nic.dns.search,
    hostname,
    leaseSeconds,
    ...(nic.gateway ? { router: nic.gateway } : {}),
    ...(nic.dns.domain ? { domain: nic.dns.domain } : {}),
  };
}
