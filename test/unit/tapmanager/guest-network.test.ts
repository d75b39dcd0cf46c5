// What the guest is told, from what the netns holds, for each network style the field
// uses: the mask the netns really routes on-link, the gateway, and the routes in the order
// RFC 3442 clients must apply them. Snapshots are as the kernel reports them (rtnl's shapes).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { AddressInfo, LinkInfo, RouteInfo } from "../../../src/sys/rtnl";
import { guestViewOf, withoutDefaultRoute } from "../../../src/tapmanager/guest-network";

const RT_SCOPE_UNIVERSE = 0; // linux/rtnetlink.h
const RT_SCOPE_LINK = 253;
const RTN_UNICAST = 1;
const RTN_LOCAL = 2;

const ETH0: LinkInfo = { index: 2, name: "eth0", mac: "0a:58:0a:f4:01:05", mtu: 1450, up: true };

function v4(address: string, prefixLength: number, index = ETH0.index): AddressInfo {
  return { index, family: 4, address, prefixLength, scope: RT_SCOPE_UNIVERSE };
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

describe("the guest's view of its pod network", () => {
  it("Flannel-style (bridge + host-local): the /24 is on-link, the cluster route and default via the bridge", () => {
    const view = guestViewOf({
      link: ETH0,
      addresses: [v4("10.244.1.5", 24), v4("10.99.0.1", 24, 7)],
      routes: [
        route("10.244.1.0", 24),
        route("0.0.0.0", 0, "10.244.1.1"),
        route("10.244.0.0", 16, "10.244.1.1"),
        route("10.244.1.5", 32, undefined, RTN_LOCAL),
      ],
    });
    assert.deepEqual(view.ipv4, { family: 4, address: "10.244.1.5", prefixLength: 24 });
    assert.equal(view.gateway, "10.244.1.1");
    assert.equal(view.mtu, 1450);
    assert.deepEqual(view.routes, [
      { dst: "10.244.0.0", prefixLength: 16, gateway: "10.244.1.1" },
      { dst: "0.0.0.0", prefixLength: 0, gateway: "10.244.1.1" },
    ]);
    assert.deepEqual(view.addresses, [{ family: 4, address: "10.244.1.5", prefixLength: 24 }]);
  });

  it("ptp: CNI says /16 but the subnet is routed via the gateway, so the guest gets a /32", () => {
    const view = guestViewOf({
      link: ETH0,
      addresses: [v4("10.71.0.2", 16)],
      routes: [
        route("10.71.0.0", 16, "10.71.0.1"),
        route("0.0.0.0", 0, "10.71.0.1"),
        route("10.71.0.1", 32),
      ],
    });
    assert.deepEqual(view.ipv4, { family: 4, address: "10.71.0.2", prefixLength: 32 });
    assert.equal(view.gateway, "10.71.0.1");
    // The on-link /32 first, so the gateway is reachable when the routes through it come.
    assert.deepEqual(view.routes, [
      { dst: "10.71.0.1", prefixLength: 32, gateway: "0.0.0.0" },
      { dst: "10.71.0.0", prefixLength: 16, gateway: "10.71.0.1" },
      { dst: "0.0.0.0", prefixLength: 0, gateway: "10.71.0.1" },
    ]);
  });

  it("Calico-style: a /32 with 169.254.1.1 on-link and the default route via it", () => {
    const view = guestViewOf({
      link: ETH0,
      addresses: [v4("192.168.50.3", 32)],
      routes: [route("0.0.0.0", 0, "169.254.1.1"), route("169.254.1.1", 32)],
    });
    assert.deepEqual(view.ipv4, { family: 4, address: "192.168.50.3", prefixLength: 32 });
    assert.equal(view.gateway, "169.254.1.1");
    assert.deepEqual(view.routes, [
      { dst: "169.254.1.1", prefixLength: 32, gateway: "0.0.0.0" },
      { dst: "0.0.0.0", prefixLength: 0, gateway: "169.254.1.1" },
    ]);
  });

  it("a second NIC: no default route and no router, so the first NIC keeps them", () => {
    const first = guestViewOf({
      link: ETH0,
      addresses: [v4("10.244.1.5", 24)],
      routes: [route("10.244.1.0", 24), route("0.0.0.0", 0, "10.244.1.1")],
    });
    const second = withoutDefaultRoute(first);
    assert.equal(second.gateway, undefined);
    assert.deepEqual(second.routes, []);
    assert.deepEqual(second.ipv4, first.ipv4);
  });

  it("dual stack: the global IPv6 address is kept beside the served IPv4 one; link-local is not", () => {
    const view = guestViewOf({
      link: ETH0,
      addresses: [
        v4("10.244.1.5", 24),
        { index: 2, family: 6, address: "fd00:10:244:1::5", prefixLength: 64, scope: 0 },
        { index: 2, family: 6, address: "fe80::858:aff:fef4:105", prefixLength: 64, scope: 253 },
      ],
      routes: [route("10.244.1.0", 24), route("0.0.0.0", 0, "10.244.1.1")],
    });
    assert.deepEqual(view.addresses, [
      { family: 4, address: "10.244.1.5", prefixLength: 24 },
      { family: 6, address: "fd00:10:244:1::5", prefixLength: 64 },
    ]);
    assert.equal(view.ipv4?.prefixLength, 24);
  });

  it("no IPv4 address: nothing to serve, no routes", () => {
    const view = guestViewOf({
      link: ETH0,
      addresses: [],
      routes: [route("0.0.0.0", 0, "10.0.0.1")],
    });
    assert.equal(view.ipv4, undefined);
    assert.deepEqual(view.routes, []);
  });
});
