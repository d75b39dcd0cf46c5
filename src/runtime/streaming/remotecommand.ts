// The remotecommand stream protocol (kubelet's exec and attach) over one SPDY session: wait
// for the client's streams, run the target with them, then report on the error stream.
//   v1 channel.k8s.io, v2: error stream carries a plain message, no resize;
//   v3: adds the resize stream when tty; v4: the error stream carries a metav1.Status;
//   v5: v4 plus a stdin close signal that only WebSocket clients need.
import type { Readable, Writable } from "node:stream";
import { ResizeDecoder, ResizeQueue, type TerminalSize } from "./resize";
import type { SpdySession } from "./spdy/session";
import type { SpdyStream } from "./spdy/stream";
import { exitCodeStatus, internalErrorStatus, type MetaStatus, successStatus } from "./status";

export const REMOTECOMMAND_PROTOCOLS = [
  "v5.channel.k8s.io",
  "v4.channel.k8s.io",
  "v3.channel.k8s.io",
  "v2.channel.k8s.io",
  "channel.k8s.io",
] as const;
export type RemoteCommandProtocol = (typeof REMOTECOMMAND_PROTOCOLS)[number];

/** kubelet's StreamCreationTimeout. */
export const STREAM_CREATION_TIMEOUT_MS = 30_000;

export interface RemoteCommandOptions {
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
  tty: boolean;
}

/** What a target gets: the client's streams, only those it asked for. */
export interface StreamIo {
  /** Ends when the client closes stdin. */
  stdin?: Readable;
  stdout?: Writable;
  stderr?: Writable;
  /** Terminal sizes, tty sessions only. */
  resize?: AsyncIterable<TerminalSize>;
  tty: boolean;
}

/** The outcome of a run: an exit code, or why it could not run. */
export type StreamOutcome = { exitCode: number } | Error;

/**
 * An exec or attach backend (guest agent exec, the serial console). `signal` aborts when
 * the client goes away; the target then stops and resolves.
 */
export interface StreamTarget {
  run(io: StreamIo, signal: AbortSignal): Promise<StreamOutcome>;
}

type StreamType = "error" | "stdin" | "stdout" | "stderr" | "resize";

export class RemoteCommandError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(`remotecommand: ${message}`, options);
    this.name = "RemoteCommandError";
  }
}

function protocolVersion(p: RemoteCommandProtocol): number {
  return p === "channel.k8s.io" ? 1 : Number(p.slice(1, p.indexOf(".")));
}

/** Which stream types the server waits for before running (kubelet's expected streams). */
export function expectedStreams(
  protocol: RemoteCommandProtocol,
  opts: RemoteCommandOptions,
): StreamType[] {
  const want: StreamType[] = ["error"];
  if (opts.stdin) want.push("stdin");
  if (opts.stdout) want.push("stdout");
  if (opts.stderr) want.push("stderr");
  // Counting resize without tty would stall for the whole timeout: clients only open it for a tty.
  if (opts.tty && protocolVersion(protocol) >= 3) want.push("resize");
  return want;
}

export interface ServeOptions {
  streamCreationTimeoutMs?: number;
  /** Where to report a run that failed after the streams were up (the CRI log, for one). */
  onError?: (error: Error) => void;
}

/**
 * Serves one exec or attach on an upgraded session, then closes the session. Resolves when
 * the run and its report are done; never rejects (failures go to the client and onError).
 */
export async function serveRemoteCommand(
  session: SpdySession,
  protocol: RemoteCommandProtocol,
  opts: RemoteCommandOptions,
  target: StreamTarget,
  serveOptions: ServeOptions = {},
  head?: Buffer,
): Promise<void> {
  const want = expectedStreams(protocol, opts);
  const got = new Map<StreamType, SpdyStream>();
  const abort = new AbortController();
  let ready: () => void = () => {};
  const allThere = new Promise<void>((r) => {
    ready = r;
  });
  session.start(
    {
      stream: (s) => {
        const type = s.header("streamtype") as StreamType | undefined;
        if (
          !type ||
          !["error", "stdin", "stdout", "stderr", "resize"].includes(type) ||
          got.has(type)
        ) {
          s.destroy(); // RST_STREAM CANCEL: unknown or duplicate stream type
          return;
        }
        got.set(type, s);
        if (want.every((t) => got.has(t))) ready();
      },
      close: () => abort.abort(),
    },
    head,
  );
  const timeoutMs = serveOptions.streamCreationTimeoutMs ?? STREAM_CREATION_TIMEOUT_MS;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<"timeout">((r) => {
    timer = setTimeout(() => r("timeout"), timeoutMs);
  });
  const closed = new Promise<"closed">((r) =>
    abort.signal.addEventListener("abort", () => r("closed")),
  );
  const first = await Promise.race([allThere.then(() => "ready" as const), timedOut, closed]);
  clearTimeout(timer);
  if (first !== "ready") {
    const missing = want.filter((t) => !got.has(t)).join(", ");
    serveOptions.onError?.(
      new RemoteCommandError(
        first === "timeout"
          ? `timed out after ${timeoutMs} ms waiting for the client's streams (missing: ${missing})`
          : `connection closed before the client opened its streams (missing: ${missing})`,
      ),
    );
    session.close();
    return;
  }

  const errorStream = got.get("error")!;
  // The client never writes on the error stream; drain it so its window never matters.
  errorStream.resume();
  let resize: ResizeQueue | undefined;
  const resizeStream = got.get("resize");
  if (resizeStream && opts.tty) resize = pipeResize(resizeStream);
  const io: StreamIo = {
    stdin: opts.stdin ? got.get("stdin") : undefined,
    stdout: opts.stdout ? got.get("stdout") : undefined,
    stderr: opts.stderr ? got.get("stderr") : undefined,
    resize,
    tty: opts.tty,
  };
  let outcome: StreamOutcome;
  try {
    outcome = await target.run(io, abort.signal);
  } catch (e) {
    outcome = e instanceof Error ? e : new RemoteCommandError(String(e));
  }
  resize?.end();
  if (outcome instanceof Error) serveOptions.onError?.(outcome);
  if (!session.isClosed) {
    await Promise.all([endStream(io.stdout), endStream(io.stderr)]);
    await writeOutcome(errorStream, protocol, outcome);
    // Streams the client opened but we do not answer on still need our FIN.
    for (const s of got.values()) if (!s.writableEnded) s.end();
    session.close();
  }
}

function pipeResize(stream: SpdyStream): ResizeQueue {
  const queue = new ResizeQueue();
  const decoder = new ResizeDecoder();
  stream.on("data", (chunk: Buffer) => {
    try {
      for (const size of decoder.push(chunk)) queue.push(size);
    } catch {
      // kubelet stops reading resizes on a bad message; so do we (the session goes on).
      stream.removeAllListeners("data");
      stream.resume();
      queue.end();
    }
  });
  stream.on("end", () => queue.end());
  stream.on("close", () => queue.end());
  return queue;
}

function endStream(w: Writable | undefined): Promise<void> {
  if (!w || w.writableFinished || w.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    w.once("finish", resolve);
    w.once("close", resolve);
    w.end();
  });
}

function writeOutcome(
  errorStream: SpdyStream,
  protocol: RemoteCommandProtocol,
  outcome: StreamOutcome,
): Promise<void> {
  let payload: string | undefined;
  if (protocolVersion(protocol) >= 4) {
    const status: MetaStatus =
      outcome instanceof Error
        ? internalErrorStatus(outcome)
        : outcome.exitCode === 0
          ? successStatus()
          : exitCodeStatus(outcome.exitCode);
    payload = JSON.stringify(status);
  } else if (outcome instanceof Error) {
    payload = outcome.message;
  } else if (outcome.exitCode !== 0) {
    payload = exitCodeStatus(outcome.exitCode).message;
  }
  return new Promise((resolve) => {
    errorStream.once("close", resolve);
    errorStream.once("finish", resolve);
    if (payload !== undefined) errorStream.end(payload);
    else errorStream.end();
  });
}
