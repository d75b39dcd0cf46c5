// The runtime's streaming HTTP server: plain HTTP on loopback (kubelet proxies to it since
// 1.11, without TLS), URLs <base>/{exec,attach,portforward}/<token>, each token single use.
// A request is checked (path, method, token, X-Stream-Protocol-Version, upgrade headers) in
// kubelet's order, then upgraded to SPDY/3.1 and handed to the handler for its kind.
import http from "node:http";
import type net from "node:net";
import type { Duplex } from "node:stream";
import { REMOTECOMMAND_PROTOCOLS } from "./remotecommand";
import { SpdySession, type SpdySessionOptions } from "./spdy/session";
import { TokenCache, type TokenCacheOptions } from "./tokens";
import { chooseWebSocketProtocol, WEBSOCKET_PROTOCOLS } from "./websocket";
import { PORTFORWARD_WEBSOCKET_PROTOCOLS } from "./websocket-portforward";

export type StreamKind = "exec" | "attach" | "portforward";

export const PORTFORWARD_PROTOCOLS = ["portforward.k8s.io"] as const;

const PROTOCOLS: Record<StreamKind, readonly string[]> = {
  exec: REMOTECOMMAND_PROTOCOLS,
  attach: REMOTECOMMAND_PROTOCOLS,
  portforward: PORTFORWARD_PROTOCOLS,
};

export const HEADER_PROTOCOL_VERSION = "X-Stream-Protocol-Version";
export const HEADER_ACCEPTED_PROTOCOL_VERSIONS = "X-Accepted-Stream-Protocol-Versions";

export interface UpgradedStream<R> {
  kind: StreamKind;
  request: R;
  /** The negotiated X-Stream-Protocol-Version. */
  protocol: string;
  /** Not started: the handler calls start() with its stream handler. */
  session: SpdySession;
  /** Bytes that came with the upgrade request, for session.start(). */
  head: Buffer;
}

export interface StreamingServerOptions<R> {
  /** Default 127.0.0.1 and a port chosen at start (0). */
  address?: string;
  port?: number;
  tokens?: Partial<TokenCacheOptions>;
  session?: Partial<SpdySessionOptions>;
  /** Runs one upgraded stream; must not throw (errors go to its client). */
  serve(upgraded: UpgradedStream<R>): void;
  /** Runs one WebSocket upgrade (not yet answered); without it WebSocket gets 400. */
  serveWebSocket?(upgrade: WebSocketUpgrade<R>): void;
}

export interface WebSocketUpgrade<R> {
  kind: StreamKind;
  request: R;
  /** The Sec-WebSocket-Protocol chosen (WEBSOCKET_PROTOCOLS, or PORTFORWARD_WEBSOCKET_PROTOCOLS). */
  protocol: string;
  req: http.IncomingMessage;
  socket: Duplex;
  head: Buffer;
}

interface Pending<R> {
  kind: StreamKind;
  request: R;
}

export class StreamingServer<R> {
  private readonly server: http.Server;
  private readonly tokens: TokenCache<Pending<R>>;
  private readonly sockets = new Set<Duplex>();
  private base = "";

  constructor(private readonly opts: StreamingServerOptions<R>) {
    this.tokens = new TokenCache(opts.tokens);
    this.server = http.createServer((req, res) => this.onRequest(req, res));
    this.server.on("upgrade", (req: http.IncomingMessage, socket: Duplex, head: Buffer) =>
      this.onUpgrade(req, socket, head),
    );
    this.server.on("connection", (s: net.Socket) => {
      this.sockets.add(s);
      s.on("close", () => this.sockets.delete(s));
    });
    this.server.on("clientError", (_e, socket: Duplex) => socket.destroy());
  }

  async start(): Promise<void> {
    const address = this.opts.address ?? "127.0.0.1";
    await new Promise<void>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(this.opts.port ?? 0, address, () => {
        this.server.off("error", reject);
        resolve();
      });
    });
    const a = this.server.address() as net.AddressInfo;
    const host = a.family === "IPv6" ? `[${a.address}]` : a.address;
    this.base = `http://${host}:${a.port}`;
  }

  /** Absolute base URL, e.g. http://127.0.0.1:41234 (kubelet wants absolute URLs). */
  get baseUrl(): string {
    return this.base;
  }

  /** The URL a Get* call returns. Throws TokensExhaustedError (RESOURCE_EXHAUSTED) when 1000 wait. */
  urlFor(kind: StreamKind, request: R): string {
    return `${this.base}/${kind}/${this.tokens.insert({ kind, request })}`;
  }

  get pendingTokens(): number {
    return this.tokens.size;
  }

  async stop(): Promise<void> {
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  /** Not an upgrade: answer as kubelet does, after the same checks. */
  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const checked = this.check(req);
    const reply = checked.ok
      ? { code: 400, text: "unable to upgrade: missing upgrade headers in request", headers: {} }
      : checked;
    res.writeHead(reply.code, { "Content-Type": "text/plain; charset=utf-8", ...reply.headers });
    res.end(`${reply.text}\n`);
  }

  private onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on("error", () => socket.destroy());
    if (String(req.headers.upgrade ?? "").toLowerCase() === "websocket") {
      this.onWebSocket(req, socket, head);
      return;
    }
    const checked = this.check(req);
    if (!checked.ok) {
      writeRaw(socket, checked.code, checked.text, checked.headers);
      return;
    }
    const upgrade = String(req.headers.upgrade ?? "").toLowerCase();
    const connection = String(req.headers.connection ?? "").toLowerCase();
    if (upgrade !== "spdy/3.1" || !connection.split(",").some((t) => t.trim() === "upgrade")) {
      writeRaw(
        socket,
        400,
        `unable to upgrade: want Upgrade: SPDY/3.1, got ${JSON.stringify(req.headers.upgrade)}`,
        {},
      );
      return;
    }
    socket.write(
      "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n" +
        `${HEADER_PROTOCOL_VERSION}: ${checked.protocol}\r\n\r\n`,
    );
    (socket as net.Socket).setNoDelay?.(true);
    const session = new SpdySession(socket, this.opts.session);
    this.opts.serve({
      kind: checked.pending.kind,
      request: checked.pending.request,
      protocol: checked.protocol,
      session,
      head,
    });
  }

  /** The same path, method and token checks; the protocol comes from Sec-WebSocket-Protocol. */
  private onWebSocket(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const target = this.checkTarget(req);
    if (!target.ok) {
      writeRaw(socket, target.code, target.text, target.headers);
      return;
    }
    const { kind, request } = target.pending;
    if (!this.opts.serveWebSocket) {
      writeRaw(
        socket,
        400,
        `unable to upgrade: ${kind} over WebSocket is not supported; use SPDY/3.1`,
        {},
      );
      return;
    }
    const accepted: readonly string[] =
      kind === "portforward" ? PORTFORWARD_WEBSOCKET_PROTOCOLS : WEBSOCKET_PROTOCOLS;
    const protocol = chooseWebSocketProtocol(req.headers["sec-websocket-protocol"], accepted);
    if (protocol === undefined) {
      writeRaw(
        socket,
        403,
        `unable to upgrade: no supported Sec-WebSocket-Protocol in ${JSON.stringify(req.headers["sec-websocket-protocol"] ?? "")}`,
        { [HEADER_ACCEPTED_PROTOCOL_VERSIONS]: accepted.filter(Boolean) },
      );
      return;
    }
    (socket as net.Socket).setNoDelay?.(true);
    this.opts.serveWebSocket({ kind, request, protocol, req, socket, head });
  }

  private checkTarget(
    req: http.IncomingMessage,
  ):
    | { ok: true; pending: Pending<R> }
    | { ok: false; code: number; text: string; headers: Record<string, string[]> } {
    const fail = (code: number, text: string, headers: Record<string, string[]> = {}) =>
      ({ ok: false, code, text, headers }) as const;
    const m = /^\/(exec|attach|portforward)\/([A-Za-z0-9_-]+)$/.exec((req.url ?? "").split("?")[0]);
    if (!m) return fail(404, "not found");
    if (req.method !== "GET" && req.method !== "POST") {
      return fail(405, `method ${req.method} not allowed`, { Allow: ["GET, POST"] });
    }
    const kind = m[1] as StreamKind;
    const pending = this.tokens.consume(m[2]);
    if (!pending) return fail(404, "token not found (unknown, used or expired)");
    if (pending.kind !== kind) return fail(400, `token is for ${pending.kind}, not ${kind}`);
    return { ok: true, pending };
  }

  private check(
    req: http.IncomingMessage,
  ):
    | { ok: true; pending: Pending<R>; protocol: string }
    | { ok: false; code: number; text: string; headers: Record<string, string[]> } {
    const fail = (code: number, text: string, headers: Record<string, string[]> = {}) =>
      ({ ok: false, code, text, headers }) as const;
    const target = this.checkTarget(req);
    if (!target.ok) return target;
    const { pending } = target;
    const kind = pending.kind;
    const offered = protocolHeaders(req);
    if (offered.length === 0)
      return fail(400, `unable to upgrade: ${HEADER_PROTOCOL_VERSION} is required`);
    const accepted = PROTOCOLS[kind];
    // The client's order of preference wins, as in apimachinery's httpstream.Handshake.
    const protocol = offered.find((p) => accepted.includes(p));
    if (!protocol) {
      return fail(
        403,
        `unable to upgrade: unable to negotiate protocol: client supports [${offered.join(" ")}], server accepts [${accepted.join(" ")}]`,
        { [HEADER_ACCEPTED_PROTOCOL_VERSIONS]: [...accepted] },
      );
    }
    return { ok: true, pending, protocol };
  }
}

/** Every X-Stream-Protocol-Version value: the header may repeat and each may list several. */
function protocolHeaders(req: http.IncomingMessage): string[] {
  const out: string[] = [];
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i].toLowerCase() !== HEADER_PROTOCOL_VERSION.toLowerCase()) continue;
    for (const p of raw[i + 1].split(",")) if (p.trim()) out.push(p.trim());
  }
  return out;
}

/** An HTTP answer on a socket that asked to upgrade (the upgrade refused). */
export function writeRaw(
  socket: Duplex,
  code: number,
  text: string,
  headers: Record<string, string[]>,
): void {
  const body = `${text}\n`;
  let head = `HTTP/1.1 ${code} ${http.STATUS_CODES[code] ?? ""}\r\nContent-Type: text/plain; charset=utf-8\r\n`;
  for (const [name, values] of Object.entries(headers))
    for (const v of values) head += `${name}: ${v}\r\n`;
  head += `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n`;
  socket.end(head + body);
}
