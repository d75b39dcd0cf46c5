// Atomic file replacement, for every state file vmlet keeps (runtime records, pod
// networks, the CNI cache): a reader, or vmlet after a crash, sees the old content or the
// new, never a torn write: temp file, fsync, rename, fsync of the directory.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { promisify } from "node:util";

/** Temp files of interrupted writes end in this; each store removes them on open. */
export const TEMP_SUFFIX = ".tmp";

/** fsync(2) on the thread pool: the one wait of a durable write that may be long. */
const fsyncAsync = promisify(fs.fsync);

/**
 * Durable and atomic: once it resolves, a power cut leaves the new content; before, the
 * old or the new, never a torn file. The data is fsynced before the rename and the
 * directory after it. Only the two fsyncs go to the thread pool (a real disk's flush may
 * take milliseconds, and must not stall the event loop); create, write, close and rename
 * are synchronous page-cache operations (µs), not eight thread-pool round trips.
 */
export async function writeFileAtomic(file: string, data: string | Buffer): Promise<void> {
  const dir = path.dirname(file);
  const temp = tempFor(file);
  const fd = fs.openSync(temp, "wx", 0o600);
  try {
    try {
      fs.writeFileSync(fd, data);
      await fsyncAsync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temp, file);
  } catch (error) {
    fs.rmSync(temp, { force: true });
    throw error;
  }
  await syncDir(dir);
}

/**
 * Replaces `file` atomically but without fsyncs, synchronously (a few µs on the page
 * cache, none of the eight thread-pool round trips of the durable write). A reader, or
 * vmlet after its own crash, sees the old content or the new: the page cache outlives the
 * process. Only for a step whose loss in a power cut is harmless because a durable write
 * of the same file follows it or the state it describes does not survive a reboot either.
 */
export function writeFileOrdered(file: string, data: string | Buffer): void {
  const temp = tempFor(file);
  try {
    fs.writeFileSync(temp, data, { mode: 0o600, flag: "wx" });
    fs.renameSync(temp, file);
  } catch (error) {
    fs.rmSync(temp, { force: true });
    throw error;
  }
}

/**
 * What makes this process's temp names its own, drawn once: a call of randomBytes per
 * write cost ~0.1 ms whenever the process had been idle (cold OpenSSL paths), a quarter
 * of a small ordered write. A counter beside it keeps the names apart; a name that still
 * met another's would fail the exclusive create ("wx"), never share a temp file.
 */
const processToken = crypto.randomBytes(6).toString("hex");
let tempCount = 0;

/** A fresh name beside `file`, hidden, that removeStaleTemps recognises. */
export function tempFor(file: string): string {
  const suffix = `${processToken}-${(tempCount++).toString(36)}${TEMP_SUFFIX}`;
  return path.join(path.dirname(file), `.${path.basename(file)}.${suffix}`);
}

/** Makes a rename or unlink in `dir` durable: one thread-pool hop, the fsync. */
export async function syncDir(dir: string): Promise<void> {
  const fd = fs.openSync(dir, "r");
  try {
    await fsyncAsync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Removes the temp files interrupted writes left in `dir`; a missing dir is fine. */
export async function removeStaleTemps(dir: string): Promise<string[]> {
  const names = await readDirIfAny(dir);
  const stale = names.filter((name) => name.endsWith(TEMP_SUFFIX));
  for (const name of stale) await fs.promises.rm(path.join(dir, name), { force: true });
  return stale;
}

/** The names in `dir`; none when it does not exist (yet, or any more). */
export async function readDirIfAny(dir: string): Promise<string[]> {
  try {
    return await fs.promises.readdir(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw error;
  }
}
