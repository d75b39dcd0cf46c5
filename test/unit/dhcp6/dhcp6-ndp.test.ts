import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  buildRouterAdvertisement,
  NdpParseError,
  parseRouterSolicitation,
  type RouterAdvertisement,
} from "../../../src/dhcp6/ndp";
import { scapy } from "../../harness/scapy";

interface RaSummary {
  type: number;
  M: number;
  O: number;
  routerlifetime: number;
  chlim: number;
  slla?: string;
  mtu?: number;
  prefixes: { prefix: string; len: number; L: number; A: number; valid: number }[];
  rdnss: string[];
  rdnssLifetime?: number;
  dnssl: string[];
  undecoded?: string;
}

const base: RouterAdvertisement = {
  sourceMac: "02:aa:bb:cc:dd:ee",
  routerLifetime: 1800,
  mtu: 1450,
  dns: ["fd00:10:96::a", "fd00:10:96::b"],
  search: ["default.svc.cluster.local"],
  dnsLifetime: 600,
  onLink: [],
  prefixLifetime: 600,
};

function decode(ra: RouterAdvertisement): RaSummary {
  return scapy(["ra"], buildRouterAdvertisement(ra).toString("hex")) as RaSummary;
}

describe("router advertisement", () => {
  it("a Calico-style /128 pod: M and O, a router lifetime, SLLA, MTU, RDNSS, DNSSL, no prefix", () => {
    const s = decode(base);
    assert.equal(s.type, 134);
    assert.equal(s.M, 1);
    assert.equal(s.O, 1);
    assert.equal(s.routerlifetime, 1800);
    assert.equal(s.chlim, 64);
    assert.equal(s.slla, "02:aa:bb:cc:dd:ee");
    assert.equal(s.mtu, 1450);
    assert.deepEqual(s.rdnss, ["fd00:10:96::a", "fd00:10:96::b"]);
    assert.equal(s.rdnssLifetime, 600);
    assert.deepEqual(s.dnssl, ["default.svc.cluster.local"]);
    assert.deepEqual(s.prefixes, []);
    assert.equal(s.undecoded, undefined, "every byte is an option scapy knows");
  });

  it("a Flannel-style /64 pod: the prefix is on-link (L) but not for SLAAC (no A)", () => {
    const s = decode({ ...base, onLink: [{ prefix: "fd00:10:244:1::5", prefixLength: 64 }] });
    assert.deepEqual(s.prefixes, [{ prefix: "fd00:10:244:1::", len: 64, L: 1, A: 0, valid: 600 }]);
  });

  it("refuses a zero router lifetime: the guest would get no default route", () => {
    assert.throws(() => buildRouterAdvertisement({ ...base, routerLifetime: 0 }), /must be > 0/);
  });
});

describe("router solicitation", () => {
  const rs = (hex: string) => Buffer.from(hex.replace(/\s+/g, ""), "hex");

  it("parses an RS and its source link-layer address", () => {
    assert.deepEqual(
      parseRouterSolicitation(rs("85000000 00000000 0101 525400123456"), "fe80::1"),
      {
        sourceMac: "52:54:00:12:34:56",
      },
    );
    assert.deepEqual(parseRouterSolicitation(rs("85000000 00000000"), "::"), {});
  });

  it("refuses what RFC 4861 section 6.1.1 says a router must drop", () => {
    for (const [hex, source] of [
      ["850000", "fe80::1"], // short
      ["86000000 00000000", "fe80::1"], // an RA, not an RS
      ["85010000 00000000", "fe80::1"], // code 1
      ["85000000 00000000 0100 525400123456", "fe80::1"], // option of length 0
      ["85000000 00000000 0102 525400123456", "fe80::1"], // option past the end
      ["85000000 00000000 0101 525400123456", "::"], // SLLA from the unspecified address
    ] as const) {
      assert.throws(() => parseRouterSolicitation(rs(hex), source), NdpParseError, hex);
    }
  });
});
