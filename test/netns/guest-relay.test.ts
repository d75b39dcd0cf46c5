import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import { after, before, describe, it } from "node:test";
import { ipIn, requirePrivateNamespace, run } from "../harness/fixtures";
import { startDhcpClient } from "../harness/guest-clients";
import { makePodTap, type PodTap, startStandInDhcpServer } from "../harness/guest-pod";
import { type RelayGuest, startRelay } from "../harness/relay";

requirePrivateNamespace();

const MAC = "52:54:00:aa:bb:01";

function processesNamed(name: string): number[] {
  return fs
    .readdirSync("/proc")
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        // Exited helpers reparented to the runner (PID 1 here, which does not reap them)
        // stay zombies until the namespace ends: they count as gone.
        const stat = fs.readFileSync(`/proc/${p}/stat`, "utf8");
        const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
        return fs.readFileSync(`/proc/${p}/comm`, "utf8").trim() === name && state !== "Z";
      } catch {
        return false;
      }
    })
    .map(Number);
}

function ping(netns: string, to: string, size = 56): void {
  run(netns, "ping", "-c", "2", "-i", "0.2", "-W", "2", "-s", String(size), to);
}

describe("relay guest", () => {
  let pod: PodTap;
  let relay: RelayGuest;

  before(async () => {
    pod = makePodTap({ address: "10.20.0.1/24" });
    relay = await startRelay({ podTapFd: pod.tapFd, mac: MAC });
  });
  after(async () => {
    await relay?.stop();
    pod?.remove();
  });

  it("gives the guest netns a NIC with the guest MAC, up, behind the pod tap", () => {
    const link = JSON.parse(ipIn(relay.netns, "-j", "link", "show", relay.ifname))[0];
    assert.equal(link.address, MAC);
    assert.ok(link.flags.includes("UP"));
    assert.ok(link.flags.includes("LOWER_UP"), "carrier: the relay holds the guest tap open");
    const tap = JSON.parse(ipIn(pod.netns, "-j", "link", "show", "tap0"))[0];
    assert.ok(tap.flags.includes("LOWER_UP"), "pod tap has carrier");
  });

  it("passes frames both ways: ARP and ping, small and full-size", () => {
    ipIn(relay.netns, "addr", "add", "10.20.0.2/24", "dev", relay.ifname);
    try {
      ping(relay.netns, "10.20.0.1");
      ping(pod.netns, "10.20.0.2");
      ping(relay.netns, "10.20.0.1", 1472); // a 1500-byte IP packet, unfragmented
      const neigh = ipIn(pod.netns, "neigh", "show", "10.20.0.2");
      assert.match(neigh, new RegExp(`lladdr ${MAC}`), "the pod side learned the guest MAC");
    } finally {
      ipIn(relay.netns, "addr", "flush", "dev", relay.ifname);
    }
  });

  it("leaves the guest tap to the relay: stop() removes it and the netns it made", async () => {
    const pod2 = makePodTap();
    const r = await startRelay({ podTapFd: pod2.tapFd, mac: "52:54:00:aa:bb:02" });
    try {
      await r.stop();
      assert.throws(() => process.kill(r.pid, 0), /ESRCH/);
      assert.ok(!fs.existsSync(r.nsPath), "guest netns removed");
    } finally {
      pod2.remove();
    }
  });
});

describe("several relay guests at once", () => {
  it("six relays (more than libuv's 4 pool threads) all carry traffic; the test's pool stays free", async () => {
    const pods: PodTap[] = [];
    const relays: RelayGuest[] = [];
    try {
      for (let i = 0; i < 6; i++) {
        const pod = makePodTap({ address: `10.50.${i}.1/24` });
        pods.push(pod);
        const relay = await startRelay({ podTapFd: pod.tapFd, mac: `52:54:00:aa:cc:0${i}` });
        relays.push(relay);
        ipIn(relay.netns, "addr", "add", `10.50.${i}.2/24`, "dev", relay.ifname);
      }
      // Every relay's copy loops block in read(); none of that is in this process.
      const t0 = performance.now();
      await fs.promises.readFile("/proc/self/status");
      await fs.promises.stat("/");
      assert.ok(performance.now() - t0 < 1000, "fs calls through the threadpool are not starved");
      for (let i = 0; i < 6; i++) ping(relays[i].netns, `10.50.${i}.1`);
    } finally {
      for (const r of relays) await r.stop();
      for (const p of pods) p.remove();
    }
  });
});

describe("DHCP clients in the relay guest (stand-in server: busybox udhcpd)", () => {
  const resolvBefore = fs.readFileSync("/etc/resolv.conf", "utf8");
  const server = {
    start: "10.30.0.50",
    subnet: "255.255.255.0",
    router: "10.30.0.1",
    dns: ["10.30.0.53"],
    domain: "pod.test",
    mtu: 1400,
    leaseSeconds: 600,
  };

  for (const kind of ["udhcpc", "dhclient", "dhcpcd"] as const) {
    it(`${kind} takes the lease: address, default route, MTU, resolv.conf; pings the gateway`, async () => {
      const pod = makePodTap({ address: "10.30.0.1/24", mtu: 1400 });
      const relay = await startRelay({
        podTapFd: pod.tapFd,
        mac: MAC,
        ifname: `e${kind}`.slice(0, 15),
      });
      const udhcpd = await startStandInDhcpServer(pod.netns, pod.bridge, server);
      const client = await startDhcpClient(kind, {
        netns: relay.netns,
        ifname: relay.ifname,
      });
      try {
        const t0 = Date.now();
        const state = await client.waitForLease({ timeoutMs: 30_000 });
        const ms = Date.now() - t0;
        assert.deepEqual(state.addresses, ["10.30.0.50/24"], client.output());
        assert.ok(
          state.routes.some((r) => r.startsWith("default via 10.30.0.1 dev")),
          String(state.routes),
        );
        // dhcpcd 9 puts option 26 on its routes (`mtu 1400`) instead of the link.
        if (kind === "dhcpcd") {
          assert.ok(
            state.routes.every((r) => r.includes("mtu 1400")),
            String(state.routes),
          );
        } else {
          assert.equal(state.mtu, 1400);
        }
        assert.deepEqual(state.dns, ["10.30.0.53"]);
        assert.ok(
          state.domain === "pod.test" || state.search.includes("pod.test"),
          state.resolvConf,
        );
        ping(relay.netns, "10.30.0.1");
        ping(pod.netns, "10.30.0.50");
        if (kind !== "dhclient") {
          const renewed = await client.renew();
          assert.deepEqual(renewed.addresses, ["10.30.0.50/24"]);
          assert.ok(
            /RENEW|renew/.test(client.events().at(-1)!.event),
            JSON.stringify(client.events()),
          );
        }
        if (kind === "udhcpc") {
          const td = spawn(
            "ip",
            ["netns", "exec", pod.netns, "tcpdump", "-n", "-l", "-i", "br0", "udp port 67"],
            { stdio: ["ignore", "pipe", "pipe"] },
          );
          let dump = "";
          let tdErr = "";
          td.stderr!.on("data", (d) => {
            tdErr += d;
          });
          td.stdout!.on("data", (d) => {
            dump += d;
          });
          await new Promise((r) => setTimeout(r, 500));
          const rebound = await client.rebind();
          assert.deepEqual(rebound.addresses, ["10.30.0.50/24"]);
          assert.equal(client.serverId(), "10.30.0.1");
          await new Promise((r) => setTimeout(r, 300));
          td.kill();
          assert.match(
            dump,
            /10\.30\.0\.50\.68 > 255\.255\.255\.255\.67: BOOTP\/DHCP, Request/,
            `a broadcast rebind:\n${dump}\ntcpdump's stderr (Debian package tcpdump):\n${tdErr}`,
          );
        }
        if (kind === "dhclient") {
          // No renew trigger: a restart with the same lease file is an INIT-REBOOT.
          await client.stop();
          const again = await startDhcpClient(kind, {
            netns: relay.netns,
            ifname: relay.ifname,
            dir: client.dir,
          });
          try {
            const rebooted = await again.waitForLease({ from: client.events().length });
            assert.deepEqual(rebooted.addresses, ["10.30.0.50/24"]);
            assert.equal(again.events().at(-1)!.event, "REBOOT", JSON.stringify(again.events()));
          } finally {
            await again.stop();
          }
        }
        process.stderr.write(
          `# ${kind}: lease in ${ms} ms; events ${JSON.stringify(client.events())}\n`,
        );
      } finally {
        await client.stop();
        await udhcpd.stop();
        await relay.stop();
        pod.remove();
      }
      assert.equal(
        fs.readFileSync("/etc/resolv.conf", "utf8"),
        resolvBefore,
        "machine resolv.conf untouched",
      );
      // Inside the runner's PID namespace only our own processes are visible.
      assert.deepEqual(processesNamed(kind), [], `no ${kind} process left`);
    });
  }
});
