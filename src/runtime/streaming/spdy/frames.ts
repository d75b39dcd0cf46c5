// SPDY/3.1 frame codec (draft-mbelshe-httpbis-spdy-00 §2.2, SPDY/3.1 §2.6.8 for the
// session-level WINDOW_UPDATE). Pure bytes in, frames out: header blocks stay compressed
// here; header-block.ts owns their zlib contexts.

export const SPDY_VERSION = 3;

export const FrameType = {
  SYN_STREAM: 1,
  SYN_REPLY: 2,
  RST_STREAM: 3,
  SETTINGS: 4,
  PING: 6,
  GOAWAY: 7,
  HEADERS: 8,
  WINDOW_UPDATE: 9,
} as const;

export const FLAG_FIN = 0x01;
export const FLAG_UNIDIRECTIONAL = 0x02;

export const RstStatus = {
  PROTOCOL_ERROR: 1,
  INVALID_STREAM: 2,
  REFUSED_STREAM: 3,
  UNSUPPORTED_VERSION: 4,
  CANCEL: 5,
  INTERNAL_ERROR: 6,
  FLOW_CONTROL_ERROR: 7,
  STREAM_IN_USE: 8,
  STREAM_ALREADY_CLOSED: 9,
  FRAME_TOO_LARGE: 11,
} as const;

export const GoawayStatus = { OK: 0, PROTOCOL_ERROR: 1, INTERNAL_ERROR: 2 } as const;

export const Setting = { MAX_CONCURRENT_STREAMS: 4, INITIAL_WINDOW_SIZE: 7 } as const;

export const MAX_STREAM_ID = 0x7fffffff;
export const MAX_WINDOW = 0x7fffffff;
export const MAX_FRAME_LENGTH = 0xffffff;
/** Every frame starts with 8 bytes: a control word (or stream id), then flags and length. */
export const FRAME_HEADER_BYTES = 8;

export type Frame =
  /** One piece of a data frame: a large frame arrives as several pieces, fin on the last. */
  | { type: "data"; streamId: number; data: Buffer; first: boolean; fin: boolean }
  | {
      type: "syn_stream";
      streamId: number;
      associatedId: number;
      priority: number;
      flags: number;
      headerBlock: Buffer;
    }
  | { type: "syn_reply"; streamId: number; flags: number; headerBlock: Buffer }
  | { type: "headers"; streamId: number; flags: number; headerBlock: Buffer }
  | { type: "rst_stream"; streamId: number; status: number }
  | { type: "settings"; flags: number; entries: SettingEntry[] }
  | { type: "ping"; id: number }
  | { type: "goaway"; lastGoodStreamId: number; status: number }
  | { type: "window_update"; streamId: number; delta: number };

export interface SettingEntry {
  flags: number;
  id: number;
  value: number;
}

/** Malformed framing: the session answers with GOAWAY PROTOCOL_ERROR and closes. */
export class SpdyFrameError extends Error {
  constructor(message: string) {
    super(`SPDY framing: ${message}`);
    this.name = "SpdyFrameError";
  }
}

export interface DecoderLimits {
  /** Largest control frame payload accepted (header blocks are the only big ones). */
  maxControlFrameBytes: number;
}

type State =
  | { kind: "header" }
  | { kind: "control"; type: number; flags: number; length: number }
  | { kind: "skip"; remaining: number }
  | { kind: "data"; streamId: number; fin: boolean; remaining: number; first: boolean };

/**
 * Incremental decoder. Buffers at most one frame header or one control frame (bounded by
 * maxControlFrameBytes); data payloads are passed on as they arrive, never accumulated.
 */
export class FrameDecoder {
  private pending: Buffer = Buffer.alloc(0);
  private state: State = { kind: "header" };

  constructor(private readonly limits: DecoderLimits) {}

  /** Throws SpdyFrameError on malformed input; the decoder is unusable afterwards. */
  decode(chunk: Buffer): Frame[] {
    const frames: Frame[] = [];
    let buf = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = Buffer.alloc(0);
    for (;;) {
      const st = this.state;
      if (st.kind === "data") {
        if (st.remaining === 0) {
          // Zero-length data frame: the FIN carrier.
          frames.push({
            type: "data",
            streamId: st.streamId,
            data: buf.subarray(0, 0),
            first: true,
            fin: st.fin,
          });
          this.state = { kind: "header" };
          continue;
        }
        if (buf.length === 0) break;
        const n = Math.min(buf.length, st.remaining);
        st.remaining -= n;
        const last = st.remaining === 0;
        frames.push({
          type: "data",
          streamId: st.streamId,
          data: buf.subarray(0, n),
          first: st.first,
          fin: last && st.fin,
        });
        st.first = false;
        buf = buf.subarray(n);
        if (last) this.state = { kind: "header" };
        continue;
      }
      if (st.kind === "skip") {
        const n = Math.min(buf.length, st.remaining);
        st.remaining -= n;
        buf = buf.subarray(n);
        if (st.remaining > 0) break;
        this.state = { kind: "header" };
        continue;
      }
      if (st.kind === "header") {
        if (buf.length < FRAME_HEADER_BYTES) break;
        const word = buf.readUInt32BE(0);
        const flags = buf[4];
        const length = buf.readUIntBE(5, 3);
        buf = buf.subarray(FRAME_HEADER_BYTES);
        if ((word & 0x80000000) === 0) {
          const streamId = word & MAX_STREAM_ID;
          if (streamId === 0) throw new SpdyFrameError("data frame on stream 0");
          this.state = {
            kind: "data",
            streamId,
            fin: (flags & FLAG_FIN) !== 0,
            remaining: length,
            first: true,
          };
          continue;
        }
        const version = (word >>> 16) & 0x7fff;
        const type = word & 0xffff;
        if (version !== SPDY_VERSION) {
          throw new SpdyFrameError(`control frame version ${version}, want ${SPDY_VERSION}`);
        }
        if (!isKnownType(type)) {
          // §2.2.1: unknown control frame types are ignored.
          this.state = { kind: "skip", remaining: length };
          continue;
        }
        if (length > this.limits.maxControlFrameBytes) {
          throw new SpdyFrameError(
            `control frame type ${type} of ${length} bytes exceeds ${this.limits.maxControlFrameBytes}`,
          );
        }
        this.state = { kind: "control", type, flags, length };
        continue;
      }
      // st.kind === "control"
      if (buf.length < st.length) break;
      frames.push(parseControl(st.type, st.flags, buf.subarray(0, st.length)));
      buf = buf.subarray(st.length);
      this.state = { kind: "header" };
    }
    // Copy the tail so the caller's chunk is not retained by a slice.
    if (buf.length > 0) this.pending = Buffer.from(buf);
    return frames;
  }
}

const KNOWN_TYPES = new Set<number>(Object.values(FrameType) as number[]);

function isKnownType(type: number): boolean {
  return KNOWN_TYPES.has(type);
}

function parseControl(type: number, flags: number, p: Buffer): Frame {
  const need = (what: string, ok: boolean): void => {
    if (!ok) throw new SpdyFrameError(`${what}: bad length ${p.length}`);
  };
  const streamIdAt = (what: string, off: number): number => {
    const id = p.readUInt32BE(off) & MAX_STREAM_ID;
    if (id === 0) throw new SpdyFrameError(`${what} on stream 0`);
    return id;
  };
  switch (type) {
    case FrameType.SYN_STREAM:
      need("SYN_STREAM", p.length >= 10);
      return {
        type: "syn_stream",
        streamId: streamIdAt("SYN_STREAM", 0),
        associatedId: p.readUInt32BE(4) & MAX_STREAM_ID,
        priority: p[8] >>> 5,
        flags,
        headerBlock: Buffer.from(p.subarray(10)),
      };
    case FrameType.SYN_REPLY:
      need("SYN_REPLY", p.length >= 4);
      return {
        type: "syn_reply",
        streamId: streamIdAt("SYN_REPLY", 0),
        flags,
        headerBlock: Buffer.from(p.subarray(4)),
      };
    case FrameType.HEADERS:
      need("HEADERS", p.length >= 4);
      return {
        type: "headers",
        streamId: streamIdAt("HEADERS", 0),
        flags,
        headerBlock: Buffer.from(p.subarray(4)),
      };
    case FrameType.RST_STREAM: {
      need("RST_STREAM", p.length === 8);
      const status = p.readUInt32BE(4);
      if (status === 0) throw new SpdyFrameError("RST_STREAM with status 0");
      return { type: "rst_stream", streamId: streamIdAt("RST_STREAM", 0), status };
    }
    case FrameType.SETTINGS: {
      need("SETTINGS", p.length >= 4);
      const count = p.readUInt32BE(0);
      need("SETTINGS", p.length === 4 + 8 * count);
      const entries: SettingEntry[] = [];
      for (let i = 0; i < count; i++) {
        const off = 4 + 8 * i;
        entries.push({
          flags: p[off],
          id: p.readUIntBE(off + 1, 3),
          value: p.readUInt32BE(off + 4),
        });
      }
      return { type: "settings", flags, entries };
    }
    case FrameType.PING:
      need("PING", p.length === 4);
      return { type: "ping", id: p.readUInt32BE(0) };
    case FrameType.GOAWAY:
      need("GOAWAY", p.length === 8);
      return {
        type: "goaway",
        lastGoodStreamId: p.readUInt32BE(0) & MAX_STREAM_ID,
        status: p.readUInt32BE(4),
      };
    case FrameType.WINDOW_UPDATE: {
      need("WINDOW_UPDATE", p.length === 8);
      const delta = p.readUInt32BE(4) & MAX_WINDOW;
      if (delta === 0) throw new SpdyFrameError("WINDOW_UPDATE with delta 0");
      // Stream 0 is the SPDY/3.1 session window.
      return { type: "window_update", streamId: p.readUInt32BE(0) & MAX_STREAM_ID, delta };
    }
    default:
      throw new SpdyFrameError(`unexpected control frame type ${type}`);
  }
}

function controlHeader(type: number, flags: number, length: number): Buffer {
  if (length > MAX_FRAME_LENGTH) throw new RangeError(`SPDY control frame of ${length} bytes`);
  const h = Buffer.alloc(FRAME_HEADER_BYTES);
  h.writeUInt32BE((0x80000000 | (SPDY_VERSION << 16) | type) >>> 0, 0);
  h[4] = flags;
  h.writeUIntBE(length, 5, 3);
  return h;
}

export function encodeData(streamId: number, data: Buffer, fin: boolean): Buffer {
  if (data.length > MAX_FRAME_LENGTH)
    throw new RangeError(`SPDY data frame of ${data.length} bytes`);
  const h = Buffer.alloc(FRAME_HEADER_BYTES);
  h.writeUInt32BE(streamId & MAX_STREAM_ID, 0);
  h[4] = fin ? FLAG_FIN : 0;
  h.writeUIntBE(data.length, 5, 3);
  return Buffer.concat([h, data]);
}

export function encodeSynStream(
  streamId: number,
  flags: number,
  headerBlock: Buffer,
  associatedId = 0,
  priority = 0,
): Buffer {
  const body = Buffer.alloc(10);
  body.writeUInt32BE(streamId & MAX_STREAM_ID, 0);
  body.writeUInt32BE(associatedId & MAX_STREAM_ID, 4);
  body[8] = (priority & 0x7) << 5;
  return Buffer.concat([
    controlHeader(FrameType.SYN_STREAM, flags, 10 + headerBlock.length),
    body,
    headerBlock,
  ]);
}

export function encodeSynReply(streamId: number, flags: number, headerBlock: Buffer): Buffer {
  return encodeStreamHeaders(FrameType.SYN_REPLY, streamId, flags, headerBlock);
}

export function encodeHeaders(streamId: number, flags: number, headerBlock: Buffer): Buffer {
  return encodeStreamHeaders(FrameType.HEADERS, streamId, flags, headerBlock);
}

function encodeStreamHeaders(type: number, streamId: number, flags: number, block: Buffer): Buffer {
  const id = Buffer.alloc(4);
  id.writeUInt32BE(streamId & MAX_STREAM_ID, 0);
  return Buffer.concat([controlHeader(type, flags, 4 + block.length), id, block]);
}

export function encodeRstStream(streamId: number, status: number): Buffer {
  const b = controlHeader(FrameType.RST_STREAM, 0, 8);
  const p = Buffer.alloc(8);
  p.writeUInt32BE(streamId & MAX_STREAM_ID, 0);
  p.writeUInt32BE(status, 4);
  return Buffer.concat([b, p]);
}

export function encodeSettings(entries: SettingEntry[], flags = 0): Buffer {
  const p = Buffer.alloc(4 + 8 * entries.length);
  p.writeUInt32BE(entries.length, 0);
  entries.forEach((e, i) => {
    p[4 + 8 * i] = e.flags;
    p.writeUIntBE(e.id, 5 + 8 * i, 3);
    p.writeUInt32BE(e.value, 8 + 8 * i);
  });
  return Buffer.concat([controlHeader(FrameType.SETTINGS, flags, p.length), p]);
}

export function encodePing(id: number): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(id >>> 0, 0);
  return Buffer.concat([controlHeader(FrameType.PING, 0, 4), p]);
}

export function encodeGoaway(lastGoodStreamId: number, status: number): Buffer {
  const p = Buffer.alloc(8);
  p.writeUInt32BE(lastGoodStreamId & MAX_STREAM_ID, 0);
  p.writeUInt32BE(status, 4);
  return Buffer.concat([controlHeader(FrameType.GOAWAY, 0, 8), p]);
}

export function encodeWindowUpdate(streamId: number, delta: number): Buffer {
  const p = Buffer.alloc(8);
  p.writeUInt32BE(streamId & MAX_STREAM_ID, 0);
  p.writeUInt32BE(delta & MAX_WINDOW, 4);
  return Buffer.concat([controlHeader(FrameType.WINDOW_UPDATE, 0, 8), p]);
}
