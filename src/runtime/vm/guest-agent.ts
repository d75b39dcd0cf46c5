// Runs a command in the guest through the QEMU guest agent (qemu-ga, on the VM's
// virtio-serial port org.qemu.guest_agent.0): what CRI's ExecSync does for a VM whose
// image runs qemu-guest-agent, as cloud images do. Protocol facts from QEMU's
// qga/qapi-schema.json: guest-sync-delimited answers after a 0xFF byte, which marks
// where stale output from an earlier client ends; guest-exec starts a process and
// returns its pid; guest-exec-status reports it, with base64 output once it exited.
// Over 400 lines: ExecSync's and streaming exec's loops share the framing and the
// per-VM channel lock, which must stay one module to stay one lock.
import net from "node:net";
import { isObject } from "../../util/is-object";
import { KeyedLock } from "../../util/keyed-lock";

export interface GuestExecResult {
  exitCode: number;
  stdout: Buffer;
  stderr: Buffer;
}

/** No agent answered: the socket is missing, or nothing in the guest reads the port. */
export class GuestAgentUnavailableError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "GuestAgentUnavailableError";
  }
}

/** The command ran past its time limit; it may still be running in the guest. */
export class GuestExecTimeoutError extends Error {
  constructor(readonly timeoutMs: number) {
    super(`the command did not exit within ${timeoutMs / 1000} s (it may still run in the guest)`);
    this.name = "GuestExecTimeoutError";
  }
}

/** The caller gave up (the CRI call was cancelled or ran out of time); the command may still run. */
export class GuestExecCancelledError extends Error {
  constructor(reason: string) {
    super(`${reason} (the command may still run in the guest)`);
    this.name = "GuestExecCancelledError";
  }
}

/** The agent sent something that is not its protocol: a broken or hostile guest. */
export class GuestAgentProtocolError extends Error {
  constructor(message: string) {
    super(`guest agent protocol: ${message}`);
    this.name = "GuestAgentProtocolError";
  }
}

/** The agent answered with an error (e.g. the program does not exist in the guest). */
export class GuestAgentCommandError extends Error {
  constructor(
    readonly command: string,
    readonly agentClass: string,
    readonly description: string,
  ) {
    super(`guest agent ${command}: ${description}`);
    this.name = "GuestAgentCommandError";
  }
}

export interface GuestExecOptions {
  /** 0 = no limit of its own: `signal` must then end it. */
  timeoutMs: number;
  /** Aborting it ends the call at once, and frees the agent's channel for the next. */
  signal?: AbortSignal;
  /** How long the agent has to answer the first sync; a guest without one answers never. */
  agentTimeoutMs?: number;
  /** Between guest-exec-status polls. */
  pollMs?: number;
}

// The agent's chardev takes one client at a time: calls for one VM wait their turn.
const sockets = new KeyedLock();

export function guestExec(
  socketPath: string,
  argv: string[],
  options: GuestExecOptions,
): Promise<GuestExecResult> {
  if (argv.length === 0 || argv[0] === "") {
    return Promise.reject(new Error("guest exec: an empty command"));
  }
  const signal = options.signal;
  return sockets.run(socketPath, async () => {
    const cancelled = () => new GuestExecCancelledError(abortReason(signal));
    if (signal?.aborted) throw cancelled();
    const agentTimeoutMs = options.agentTimeoutMs ?? 5000;
    const agent = await AgentConnection.open(socketPath, agentTimeoutMs);
    const onAbort = () => agent.abort(cancelled());
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      if (signal?.aborted) throw cancelled();
      const deadline = options.timeoutMs > 0 ? Date.now() + options.timeoutMs : Infinity;
      const started = await agent.execute(
        "guest-exec",
        { path: argv[0], arg: argv.slice(1), "capture-output": true },
        agentTimeoutMs,
      );
      const pid = isObject(started) ? started.pid : undefined;
      if (typeof pid !== "number" || !Number.isInteger(pid)) {
        throw new GuestAgentProtocolError(`guest-exec gave pid ${JSON.stringify(pid)}`);
      }
      for (;;) {
        const status = (await agent.execute(
          "guest-exec-status",
          { pid },
          agentTimeoutMs,
        )) as ExecStatus;
        if (!isObject(status) || typeof status.exited !== "boolean") {
          throw new GuestAgentProtocolError("guest-exec-status without 'exited'");
        }
        if (status.exited) return resultOf(status);
        if (Date.now() >= deadline) throw new GuestExecTimeoutError(options.timeoutMs);
        await new Promise((r) => setTimeout(r, options.pollMs ?? 50));
        if (signal?.aborted) throw cancelled();
      }
    } catch (error) {
      // Whatever failed while the call was being cancelled, the cancellation is the news.
      if (signal?.aborted && !(error instanceof GuestExecCancelledError)) throw cancelled();
      throw error;
    } finally {
      signal?.removeEventListener("abort", onAbort);
      await agent.close();
    }
  });
}

export interface GuestExecStreamOptions {
  /** Bytes for the command's stdin (guest-exec input-data); none: stdin is empty. */
  input?: Buffer;
  /** Aborting it stops waiting (the command may go on in the guest). */
  signal?: AbortSignal;
  agentTimeoutMs?: number;
  /** First interval between guest-exec-status polls; it doubles up to `maxPollMs`. */
  pollMs?: number;
  maxPollMs?: number;
}

/**
 * guestExec for a streaming exec, which may run for hours: the agent's channel is taken
 * for each agent command (start, then every status poll) and given back in between, so
 * exec probes and other execs of the VM go on meanwhile. No time limit of its own.
 */
export async function guestExecStream(
  socketPath: string,
  argv: string[],
  options: GuestExecStreamOptions = {},
): Promise<GuestExecResult> {
  if (argv.length === 0 || argv[0] === "") throw new Error("guest exec: an empty command");
  const signal = options.signal;
  const agentTimeoutMs = options.agentTimeoutMs ?? 5000;
  const cancelled = () => new GuestExecCancelledError(abortReason(signal));
  const once = (command: string, args: object) =>
    sockets.run(socketPath, async () => {
      if (signal?.aborted) throw cancelled();
      const agent = await AgentConnection.open(socketPath, agentTimeoutMs);
      const onAbort = () => agent.abort(cancelled());
      signal?.addEventListener("abort", onAbort, { once: true });
      try {
        return await agent.execute(command, args, agentTimeoutMs);
      } finally {
        signal?.removeEventListener("abort", onAbort);
        await agent.close();
      }
    });
  const started = await once("guest-exec", {
    path: argv[0],
    arg: argv.slice(1),
    "capture-output": true,
    ...(options.input ? { "input-data": options.input.toString("base64") } : {}),
  });
  const pid = isObject(started) ? started.pid : undefined;
  if (typeof pid !== "number" || !Number.isInteger(pid)) {
    throw new GuestAgentProtocolError(`guest-exec gave pid ${JSON.stringify(pid)}`);
  }
  let pollMs = options.pollMs ?? 20;
  for (;;) {
    const status = (await once("guest-exec-status", { pid })) as ExecStatus;
    if (!isObject(status) || typeof status.exited !== "boolean") {
      throw new GuestAgentProtocolError("guest-exec-status without 'exited'");
    }
    if (status.exited) return resultOf(status);
    await new Promise((r) => setTimeout(r, pollMs));
    pollMs = Math.min(pollMs * 2, options.maxPollMs ?? 250);
    if (signal?.aborted) throw cancelled();
  }
}

/** As the guest sent it: a guest is untrusted, so every field is checked before use. */
interface ExecStatus {
  exited?: unknown;
  exitcode?: unknown;
  signal?: unknown;
  "out-data"?: unknown;
  "err-data"?: unknown;
}

/**
 * The most the agent may send in one reply: guest-exec-status carries the output,
 * which qemu-ga caps at 16 MiB a stream, base64-encoded.
 */
const MAX_REPLY_BYTES = 48 * 1024 * 1024;

/** How long a closing session waits for the agent to hang up before it resets it. */
const CLOSE_GRACE_MS = 500;

function resultOf(status: ExecStatus): GuestExecResult {
  const int = (v: unknown) => (Number.isInteger(v) ? (v as number) : undefined);
  const data = (v: unknown) => Buffer.from(typeof v === "string" ? v : "", "base64");
  const signal = int(status.signal);
  return {
    // Killed by a signal: the shell's convention, as runc reports it too.
    exitCode: int(status.exitcode) ?? (signal !== undefined ? 128 + signal : -1),
    stdout: data(status["out-data"]),
    stderr: data(status["err-data"]),
  };
}

/** One client session on the agent's socket: a sync, then one command at a time. */
class AgentConnection {
  private readonly received = new ByteQueue();
  private waiting: ((result: undefined | Error) => void) | undefined;
  private failure: Error | undefined;
  private closed: Promise<void> | undefined;

  private constructor(private readonly socket: net.Socket) {
    socket.on("data", (chunk: Buffer) => {
      if (this.closed) return; // a reply nobody waits for any more
      this.received.push(chunk);
      if (this.received.size > MAX_REPLY_BYTES) {
        socket.destroy(new GuestAgentProtocolError(`a reply over ${MAX_REPLY_BYTES} bytes`));
        return;
      }
      this.deliver();
    });
    const fail = (error: Error) => {
      this.failure ??= error;
      this.waiting?.(this.failure);
      this.waiting = undefined;
    };
    socket.on("error", fail);
    socket.on("close", () => fail(new Error("the agent's socket closed")));
  }

  static async open(socketPath: string, timeoutMs: number): Promise<AgentConnection> {
    const socket = net.connect(socketPath);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(
          new GuestAgentUnavailableError(`connect ${socketPath}: no answer in ${timeoutMs} ms`),
        );
      }, timeoutMs);
      socket.once("connect", () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once("error", (error) => {
        clearTimeout(timer);
        reject(new GuestAgentUnavailableError(`connect ${socketPath}: ${error.message}`));
      });
    });
    const agent = new AgentConnection(socket);
    try {
      await agent.sync(timeoutMs);
    } catch (error) {
      await agent.close();
      throw new GuestAgentUnavailableError(
        `no QEMU guest agent answered within ${timeoutMs / 1000} s (the image needs qemu-guest-agent running)`,
        { cause: error },
      );
    }
    return agent;
  }

  /**
   * Hangs up without a reset: half-closes, drops what the agent still sends, and resolves
   * once it hangs up too. Closing with its reply unread would reset the agent's socket,
   * and qemu-ga on a socket quits on that read error, leaving the VM with no agent.
   */
  close(): Promise<void> {
    this.closed ??= new Promise<void>((resolve) => {
      if (this.socket.destroyed) return resolve();
      const timer = setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS);
      this.socket.once("close", () => {
        clearTimeout(timer);
        resolve();
      });
      this.received.clear();
      this.socket.end();
    });
    return this.closed;
  }

  /** Fails whatever waits on the agent with `error` at once, and closes the channel. */
  abort(error: Error): void {
    this.failure ??= error;
    this.waiting?.(this.failure);
    this.waiting = undefined;
    void this.close();
  }

  /** One command; the agent answers each at once, so a silent agent is a hung guest. */
  async execute(command: string, args: object, timeoutMs: number): Promise<unknown> {
    this.socket.write(`${JSON.stringify({ execute: command, arguments: args })}\n`);
    let line: Buffer;
    try {
      line = await this.nextLine(timeoutMs);
    } catch (error) {
      throw new GuestAgentUnavailableError(
        `guest agent ${command}: no answer: ${(error as Error).message}`,
        { cause: error },
      );
    }
    const reply = parseReply(line) as { return?: unknown; error?: unknown };
    if (reply.error !== undefined) {
      const e = (reply.error ?? {}) as { class?: unknown; desc?: unknown };
      throw new GuestAgentCommandError(
        command,
        typeof e.class === "string" ? e.class : "GenericError",
        typeof e.desc === "string" ? e.desc : "failed",
      );
    }
    return reply.return;
  }

  /** guest-sync-delimited: everything up to its 0xFF is a previous client's leftovers. */
  private async sync(timeoutMs: number): Promise<void> {
    const id = Math.floor(Math.random() * 2 ** 31);
    this.socket.write(
      `${JSON.stringify({ execute: "guest-sync-delimited", arguments: { id } })}\n`,
    );
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const marker = this.received.indexOf(0xff);
      if (marker < 0) this.received.clear(); // a previous client's leftovers
      if (marker >= 0) {
        this.received.take(marker + 1);
        const line = await this.nextLine(deadline - Date.now());
        const reply = parseReply(line) as { return?: unknown };
        if (reply.return === id) return;
        continue;
      }
      await this.waitForData(deadline - Date.now());
    }
  }

  private async nextLine(timeoutMs: number): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const end = this.received.indexOfNewline();
      if (end >= 0) {
        const line = this.received.take(end + 1).subarray(0, end);
        if (line.toString("utf8").trim() !== "") return line;
        continue;
      }
      await this.waitForData(deadline - Date.now());
    }
  }

  private waitForData(timeoutMs: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (timeoutMs <= 0) return Promise.reject(new Error("timed out"));
    return new Promise((resolve, reject) => {
      const timer =
        timeoutMs === Infinity
          ? undefined
          : setTimeout(() => {
              this.waiting = undefined;
              reject(new Error("timed out"));
            }, timeoutMs);
      this.waiting = (result) => {
        clearTimeout(timer);
        if (result instanceof Error) reject(result);
        else resolve();
      };
    });
  }

  private deliver(): void {
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.(undefined);
  }
}

function parseReply(line: Buffer): object {
  let reply: unknown;
  try {
    reply = JSON.parse(line.toString("utf8"));
  } catch {
    throw new GuestAgentProtocolError(
      `not JSON: ${JSON.stringify(line.subarray(0, 80).toString())}`,
    );
  }
  if (!isObject(reply)) throw new GuestAgentProtocolError("a reply that is not a JSON object");
  return reply;
}

/**
 * Received bytes as a list of chunks: a reply of many chunks is joined once, when its
 * newline arrives, not on every chunk (which a guest could make quadratic).
 */
class ByteQueue {
  private chunks: Buffer[] = [];
  size = 0;
  /** Bytes at the front known to hold no newline. */
  private scanned = 0;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
  }

  clear(): void {
    this.chunks = [];
    this.size = 0;
    this.scanned = 0;
  }

  indexOf(byte: number): number {
    let offset = 0;
    for (const chunk of this.chunks) {
      const i = chunk.indexOf(byte);
      if (i >= 0) return offset + i;
      offset += chunk.length;
    }
    return -1;
  }

  indexOfNewline(): number {
    let offset = 0;
    for (const chunk of this.chunks) {
      if (offset + chunk.length > this.scanned) {
        const i = chunk.indexOf(0x0a, Math.max(0, this.scanned - offset));
        if (i >= 0) return offset + i;
      }
      offset += chunk.length;
    }
    this.scanned = this.size;
    return -1;
  }

  /** Removes and returns the first n bytes. */
  take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const head = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.size = rest.length;
    this.scanned = 0;
    return head;
  }
}

function abortReason(signal: AbortSignal | undefined): string {
  const reason: unknown = signal?.reason;
  if (reason instanceof Error && reason.name !== "AbortError") return reason.message;
  return typeof reason === "string" ? reason : "cancelled";
}
