// The guest's IPv6 read off a netns snapshot, per network style: the address, whether its
// prefix is on-link (only where the kernel's connected route says so), the routes.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { AddressInfo, LinkInfo, RouteInfo } from "../../../src/sys/rtnl";
import { guestIpv6Of, withoutDefaultRoute6 } from "../../../src/tapmanager/guest-ipv6";

const link: LinkInfo = { index: 3, name: "eth0", mac: "0a:58:0a:f4:01:05", mtu: 1450, up: true };
const RT_SCOPE_LINK = 253;

function route(dst: string, dstLength: number, gateway?: string, oif = 3): RouteInfo {
  return {
    family: 6,
    dst,
    dstLength,
    ...(gateway ? { gateway } : {}),
    oif,
    scope: 0,
    table: 254,
    onlink: false,
    type: 1,
  };
}

function address(a: string, prefixLength: number, scope = 0, index = 3): AddressInfo {
  return { index, family: 6, address: a, prefixLength, scope };
}

describe("the guest's IPv6", () => {
  it("Flannel-style: a /64 with its connected route is on-link; the default route via the bridge's address", () => {
    const v6 = guestIpv6Of(
      link,
      [address("fd00:10:244:1::5", 64), address("fe80::858:aff:fef4:105", 64, RT_SCOPE_LINK)],
      [
        route("fd00:10:244:1::", 64),
        route("fe80::", 64),
        route("::", 0, "fd00:10:244:1::1"),
        route("fd00:99::", 64, undefined, 9), // another link's
      ],
    );
    assert.deepEqual(v6, {
      address: "fd00:10:244:1::5",
      prefixLength: 64,
      onLink: { prefix: "fd00:10:244:1::", prefixLength: 64 },
      routes: [
        { dst: "fd00:10:244:1::", prefixLength: 64, gateway: "::" },
        { dst: "::", prefixLength: 0, gateway: "fd00:10:244:1::1" },
      ],
      gateway: "fd00:10:244:1::1",
    });
  });

  it("ptp-style: a /64 whose connected route the plugin replaced is not on-link", () => {
    const v6 = guestIpv6Of(
      link,
      [address("fd00:10:71::5", 64)],
      [route("fd00:10:71::", 64, "fe80::1"), route("::", 0, "fe80::1")],
    );
    assert.equal(v6?.onLink, undefined);
    assert.deepEqual(
      v6?.routes.map((r) => `${r.dst}/${r.prefixLength} via ${r.gateway}`),
      ["fd00:10:71::/64 via fe80::1", "::/0 via fe80::1"],
    );
  });

  it("Calico-style: a /128 has no on-link prefix; the gateway is a link-local", () => {
    const v6 = guestIpv6Of(link, [address("fd00:192:168:50::3", 128)], [route("::", 0, "fe80::1")]);
    assert.equal(v6?.onLink, undefined);
    assert.equal(v6?.gateway, "fe80::1");
    assert.deepEqual(withoutDefaultRoute6(v6!), {
      address: "fd00:192:168:50::3",
      prefixLength: 128,
      routes: [],
    });
  });

  it("an IPv4-only link (only its link-local) has no guest IPv6", () => {
    assert.equal(
      guestIpv6Of(link, [address("fe80::1", 64, RT_SCOPE_LINK)], [route("fe80::", 64)]),
      undefined,
    );
  });
});
