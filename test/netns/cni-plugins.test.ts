// The CNI client with Debian's reference plugins, in the runner's private namespace
// (which plays the node: the bridge plugin makes its bridge here).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import type { CniClient } from "../../src/cni-bridge/cni";
import {
  allocations,
  bridgeList,
  type CniSandbox,
  cacheFiles,
  eventually,
  makeCniSandbox,
  makePod,
  ptpList,
  readLog,
  recordingPlugin,
} from "../harness/cni-fixtures";
import { ipIn, makeNetns, requirePrivateNamespace, run, type TestNetns } from "../harness/fixtures";

requirePrivateNamespace();

interface JsonAddr {
  ifname: string;
  addr_info: { family: string; local: string; prefixlen: number }[];
}
interface JsonRoute {
  dst: string;
  gateway?: string;
  dev: string;
}

function addrsOf(ns: string, dev: string): string[] {
  const out = JSON.parse(ipIn(ns, "-j", "addr", "show", "dev", dev)) as JsonAddr[];
  return out[0]!.addr_info
    .filter((a) => a.family === "inet")
    .map((a) => `${a.local}/${a.prefixlen}`);
}

function routesOf(ns: string): JsonRoute[] {
  return JSON.parse(ipIn(ns, "-j", "route", "show")) as JsonRoute[];
}

function hasLink(ns: string, dev: string): boolean {
  const links = JSON.parse(ipIn(ns, "-j", "link", "show")) as { ifname: string }[];
  return links.some((l) => l.ifname === dev);
}

function nodeVeths(): string[] {
  const links = JSON.parse(
    execFileSync("ip", ["-j", "-d", "link", "show"], { encoding: "utf8" }),
  ) as {
    ifname: string;
    linkinfo?: { info_kind?: string };
  }[];
  return links.filter((l) => l.linkinfo?.info_kind === "veth").map((l) => l.ifname);
}

function ping(ns: string, to: string): void {
  run(ns, "ping", "-c", "1", "-W", "2", to);
}

let sandbox: CniSandbox;
let client: CniClient;
const netnses: TestNetns[] = [];

function netns(): TestNetns {
  const n = makeNetns("pod");
  netnses.push(n);
  return n;
}

beforeEach(() => {
  sandbox = makeCniSandbox();
});

afterEach(() => {
  for (const n of netnses.splice(0)) {
    try {
      n.remove();
    } catch {
      // removed by the test
    }
  }
  sandbox.remove();
});

async function ready(): Promise<void> {
  client = sandbox.client();
  await eventually(() => client.status().ready);
}

for (const [i, cniVersion] of ["0.3.1", "0.4.0", "1.0.0"].entries()) {
  describe(`bridge + host-local at cniVersion ${cniVersion}`, () => {
    it("gives two pods their addresses and default route, and they reach each other", async () => {
      sandbox.writeConf(
        "10-br.conflist",
        bridgeList("brnet", cniVersion, sandbox.dataDir, `10.31.${i}.0/24`),
      );
      await ready();
      const [nsA, nsB] = [netns(), netns()];
      const [podA, podB] = [makePod(), makePod()];
      const [a] = await client.addPod(podA, nsA.path);
      const [b] = await client.addPod(podB, nsB.path);
      for (const [ns, att] of [
        [nsA, a!],
        [nsB, b!],
      ] as const) {
        assert.equal(att.ifname, "eth0");
        assert.equal(att.result.cniVersion, cniVersion);
        const ip = att.result.ips[0]!;
        assert.equal(ip.gateway, `10.31.${i}.1`);
        assert.equal(att.result.interfaces[ip.interface!]!.sandbox, ns.path);
        assert.deepEqual(addrsOf(ns.name, "eth0"), [ip.address]);
        const def = routesOf(ns.name).find((r) => r.dst === "default");
        assert.equal(def?.gateway, `10.31.${i}.1`);
      }
      ping(nsA.name, b!.result.ips[0]!.address.split("/")[0]!);
      ping(nsB.name, `10.31.${i}.1`);
      assert.equal(allocations(sandbox.dataDir, "brnet").length, 2);

      await client.delPod(podA, nsA.path);
      await client.delPod(podB, nsB.path);
      assert.deepEqual(allocations(sandbox.dataDir, "brnet"), []);
      assert.ok(!hasLink(nsA.name, "eth0"));
      assert.deepEqual(cacheFiles(sandbox.cacheDir), []);
    });
  });
}

describe("ptp + host-local", () => {
  it("gives a pod a working netns from which it reaches a second pod through the node", async () => {
    sandbox.writeConf(
      "10-ptp.conflist",
      ptpList("ptpnet", "1.0.0", sandbox.dataDir, "10.32.0.0/16"),
    );
    await ready();
    const [nsA, nsB] = [netns(), netns()];
    const [podA, podB] = [makePod(), makePod()];
    const [a] = await client.addPod(podA, nsA.path);
    const [b] = await client.addPod(podB, nsB.path);
    const ipA = a!.result.ips[0]!;
    assert.deepEqual(addrsOf(nsA.name, "eth0"), [ipA.address]);
    // ptp routes the whole subnet via its gateway instead of on-link.
    const viaGw = routesOf(nsA.name).find((r) => r.dst === "10.32.0.0/16");
    assert.equal(viaGw?.gateway, ipA.gateway);
    ping(nsA.name, b!.result.ips[0]!.address.split("/")[0]!);
    await client.delPod(podA, nsA.path);
    await client.delPod(podB, nsB.path);
    assert.deepEqual(allocations(sandbox.dataDir, "ptpnet"), []);
  });
});

describe("chained plugins", () => {
  it("bridge, then portmap, then tuning each get the previous result, and DEL runs in reverse", async () => {
    const log = path.join(sandbox.root, "rec.log");
    recordingPlugin(sandbox.binDir, "recorder", log);
    sandbox.writeConf(
      "10-chain.conflist",
      bridgeList("chain", "1.0.0", sandbox.dataDir, "10.33.0.0/24", [
        { type: "portmap", capabilities: { portMappings: true }, snat: false },
        { type: "tuning", mtu: 1400, sysctl: { "net.ipv4.conf.eth0.arp_notify": "1" } },
        { type: "recorder" },
      ]),
    );
    await ready();
    const ns = netns();
    const pod = makePod();
    const [att] = await client.addPod(pod, ns.path, {
      capabilities: { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: "tcp" }] },
    });
    // tuning acted on the interface bridge made, found through prevResult.
    const link = JSON.parse(ipIn(ns.name, "-j", "link", "show", "eth0")) as { mtu: number }[];
    assert.equal(link[0]!.mtu, 1400);
    assert.equal(run(ns.name, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify").trim(), "1");
    // portmap got its runtimeConfig and installed the DNAT for the pod's address.
    const nat = execFileSync("iptables-save", ["-t", "nat"], { encoding: "utf8" });
    assert.match(nat, /--dport 8080 .*-j DNAT --to-destination 10\.33\.0\.\d+:80/);
    const [add] = readLog(log) as { conf: Record<string, unknown> }[];
    const prev = add!.conf.prevResult as { ips: { address: string }[]; interfaces: unknown[] };
    assert.equal(prev.ips[0]!.address, att!.result.ips[0]!.address);
    assert.equal(add!.conf.runtimeConfig, undefined, "the recorder declared no capability");
    assert.deepEqual(att!.result.interfaces, prev.interfaces);

    await client.delPod(pod, ns.path);
    const del = readLog(log)[1] as { command: string; conf: { prevResult: unknown } };
    assert.equal(del.command, "DEL");
    assert.deepEqual(del.conf.prevResult, add!.conf.prevResult);
    assert.doesNotMatch(
      execFileSync("iptables-save", ["-t", "nat"], { encoding: "utf8" }),
      /--dport 8080/,
    );
    assert.deepEqual(allocations(sandbox.dataDir, "chain"), []);
  });
});

describe("many pods on one range", () => {
  it("32 concurrent ADDs get 32 distinct addresses and their DELs release all 32", async () => {
    sandbox.writeConf(
      "10-br.conflist",
      bridgeList("many", "1.0.0", sandbox.dataDir, "10.34.0.0/24"),
    );
    await ready();
    const pods = Array.from({ length: 32 }, () => ({ pod: makePod(), ns: netns() }));
    const results = await Promise.all(pods.map(({ pod, ns }) => client.addPod(pod, ns.path)));
    const addresses = results.map((r) => r[0]!.result.ips[0]!.address.split("/")[0]!);
    assert.equal(new Set(addresses).size, 32);
    assert.deepEqual(allocations(sandbox.dataDir, "many"), [...addresses].sort());
    for (const [i, { ns }] of pods.entries()) {
      assert.deepEqual(addrsOf(ns.name, "eth0"), [results[i]![0]!.result.ips[0]!.address]);
    }
    await Promise.all(pods.map(({ pod, ns }) => client.delPod(pod, ns.path)));
    assert.deepEqual(allocations(sandbox.dataDir, "many"), []);
    assert.deepEqual(cacheFiles(sandbox.cacheDir), []);
  });
});

describe("DEL", () => {
  it("succeeds after the netns is gone and after a restart, releasing the address; again succeeds", async () => {
    sandbox.writeConf(
      "10-br.conflist",
      bridgeList("gone", "1.0.0", sandbox.dataDir, "10.35.0.0/24"),
    );
    await ready();
    const ns = netns();
    const pod = makePod();
    const [att] = await client.addPod(pod, ns.path);
    const hostVeth = att!.result.interfaces.find(
      (itf) => !itf.sandbox && itf.name.startsWith("veth"),
    );
    assert.ok(hostVeth && nodeVeths().includes(hostVeth.name));
    assert.equal(allocations(sandbox.dataDir, "gone").length, 1);
    ns.remove();
    assert.ok(!fs.existsSync(ns.path));
    // A new client (a restarted vmlet) with the conf dir emptied: the cache is enough.
    client.close();
    fs.rmSync(path.join(sandbox.confDir, "10-br.conflist"));
    const restarted = sandbox.client();
    assert.equal(restarted.status().ready, false);
    await restarted.delPod(pod, ns.path);
    assert.deepEqual(allocations(sandbox.dataDir, "gone"), []);
    assert.deepEqual(cacheFiles(sandbox.cacheDir), []);
    await eventually(() => !nodeVeths().includes(hostVeth.name));
    await restarted.delPod(pod, ns.path);
    await restarted.delPod(pod, undefined);
  });

  it("CHECK passes on a healthy pod and fails once its interface is gone", async () => {
    sandbox.writeConf(
      "10-br.conflist",
      bridgeList("chk", "1.0.0", sandbox.dataDir, "10.36.0.0/24"),
    );
    await ready();
    const ns = netns();
    const pod = makePod();
    await client.addPod(pod, ns.path);
    await client.checkPod(pod, ns.path);
    ipIn(ns.name, "link", "del", "eth0");
    await assert.rejects(
      client.checkPod(pod, ns.path),
      /CNI CHECK pod default\/.* network chk \(eth0\) plugin bridge/,
    );
    await client.delPod(pod, ns.path);
    assert.deepEqual(allocations(sandbox.dataDir, "chk"), []);
  });
});

describe("several networks per pod", () => {
  it("attaches eth0 and net1 from two networks, and deletes both", async () => {
    sandbox.writeConf(
      "10-a.conflist",
      bridgeList("neta", "1.0.0", sandbox.dataDir, "10.37.0.0/24"),
    );
    sandbox.writeConf("20-b.conflist", ptpList("netb", "0.4.0", sandbox.dataDir, "10.38.0.0/24"));
    await ready();
    await eventually(() => client.network("netb") !== undefined);
    const ns = netns();
    const pod = makePod();
    const atts = await client.addPod(pod, ns.path, { networks: ["neta", "netb"] });
    assert.deepEqual(
      atts.map((a) => [a.network, a.ifname]),
      [
        ["neta", "eth0"],
        ["netb", "net1"],
      ],
    );
    assert.deepEqual(addrsOf(ns.name, "net1"), [atts[1]!.result.ips[0]!.address]);
    assert.equal(cacheFiles(sandbox.cacheDir).length, 2);
    await client.delPod(pod, ns.path);
    assert.deepEqual(allocations(sandbox.dataDir, "neta"), []);
    assert.deepEqual(allocations(sandbox.dataDir, "netb"), []);
    assert.deepEqual(cacheFiles(sandbox.cacheDir), []);
  });
});
