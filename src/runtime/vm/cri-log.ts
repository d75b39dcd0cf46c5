// kubelet's container log format (what `kubectl logs` reads):
//   2016-10-06T00:17:09.669794202Z stdout F text
// one line per output line; a line cut at the maximum length, or flushed before its
// newline arrived, is written as P pieces followed by the F piece that ends it.
import fs from "node:fs";
import path from "node:path";

export type CriStream = "stdout" | "stderr";
export type CriTag = "P" | "F";

export interface CriPiece {
  tag: CriTag;
  text: Buffer;
}

/** containerd's default max_container_log_line_size. */
export const DEFAULT_MAX_LINE_BYTES = 16 * 1024;

const NEWLINE = 0x0a;
const CR = 0x0d;

const clockBase = { epochNs: BigInt(Date.now()) * 1_000_000n, hr: process.hrtime.bigint() };

/** Wall-clock time in nanoseconds since the epoch: Date.now() at load plus the monotonic clock. */
export function nowNanos(): bigint {
  return clockBase.epochNs + (process.hrtime.bigint() - clockBase.hr);
}

/** Go's time.RFC3339Nano in UTC: trailing zeros of the fraction dropped, no fraction at all for 0. */
export function rfc3339Nano(epochNanos: bigint): string {
  const ms = Number(epochNanos / 1_000_000n);
  const secondsPart = new Date(ms).toISOString().slice(0, 19);
  const fraction = (epochNanos % 1_000_000_000n).toString().padStart(9, "0").replace(/0+$/, "");
  return `${secondsPart}${fraction ? `.${fraction}` : ""}Z`;
}

/** One CRI log line: `<time> <stream> <P|F> <text>\n`. */
export function formatCriLine(epochNanos: bigint, stream: CriStream, piece: CriPiece): Buffer {
  const head = Buffer.from(`${rfc3339Nano(epochNanos)} ${stream} ${piece.tag} `);
  return Buffer.concat([head, piece.text, Buffer.from([NEWLINE])]);
}

/**
 * Cuts a byte stream into CRI pieces. A serial console ends lines with CR LF: the CR
 * before a newline is dropped so that `kubectl logs` shows clean lines.
 */
export class CriLineSplitter {
  /** The unfinished line: at most maxLineBytes, kept in a buffer of its own. */
  private readonly pending: Buffer;
  private pendingLength = 0;
  /** pending + the next chunk, reused: a catch-up of GBs allocates nothing per chunk. */
  private work: Buffer = Buffer.alloc(0);

  constructor(private readonly maxLineBytes = DEFAULT_MAX_LINE_BYTES) {
    if (maxLineBytes < 1) throw new Error(`CRI log max line length ${maxLineBytes}`);
    this.pending = Buffer.alloc(maxLineBytes);
  }

  /** Bytes received but not yet returned in a piece. */
  get pendingBytes(): number {
    return this.pendingLength;
  }

  /** The pieces `chunk` completes, each with a copy of its bytes. */
  push(chunk: Buffer): CriPiece[] {
    const pieces: CriPiece[] = [];
    this.scan(chunk, (piece) => pieces.push({ tag: piece.tag, text: Buffer.from(piece.text) }));
    return pieces;
  }

  /**
   * Like push, without copying: each piece's text is a view that is valid only during
   * its call to `emit` (what a writer formats at once into its own buffer).
   */
  scan(chunk: Buffer, emit: (piece: CriPiece) => void): void {
    let data = chunk;
    if (this.pendingLength) {
      const length = this.pendingLength + chunk.length;
      if (this.work.length < length)
        this.work = Buffer.allocUnsafe(Math.max(length, 2 * this.work.length));
      this.pending.copy(this.work, 0, 0, this.pendingLength);
      chunk.copy(this.work, this.pendingLength);
      data = this.work.subarray(0, length);
    }
    // Offsets rather than a subarray per line: a console of short lines makes millions.
    let start = 0;
    for (let nl = data.indexOf(NEWLINE, start); nl >= 0; nl = data.indexOf(NEWLINE, start)) {
      const end = nl > start && data[nl - 1] === CR ? nl - 1 : nl;
      this.cut(data, start, end, "F", emit);
      start = nl + 1;
    }
    // A line longer than the maximum is written in P pieces while it is still arriving.
    const rest = data.length - start;
    const whole = Math.floor(rest / this.maxLineBytes) * this.maxLineBytes;
    const keep = whole === rest ? whole - this.maxLineBytes : whole;
    if (keep > 0) this.cut(data, start, start + keep, "P", emit);
    this.pendingLength = data.copy(this.pending, 0, start + Math.max(keep, 0));
  }

  /** The unfinished line as a P piece (a prompt waiting for input must still be seen). */
  flushPartial(): CriPiece[] {
    return this.takePending("P");
  }

  /** At the end of the stream: the unfinished line, ended. */
  end(): CriPiece[] {
    return this.takePending("F");
  }

  private takePending(tag: CriTag): CriPiece[] {
    if (!this.pendingLength) return [];
    const text = Buffer.from(this.pending.subarray(0, this.pendingLength));
    this.pendingLength = 0;
    return [{ tag, text }];
  }

  /** data[start, end) in pieces of at most maxLineBytes: all P but the last, which gets `lastTag`. */
  private cut(
    data: Buffer,
    start: number,
    end: number,
    lastTag: CriTag,
    emit: (piece: CriPiece) => void,
  ): void {
    let at = start;
    while (end - at > this.maxLineBytes) {
      emit({ tag: "P", text: data.subarray(at, at + this.maxLineBytes) });
      at += this.maxLineBytes;
    }
    emit({ tag: lastTag, text: data.subarray(at, end) });
  }
}

/** A writer's buffers start this big and grow to what its caller gathers before a flush. */
const WRITER_BUFFER_BYTES = 64 * 1024;

/**
 * The CRI log file: appended to, reopened at its path after kubelet rotates it. Lines
 * are formatted into a buffer of the writer's own (two, taking turns with the write in
 * flight), so logging allocates nothing per line.
 */
export class CriLogWriter {
  private buffer = Buffer.allocUnsafe(WRITER_BUFFER_BYTES);
  private spare = Buffer.allocUnsafe(WRITER_BUFFER_BYTES);
  private used = 0;
  /** The time prefix of what is in the buffer, formatted once at its first line. */
  private heads: Record<CriTag, Buffer> | undefined;
  private flushing: Promise<void> = Promise.resolve();

  private constructor(
    readonly logPath: string,
    private file: fs.promises.FileHandle,
    private readonly stream: CriStream,
  ) {}

  static async open(logPath: string, stream: CriStream = "stdout"): Promise<CriLogWriter> {
    return new CriLogWriter(logPath, await openLog(logPath), stream);
  }

  /** Bytes appended and not yet written. */
  get bufferedBytes(): number {
    return this.used;
  }

  /** Formats a piece into the buffer (its text is copied: a view may be passed). */
  append(piece: CriPiece, at: bigint = nowNanos()): void {
    if (!this.heads) {
      const time = `${rfc3339Nano(at)} ${this.stream} `;
      this.heads = { P: Buffer.from(`${time}P `), F: Buffer.from(`${time}F `) };
    }
    const head = this.heads[piece.tag];
    const need = this.used + head.length + piece.text.length + 1;
    if (need > this.buffer.length) {
      const bigger = Buffer.allocUnsafe(Math.max(need, 2 * this.buffer.length));
      this.buffer.copy(bigger, 0, 0, this.used);
      this.buffer = bigger;
    }
    this.used += head.copy(this.buffer, this.used);
    this.used += piece.text.copy(this.buffer, this.used);
    this.buffer[this.used++] = NEWLINE;
  }

  /** Writes what has been appended. */
  flush(): Promise<void> {
    const flushed = this.flushing.then(async () => {
      if (!this.used) return;
      const full = this.buffer.subarray(0, this.used);
      // Appends go on into the other buffer while this one is written.
      [this.buffer, this.spare] = [this.spare, this.buffer];
      this.used = 0;
      this.heads = undefined;
      await this.file.write(full);
    });
    this.flushing = flushed.catch(() => {});
    return flushed;
  }

  async write(pieces: CriPiece[], at: bigint = nowNanos()): Promise<void> {
    for (const piece of pieces) this.append(piece, at);
    await this.flush();
  }

  async reopen(): Promise<void> {
    await this.flushing;
    const next = await openLog(this.logPath);
    const previous = this.file;
    this.file = next;
    await previous.close();
  }

  async close(): Promise<void> {
    await this.flush().catch(() => {});
    await this.file.close();
  }
}

/** Append-only, and never through a symlink: vmlet writes the log as root. */
const LOG_OPEN_FLAGS =
  fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW;

async function openLog(logPath: string): Promise<fs.promises.FileHandle> {
  await fs.promises.mkdir(path.dirname(logPath), { recursive: true });
  try {
    return await fs.promises.open(logPath, LOG_OPEN_FLAGS, 0o640);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ELOOP") {
      throw new Error(`CRI log ${logPath} is a symlink: not followed`, { cause: error });
    }
    throw error;
  }
}
