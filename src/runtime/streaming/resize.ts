// The resize stream: a sequence of JSON objects {"Width":n,"Height":n} (Go's json.Decoder
// on the client writes them back to back), split here without trusting their framing.

export interface TerminalSize {
  width: number;
  height: number;
}

/** One resize message may not be larger than this. */
const MAX_MESSAGE_BYTES = 4096;
const MAX_DIMENSION = 0xffff; // TerminalSize fields are uint16 in client-go

export class ResizeParseError extends Error {
  constructor(message: string) {
    super(`resize stream: ${message}`);
    this.name = "ResizeParseError";
  }
}

/** Feeds bytes, returns the complete sizes. Throws ResizeParseError (the stream is then dropped). */
export class ResizeDecoder {
  private buf = "";
  private depth = 0;
  private inString = false;
  private escaped = false;
  private scanned = 0;

  push(chunk: Buffer): TerminalSize[] {
    this.buf += chunk.toString("utf8");
    const out: TerminalSize[] = [];
    let start = 0;
    for (let i = this.scanned; i < this.buf.length; i++) {
      const c = this.buf[i];
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === "\\") this.escaped = true;
        else if (c === '"') this.inString = false;
        continue;
      }
      if (c === '"') this.inString = true;
      else if (c === "{") this.depth++;
      else if (c === "}") {
        this.depth--;
        if (this.depth < 0) throw new ResizeParseError("unbalanced '}'");
        if (this.depth === 0) {
          out.push(parseSize(this.buf.slice(start, i + 1)));
          start = i + 1;
        }
      } else if (this.depth === 0 && !/\s/.test(c)) {
        throw new ResizeParseError(`unexpected ${JSON.stringify(c)} between messages`);
      }
    }
    this.buf = this.buf.slice(start);
    this.scanned = this.buf.length;
    if (this.depth === 0) {
      this.buf = "";
      this.scanned = 0;
    }
    if (this.buf.length > MAX_MESSAGE_BYTES)
      throw new ResizeParseError(`message over ${MAX_MESSAGE_BYTES} bytes`);
    return out;
  }
}

function parseSize(text: string): TerminalSize {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new ResizeParseError(`not JSON: ${text.slice(0, 80)}`);
  }
  const o = v as { Width?: unknown; Height?: unknown };
  const dim = (name: string, x: unknown): number => {
    if (typeof x !== "number" || !Number.isInteger(x) || x < 0 || x > MAX_DIMENSION) {
      throw new ResizeParseError(
        `${name} must be an integer 0..${MAX_DIMENSION}, got ${JSON.stringify(x)}`,
      );
    }
    return x;
  };
  return { width: dim("Width", o.Width), height: dim("Height", o.Height) };
}

/**
 * The sizes as an async iterable for a target. Only the latest sizes matter, so a target
 * that never reads holds at most a few.
 */
export class ResizeQueue implements AsyncIterable<TerminalSize> {
  private readonly pending: TerminalSize[] = [];
  private ended = false;
  private wake: (() => void) | undefined;

  push(size: TerminalSize): void {
    this.pending.push(size);
    if (this.pending.length > 8) this.pending.shift();
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<TerminalSize> {
    for (;;) {
      const next = this.pending.shift();
      if (next) {
        yield next;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((r) => {
        this.wake = r;
      });
      this.wake = undefined;
    }
  }
}
