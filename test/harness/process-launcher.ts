// A stand-in for the VM launcher: each "VM" is a `sleep` in its own session, so pids,
// exits, /proc stats and adoption after a restart are real while QEMU is not involved.
// It writes one line to the container log in kubelet's CRI format.
import { spawn } from "node:child_process";
import fs from "node:fs";
import type { VmExit, VmHandle, VmLauncher, VmSpec, VmStats } from "../../src/runtime/types";
import { type GuestExecResult, guestExec } from "../../src/runtime/vm/guest-agent";

interface ProcessRecord {
  pid: number;
  /** /proc/<pid>/stat starttime: tells our process from a later one with the same pid. */
  startTime: string;
}

const CLOCK_TICK_NS = 10_000_000n; // USER_HZ = 100 on Linux
const POLL_MS = 100;

export class ProcessLauncher implements VmLauncher {
  readonly started: VmSpec[] = [];
  /** The next start fails with this. */
  failNextStart: Error | undefined;
  /** The next adopt fails with this (QMP unreachable, say). */
  failNextAdopt: Error | undefined;
  /** Every adopt fails with this while set (a QEMU whose QMP never answers). */
  failAdopts: Error | undefined;
  /** Dirs `discard` was asked to clean. */
  readonly discarded: string[] = [];
  /** A qemu-ga socket (qemu-ga -m unix-listen): started "VMs" run ExecSync through it. */
  agentSocket: string | undefined;

  killRecorded(record: unknown): Promise<boolean> {
    return killRecordedProcess(record);
  }

  async discard(dir: string): Promise<void> {
    this.discarded.push(dir);
  }

  async start(spec: VmSpec): Promise<VmHandle> {
    const failure = this.failNextStart;
    if (failure) {
      this.failNextStart = undefined;
      throw failure;
    }
    this.started.push(spec);
    fs.appendFileSync(
      spec.logPath,
      `${new Date().toISOString()} stdout F fake VM ${spec.id} started\n`,
    );
    const child = spawn("sleep", ["1000000"], { detached: true, stdio: "ignore" });
    child.unref();
    const pid = child.pid;
    if (pid === undefined) throw new Error(`start ${spec.id}: spawn sleep failed`);
    const exited = new Promise<VmExit>((resolve) => {
      child.once("exit", (code, signal) =>
        resolve({
          exitCode: code ?? 128 + (signal ? (osSignals[signal] ?? 0) : 0),
          reason: code === 0 ? "Completed" : "Error",
          finishedAt: new Date(),
        }),
      );
    });
    const handle = new ProcessHandle({ pid, startTime: startTimeOf(pid) ?? "" }, exited);
    const agent = this.agentSocket;
    if (agent) {
      handle.exec = (argv, timeoutMs, signal) =>
        guestExec(agent, argv, { timeoutMs, ...(signal ? { signal } : {}) });
    }
    return handle;
  }

  async adopt(record: unknown): Promise<VmHandle | undefined> {
    const failure = this.failNextAdopt ?? this.failAdopts;
    if (failure) {
      this.failNextAdopt = undefined;
      throw failure;
    }
    const r = record as ProcessRecord;
    if (typeof r?.pid !== "number" || startTimeOf(r.pid) !== r.startTime) return undefined;
    return new ProcessHandle(r, pollExit(r));
  }
}

/** Kills the recorded process by its pid while the start time still matches. */
export async function killRecordedProcess(record: unknown): Promise<boolean> {
  const r = record as ProcessRecord;
  if (typeof r?.pid !== "number" || startTimeOf(r.pid) !== r.startTime) return false;
  process.kill(r.pid, "SIGKILL");
  while (startTimeOf(r.pid) === r.startTime)
    await new Promise((resolve) => setTimeout(resolve, 10));
  return true;
}

const osSignals: Record<string, number> = { SIGKILL: 9, SIGTERM: 15, SIGINT: 2 };

class ProcessHandle implements VmHandle {
  readonly pid: number;
  readonly record: ProcessRecord;
  readonly exited: Promise<VmExit>;
  exec?: (argv: string[], timeoutMs: number, signal?: AbortSignal) => Promise<GuestExecResult>;
  private done = false;

  constructor(record: ProcessRecord, exited: Promise<VmExit>) {
    this.pid = record.pid;
    this.record = record;
    this.exited = exited.finally(() => {
      this.done = true;
    });
  }

  async stop(timeoutMs: number): Promise<void> {
    this.signal("SIGTERM");
    const timer = new Promise<"timeout">((resolve) =>
      setTimeout(() => resolve("timeout"), timeoutMs).unref(),
    );
    if ((await Promise.race([this.exited, timer])) === "timeout") await this.kill();
  }

  async kill(): Promise<void> {
    this.signal("SIGKILL");
    await this.exited;
  }

  async stats(): Promise<VmStats> {
    const stat = fs.readFileSync(`/proc/${this.pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = BigInt(fields[11]) + BigInt(fields[12]); // utime, stime
    const rss = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${this.pid}/status`, "utf8"));
    return { cpuNanos: ticks * CLOCK_TICK_NS, memoryBytes: rss ? Number(rss[1]) * 1024 : 0 };
  }

  private signal(signal: NodeJS.Signals): void {
    if (this.done) return;
    try {
      process.kill(this.pid, signal);
    } catch {
      // gone already
    }
  }
}

function startTimeOf(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (fields[0] === "Z") return undefined; // a zombie has exited
    return fields[19];
  } catch {
    return undefined;
  }
}

/** An adopted process is not our child: its exit is seen by polling. */
function pollExit(record: ProcessRecord): Promise<VmExit> {
  return new Promise((resolve) => {
    const timer = setInterval(() => {
      if (startTimeOf(record.pid) !== record.startTime) {
        clearInterval(timer);
        resolve({ exitCode: 255, reason: "Error", finishedAt: new Date() });
      }
    }, POLL_MS);
    timer.unref();
  });
}
