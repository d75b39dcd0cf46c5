// Starts QEMU for a container, or finds it again after a vmlet restart, and hands it to
// a RunningVm (running-vm.ts) that watches it until it ends. QEMU runs in its own
// session, so it outlives vmlet; everything needed to find it again is in the VmRecord
// and the files of its state dir (vm-files.ts).
import { type ChildProcess, execFile, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { errorMessage } from "../../util/errors";
import { silentLog } from "../../util/silent-log";
import { resolveAccel } from "./accel";
import { buildQemuArgv, vmPaths } from "./argv";
import { VmError } from "./errors";
import { isSameLiveProcess, killAndWait, readProcStat } from "./proc";
import { QmpClient } from "./qmp";
import { type ChildExit, qemuLogTail, RunningVm, type WatchOptions } from "./running-vm";
import { buildSeedFiles, writeSeedIso } from "./seed";
import type { QemuConfinement, QemuVm, VmLauncher, VmLog, VmRecord, VmSpec } from "./types";
import { killQemuOfDir, killStrayQemu, removeVmFiles } from "./vm-files";

const execFileAsync = promisify(execFile);

export interface QemuLauncherOptions {
  qemuBinary?: string;
  qemuImgBinary?: string;
  log?: VmLog;
  /** Whether /dev/kvm is usable, for accel "auto"; tests replace it. */
  hasKvm?: () => boolean;
  /** How long QEMU may take to open its QMP socket. */
  startTimeoutMs?: number;
  /** CRI log lines longer than this are cut into P pieces. */
  maxLogLineBytes?: number;
  /** An unfinished console line is logged (as P) after this long. */
  partialFlushMs?: number;
  /** How often an adopted QEMU, which is not vmlet's child, is checked in /proc. */
  pollMs?: number;
  /** QMP's deadline to connect, and to answer each command (default 5 s each). */
  qmpTimeoutMs?: number;
  /** The most adopt() may take, whatever QEMU does (default 15 s). */
  adoptTimeoutMs?: number;
  /** Seccomp, the user QEMU drops to, no cores (default); null runs QEMU unconfined. */
  confinement?: QemuConfinement | null;
}

/** What adopt() may take in all: connect, console catch-up, query-status. */
const ADOPT_TIMEOUT_MS = 15_000;
/** How long a SIGKILLed QEMU may take to be gone before killRecorded() says so. */
const KILL_WAIT_MS = 10_000;

/** The user `scripts/setup.sh` makes for QEMU. */
export const DEFAULT_QEMU_USER = "vmlet-qemu";
/** util-linux prlimit: sets QEMU's core limit to 0, then execs it (the same pid). */
const PRLIMIT = "prlimit";

/** The VM launcher `vmlet serve` runs: one QEMU per container. */
export class QemuLauncher implements VmLauncher<VmRecord> {
  private readonly qemuBinary: string;
  private readonly qemuImgBinary: string;
  private readonly log: VmLog;
  private readonly options: QemuLauncherOptions;
  private readonly confinement: QemuConfinement | undefined;

  constructor(options: QemuLauncherOptions = {}) {
    this.options = options;
    this.confinement =
      options.confinement === null
        ? undefined
        : (options.confinement ?? { user: DEFAULT_QEMU_USER });
    this.qemuBinary = options.qemuBinary ?? "qemu-system-x86_64";
    this.qemuImgBinary = options.qemuImgBinary ?? "qemu-img";
    this.log = options.log ?? silentLog;
  }

  /** Creates the overlay and the seed, starts QEMU detached, connects QMP and the console. */
  async start(spec: VmSpec): Promise<QemuVm> {
    const paths = vmPaths(spec.dir);
    const accel = resolveAccel(spec.accel, this.options.hasKvm);
    const command = buildQemuArgv(spec, paths, accel, this.confinement);

    const madeDir = await fs.promises.mkdir(spec.dir, { recursive: true, mode: 0o700 });
    // What an earlier start that never returned left: its QEMU (found by the pidfile,
    // written before the record could be) and its files.
    await killStrayQemu(paths);
    await removeVmFiles(paths);
    let child: ChildProcess | undefined;
    let exit: Promise<ChildExit> | undefined;
    let qmp: QmpClient | undefined;
    let step = "create overlay";
    try {
      await this.createOverlay(spec, paths.overlay);
      step = "write cloud-init seed";
      await writeSeedIso(paths.seed, buildSeedFiles(spec.cloudInit, spec.taps));

      step = "spawn QEMU";
      // A core of QEMU holds guest RAM, Secrets included: none is ever written.
      const started = this.confinement
        ? spawnDetached(
            PRLIMIT,
            ["--core=0", "--", this.qemuBinary, ...command.args],
            command.extraFds,
            paths.qemuLog,
          )
        : spawnDetached(this.qemuBinary, command.args, command.extraFds, paths.qemuLog);
      child = started.child;
      exit = started.exit;
      step = "wait for QMP";
      await waitForSocket(paths.qmpSocket, started.exit, this.options.startTimeoutMs ?? 10_000);
      qmp = await this.connectQmp(paths.qmpSocket);
      const pid = child.pid!;
      const stat = await readProcStat(pid);
      if (!stat) throw new Error(`QEMU (pid ${pid}) is gone`);

      const record: VmRecord = {
        version: 1,
        id: spec.id,
        dir: spec.dir,
        pid,
        pidStartTime: stat.startTime,
        startedAt: new Date().toISOString(),
        accel,
        qmpSocket: paths.qmpSocket,
        consoleSocket: paths.consoleSocket,
        guestAgentSocket: paths.guestAgentSocket,
        consoleRaw: paths.consoleRaw,
        consoleOffsetFile: paths.consoleOffset,
        logPath: spec.logPath,
        overlayPath: paths.overlay,
        seedPath: paths.seed,
        qemuLogPath: paths.qemuLog,
        pidFile: paths.pidFile,
      };
      step = "attach";
      const handle = await RunningVm.attach(
        record,
        qmp,
        { kind: "child", child, exit: started.exit },
        this.watchOptions(),
      );
      this.log.info({ vm: spec.id, pid, accel, taps: spec.taps.map((t) => t.tap) }, "vm started");
      return handle;
    } catch (error) {
      qmp?.close();
      // QEMU may have created its QMP socket and then failed on a later option.
      const ended = exit && (await Promise.race([exit, sleep(200, undefined)]));
      if (child?.pid !== undefined && exit && !ended) {
        try {
          process.kill(child.pid, "SIGKILL");
        } catch {
          // Already gone.
        }
        await exit;
      }
      const qemuSays = await qemuLogTail(paths.qemuLog);
      await removeVmFiles(paths).catch(() => {});
      if (madeDir !== undefined) await fs.promises.rmdir(spec.dir).catch(() => {});
      const what =
        ended && !ended.error
          ? `QEMU exited (${ended.signal ?? `code ${ended.code}`})${qemuSays ? `: ${qemuSays}` : ""}`
          : `${errorMessage(error)}${qemuSays ? ` (QEMU: ${qemuSays})` : ""}`;
      const wrapped = new VmError(spec.id, step, `${what}; removed its files`, { cause: error });
      this.log.error({ vm: spec.id, err: wrapped.message }, "vm start failed");
      throw wrapped;
    }
  }

  /**
   * Finds a VM started by an earlier vmlet and watches it again: reconnects QMP and the
   * console. Undefined when the process is gone (or its PID now belongs to another).
   */
  async adopt(record: VmRecord): Promise<QemuVm | undefined> {
    if (record.version !== 1) {
      throw new VmError(record.id, "adopt", `record version ${record.version}; this vmlet reads 1`);
    }
    // A QEMU that never answers must not hold up vmlet's start: past the deadline the
    // caller gets an error, and a handle that comes later is let go (the VM runs on).
    const timeoutMs = this.options.adoptTimeoutMs ?? ADOPT_TIMEOUT_MS;
    const adopting = this.adoptNow(record);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<"late">((resolve) => {
      timer = setTimeout(() => resolve("late"), timeoutMs);
    });
    const first = await Promise.race([adopting, late]).finally(() => clearTimeout(timer));
    if (first !== "late") return first;
    void adopting.then(
      (handle) => handle?.detach(),
      () => {},
    );
    throw new VmError(
      record.id,
      "adopt",
      `QEMU (pid ${record.pid}) not adopted within ${timeoutMs} ms`,
    );
  }

  private async adoptNow(record: VmRecord): Promise<QemuVm | undefined> {
    if (!(await this.isOurQemu(record))) return undefined;
    let qmp: QmpClient;
    try {
      qmp = await this.connectQmp(record.qmpSocket);
    } catch (error) {
      if (!(await this.isOurQemu(record))) return undefined;
      throw new VmError(record.id, "adopt: connect QMP", errorMessage(error), { cause: error });
    }
    let handle: RunningVm;
    try {
      handle = await RunningVm.attach(record, qmp, { kind: "adopted" }, this.watchOptions());
    } catch (error) {
      qmp.close();
      throw new VmError(record.id, "adopt: attach", errorMessage(error), { cause: error });
    }
    this.log.info({ vm: record.id, pid: record.pid }, "vm adopted");
    return handle;
  }

  /**
   * Kills a QEMU whose start was cut short by a vmlet crash: it has no record to adopt
   * it by, only the pidfile in its VM dir. True if there was one.
   */
  discard(dir: string): Promise<boolean> {
    return killQemuOfDir(dir);
  }

  /**
   * Kills the VM of a record without QMP (one that could not be adopted): by its pid,
   * and only while that pid is still the recorded QEMU. True if it was running.
   */
  async killRecorded(record: VmRecord): Promise<boolean> {
    if (!(await this.isOurQemu(record))) return false;
    // SIGKILL cannot be refused, but a process in uninterruptible sleep dies late.
    const alive = () => isSameLiveProcess(record.pid, record.pidStartTime);
    const outcome = await killAndWait(record.pid, alive, KILL_WAIT_MS);
    if (outcome === "no-such-process") return false;
    if (outcome === "still-alive") {
      throw new VmError(
        record.id,
        "kill",
        `QEMU (pid ${record.pid}) still alive ${KILL_WAIT_MS} ms after SIGKILL`,
      );
    }
    this.log.info({ vm: record.id, pid: record.pid }, "vm killed by its pid (not adopted)");
    return true;
  }

  private async connectQmp(socket: string): Promise<QmpClient> {
    const timeoutMs = this.options.qmpTimeoutMs;
    const qmp = await QmpClient.connect(
      socket,
      timeoutMs === undefined ? {} : { timeoutMs, commandTimeoutMs: timeoutMs },
    );
    let reported = false;
    qmp.on("malformed", (what) => {
      // Counted always; logged once per connection, so a flood cannot flood the log.
      if (reported) return;
      reported = true;
      this.log.warn({ socket, err: what }, "QMP: malformed message dropped");
    });
    return qmp;
  }

  private async isOurQemu(record: VmRecord): Promise<boolean> {
    if (!(await isSameLiveProcess(record.pid, record.pidStartTime))) return false;
    const cmdline = await fs.promises
      .readFile(`/proc/${record.pid}/cmdline`, "utf8")
      .catch(() => "");
    return cmdline.includes(record.qmpSocket);
  }

  private watchOptions(): WatchOptions {
    return {
      log: this.log,
      maxLogLineBytes: this.options.maxLogLineBytes,
      partialFlushMs: this.options.partialFlushMs,
      pollMs: this.options.pollMs ?? 1000,
    };
  }

  private async createOverlay(spec: VmSpec, overlay: string): Promise<void> {
    const base = path.resolve(spec.baseImage.path);
    try {
      await execFileAsync(this.qemuImgBinary, [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        spec.baseImage.format,
        "-b",
        base,
        overlay,
      ]);
    } catch (error) {
      const stderr = (error as { stderr?: string }).stderr?.trim().replaceAll("\n", " ");
      throw new Error(`qemu-img create ${overlay} on ${base}: ${stderr || errorMessage(error)}`, {
        cause: error,
      });
    }
  }
}

/** The launcher `vmlet serve` runs, logging to its logger. */
export function createVmLauncher(options: {
  logger: VmLog;
  /** null: QEMU unconfined (debugging); default: confined as user vmlet-qemu. */
  confinement?: QemuConfinement | null;
}): QemuLauncher {
  return new QemuLauncher({ log: options.logger, confinement: options.confinement });
}

function spawnDetached(
  binary: string,
  args: string[],
  extraFds: number[],
  logPath: string,
): { child: ChildProcess; exit: Promise<ChildExit> } {
  const logFd = fs.openSync(logPath, "a", 0o600);
  try {
    // detached: setsid(), so QEMU is in its own session and outlives vmlet.
    const child = spawn(binary, args, {
      detached: true,
      stdio: ["ignore", logFd, logFd, ...extraFds],
    });
    const exit = new Promise<ChildExit>((resolve) => {
      child.once("exit", (code, signal) => resolve({ code, signal }));
      child.once("error", (error) => resolve({ code: null, signal: null, error }));
    });
    return { child, exit };
  } finally {
    fs.closeSync(logFd);
  }
}

async function waitForSocket(
  socketPath: string,
  exit: Promise<ChildExit>,
  timeoutMs: number,
): Promise<void> {
  let ended: ChildExit | undefined;
  void exit.then((e) => {
    ended = e;
  });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (ended) {
      if (ended.error) throw ended.error;
      throw new Error(
        `QEMU exited (${ended.signal ?? `code ${ended.code}`}) before opening ${socketPath}`,
      );
    }
    const stat = await fs.promises.stat(socketPath).catch(() => undefined);
    if (stat?.isSocket()) return;
    if (Date.now() > deadline) throw new Error(`no QMP socket ${socketPath} after ${timeoutMs} ms`);
    await sleep(10);
  }
}
