// Runs a CNI plugin binary directly, the way a runtime without vmlet's client would:
// the baseline the CNI and tapmanager benchmarks compare against.
import { spawn } from "node:child_process";
import path from "node:path";
import { kubernetesCniArgs, type PodRef } from "../src/cni-bridge/cni";

export const BIN_DIR = "/usr/lib/cni";

export function pluginEnv(command: string, pod: PodRef, nsPath: string): NodeJS.ProcessEnv {
  return {
    ...process.env,
    CNI_COMMAND: command,
    CNI_CONTAINERID: pod.sandboxId,
    CNI_NETNS: nsPath,
    CNI_IFNAME: "eth0",
    CNI_ARGS: kubernetesCniArgs(pod),
    CNI_PATH: BIN_DIR,
  };
}

/** Resolves with the plugin's stdout; rejects with its exit code and output. */
export function runPlugin(type: string, env: NodeJS.ProcessEnv, stdin: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(BIN_DIR, type), [], { env, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.resume();
    child.on("error", reject);
    child.on("close", (code) => {
      const text = Buffer.concat(out).toString("utf8");
      if (code === 0) resolve(text);
      else reject(new Error(`${type} exited ${code}: ${text}`));
    });
    child.stdin.end(stdin);
  });
}
