// Where a container's CRI log goes: kubelet's log_path under the sandbox's
// log_directory. Both come from the CRI caller and vmlet writes the file as root, so
// the path must stay under the directory; the file itself is opened with O_NOFOLLOW.
import fs from "node:fs";
import path from "node:path";
import { type CriError, failedPrecondition, invalidArgument } from "./errors";

/** `where` names the call and container for the message. */
export function containerLogPath(where: string, logDirectory: string, logPath: string): string {
  const fail = (why: string): CriError =>
    invalidArgument(`${where}: log_path ${JSON.stringify(logPath)}: ${why}`);
  if (path.isAbsolute(logPath)) throw fail("must be relative to the pod's log_directory");
  if (logPath.includes("\0")) throw fail("holds a NUL byte");
  const segments = logPath.split("/");
  if (segments.includes("..")) throw fail('must not contain ".."');
  if (segments.some((s) => s === "" || s === ".")) {
    throw fail('must name a file, without empty or "." segments');
  }
  return path.join(path.resolve(logDirectory), logPath);
}

/**
 * Makes the directories from `logDirectory` down to the log file one at a time, refusing
 * any that is a symlink: with O_NOFOLLOW on the file, the log is written under the
 * directory and nowhere else. A log outside it (vmlet's own, in the VM dir) gets its
 * directory made as it is.
 */
export async function makeLogDirs(
  where: string,
  logDirectory: string,
  logPath: string,
): Promise<void> {
  const root = path.resolve(logDirectory);
  const rel = path.relative(root, path.dirname(path.resolve(logPath)));
  if (rel.startsWith("..") || path.isAbsolute(rel)) {
    await fs.promises.mkdir(path.dirname(logPath), { recursive: true });
    return;
  }
  await fs.promises.mkdir(root, { recursive: true });
  let dir = root;
  for (const segment of rel === "" ? [] : rel.split(path.sep)) {
    dir = path.join(dir, segment);
    await fs.promises.mkdir(dir).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "EEXIST") throw error;
    });
    if (!(await fs.promises.lstat(dir)).isDirectory()) {
      throw failedPrecondition(
        `${where}: log_path ${JSON.stringify(path.relative(root, logPath))}: ${dir} is a symlink or not a directory: not followed`,
      );
    }
  }
}
