// A small QMP client: connect to QEMU's monitor socket, read the greeting, negotiate
// capabilities, then run commands (matched to replies by id) and receive events.
import { EventEmitter } from "node:events";
import net from "node:net";
import { isObject } from "../../util/is-object";
import { QmpError } from "./errors";

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
}

/** Longest line QEMU is allowed to send; a longer one is skipped up to its newline. */
const MAX_LINE = 1 << 20;
/** How long QEMU has to greet and negotiate, and to answer each command. */
export const QMP_CONNECT_TIMEOUT_MS = 5000;
export const QMP_COMMAND_TIMEOUT_MS = 5000;

export interface QmpClientEvents {
  event: [QmpEvent];
  close: [Error | undefined];
  /** A line that is not QMP was dropped; the excerpt is for a log line. */
  malformed: [string];
}

export interface QmpConnectOptions {
  /** Greeting plus qmp_capabilities. */
  timeoutMs?: number;
  /** Each later command, unless execute() is given its own. */
  commandTimeoutMs?: number;
}

export class QmpClient extends EventEmitter<QmpClientEvents> {
  private readonly pending = new Map<string, Pending>();
  private nextId = 1;
  private buffer = "";
  /** Inside an over-long line: drop bytes until its newline. */
  private skipping = false;
  private closedWith: Error | undefined | null = null;
  /** Lines dropped because they were not QMP (QEMU is the guest's neighbour: untrusted). */
  malformed = 0;

  private constructor(
    readonly socketPath: string,
    private readonly socket: net.Socket,
    private readonly commandTimeoutMs: number,
  ) {
    super();
  }

  /** Connects and negotiates; rejects if QEMU has not done both within timeoutMs. */
  static async connect(socketPath: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? QMP_CONNECT_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    const socket = net.createConnection(socketPath);
    socket.setEncoding("utf8");
    const client = new QmpClient(
      socketPath,
      socket,
      options.commandTimeoutMs ?? QMP_COMMAND_TIMEOUT_MS,
    );
    const greeting = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new QmpError(`QMP ${socketPath}: no greeting within ${timeoutMs} ms`));
      }, timeoutMs);
      client.greeted = (error) => {
        clearTimeout(timer);
        if (error) reject(error);
        else resolve();
      };
    });
    socket.on("data", (chunk: string) => client.onData(chunk));
    socket.on("error", (error) => client.fail(error));
    socket.on("close", () => client.fail(undefined));
    try {
      await greeting;
      const left = Math.max(1, deadline - Date.now());
      await client.execute("qmp_capabilities", undefined, left).catch((error: unknown) => {
        // The deadline is the connect's: say so in its terms.
        if (error instanceof QmpError && /no answer within/.test(error.message)) {
          throw new QmpError(
            `QMP ${socketPath}: qmp_capabilities: no answer within ${timeoutMs} ms of connecting`,
          );
        }
        throw error;
      });
    } catch (error) {
      socket.destroy();
      throw error instanceof QmpError
        ? error
        : new QmpError(`QMP ${socketPath}: connect: ${String(error)}`, undefined, { cause: error });
    }
    return client;
  }

  get closed(): boolean {
    return this.closedWith !== null;
  }

  /**
   * Runs a command; resolves with its "return" value, rejects with its "error", or
   * with a QmpError once `timeoutMs` passes without an answer (a late one is dropped).
   */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    timeoutMs = this.commandTimeoutMs,
  ): Promise<T> {
    if (this.closedWith !== null) {
      return Promise.reject(new QmpError(`QMP ${this.socketPath}: ${command}: connection closed`));
    }
    const id = `vmlet-${this.nextId++}`;
    const message =
      args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new QmpError(`QMP ${this.socketPath}: ${command}: no answer within ${timeoutMs} ms`),
        );
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (value) => {
          clearTimeout(timer);
          resolve(value as T);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(
            new QmpError(
              `QMP ${this.socketPath}: ${command}: ${error.message}`,
              (error as QmpError).errorClass,
              { cause: error },
            ),
          );
        },
      });
      this.socket.write(`${JSON.stringify(message)}\n`);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private greeted: ((error?: Error) => void) | undefined;

  private onData(chunk: string): void {
    this.buffer += chunk;
    for (let nl = this.buffer.indexOf("\n"); nl >= 0; nl = this.buffer.indexOf("\n")) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (this.skipping) this.skipping = false;
      else if (nl > MAX_LINE) this.drop(`a line longer than ${MAX_LINE} bytes`);
      else if (line) this.onMessage(line);
    }
    if (this.buffer.length > MAX_LINE) {
      // Memory stays bounded: the rest of this line is dropped as it comes.
      if (!this.skipping) this.drop(`a line longer than ${MAX_LINE} bytes`);
      this.skipping = true;
      this.buffer = "";
    }
  }

  /** Never throws: whatever the monitor sends, a bad line is dropped and counted. */
  private onMessage(line: string): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      this.drop(`not JSON: ${line.slice(0, 200)}`);
      return;
    }
    if (!isObject(parsed)) {
      this.drop(`not a JSON object: ${line.slice(0, 200)}`);
      return;
    }
    const message = parsed;
    if ("QMP" in message) {
      this.greeted?.();
      this.greeted = undefined;
      return;
    }
    if (typeof message.event === "string") {
      this.emit("event", {
        event: message.event,
        data: isObject(message.data) ? message.data : {},
        timestamp: isObject(message.timestamp)
          ? (message.timestamp as QmpEvent["timestamp"])
          : { seconds: 0, microseconds: 0 },
      });
      return;
    }
    const isError = "error" in message;
    if (!isError && !("return" in message)) {
      this.drop(`not a greeting, event or reply: ${line.slice(0, 200)}`);
      return;
    }
    const error = isError && isObject(message.error) ? message.error : undefined;
    if (isError && !error)
      this.drop(`an error reply without an error object: ${line.slice(0, 200)}`);
    const id = typeof message.id === "string" ? message.id : undefined;
    const waiter = id === undefined ? undefined : this.pending.get(id);
    if (!waiter || id === undefined) return; // a reply after its deadline
    this.pending.delete(id);
    if (isError) {
      waiter.reject(
        new QmpError(
          typeof error?.desc === "string" ? error.desc : "error",
          typeof error?.class === "string" ? error.class : undefined,
        ),
      );
    } else {
      waiter.resolve(message.return);
    }
  }

  private drop(what: string): void {
    this.malformed++;
    this.emit("malformed", what);
  }

  private fail(error: Error | undefined): void {
    if (this.closedWith !== null) return;
    this.closedWith = error;
    const reason = new QmpError(`connection closed${error ? `: ${error.message}` : ""}`);
    this.greeted?.(
      new QmpError(`QMP ${this.socketPath}: closed before the greeting`, undefined, {
        cause: error,
      }),
    );
    this.greeted = undefined;
    for (const waiter of this.pending.values()) waiter.reject(reason);
    this.pending.clear();
    this.emit("close", error);
  }
}
