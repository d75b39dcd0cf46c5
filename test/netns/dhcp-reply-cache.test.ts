// The kernel's DHCPv4 reply cache on a pod bridge: it replays what the server sent, with
// the new request's xid, only for requests whose bytes the server answered; a changed
// lease or a restarted daemon starts it empty; whatever it does not know reaches the
// server, which parses, answers or drops and counts it as before.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { describe, it } from "node:test";
import { BOOTREQUEST, formatMessage, MessageType, Option, u8 } from "../../src/dhcp/codec";
import { DhcpReplyCache } from "../../src/dhcp/reply-cache";
import { type DhcpLease, DhcpServer, type DhcpStats } from "../../src/dhcp/server";
import {
  Dhcp6Option,
  Dhcp6Type,
  duidLl,
  formatDhcp6,
  iaNaOption,
  option,
  parseDhcp6,
} from "../../src/dhcp6/codec";
import { Ipv6Server } from "../../src/dhcp6/server";
import { Rtnl } from "../../src/sys/rtnl";
import { ipToBytes } from "../../src/util/ip";
import { waitFor } from "../harness/client-process";
import { ipIn, makeNetns, requirePrivateNamespace, type TestNetns } from "../harness/fixtures";
import { BROADCAST_MAC, ethernet, ipv4, ipv6, startCapture, udp } from "../harness/frames";

requirePrivateNamespace();

const MAC = "52:54:00:aa:bb:07";
const SERVER_ID = "10.244.1.1";
const lease: DhcpLease = {
  mac: MAC,
  ip: "10.244.1.5",
  prefixLength: 24,
  router: SERVER_ID,
  routes: [{ dst: "10.244.0.0", prefixLength: 16, gateway: SERVER_ID }],
  mtu: 1450,
  dns: ["10.96.0.10"],
  search: ["default.svc.cluster.local"],
  leaseSeconds: 3600,
};

interface Pod {
  pod: TestNetns;
  guest: TestNetns;
  remove(): void;
}

/** pod bridge br0 <-veth vtap0-> guest eth0 (MAC `MAC`), the port forwarding. */
function podWithGuest(): Pod {
  const pod = makeNetns("p");
  const guest = makeNetns("g");
  ipIn(
    guest.name,
    "link",
    "add",
    "eth0",
    "type",
    "veth",
    "peer",
    "name",
    "vtap0",
    "netns",
    pod.name,
  );
  ipIn(guest.name, "link", "set", "eth0", "address", MAC, "up");
  ipIn(pod.name, "link", "add", "br0", "type", "bridge");
  ipIn(pod.name, "link", "set", "vtap0", "master", "br0", "up");
  ipIn(pod.name, "link", "set", "br0", "up");
  const deadline = Date.now() + 5000;
  const port = () =>
    execFileSync("bridge", ["-n", pod.name, "link", "show", "dev", "vtap0"], { encoding: "utf8" });
  while (!/state forwarding/.test(port())) {
    if (Date.now() > deadline) throw new Error("bridge port vtap0 is not forwarding");
    execFileSync("sleep", ["0.05"]);
  }
  return {
    pod,
    guest,
    remove() {
      guest.remove();
      pod.remove();
    },
  };
}

function checksum(b: Buffer): number {
  let sum = 0;
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
  if (b.length % 2) sum += b[b.length - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** A DHCP payload from the guest, as a client would send it (flags: broadcast or not). */
function request(
  xid: number,
  type: number,
  options: [number, Buffer][] = [],
  flags = 0x8000,
): Buffer {
  const chaddr = Buffer.from(MAC.replaceAll(":", ""), "hex");
  return formatMessage({ op: BOOTREQUEST, xid, flags, chaddr }, [
    [Option.MESSAGE_TYPE, u8(type)],
    [Option.PARAMETER_REQUEST_LIST, Buffer.from([1, 3, 6, 15, 26, 119, 121])],
    ...options,
  ]).datagram;
}

/**
 * Writes a frame from 0.0.0.0:68 to 255.255.255.255:67 onto the guest's eth0 through a
 * packet socket (as udhcpc does): no checksum offload, every byte as given. The UDP
 * checksum is computed, so the kernel's own UDP would take it.
 */
function sendRaw(guest: string, payload: Buffer): void {
  writeFrame(
    guest,
    ethernet(
      BROADCAST_MAC,
      MAC,
      0x0800,
      ipv4(
        "0.0.0.0",
        "255.255.255.255",
        17,
        udpWithChecksum(payload, Buffer.alloc(4), Buffer.alloc(4, 0xff), 68, 67),
      ),
    ),
  );
}

/** A UDP datagram with its checksum, over IPv4 (4-byte) or IPv6 (16-byte) addresses. */
function udpWithChecksum(
  payload: Buffer,
  src: Buffer,
  dst: Buffer,
  sport: number,
  dport: number,
): Buffer {
  const u = udp(sport, dport, payload);
  // RFC 768's and RFC 8200's pseudo-headers: the protocol and the length after the addresses.
  const tail = Buffer.alloc(src.length === 4 ? 4 : 8);
  if (src.length === 4) {
    tail[1] = 17;
    tail.writeUInt16BE(u.length, 2);
  } else {
    tail.writeUInt32BE(u.length, 0);
    tail[7] = 17;
  }
  u.writeUInt16BE(checksum(Buffer.concat([src, dst, tail, u])) || 0xffff, 6);
  return u;
}

/** Writes a whole frame onto the guest's eth0 through a packet socket, as udhcpc does. */
function writeFrame(guest: string, frame: Buffer): void {
  const script =
    "import socket,sys\ns=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n" +
    's.bind(("eth0",0))\ns.send(bytes.fromhex(sys.argv[1]))';
  execFileSync("ip", [
    "netns",
    "exec",
    guest,
    "/usr/bin/python3",
    "-c",
    script,
    frame.toString("hex"),
  ]);
}

const isReplyTo = (xid: number) => (f: Buffer) =>
  f.length > 50 &&
  f.readUInt16BE(12) === 0x0800 &&
  f[23] === 17 &&
  f.readUInt16BE(36) === 68 &&
  f.readUInt32BE(46) === xid;

const GUEST_LL = "fe80::5054:ff:feaa:bb07";

/** A SOLICIT with rapid commit from the guest's link-local to ff02::1:2, as a raw frame. */
function sendSolicit(guest: string, transactionId: number): void {
  const message = formatDhcp6(Dhcp6Type.SOLICIT, transactionId, [
    option(Dhcp6Option.CLIENTID, duidLl(MAC)),
    option(Dhcp6Option.RAPID_COMMIT, Buffer.alloc(0)),
    option(Dhcp6Option.ORO, Buffer.from([0, 23, 0, 24])),
    iaNaOption(0xaabb07, 0, 0, []),
  ]);
  const u = udpWithChecksum(message, ipToBytes(GUEST_LL), ipToBytes("ff02::1:2"), 546, 547);
  writeFrame(guest, ethernet("33:33:00:01:00:02", MAC, 0x86dd, ipv6(GUEST_LL, "ff02::1:2", 17, u)));
}

const isReply6To = (id: number) => (f: Buffer) =>
  f.length > 66 &&
  f.readUInt16BE(12) === 0x86dd &&
  f[20] === 17 &&
  f.readUInt16BE(56) === 546 &&
  (f.readUInt32BE(62) & 0xffffff) === id;

function kernel(stats: DhcpStats): NonNullable<DhcpStats["kernel"]> {
  assert.ok(stats.kernel, "the server has a reply cache");
  return stats.kernel;
}

describe("DHCP reply cache in the kernel", () => {
  it("answers a repeated request from the kernel with the server's reply, xid patched and checksums right", async () => {
    const p = podWithGuest();
    const server = await DhcpServer.start({
      nsPath: p.pod.path,
      device: "br0",
      serverId: SERVER_ID,
      leases: [lease],
      replyPort: "vtap0",
    });
    const capture = await startCapture("eth0", { netns: p.guest.name, filter: "udp port 68" });
    try {
      for (const [type, flags] of [
        [MessageType.DISCOVER, 0x8000],
        [MessageType.DISCOVER, 0], // unicast to the lease, through its neighbour entry
      ] as const) {
        const first = 0x1000 + type * 16 + (flags ? 1 : 0);
        sendRaw(p.guest.name, request(first, type, [], flags));
        const slow = await capture.waitFor("the server's reply", isReplyTo(first));
        const before = kernel(server.stats());
        const second = first + 0x10000;
        sendRaw(p.guest.name, request(second, type, [], flags));
        const fast = await capture.waitFor("the kernel's reply", isReplyTo(second));
        const after = kernel(server.stats());
        assert.equal(after.hits, before.hits + 1, "answered by the kernel");
        assert.equal(after.errors, 0);
        assert.equal(fast.length, slow.length);
        assert.equal(fast.readUInt16BE(18), 0, "IP id");
        // Byte for byte what the server sent, but for the xid, the UDP checksum (the
        // server's went out with checksum offload: the capture shows its partial sum), and
        // the IP id with the header checksum (the socket's comes from the kernel's
        // per-destination counters; the cache's is 0, as RFC 6864 allows with DF set).
        const masked = (f: Buffer) => {
          const c = Buffer.from(f);
          c.fill(0, 18, 20);
          c.fill(0, 24, 26);
          c.fill(0, 40, 42);
          c.fill(0, 46, 50);
          return c.toString("hex");
        };
        assert.equal(masked(fast), masked(slow));
        assert.equal(checksum(fast.subarray(14, 34)), 0, "IPv4 header checksum");
        const pseudo = Buffer.concat([
          fast.subarray(26, 34),
          Buffer.from([0, 17]),
          fast.subarray(38, 40),
        ]);
        assert.equal(checksum(Buffer.concat([pseudo, fast.subarray(34)])), 0, "UDP checksum");
      }
    } finally {
      await capture.stop();
      await server.close();
      p.remove();
    }
  });

  it("never answers a changed lease from the old lease's cache", async () => {
    const p = podWithGuest();
    const capture = await startCapture("eth0", { netns: p.guest.name, filter: "udp port 68" });
    const start = (ip: string) =>
      DhcpServer.start({
        nsPath: p.pod.path,
        device: "br0",
        serverId: SERVER_ID,
        leases: [{ ...lease, ip }],
        replyPort: "vtap0",
      });
    try {
      const old = await start("10.244.1.5");
      sendRaw(p.guest.name, request(1, MessageType.DISCOVER));
      await capture.waitFor("an OFFER", isReplyTo(1));
      sendRaw(p.guest.name, request(2, MessageType.DISCOVER));
      await capture.waitFor("an OFFER", isReplyTo(2));
      assert.equal(kernel(old.stats()).hits, 1);
      await old.close();
      const changed = await start("10.244.1.9");
      try {
        sendRaw(p.guest.name, request(3, MessageType.DISCOVER));
        const offer = await capture.waitFor("an OFFER", isReplyTo(3));
        assert.equal([...offer.subarray(42 + 16, 42 + 20)].join("."), "10.244.1.9", "yiaddr");
        assert.deepEqual(
          { hits: kernel(changed.stats()).hits, replied: changed.stats().replied },
          { hits: 0, replied: 1 },
        );
      } finally {
        await changed.close();
      }
    } finally {
      await capture.stop();
      p.remove();
    }
  });

  it("a cache attached again (a restarted daemon) replaces the old one and starts empty", async () => {
    const p = podWithGuest();
    try {
      // Each attach on a netlink connection of its own, as two daemon lives would.
      const attach = async () => {
        const rtnl = Rtnl.open(p.pod.path);
        try {
          return await DhcpReplyCache.attach(
            rtnl,
            { bridge: await rtnl.link("br0"), port: "vtap0" },
            SERVER_ID,
          );
        } finally {
          rtnl.close();
        }
      };
      const left = await attach();
      const payload = request(7, MessageType.DISCOVER);
      left.remember({ request: payload, reply: payload, address: "255.255.255.255", mac: MAC });
      const fresh = await attach();
      try {
        sendRaw(p.guest.name, request(8, MessageType.DISCOVER));
        await waitFor("the new cache's miss", 3000, () => fresh.counts().misses === 1);
        assert.deepEqual(left.counts(), { hits: 0, misses: 0, errors: 0 });
        const filters = execFileSync(
          "tc",
          ["-n", p.pod.name, "filter", "show", "dev", "br0", "ingress"],
          {
            encoding: "utf8",
          },
        );
        assert.equal(filters.match(/handle 0x1 vmlet_dhcp_rc/g)?.length, 1, filters);
      } finally {
        await fresh.detach();
        await left.detach();
      }
      const filters = execFileSync(
        "tc",
        ["-n", p.pod.name, "filter", "show", "dev", "br0", "ingress"],
        {
          encoding: "utf8",
        },
      );
      assert.doesNotMatch(filters, /vmlet_dhcp_rc/);
    } finally {
      p.remove();
    }
  });

  it("oversized and malformed requests reach the server, which answers or drops and counts them", async () => {
    const p = podWithGuest();
    const server = await DhcpServer.start({
      nsPath: p.pod.path,
      device: "br0",
      serverId: SERVER_ID,
      leases: [lease],
      replyPort: "vtap0",
    });
    const capture = await startCapture("eth0", { netns: p.guest.name, filter: "udp port 68" });
    try {
      // Longer than the kernel's key: served by the socket every time, never cached.
      const long = (xid: number) =>
        request(xid, MessageType.DISCOVER, [
          [Option.HOSTNAME, Buffer.alloc(250, 0x61)],
          [60, Buffer.alloc(60, 0x62)],
        ]);
      assert.ok(long(1).length > 508, `${long(1).length} bytes`);
      for (const xid of [21, 22]) {
        sendRaw(p.guest.name, long(xid));
        await capture.waitFor("an OFFER from the server", isReplyTo(xid));
      }
      const garbage = Buffer.alloc(300, 0xff);
      sendRaw(p.guest.name, garbage);
      sendRaw(p.guest.name, garbage);
      await waitFor("drops counted", 3000, () => (server.stats().dropped["bad-op"] ?? 0) === 2);
      const stats = server.stats();
      assert.deepEqual(
        { ...kernel(stats), replied: stats.replied, received: stats.received },
        { hits: 0, misses: 4, errors: 0, cached: 0, replied: 2, received: 4 },
      );
    } finally {
      await capture.stop();
      await server.close();
      p.remove();
    }
  });

  it("DHCPv6: a repeated SOLICIT (rapid commit) is answered from the kernel with the server's REPLY, transaction id patched", async () => {
    const p = podWithGuest();
    const server = await Ipv6Server.start({
      nsPath: p.pod.path,
      device: "br0",
      leases: [
        { mac: MAC, address: "fd00:10:244:1::5", dns: ["fd00::a"], search: [], leaseSeconds: 600 },
      ],
      dns: ["fd00::a"],
      search: [],
      onLink: [],
      replyPort: "vtap0",
    });
    const capture = await startCapture("eth0", { netns: p.guest.name, filter: "udp port 546" });
    try {
      sendSolicit(p.guest.name, 0x123456);
      const slow = await capture.waitFor("the server's REPLY", isReply6To(0x123456));
      sendSolicit(p.guest.name, 0x654321);
      const fast = await capture.waitFor("the kernel's REPLY", isReply6To(0x654321));
      const k = server.stats().dhcp6.kernel;
      assert.deepEqual(k && { hits: k.hits, errors: k.errors }, { hits: 1, errors: 0 });
      const reply = parseDhcp6(fast.subarray(62));
      assert.equal(reply.type, Dhcp6Type.REPLY);
      assert.equal(reply.transactionId, 0x654321);
      assert.deepEqual(
        reply.iaNa.flatMap((ia) => ia.addresses.map((a) => a.address)),
        ["fd00:10:244:1::5"],
      );
      // Byte for byte the server's, but for the flow label (the kernel's per-flow hash),
      // the transaction id and the UDP checksum (the server's left with offload).
      const masked = (f: Buffer) => {
        const c = Buffer.from(f);
        c[15]! &= 0xf0;
        c.fill(0, 16, 18);
        c.fill(0, 60, 62);
        c.fill(0, 63, 66);
        return c.toString("hex");
      };
      assert.equal(masked(fast), masked(slow));
      assert.equal(fast.readUInt32BE(14) & 0xfffff, 0, "no flow label");
      const pseudo = Buffer.concat([
        fast.subarray(22, 54),
        Buffer.alloc(2),
        fast.subarray(58, 60),
        Buffer.from([0, 0, 0, 17]),
      ]);
      assert.equal(checksum(Buffer.concat([pseudo, fast.subarray(54)])), 0, "UDP checksum");
    } finally {
      await capture.stop();
      await server.close();
      p.remove();
    }
  });
});
