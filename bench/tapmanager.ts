// The tapmanager against raw CNI, and at node scale.
//  1. setUp and tearDown of one pod against what any runtime does without vmlet (a netns
//     and the bridge plugin's ADD; its DEL and the netns removed), alternating, N pods.
//  2. 110 pods (kubelet's default maxPods) set up concurrently, then torn down
//     concurrently: total times, the daemon's RSS per pod, and what is left afterwards.
// Usage: node dist/bench/tapmanager.js [N=50] [concurrent=110]
import fs from "node:fs";
import path from "node:path";
import { performance } from "node:perf_hooks";
import v8 from "node:v8";
import vm from "node:vm";
import type { PodRef } from "../src/cni-bridge/cni";
import { createNetns, deleteNetns, listNetns } from "../src/sys/netns";
import { Rtnl } from "../src/sys/rtnl";
import { Tapmanager } from "../src/tapmanager";
import { inTurn, report, stepTimer, summarize } from "./lib";
import { benchNode } from "./node";
import { pluginEnv, runPlugin } from "./plugin";

const MiB = 1024 * 1024;

v8.setFlagsFromString("--expose-gc");
const collectGarbage = vm.runInNewContext("gc") as () => void;

function rssAfterGc(): number {
  collectGarbage();
  collectGarbage();
  return process.memoryUsage().rss;
}

function filesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { recursive: true, encoding: "utf8" }).filter((f) => {
    return fs.statSync(path.join(dir, f)).isFile();
  });
}

/** Everything a pod network can leave behind, counted. */
async function census(root: string): Promise<Record<string, number>> {
  const rtnl = Rtnl.open("/proc/self/ns/net");
  const links = (await rtnl.links()).length;
  rtnl.close();
  const ipam = filesUnder(path.join(root, "ipam")).filter(
    (f) => !/(^|\/)(lock|last_reserved_ip\.\d+)$/.test(f),
  ).length;
  const children = fs
    .readdirSync("/proc/self/task")
    .map((t) => fs.readFileSync(`/proc/self/task/${t}/children`, "utf8").trim())
    .filter(Boolean).length;
  return {
    netns: listNetns().length,
    nodeLinks: links,
    ipamAllocations: ipam,
    cniCacheEntries: filesUnder(path.join(root, "cache")).length,
    stateFiles: filesUnder(path.join(root, "pods")).length,
    openFds: fs.readdirSync("/proc/self/fd").length,
    childProcesses: children,
  };
}

function pod(name: string): PodRef {
  return { namespace: "bench", name, uid: `uid-${name}`, sandboxId: `sb-${name}` };
}

async function main(): Promise<void> {
  const { root, plugin, list, cni } = await benchNode("bench", "tmbench0", "10.97.0.0/16");
  const pods = Number(process.argv[2] ?? 50);
  const concurrent = Number(process.argv[3] ?? 110);
  const tm = new Tapmanager({ cni, stateDir: path.join(root, "pods") });

  // 1. One pod at a time, alternating with raw CNI.
  const { samples, time: timed } = stepTimer([
    "tapmanager.setUp",
    "raw ADD (netns + bridge plugin)",
    "tapmanager.tearDown",
    "raw DEL (bridge plugin + netns)",
  ]);
  const conf = JSON.stringify({ ...plugin, name: list.name, cniVersion: list.cniVersion });
  const warmup = 3;
  for (let i = -warmup; i < pods; i++) {
    const record = i >= 0;
    const viaTapmanager = async () => {
      const p = pod(`tm${i + warmup}`);
      await timed("tapmanager.setUp", record, () => tm.setUp({ pod: p }));
      await timed("tapmanager.tearDown", record, () => tm.tearDown(p.sandboxId));
    };
    const raw = async () => {
      const p = pod(`raw${i + warmup}`);
      const name = `raw-${p.sandboxId}`;
      const result = await timed("raw ADD (netns + bridge plugin)", record, () => {
        const nsPath = createNetns(name);
        return runPlugin("bridge", pluginEnv("ADD", p, nsPath), conf);
      });
      await timed("raw DEL (bridge plugin + netns)", record, async () => {
        const del = JSON.stringify({ ...JSON.parse(conf), prevResult: JSON.parse(result) });
        await runPlugin("bridge", pluginEnv("DEL", p, `/run/netns/${name}`), del);
        deleteNetns(name);
      });
    };
    await inTurn(i, viaTapmanager, raw);
  }
  const p50 = (name: string) => summarize(samples[name]).p50;
  const overhead = {
    setUpMs: p50("tapmanager.setUp") - p50("raw ADD (netns + bridge plugin)"),
    tearDownMs: p50("tapmanager.tearDown") - p50("raw DEL (bridge plugin + netns)"),
  };

  // 2. A full node: all pods at once, then all torn down at once.
  const before = await census(root);
  const rssBefore = rssAfterGc();
  const names = Array.from({ length: concurrent }, (_, i) => pod(`node${i}`));
  let t0 = performance.now();
  const networks = await Promise.all(names.map((p) => tm.setUp({ pod: p })));
  const setUpAllMs = performance.now() - t0;
  const rssUp = rssAfterGc();
  const addresses = new Set(networks.map((n) => n.interfaces[0].addresses[0].address));
  t0 = performance.now();
  await Promise.all(names.map((p) => tm.tearDown(p.sandboxId)));
  const tearDownAllMs = performance.now() - t0;
  const after = await census(root);
  const leaks = Object.fromEntries(
    Object.keys(before).map((k) => [k, after[k] - before[k]]),
  ) as Record<string, number>;
  const scale = {
    pods: concurrent,
    distinctAddresses: addresses.size,
    setUpAllMs,
    tearDownAllMs,
    rssBeforeMiB: rssBefore / MiB,
    rssWithPodsMiB: rssUp / MiB,
    rssPerPodKiB: (rssUp - rssBefore) / concurrent / 1024,
    leaks,
    leakTotal: Object.values(leaks).reduce((a, b) => a + Math.max(0, b), 0),
  };

  report(
    "tapmanager",
    `tapmanager vs raw CNI, bridge + host-local, ${pods} pods alternating`,
    samples,
    [
      { name: "setUp / raw ADD", of: "tapmanager.setUp", to: "raw ADD (netns + bridge plugin)" },
      {
        name: "tearDown / raw DEL",
        of: "tapmanager.tearDown",
        to: "raw DEL (bridge plugin + netns)",
      },
    ],
    { overheadP50Ms: overhead, concurrent: scale },
  );
  console.log(
    `overhead (p50): setUp +${overhead.setUpMs.toFixed(1)} ms (target <= 15), ` +
      `tearDown +${overhead.tearDownMs.toFixed(1)} ms`,
  );
  console.log(
    `${concurrent} pods at once: setUp ${(setUpAllMs / 1000).toFixed(2)} s, ` +
      `tearDown ${(tearDownAllMs / 1000).toFixed(2)} s, ${addresses.size} distinct addresses; ` +
      `RSS ${scale.rssBeforeMiB.toFixed(1)} -> ${scale.rssWithPodsMiB.toFixed(1)} MiB, ` +
      `${scale.rssPerPodKiB.toFixed(0)} KiB per pod (target < 1024)`,
  );
  console.log(`left behind after teardown (target all 0): ${JSON.stringify(leaks)}`);
  await tm.close();
  cni.close();
  fs.rmSync(root, { recursive: true, force: true });
  if (scale.leakTotal > 0 || addresses.size !== concurrent) process.exitCode = 1;
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
