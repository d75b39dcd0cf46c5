// The VM launcher `vmlet serve` runs: QEMU per container (src/runtime/vm), checked
// against the runtime's structural VmLauncher interface here, plus `discard`: a QEMU
// whose start was cut short by a vmlet crash has no record to adopt it by, only its
// pidfile in the VM dir.
import fs from "node:fs";
import type { Logger } from "pino";
import type { VmHandle, VmLauncher, VmSpec } from "./types";
import { VmLauncher as QemuLauncher, vmPaths } from "./vm";

const KILL_WAIT_STEPS = 250;
const KILL_WAIT_MS = 20;

export function createVmLauncher(options: { logger: Logger }): VmLauncher {
  const qemu = new QemuLauncher({ log: options.logger });
  return {
    start: (spec: VmSpec): Promise<VmHandle> => qemu.start(spec),
    adopt: (record: unknown) => qemu.adopt(record as Parameters<QemuLauncher["adopt"]>[0]),
    discard: (dir: string) => killQemuOfDir(dir),
  };
}

/** Kills the QEMU named by the dir's pidfile, if it is that dir's QEMU, and waits for it. */
export async function killQemuOfDir(dir: string): Promise<boolean> {
  const paths = vmPaths(dir);
  const pid = Number((await fs.promises.readFile(paths.pidFile, "utf8").catch(() => "")).trim());
  if (!Number.isSafeInteger(pid) || pid <= 1) return false;
  // The pid may have been reused: only a process started with this dir's QMP socket.
  const cmdline = await fs.promises.readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
  if (!cmdline.split("\0").some((arg) => arg.includes(paths.qmpSocket))) return false;
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    return false;
  }
  for (let i = 0; i < KILL_WAIT_STEPS; i++) {
    const stat = await fs.promises.readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
    if (!stat || stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) return true;
    await new Promise((resolve) => setTimeout(resolve, KILL_WAIT_MS));
  }
  return true;
}
