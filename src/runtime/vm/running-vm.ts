// A QEMU being watched, started here or adopted after a restart: its exit (from the
// child's status, or from /proc and QMP for an adopted one), its QMP events, its console
// into the CRI log, its stats, and guest-agent exec.
import type { ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { errorMessage } from "../../util/errors";
import { ConsoleTailer } from "./console-tail";
import { CriLogWriter } from "./cri-log";
import { VmError } from "./errors";
import { GuestAgentUnavailableError, type GuestExecResult, guestExec } from "./guest-agent";
import { isSameLiveProcess, killAndWait, readProcStat, readRssBytes } from "./proc";
import type { QmpClient, QmpEvent } from "./qmp";
import type { QemuVm, VmExit, VmLog, VmRecord, VmStats } from "./types";
import { removeVmState } from "./vm-files";

/** QEMU's exit always says what ended it. */
type QemuExit = Required<VmExit>;

export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  error?: Error;
}

/** The last lines of QEMU's own stderr, for error messages. */
export async function qemuLogTail(file: string, bytes = 2000): Promise<string> {
  const text = await fs.promises.readFile(file, "utf8").catch(() => "");
  return text.slice(-bytes).trim().split("\n").slice(-5).join(" | ");
}

export interface WatchOptions {
  log: VmLog;
  maxLogLineBytes: number | undefined;
  partialFlushMs: number | undefined;
  pollMs: number;
}

type Origin =
  | { kind: "child"; child: ChildProcess; exit: Promise<ChildExit> }
  | { kind: "adopted" };

/** A QEMU being watched: its exit, its QMP events, its console. */
export class RunningVm implements QemuVm {
  readonly exited: Promise<QemuExit>;
  private resolveExit!: (exit: QemuExit) => void;
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
    const { pid, pidStartTime } = this.record;
    const alive = async () => !this.done && (await isSameLiveProcess(pid, pidStartTime));
    if (await alive()) {
      this.killedByUs = true;
      // A child's exit event says when it is gone; an adopted QEMU is watched by its pid.
      const watch = this.origin.kind === "adopted" ? alive : async () => false;
      await killAndWait(pid, watch, Number.POSITIVE_INFINITY);
    }
    if (this.origin.kind === "adopted") await this.checkAlive();
    await this.exited;
  }

  async stats(): Promise<Required<VmStats>> {
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

  private adoptedExit(): Omit<QemuExit, "finishedAt"> {
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

  private async finish(exit: Omit<QemuExit, "finishedAt">): Promise<void> {
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
      const qemuSays = await qemuLogTail(this.record.qemuLogPath);
      if (qemuSays) message = `${message}: ${qemuSays}`;
    }
    this.options.log.info({ vm: this.record.id, pid: this.record.pid, ...exit }, "vm exited");
    this.resolveExit({ ...exit, message, finishedAt });
  }
}

function childExit(e: ChildExit, guestShutdown: boolean): Omit<QemuExit, "finishedAt"> {
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
