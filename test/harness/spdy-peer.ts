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
  private closedByTest = false;
  private readonly decoder = new FrameDecoder({ maxControlFrameBytes: 1 << 24 });
  private readonly inflater = new HeaderInflater(1 << 20);
  private readonly deflater = new HeaderDeflater();
  private waiters: Array<() => void> = [];
  private chain: Promise<void> = Promise.resolve();

  constructor(
    readonly socket: net.Socket,
    initial?: Buffer,
  ) {
    const onData = (chunk: Buffer): void => {
      const frames = this.decoder.decode(chunk);
      this.chain = this.chain.then(async () => {
        for (const f of frames) {
          // Once the test closed the peer, what was still in flight is of no interest.
          if (this.closedByTest) return;
          if ("headerBlock" in f) {
            const raw = await this.inflater.inflateBlock(f.headerBlock).catch((e: unknown) => {
              if (this.closedByTest) return undefined;
              throw e;
            });
            if (raw === undefined) return;
            this.frames.push({ ...f, headers: parseHeaderBlock(raw) });
          } else this.frames.push(f);
        }
        this.wake();
      });
    };
    socket.on("data", onData);
    if (initial && initial.length > 0) onData(initial);
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

  /** Does the HTTP upgrade to SPDY/3.1 on path, then speaks SPDY. Rejects unless 101. */
  static upgrade(port: number, path: string, protocol: string): Promise<SpdyPeer> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, "127.0.0.1", () => {
        s.write(
          `POST ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n` +
            `X-Stream-Protocol-Version: ${protocol}\r\n\r\n`,
        );
      });
      let buf = Buffer.alloc(0);
      const onData = (d: Buffer): void => {
        buf = Buffer.concat([buf, d]);
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        s.off("data", onData);
        const head = buf.subarray(0, end).toString();
        if (!head.startsWith("HTTP/1.1 101")) {
          s.destroy();
          reject(new Error(`upgrade refused: ${head.split("\r\n")[0]}`));
          return;
        }
        resolve(new SpdyPeer(s, buf.subarray(end + 4)));
      };
      s.on("data", onData);
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
    this.closedByTest = true;
    this.socket.destroy();
    this.inflater.close();
    this.deflater.close();
  }
}
