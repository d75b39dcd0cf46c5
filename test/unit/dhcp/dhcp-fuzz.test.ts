import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  BOOTREQUEST,
  DhcpParseError,
  formatMessage,
  ips,
  MessageType,
  Option,
  parseMessage,
  u8,
  u16,
} from "../../../src/dhcp/codec";
import type { DhcpLease } from "../../../src/dhcp/responder";
import { DhcpHandler } from "../../../src/dhcp/server";
import { rng } from "../../harness/rng";

const MAC = Buffer.from("525400123456", "hex");
const lease: DhcpLease = {
  mac: "52:54:00:12:34:56",
  ip: "10.1.2.3",
  prefixLength: 32,
  router: "169.254.1.1",
  routes: [],
  mtu: 1450,
  dns: ["10.96.0.10"],
  search: ["default.svc.cluster.local", "svc.cluster.local"],
  hostname: "vm1",
  leaseSeconds: 600,
};

function seeds(next: () => number): Buffer[] {
  const msg = (type: number, options: [number, Buffer][], ciaddr?: string) =>
    formatMessage({ op: BOOTREQUEST, xid: next(), flags: 0, ciaddr, chaddr: MAC }, [
      [Option.MESSAGE_TYPE, u8(type)],
      ...options,
    ]).datagram;
  return [
    msg(MessageType.DISCOVER, [
      [Option.PARAMETER_REQUEST_LIST, Buffer.from([1, 3, 6, 12, 15, 26, 28, 119, 121])],
      [Option.MAX_MESSAGE_SIZE, u16(576)],
      [Option.CLIENT_ID, Buffer.from("01525400123456", "hex")],
    ]),
    msg(MessageType.REQUEST, [
      [Option.SERVER_ID, ips(["169.254.1.1"])],
      [Option.REQUESTED_IP, ips(["10.1.2.3"])],
    ]),
    msg(MessageType.REQUEST, [], "10.1.2.3"),
    msg(MessageType.INFORM, [[Option.OVERLOAD, u8(3)]], "10.1.2.3"),
    msg(MessageType.RELEASE, [], "10.1.2.3"),
  ];
}

function mutate(base: Buffer, next: () => number): Buffer {
  const buf = Buffer.from(base);
  switch (next() % 6) {
    case 0: // flip bits anywhere
      for (let i = 0, n = 1 + (next() % 8); i < n; i++)
        buf[next() % buf.length]! ^= 1 << (next() % 8);
      return buf;
    case 1: // truncate
      return buf.subarray(0, next() % buf.length);
    case 2: // break an option length in the options area
      buf[240 + (next() % (buf.length - 240))] = next() & 0xff;
      return buf;
    case 3: // random garbage options after the cookie
      for (let i = 240; i < buf.length; i++) buf[i] = next() & 0xff;
      return buf;
    case 4: // grow past the limit or append junk
      return Buffer.concat([buf, Buffer.alloc(next() % 1400, next() & 0xff)]);
    default: // a header field: op, htype, hlen, giaddr, cookie
      buf[[0, 1, 2, 24, 236, 239][next() % 6]!] = next() & 0xff;
      return buf;
  }
}

describe("DHCP fuzz", () => {
  it("100,000 random and mutated datagrams: no exception escapes codec or handler, all counted", () => {
    const next = rng(0x5eed);
    const base = seeds(next);
    let sent = 0;
    const handler = new DhcpHandler(
      "169.254.1.1",
      [lease],
      async () => {
        sent++;
      },
      undefined,
      1e9,
    );
    const N = 100_000;
    const started = Date.now();
    for (let i = 0; i < N; i++) {
      let packet: Buffer;
      const pick = next() % 10;
      if (pick < 3) {
        packet = Buffer.alloc(next() % 1600);
        for (let j = 0; j < packet.length; j++) packet[j] = next() & 0xff;
      } else if (pick < 9) {
        packet = mutate(base[next() % base.length]!, next);
      } else {
        packet = base[next() % base.length]!;
      }
      try {
        parseMessage(packet);
      } catch (error) {
        assert.ok(
          error instanceof DhcpParseError,
          `codec threw ${error} on ${packet.toString("hex")}`,
        );
      }
      handler.handle(packet);
    }
    const stats = handler.stats();
    const dropped = Object.values(stats.dropped).reduce((a, b) => a + (b ?? 0), 0);
    assert.equal(stats.received, N);
    assert.equal(stats.dropped.internal, undefined, "no handler bug surfaced as an internal drop");
    assert.equal(
      sent + dropped + stats.released + stats.declined,
      N,
      "every datagram is accounted for",
    );
    assert.ok(dropped > N / 2);
    assert.ok(sent > 1000, "valid datagrams among the noise are still answered");
    assert.ok(Date.now() - started < 60_000);
  });

  it("a flood from the pod's own MAC is rate limited, and the server answers again afterwards", async () => {
    const next = rng(7);
    const [discover] = seeds(next);
    let sent = 0;
    const handler = new DhcpHandler("169.254.1.1", [lease], async () => {
      sent++;
    });
    for (let i = 0; i < 5000; i++) handler.handle(discover!);
    assert.ok((handler.stats().dropped["rate-limited"] ?? 0) > 4000);
    const before = sent;
    await new Promise((r) => setTimeout(r, 100));
    handler.handle(discover!);
    await new Promise((r) => setImmediate(r));
    assert.equal(sent, before + 1);
  });
});
