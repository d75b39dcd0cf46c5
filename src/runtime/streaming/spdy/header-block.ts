// SPDY/3 name/value header blocks (draft §2.6.10): a 32-bit count, then 32-bit-length
// names and values (a value may hold several, NUL-separated), zlib-compressed with the
// SPDY/3 dictionary in one context per direction for the life of the connection.
import zlib from "node:zlib";

/** Header names are lowercase on the wire; a name maps to its values in order. */
export type SpdyHeaders = Map<string, string[]>;

// biome-ignore format: the word list as the spec prints it
const DICTIONARY_WORDS = [
  "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
  "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
  "cache-control", "connection", "content-base", "content-encoding", "content-language",
  "content-length", "content-location", "content-md5", "content-range", "content-type", "date",
  "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since", "if-none-match",
  "if-range", "if-unmodified-since", "last-modified", "location", "max-forwards", "pragma",
  "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after", "server", "te",
  "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
  "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url", "public",
  "set-cookie", "keep-alive", "origin",
];

const DICTIONARY_TAIL =
  "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505" +
  "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request" +
  "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented" +
  "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 " +
  "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif," +
  "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=" +
  "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/** The SPDY/3 zlib dictionary (draft §2.6.10.1): each word with a 32-bit length, then the tail. */
export const SPDY3_DICTIONARY: Buffer = Buffer.concat([
  ...DICTIONARY_WORDS.map((w) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(w.length, 0);
    return Buffer.concat([len, Buffer.from(w, "latin1")]);
  }),
  Buffer.from(DICTIONARY_TAIL, "latin1"),
]);

/** A header block whose content is wrong (the stream is refused; the zlib context is fine). */
export class HeaderBlockError extends Error {
  constructor(message: string) {
    super(`SPDY header block: ${message}`);
    this.name = "HeaderBlockError";
  }
}

/** Parses a decompressed header block. Throws HeaderBlockError. */
export function parseHeaderBlock(b: Buffer): SpdyHeaders {
  let off = 0;
  const u32 = (what: string): number => {
    if (off + 4 > b.length) throw new HeaderBlockError(`truncated at ${what} (offset ${off})`);
    const v = b.readUInt32BE(off);
    off += 4;
    return v;
  };
  const bytes = (what: string, n: number): Buffer => {
    if (n > b.length - off) throw new HeaderBlockError(`${what} of ${n} bytes overruns the block`);
    const v = b.subarray(off, off + n);
    off += n;
    return v;
  };
  const count = u32("count");
  // Each pair takes at least 8 bytes: refuse absurd counts before looping.
  if (count > (b.length - 4) / 8) throw new HeaderBlockError(`count ${count} exceeds the block`);
  const headers: SpdyHeaders = new Map();
  for (let i = 0; i < count; i++) {
    const name = bytes("name", u32("name length")).toString("latin1");
    if (name.length === 0) throw new HeaderBlockError(`empty name in pair ${i}`);
    if (name !== name.toLowerCase())
      throw new HeaderBlockError(`name ${JSON.stringify(name)} is not lowercase`);
    if (headers.has(name)) throw new HeaderBlockError(`duplicate name ${JSON.stringify(name)}`);
    const value = bytes(`value of ${name}`, u32(`value length of ${name}`)).toString("latin1");
    headers.set(name, value.split("\0"));
  }
  if (off !== b.length) throw new HeaderBlockError(`${b.length - off} bytes after the last pair`);
  return headers;
}

export function serializeHeaderBlock(headers: SpdyHeaders): Buffer {
  const parts: Buffer[] = [];
  const u32 = (n: number): void => {
    const x = Buffer.alloc(4);
    x.writeUInt32BE(n, 0);
    parts.push(x);
  };
  u32(headers.size);
  for (const [name, values] of headers) {
    const n = Buffer.from(name.toLowerCase(), "latin1");
    const v = Buffer.from(values.join("\0"), "latin1");
    u32(n.length);
    parts.push(n);
    u32(v.length);
    parts.push(v);
  }
  return Buffer.concat(parts);
}

/** The peer's compression context broke (or a block inflated past the cap): fatal for the session. */
export class HeaderCompressionError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(`SPDY header compression: ${message}`, options);
    this.name = "HeaderCompressionError";
  }
}

/**
 * The receive side: one inflate context for every block the peer sends. Calls must not
 * overlap (the session feeds blocks one at a time, in frame order).
 */
export class HeaderInflater {
  private readonly inflate = zlib.createInflate({ dictionary: SPDY3_DICTIONARY });
  private out: Buffer[] = [];
  private outBytes = 0;
  private failure: Error | undefined;
  private onFailure: ((e: Error) => void) | undefined;

  constructor(private readonly maxHeaderBytes: number) {
    this.inflate.on("data", (chunk: Buffer) => {
      this.outBytes += chunk.length;
      if (this.outBytes > this.maxHeaderBytes) {
        // A zlib bomb: stop inflating at once rather than after the flush.
        this.fail(new HeaderCompressionError(`block inflates past ${this.maxHeaderBytes} bytes`));
        this.inflate.destroy();
        return;
      }
      this.out.push(chunk);
    });
    this.inflate.on("error", (e) =>
      this.fail(new HeaderCompressionError("inflate failed", { cause: e })),
    );
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    this.onFailure?.(e);
  }

  /** Inflates one block. Rejects with HeaderCompressionError; the result may still be invalid content. */
  inflateBlock(block: Buffer): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    this.out = [];
    this.outBytes = 0;
    return new Promise((resolve, reject) => {
      this.onFailure = reject;
      this.inflate.write(block);
      this.inflate.flush(zlib.constants.Z_SYNC_FLUSH, () => {
        this.onFailure = undefined;
        if (this.failure) reject(this.failure);
        else resolve(Buffer.concat(this.out));
      });
    });
  }

  /** Ends the context; a block still being inflated rejects rather than reading back empty. */
  close(): void {
    this.fail(new HeaderCompressionError("header context closed"));
    this.inflate.destroy();
  }
}

/** The send side: one deflate context for every block sent on the connection. */
export class HeaderDeflater {
  private readonly deflate = zlib.createDeflate({ dictionary: SPDY3_DICTIONARY });
  private out: Buffer[] = [];
  private failure: Error | undefined;

  constructor() {
    this.deflate.on("data", (chunk: Buffer) => this.out.push(chunk));
    this.deflate.on("error", (e) => {
      this.failure = new HeaderCompressionError("deflate failed", { cause: e });
    });
  }

  /** Calls must not overlap (the session's write queue serialises them). */
  deflateBlock(headers: SpdyHeaders): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    this.out = [];
    return new Promise((resolve, reject) => {
      this.deflate.write(serializeHeaderBlock(headers));
      this.deflate.flush(zlib.constants.Z_SYNC_FLUSH, () => {
        // A context destroyed mid-flush has cut the block short.
        if (this.deflate.destroyed)
          this.failure ??= new HeaderCompressionError("header context closed");
        if (this.failure) reject(this.failure);
        else resolve(Buffer.concat(this.out));
      });
    });
  }

  close(): void {
    this.failure ??= new HeaderCompressionError("header context closed");
    this.deflate.destroy();
  }
}

/** Convenience: headers from a plain object (names lowercased). */
export function spdyHeaders(obj: Record<string, string | string[]>): SpdyHeaders {
  const h: SpdyHeaders = new Map();
  for (const [k, v] of Object.entries(obj)) h.set(k.toLowerCase(), Array.isArray(v) ? v : [v]);
  return h;
}
