// The remotecommand protocol over WebSocket (the `ws` package), for clients that connect
// with it straight rather than through kubelet's SPDY leg. Every message is one channel
// byte and its data: 0 stdin, 1 stdout, 2 stderr, 3 error (the outcome), 4 resize; v5 adds
// 255 + a channel number to close that channel (stdin's end). The base64 variants send
// text messages: the channel as an ASCII digit, then the data in base64.
import type http from "node:http";
import { type Duplex, PassThrough, Writable } from "node:stream";
import { type WebSocket, WebSocketServer } from "ws";
import type { RemoteCommandOptions, StreamIo, StreamOutcome, StreamTarget } from "./remotecommand";
import { ResizeDecoder, ResizeQueue } from "./resize";
import { exitCodeStatus, internalErrorStatus, successStatus } from "./status";

/** In the server's order of preference; the client's order wins among these. */
export const WEBSOCKET_PROTOCOLS = [
  "v5.channel.k8s.io",
  "v4.channel.k8s.io",
  "v4.base64.channel.k8s.io",
  "channel.k8s.io",
  "base64.channel.k8s.io",
] as const;

const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;
const ERROR = 3;
const RESIZE = 4;
const CLOSE = 255;
/** No client message needs more: stdin arrives in pieces, resizes are tiny. */
export const MAX_MESSAGE_BYTES = 1024 * 1024;

const server = new WebSocketServer({
  noServer: true,
  maxPayload: MAX_MESSAGE_BYTES,
  perMessageDeflate: false,
  // The protocol was chosen with the token check; ws only has to echo it.
  handleProtocols: (offered) => offered.values().next().value ?? false,
});

/**
 * The first of the client's Sec-WebSocket-Protocol values in `accepted`; a client that
 * offers none gets "" when `accepted` lists it (port-forward's unnamed binary protocol).
 */
export function chooseWebSocketProtocol(
  header: string | undefined,
  accepted: readonly string[] = WEBSOCKET_PROTOCOLS,
): string | undefined {
  const offered = (header ?? "")
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean);
  if (offered.length === 0) return accepted.includes("") ? "" : undefined;
  return offered.find((p) => accepted.includes(p));
}

/** Answers the upgrade with 101; ws is handed only `protocol`, so only that one is echoed. */
/**
 * One channel message: the channel number first (a byte, or an ASCII digit under the
 * base64 protocols), then its data.
 */
export function decodeChannelMessage(
  raw: Buffer,
  isBinary: boolean,
  base64: boolean,
): { channel: number; data: Buffer } {
  if (base64 && !isBinary) {
    const text = raw.toString("latin1");
    return { channel: text.charCodeAt(0) - 0x30, data: Buffer.from(text.slice(1), "base64") };
  }
  return { channel: raw[0] ?? -1, data: raw.subarray(1) };
}

export function acceptWebSocket(
  req: http.IncomingMessage,
  socket: Duplex,
  head: Buffer,
  protocol: string,
  onOpen: (ws: WebSocket) => void,
  onRefused: () => void,
): void {
  if (protocol === "") delete req.headers["sec-websocket-protocol"];
  else req.headers["sec-websocket-protocol"] = protocol;
  // ws answers a bad handshake (say, a malformed Sec-WebSocket-Key) itself and closes the
  // socket without calling onOpen: the caller still has to give back what it holds.
  const refused = (): void => onRefused();
  socket.once("close", refused);
  server.handleUpgrade(req, socket, head, (ws) => {
    socket.off("close", refused);
    onOpen(ws);
  });
}

export interface WebSocketServeOptions {
  onError?: (error: Error) => void;
}

/**
 * Completes the upgrade and runs the target over the channels; resolves once the outcome
 * is sent and the socket closed. Never rejects.
 */
export function serveWebSocketRemoteCommand(
  req: http.IncomingMessage,
  socket: Duplex,
  head: Buffer,
  protocol: string,
  opts: RemoteCommandOptions,
  target: StreamTarget,
  serveOptions: WebSocketServeOptions = {},
): Promise<void> {
  return new Promise((resolve) => {
    acceptWebSocket(
      req,
      socket,
      head,
      protocol,
      (ws) => {
        void run(ws, protocol, opts, target, serveOptions).finally(resolve);
      },
      resolve,
    );
  });
}

async function run(
  ws: WebSocket,
  protocol: string,
  opts: RemoteCommandOptions,
  target: StreamTarget,
  serveOptions: WebSocketServeOptions,
): Promise<void> {
  const base64 = protocol.includes("base64");
  const version = protocol.startsWith("v5") ? 5 : protocol.startsWith("v4") ? 4 : 1;
  const abort = new AbortController();
  const send = (channel: number, data: Buffer): Promise<void> =>
    new Promise((resolve) => {
      if (ws.readyState !== ws.OPEN) {
        resolve();
        return;
      }
      const message = base64
        ? `${String.fromCharCode(0x30 + channel)}${data.toString("base64")}`
        : Buffer.concat([Buffer.from([channel]), data]);
      ws.send(message, () => resolve());
    });
  const writer = (channel: number) =>
    new Writable({
      write: (chunk: Buffer, _encoding, callback) => {
        send(channel, chunk).then(() => callback());
      },
    });
  const stdin = opts.stdin ? new PassThrough() : undefined;
  const resize = opts.tty ? new ResizeQueue() : undefined;
  const decoder = new ResizeDecoder();
  ws.on("message", (raw: Buffer, isBinary: boolean) => {
    const { channel, data } = decodeChannelMessage(raw, isBinary, base64);
    if (channel === STDIN) stdin?.write(data);
    else if (channel === RESIZE && resize) {
      try {
        for (const size of decoder.push(data)) resize.push(size);
      } catch {
        resize.end(); // as kubelet: a bad resize stops resizes, not the session
      }
    } else if (channel === CLOSE && version >= 5 && data[0] === STDIN) stdin?.end();
  });
  ws.on("close", () => {
    stdin?.end();
    resize?.end();
    abort.abort();
  });
  ws.on("error", () => ws.terminate());
  const io: StreamIo = {
    ...(stdin ? { stdin } : {}),
    ...(opts.stdout ? { stdout: writer(STDOUT) } : {}),
    ...(opts.stderr ? { stderr: writer(STDERR) } : {}),
    ...(resize ? { resize } : {}),
    tty: opts.tty,
  };
  let outcome: StreamOutcome;
  try {
    outcome = await target.run(io, abort.signal);
  } catch (e) {
    outcome = e instanceof Error ? e : new Error(String(e));
  }
  resize?.end();
  if (outcome instanceof Error) serveOptions.onError?.(outcome);
  await Promise.all([io.stdout, io.stderr].map((w) => (w ? finish(w) : undefined)));
  let payload: string | undefined;
  if (version >= 4) {
    payload = JSON.stringify(
      outcome instanceof Error
        ? internalErrorStatus(outcome)
        : outcome.exitCode === 0
          ? successStatus()
          : exitCodeStatus(outcome.exitCode),
    );
  } else if (outcome instanceof Error) payload = outcome.message;
  else if (outcome.exitCode !== 0) payload = exitCodeStatus(outcome.exitCode).message;
  if (payload !== undefined) await send(ERROR, Buffer.from(payload));
  if (ws.readyState === ws.OPEN) ws.close(1000);
  const timer = setTimeout(() => ws.terminate(), 5000);
  timer.unref();
}

function finish(w: Writable): Promise<void> {
  return new Promise((resolve) => {
    w.end(() => resolve());
  });
}
