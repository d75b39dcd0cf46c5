// A scriptable SPDY/3 client for unit tests of the server session: sends frames built by
// hand (including malformed ones) and collects what the server sends, header blocks
// inflated. Interop with a real client is covered by the Go spdystream client.
import net from "node:net";
import { encodeSynStream, type Frame, FrameDecoder } from "../../src/runtime/streaming/spdy/frames";
import {
  HeaderDeflater,
  HeaderInflater,
  parseHeaderBlock,
  type SpdyHeaders,
} from "../../src/runtime/streaming/spdy/header-block";

export type PeerFrame = Frame & { headers?: SpdyHeaders };

export class SpdyPeer {
  readonly frames: PeerFrame[] = [];
  closed = false;
  private readonly decoder = new FrameDecoder({ maxControlFrameBytes: 1 << 24 });
  private readonly inflater = new HeaderInflater(1 << 20);
  private readonly deflater = new HeaderDeflater();
  private waiters: Array<() => void> = [];
  private chain: Promise<void> = Promise.resolve();

  constructor(readonly socket: net.Socket) {
    socket.on("data", (chunk: Buffer) => {
      const frames = this.decoder.decode(chunk);
      this.chain = this.chain.then(async () => {
        for (const f of frames) {
          if ("headerBlock" in f) {
            this.frames.push({
              ...f,
              headers: parseHeaderBlock(await this.inflater.inflateBlock(f.headerBlock)),
            });
          } else this.frames.push(f);
        }
        this.wake();
      });
    });
    socket.on("close", () => {
      this.chain = this.chain.then(() => {
        this.closed = true;
        this.wake();
      });
    });
    socket.on("error", () => {});
  }

  static connect(port: number): Promise<SpdyPeer> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, "127.0.0.1", () => resolve(new SpdyPeer(s)));
      s.once("error", reject);
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const r of w) r();
  }

  write(buf: Buffer): void {
    this.socket.write(buf);
  }

  async synStream(id: number, headers: SpdyHeaders, flags = 0): Promise<void> {
    this.write(encodeSynStream(id, flags, await this.deflater.deflateBlock(headers)));
  }

  /** Waits until pred holds over what arrived (or the socket closed), up to timeoutMs. */
  async until(pred: (p: SpdyPeer) => boolean, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(this)) {
      if (this.closed) throw new Error("peer: connection closed before the condition held");
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("peer: timed out waiting");
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Waits for the server to close the connection. */
  async untilClosed(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error("peer: connection still open");
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  dataOn(streamId: number): Buffer {
    return Buffer.concat(
      this.frames.flatMap((f) => (f.type === "data" && f.streamId === streamId ? [f.data] : [])),
    );
  }

  finOn(streamId: number): boolean {
    return this.frames.some((f) => f.type === "data" && f.streamId === streamId && f.fin);
  }

  of<T extends PeerFrame["type"]>(type: T): Array<Extract<PeerFrame, { type: T }>> {
    return this.frames.filter((f): f is Extract<PeerFrame, { type: T }> => f.type === type);
  }

  close(): void {
    this.socket.destroy();
    this.inflater.close();
    this.deflater.close();
  }
}
