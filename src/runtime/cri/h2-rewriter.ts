// The client-to-server half of an HTTP/2 connection, rewritten so that Node's nghttp2
// accepts every gRPC client's :authority. nghttp2 resets any stream whose :authority holds
// a '/' (grpc-go before 1.5x and kubelet 1.26 send the socket path) or is empty, and Node
// has no option to turn that check off. Header blocks are decoded (tracking the client's
// HPACK dynamic table) and, once one needs a change, every block from then on is
// re-encoded statelessly with :authority set to "localhost". All other frames, and every
// block before the first change, pass byte for byte.
import {
  DEFAULT_HEADER_TABLE_SIZE,
  encodeStateless,
  type HeaderField,
  HpackDecoder,
  HpackError,
} from "./hpack";

/** RFC 9113 3.4. */
const CLIENT_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
/** RFC 9113 4.1. */
const FRAME_HEADER_LENGTH = 9;
// Frame types and flags, RFC 9113 6.2 and 6.10.
const TYPE_HEADERS = 0x1;
const TYPE_SETTINGS = 0x4;
const TYPE_CONTINUATION = 0x9;
const FLAG_ACK = 0x1;
const FLAG_END_STREAM = 0x1;
const FLAG_END_HEADERS = 0x4;
const FLAG_PADDED = 0x8;
const FLAG_PRIORITY = 0x20;
/** Stream dependency (4) and weight (1) of a HEADERS frame with PRIORITY. */
const PRIORITY_LENGTH = 5;
/** SETTINGS_MAX_FRAME_SIZE's initial value: no server may accept less (RFC 9113 6.5.2). */
const SAFE_FRAME_SIZE = 16384;

/** The :authority every server accepts, and what grpc-js, kubelet 1.27+ and C-core < 1.57 send. */
export const NORMAL_AUTHORITY = "localhost";

export class H2FrameError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "H2FrameError";
  }
}

export interface AuthoritySeen {
  /** What the client sent (`undefined`: no :authority). */
  original: string | undefined;
  /** Whether the block reached the server re-encoded. */
  rewritten: boolean;
}

export interface RewriterOptions {
  /** Called for each request header block (one with :authority or :path). */
  onRequest?: (seen: AuthoritySeen) => void;
  /** Bound on one header block's frame payloads, padding included (default 256 KiB). */
  maxHeaderBlock?: number;
  /** Bound on one decoded header list, RFC 7541 sizes (default 256 KiB). */
  maxHeaderList?: number;
  /** The SETTINGS_HEADER_TABLE_SIZE the server gave the client. */
  headerTableSize?: number;
  /** Drop the client's first SETTINGS ACK: it answers a preface the front sent itself. */
  dropFirstSettingsAck?: boolean;
}

interface Block {
  streamId: number;
  endStream: boolean;
  priority: Buffer | undefined;
  fragments: Buffer[];
  /** The frames as received, for forwarding unchanged. */
  raw: Buffer[];
  /** Payload octets so far, padding included. */
  length: number;
}

interface Pending {
  type: number;
  flags: number;
  streamId: number;
  header: Buffer;
  payload: Buffer;
  filled: number;
}

export class ClientStreamRewriter {
  private readonly decoder: HpackDecoder;
  private readonly maxHeaderBlock: number;
  private readonly maxHeaderList: number;
  private prefaceMatched = 0;
  /** Octets of a frame header split across chunks. */
  private readonly head = Buffer.alloc(FRAME_HEADER_LENGTH);
  private headFilled = 0;
  /** Payload octets still to forward of the frame passing through. */
  private passRemaining = 0;
  private pending: Pending | undefined;
  private block: Block | undefined;
  private rewriting = false;
  private settingsAcked = false;
  private failure: H2FrameError | undefined;

  constructor(private readonly options: RewriterOptions = {}) {
    this.decoder = new HpackDecoder(options.headerTableSize ?? DEFAULT_HEADER_TABLE_SIZE);
    this.maxHeaderBlock = options.maxHeaderBlock ?? 256 * 1024;
    this.maxHeaderList = options.maxHeaderList ?? 256 * 1024;
  }

  /** Whether header blocks are being re-encoded (after the first that needed it). */
  get isRewriting(): boolean {
    return this.rewriting;
  }

  /** Whether the first SETTINGS ACK was dropped (with `dropFirstSettingsAck`). */
  get firstSettingsAckDropped(): boolean {
    return this.settingsAcked;
  }

  /** The bytes to forward for `chunk`, in order. Throws H2FrameError on a malformed stream. */
  push(chunk: Buffer): Buffer[] {
    if (this.failure) throw this.failure;
    try {
      return this.consume(chunk);
    } catch (error) {
      if (error instanceof H2FrameError) this.failure = error;
      else if (error instanceof HpackError) {
        this.failure = new H2FrameError(`header block: ${error.message}`, { cause: error });
      } else {
        // A fault of the rewriter itself: the front still closes only this connection.
        this.failure = new H2FrameError("internal error", { cause: error });
        throw error;
      }
      throw this.failure;
    }
  }

  private consume(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let passStart = -1; // start of a run of chunk octets forwarded as they are
    const flushPass = (end: number) => {
      if (passStart >= 0 && end > passStart) out.push(chunk.subarray(passStart, end));
      passStart = -1;
    };
    let i = 0;
    while (i < chunk.length) {
      if (this.prefaceMatched < CLIENT_PREFACE.length) {
        const n = Math.min(CLIENT_PREFACE.length - this.prefaceMatched, chunk.length - i);
        const expected = CLIENT_PREFACE.subarray(this.prefaceMatched, this.prefaceMatched + n);
        if (!chunk.subarray(i, i + n).equals(expected)) {
          throw new H2FrameError("not an HTTP/2 client: the connection preface does not match");
        }
        if (passStart < 0) passStart = i;
        this.prefaceMatched += n;
        i += n;
      } else if (this.passRemaining > 0) {
        const n = Math.min(this.passRemaining, chunk.length - i);
        if (passStart < 0) passStart = i;
        this.passRemaining -= n;
        i += n;
      } else if (this.pending) {
        const p = this.pending;
        const n = Math.min(p.payload.length - p.filled, chunk.length - i);
        chunk.copy(p.payload, p.filled, i, i + n);
        p.filled += n;
        i += n;
        if (p.filled === p.payload.length) {
          this.pending = undefined;
          this.headerFrame(p, out);
        }
      } else if (this.headFilled === 0 && chunk.length - i >= FRAME_HEADER_LENGTH) {
        // The common case: the whole frame header is in this chunk.
        const header = chunk.subarray(i, i + FRAME_HEADER_LENGTH);
        const kind = this.classify(header);
        if (kind === "pass") {
          if (passStart < 0) passStart = i;
          this.passRemaining = header.readUIntBE(0, 3);
        } else {
          flushPass(i);
          if (kind === "block") this.startHeaderFrame(Buffer.from(header), out);
        }
        i += FRAME_HEADER_LENGTH;
      } else {
        // A frame header split across chunks: gather it aside.
        flushPass(i);
        const n = Math.min(FRAME_HEADER_LENGTH - this.headFilled, chunk.length - i);
        chunk.copy(this.head, this.headFilled, i, i + n);
        this.headFilled += n;
        i += n;
        if (this.headFilled === FRAME_HEADER_LENGTH) {
          this.headFilled = 0;
          const header = Buffer.from(this.head);
          const kind = this.classify(header);
          if (kind === "block") {
            this.startHeaderFrame(header, out);
          } else if (kind === "pass") {
            out.push(header);
            this.passRemaining = header.readUIntBE(0, 3);
          }
        }
      }
    }
    flushPass(chunk.length);
    return out;
  }

  /** What to do with a frame: part of a header block, forwarded, or dropped. */
  private classify(header: Buffer): "block" | "pass" | "drop" {
    const type = header[3];
    const streamId = header.readUInt32BE(5) & 0x7fffffff;
    if (
      type === TYPE_SETTINGS &&
      header[4] & FLAG_ACK &&
      this.options.dropFirstSettingsAck &&
      !this.settingsAcked
    ) {
      // The client acknowledging the front's own server preface: grpc-js never sent it.
      if (header.readUIntBE(0, 3) !== 0) throw new H2FrameError("SETTINGS ACK with a payload");
      this.settingsAcked = true;
      return "drop";
    }
    if (this.block) {
      // RFC 9113 6.10: nothing may come between a block's frames.
      if (type !== TYPE_CONTINUATION || streamId !== this.block.streamId) {
        throw new H2FrameError(
          `frame of type ${type} on stream ${streamId} inside the header block of stream ${this.block.streamId}`,
        );
      }
      return "block";
    }
    if (type === TYPE_CONTINUATION) {
      throw new H2FrameError(`CONTINUATION on stream ${streamId} outside a header block`);
    }
    return type === TYPE_HEADERS ? "block" : "pass";
  }

  private startHeaderFrame(header: Buffer, out: Buffer[]): void {
    const length = header.readUIntBE(0, 3);
    const type = header[3];
    const flags = header[4];
    const streamId = header.readUInt32BE(5) & 0x7fffffff;
    if (streamId === 0) throw new H2FrameError("HEADERS on stream 0");
    const sofar = this.block?.length ?? 0;
    if (sofar + length > this.maxHeaderBlock) {
      throw new H2FrameError(
        `header block of stream ${streamId} larger than ${this.maxHeaderBlock} octets`,
      );
    }
    const frame = { type, flags, streamId, header, payload: Buffer.alloc(length), filled: 0 };
    if (length === 0) this.headerFrame(frame, out);
    else this.pending = frame;
  }

  private headerFrame(frame: Pending, out: Buffer[]): void {
    const { payload, flags, streamId } = frame;
    let block = this.block;
    if (frame.type === TYPE_HEADERS) {
      let start = 0;
      let padding = 0;
      if (flags & FLAG_PADDED) {
        if (payload.length < 1)
          throw new H2FrameError(`HEADERS on stream ${streamId}: no pad length`);
        padding = payload[0];
        start = 1;
      }
      let priority: Buffer | undefined;
      if (flags & FLAG_PRIORITY) {
        priority = payload.subarray(start, start + PRIORITY_LENGTH);
        start += PRIORITY_LENGTH;
      }
      if (start + padding > payload.length) {
        throw new H2FrameError(
          `HEADERS on stream ${streamId}: padding and priority exceed the frame (RFC 9113 6.2)`,
        );
      }
      block = {
        streamId,
        endStream: (flags & FLAG_END_STREAM) !== 0,
        priority,
        fragments: [payload.subarray(start, payload.length - padding)],
        raw: [frame.header, payload],
        length: payload.length,
      };
      this.block = block;
    } else if (block) {
      block.fragments.push(payload);
      block.raw.push(frame.header, payload);
      block.length += payload.length;
    }
    if (block && flags & FLAG_END_HEADERS) {
      this.block = undefined;
      this.endBlock(block, out);
    }
  }

  private endBlock(block: Block, out: Buffer[]): void {
    const fragment =
      block.fragments.length === 1 ? block.fragments[0] : Buffer.concat(block.fragments);
    const fields = this.decoder.decode(fragment, this.maxHeaderList);
    let original: string | undefined;
    let request = false;
    let changes = false;
    for (const field of fields) {
      if (field.name === ":authority" || field.name === "host") {
        original ??= field.value;
        if (field.value !== NORMAL_AUTHORITY) changes = true;
      }
      if (field.name === ":authority" || field.name === ":path") request = true;
    }
    // Once one block was re-encoded, the server's dynamic table no longer follows the
    // client's, so every later block must be re-encoded too.
    if (changes) this.rewriting = true;
    if (request) this.options.onRequest?.({ original, rewritten: this.rewriting });
    if (!this.rewriting) {
      out.push(...block.raw);
      return;
    }
    const normal: HeaderField[] = fields.map((f) =>
      f.name === ":authority" || f.name === "host" ? { ...f, value: NORMAL_AUTHORITY } : f,
    );
    out.push(headerFrames(block, encodeStateless(normal, this.decoder.sizeUpdates)));
  }
}

/** A HEADERS frame and as many CONTINUATION frames as `encoded` needs. */
function headerFrames(block: Block, encoded: Buffer): Buffer {
  const frames: Buffer[] = [];
  let offset = 0;
  do {
    const first = offset === 0;
    const prefix = first && block.priority ? block.priority : undefined;
    const room = SAFE_FRAME_SIZE - (prefix?.length ?? 0);
    const piece = encoded.subarray(offset, offset + room);
    offset += piece.length;
    let flags = 0;
    if (first) {
      if (block.endStream) flags |= FLAG_END_STREAM;
      if (prefix) flags |= FLAG_PRIORITY;
    }
    if (offset >= encoded.length) flags |= FLAG_END_HEADERS;
    const header = Buffer.alloc(FRAME_HEADER_LENGTH);
    header.writeUIntBE((prefix?.length ?? 0) + piece.length, 0, 3);
    header[3] = first ? TYPE_HEADERS : TYPE_CONTINUATION;
    header[4] = flags;
    header.writeUInt32BE(block.streamId, 5);
    frames.push(header);
    if (prefix) frames.push(prefix);
    frames.push(piece);
  } while (offset < encoded.length);
  return Buffer.concat(frames);
}
