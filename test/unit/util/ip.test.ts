// vmlet's one IP arithmetic module: what the DHCP codec, the guard, netlink and the guest
// view rely on (parsing that refuses what is not an address, masks, prefix membership).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  bytesToIp,
  hostBitsClear,
  inIpv4Prefix,
  ipToBytes,
  ipv4ToUint32,
  ipv6Words,
  maskOf,
  prefixToMask,
  uint32ToIpv4,
} from "../../../src/util/ip";

describe("IP arithmetic", () => {
  it("reads and writes IPv4 as a number, refusing what is not four octets", () => {
    assert.equal(ipv4ToUint32("10.244.1.5"), 0x0af40105);
    assert.equal(ipv4ToUint32("255.255.255.255"), 0xffffffff);
    assert.equal(uint32ToIpv4(0xc0a83203), "192.168.50.3");
    for (const bad of ["10.1.2", "10.1.2.256", "10.1.2.x", "1.2.3.4.5", "", "::1"]) {
      assert.throws(() => ipv4ToUint32(bad), /is not an IPv4 address/, bad);
    }
  });

  it("gives masks and checks prefix membership at every edge", () => {
    assert.equal(maskOf(0), 0);
    assert.equal(maskOf(24), 0xffffff00);
    assert.equal(maskOf(32), 0xffffffff);
    assert.equal(maskOf(-8), 0);
    assert.equal(maskOf(40), 0xffffffff);
    assert.equal(prefixToMask(0), "0.0.0.0");
    assert.equal(prefixToMask(20), "255.255.240.0");
    assert.equal(prefixToMask(32), "255.255.255.255");
    assert.throws(() => prefixToMask(33), /prefix length 33: expected 0\.\.32/);
    assert.ok(inIpv4Prefix("10.244.1.5", "10.244.0.0", 16));
    assert.ok(!inIpv4Prefix("10.245.1.5", "10.244.0.0", 16));
    assert.ok(inIpv4Prefix("169.254.1.1", "0.0.0.0", 0));
    assert.ok(inIpv4Prefix("10.71.0.1", "10.71.0.1", 32));
    assert.ok(!inIpv4Prefix("10.71.0.2", "10.71.0.1", 32));
  });

  it("reads IPv6 as four words, with :: and an IPv4 tail", () => {
    assert.deepEqual(ipv6Words("fe80::1"), [0xfe800000, 0, 0, 1]);
    assert.deepEqual(ipv6Words("::"), [0, 0, 0, 0]);
    assert.deepEqual(ipv6Words("::ffff:10.1.2.3"), [0, 0, 0xffff, 0x0a010203]);
    assert.deepEqual(ipv6Words("2001:db8:1:2:3:4:5:6"), [0x20010db8, 0x10002, 0x30004, 0x50006]);
    assert.throws(() => ipv6Words("1::2::3"), /two "::"/);
    assert.throws(() => ipv6Words("fe80:1"), /not an IPv6 address/);
    assert.throws(() => ipv6Words("1:2:3:4:5:6:7:8::"), /not an IPv6 address/);
  });

  it("finds host bits in both families", () => {
    assert.ok(hostBitsClear("10.10.0.0", 24));
    assert.ok(!hostBitsClear("10.10.0.1", 24));
    assert.ok(hostBitsClear("fd00:1::", 64));
    assert.ok(!hostBitsClear("fd00:1::1", 64));
    assert.ok(!hostBitsClear("fd00:1:0:0:8000::", 64));
    assert.ok(hostBitsClear("fd00:1:0:0:8000::", 65));
  });

  it("round-trips network-order bytes, compressing IPv6 as RFC 5952 asks", () => {
    assert.deepEqual([...ipToBytes("10.0.0.1")], [10, 0, 0, 1]);
    for (const [text, back] of [
      ["fd00:10:244:1::5", "fd00:10:244:1::5"],
      ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
      ["::", "::"],
      ["1:0:2:0:3:0:4:0", "1:0:2:0:3:0:4:0"],
      ["fe80::858:aff:fef4:105", "fe80::858:aff:fef4:105"],
    ]) {
      assert.equal(bytesToIp(ipToBytes(text)), back);
    }
    assert.equal(ipToBytes("::ffff:10.1.2.3").length, 16);
  });
});
