// A VM's files in its state dir, and a QEMU a start that never returned left there:
// what the launcher removes after a failed start, and cleanup() after an exit.
import fs from "node:fs";
import { type VmPaths, vmPaths } from "./argv";
import { killAndWait, readProcStat } from "./proc";
import type { VmRecord } from "./types";

/** Kills a QEMU left in a VM dir by a start that never returned; true if there was one. */
export function killQemuOfDir(dir: string): Promise<boolean> {
  return killStrayQemu(vmPaths(dir));
}

/** Removes every file the launcher makes in a VM's state dir, then the dir if empty. */
export async function removeVmFiles(paths: VmPaths | VmRecord): Promise<void> {
  const files =
    "overlay" in paths
      ? Object.values(paths)
      : [
          paths.overlayPath,
          paths.seedPath,
          paths.qmpSocket,
          paths.consoleSocket,
          ...(paths.guestAgentSocket ? [paths.guestAgentSocket] : []),
          paths.consoleRaw,
          paths.consoleOffsetFile,
          paths.qemuLogPath,
          paths.pidFile,
        ];
  for (const file of files) {
    await fs.promises.rm(file, { force: true });
    await fs.promises.rm(`${file}.tmp`, { force: true });
  }
  const seed = "overlay" in paths ? paths.seed : paths.seedPath;
  await fs.promises.rm(`${seed}.d`, { recursive: true, force: true });
}

/** Removes the VM's files and its state dir when nothing else is left in it. */
export async function removeVmState(record: VmRecord): Promise<void> {
  await removeVmFiles(record);
  await fs.promises.rmdir(record.dir).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== "ENOENT" && error.code !== "ENOTEMPTY") throw error;
  });
}

/** How long killStrayQemu waits for a stray QEMU to be gone. */
const STRAY_KILL_WAIT_MS = 5_000;

/**
 * Kills the QEMU that an earlier start in `paths`' dir left (found by its pidfile, and
 * only if its command line names this dir's QMP socket: the pid may have been reused).
 * True when there was one.
 */
export async function killStrayQemu(paths: VmPaths): Promise<boolean> {
  const pid = Number((await fs.promises.readFile(paths.pidFile, "utf8").catch(() => "")).trim());
  if (!Number.isSafeInteger(pid) || pid <= 1) return false;
  const cmdline = await fs.promises.readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
  if (!cmdline.split("\0").some((arg) => arg.includes(paths.qmpSocket))) return false;
  const alive = async () => {
    const stat = await readProcStat(pid);
    return stat !== undefined && stat.state !== "Z";
  };
  // A stray that outlives the wait is reported by the next start's QMP connect failing.
  const outcome = await killAndWait(pid, alive, STRAY_KILL_WAIT_MS).catch(() => undefined);
  return outcome !== undefined && outcome !== "no-such-process";
}
