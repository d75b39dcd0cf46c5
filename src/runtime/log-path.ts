// Where a container's CRI log goes: kubelet's log_path under the sandbox's
// log_directory. Both come from the CRI caller and vmlet writes the file as root, so
// the path must stay under the directory; the file itself is opened with O_NOFOLLOW.
import path from "node:path";
import { type CriError, invalidArgument } from "./errors";

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
