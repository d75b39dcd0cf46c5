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
  return Buffer.concat([
    Buffer.from(`${rfc3339Nano(epochNanos)} ${stream} ${piece.tag} `),
    piece.text,
    Buffer.from("\n"),
  ]);
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
    let data = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    for (let nl = data.indexOf(NEWLINE); nl >= 0; nl = data.indexOf(NEWLINE)) {
      let line = data.subarray(0, nl);
      if (line.length && line[line.length - 1] === CR) line = line.subarray(0, line.length - 1);
      pieces.push(...this.pieces(line, "F"));
      data = data.subarray(nl + 1);
    }
    // A line longer than the maximum is written in P pieces while it is still arriving.
    const whole = Math.floor(data.length / this.maxLineBytes) * this.maxLineBytes;
    const keep = whole === data.length ? whole - this.maxLineBytes : whole;
    if (keep > 0) pieces.push(...this.pieces(data.subarray(0, keep), "P"));
    this.pending = Buffer.from(data.subarray(Math.max(keep, 0)));
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

  /** `text` in pieces of at most maxLineBytes: all P but the last, which gets `lastTag`. */
  private pieces(text: Buffer, lastTag: CriTag): CriPiece[] {
    const out: CriPiece[] = [];
    let start = 0;
    while (text.length - start > this.maxLineBytes) {
      out.push({ tag: "P", text: Buffer.from(text.subarray(start, start + this.maxLineBytes)) });
      start += this.maxLineBytes;
    }
    out.push({ tag: lastTag, text: Buffer.from(text.subarray(start)) });
    return out;
  }
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
    await this.file.write(Buffer.concat(pieces.map((p) => formatCriLine(at, this.stream, p))));
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
