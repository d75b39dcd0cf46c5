// Attach to a VM's serial console: QEMU's console chardev is a socket server that takes
// one client and also appends everything to the file the CRI log is made from, so the
// log keeps its copy whoever is attached. vmlet is that one client while any attach is
// open: what the guest prints goes to every attached reader, and one attach at a time
// may type. The last detach closes the socket; the VM never notices.
import net from "node:net";
import { Writable } from "node:stream";
import type { StreamIo, StreamOutcome, StreamTarget } from "./remotecommand";

/** A reader this far behind is cut off, so one stalled client never holds the others. */
export const MAX_READER_BACKLOG = 1024 * 1024;
const CONNECT_TIMEOUT_MS = 5000;

export class AttachError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(`attach: ${message}`, options);
    this.name = "AttachError";
  }
}

interface Reader {
  out: Writable;
  /** Ends the attach (cut off, or the console went away). */
  end(outcome: StreamOutcome): void;
}

/** One console socket's shared connection and its attaches. */
class ConsoleLine {
  readonly readers = new Set<Reader>();
  writer: Reader | undefined;
  private socket: net.Socket | undefined;
  private connecting: Promise<net.Socket> | undefined;

  constructor(
    readonly path: string,
    private readonly onIdle: () => void,
  ) {}

  connect(): Promise<net.Socket> {
    if (this.socket) return Promise.resolve(this.socket);
    this.connecting ??= new Promise<net.Socket>((resolve, reject) => {
      const socket = net.connect(this.path);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new AttachError(`console ${this.path}: no answer in ${CONNECT_TIMEOUT_MS} ms`));
      }, CONNECT_TIMEOUT_MS);
      socket.once("error", (error) => {
        clearTimeout(timer);
        reject(new AttachError(`console ${this.path}: ${error.message}`, { cause: error }));
      });
      socket.once("connect", () => {
        clearTimeout(timer);
        socket.removeAllListeners("error");
        socket.on("error", () => socket.destroy());
        socket.on("data", (chunk: Buffer) => this.broadcast(chunk));
        socket.on("close", () => this.lost());
        this.socket = socket;
        resolve(socket);
      });
    }).finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  get connected(): boolean {
    return this.socket !== undefined;
  }

  write(chunk: Buffer): void {
    this.socket?.write(chunk);
  }

  leave(reader: Reader): void {
    this.readers.delete(reader);
    if (this.writer === reader) this.writer = undefined;
    if (this.readers.size === 0) {
      this.socket?.destroy();
      this.socket = undefined;
      this.onIdle();
    }
  }

  private broadcast(chunk: Buffer): void {
    for (const r of this.readers) {
      if (r.out.destroyed || r.out.writableEnded) continue;
      if (r.out.writableLength > MAX_READER_BACKLOG) {
        r.end(new AttachError(`reader fell over ${MAX_READER_BACKLOG} bytes behind the console`));
        continue;
      }
      r.out.write(chunk);
    }
  }

  /** The VM went away (or QEMU dropped us): every attach ends, as a container's would. */
  private lost(): void {
    this.socket = undefined;
    for (const r of [...this.readers]) r.end({ exitCode: 0 });
  }
}

/** Every attach of this vmlet, by console socket path. */
export class ConsoleAttacher {
  private readonly lines = new Map<string, ConsoleLine>();

  /** The attach of one request: a StreamTarget the remotecommand protocol runs. */
  target(consoleSocket: string, describe: string): StreamTarget {
    return { run: (io, signal) => this.attach(consoleSocket, describe, io, signal) };
  }

  /** Console sockets vmlet holds open now (tests check nothing is left). */
  get openConsoles(): number {
    let n = 0;
    for (const line of this.lines.values()) if (line.connected) n++;
    return n;
  }

  get attaches(): number {
    let n = 0;
    for (const line of this.lines.values()) n += line.readers.size;
    return n;
  }

  private line(path: string): ConsoleLine {
    let line = this.lines.get(path);
    if (!line) {
      const created = new ConsoleLine(path, () => {
        if (this.lines.get(path) === created) this.lines.delete(path);
      });
      line = created;
      this.lines.set(path, line);
    }
    return line;
  }

  private attach(
    consoleSocket: string,
    describe: string,
    io: StreamIo,
    signal: AbortSignal,
  ): Promise<StreamOutcome> {
    const line = this.line(consoleSocket);
    if (io.stdin && line.writer) {
      return Promise.resolve(
        new AttachError(
          `${describe}: another attach is writing to this console; attach without stdin to watch`,
        ),
      );
    }
    return new Promise<StreamOutcome>((resolve) => {
      let finished = false;
      const out = io.stdout ?? io.stderr ?? discard();
      const reader: Reader = {
        out,
        end: (outcome) => {
          if (finished) return;
          finished = true;
          signal.removeEventListener("abort", onAbort);
          io.stdin?.removeListener("data", onInput);
          line.leave(reader);
          resolve(outcome);
        },
      };
      const onAbort = () => reader.end({ exitCode: 0 });
      const onInput = (chunk: Buffer) => {
        if (line.writer === reader) line.write(chunk);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      line.readers.add(reader);
      if (io.stdin) line.writer = reader;
      line.connect().then(
        () => {
          if (finished) return;
          if (io.stdin) {
            io.stdin.on("data", onInput);
            // Closing stdin is not a detach: the reader stays until the client goes.
            io.stdin.once("end", () => {
              if (line.writer === reader) line.writer = undefined;
            });
          }
          // The console has no size to set: a tty attach's resizes are read and dropped.
          if (io.resize) void drain(io.resize);
        },
        (error: Error) =>
          reader.end(new AttachError(`${describe}: ${error.message}`, { cause: error })),
      );
    });
  }
}

async function drain(sizes: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of sizes) {
    // ignored: a serial line has no window size the guest could be told of
  }
}

/** An attach with stdin only still joins the line; what the guest prints goes nowhere. */
function discard(): Writable {
  return new Writable({ write: (_chunk, _encoding, callback) => callback() });
}
