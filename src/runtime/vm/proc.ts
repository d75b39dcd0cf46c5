// What /proc says about the QEMU process: whether it is still the process vmlet
// started (PID plus start time), its state, CPU time and resident memory.
import fs from "node:fs";

/** USER_HZ: the unit of /proc/PID/stat times, fixed at 100 in the kernel's user ABI. */
const USER_HZ = 100n;
const NANOS_PER_TICK = 1_000_000_000n / USER_HZ;

export interface ProcStat {
  /** R, S, D, Z, X, ... (proc(5)). */
  state: string;
  /** Clock ticks after boot at which the process started. */
  startTime: string;
  /** utime + stime of all threads, in nanoseconds. */
  cpuNanos: bigint;
}

/** /proc/PID/stat, or undefined when there is no such process. */
export async function readProcStat(pid: number): Promise<ProcStat | undefined> {
  let text: string;
  try {
    text = await fs.promises.readFile(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  return parseProcStat(text);
}

/** Fields after the command (which may hold spaces and parentheses) start at field 3. */
export function parseProcStat(text: string): ProcStat {
  const after = text
    .slice(text.lastIndexOf(")") + 2)
    .trim()
    .split(/\s+/);
  const field = (n: number): string => {
    const value = after[n - 3];
    if (value === undefined)
      throw new Error(`/proc/PID/stat: no field ${n} in ${text.slice(0, 100)}`);
    return value;
  };
  return {
    state: field(3),
    startTime: field(22),
    cpuNanos: (BigInt(field(14)) + BigInt(field(15))) * NANOS_PER_TICK,
  };
}

/** VmRSS of /proc/PID/status in bytes; 0 when the process is gone or a zombie. */
export async function readRssBytes(pid: number): Promise<number> {
  let text: string;
  try {
    text = await fs.promises.readFile(`/proc/${pid}/status`, "utf8");
  } catch {
    return 0;
  }
  const match = /^VmRSS:\s+(\d+)\s+kB$/m.exec(text);
  return match ? Number(match[1]) * 1024 : 0;
}

/**
 * Whether `pid` is still the process that started at `startTime`. A zombie counts as
 * alive while any of its threads still runs: the leader of a multi-threaded process
 * (QEMU's vCPU threads) turns Z before the others have exited and closed its fds.
 */
export async function isSameLiveProcess(pid: number, startTime: string): Promise<boolean> {
  const stat = await readProcStat(pid);
  if (stat === undefined || stat.startTime !== startTime || stat.state === "X") return false;
  if (stat.state !== "Z") return true;
  const tasks = await fs.promises.readdir(`/proc/${pid}/task`).catch(() => []);
  return tasks.length > 1;
}

/** How often killAndWait looks whether the process is gone. */
const KILL_POLL_MS = 20;

export type KillOutcome = "gone" | "no-such-process" | "still-alive";

/**
 * SIGKILLs `pid`, then polls `alive` until it says no or `timeoutMs` passes. SIGKILL cannot
 * be refused, but a process in uninterruptible sleep dies late. Errors other than ESRCH
 * (EPERM) are thrown.
 */
export async function killAndWait(
  pid: number,
  alive: () => Promise<boolean>,
  timeoutMs: number,
): Promise<KillOutcome> {
  try {
    process.kill(pid, "SIGKILL");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ESRCH") return "no-such-process";
    throw error;
  }
  const deadline = Date.now() + timeoutMs;
  while (await alive()) {
    if (Date.now() > deadline) return "still-alive";
    await new Promise((resolve) => setTimeout(resolve, KILL_POLL_MS));
  }
  return "gone";
}
