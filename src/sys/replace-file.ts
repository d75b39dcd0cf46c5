// Replacing a small file whose loss in a power cut is harmless, without the flush that
// ext4 puts into rename(2). Renaming over an existing file makes ext4 (auto_da_alloc)
// allocate and start writing the new file's blocks inside the rename: about 0.4 ms on
// this machine's disk against 0.05 ms for the same write under a new name, and a pod's
// setUp replaces its record twice. Exchanging the two names (renameat2 RENAME_EXCHANGE)
// is not a replacing rename, so it skips that flush; the temp name then holds the old
// content, which is unlinked. Node has no renameat2, hence libc through koffi.
import fs from "node:fs";
import { tempFor } from "../util/atomic-file";
import * as libc from "./libc";

/**
 * Replaces `file` atomically, without fsync and without ext4's flush on rename: a
 * reader, or vmlet after its own crash, sees the old content or the new. A power cut
 * may lose the new content, or leave the file empty (its blocks not yet allocated), so
 * only for a file whose loss is harmless and whose reader copes with an empty one.
 * A crash between the exchange and the unlink leaves the old content under a temp name,
 * which the store's open removes as it removes any temp.
 */
export function replaceFileUnflushed(file: string, data: string | Buffer): void {
  const temp = tempFor(file);
  try {
    fs.writeFileSync(temp, data, { mode: 0o600, flag: "wx" });
    if (libc.renameat2(libc.AT_FDCWD, temp, libc.AT_FDCWD, file, libc.RENAME_EXCHANGE) === 0) {
      fs.unlinkSync(temp); // now the old content
      return;
    }
    const errno = libc.errno();
    // ENOENT: no file to exchange with yet (a new file is no replacing rename, so it
    // costs no flush either); the others: a file system (or FUSE server) without exchange.
    const noExchange = [libc.ENOENT, libc.EINVAL, libc.ENOSYS, libc.EOPNOTSUPP];
    if (!noExchange.includes(errno)) {
      throw new libc.SysCallError(`replace ${file}: renameat2 RENAME_EXCHANGE`, errno);
    }
    fs.renameSync(temp, file);
  } catch (error) {
    fs.rmSync(temp, { force: true });
    throw error;
  }
}
