import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  Dhcp6Option,
  Dhcp6ParseError,
  Dhcp6Type,
  duidLl,
  formatDhcp6,
  iaAddrOption,
  iaNaOption,
  option,
  parseDhcp6,
} from "../../../src/dhcp6/codec";
import { Dhcp6Handler } from "../../../src/dhcp6/handler";
import { NdpParseError, parseRouterSolicitation } from "../../../src/dhcp6/ndp";
import { linkLocalOfMac } from "../../../src/util/ipv6";
import { rng } from "../../harness/rng";

const GUEST_MAC = "52:54:00:12:34:56";
const BRIDGE_MAC = "02:aa:bb:cc:dd:ee";
const SOURCE = linkLocalOfMac(GUEST_MAC);
const lease = {
  mac: GUEST_MAC,
  address: "fd00:10:244:1::5",
  dns: ["fd00:10:96::a"],
  search: ["svc.cluster.local"],
  leaseSeconds: 600,
};

function seeds(next: () => number): Buffer[] {
  const client = option(Dhcp6Option.CLIENTID, duidLl(GUEST_MAC));
  const server = option(Dhcp6Option.SERVERID, duidLl(BRIDGE_MAC));
  const oro = option(Dhcp6Option.ORO, Buffer.from([0, 23, 0, 24]));
  const ia = iaNaOption(7, 0, 0, [iaAddrOption("fd00:10:244:1::5", 0, 0)]);
  const rapid = option(Dhcp6Option.RAPID_COMMIT, Buffer.alloc(0));
  return [
    formatDhcp6(Dhcp6Type.SOLICIT, next(), [client, oro, iaNaOption(7, 0, 0, [])]),
    formatDhcp6(Dhcp6Type.SOLICIT, next(), [client, rapid, oro, ia]),
    formatDhcp6(Dhcp6Type.REQUEST, next(), [client, server, oro, ia]),
    formatDhcp6(Dhcp6Type.RENEW, next(), [client, server, ia]),
    formatDhcp6(Dhcp6Type.REBIND, next(), [client, ia]),
    formatDhcp6(Dhcp6Type.CONFIRM, next(), [client, ia]),
    formatDhcp6(Dhcp6Type.INFORMATION_REQUEST, next(), [client, oro]),
    formatDhcp6(Dhcp6Type.RELEASE, next(), [client, server, ia]),
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
    case 2: // break an option length (the byte after some code)
      buf[4 + (next() % (buf.length - 4))] = next() & 0xff;
      return buf;
    case 3: // garbage options after the header
      for (let i = 4; i < buf.length; i++) buf[i] = next() & 0xff;
      return buf;
    case 4: // grow past the limit or append junk
      return Buffer.concat([buf, Buffer.alloc(next() % 1500, next() & 0xff)]);
    default: // the message type
      buf[0] = next() & 0xff;
      return buf;
  }
}

describe("DHCPv6 fuzz", () => {
  it("100,000 random and mutated datagrams: no exception escapes codec or handler, all counted", () => {
    const next = rng(0x6eed);
    const base = seeds(next);
    let sent = 0;
    const handler = new Dhcp6Handler(
      BRIDGE_MAC,
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
        parseDhcp6(packet);
      } catch (error) {
        assert.ok(
          error instanceof Dhcp6ParseError,
          `codec threw ${error} on ${packet.toString("hex")}`,
        );
      }
      handler.handle(packet, next() % 50 === 0 ? "fd00::1" : SOURCE);
    }
    const stats = handler.stats();
    const dropped = Object.values(stats.dropped).reduce((a, b) => a + (b ?? 0), 0);
    assert.equal(stats.received, N);
    assert.equal(stats.dropped.internal, undefined, "no handler bug surfaced as an internal drop");
    assert.equal(sent + dropped, N, "every datagram is answered or counted as a drop");
    assert.ok(dropped > N / 2);
    assert.ok(sent > 5000, "valid datagrams among the noise are still answered");
    assert.ok(stats.released > 0);
    assert.ok(Date.now() - started < 60_000);
  });

  it("100,000 mutated router solicitations: only NdpParseError escapes the parser", () => {
    const next = rng(0x4861);
    const rs = Buffer.from("8500000000000000010152540012345601010000000000aa", "hex");
    let parsed = 0;
    for (let i = 0; i < 100_000; i++) {
      const packet = mutate(rs, next);
      try {
        parseRouterSolicitation(packet, next() % 4 === 0 ? "::" : SOURCE);
        parsed++;
      } catch (error) {
        assert.ok(
          error instanceof NdpParseError,
          `parser threw ${error} on ${packet.toString("hex")}`,
        );
      }
    }
    assert.ok(parsed > 1000 && parsed < 100_000);
  });

  it("a flood from the pod's own guest is rate limited, and answered again afterwards", async () => {
    const [solicit] = seeds(rng(9));
    let sent = 0;
    const handler = new Dhcp6Handler(BRIDGE_MAC, [lease], async () => {
      sent++;
    });
    for (let i = 0; i < 5000; i++) handler.handle(solicit!, SOURCE);
    assert.ok((handler.stats().dropped["rate-limited"] ?? 0) > 4000);
    const before = sent;
    await new Promise((r) => setTimeout(r, 100));
    handler.handle(solicit!, SOURCE);
    await new Promise((r) => setImmediate(r));
    assert.equal(sent, before + 1);
  });
});
