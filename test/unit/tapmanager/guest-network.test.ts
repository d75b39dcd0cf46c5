// What the guest is told, from what the netns holds, for each network style the field
// uses: the view the tapmanager persists (the mask the netns really routes on-link, the
// gateway, the routes), the lease derived from it, and option 121 in the order RFC 3442
// clients must apply it. Snapshots are as the kernel reports them (rtnl's shapes).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { classlessRoutesFor } from "../../../src/dhcp/responder";
import type { AddressInfo, LinkInfo, RouteInfo } from "../../../src/sys/rtnl";
import { RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, RTN_LOCAL, RTN_UNICAST } from "../../../src/sys/uapi";
import {
  type GuestView,
  guestViewOf,
  leaseOf,
  type NetnsSnapshot,
  withoutDefaultRoute,
} from "../../../src/tapmanager/guest-network";
import type { IpAddress } from "../../../src/tapmanager/types";

const ETH0: LinkInfo = { index: 2, name: "eth0", mac: "0a:58:0a:f4:01:05", mtu: 1450, up: true };
const DNS = { nameservers: ["10.96.0.10"], search: ["default.svc.cluster.local"] };

function v4(address: string, prefixLength: number, index = ETH0.index): AddressInfo {
  return { index, family: 4, address, prefixLength, scope: RT_SCOPE_UNIVERSE };
}

function v6(address: string, prefixLength: number, scope = RT_SCOPE_UNIVERSE): AddressInfo {
  return { index: ETH0.index, family: 6, address, prefixLength, scope };
}

function route(dst: string, dstLength: number, gateway?: string, type = RTN_UNICAST): RouteInfo {
  return {
    family: 4,
    dst,
    dstLength,
    ...(gateway ? { gateway } : {}),
    oif: ETH0.index,
    scope: gateway ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK,
    table: 254,
    onlink: false,
    type,
  };
}

interface Row {
  style: string;
  snapshot: NetnsSnapshot;
  /** A NIC after the first: it gives up the default route. */
  secondNic?: boolean;
  served?: IpAddress;
  gateway?: string;
  /** All global addresses, as CNI made them (IPv6 carried, not served). */
  addresses: IpAddress[];
  /** Option 121 as sent, in order: "dst/len via gw". */
  option121: string[];
}

const rows: Row[] = [
  {
    style:
      "Flannel-style (bridge + host-local): the /24 is on-link, the cluster route and default via the bridge",
    snapshot: {
      link: ETH0,
      addresses: [v4("10.244.1.5", 24), v4("10.99.0.1", 24, 7)],
      routes: [
        route("10.244.1.0", 24),
        route("0.0.0.0", 0, "10.244.1.1"),
        route("10.244.0.0", 16, "10.244.1.1"),
        route("10.244.1.5", 32, undefined, RTN_LOCAL),
      ],
    },
    served: { family: 4, address: "10.244.1.5", prefixLength: 24 },
    gateway: "10.244.1.1",
    addresses: [{ family: 4, address: "10.244.1.5", prefixLength: 24 }],
    option121: ["10.244.0.0/16 via 10.244.1.1", "0.0.0.0/0 via 10.244.1.1"],
  },
  {
    style: "ptp: CNI says /16 but the subnet is routed via the gateway, so the guest gets a /32",
    snapshot: {
      link: ETH0,
      addresses: [v4("10.71.0.2", 16)],
      routes: [
        route("10.71.0.0", 16, "10.71.0.1"),
        route("0.0.0.0", 0, "10.71.0.1"),
        route("10.71.0.1", 32),
      ],
    },
    served: { family: 4, address: "10.71.0.2", prefixLength: 32 },
    gateway: "10.71.0.1",
    addresses: [{ family: 4, address: "10.71.0.2", prefixLength: 16 }],
    // The on-link /32 first, so the gateway is reachable when the routes through it come.
    option121: [
      "10.71.0.1/32 via 0.0.0.0",
      "10.71.0.0/16 via 10.71.0.1",
      "0.0.0.0/0 via 10.71.0.1",
    ],
  },
  {
    style: "Calico-style: a /32 with 169.254.1.1 on-link and the default route via it",
    snapshot: {
      link: ETH0,
      addresses: [v4("192.168.50.3", 32)],
      routes: [route("0.0.0.0", 0, "169.254.1.1"), route("169.254.1.1", 32)],
    },
    served: { family: 4, address: "192.168.50.3", prefixLength: 32 },
    gateway: "169.254.1.1",
    addresses: [{ family: 4, address: "192.168.50.3", prefixLength: 32 }],
    option121: ["169.254.1.1/32 via 0.0.0.0", "0.0.0.0/0 via 169.254.1.1"],
  },
  {
    style:
      "a second NIC: its subnet routes, but no default route and no router (the first NIC keeps them)",
    secondNic: true,
    snapshot: {
      link: ETH0,
      addresses: [v4("10.60.0.4", 24)],
      routes: [
        route("10.60.0.0", 24),
        route("0.0.0.0", 0, "10.60.0.1"),
        route("10.61.0.0", 16, "10.60.0.1"),
      ],
    },
    served: { family: 4, address: "10.60.0.4", prefixLength: 24 },
    addresses: [{ family: 4, address: "10.60.0.4", prefixLength: 24 }],
    option121: ["10.61.0.0/16 via 10.60.0.1"],
  },
  {
    style:
      "a dual-stack CNI result: the global IPv6 address is carried beside the served IPv4 one (not served yet); link-local is not",
    snapshot: {
      link: ETH0,
      addresses: [
        v4("10.244.1.5", 24),
        v6("fd00:10:244:1::5", 64),
        v6("fe80::858:aff:fef4:105", 64, RT_SCOPE_LINK),
      ],
      routes: [route("10.244.1.0", 24), route("0.0.0.0", 0, "10.244.1.1")],
    },
    served: { family: 4, address: "10.244.1.5", prefixLength: 24 },
    gateway: "10.244.1.1",
    addresses: [
      { family: 4, address: "10.244.1.5", prefixLength: 24 },
      { family: 6, address: "fd00:10:244:1::5", prefixLength: 64 },
    ],
    option121: ["0.0.0.0/0 via 10.244.1.1"],
  },
];

function nicOf(view: GuestView) {
  return { ...view, guestMac: ETH0.mac, dns: DNS };
}

describe("the guest's view of its pod network, and the lease derived from it", () => {
  for (const row of rows) {
    it(row.style, () => {
      const read = guestViewOf(row.snapshot);
      const view = row.secondNic ? withoutDefaultRoute(read) : read;
      assert.deepEqual(view.ipv4, row.served);
      assert.equal(view.gateway, row.gateway);
      assert.equal(view.mtu, ETH0.mtu);
      assert.deepEqual(view.addresses, row.addresses);

      const lease = leaseOf(nicOf(view), "vm1", 3600);
      assert.ok(lease, "an IPv4 NIC is served");
      assert.equal(lease.mac, ETH0.mac);
      assert.equal(lease.ip, row.served?.address);
      assert.equal(lease.prefixLength, row.served?.prefixLength);
      assert.equal(lease.router, row.gateway);
      assert.equal(lease.mtu, ETH0.mtu);
      assert.deepEqual(lease.dns, DNS.nameservers);
      assert.equal(lease.hostname, "vm1");
      assert.ok(!lease.dns.some((s) => s.includes(":")) && !lease.ip.includes(":"));
      assert.deepEqual(
        classlessRoutesFor(lease).map((r) => `${r.dst}/${r.prefixLength} via ${r.gateway}`),
        row.option121,
      );
    });
  }

  it("no IPv4 address: nothing to serve, no routes, no lease", () => {
    const view = guestViewOf({
      link: ETH0,
      addresses: [v6("fd00:10:244:1::5", 64)],
      routes: [route("0.0.0.0", 0, "10.0.0.1")],
    });
    assert.equal(view.ipv4, undefined);
    assert.deepEqual(view.routes, []);
    assert.equal(leaseOf(nicOf(view), "vm1", 3600), undefined);
  });
});
