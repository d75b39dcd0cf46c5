import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  Dhcp6Option,
  Dhcp6ParseError,
  Dhcp6Status,
  Dhcp6Type,
  decodeDomainList,
  duidLl,
  encodeDomainList,
  formatDhcp6,
  iaAddrOption,
  iaNaOption,
  option,
  parseDhcp6,
} from "../../../src/dhcp6/codec";
import { type Dhcp6Lease, Dhcp6Responder } from "../../../src/dhcp6/responder";
import { bytesToIpv6, ipv6ToBytes, linkLocalOfMac, macFromEui64 } from "../../../src/util/ipv6";
import { scapy } from "../../harness/scapy";

const GUEST_MAC = "52:54:00:12:34:56";
const BRIDGE_MAC = "02:aa:bb:cc:dd:ee";
const GUEST_LL = linkLocalOfMac(GUEST_MAC);
const lease: Dhcp6Lease = {
  mac: GUEST_MAC,
  address: "fd00:10:244:1::5",
  dns: ["fd00:10:96::a"],
  search: ["default.svc.cluster.local", "svc.cluster.local"],
  leaseSeconds: 600,
};

interface Summary {
  type: number;
  trid: number;
  serverMac?: string;
  serverDuidType?: number;
  clientDuid?: string;
  ia: {
    iaid: number;
    t1: number;
    t2: number;
    addresses: [string, number, number][];
    status: number[];
  }[];
  status: number[];
  dns: string[];
  domains: string[];
  rapidCommit?: boolean;
  preference?: number;
}

function reasonOf(buf: Buffer): string {
  try {
    parseDhcp6(buf);
    return "parsed";
  } catch (error) {
    assert.ok(error instanceof Dhcp6ParseError, `not a Dhcp6ParseError: ${error}`);
    return error.reason;
  }
}

describe("IPv6 address text", () => {
  it("round-trips RFC 5952 forms and refuses what is not an address", () => {
    for (const [input, canonical] of [
      ["fd00:10:244:1::5", "fd00:10:244:1::5"],
      ["FE80::1", "fe80::1"],
      ["::", "::"],
      ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
      ["2001:db8::0:1", "2001:db8::1"],
      ["::ffff:10.0.0.1", "::ffff:a00:1"],
      ["fe80::1%br-eth0", "fe80::1"],
      ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"],
    ]) {
      assert.equal(bytesToIpv6(ipv6ToBytes(input!)), canonical, input);
    }
    for (const bad of [
      "",
      "1:2:3",
      "1::2::3",
      "12345::",
      "1:2:3:4:5:6:7:8:9",
      "10.0.0.1",
      "g::1",
    ]) {
      assert.throws(() => ipv6ToBytes(bad), /not an IPv6 address/, bad);
    }
  });

  it("the EUI-64 link-local of a MAC gives the MAC back", () => {
    assert.equal(GUEST_LL, "fe80::5054:ff:fe12:3456");
    assert.equal(macFromEui64(GUEST_LL), GUEST_MAC);
    assert.equal(macFromEui64("fe80::1"), undefined);
  });
});

describe("DHCPv6 codec", () => {
  it("parses what scapy builds for each client message", () => {
    const msgs = scapy(["clients", GUEST_MAC, BRIDGE_MAC]) as Record<string, string>;
    const solicit = parseDhcp6(Buffer.from(msgs.solicit!, "hex"));
    assert.equal(solicit.type, Dhcp6Type.SOLICIT);
    assert.equal(solicit.transactionId, 0x123456);
    assert.equal(solicit.clientId?.mac, GUEST_MAC);
    assert.deepEqual(solicit.oro, [23, 24]);
    assert.equal(solicit.iaNa[0]?.iaid, 0x0a0b0c0d);
    assert.equal(solicit.rapidCommit, false);
    assert.equal(parseDhcp6(Buffer.from(msgs.solicit_rapid!, "hex")).rapidCommit, true);
    assert.equal(parseDhcp6(Buffer.from(msgs.solicit_en!, "hex")).clientId?.mac, undefined);
    const request = parseDhcp6(Buffer.from(msgs.request!, "hex"));
    assert.deepEqual(request.serverId?.raw, duidLl(BRIDGE_MAC));
    assert.equal(request.iaNa[0]?.addresses[0]?.address, "fd00:10:244:1::5");
  });

  it("refuses malformed messages with the reason", () => {
    const duid = option(Dhcp6Option.CLIENTID, duidLl(GUEST_MAC));
    const ok = formatDhcp6(Dhcp6Type.SOLICIT, 1, [duid]);
    assert.equal(reasonOf(ok), "parsed");
    assert.equal(reasonOf(ok.subarray(0, 3)), "truncated");
    assert.equal(reasonOf(Buffer.alloc(1453, 1)), "oversized");
    assert.equal(reasonOf(formatDhcp6(Dhcp6Type.RELAY_FORW, 1, [])), "relayed");
    assert.equal(reasonOf(ok.subarray(0, ok.length - 1)), "bad-option-length");
    assert.equal(reasonOf(formatDhcp6(1, 1, [duid, duid])), "duplicate-option");
    assert.equal(reasonOf(formatDhcp6(1, 1, [option(1, Buffer.from([0, 3]))])), "bad-duid");
    // DUID-LL of an Ethernet link whose address is not 6 bytes
    assert.equal(
      reasonOf(formatDhcp6(1, 1, [option(1, Buffer.from("00030001aabbcc", "hex"))])),
      "bad-duid",
    );
    assert.equal(
      reasonOf(formatDhcp6(1, 1, [duid, option(Dhcp6Option.IA_NA, Buffer.alloc(11))])),
      "bad-option-length",
    );
    assert.equal(
      reasonOf(formatDhcp6(1, 1, [duid, option(Dhcp6Option.ORO, Buffer.alloc(3))])),
      "bad-option-length",
    );
    assert.equal(
      reasonOf(formatDhcp6(1, 1, [duid, option(Dhcp6Option.RAPID_COMMIT, Buffer.alloc(1))])),
      "bad-option-length",
    );
    assert.equal(
      reasonOf(formatDhcp6(1, 1, [duid, option(Dhcp6Option.DOMAIN_LIST, Buffer.from([5, 97]))])),
      "bad-domain",
    );
    const ia = Buffer.concat([Buffer.alloc(12), option(Dhcp6Option.IAADDR, Buffer.alloc(23))]);
    assert.equal(
      reasonOf(formatDhcp6(1, 1, [duid, option(Dhcp6Option.IA_NA, ia)])),
      "bad-option-length",
    );
  });

  it("encodes domain lists as RFC 1035 names and refuses a label over 63 bytes", () => {
    const names = ["default.svc.cluster.local", "example.org"];
    assert.deepEqual(decodeDomainList(encodeDomainList(names)), names);
    assert.throws(() => encodeDomainList([`${"a".repeat(64)}.org`]), /label of 64 bytes/);
  });
});

describe("DHCPv6 responder, read back by scapy", () => {
  const responder = new Dhcp6Responder(BRIDGE_MAC, [lease]);
  const msgs = scapy(["clients", GUEST_MAC, BRIDGE_MAC]) as Record<string, string>;
  const replies: Record<string, string> = {};
  const drops: Record<string, string> = {};
  for (const [name, hex] of Object.entries(msgs)) {
    const outcome = responder.handle(Buffer.from(hex, "hex"), `${GUEST_LL}%br-eth0`);
    if (outcome.kind === "reply") {
      replies[name] = outcome.reply.datagram.toString("hex");
      assert.equal(outcome.reply.address, GUEST_LL);
      assert.equal(outcome.reply.port, 546);
    } else drops[name] = outcome.reason;
  }
  const decoded = scapy(["decode"], JSON.stringify(replies)) as Record<string, Summary>;

  it("SOLICIT gets an ADVERTISE with the pod address, the IAID echoed, preference 255", () => {
    const s = decoded.solicit!;
    assert.equal(s.type, Dhcp6Type.ADVERTISE);
    assert.equal(s.trid, 0x123456);
    assert.equal(s.serverDuidType, 3);
    assert.equal(s.serverMac, BRIDGE_MAC);
    assert.equal(s.preference, 255);
    assert.deepEqual(s.ia, [
      {
        iaid: 0x0a0b0c0d,
        t1: 300,
        t2: 480,
        addresses: [["fd00:10:244:1::5", 600, 600]],
        status: [],
      },
    ]);
    assert.deepEqual(s.dns, ["fd00:10:96::a"]);
    assert.deepEqual(s.domains, ["default.svc.cluster.local", "svc.cluster.local"]);
  });

  it("SOLICIT with rapid commit gets a REPLY with rapid commit and the binding", () => {
    const s = decoded.solicit_rapid!;
    assert.equal(s.type, Dhcp6Type.REPLY);
    assert.equal(s.rapidCommit, true);
    assert.equal(s.ia[0]?.addresses[0]?.[0], "fd00:10:244:1::5");
  });

  it("a client is matched by its EUI-64 link-local when its DUID holds no MAC", () => {
    assert.equal(decoded.solicit_en?.ia[0]?.addresses[0]?.[0], "fd00:10:244:1::5");
    const other = responder.handle(Buffer.from(msgs.solicit_en!, "hex"), "fe80::1234");
    assert.equal(other.kind === "drop" && other.reason, "unknown-client");
  });

  it("REQUEST, RENEW and REBIND get a REPLY binding the pod address", () => {
    for (const name of ["request", "renew", "rebind_old"]) {
      const s = decoded[name]!;
      assert.equal(s.type, Dhcp6Type.REPLY, name);
      assert.equal(s.ia[0]?.iaid, 0x0a0b0c0d, name);
      assert.deepEqual(s.ia[0]?.addresses[0], ["fd00:10:244:1::5", 600, 600], name);
    }
    // The address the client held that is not its lease goes back with lifetime 0.
    assert.deepEqual(decoded.rebind_old?.ia[0]?.addresses[1], ["fd00:10:244:1::77", 0, 0]);
  });

  it("a REQUEST for a foreign address gets NotOnLink; a CONFIRM Success or NotOnLink", () => {
    assert.deepEqual(decoded.request_foreign?.ia[0]?.status, [Dhcp6Status.NOT_ON_LINK]);
    assert.deepEqual(decoded.request_foreign?.ia[0]?.addresses, []);
    assert.deepEqual(decoded.confirm_ok?.status, [Dhcp6Status.SUCCESS]);
    assert.deepEqual(decoded.confirm_bad?.status, [Dhcp6Status.NOT_ON_LINK]);
  });

  it("INFORMATION-REQUEST gets DNS and domains and no IA; RELEASE Success; DECLINE of a foreign address NoBinding", () => {
    assert.deepEqual(decoded.inforeq?.ia, []);
    assert.deepEqual(decoded.inforeq?.dns, ["fd00:10:96::a"]);
    assert.deepEqual(decoded.release?.status, [Dhcp6Status.SUCCESS]);
    assert.deepEqual(decoded.decline_other?.ia[0]?.status, [Dhcp6Status.NO_BINDING]);
  });

  it("a RENEW naming another server is dropped, not answered", () => {
    assert.equal(drops.renew_other_server, "other-server");
    assert.deepEqual(Object.keys(drops), ["renew_other_server"]);
  });

  it("a REQUEST or RENEW unicast from the client's own lease (busybox udhcpc6's renewal) gets UseMulticast there, nothing else; from another address, dropped", () => {
    const duid = option(Dhcp6Option.CLIENTID, duidLl(GUEST_MAC));
    const serverId = option(Dhcp6Option.SERVERID, duidLl(BRIDGE_MAC));
    const ia = iaNaOption(7, 0, 0, [iaAddrOption(lease.address, 0, 0)]);
    for (const type of [Dhcp6Type.REQUEST, Dhcp6Type.RENEW, Dhcp6Type.RELEASE]) {
      const unicast = formatDhcp6(type, 9, [duid, serverId, ia]);
      const answered = responder.handle(unicast, "fd00:10:244:1:0:0:0:5");
      assert.equal(answered.kind, "reply", JSON.stringify(answered));
      if (answered.kind !== "reply") return;
      assert.equal(answered.reply.type, "REPLY");
      assert.equal(answered.reply.address, lease.address, "sent to the lease, canonical");
      assert.equal(answered.reply.bound, undefined, "binds nothing");
      const reply = parseDhcp6(answered.reply.datagram);
      assert.equal(reply.type, Dhcp6Type.REPLY);
      assert.equal(reply.transactionId, 9);
      assert.deepEqual(
        reply.rawOptions.map((o) => o.code),
        [Dhcp6Option.SERVERID, Dhcp6Option.CLIENTID, Dhcp6Option.STATUS_CODE],
        "the server id, the client id, the status, and nothing else",
      );
      assert.ok(reply.serverId?.raw.equals(duidLl(BRIDGE_MAC)));
      assert.ok(reply.clientId?.raw.equals(duidLl(GUEST_MAC)));
      assert.equal(reply.rawOptions[2]!.value.readUInt16BE(0), Dhcp6Status.USE_MULTICAST);
    }
    for (const [datagram, source] of [
      [formatDhcp6(Dhcp6Type.REQUEST, 1, [duid, serverId, ia]), "fd00:10:244:1::6"], // not its lease
      [formatDhcp6(Dhcp6Type.SOLICIT, 1, [duid, ia]), lease.address], // only ever multicast
      [formatDhcp6(Dhcp6Type.REBIND, 1, [duid, ia]), lease.address],
    ] as const) {
      const outcome = responder.handle(datagram, source);
      assert.equal(outcome.kind === "drop" && outcome.reason, "not-link-local", source);
    }
  });

  it("drops what no server may answer: non-link-local sources, server messages, stray server ids", () => {
    const duid = option(Dhcp6Option.CLIENTID, duidLl(GUEST_MAC));
    const serverId = option(Dhcp6Option.SERVERID, duidLl(BRIDGE_MAC));
    const cases: [Buffer, string, string][] = [
      [formatDhcp6(Dhcp6Type.SOLICIT, 1, [duid]), "fd00::9", "not-link-local"],
      [formatDhcp6(Dhcp6Type.REPLY, 1, [duid]), GUEST_LL, "server-message"],
      [formatDhcp6(Dhcp6Type.ADVERTISE, 1, [duid]), GUEST_LL, "server-message"],
      [formatDhcp6(Dhcp6Type.SOLICIT, 1, [duid, serverId]), GUEST_LL, "unexpected-server-id"],
      [formatDhcp6(Dhcp6Type.REQUEST, 1, [duid]), GUEST_LL, "other-server"],
      [formatDhcp6(Dhcp6Type.SOLICIT, 1, []), GUEST_LL, "no-client-id"],
      [formatDhcp6(Dhcp6Type.CONFIRM, 1, [duid]), GUEST_LL, "nothing-to-confirm"],
      [formatDhcp6(99, 1, [duid]), GUEST_LL, "bad-message-type"],
    ];
    for (const [datagram, source, reason] of cases) {
      const outcome = responder.handle(datagram, source);
      assert.equal(outcome.kind === "drop" && outcome.reason, reason, reason);
    }
  });
});
