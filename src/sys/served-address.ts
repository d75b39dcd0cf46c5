// A server address on one link that its clients reach by unicast without any ARP: the
// address as a local /32 that the link never answers ARP for, and a route and a permanent
// neighbour entry per client. The DHCP server holds the guest's gateway address this way.
import { type Rtnl, RtnlError } from "./rtnl";

/** linux/Documentation/networking/ip-sysctl.rst: 8 = never reply to ARP for local addresses. */
const ARP_IGNORE_NEVER = 8;

export interface ServedAddress {
  /** The link the server listens on, e.g. the pod bridge. */
  device: string;
  /** The server's own address, held as a /32. */
  address: string;
  /** Its clients, each with a /32 route and a permanent neighbour entry. */
  clients: { ip: string; mac: string }[];
}

function tolerate(codes: string[]): (error: unknown) => void {
  return (error) => {
    if (!(error instanceof RtnlError && codes.includes(error.code))) throw error;
  };
}

/** Adds what `served` needs; what is there already is fine, so it can run again. */
export async function addServedAddress(rtnl: Rtnl, served: ServedAddress): Promise<void> {
  const { device } = served;
  await rtnl.setArpIgnore(device, ARP_IGNORE_NEVER);
  await rtnl.addAddress(device, `${served.address}/32`).catch(tolerate(["EEXIST"]));
  for (const client of served.clients) {
    await rtnl
      .addRoute({ dst: client.ip, dstLength: 32, device, scope: "link" })
      .catch(tolerate(["EEXIST"]));
    await rtnl.setNeighbour(device, client.ip, client.mac);
  }
}

/**
 * Removes the routes and the address; what is already gone is fine. The neighbour
 * entries and arp_ignore stay until the link goes (harmless without the address).
 */
export async function removeServedAddress(rtnl: Rtnl, served: ServedAddress): Promise<void> {
  const gone = tolerate(["ENODEV", "ESRCH", "EADDRNOTAVAIL", "ENOENT"]);
  const { device } = served;
  for (const client of served.clients) {
    await rtnl.deleteRoute({ dst: client.ip, dstLength: 32, device, scope: "link" }).catch(gone);
  }
  await rtnl.deleteAddress(device, `${served.address}/32`).catch(gone);
}
