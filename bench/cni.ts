// ADD + DEL through the CNI client against running the bridge plugin directly with the
// same config, env and stdin, alternating in one run. Usage: node dist/bench/cni.js [N]
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { CniClient, kubernetesCniArgs, type PodRef } from "../src/cni-bridge/cni";
import { createNetns, deleteNetns } from "../src/sys/netns";
import { enterPrivateNamespace } from "../src/sys/private-namespace";

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

function stats(samples: number[]): { p50: number; p90: number; mean: number } {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  return { p50: at(0.5), p90: at(0.9), mean: s.reduce((a, b) => a + b, 0) / s.length };
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

  for (let i = 0; i < 5; i++) {
    await viaClient(-i - 1);
    await direct(-i - 1);
  }
  const samples = { client: [] as number[], direct: [] as number[] };
  for (let i = 0; i < iterations; i++) {
    // Alternate which goes first, so neither always runs on a warmer cache.
    const order = i % 2 === 0 ? (["client", "direct"] as const) : (["direct", "client"] as const);
    for (const which of order) {
      const t0 = performance.now();
      await (which === "client" ? viaClient(i) : direct(i));
      samples[which].push(performance.now() - t0);
    }
  }
  client.close();
  deleteNetns("benchpod");

  const c = stats(samples.client);
  const d = stats(samples.direct);
  const row = (name: string, s: typeof c) =>
    `${name.padEnd(22)} ${s.p50.toFixed(2).padStart(8)} ${s.p90.toFixed(2).padStart(8)} ${s.mean.toFixed(2).padStart(8)}`;
  console.log(`ADD+DEL, bridge + host-local, cniVersion 1.0.0, ${iterations} iterations (ms)`);
  console.log(`${"".padEnd(22)} ${"p50".padStart(8)} ${"p90".padStart(8)} ${"mean".padStart(8)}`);
  console.log(row("CniClient", c));
  console.log(row("plugin binary direct", d));
  const ratio = { p50: c.p50 / d.p50, p90: c.p90 / d.p90, mean: c.mean / d.mean };
  console.log(
    `${"ratio client/direct".padEnd(22)} ${ratio.p50.toFixed(3).padStart(8)} ${ratio.p90.toFixed(3).padStart(8)} ${ratio.mean.toFixed(3).padStart(8)}`,
  );
  const outDir = path.join(__dirname, "..", "..", "bench", "results");
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(
    path.join(outDir, "cni.json"),
    `${JSON.stringify(
      {
        benchmark: "cni ADD+DEL",
        plugins: "bridge + host-local (/usr/lib/cni)",
        cniVersion: "1.0.0",
        iterations,
        unit: "ms",
        client: c,
        direct: d,
        ratio,
        date: new Date().toISOString(),
        node: process.version,
      },
      null,
      2,
    )}\n`,
  );
  fs.rmSync(root, { recursive: true, force: true });
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
