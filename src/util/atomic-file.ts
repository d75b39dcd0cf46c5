// Atomic file replacement, for every state file vmlet keeps (runtime records, pod
// networks, the CNI cache): a reader, or vmlet after a crash, sees the old content or the
// new, never a torn write: temp file, fsync, rename, fsync of the directory.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";

/** Temp files of interrupted writes end in this; each store removes them on open. */
export const TEMP_SUFFIX = ".tmp";

export async function writeFileAtomic(file: string, data: string | Buffer): Promise<void> {
  const dir = path.dirname(file);
  const temp = path.join(
    dir,
    `.${path.basename(file)}.${crypto.randomBytes(4).toString("hex")}${TEMP_SUFFIX}`,
  );
  const handle = await fs.promises.open(temp, "wx", 0o600);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } catch (error) {
    await handle.close();
    await fs.promises.rm(temp, { force: true });
    throw error;
  }
  await handle.close();
  try {
    await fs.promises.rename(temp, file);
  } catch (error) {
    await fs.promises.rm(temp, { force: true });
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
  const temp = path.join(
    path.dirname(file),
    `.${path.basename(file)}.${crypto.randomBytes(4).toString("hex")}${TEMP_SUFFIX}`,
  );
  try {
    fs.writeFileSync(temp, data, { mode: 0o600, flag: "wx" });
    fs.renameSync(temp, file);
  } catch (error) {
    fs.rmSync(temp, { force: true });
    throw error;
  }
}

/** Makes a rename or unlink in `dir` durable. */
export async function syncDir(dir: string): Promise<void> {
  const handle = await fs.promises.open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
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
