// Port-forward over WebSocket, as kubelet serves it (portforward/websocket.go): the ports
// come from the URL's query (kubelet's CRI server takes the PortForward request's; that is
// the fallback), and port i gets channel 2i for data and 2i+1 for errors. The
// first message on each of the two carries the port (2 bytes, little-endian), then data
// flows. One TCP connection per port; when every port is done the WebSocket closes.
import type http from "node:http";
import type { Duplex } from "node:stream";
import type { WebSocket } from "ws";
import { errorMessage } from "../../util/errors";
import { type PortDialer, PortForwardError } from "./portforward";
import { acceptWebSocket, decodeChannelMessage, MAX_MESSAGE_BYTES } from "./websocket";

/**
 * kubelet's are v4, v4.base64 and none (binary); portforward.k8s.io (binary) is taken too,
 * for clients that name the SPDY protocol. The client's order wins, as for exec.
 */
export const PORTFORWARD_WEBSOCKET_PROTOCOLS = [
  "portforward.k8s.io",
  "v4.channel.k8s.io",
  "v4.base64.channel.k8s.io",
  "",
] as const;

/** The API server's query parameter (client-node sends it) and kubelet's own. */
const PORT_PARAMETERS = ["ports", "port"] as const;
/** Above this much unsent data to the client, the pod's sockets are paused. */
const SEND_HIGH_WATER_BYTES = 1024 * 1024;
/** What a port may hold from the client while its connection is still being dialled. */
const EARLY_DATA_MAX_BYTES = 1024 * 1024;

export class PortForwardQueryError extends Error {
  constructor(message: string) {
    super(`portforward: ${message}`);
    this.name = "PortForwardQueryError";
  }
}

/**
 * The ports a WebSocket port-forward asks for: `?ports=80&ports=8080` or `?ports=80,8080`
 * (`port` too); without either, the PortForward request's own ports. Throws
 * PortForwardQueryError naming the parameter.
 */
export function portForwardPorts(url: string | undefined, requested: readonly number[]): number[] {
  const query = new URL(url ?? "/", "http://x").searchParams;
  const name = PORT_PARAMETERS.find((n) => query.has(n)) ?? PORT_PARAMETERS[0];
  const values = PORT_PARAMETERS.flatMap((n) => query.getAll(n));
  if (values.length === 0) {
    if (requested.length > 0) return [...requested];
    throw new PortForwardQueryError(`query parameter "${name}" is required`);
  }
  const ports: number[] = [];
  for (const value of values) {
    for (const p of value.split(",")) {
      const port = /^\d{1,5}$/.test(p.trim()) ? Number(p.trim()) : Number.NaN;
      if (!(port >= 1 && port <= 65535))
        throw new PortForwardQueryError(
          `query parameter "${name}": ${JSON.stringify(p)} is not a port (1-65535)`,
        );
      ports.push(port);
    }
  }
  return ports;
}

export interface WebSocketPortForwardOptions {
  /** How the pod is named in error messages, e.g. "default/web". */
  podName: string;
  dial: PortDialer;
  /** Failures of single ports (the client sees them on the port's error channel). */
  onError?: (error: Error) => void;
  /** The connection ended: every port's socket is closed. */
  onClose?: () => void;
}

interface Forward {
  port: number;
  conn?: Duplex;
  /** The client's data that came before the dial finished. */
  early: Buffer[];
  earlyBytes: number;
  done: boolean;
}

/** Completes the upgrade and forwards each port; never throws. */
export function serveWebSocketPortForward(
  req: http.IncomingMessage,
  socket: Duplex,
  head: Buffer,
  protocol: string,
  ports: readonly number[],
  options: WebSocketPortForwardOptions,
): void {
  acceptWebSocket(
    req,
    socket,
    head,
    protocol,
    (ws) => run(ws, protocol, ports, options),
    () => options.onClose?.(),
  );
}

function run(
  ws: WebSocket,
  protocol: string,
  ports: readonly number[],
  options: WebSocketPortForwardOptions,
): void {
  const base64 = protocol.includes("base64");
  const forwards: Forward[] = ports.map((port) => ({
    port,
    early: [],
    earlyBytes: 0,
    done: false,
  }));
  const paused = new Set<Duplex>();
  let readPaused = false;

  const send = (channel: number, data: Buffer) => {
    if (ws.readyState !== ws.OPEN) return;
    const message = base64
      ? `${String.fromCharCode(0x30 + channel)}${data.toString("base64")}`
      : Buffer.concat([Buffer.from([channel]), data]);
    ws.send(message, () => {
      if (ws.bufferedAmount >= SEND_HIGH_WATER_BYTES) return;
      for (const c of paused) c.resume();
      paused.clear();
    });
  };
  const finish = (f: Forward) => {
    if (f.done) return;
    f.done = true;
    f.early = [];
    f.conn?.destroy();
    if (forwards.every((g) => g.done) && ws.readyState === ws.OPEN) {
      ws.close(1000);
      setTimeout(() => ws.terminate(), 5000).unref();
    }
  };
  const report = (i: number, f: Forward, message: string, cause?: unknown) => {
    const error = new PortForwardError(
      `error forwarding port ${f.port} to pod ${options.podName}: ${message}`,
      { cause },
    );
    options.onError?.(error);
    send(2 * i + 1, Buffer.from(error.message));
  };
  const resumeReading = () => {
    if (!readPaused || forwards.some((f) => f.earlyBytes > EARLY_DATA_MAX_BYTES)) return;
    if (forwards.some((f) => f.conn?.writableNeedDrain)) return;
    readPaused = false;
    ws.resume();
  };
  const pauseReading = () => {
    readPaused = true;
    ws.pause();
  };

  const start = async (i: number, f: Forward) => {
    let conn: Duplex;
    try {
      conn = await options.dial(f.port);
    } catch (error) {
      report(i, f, errorMessage(error), error);
      finish(f);
      return;
    }
    if (f.done) {
      conn.destroy(); // the client went while we dialled
      return;
    }
    f.conn = conn;
    conn.on("data", (chunk: Buffer) => {
      for (let at = 0; at < chunk.length; at += MAX_MESSAGE_BYTES)
        send(2 * i, chunk.subarray(at, at + MAX_MESSAGE_BYTES));
      if (ws.bufferedAmount >= SEND_HIGH_WATER_BYTES) {
        conn.pause();
        paused.add(conn);
      }
    });
    // The client cannot half-close a channel, so the pod's FIN ends the port, as kubelet's
    // copy loop does; what it wrote first is already on its way.
    conn.on("end", () => finish(f));
    conn.on("error", (error: NodeJS.ErrnoException) => {
      if (!f.done) report(i, f, error.code ?? error.message, error);
      finish(f);
    });
    conn.on("close", () => finish(f));
    conn.on("drain", resumeReading);
    for (const chunk of f.early) conn.write(chunk);
    f.early = [];
    f.earlyBytes = 0;
    resumeReading();
  };

  ws.on("message", (raw: Buffer, isBinary: boolean) => {
    const { channel, data } = decodeChannelMessage(raw, isBinary, base64);
    // Odd channels are ours to write (kubelet ignores the client there), as are unknown ones.
    const f = channel % 2 === 0 ? forwards[channel / 2] : undefined;
    if (!f || f.done || data.length === 0) return;
    if (!f.conn) {
      f.early.push(data);
      f.earlyBytes += data.length;
      if (f.earlyBytes > EARLY_DATA_MAX_BYTES) pauseReading();
    } else if (!f.conn.write(data)) pauseReading();
  });
  ws.on("close", () => {
    for (const f of forwards) finish(f);
    options.onClose?.();
  });
  ws.on("error", () => ws.terminate());

  forwards.forEach((f, i) => {
    const prefix = Buffer.alloc(2);
    prefix.writeUInt16LE(f.port);
    send(2 * i, prefix);
    send(2 * i + 1, prefix);
    void start(i, f);
  });
}
