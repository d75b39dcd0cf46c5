// The tapmanager's pool of pod netns built ahead (src/tapmanager/netns-pool.ts): a pod that
// takes one works as a pod built cold does, with udhcpc as its guest; a burst bigger than
// the pool goes on cold; failures and a killed vmlet leave nothing of the pool behind.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { Tapmanager } from "../../src/tapmanager";
import {
  allocations,
  bridgeList,
  type CniSandbox,
  makeCniSandbox,
  makePod,
  misbehavingPlugin,
} from "../harness/cni-fixtures";
import { ip, linksIn, requirePrivateNamespace } from "../harness/fixtures";
import { startDhcpClient } from "../harness/guest-clients";
import { startRelay } from "../harness/relay";

requirePrivateNamespace();

function netnsNames(): string[] {
  return ip("netns", "list")
    .split("\n")
    .filter(Boolean)
    .map((l) => l.split(" ")[0]);
}

const pooled = () => netnsNames().filter((n) => n.startsWith("vmletpool-"));

/** A tapmanager with a pool on a bridge network of its own; which steps each setUp took. */
function pooledTapmanager(network: string, subnet: string, size: number, cni = makeCniSandbox()) {
  cni.writeConf("10-br.conflist", bridgeList(network, "1.0.0", cni.dataDir, subnet));
  const steps: string[] = [];
  const tm = new Tapmanager({
    cni: cni.client(),
    stateDir: path.join(cni.root, "pods"),
    netnsPool: size,
    steps: (step) => steps.push(step),
  });
  return { cni, tm, steps };
}

/** The BPF programs attached to a link's hook in a netns, by name (tc shows "name X[id]"). */
function bpfFilters(netns: string, dev: string, hook: "ingress" | "egress"): string[] {
  const out = execFileSync("tc", ["-n", netns, "filter", "show", "dev", dev, hook], {
    encoding: "utf8",
  });
  return [...out.matchAll(/ name ([A-Za-z_]+)/g)].map((m) => m[1]);
}

describe("the netns pool", () => {
  it("fills when asked to start, and a pod takes a pooled netns: bridge, tap and guard ready, udhcpc gets the pod IP", async () => {
    const { cni, tm, steps } = pooledTapmanager("pool1", "10.72.1.0/24", 2);
    const before = pooled();
    try {
      await tm.recover();
      assert.equal(await tm.netnsPoolSettled(), 2);
      const mine = pooled().filter((n) => !before.includes(n));
      assert.equal(mine.length, 2, "two pooled netns");
      for (const ns of mine) {
        const names = linksIn(ns).map((l) => l.ifname);
        assert.deepEqual(names.sort(), ["br-eth0", "lo", "tap-eth0"], `built ahead in ${ns}`);
      }

      const pod = makePod();
      const network = await tm.setUp({ pod });
      assert.ok(steps.includes("netns from the pool"), "the pod took a pooled netns");
      assert.ok(!steps.includes("netns create"));
      assert.equal(path.basename(network.netnsPath), `vmlet-${pod.sandboxId}`);
      assert.equal(pooled().filter((n) => !before.includes(n)).length, 1, "one taken");
      const ns = path.basename(network.netnsPath);
      const eth0 = network.interfaces[0];
      const byName = Object.fromEntries(linksIn(ns).map((l) => [l.ifname, l]));
      assert.equal(byName.eth0.master, eth0.bridge);
      assert.equal(byName[eth0.tap].master, eth0.bridge);
      assert.deepEqual(bpfFilters(ns, eth0.tap, "ingress"), ["vmlet_guest"]);
      assert.deepEqual(bpfFilters(ns, "eth0", "ingress"), ["vmlet_from_node"]);

      const [tap] = tm.openTaps(pod.sandboxId);
      const guest = await startRelay({ podTapFd: tap.fd, mac: tap.guestMac });
      const client = await startDhcpClient("udhcpc", { netns: guest.netns, ifname: guest.ifname });
      try {
        const state = await client.waitForLease({ timeoutMs: 20_000 });
        assert.deepEqual(state.addresses, [`${eth0.addresses[0].address}/24`]);
        assert.ok(state.routes.includes("default via 10.72.1.1 dev eth0"), state.routes.join("; "));
      } finally {
        await client.stop();
        await guest.stop();
        fs.closeSync(tap.fd);
      }
      // The guard is attached and counting; the guest's own traffic was not dropped. The pod
      // bridge's own NDP/MLD is counted as netns-source, as on a pod built cold.
      const drops = tm.dropCounts(pod.sandboxId)?.total;
      assert.ok(drops, "the pod is guarded");
      assert.deepEqual(
        Object.keys(drops).filter((r) => r !== "netns-source"),
        [],
        JSON.stringify(drops),
      );

      await tm.tearDown(pod.sandboxId);
      assert.equal(await tm.netnsPoolSettled(), 2, "refilled once idle");
      assert.deepEqual(allocations(cni.dataDir, "pool1"), []);
      assert.ok(!netnsNames().includes(ns));
    } finally {
      await tm.close();
      cni.remove();
    }
    assert.deepEqual(pooled(), before, "close() removes the pool");
  });

  it("serves a burst bigger than the pool: two pods take pooled netns, the rest are built cold, all distinct", async () => {
    const { cni, tm, steps } = pooledTapmanager("pool2", "10.72.2.0/24", 2);
    const before = pooled();
    try {
      await tm.recover();
      await tm.netnsPoolSettled();
      const pods = Array.from({ length: 5 }, () => makePod());
      const networks = await Promise.all(pods.map((pod) => tm.setUp({ pod })));
      assert.equal(steps.filter((s) => s === "netns create").length, 3, "three built cold");
      assert.equal(steps.filter((s) => s === "early work (during ADD)").length, 3);
      const addresses = new Set(networks.map((n) => n.interfaces[0].addresses[0].address));
      assert.equal(addresses.size, 5);
      // A pod with more source prefixes than a pooled guard holds: its tap program is
      // loaded again with room for them.
      const extra = makePod();
      const prefixes = [1, 2, 3].map((i) => ({
        family: 4 as const,
        address: `10.9.${i}.0`,
        prefixLength: 24,
      }));
      await tm.tearDown(pods[0].sandboxId);
      await tm.netnsPoolSettled();
      steps.length = 0;
      const wide = await tm.setUp({ pod: extra, allowedSourcePrefixes: prefixes });
      assert.ok(steps.includes("netns from the pool"));
      assert.deepEqual(
        bpfFilters(path.basename(wide.netnsPath), wide.interfaces[0].tap, "ingress"),
        ["vmlet_guest"],
      );
      for (const pod of [...pods.slice(1), extra]) await tm.tearDown(pod.sandboxId);
      assert.deepEqual(allocations(cni.dataDir, "pool2"), []);
    } finally {
      await tm.close();
      cni.remove();
    }
    assert.deepEqual(pooled(), before);
  });

  it("a pod whose CNI ADD fails in a pooled netns leaves nothing behind, and the pool refills", async () => {
    const cni: CniSandbox = makeCniSandbox();
    misbehavingPlugin(cni.binDir, "refuser", "ADD", "error");
    cni.writeConf(
      "10-bad.conflist",
      bridgeList("pool3", "1.0.0", cni.dataDir, "10.72.3.0/24", [{ type: "refuser" }]),
    );
    const tm = new Tapmanager({
      cni: cni.client(),
      stateDir: path.join(cni.root, "pods"),
      netnsPool: 1,
    });
    const before = pooled();
    try {
      await tm.recover();
      assert.equal(await tm.netnsPoolSettled(), 1);
      const fds = fs.readdirSync("/proc/self/fd").length;
      const pod = makePod();
      const error = await tm.setUp({ pod }).catch((e: Error) => e);
      assert.ok(error instanceof Error);
      assert.match(error.message, /fixture refused/);
      assert.match(error.message, /cleaned up/);
      assert.ok(!netnsNames().includes(`vmlet-${pod.sandboxId}`));
      assert.deepEqual(allocations(cni.dataDir, "pool3"), []);
      assert.deepEqual(fs.readdirSync(path.join(cni.root, "pods")), []);
      assert.equal(await tm.netnsPoolSettled(), 1, "refilled");
      // The taken netns's guard programs were let go; the refill's are new ones.
      assert.equal(fs.readdirSync("/proc/self/fd").length, fds, "no fd left open");
    } finally {
      await tm.close();
      cni.remove();
    }
    assert.deepEqual(pooled(), before);
  });

  it("the pool of a vmlet killed with SIGKILL is removed by the next start's recover(), and no other's", async () => {
    const cni = makeCniSandbox();
    cni.writeConf("10-br.conflist", bridgeList("pool4", "1.0.0", cni.dataDir, "10.72.4.0/24"));
    const stateDir = path.join(cni.root, "pods");
    const other = pooledTapmanager("pool5", "10.72.5.0/24", 1);
    const before = pooled();
    // A vmlet of its own: a child process with a pool of 3, killed once they exist.
    const tapmanagerModule = path.resolve(__dirname, "../../src/tapmanager");
    const cniModule = path.resolve(__dirname, "../../src/cni-bridge/cni");
    const child = spawn(
      process.execPath,
      [
        "-e",
        `const { Tapmanager } = require(${JSON.stringify(tapmanagerModule)});
         const { CniClient } = require(${JSON.stringify(cniModule)});
         const cni = new CniClient({ confDir: ${JSON.stringify(cni.confDir)}, binDirs: ["/usr/lib/cni"], cacheDir: ${JSON.stringify(cni.cacheDir)} });
         const tm = new Tapmanager({ cni, stateDir: ${JSON.stringify(stateDir)}, netnsPool: 3 });
         tm.recover().then(() => tm.netnsPoolSettled()).then((n) => { console.log("pooled " + n); setInterval(() => {}, 1000); });`,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    try {
      await other.tm.recover();
      await other.tm.netnsPoolSettled();
      const otherPool = pooled().filter((n) => !before.includes(n));
      assert.equal(otherPool.length, 1);
      const said = await new Promise<string>((resolve, reject) => {
        child.stdout.once("data", (b: Buffer) => resolve(b.toString().trim()));
        child.once("exit", (code) => reject(new Error(`child exited ${code}`)));
      });
      assert.equal(said, "pooled 3");
      child.kill("SIGKILL");
      await new Promise((resolve) => child.once("exit", resolve));
      const left = pooled().filter((n) => !before.includes(n) && !otherPool.includes(n));
      assert.equal(left.length, 3, "the killed vmlet's pool is still there");

      const next = new Tapmanager({ cni: cni.client(), stateDir, netnsPool: 1 });
      try {
        await next.recover();
        const now = pooled();
        for (const n of left) assert.ok(!now.includes(n), `${n} removed`);
        assert.ok(
          otherPool.every((n) => now.includes(n)),
          "another vmlet's pool is left alone",
        );
        assert.equal(await next.netnsPoolSettled(), 1);
      } finally {
        await next.close();
      }
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await other.tm.close();
      other.cni.remove();
      cni.remove();
    }
    assert.deepEqual(pooled(), before);
  });
});
