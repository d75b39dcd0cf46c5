// One SPDY stream as a Node Duplex: the readable side is what the peer sends, the writable
// side goes out as DATA frames. Protocol state (half-closes, windows) is the session's.
import { Duplex } from "node:stream";
import type { SpdyHeaders } from "./header-block";

/** What a stream asks of its session. */
export interface StreamOwner {
  /** Sends data (split to fit the windows); resolves once the frames are written. */
  sendData(stream: SpdyStream, data: Buffer, fin: boolean): Promise<void>;
  /** The consumer took n bytes: credit windows, resume the socket. */
  consumed(stream: SpdyStream, n: number): void;
  /** The stream was destroyed locally (RST_STREAM CANCEL unless already closed). */
  destroyed(stream: SpdyStream, error: Error | null): void;
}

/** The peer reset the stream, or the session closed under it. */
export class SpdyStreamError extends Error {
  constructor(
    readonly streamId: number,
    message: string,
    readonly status?: number,
  ) {
    super(`SPDY stream ${streamId}: ${message}`);
    this.name = "SpdyStreamError";
  }
}

export class SpdyStream extends Duplex {
  /** We sent FIN / the peer sent FIN / a RST went either way. */
  localClosed = false;
  remoteClosed = false;
  reset = false;
  /** Bytes we may still send before a WINDOW_UPDATE. May go negative (initial-window shrink). */
  sendWindow: number;
  /** Bytes the peer may still send us. */
  recvWindow: number;
  /** Bytes pushed to the readable side, taken by the reader, and credited back to the peer. */
  received = 0;
  taken = 0;
  credited = 0;

  constructor(
    private readonly owner: StreamOwner,
    readonly id: number,
    readonly headers: SpdyHeaders,
    sendWindow: number,
    recvWindow: number,
  ) {
    super({ allowHalfOpen: true, readableHighWaterMark: recvWindow });
    this.sendWindow = sendWindow;
    this.recvWindow = recvWindow;
    // The session owns error reporting; an unheard 'error' must never crash the daemon.
    this.on("error", () => {});
  }

  /** The first value of a header, or undefined. */
  header(name: string): string | undefined {
    return this.headers.get(name.toLowerCase())?.[0];
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (error?: Error | null) => void): void {
    this.owner.sendData(this, chunk, false).then(() => cb(), cb);
  }

  override _final(cb: (error?: Error | null) => void): void {
    this.owner.sendData(this, Buffer.alloc(0), true).then(() => cb(), cb);
  }

  override _read(): void {
    // Data is pushed as frames arrive; consumption is seen in emit("data") below.
  }

  // Every byte a reader takes (flowing, read(), pipe, async iteration) leaves through a
  // "data" event: the one place that tells the session to credit the peer's window.
  override emit(event: string | symbol, ...args: unknown[]): boolean {
    const handled = super.emit(event, ...args);
    if (event === "data" && Buffer.isBuffer(args[0])) this.owner.consumed(this, args[0].length);
    return handled;
  }

  override _destroy(error: Error | null, cb: (error?: Error | null) => void): void {
    this.owner.destroyed(this, error);
    cb(error);
  }
}
