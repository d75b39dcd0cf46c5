// A small QMP client: connect to QEMU's monitor socket, read the greeting, negotiate
// capabilities, then run commands (matched to replies by id) and receive events.
import { EventEmitter } from "node:events";
import net from "node:net";
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

/** Longest line QEMU is allowed to send; a monitor that sends more is cut off. */
const MAX_LINE = 1 << 20;

export interface QmpClientEvents {
  event: [QmpEvent];
  close: [Error | undefined];
}

export class QmpClient extends EventEmitter<QmpClientEvents> {
  private readonly pending = new Map<string, Pending>();
  private nextId = 1;
  private buffer = "";
  private closedWith: Error | undefined | null = null;

  private constructor(
    readonly socketPath: string,
    private readonly socket: net.Socket,
  ) {
    super();
  }

  /** Connects and negotiates; rejects if QEMU does not greet within timeoutMs. */
  static async connect(socketPath: string, timeoutMs = 5000): Promise<QmpClient> {
    const socket = net.createConnection(socketPath);
    socket.setEncoding("utf8");
    const client = new QmpClient(socketPath, socket);
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
      await client.execute("qmp_capabilities");
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

  /** Runs a command; resolves with its "return" value, rejects with its "error". */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closedWith !== null) {
      return Promise.reject(new QmpError(`QMP ${this.socketPath}: ${command}: connection closed`));
    }
    const id = `vmlet-${this.nextId++}`;
    const message =
      args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, {
        resolve: (value) => resolve(value as T),
        reject: (error) =>
          reject(
            new QmpError(
              `QMP ${this.socketPath}: ${command}: ${error.message}`,
              (error as QmpError).errorClass,
              { cause: error },
            ),
          ),
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
      if (line) this.onMessage(line);
    }
    if (this.buffer.length > MAX_LINE) {
      this.socket.destroy(
        new QmpError(`QMP ${this.socketPath}: line longer than ${MAX_LINE} bytes`),
      );
    }
  }

  private onMessage(line: string): void {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(line) as Record<string, unknown>;
    } catch {
      this.socket.destroy(new QmpError(`QMP ${this.socketPath}: not JSON: ${line.slice(0, 200)}`));
      return;
    }
    if ("QMP" in message) {
      this.greeted?.();
      this.greeted = undefined;
      return;
    }
    if (typeof message.event === "string") {
      this.emit("event", {
        event: message.event,
        data: (message.data as Record<string, unknown> | undefined) ?? {},
        timestamp: message.timestamp as QmpEvent["timestamp"],
      });
      return;
    }
    const id = typeof message.id === "string" ? message.id : undefined;
    const waiter = id === undefined ? undefined : this.pending.get(id);
    if (!waiter || id === undefined) return;
    this.pending.delete(id);
    if ("error" in message) {
      const error = message.error as { class?: string; desc?: string };
      waiter.reject(new QmpError(error.desc ?? "error", error.class));
    } else {
      waiter.resolve(message.return);
    }
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
