// ADD + DEL through the CNI client against running the bridge plugin directly with the
// same config, env and stdin, alternating in one run. Usage: node dist/bench/cni.js [N]
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { CniClient, kubernetesCniArgs, type PodRef } from "../src/cni-bridge/cni";
import { createNetns, deleteNetns } from "../src/sys/netns";
import { enterPrivateNamespace } from "../src/sys/private-namespace";
import { alternate, report } from "./lib";

const BIN_DIR = "/usr/lib/cni";

function runPlugin(env: NodeJS.ProcessEnv, stdin: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(BIN_DIR, "bridge"), [], { env, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.resume();
    child.on("error", reject);
    child.on("close", (code) => {
      const text = Buffer.concat(out).toString("utf8");
      if (code === 0) resolve(text);
      else reject(new Error(`bridge exited ${code}: ${text}`));
    });
    child.stdin.end(stdin);
  });
}

async function main(): Promise<void> {
  enterPrivateNamespace();
  const iterations = Number(process.argv[2] ?? 100);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "cni-bench-"));
  const confDir = path.join(root, "net.d");
  fs.mkdirSync(confDir);
  const plugin = {
    type: "bridge",
    bridge: "benchbr0",
    isGateway: true,
    ipMasq: false,
    ipam: {
      type: "host-local",
      dataDir: path.join(root, "ipam"),
      ranges: [[{ subnet: "10.99.0.0/16" }]],
      routes: [{ dst: "0.0.0.0/0" }],
    },
  };
  const list = { cniVersion: "1.0.0", name: "bench", plugins: [plugin] };
  fs.writeFileSync(path.join(confDir, "10-bench.conflist"), JSON.stringify(list));
  const client = new CniClient({ confDir, binDirs: [BIN_DIR], cacheDir: path.join(root, "cache") });
  const nsPath = createNetns("benchpod");

  const viaClient = async (i: number) => {
    const pod: PodRef = { namespace: "bench", name: `c${i}`, uid: `u${i}`, sandboxId: `c${i}` };
    await client.addPod(pod, nsPath);
    await client.delPod(pod, nsPath);
  };
  const direct = async (i: number) => {
    const pod: PodRef = { namespace: "bench", name: `d${i}`, uid: `u${i}`, sandboxId: `d${i}` };
    const env = (command: string) => ({
      ...process.env,
      CNI_COMMAND: command,
      CNI_CONTAINERID: pod.sandboxId,
      CNI_NETNS: nsPath,
      CNI_IFNAME: "eth0",
      CNI_ARGS: kubernetesCniArgs(pod),
      CNI_PATH: BIN_DIR,
    });
    const conf = { ...plugin, name: list.name, cniVersion: list.cniVersion };
    const result = await runPlugin(env("ADD"), JSON.stringify(conf));
    await runPlugin(env("DEL"), JSON.stringify({ ...conf, prevResult: JSON.parse(result) }));
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
