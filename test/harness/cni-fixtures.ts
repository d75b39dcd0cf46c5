// Fixtures for CNI tests: a private conf dir, cache dir and host-local dataDir per test,
// configs for Debian's reference plugins, and small misbehaving plugins.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { CniClient, type PodRef } from "../../src/cni-bridge/cni";
import { uniqueName } from "./fixtures";

export const DEBIAN_CNI_DIR = "/usr/lib/cni";

export interface CniSandbox {
  root: string;
  confDir: string;
  cacheDir: string;
  dataDir: string;
  /** A dir for fixture plugins, searched before Debian's. */
  binDir: string;
  client(timeoutMs?: number): CniClient;
  writeConf(file: string, conf: unknown): void;
  /** Removes the sandbox's dirs, and the node bridges its configs named (CNI DEL keeps them). */
  remove(): void;
}

export function makeCniSandbox(): CniSandbox {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "cni-"));
  const dirs = {
    confDir: path.join(root, "net.d"),
    cacheDir: path.join(root, "cache"),
    dataDir: path.join(root, "ipam"),
    binDir: path.join(root, "bin"),
  };
  for (const d of Object.values(dirs)) fs.mkdirSync(d);
  const clients: CniClient[] = [];
  // The bridge plugin never deletes its bridge; one left with its gateway address would
  // take the next test's traffic for the same subnet.
  const bridges = new Set<string>();
  return {
    root,
    ...dirs,
    client(timeoutMs?: number) {
      const c = new CniClient({
        confDir: dirs.confDir,
        binDirs: [dirs.binDir, DEBIAN_CNI_DIR],
        cacheDir: dirs.cacheDir,
        timeoutMs,
      });
      clients.push(c);
      return c;
    },
    writeConf(file, conf) {
      const tmp = path.join(root, `.${file}`);
      fs.writeFileSync(tmp, JSON.stringify(conf));
      fs.renameSync(tmp, path.join(dirs.confDir, file));
      for (const name of bridgesNamedIn(conf)) bridges.add(name);
    },
    remove() {
      for (const c of clients) c.close();
      for (const name of bridges) {
        spawnSync("ip", ["link", "del", name, "type", "bridge"], { stdio: "ignore" });
      }
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}

/** The `bridge` names of the bridge plugins in a conf or conflist. */
function bridgesNamedIn(conf: unknown): string[] {
  if (typeof conf !== "object" || conf === null) return [];
  const { plugins } = conf as { plugins?: unknown };
  const entries = Array.isArray(plugins) ? plugins : [conf];
  return entries.flatMap((p: { type?: unknown; bridge?: unknown }) =>
    p?.type === "bridge" ? [typeof p.bridge === "string" ? p.bridge : "cni0"] : [],
  );
}

export function makePod(name = uniqueName("pod")): PodRef {
  return { namespace: "default", name, uid: `uid-${name}`, sandboxId: `sb-${name}` };
}

/** A host-local IPAM section with its allocations kept in `dataDir`. */
export function hostLocal(dataDir: string, subnet: string, extra: Record<string, unknown> = {}) {
  return {
    type: "host-local",
    dataDir,
    ranges: [[{ subnet }]],
    routes: [{ dst: "0.0.0.0/0" }],
    ...extra,
  };
}

export function bridgeList(
  name: string,
  cniVersion: string,
  dataDir: string,
  subnet: string,
  more: unknown[] = [],
) {
  return {
    cniVersion,
    name,
    plugins: [
      {
        type: "bridge",
        bridge: uniqueName("cbr"),
        isGateway: true,
        ipMasq: false,
        ipam: hostLocal(dataDir, subnet),
      },
      ...more,
    ],
  };
}

export function ptpList(name: string, cniVersion: string, dataDir: string, subnet: string) {
  return {
    cniVersion,
    name,
    plugins: [{ type: "ptp", ipMasq: false, ipam: hostLocal(dataDir, subnet) }],
  };
}

/** The addresses host-local holds for `network` (one file per address). */
export function allocations(dataDir: string, network: string): string[] {
  try {
    return fs
      .readdirSync(path.join(dataDir, network))
      .filter((f) => /^[0-9a-f.:]+$/.test(f) && f.includes("."))
      .sort();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw error;
  }
}

/** Cache entry files under the cache dir. */
export function cacheFiles(cacheDir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name));
      else out.push(path.join(d, e.name));
    }
  };
  walk(cacheDir);
  return out;
}

/** Writes an executable fixture plugin. */
export function writePlugin(binDir: string, type: string, script: string): void {
  const file = path.join(binDir, type);
  fs.writeFileSync(file, script, { mode: 0o755 });
}

/**
 * A plugin that delegates to a real one, except that for `command` it misbehaves:
 * "error" prints a CNI error and exits 1, "garbage" prints invalid JSON, "hang" sleeps.
 */
export function misbehavingPlugin(
  binDir: string,
  type: string,
  command: string,
  mode: "error" | "garbage" | "hang",
  pidFile?: string,
): void {
  const act = {
    error: `echo '{"cniVersion":"1.0.0","code":107,"msg":"fixture refused","details":"asked to fail"}'; exit 1`,
    garbage: `echo 'this is { not json'; exit 0`,
    // Hangs the way a plugin does when its IPAM delegate (a child) hangs: pidFile gets
    // "PLUGIN_PID CHILD_PID".
    hang: `sleep 600 & ${pidFile ? `echo "$$ $!" > ${pidFile}; ` : ""}wait`,
  }[mode];
  writePlugin(
    binDir,
    type,
    `#!/bin/sh
if [ "$CNI_COMMAND" = "${command}" ]; then
  cat >/dev/null
  ${act}
fi
# Everything else: a well-behaved chained plugin that passes prevResult through.
exec ${process.execPath} -e '
let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
  const c = JSON.parse(s);
  if (process.env.CNI_COMMAND === "ADD") process.stdout.write(JSON.stringify(c.prevResult ?? { cniVersion: c.cniVersion }));
  if (process.env.CNI_COMMAND === "VERSION") process.stdout.write(JSON.stringify({ cniVersion: "1.1.0", supportedVersions: ["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"] }));
});'
`,
  );
}

/** A plugin that records each call's env and stdin to `logFile`, then behaves. */
export function recordingPlugin(binDir: string, type: string, logFile: string): void {
  writePlugin(
    binDir,
    type,
    `#!${process.execPath}
const fs = require("fs");
const conf = fs.readFileSync(0, "utf8");
const e = process.env;
fs.appendFileSync(${JSON.stringify(logFile)}, JSON.stringify({
  command: e.CNI_COMMAND, containerId: e.CNI_CONTAINERID, netns: e.CNI_NETNS, ifname: e.CNI_IFNAME,
  args: e.CNI_ARGS, path: e.CNI_PATH, conf: conf ? JSON.parse(conf) : null }) + "\\n");
const c = conf ? JSON.parse(conf) : {};
if (e.CNI_COMMAND === "ADD") process.stdout.write(JSON.stringify(c.prevResult ?? { cniVersion: c.cniVersion }));
if (e.CNI_COMMAND === "VERSION") process.stdout.write(JSON.stringify({ cniVersion: "1.1.0", supportedVersions: ["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"] }));
`,
  );
}

export function readLog(logFile: string): Record<string, unknown>[] {
  if (!fs.existsSync(logFile)) return [];
  return fs
    .readFileSync(logFile, "utf8")
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Polls `cond` until true or `ms` passes (for the conf-dir watcher). */
export async function eventually(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}
