// ADD + DEL through the CNI client against running the bridge plugin directly with the
// same config, env and stdin, alternating in one run. Usage: node dist/bench/cni.js [N]
import fs from "node:fs";
import type { PodRef } from "../src/cni-bridge/cni";
import { createNetns, deleteNetns } from "../src/sys/netns";
import { alternate, report } from "./lib";
import { benchNode } from "./node";
import { pluginEnv, runPlugin } from "./plugin";

async function main(): Promise<void> {
  const { root, plugin, list, cni: client } = await benchNode("bench", "benchbr0", "10.99.0.0/16");
  const iterations = Number(process.argv[2] ?? 100);
  const nsPath = createNetns("benchpod");

  const viaClient = async (i: number) => {
    const pod: PodRef = { namespace: "bench", name: `c${i}`, uid: `u${i}`, sandboxId: `c${i}` };
    await client.addPod(pod, nsPath);
    await client.delPod(pod, nsPath);
  };
  const direct = async (i: number) => {
    const pod: PodRef = { namespace: "bench", name: `d${i}`, uid: `u${i}`, sandboxId: `d${i}` };
    const conf = { ...plugin, name: list.name, cniVersion: list.cniVersion };
    const result = await runPlugin("bridge", pluginEnv("ADD", pod, nsPath), JSON.stringify(conf));
    const del = JSON.stringify({ ...conf, prevResult: JSON.parse(result) });
    await runPlugin("bridge", pluginEnv("DEL", pod, nsPath), del);
  };

  const samples = await alternate(
    iterations,
    { CniClient: viaClient, "plugin binary direct": direct },
    5,
  );
  client.close();
  deleteNetns("benchpod");
  report(
    "cni",
    `CNI ADD+DEL, bridge + host-local, cniVersion 1.0.0, ${iterations} iterations, alternating`,
    samples,
    [{ name: "ratio client/direct", of: "CniClient", to: "plugin binary direct" }],
    { plugins: "bridge + host-local (/usr/lib/cni)", cniVersion: "1.0.0", iterations },
  );
  fs.rmSync(root, { recursive: true, force: true });
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
