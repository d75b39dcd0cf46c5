import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  BOOTREQUEST,
  DhcpParseError,
  decodeClasslessRoutes,
  decodeSearchList,
  encodeClasslessRoutes,
  encodeOption,
  encodeSearchList,
  formatMessage,
  ips,
  MessageType,
  Option,
  parseMessage,
  u8,
  u16,
  u32,
} from "../../../src/dhcp/codec";
import { classlessRoutesFor, type DhcpLease, DhcpResponder } from "../../../src/dhcp/responder";

const MAC = "52:54:00:12:34:56";
const chaddr = Buffer.from(MAC.split(":").map((h) => Number.parseInt(h, 16)));

function hex(s: string): Buffer {
  return Buffer.from(s.replace(/\s+/g, ""), "hex");
}

export function clientMessage(
  type: number,
  options: [number, Buffer][] = [],
  header: { ciaddr?: string; flags?: number; xid?: number; mac?: Buffer } = {},
): Buffer {
  return formatMessage(
    {
      op: BOOTREQUEST,
      xid: header.xid ?? 0x1234abcd,
      flags: header.flags ?? 0,
      ciaddr: header.ciaddr,
      chaddr: header.mac ?? chaddr,
    },
    [[Option.MESSAGE_TYPE, u8(type)], ...options],
  ).datagram;
}

function reasonOf(buf: Buffer): string {
  try {
    parseMessage(buf);
    return "parsed";
  } catch (error) {
    assert.ok(error instanceof DhcpParseError, `not a DhcpParseError: ${error}`);
    return error.reason;
  }
}

const flannel: DhcpLease = {
  mac: MAC,
  ip: "10.244.1.5",
  prefixLength: 24,
  router: "10.244.1.1",
  routes: [{ dst: "10.244.0.0", prefixLength: 16, gateway: "10.244.1.1" }],
  mtu: 1450,
  dns: ["10.96.0.10"],
  search: ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
  domain: "cluster.local",
  hostname: "vm1",
  leaseSeconds: 3600,
};

describe("DHCP codec: option encodings", () => {
  it("encodes option 121 exactly as the RFC 3442 examples", () => {
    // RFC 3442 section 2: destination width, significant octets, router.
    const gw = "10.0.0.1";
    const cases: [string, number, string][] = [
      ["0.0.0.0", 0, "00"],
      ["10.0.0.0", 8, "08 0a"],
      ["10.17.0.0", 16, "10 0a 11"],
      ["10.27.129.0", 24, "18 0a 1b 81"],
      ["10.229.0.128", 25, "19 0a e5 00 80"],
      ["10.198.122.47", 32, "20 0a c6 7a 2f"],
    ];
    for (const [dst, prefixLength, bytes] of cases) {
      const encoded = encodeClasslessRoutes([{ dst, prefixLength, gateway: gw }]);
      assert.deepEqual(
        encoded,
        Buffer.concat([hex(bytes), hex("0a000001")]),
        `${dst}/${prefixLength}`,
      );
      assert.deepEqual(decodeClasslessRoutes(encoded), [{ dst, prefixLength, gateway: gw }]);
    }
  });

  it("refuses a 121 route with host bits set or a width over 32", () => {
    assert.throws(() =>
      encodeClasslessRoutes([{ dst: "10.0.0.1", prefixLength: 8, gateway: "0.0.0.0" }]),
    );
    assert.throws(() => decodeClasslessRoutes(hex("21 0a000000 00000000")), DhcpParseError);
    assert.throws(() => decodeClasslessRoutes(hex("18 0a 1b")), DhcpParseError);
  });

  it("encodes option 119 as RFC 1035 names, each terminated, and reads RFC 3397's compressed example", () => {
    assert.deepEqual(
      encodeSearchList(["eng.apple.com", "marketing.apple.com."]),
      Buffer.concat([
        hex("03"),
        Buffer.from("eng"),
        hex("05"),
        Buffer.from("apple"),
        hex("03"),
        Buffer.from("com"),
        hex("00 09"),
        Buffer.from("marketing"),
        hex("05"),
        Buffer.from("apple"),
        hex("03"),
        Buffer.from("com"),
        hex("00"),
      ]),
    );
    // RFC 3397 section 3: the second name points back at "apple.com" (offset 4).
    const rfc = Buffer.concat([
      hex("03"),
      Buffer.from("eng"),
      hex("05"),
      Buffer.from("apple"),
      hex("03"),
      Buffer.from("com"),
      hex("00 09"),
      Buffer.from("marketing"),
      hex("c0 04"),
    ]);
    assert.equal(rfc.length, 27);
    assert.deepEqual(decodeSearchList(rfc), ["eng.apple.com", "marketing.apple.com"]);
    assert.throws(
      () => decodeSearchList(hex("03 61 62 63 c0 08")),
      DhcpParseError,
      "forward pointer",
    );
    assert.throws(() => encodeSearchList(["a..b"]));
    assert.throws(() => encodeSearchList([`${"x".repeat(64)}.com`]));
  });

  it("splits an option longer than 255 bytes into consecutive instances and joins them back (RFC 3396)", () => {
    const names = Array.from({ length: 20 }, (_, i) => `namespace-${i}.svc.cluster.local`);
    const value = encodeSearchList(names);
    assert.ok(value.length > 255);
    const encoded = encodeOption(Option.SEARCH_LIST, value);
    assert.equal(encoded[0], 119);
    assert.equal(encoded[1], 255);
    assert.equal(encoded[257], 119);
    assert.equal(encoded[258], Math.min(255, value.length - 255));
    assert.equal(encoded.length, value.length + 2 * Math.ceil(value.length / 255));
    const msg = parseMessage(clientMessage(MessageType.DISCOVER, [[Option.SEARCH_LIST, value]]));
    assert.deepEqual(msg.options.searchList, names);
  });

  it("encodes the fixed-size options byte for byte (RFC 2132)", () => {
    assert.deepEqual(
      encodeOption(Option.SUBNET_MASK, ips(["255.255.255.0"])),
      hex("01 04 ffffff00"),
    );
    assert.deepEqual(encodeOption(Option.ROUTER, ips(["10.244.1.1"])), hex("03 04 0af40101"));
    assert.deepEqual(
      encodeOption(Option.DNS, ips(["1.1.1.1", "8.8.8.8"])),
      hex("06 08 01010101 08080808"),
    );
    assert.deepEqual(encodeOption(Option.MTU, u16(1450)), hex("1a 02 05aa"));
    assert.deepEqual(encodeOption(Option.LEASE_TIME, u32(3600)), hex("33 04 00000e10"));
    assert.deepEqual(encodeOption(Option.HOSTNAME, Buffer.from("vm1")), hex("0c 03 766d31"));
  });
});

describe("DHCP codec: parse", () => {
  it("round-trips a message with every option the server sends", () => {
    const responder = new DhcpResponder("10.244.1.1", [flannel]);
    const out = responder.handle(clientMessage(MessageType.DISCOVER));
    assert.equal(out.kind, "reply");
    if (out.kind !== "reply") return;
    const m = parseMessage(out.reply.datagram);
    assert.equal(m.op, 2);
    assert.equal(m.xid, 0x1234abcd);
    assert.equal(m.mac, MAC);
    assert.equal(m.yiaddr, "10.244.1.5");
    assert.deepEqual(m.options, {
      messageType: MessageType.OFFER,
      serverId: "10.244.1.1",
      leaseSeconds: 3600,
      subnetMask: "255.255.255.0",
      routers: ["10.244.1.1"],
      mtu: 1450,
      renewalSeconds: 1800,
      rebindingSeconds: 3150,
      classlessRoutes: [
        { dst: "10.244.0.0", prefixLength: 16, gateway: "10.244.1.1" },
        { dst: "0.0.0.0", prefixLength: 0, gateway: "10.244.1.1" },
      ],
      dns: ["10.96.0.10"],
      domain: "cluster.local",
      searchList: flannel.search,
      hostname: "vm1",
      broadcast: "10.244.1.255",
    });
    assert.ok(out.reply.datagram.length >= 300, "padded to the BOOTP minimum");
  });

  it("reads options moved into file and sname by option overload (52)", () => {
    const buf = clientMessage(MessageType.REQUEST, [[Option.OVERLOAD, u8(3)]]);
    Buffer.concat([hex("32 04 0af40105"), hex("ff")]).copy(buf, 108); // file: 50
    Buffer.concat([hex("0c 03 766d31 ff")]).copy(buf, 44); // sname: 12
    const m = parseMessage(buf);
    assert.equal(m.options.requestedIp, "10.244.1.5");
    assert.equal(m.options.hostname, "vm1");
  });

  it("names the reason for each malformed datagram", () => {
    const good = clientMessage(MessageType.DISCOVER);
    assert.equal(reasonOf(good), "parsed");
    assert.equal(reasonOf(good.subarray(0, 239)), "truncated");
    assert.equal(reasonOf(Buffer.alloc(0)), "truncated");
    assert.equal(reasonOf(Buffer.concat([good, Buffer.alloc(1500)])), "oversized");
    const badOp = Buffer.from(good);
    badOp[0] = 7;
    assert.equal(reasonOf(badOp), "bad-op");
    const badHlen = Buffer.from(good);
    badHlen[2] = 17;
    assert.equal(reasonOf(badHlen), "bad-hlen");
    const badCookie = Buffer.from(good);
    badCookie[236] = 0;
    assert.equal(reasonOf(badCookie), "bad-cookie");
    const head = good.subarray(0, 240);
    assert.equal(reasonOf(Buffer.concat([head, hex("35 05 01")])), "bad-option-length");
    assert.equal(reasonOf(Buffer.concat([head, hex("35")])), "bad-option-length");
    assert.equal(reasonOf(Buffer.concat([head, hex("35 02 01 01 ff")])), "bad-option-length");
    assert.equal(reasonOf(Buffer.concat([head, hex("32 02 0a0b ff")])), "bad-option-length");
    assert.equal(reasonOf(Buffer.concat([head, hex("79 03 18 0a 00 ff")])), "bad-option-length");
    assert.equal(reasonOf(Buffer.concat([head, hex("34 01 07 ff")])), "bad-overload");
    // Padding and a missing END are tolerated, as real clients need.
    assert.equal(reasonOf(Buffer.concat([head, hex("00 00 35 01 01")])), "parsed");
  });
});

describe("DHCP responder", () => {
  const responder = new DhcpResponder("10.244.1.1", [flannel]);
  const prl = (codes: number[]): [number, Buffer] => [
    Option.PARAMETER_REQUEST_LIST,
    Buffer.from(codes),
  ];

  function reply(buf: Buffer) {
    const out = responder.handle(buf);
    assert.equal(out.kind, "reply", JSON.stringify(out));
    if (out.kind !== "reply") throw new Error("no reply");
    return { ...out.reply, message: parseMessage(out.reply.datagram) };
  }

  it("offers the lease to its MAC by unicast to the offered address", () => {
    const r = reply(clientMessage(MessageType.DISCOVER));
    assert.equal(r.type, "OFFER");
    assert.equal(r.address, "10.244.1.5");
    assert.equal(
      reply(clientMessage(MessageType.DISCOVER, [], { flags: 0x8000 })).address,
      "255.255.255.255",
    );
  });

  it("ACKs a REQUEST when selecting, in init-reboot, renewing and rebinding", () => {
    const selecting = reply(
      clientMessage(MessageType.REQUEST, [
        [Option.SERVER_ID, ips(["10.244.1.1"])],
        [Option.REQUESTED_IP, ips(["10.244.1.5"])],
      ]),
    );
    assert.equal(selecting.type, "ACK");
    const reboot = reply(
      clientMessage(MessageType.REQUEST, [[Option.REQUESTED_IP, ips(["10.244.1.5"])]]),
    );
    assert.equal(reboot.type, "ACK");
    const renewing = reply(clientMessage(MessageType.REQUEST, [], { ciaddr: "10.244.1.5" }));
    assert.equal(renewing.type, "ACK");
    assert.equal(renewing.address, "10.244.1.5", "a renewal is answered by unicast to ciaddr");
    assert.equal(renewing.message.yiaddr, "10.244.1.5");
  });

  it("NAKs by broadcast a REQUEST for another address", () => {
    const nak = reply(
      clientMessage(MessageType.REQUEST, [[Option.REQUESTED_IP, ips(["10.244.1.9"])]]),
    );
    assert.equal(nak.type, "NAK");
    assert.equal(nak.address, "255.255.255.255");
    assert.equal(nak.message.options.messageType, MessageType.NAK);
    assert.equal(nak.message.yiaddr, "0.0.0.0");
    assert.equal(
      reply(clientMessage(MessageType.REQUEST, [], { ciaddr: "10.244.1.6" })).type,
      "NAK",
    );
  });

  it("sends a reply to the lease, never to a ciaddr the guest chose", () => {
    const foreign = { ciaddr: "10.244.1.77" };
    const offer = reply(clientMessage(MessageType.DISCOVER, [], foreign));
    assert.equal(offer.type, "OFFER");
    assert.equal(offer.address, "10.244.1.5", "a DISCOVER with a foreign ciaddr: to the lease");
    const bcast = reply(clientMessage(MessageType.DISCOVER, [], { ...foreign, flags: 0x8000 }));
    assert.equal(bcast.address, "255.255.255.255", "broadcast flag: broadcast");
    const selecting = reply(
      clientMessage(
        MessageType.REQUEST,
        [
          [Option.SERVER_ID, ips(["10.244.1.1"])],
          [Option.REQUESTED_IP, ips(["10.244.1.5"])],
        ],
        { ciaddr: "10.244.1.1" },
      ),
    );
    assert.equal(selecting.type, "ACK");
    assert.equal(selecting.address, "10.244.1.5", "not to the gateway it named as ciaddr");
    const inform = reply(clientMessage(MessageType.INFORM, [], foreign));
    assert.equal(inform.address, "255.255.255.255", "an INFORM from a foreign address: broadcast");
  });

  it("answers INFORM without lease fields", () => {
    const r = reply(clientMessage(MessageType.INFORM, [], { ciaddr: "10.244.1.5" }));
    assert.equal(r.type, "ACK");
    assert.equal(r.message.yiaddr, "0.0.0.0");
    assert.equal(r.address, "10.244.1.5");
    assert.equal(r.message.options.leaseSeconds, undefined);
    assert.equal(r.message.options.renewalSeconds, undefined);
    assert.equal(r.message.options.mtu, 1450);
  });

  it("drops an unknown MAC, a REQUEST for another server, a reply op, and logs RELEASE/DECLINE", () => {
    const other = Buffer.from("020000000001", "hex");
    const reason = (buf: Buffer) => {
      const out = responder.handle(buf);
      return out.kind === "drop" ? out.reason : out.kind;
    };
    assert.equal(reason(clientMessage(MessageType.DISCOVER, [], { mac: other })), "unknown-mac");
    assert.equal(
      reason(
        clientMessage(MessageType.REQUEST, [
          [Option.SERVER_ID, ips(["10.0.0.9"])],
          [Option.REQUESTED_IP, ips(["10.244.1.5"])],
        ]),
      ),
      "other-server",
    );
    const asReply = clientMessage(MessageType.DISCOVER);
    asReply[0] = 2;
    assert.equal(reason(asReply), "wrong-op");
    assert.equal(reason(clientMessage(MessageType.RELEASE, [], { ciaddr: "10.244.1.5" })), "note");
    assert.equal(reason(clientMessage(MessageType.DECLINE)), "note");
    assert.equal(reason(clientMessage(MessageType.OFFER)), "bad-message-type");
  });

  it("sends 1, 3, 26, 51, 54 unasked, then the asked-for options in the client's order", () => {
    const r = reply(clientMessage(MessageType.DISCOVER, [prl([119, 6, 12, 121])]));
    const codes: number[] = [];
    const d = r.datagram;
    for (let i = 240; d[i] !== 255; i += 2 + d[i + 1]!) if (d[i] !== 0) codes.push(d[i]!);
    assert.deepEqual(codes.slice(0, 7), [53, 54, 51, 1, 3, 26, 119]);
    assert.deepEqual(codes.slice(7, 10), [6, 12, 121]);
  });

  it("keeps within the client's maximum message size, dropping the unasked options first", () => {
    const long = {
      ...flannel,
      search: Array.from({ length: 12 }, (_, i) => `ns${i}.svc.cluster.local`),
    };
    const small = new DhcpResponder("10.244.1.1", [long]);
    const out = small.handle(
      clientMessage(MessageType.DISCOVER, [prl([1, 3, 121]), [Option.MAX_MESSAGE_SIZE, u16(576)]]),
    );
    assert.equal(out.kind, "reply");
    if (out.kind !== "reply") return;
    assert.ok(out.reply.datagram.length <= 576 - 28);
    const m = parseMessage(out.reply.datagram);
    assert.equal(m.options.mtu, 1450);
    assert.equal(m.options.classlessRoutes?.length, 2);
    assert.equal(m.options.searchList, undefined, "the unasked long search list is what gave way");
  });

  it("gives a Calico /32 lease an on-link route to its gateway before the default route", () => {
    const calico: DhcpLease = {
      ...flannel,
      ip: "10.1.2.3",
      prefixLength: 32,
      router: "169.254.1.1",
      routes: [],
    };
    assert.deepEqual(classlessRoutesFor(calico), [
      { dst: "169.254.1.1", prefixLength: 32, gateway: "0.0.0.0" },
      { dst: "0.0.0.0", prefixLength: 0, gateway: "169.254.1.1" },
    ]);
  });
});
