// The server side of one SPDY/3.1 connection: accepts the peer's streams (odd ids), replies
// to them, keeps the per-stream and session flow-control windows, answers PING, and closes
// with GOAWAY. Malformed input ends this connection (GOAWAY PROTOCOL_ERROR) and nothing else;
// no handler here throws.
// Over 400 lines on purpose: the session's state (streams, both windows, the write queue)
// is one state machine, and cutting it would spread each rule across files.
import type { Duplex } from "node:stream";
import {
  encodeData,
  encodeGoaway,
  encodePing,
  encodeRstStream,
  encodeSynReply,
  encodeWindowUpdate,
  FLAG_FIN,
  FLAG_UNIDIRECTIONAL,
  type Frame,
  FrameDecoder,
  GoawayStatus,
  MAX_WINDOW,
  RstStatus,
  Setting,
} from "./frames";
import { HeaderDeflater, HeaderInflater, parseHeaderBlock, type SpdyHeaders } from "./header-block";
import { SpdyStream, SpdyStreamError, type StreamOwner } from "./stream";

/** SPDY/3.1 §2.6.8: every window starts at 64 KiB. */
export const DEFAULT_INITIAL_WINDOW = 64 * 1024;
/** Data frames we send are cut to this size, so streams interleave. */
const MAX_DATA_PIECE = 16 * 1024;
/** Frames decoded but not yet handled before the socket is paused. */
const MAX_QUEUED_FRAMES = 256;

export interface SpdySessionOptions {
  maxConcurrentStreams: number;
  maxControlFrameBytes: number;
  /** Largest inflated header block (a zlib bomb stops here). */
  maxHeaderBytes: number;
  /**
   * "auto": our send windows are enforced once the peer shows it does flow control (a
   * WINDOW_UPDATE or SETTINGS_INITIAL_WINDOW_SIZE); moby/spdystream, which client-go and
   * kubelet use, never does and never honours ours. "strict": enforced from the start.
   */
  flowControl: "auto" | "strict";
  /** Stop reading the socket while one stream holds this many unread bytes. */
  maxStreamBuffer: number;
  /** After our GOAWAY, how long the peer has to close before we drop the connection. */
  closeTimeoutMs: number;
  /** No frame either way for this long → GOAWAY (kubelet's StreamIdleTimeout is 4 h). */
  idleTimeoutMs: number;
}

export const DEFAULT_SESSION_OPTIONS: SpdySessionOptions = {
  maxConcurrentStreams: 100,
  maxControlFrameBytes: 32 * 1024,
  maxHeaderBytes: 16 * 1024,
  flowControl: "auto",
  maxStreamBuffer: 4 * DEFAULT_INITIAL_WINDOW,
  closeTimeoutMs: 5000,
  idleTimeoutMs: 4 * 3600 * 1000,
};

export interface SessionHandlers {
  /** A new stream from the peer, already answered with SYN_REPLY. */
  stream(stream: SpdyStream): void;
  /** The connection is gone; error when it ended abnormally. */
  close?(error: Error | undefined): void;
}

export class SpdySessionError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(`SPDY session: ${message}`, options);
    this.name = "SpdySessionError";
  }
}

export class SpdySession implements StreamOwner {
  private readonly opts: SpdySessionOptions;
  private readonly decoder: FrameDecoder;
  private readonly inflater: HeaderInflater;
  private readonly deflater = new HeaderDeflater();
  private readonly streams = new Map<number, SpdyStream>();
  private handlers: SessionHandlers | undefined;

  private queue: Frame[] = [];
  private queuedBytes = 0;
  private pumping = false;
  private chain: Promise<void> = Promise.resolve();
  private drainWaiters: Array<() => void> = [];
  private windowWaiters: Array<() => void> = [];
  private overBuffered = new Set<number>();
  private paused = false;

  private lastRemoteId = 0;
  private peerFlowControl = false;
  private peerInitialWindow = DEFAULT_INITIAL_WINDOW;
  private sessionSendWindow = DEFAULT_INITIAL_WINDOW;
  private sessionRecvWindow = DEFAULT_INITIAL_WINDOW;
  private sessionUncredited = 0;
  private nextPingId = 2;
  private readonly pings = new Map<
    number,
    { start: bigint; resolve: (ms: number) => void; reject: (e: Error) => void }
  >();

  private goawaySent = false;
  private goawayReceived = false;
  private closed = false;
  /** Why the session ended abnormally, if it did. */
  closeError: Error | undefined;

  constructor(
    private readonly socket: Duplex & { setTimeout?(ms: number): unknown },
    options: Partial<SpdySessionOptions> = {},
  ) {
    this.opts = { ...DEFAULT_SESSION_OPTIONS, ...options };
    this.decoder = new FrameDecoder({ maxControlFrameBytes: this.opts.maxControlFrameBytes });
    this.inflater = new HeaderInflater(this.opts.maxHeaderBytes);
  }

  /** Starts reading; `head` is whatever arrived with the HTTP upgrade. */
  start(handlers: SessionHandlers, head?: Buffer): void {
    this.handlers = handlers;
    const s = this.socket;
    s.on("data", (chunk: Buffer) => this.onData(chunk));
    s.on("drain", () => this.onDrain());
    s.on("end", () => this.shutdown(new SpdySessionError("peer closed the connection")));
    s.on("error", (e: Error) => this.shutdown(new SpdySessionError("socket error", { cause: e })));
    s.on("close", () => this.shutdown(undefined));
    s.setTimeout?.(this.opts.idleTimeoutMs);
    s.on("timeout", () => this.close());
    if (head && head.length > 0) this.onData(head);
  }

  get streamCount(): number {
    return this.streams.size;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Graceful end: GOAWAY OK after everything queued, then close the socket. */
  close(): void {
    if (this.closed || this.goawaySent) return;
    this.goawaySent = true;
    this.enqueue(() => encodeGoaway(this.lastRemoteId, GoawayStatus.OK))
      .then(() => this.socket.end())
      .catch(() => {});
    setTimeout(() => this.socket.destroy(), this.opts.closeTimeoutMs).unref();
  }

  /** Measures a round trip with a PING of our own (even id). */
  ping(timeoutMs = 10_000): Promise<number> {
    const id = this.nextPingId;
    this.nextPingId = this.nextPingId >= 0x7ffffffe ? 2 : this.nextPingId + 2;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pings.delete(id);
        reject(new SpdySessionError(`PING ${id} unanswered after ${timeoutMs} ms`));
      }, timeoutMs);
      timer.unref();
      this.pings.set(id, {
        start: process.hrtime.bigint(),
        resolve: (ms) => {
          clearTimeout(timer);
          resolve(ms);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.sendControl(encodePing(id));
    });
  }

  // ---- input ----

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    let frames: Frame[];
    try {
      frames = this.decoder.decode(chunk);
    } catch (e) {
      this.fail(e);
      return;
    }
    for (const f of frames) {
      this.queue.push(f);
      if (f.type === "data") this.queuedBytes += f.data.length;
    }
    this.updatePause();
    if (!this.pumping) void this.pump();
  }

  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      while (this.queue.length > 0 && !this.closed) {
        const frame = this.queue.shift()!;
        if (frame.type === "data") this.queuedBytes -= frame.data.length;
        const pending = this.handle(frame);
        if (pending) await pending;
      }
    } catch (e) {
      this.fail(e);
    } finally {
      this.pumping = false;
      this.updatePause();
    }
  }

  private handle(f: Frame): Promise<void> | undefined {
    switch (f.type) {
      case "data":
        this.onDataPiece(f);
        return undefined;
      case "syn_stream":
        return this.onSynStream(f);
      case "syn_reply":
        return this.onSynReply(f);
      case "headers":
        return this.onHeaders(f);
      case "rst_stream":
        this.onRst(f.streamId, f.status);
        return undefined;
      case "settings":
        this.onSettings(f.entries);
        return undefined;
      case "ping":
        this.onPing(f.id);
        return undefined;
      case "goaway":
        this.goawayReceived = true;
        this.finishIfDone();
        return undefined;
      case "window_update":
        this.onWindowUpdate(f.streamId, f.delta);
        return undefined;
    }
  }

  private async onSynStream(f: Extract<Frame, { type: "syn_stream" }>): Promise<void> {
    // Inflate first, even for a stream we refuse: the zlib context spans every block.
    const raw = await this.inflater.inflateBlock(f.headerBlock);
    if (f.streamId % 2 !== 1)
      throw new SpdySessionError(`SYN_STREAM ${f.streamId}: a client stream id must be odd`);
    if (f.streamId <= this.lastRemoteId) {
      throw new SpdySessionError(
        `SYN_STREAM ${f.streamId}: ids must increase (last ${this.lastRemoteId})`,
      );
    }
    this.lastRemoteId = f.streamId;
    // After a GOAWAY either way, new streams are ignored (§2.6.6).
    if (this.goawaySent || this.goawayReceived) return;
    let headers: SpdyHeaders;
    try {
      headers = parseHeaderBlock(raw);
    } catch {
      this.sendControl(encodeRstStream(f.streamId, RstStatus.PROTOCOL_ERROR));
      return;
    }
    if (this.streams.size >= this.opts.maxConcurrentStreams) {
      this.sendControl(encodeRstStream(f.streamId, RstStatus.REFUSED_STREAM));
      return;
    }
    const s = new SpdyStream(
      this,
      f.streamId,
      headers,
      this.peerInitialWindow,
      DEFAULT_INITIAL_WINDOW,
    );
    this.streams.set(f.streamId, s);
    if (f.flags & FLAG_UNIDIRECTIONAL) {
      s.localClosed = true;
      s.end();
    } else {
      this.enqueue(async () =>
        encodeSynReply(f.streamId, 0, await this.deflater.deflateBlock(new Map())),
      ).catch(() => {});
    }
    if (f.flags & FLAG_FIN) this.remoteFinish(s);
    this.handlers?.stream(s);
  }

  private async onSynReply(f: Extract<Frame, { type: "syn_reply" }>): Promise<void> {
    await this.inflater.inflateBlock(f.headerBlock);
    // We open no streams, so there is nothing this could answer.
    this.sendControl(encodeRstStream(f.streamId, RstStatus.INVALID_STREAM));
  }

  private async onHeaders(f: Extract<Frame, { type: "headers" }>): Promise<void> {
    const raw = await this.inflater.inflateBlock(f.headerBlock);
    const s = this.streams.get(f.streamId);
    if (!s) return;
    try {
      s.emit("headers", parseHeaderBlock(raw));
    } catch {
      this.resetStream(s, RstStatus.PROTOCOL_ERROR, "bad HEADERS block");
      return;
    }
    if (f.flags & FLAG_FIN) this.remoteFinish(s);
  }

  private onDataPiece(f: Extract<Frame, { type: "data" }>): void {
    const s = this.streams.get(f.streamId);
    if (!s) {
      // Data for a stream we closed is normal (in flight); for one never opened it is not.
      if (f.first && f.streamId > this.lastRemoteId && !this.goawaySent) {
        this.sendControl(encodeRstStream(f.streamId, RstStatus.INVALID_STREAM));
      }
      return;
    }
    if (s.remoteClosed) {
      if (f.first) this.resetStream(s, RstStatus.STREAM_ALREADY_CLOSED, "data after FIN");
      return;
    }
    const n = f.data.length;
    s.recvWindow -= n;
    if (this.enforcing() && s.recvWindow < 0) {
      this.resetStream(
        s,
        RstStatus.FLOW_CONTROL_ERROR,
        `peer overran the window by ${-s.recvWindow} bytes`,
      );
      return;
    }
    this.sessionRecvWindow -= n;
    if (this.enforcing() && this.sessionRecvWindow < 0) {
      this.fail(
        new SpdySessionError(`peer overran the session window by ${-this.sessionRecvWindow} bytes`),
      );
      return;
    }
    if (n > 0) {
      s.received += n;
      s.push(f.data);
      if (s.readableLength > this.opts.maxStreamBuffer) {
        this.overBuffered.add(s.id);
        this.updatePause();
      }
    }
    if (f.fin) this.remoteFinish(s);
  }

  private onRst(streamId: number, status: number): void {
    const s = this.streams.get(streamId);
    if (!s) return;
    s.reset = true;
    this.remove(s);
    s.destroy(new SpdyStreamError(streamId, `reset by the peer (status ${status})`, status));
  }

  private onSettings(entries: Array<{ id: number; value: number }>): void {
    for (const e of entries) {
      if (e.id !== Setting.INITIAL_WINDOW_SIZE) continue;
      if (e.value > MAX_WINDOW) {
        this.fail(new SpdySessionError(`SETTINGS_INITIAL_WINDOW_SIZE ${e.value} exceeds 2^31-1`));
        return;
      }
      // §2.6.8: a new initial window shifts every open stream's window by the difference.
      const delta = e.value - this.peerInitialWindow;
      this.peerInitialWindow = e.value;
      for (const s of this.streams.values()) s.sendWindow += delta;
      this.peerFlowControl = true;
    }
    this.wakeWindowWaiters();
  }

  private onPing(id: number): void {
    if (id % 2 === 1) {
      this.sendControl(encodePing(id));
      return;
    }
    const p = this.pings.get(id);
    if (!p) return;
    this.pings.delete(id);
    p.resolve(Number(process.hrtime.bigint() - p.start) / 1e6);
  }

  private onWindowUpdate(streamId: number, delta: number): void {
    this.peerFlowControl = true;
    if (streamId === 0) {
      this.sessionSendWindow += delta;
      if (this.sessionSendWindow > MAX_WINDOW) {
        this.fail(new SpdySessionError("session window grew past 2^31-1"));
        return;
      }
    } else {
      const s = this.streams.get(streamId);
      if (!s) return;
      s.sendWindow += delta;
      if (s.sendWindow > MAX_WINDOW) {
        this.resetStream(s, RstStatus.FLOW_CONTROL_ERROR, "window grew past 2^31-1");
        return;
      }
    }
    this.wakeWindowWaiters();
  }

  private remoteFinish(s: SpdyStream): void {
    s.remoteClosed = true;
    s.push(null);
    this.removeIfDone(s);
  }

  // ---- StreamOwner ----

  async sendData(s: SpdyStream, data: Buffer, fin: boolean): Promise<void> {
    // A unidirectional stream, or one already finished: end() has nothing to send.
    if (fin && data.length === 0 && s.localClosed) return;
    let off = 0;
    do {
      if (s.localClosed || s.reset || this.closed) {
        throw new SpdyStreamError(s.id, this.closed ? "connection closed" : "stream closed");
      }
      let room = data.length - off;
      if (this.enforcing() && room > 0) {
        await this.waitForWindow(s);
        if (s.reset || this.closed)
          throw new SpdyStreamError(s.id, "closed while waiting for window");
        room = Math.min(room, s.sendWindow, this.sessionSendWindow);
      }
      const n = Math.min(room, MAX_DATA_PIECE);
      const piece = data.subarray(off, off + n);
      off += n;
      s.sendWindow -= n;
      this.sessionSendWindow -= n;
      const last = off >= data.length;
      if (fin && last) s.localClosed = true;
      await this.enqueue(() => encodeData(s.id, piece, fin && last));
    } while (off < data.length);
    if (fin) this.removeIfDone(s);
  }

  consumed(s: SpdyStream, n: number): void {
    s.taken += n;
    if (this.closed || this.streams.get(s.id) !== s) return;
    const delta = s.taken - s.credited;
    // Credit in halves of the window: one WINDOW_UPDATE per 32 KiB read, not per frame.
    if (delta >= DEFAULT_INITIAL_WINDOW / 2 && !s.remoteClosed && !s.reset) {
      s.credited += delta;
      s.recvWindow += delta;
      this.sendControl(encodeWindowUpdate(s.id, delta));
      this.creditSession(delta);
    }
    if (this.overBuffered.has(s.id) && s.readableLength <= this.opts.maxStreamBuffer) {
      this.overBuffered.delete(s.id);
      this.updatePause();
    }
  }

  destroyed(s: SpdyStream, _error: Error | null): void {
    if (!s.reset && !(s.localClosed && s.remoteClosed) && !this.closed) {
      s.reset = true;
      this.sendControl(encodeRstStream(s.id, RstStatus.CANCEL));
    }
    this.remove(s);
  }

  // ---- output ----

  /** Serialises every write (header compression order, reply before data) with backpressure. */
  private enqueue(make: () => Buffer | Promise<Buffer>): Promise<void> {
    const p = this.chain.then(async () => {
      if (this.closed) throw new SpdySessionError("connection closed");
      const buf = await make();
      if (this.closed) throw new SpdySessionError("connection closed");
      if (!this.socket.write(buf)) await new Promise<void>((r) => this.drainWaiters.push(r));
    });
    this.chain = p.catch(() => {});
    return p;
  }

  private sendControl(buf: Buffer): void {
    this.enqueue(() => buf).catch(() => {});
  }

  private onDrain(): void {
    const w = this.drainWaiters;
    this.drainWaiters = [];
    for (const r of w) r();
    this.updatePause();
  }

  private enforcing(): boolean {
    return this.opts.flowControl === "strict" || this.peerFlowControl;
  }

  private waitForWindow(s: SpdyStream): Promise<void> {
    if (s.sendWindow > 0 && this.sessionSendWindow > 0) return Promise.resolve();
    return new Promise((resolve) => {
      const check = (): void => {
        if ((s.sendWindow > 0 && this.sessionSendWindow > 0) || s.reset || this.closed) resolve();
        else this.windowWaiters.push(check);
      };
      this.windowWaiters.push(check);
    });
  }

  private wakeWindowWaiters(): void {
    const w = this.windowWaiters;
    this.windowWaiters = [];
    for (const check of w) check();
  }

  private creditSession(delta: number): void {
    this.sessionUncredited += delta;
    if (this.sessionUncredited >= DEFAULT_INITIAL_WINDOW / 2) {
      this.sessionRecvWindow += this.sessionUncredited;
      this.sendControl(encodeWindowUpdate(0, this.sessionUncredited));
      this.sessionUncredited = 0;
    }
  }

  /** Pauses reading while frames pile up, a stream's reader lags, or the peer does not read. */
  private updatePause(): void {
    if (this.closed) return;
    const s = this.socket as Duplex & { writableLength: number };
    const want =
      this.queue.length > MAX_QUEUED_FRAMES ||
      this.queuedBytes > this.opts.maxStreamBuffer ||
      this.overBuffered.size > 0 ||
      s.writableLength > this.opts.maxStreamBuffer;
    if (want && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!want && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  // ---- ending ----

  private resetStream(s: SpdyStream, status: number, why: string): void {
    if (!s.reset) {
      s.reset = true;
      this.sendControl(encodeRstStream(s.id, status));
    }
    this.remove(s);
    s.destroy(new SpdyStreamError(s.id, why, status));
  }

  private removeIfDone(s: SpdyStream): void {
    if (s.localClosed && s.remoteClosed) this.remove(s);
  }

  private remove(s: SpdyStream): void {
    if (this.streams.get(s.id) !== s) return;
    this.streams.delete(s.id);
    this.overBuffered.delete(s.id);
    // Bytes the reader never took still count as consumed for the session window.
    const unread = s.received - s.credited;
    s.credited = s.received;
    if (unread > 0 && !this.closed) this.creditSession(unread);
    this.wakeWindowWaiters();
    this.finishIfDone();
  }

  private finishIfDone(): void {
    if (this.goawayReceived && this.streams.size === 0) this.close();
  }

  /** Protocol error: GOAWAY PROTOCOL_ERROR straight to the socket, then close it. */
  private fail(error: unknown): void {
    if (this.closed) return;
    const err = error instanceof Error ? error : new SpdySessionError(String(error));
    try {
      this.socket.write(encodeGoaway(this.lastRemoteId, GoawayStatus.PROTOCOL_ERROR));
      this.socket.end();
    } catch {
      // The socket may already be gone; the shutdown below is what matters.
    }
    const sock = this.socket;
    setTimeout(() => sock.destroy(), 1000).unref();
    this.shutdown(err, false);
  }

  private shutdown(error: Error | undefined, destroySocket = true): void {
    if (this.closed) return;
    this.closed = true;
    this.closeError = error;
    this.queue = [];
    for (const s of [...this.streams.values()]) {
      s.reset = true;
      s.destroy(
        new SpdyStreamError(
          s.id,
          error ? `connection failed: ${error.message}` : "connection closed",
        ),
      );
    }
    this.streams.clear();
    for (const p of this.pings.values()) p.reject(new SpdySessionError("connection closed"));
    this.pings.clear();
    this.wakeWindowWaiters();
    this.onDrain();
    this.inflater.close();
    this.deflater.close();
    if (error && destroySocket) this.socket.destroy();
    try {
      this.handlers?.close?.(error);
    } catch {
      // A handler's mistake must not escape into the socket's event loop.
    }
  }
}
