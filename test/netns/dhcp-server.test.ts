// The server's life in a pod netns: what start() sets up, what close() takes away, and
// staying useful under a flood from the guest.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { BOOTREQUEST, formatMessage, MessageType, Option, u8 } from "../../src/dhcp/codec";
import { type DhcpLease, DhcpServer } from "../../src/dhcp/server";
import { ipIn, makeNetns, requirePrivateNamespace, type TestNetns } from "../harness/fixtures";

requirePrivateNamespace();

const MAC = "52:54:00:aa:bb:02";
const lease: DhcpLease = {
  mac: MAC,
  ip: "10.244.1.5",
  prefixLength: 24,
  router: "10.244.1.1",
  routes: [],
  mtu: 1450,
  dns: ["10.96.0.10"],
  search: [],
  leaseSeconds: 3600,
};

function podWithGuest(): { pod: TestNetns; guest: TestNetns; remove(): void } {
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
  // The bridge learns of the port's carrier through the kernel's link watch, up to a
  // second later; until then it drops what the guest sends. Wait, as a booting VM would.
  const deadline = Date.now() + 5000;
  while (
    !/state forwarding/.test(
      execFileSync("bridge", ["-n", pod.name, "link", "show", "dev", "vtap0"], {
        encoding: "utf8",
      }),
    )
  ) {
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

function filters(pod: string): string {
  return execFileSync("tc", ["-n", pod, "filter", "show", "dev", "vtap0", "ingress"], {
    encoding: "utf8",
  });
}

/**
 * One node process in the guest that sends every datagram to 255.255.255.255:67, and
 * again and again until `forMs` has passed when given.
 */
function floodFromGuest(guest: string, datagrams: Buffer[], forMs = 0): Promise<void> {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "flood-")), "d.json");
  fs.writeFileSync(file, JSON.stringify(datagrams.map((d) => d.toString("base64"))));
  const script = `
    const s = require("dgram").createSocket("udp4");
    const all = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const end = Date.now() + Number(process.argv[2]);
    s.bind(0, async () => {
      s.setBroadcast(true);
      do {
        for (const d of all) await new Promise((r) => s.send(Buffer.from(d, "base64"), 67, "255.255.255.255", r));
      } while (Date.now() < end);
      s.close();
    });`;
  // Asynchronously: the server in this process must read while the guest floods.
  const child = spawn(
    "ip",
    ["netns", "exec", guest, process.execPath, "-e", script, file, String(forMs)],
    { stdio: "inherit" },
  );
  return new Promise((resolve, reject) =>
    child.on("exit", (code) =>
      code === 0 ? resolve() : reject(new Error(`flood exited ${code}`)),
    ),
  );
}

/**
 * Gives the guest a flood source address: the lease's, the one the pod netns routes back
 * to (a source it has no route back to is dropped by bridge netfilter before any
 * socket). The chaddr in the datagrams, not this, is what the server judges.
 */
function floodSource(guest: string): void {
  ipIn(guest, "addr", "add", "10.244.1.5/24", "dev", "eth0");
  ipIn(guest, "route", "add", "default", "dev", "eth0");
}

/** A pod bridge with a guest, the server on the bridge, and the guest a flood source. */
async function servedGuestWithFloodSource() {
  const t = podWithGuest();
  const server = await DhcpServer.start({
    nsPath: t.pod.path,
    device: "br0",
    serverId: "10.244.1.1",
    leases: [lease],
  });
  floodSource(t.guest.name);
  return { t, server };
}

function discoverFrom(macHex: string, xid: number): Buffer {
  return formatMessage({ op: BOOTREQUEST, xid, flags: 0, chaddr: Buffer.from(macHex, "hex") }, [
    [Option.MESSAGE_TYPE, u8(MessageType.DISCOVER)],
  ]).datagram;
}

/**
 * busybox udhcpc in the guest, once: a lease or exit 1. Asynchronously: the server
 * answers from this process. Its script is /bin/true, so the guest's address stays.
 */
function udhcpcOnce(guest: string): Promise<number | null> {
  const args = ["netns", "exec", guest, "unshare", "--uts", "udhcpc", "-q", "-n", "-i", "eth0"];
  const udhcpc = spawn("ip", [...args, "-s", "/bin/true", "-t", "5", "-T", "1"], {
    stdio: "ignore",
  });
  return new Promise((resolve) => udhcpc.on("exit", resolve));
}

describe("DhcpServer in a pod netns", () => {
  it("close() takes away the intercept, the server address and the lease routes; a restart serves again", async () => {
    const t = podWithGuest();
    try {
      const opts = { nsPath: t.pod.path, device: "br0", serverId: "10.244.1.1", leases: [lease] };
      const first = await DhcpServer.start(opts);
      assert.match(filters(t.pod.name), /vmlet-dhcp/);
      assert.match(ipIn(t.pod.name, "-4", "addr", "show", "br0"), /10\.244\.1\.1\/32/);
      assert.match(ipIn(t.pod.name, "route", "show"), /10\.244\.1\.5 dev br0/);
      assert.match(
        ipIn(t.pod.name, "neigh", "show", "dev", "br0"),
        /10\.244\.1\.5 lladdr 52:54:00:aa:bb:02 PERMANENT/,
      );
      const arpIgnore = execFileSync(
        "ip",
        ["netns", "exec", t.pod.name, "cat", "/proc/sys/net/ipv4/conf/br0/arp_ignore"],
        { encoding: "utf8" },
      );
      assert.equal(arpIgnore.trim(), "8", "the bridge never answers ARP for the gateway address");
      // A restarted daemon starts a server on a bridge that still has the last one's state.
      const second = await DhcpServer.start(opts);
      await second.close();
      await first.close();
      assert.doesNotMatch(filters(t.pod.name), /vmlet-dhcp/);
      assert.doesNotMatch(ipIn(t.pod.name, "-4", "addr", "show", "br0"), /10\.244\.1\.1/);
      assert.doesNotMatch(ipIn(t.pod.name, "route", "show"), /10\.244\.1\.5/);
      await first.close(); // twice is fine
    } finally {
      t.remove();
    }
  });

  it("names the bridge and the netns when it cannot start", async () => {
    const t = podWithGuest();
    try {
      await assert.rejects(
        DhcpServer.start({
          nsPath: t.pod.path,
          device: "nope0",
          serverId: "10.244.1.1",
          leases: [lease],
        }),
        /start DHCP on nope0 in \/run\/netns\/p\w+: .*ENODEV/,
      );
      await assert.rejects(
        DhcpServer.start({
          nsPath: t.pod.path,
          device: "br0",
          serverId: "10.244.1.1",
          leases: [{ ...lease, mac: "zz" }],
        }),
        /lease MAC "zz"/,
      );
    } finally {
      t.remove();
    }
  });

  it("a flood of garbage and unknown MACs from the guest is counted and dropped, and the guest still gets its lease", async () => {
    const { t, server } = await servedGuestWithFloodSource();
    try {
      const discoverFromStranger = discoverFrom("020000000099", 1);
      const flood: Buffer[] = [];
      for (let i = 0; i < 1000; i++) {
        flood.push(discoverFromStranger, Buffer.alloc(i % 300, i & 0xff));
      }
      await floodFromGuest(t.guest.name, flood);
      const deadline = Date.now() + 5000;
      while (server.stats().received < 1000 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      const stats = server.stats();
      // UDP loses part of a flood on a busy machine; what arrived is all dropped and counted.
      const dropped = Object.values(stats.dropped).reduce((a, b) => a + (b ?? 0), 0);
      assert.ok(stats.received >= 200, JSON.stringify(stats));
      assert.equal(dropped, stats.received, JSON.stringify(stats));
      assert.equal(stats.replied, 0);
      assert.ok((stats.dropped["unknown-mac"] ?? 0) > 50, JSON.stringify(stats.dropped));
      assert.ok((stats.dropped.truncated ?? 0) > 50, JSON.stringify(stats.dropped));
      ipIn(t.guest.name, "addr", "flush", "dev", "eth0");

      const code = await udhcpcOnce(t.guest.name);
      assert.equal(code, 0, "udhcpc got a lease");
      assert.ok(server.stats().replied >= 2, "OFFER and ACK");
    } finally {
      await server.close();
      t.remove();
    }
  });

  it("a client is served while a flood from a stranger goes on", async () => {
    const { t, server } = await servedGuestWithFloodSource();
    try {
      const discoverFromStranger = discoverFrom("020000000098", 2);
      const flood = Array.from({ length: 200 }, (_, i) =>
        i % 2 ? discoverFromStranger : Buffer.alloc(i % 300, i & 0xff),
      );
      let flooding = true;
      const flooded = floodFromGuest(t.guest.name, flood, 4000).finally(() => {
        flooding = false;
      });
      const deadline = Date.now() + 3000;
      while (server.stats().received < 100) {
        assert.ok(Date.now() < deadline, `the flood arrives: ${JSON.stringify(server.stats())}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      const code = await udhcpcOnce(t.guest.name);
      const during = flooding;
      const stats = server.stats();
      await flooded;
      assert.equal(code, 0, `udhcpc got a lease: ${JSON.stringify(stats)}`);
      assert.ok(during, "while the flood was still going");
      assert.ok(stats.replied >= 2, "OFFER and ACK");
      assert.ok((stats.dropped["unknown-mac"] ?? 0) > 50, JSON.stringify(stats.dropped));
    } finally {
      await server.close();
      t.remove();
    }
  });
});
