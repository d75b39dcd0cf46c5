// Starts QEMU for a container, or finds it again after a vmlet restart, and watches it
// until it ends. QEMU runs in its own session, so it outlives vmlet; everything needed
// to find it again is in the VmRecord and the files of its state dir.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { resolveAccel } from "./accel";
import { buildQemuArgv, type VmPaths, vmPaths } from "./argv";
import { ConsoleTailer } from "./console-tail";
import { CriLogWriter } from "./cri-log";
import { errorMessage, VmError } from "./errors";
import { GuestAgentUnavailableError, type GuestExecResult, guestExec } from "./guest-agent";
import { isSameLiveProcess, readProcStat, readRssBytes } from "./proc";
import { QmpClient, type QmpEvent } from "./qmp";
import { buildSeedFiles, writeSeedIso } from "./seed";
import type { QemuConfinement, VmExit, VmHandle, VmLog, VmRecord, VmSpec, VmStats } from "./types";

const execFileAsync = promisify(execFile);

export interface VmLauncherOptions {
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

const silentLog: VmLog = { info() {}, warn() {}, error() {} };

export class VmLauncher {
  private readonly qemuBinary: string;
  private readonly qemuImgBinary: string;
  private readonly log: VmLog;
  private readonly options: VmLauncherOptions;
  private readonly confinement: QemuConfinement | undefined;

  constructor(options: VmLauncherOptions = {}) {
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
  async start(spec: VmSpec): Promise<VmHandle> {
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
      const ended = exit && (await Promise.race([exit, sleep(200).then(() => undefined)]));
      if (child?.pid !== undefined && exit && !ended) {
        try {
          process.kill(child.pid, "SIGKILL");
        } catch {
          // Already gone.
        }
        await exit;
      }
      const qemuSays = await tail(paths.qemuLog);
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
  async adopt(record: VmRecord): Promise<VmHandle | undefined> {
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

  private async adoptNow(record: VmRecord): Promise<VmHandle | undefined> {
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
   * Kills the VM of a record without QMP (one that could not be adopted): by its pid,
   * and only while that pid is still the recorded QEMU. True if it was running.
   */
  async killRecorded(record: VmRecord): Promise<boolean> {
    if (!(await this.isOurQemu(record))) return false;
    try {
      process.kill(record.pid, "SIGKILL");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ESRCH") return false;
      throw error;
    }
    // SIGKILL cannot be refused, but a process in uninterruptible sleep dies late.
    const deadline = Date.now() + KILL_WAIT_MS;
    while (await isSameLiveProcess(record.pid, record.pidStartTime)) {
      if (Date.now() > deadline) {
        throw new VmError(
          record.id,
          "kill",
          `QEMU (pid ${record.pid}) still alive ${KILL_WAIT_MS} ms after SIGKILL`,
        );
      }
      await sleep(20);
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
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    return false;
  }
  for (let i = 0; i < 250; i++) {
    const stat = await readProcStat(pid);
    if (!stat || stat.state === "Z") return true;
    await sleep(20);
  }
  return true;
}

interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  error?: Error;
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

/** The last lines of QEMU's own stderr, for error messages. */
async function tail(file: string, bytes = 2000): Promise<string> {
  const text = await fs.promises.readFile(file, "utf8").catch(() => "");
  return text.slice(-bytes).trim().split("\n").slice(-5).join(" | ");
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface WatchOptions {
  log: VmLog;
  maxLogLineBytes: number | undefined;
  partialFlushMs: number | undefined;
  pollMs: number;
}

type Origin =
  | { kind: "child"; child: ChildProcess; exit: Promise<ChildExit> }
  | { kind: "adopted" };

/** A QEMU being watched: its exit, its QMP events, its console. */
class RunningVm implements VmHandle {
  readonly exited: Promise<VmExit>;
  private resolveExit!: (exit: VmExit) => void;
  private done = false;
  private detached = false;
  private guestShutdown = false;
  /** QEMU reported SHUTDOWN: it is quitting, and QMP closes as it does. */
  private shuttingDown = false;
  private killedByUs = false;
  private pollTimer: NodeJS.Timeout | undefined;
  private tailer: ConsoleTailer | undefined;

  private constructor(
    readonly record: VmRecord,
    private readonly qmp: QmpClient,
    private readonly origin: Origin,
    private readonly writer: CriLogWriter,
    private readonly options: WatchOptions,
  ) {
    this.exited = new Promise((resolve) => {
      this.resolveExit = resolve;
    });
  }

  static async attach(
    record: VmRecord,
    qmp: QmpClient,
    origin: Origin,
    options: WatchOptions,
  ): Promise<RunningVm> {
    const writer = await CriLogWriter.open(record.logPath);
    const vm = new RunningVm(record, qmp, origin, writer, options);
    vm.tailer = await ConsoleTailer.start({
      rawPath: record.consoleRaw,
      offsetPath: record.consoleOffsetFile,
      writer,
      maxLineBytes: options.maxLogLineBytes,
      partialFlushMs: options.partialFlushMs,
      onError: (error) => options.log.warn({ vm: record.id, err: error.message }, "console log"),
    });
    qmp.on("event", (event) => vm.onQmpEvent(event));
    if (origin.kind === "child") {
      void origin.exit.then((e) => vm.finish(childExit(e, vm.guestShutdown)));
    } else {
      qmp.on("close", () => vm.watchExit());
      // Not unref'd: like the child of a started VM, a watched VM keeps vmlet's loop alive.
      vm.pollTimer = setInterval(() => vm.checkAlive(), options.pollMs);
    }
    // A guest that shut down before QMP was connected (or while vmlet was away) left
    // QEMU stopped in "shutdown" (-no-shutdown): finish what the event would have done.
    const status = await qmp.execute<{ status: string }>("query-status").catch(() => undefined);
    if (status?.status === "shutdown") {
      vm.guestShutdown = true;
      vm.shuttingDown = true;
      vm.quit();
    }
    return vm;
  }

  get pid(): number {
    return this.record.pid;
  }

  async stop(timeoutMs: number): Promise<void> {
    this.assertAttached("stop");
    if (this.done) return;
    // The grace period runs from now: a QEMU that never answers the button is still killed.
    let timer: NodeJS.Timeout | undefined;
    let giveUp!: (why: string) => void;
    const gaveUp = new Promise<string>((resolve) => {
      giveUp = resolve;
      timer = setTimeout(() => resolve("no shutdown after ACPI power button"), timeoutMs);
    });
    this.qmp.execute("system_powerdown", undefined, timeoutMs).catch((error: unknown) => {
      // The button was not pressed: waiting out the grace period would only delay the kill
      // (unless QEMU is quitting already, which closes QMP).
      if (!this.shuttingDown) giveUp(`system_powerdown failed: ${errorMessage(error)}`);
    });
    const why = await Promise.race([this.exited.then(() => undefined), gaveUp]);
    clearTimeout(timer);
    if (why !== undefined) {
      this.options.log.info({ vm: this.record.id, timeoutMs }, `${why}: killing`);
      await this.kill();
    }
  }

  async kill(): Promise<void> {
    this.assertAttached("kill");
    if (this.done) return;
    if (await isSameLiveProcess(this.record.pid, this.record.pidStartTime)) {
      this.killedByUs = true;
      try {
        process.kill(this.record.pid, "SIGKILL");
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw error;
      }
    }
    if (this.origin.kind === "adopted") {
      while (!this.done && (await isSameLiveProcess(this.record.pid, this.record.pidStartTime))) {
        await sleep(20);
      }
      await this.checkAlive();
    }
    await this.exited;
  }

  async stats(): Promise<VmStats> {
    const overlay = await fs.promises.stat(this.record.overlayPath).catch(() => undefined);
    const diskBytes = overlay ? overlay.blocks * 512 : 0; // allocated, not apparent size
    const stat = await readProcStat(this.record.pid);
    if (!stat || stat.startTime !== this.record.pidStartTime || stat.state === "Z") {
      return { cpuNanos: 0n, memoryBytes: 0, diskBytes };
    }
    return {
      cpuNanos: stat.cpuNanos,
      memoryBytes: await readRssBytes(this.record.pid),
      diskBytes,
    };
  }

  async reopenLog(): Promise<void> {
    this.assertAttached("reopen log");
    if (this.done) return;
    await this.writer.reopen();
  }

  get channels(): { consoleSocket: string; guestAgentSocket?: string } {
    return {
      consoleSocket: this.record.consoleSocket,
      ...(this.record.guestAgentSocket ? { guestAgentSocket: this.record.guestAgentSocket } : {}),
    };
  }

  async exec(argv: string[], timeoutMs: number, signal?: AbortSignal): Promise<GuestExecResult> {
    this.assertAttached("exec");
    if (this.done) throw new GuestAgentUnavailableError("the VM has exited");
    const socket = this.record.guestAgentSocket;
    if (!socket) {
      throw new GuestAgentUnavailableError(
        "the VM was started without a guest agent port (by an older vmlet)",
      );
    }
    return guestExec(socket, argv, { timeoutMs, ...(signal ? { signal } : {}) });
  }

  async detach(): Promise<void> {
    if (this.detached || this.done) return;
    this.detached = true;
    if (this.pollTimer) clearInterval(this.pollTimer);
    if (this.origin.kind === "child") this.origin.child.unref();
    await this.tailer?.stop(false);
    this.qmp.removeAllListeners();
    this.qmp.close();
    await this.writer.close();
  }

  async cleanup(): Promise<void> {
    if (!this.done && !this.detached) await this.kill();
    await removeVmState(this.record);
  }

  private assertAttached(step: string): void {
    if (this.detached)
      throw new VmError(this.record.id, step, "handle detached; adopt the VM again");
  }

  private onQmpEvent(event: QmpEvent): void {
    if (event.event !== "SHUTDOWN") return;
    this.shuttingDown = true;
    if (event.data.guest === true) this.guestShutdown = true;
    this.quit();
  }

  /** After a shutdown QEMU only waits (-no-shutdown); ending it makes the exit. */
  private quit(): void {
    this.qmp.execute("quit").catch(() => {
      // The connection closes as QEMU quits; that is the expected answer.
    });
  }

  /** QMP closed: QEMU is ending. Look often until the process is gone. */
  private async watchExit(): Promise<void> {
    const deadline = Date.now() + 5000;
    while (!this.done && !this.detached && Date.now() < deadline) {
      await this.checkAlive();
      await sleep(20);
    }
  }

  /** For an adopted QEMU: finishes when the process is gone (no exit status to read). */
  private async checkAlive(): Promise<void> {
    if (this.done || this.detached) return;
    if (await isSameLiveProcess(this.record.pid, this.record.pidStartTime)) return;
    await this.finish(this.adoptedExit());
  }

  private adoptedExit(): Omit<VmExit, "finishedAt"> {
    if (this.guestShutdown)
      return { exitCode: 0, reason: "Completed", message: "the guest shut down" };
    if (this.killedByUs) return { exitCode: 137, reason: "Killed", message: "killed by vmlet" };
    return {
      exitCode: 137,
      reason: "Killed",
      message:
        "QEMU ended without a guest shutdown; it was not vmlet's child, so its exit status is unknown",
    };
  }

  private async finish(exit: Omit<VmExit, "finishedAt">): Promise<void> {
    if (this.done || this.detached) return;
    this.done = true;
    const finishedAt = new Date();
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.qmp.close();
    try {
      await this.tailer?.stop(true);
    } catch (error) {
      this.options.log.warn(
        { vm: this.record.id, err: errorMessage(error) },
        "console log: final drain",
      );
    }
    await this.writer.close().catch(() => {});
    let message = exit.message;
    if (exit.reason === "Error") {
      const qemuSays = await tail(this.record.qemuLogPath);
      if (qemuSays) message = `${message}: ${qemuSays}`;
    }
    this.options.log.info({ vm: this.record.id, pid: this.record.pid, ...exit }, "vm exited");
    this.resolveExit({ ...exit, message, finishedAt });
  }
}

function childExit(e: ChildExit, guestShutdown: boolean): Omit<VmExit, "finishedAt"> {
  if (e.error) return { exitCode: 255, reason: "Error", message: e.error.message };
  if (e.signal) {
    const exitCode = 128 + (os.constants.signals[e.signal] ?? 0);
    return {
      exitCode,
      reason: e.signal === "SIGKILL" ? "Killed" : "Error",
      message: `QEMU ended by ${e.signal}`,
    };
  }
  const code = e.code ?? 255;
  if (code === 0) {
    return {
      exitCode: 0,
      reason: "Completed",
      message: guestShutdown ? "the guest shut down" : "QEMU quit",
    };
  }
  return { exitCode: code, reason: "Error", message: `QEMU exited with code ${code}` };
}
