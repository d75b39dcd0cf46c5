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

export function formatCriLine(epochNanos: bigint, stream: CriStream, piece: CriPiece): Buffer {
  return formatCriLines(epochNanos, stream, [piece]);
}

/** Pieces logged at one time, as one buffer: the time is formatted once, not per line. */
export function formatCriLines(epochNanos: bigint, stream: CriStream, pieces: CriPiece[]): Buffer {
  const time = `${rfc3339Nano(epochNanos)} ${stream} `;
  const heads = { P: Buffer.from(`${time}P `), F: Buffer.from(`${time}F `) };
  let total = 0;
  for (const piece of pieces) total += heads[piece.tag].length + piece.text.length + 1;
  const out = Buffer.allocUnsafe(total);
  let at = 0;
  for (const piece of pieces) {
    at += heads[piece.tag].copy(out, at);
    at += piece.text.copy(out, at);
    out[at++] = NEWLINE;
  }
  return out;
}

/**
 * Cuts a byte stream into CRI pieces. A serial console ends lines with CR LF: the CR
 * before a newline is dropped so that `kubectl logs` shows clean lines.
 */
export class CriLineSplitter {
  private pending: Buffer = Buffer.alloc(0);

  constructor(private readonly maxLineBytes = DEFAULT_MAX_LINE_BYTES) {
    if (maxLineBytes < 1) throw new Error(`CRI log max line length ${maxLineBytes}`);
  }

  /** Bytes received but not yet returned in a piece. */
  get pendingBytes(): number {
    return this.pending.length;
  }

  push(chunk: Buffer): CriPiece[] {
    const pieces: CriPiece[] = [];
    const data = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    // Offsets rather than a subarray per line: a console of short lines makes millions.
    let start = 0;
    for (let nl = data.indexOf(NEWLINE, start); nl >= 0; nl = data.indexOf(NEWLINE, start)) {
      const end = nl > start && data[nl - 1] === CR ? nl - 1 : nl;
      this.cut(data, start, end, "F", pieces);
      start = nl + 1;
    }
    // A line longer than the maximum is written in P pieces while it is still arriving.
    const rest = data.length - start;
    const whole = Math.floor(rest / this.maxLineBytes) * this.maxLineBytes;
    const keep = whole === rest ? whole - this.maxLineBytes : whole;
    if (keep > 0) this.cut(data, start, start + keep, "P", pieces);
    this.pending = copy(data, start + Math.max(keep, 0), data.length);
    return pieces;
  }

  /** The unfinished line as a P piece (a prompt waiting for input must still be seen). */
  flushPartial(): CriPiece[] {
    if (!this.pending.length) return [];
    const text = this.pending;
    this.pending = Buffer.alloc(0);
    return [{ tag: "P", text }];
  }

  /** At the end of the stream: the unfinished line, ended. */
  end(): CriPiece[] {
    if (!this.pending.length) return [];
    const text = this.pending;
    this.pending = Buffer.alloc(0);
    return [{ tag: "F", text }];
  }

  /** data[start, end) in pieces of at most maxLineBytes: all P but the last, which gets `lastTag`. */
  private cut(data: Buffer, start: number, end: number, lastTag: CriTag, out: CriPiece[]): void {
    let at = start;
    while (end - at > this.maxLineBytes) {
      out.push({ tag: "P", text: copy(data, at, at + this.maxLineBytes) });
      at += this.maxLineBytes;
    }
    out.push({ tag: lastTag, text: copy(data, at, end) });
  }
}

/** Pieces outlive the caller's buffer (the tailer reuses its read buffer). */
function copy(data: Buffer, start: number, end: number): Buffer {
  const out = Buffer.allocUnsafe(end - start);
  data.copy(out, 0, start, end);
  return out;
}

/** The CRI log file: appended to, reopened at its path after kubelet rotates it. */
export class CriLogWriter {
  private constructor(
    readonly logPath: string,
    private file: fs.promises.FileHandle,
    private readonly stream: CriStream,
  ) {}

  static async open(logPath: string, stream: CriStream = "stdout"): Promise<CriLogWriter> {
    return new CriLogWriter(logPath, await openLog(logPath), stream);
  }

  async write(pieces: CriPiece[], at: bigint = nowNanos()): Promise<void> {
    if (!pieces.length) return;
    await this.file.write(formatCriLines(at, this.stream, pieces));
  }

  async reopen(): Promise<void> {
    const next = await openLog(this.logPath);
    const previous = this.file;
    this.file = next;
    await previous.close();
  }

  async close(): Promise<void> {
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
