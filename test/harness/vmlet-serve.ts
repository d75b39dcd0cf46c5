// `vmlet serve` as a child process, its JSON log lines collected, ready once it logs
// that the CRI socket listens.
import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import type { CniSandbox } from "./cni-fixtures";

const MAIN = path.resolve(__dirname, "../../src/cli/main.js");

export interface Served {
  child: ChildProcess;
  /** Raw stdout lines so far. */
  logs: string[];
  exited: Promise<number | null>;
  /** The log lines parsed, from index `from` on. */
  records(from?: number): Record<string, unknown>[];
}

export async function startServe(
  args: string[],
  socket: string,
  listenWithinMs = 10_000,
): Promise<Served> {
  fs.rmSync(socket, { force: true });
  const child = spawn(process.execPath, [MAIN, "serve", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: string[] = [];
  let buffered = "";
  child.stdout?.on("data", (d: Buffer) => {
    buffered += d.toString();
    const lines = buffered.split("\n");
    buffered = lines.pop() ?? "";
    logs.push(...lines);
  });
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<number | null>((resolve) =>
    child.once("exit", (code) => resolve(code)),
  );
  const deadline = Date.now() + listenWithinMs;
  while (!logs.some((l) => l.includes("CRI server listening"))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`vmlet serve did not come up: ${stderr}${logs.join("\n")}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const records = (from = 0) =>
    logs.slice(from).map((l) => JSON.parse(l) as Record<string, unknown>);
  return { child, logs, exited, records };
}

/**
 * The flags of a `vmlet serve` on a CNI sandbox: a config file naming its conf and bin
 * dirs (TCG guests), the socket, and a state dir under the sandbox.
 */
export function serveArgs(cni: CniSandbox, socket: string): string[] {
  const config = path.join(cni.root, "vmlet.json");
  fs.writeFileSync(
    config,
    JSON.stringify({
      cniConfDir: cni.confDir,
      cniBinDir: `${cni.binDir}:/usr/lib/cni`,
      accel: "tcg",
    }),
  );
  return ["--config", config, "--socket", socket, "--state-dir", path.join(cni.root, "state")];
}
