// Follows the raw console file QEMU appends to and writes it to the CRI log. How far it
// got is saved next to the file, so a vmlet restarted later resumes where the last one
// stopped and nothing the guest printed meanwhile is lost. Lines are written at least
// once: a crash between writing lines and saving the offset repeats them.
import { execFile } from "node:child_process";
import fs from "node:fs";
import { promisify } from "node:util";
import {
  CriLineSplitter,
  type CriLogWriter,
  type CriPiece,
  DEFAULT_MAX_LINE_BYTES,
} from "./cri-log";

export interface ConsoleTailOptions {
  rawPath: string;
  offsetPath: string;
  writer: CriLogWriter;
  maxLineBytes?: number;
  /** An unfinished line (a prompt) is written as a P piece after waiting this long. */
  partialFlushMs?: number;
  /** Fallback for missed inotify events. */
  pollMs?: number;
  /** Free the logged part of the raw file after this many bytes (0: never). */
  reclaimBytes?: number;
  onError(error: Error): void;
}

const CHUNK = 64 * 1024;
/** The log is written once this many bytes of lines are waiting. */
const WRITE_BATCH_BYTES = 256 * 1024;
/** During a long catch-up, the offset is saved after about this many bytes. */
const SAVE_EVERY_BYTES = 16 * 1024 * 1024;
/** Logged bytes of the raw file are freed (a hole punched) once this many have piled up. */
const RECLAIM_BYTES = 1024 * 1024;
const BLOCK = 4096;
const execFileAsync = promisify(execFile);

export class ConsoleTailer {
  private readonly splitter: CriLineSplitter;
  private readPos: number;
  private savedOffset: number;
  private reclaimed = 0;
  private pendingSince = 0;
  private watcher: fs.FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Passes over the file run one at a time, in order. */
  private chain: Promise<void> = Promise.resolve();
  private queued = false;
  private stopped = false;

  private constructor(
    private readonly options: ConsoleTailOptions,
    offset: number,
  ) {
    this.splitter = new CriLineSplitter(options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES);
    this.readPos = offset;
    this.savedOffset = offset;
  }

  /** Starts following from the saved offset (0 when there is none). */
  static async start(options: ConsoleTailOptions): Promise<ConsoleTailer> {
    const tailer = new ConsoleTailer(options, await readOffset(options.offsetPath));
    tailer.watch();
    tailer.kick();
    return tailer;
  }

  /** Bytes of the raw file written to the CRI log. */
  get offset(): number {
    return this.readPos - this.splitter.pendingBytes;
  }

  /** Writes whatever the file holds now; with `final`, also the unfinished last line. */
  drain(final = false): Promise<void> {
    const pass = this.chain.then(() => this.pass(final));
    this.chain = pass.catch(() => {});
    return pass;
  }

  /** Stops following. With `final` (QEMU has ended), first writes everything left. */
  async stop(final: boolean): Promise<void> {
    this.stopped = true;
    this.watcher?.close();
    if (this.timer) clearInterval(this.timer);
    await this.chain;
    if (final) await this.drain(true);
  }

  private watch(): void {
    const pollMs = this.options.pollMs ?? 500;
    this.timer = setInterval(
      () => this.kick(),
      Math.min(pollMs, this.options.partialFlushMs ?? 500),
    );
    this.timer.unref();
    try {
      this.watcher = fs.watch(this.options.rawPath, { persistent: false }, () => this.kick());
      this.watcher.on("error", () => this.watcher?.close());
    } catch {
      // Not created yet: the poll timer finds it.
    }
  }

  private kick(): void {
    if (this.stopped || this.queued) return;
    this.queued = true;
    this.chain = this.chain
      .then(() => {
        this.queued = false;
        return this.pass(false);
      })
      .catch((error: Error) => this.options.onError(error));
  }

  private async pass(final: boolean): Promise<void> {
    let file: fs.promises.FileHandle;
    try {
      file = await fs.promises.open(this.options.rawPath, "r");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
      throw error;
    }
    // The unread part can be GBs (a chatty guest while vmlet was down): lines go through
    // the writer's own buffer, written whenever it holds WRITE_BATCH_BYTES, so memory
    // stays flat whatever the backlog.
    const writer = this.options.writer;
    const append = (piece: CriPiece): void => writer.append(piece);
    try {
      const { size } = await file.stat();
      if (size < this.readPos) {
        // The file was truncated or replaced: start over at its beginning.
        this.readPos = 0;
        this.splitter.end().forEach(append);
      }
      const buffer = Buffer.alloc(CHUNK);
      for (;;) {
        const { bytesRead } = await file.read(buffer, 0, CHUNK, this.readPos);
        if (bytesRead === 0) break;
        this.readPos += bytesRead;
        this.splitter.scan(buffer.subarray(0, bytesRead), append);
        if (writer.bufferedBytes >= WRITE_BATCH_BYTES) {
          await writer.flush();
          if (this.offset - this.savedOffset >= SAVE_EVERY_BYTES) await this.saveOffset();
        }
      }
    } finally {
      await file.close();
    }
    const now = Date.now();
    if (final) {
      this.splitter.end().forEach(append);
    } else if (this.splitter.pendingBytes === 0) {
      this.pendingSince = 0;
    } else if (this.pendingSince === 0) {
      this.pendingSince = now;
    } else if (now - this.pendingSince >= (this.options.partialFlushMs ?? 500)) {
      this.splitter.flushPartial().forEach(append);
      this.pendingSince = 0;
    }
    await writer.flush();
    await this.saveOffset();
    await this.reclaim();
  }

  /**
   * QEMU only ever appends (O_APPEND), so the file cannot be truncated under it; instead
   * the blocks already in the CRI log are deallocated. Offsets stay valid, the disk use
   * of a chatty console stays bounded.
   */
  private async reclaim(): Promise<void> {
    const threshold = this.options.reclaimBytes ?? RECLAIM_BYTES;
    const upTo = Math.floor(this.savedOffset / BLOCK) * BLOCK;
    if (threshold <= 0 || upTo - this.reclaimed < threshold) return;
    const raw = this.options.rawPath;
    this.reclaimed = upTo;
    const args = ["--punch-hole", "--offset", "0", "--length", String(upTo), raw];
    try {
      await execFileAsync("fallocate", args);
    } catch (error) {
      this.reclaimed = Number.POSITIVE_INFINITY; // not supported here: say so once
      throw new Error(`free logged blocks of ${raw}: ${(error as Error).message.trim()}`, {
        cause: error,
      });
    }
  }

  private async saveOffset(): Promise<void> {
    const offset = this.offset;
    if (offset === this.savedOffset) return;
    const tmp = `${this.options.offsetPath}.tmp`;
    await fs.promises.writeFile(tmp, `${offset}\n`);
    await fs.promises.rename(tmp, this.options.offsetPath);
    this.savedOffset = offset;
  }
}

async function readOffset(offsetPath: string): Promise<number> {
  try {
    const value = Number((await fs.promises.readFile(offsetPath, "utf8")).trim());
    return Number.isSafeInteger(value) && value >= 0 ? value : 0;
  } catch {
    return 0;
  }
}
