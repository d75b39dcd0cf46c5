// The port-forward stream protocol (portforward.k8s.io) over one SPDY session, as kubelet
// serves it: the client opens an error stream and a data stream per connection, paired by
// their requestID header and naming the pod's port; each pair is one TCP connection to the
// pod. A pair that fails (refused, reset, broken pipe) ends alone: the session, and the
// other pairs, go on until the client closes.
import type { Duplex } from "node:stream";
import { errorMessage } from "../../util/errors";
import { STREAM_CREATION_TIMEOUT_MS } from "./remotecommand";
import type { SpdySession } from "./spdy/session";
import type { SpdyStream } from "./spdy/stream";

/** Opens the connection to the pod's port; rejects with an Error that says why not. */
export type PortDialer = (port: number) => Promise<Duplex>;

export interface PortForwardOptions {
  /** How the pod is named in error messages, e.g. "default/web". */
  podName: string;
  dial: PortDialer;
  streamCreationTimeoutMs?: number;
  /** Failures of single pairs (the client sees them on its error stream). */
  onError?: (error: Error) => void;
  /** The session ended: every pair is closed. */
  onClose?: () => void;
}

interface Pair {
  id: string;
  error?: SpdyStream;
  data?: SpdyStream;
  timer: NodeJS.Timeout;
  started: boolean;
}

export class PortForwardError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(`portforward: ${message}`, options);
    this.name = "PortForwardError";
  }
}

/** apimachinery's port-forward headers, lowercase as they arrive. */
const HEADER_STREAM_TYPE = "streamtype";
const HEADER_PORT = "port";
const HEADER_REQUEST_ID = "requestid";

export function servePortForward(
  session: SpdySession,
  options: PortForwardOptions,
  head?: Buffer,
): { pairs(): number } {
  const pairs = new Map<string, Pair>();
  const sockets = new Set<Duplex>();
  const timeoutMs = options.streamCreationTimeoutMs ?? STREAM_CREATION_TIMEOUT_MS;
  const fail = (error: Error) => options.onError?.(error);

  const dropPair = (pair: Pair) => {
    clearTimeout(pair.timer);
    if (pairs.get(pair.id) === pair) pairs.delete(pair.id);
  };

  const onStream = (s: SpdyStream) => {
    const type = s.header(HEADER_STREAM_TYPE);
    if (type !== "error" && type !== "data") {
      s.destroy();
      return;
    }
    const id = s.header(HEADER_REQUEST_ID) ?? legacyRequestId(s, type);
    let pair = pairs.get(id);
    if (!pair) {
      const created: Pair = {
        id,
        started: false,
        timer: setTimeout(() => {
          dropPair(created);
          fail(new PortForwardError(`request ${id}: timed out waiting for its other stream`));
          for (const st of [created.error, created.data]) st?.destroy();
        }, timeoutMs),
      };
      pair = created;
      pairs.set(id, pair);
    }
    if (pair[type] || pair.started) {
      s.destroy(); // a duplicate stream for a request
      return;
    }
    pair[type] = s;
    if (pair.error && pair.data) {
      pair.started = true;
      clearTimeout(pair.timer);
      void forward(pair, pair.error, pair.data);
    }
  };

  const forward = async (pair: Pair, errorStream: SpdyStream, data: SpdyStream) => {
    errorStream.resume(); // the client never writes on it
    const port = parsePort(data.header(HEADER_PORT));
    const report = (message: string, cause?: unknown) => {
      const error = new PortForwardError(
        `error forwarding port ${port ?? data.header(HEADER_PORT)} to pod ${options.podName}: ${message}`,
        { cause },
      );
      fail(error);
      if (!errorStream.destroyed && !errorStream.writableEnded) errorStream.end(error.message);
    };
    try {
      if (port === undefined) {
        report(`invalid port header ${JSON.stringify(data.header(HEADER_PORT))}`);
        data.end();
        data.resume();
        return;
      }
      let conn: Duplex;
      try {
        conn = await options.dial(port);
      } catch (error) {
        report(errorMessage(error), error);
        data.end();
        data.resume();
        return;
      }
      if (session.isClosed) {
        conn.destroy();
        return;
      }
      sockets.add(conn);
      await splice(data, conn);
      sockets.delete(conn);
      if (!errorStream.destroyed && !errorStream.writableEnded) errorStream.end();
    } finally {
      dropPair(pair);
    }
  };

  session.start(
    {
      stream: onStream,
      close: () => {
        for (const pair of pairs.values()) clearTimeout(pair.timer);
        pairs.clear();
        for (const c of sockets) c.destroy();
        sockets.clear();
        options.onClose?.();
      },
    },
    head,
  );
  return { pairs: () => pairs.size };
}

/**
 * Copies both ways with half-close: the client's FIN ends our writes to the pod (the pod
 * may still answer), the pod's FIN ends the data stream. Resolves once both directions are
 * done, or the pod's socket is gone (ECONNRESET, EPIPE, closed), or the stream was reset:
 * then the pod socket is destroyed, the stream ended, and whatever the client still sends
 * on it is read and dropped, so it never holds the session's window or socket.
 */
function splice(stream: SpdyStream, conn: Duplex): Promise<void> {
  return new Promise((resolve) => {
    let toPod = false;
    let toClient = false;
    let settled = false;
    const settle = () => {
      if (settled) return;
      settled = true;
      stream.removeListener("data", toPodData);
      conn.removeListener("data", toClientData);
      conn.destroy();
      if (!stream.destroyed) {
        if (!stream.writableEnded) stream.end();
        stream.resume();
      }
      resolve();
    };
    const toPodData = (chunk: Buffer) => {
      if (!conn.write(chunk)) {
        stream.pause();
        conn.once("drain", () => {
          if (!settled) stream.resume();
        });
      }
    };
    const toClientData = (chunk: Buffer) => {
      if (!stream.write(chunk)) {
        conn.pause();
        stream.once("drain", () => {
          if (!settled) conn.resume();
        });
      }
    };
    stream.on("data", toPodData);
    stream.on("end", () => {
      toPod = true;
      conn.end();
      if (toClient) settle();
    });
    conn.on("data", toClientData);
    conn.on("end", () => {
      toClient = true;
      stream.end();
      if (toPod) settle();
    });
    conn.on("error", settle);
    conn.on("close", settle);
    stream.on("close", settle);
  });
}

function parsePort(value: string | undefined): number | undefined {
  if (value === undefined || !/^\d{1,5}$/.test(value)) return undefined;
  const port = Number(value);
  return port >= 1 && port <= 65535 ? port : undefined;
}

/** Clients before requestID paired by stream id: the data stream follows its error stream. */
function legacyRequestId(s: SpdyStream, type: "error" | "data"): string {
  return String(type === "error" ? s.id : s.id - 2);
}
