// Named network namespaces in the form `ip netns add` makes them (a bind mount of the
// namespace at /run/netns/NAME), and running code on the main thread inside one.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import * as libc from "./libc";

const { EINVAL, ENOENT } = os.constants.errno;

/** Where named namespaces live; tests and demos may point it elsewhere. */
export function netnsRunDir(): string {
  return process.env.VMLET_NETNS_DIR ?? "/run/netns";
}

export function netnsPath(name: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(name)) {
    throw new Error(`netns name ${JSON.stringify(name)}: must be 1-63 of [A-Za-z0-9_.-]`);
  }
  return path.join(netnsRunDir(), name);
}

/** The calling thread's own netns, as a path that stays valid while it runs. */
function threadNetnsPath(): string {
  return `/proc/self/task/${libc.gettid()}/ns/net`;
}

/** What restore() does when the main thread cannot return to its netns. Tests swap it. */
export const restoreFailure = {
  handle(error: Error): never {
    // Going on would run every later socket and netlink call in the wrong namespace.
    process.stderr.write(`vmlet: fatal: ${error.message}; aborting\n`);
    process.abort();
  },
};

/**
 * Runs `fn` synchronously with the main thread inside the netns at `nsPath`, then
 * returns to the original netns. `fn` must not be async: no await may run while switched.
 */
export function withNetns<T>(nsPath: string, fn: () => T): T {
  return switchedAndBack(
    nsPath,
    () => {
      const target = openNetns(nsPath);
      try {
        libc.check(libc.setns(target, libc.CLONE_NEWNET), `setns ${nsPath}`);
      } finally {
        fs.closeSync(target);
      }
    },
    () => {
      const result = fn();
      if (result instanceof Promise) {
        throw new Error(`withNetns ${nsPath}: fn returned a Promise; it must be synchronous`);
      }
      return result;
    },
  );
}

/**
 * Runs `enter` (which moves the main thread to another netns) and then `fn` there; the
 * thread is back in its own netns afterwards, whatever `fn` did.
 */
function switchedAndBack<T>(nsPath: string, enter: () => void, fn: () => T): T {
  const original = fs.openSync(threadNetnsPath(), "r");
  try {
    enter();
    try {
      return fn();
    } finally {
      restore(original, nsPath);
    }
  } finally {
    fs.closeSync(original);
  }
}

function openNetns(nsPath: string): number {
  try {
    return fs.openSync(nsPath, "r");
  } catch (error) {
    throw new Error(`open netns ${nsPath}: ${(error as NodeJS.ErrnoException).code}`, {
      cause: error,
    });
  }
}

function restore(originalFd: number, leftNs: string): void {
  if (libc.setns(originalFd, libc.CLONE_NEWNET) === -1) {
    restoreFailure.handle(
      new libc.SysCallError(`setns back from ${leftNs} to the original netns`, libc.errno()),
    );
  }
}

/** Makes the run dir a shared mount point, as ip does, so bind mounts in it propagate. */
function prepareRunDir(dir: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  const flags = libc.MS_SHARED | libc.MS_REC;
  if (libc.mount("none", dir, null, flags, null) === 0) return;
  if (libc.errno() !== EINVAL /* not yet a mount point */) {
    throw new libc.SysCallError(`mount --make-rshared ${dir}`, libc.errno());
  }
  // Another runtime's netns files already there (containerd's, which leaves the dir as it
  // is): a bind of the dir onto itself would copy each below it, and its owner could then
  // never unlink it (EBUSY). vmlet's own netns work in the dir as it is.
  if (hasMountsBelow(dir)) return;
  libc.check(libc.mount(dir, dir, "none", libc.MS_BIND | libc.MS_REC, null), `bind ${dir}`);
  libc.check(libc.mount("none", dir, null, flags, null), `mount --make-rshared ${dir}`);
}

/** A mount point strictly below `dir` in this mount namespace (proc(5): mountinfo field 5). */
function hasMountsBelow(dir: string): boolean {
  const prefix = `${path.resolve(dir)}/`;
  return fs
    .readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .some((line) => {
      const mountPoint = line.split(" ")[4] ?? "";
      const decoded = mountPoint.replace(/\\([0-7]{3})/g, (_m, o: string) =>
        String.fromCharCode(Number.parseInt(o, 8)),
      );
      return decoded.startsWith(prefix);
    });
}

/** Creates a persistent named netns; fails with EEXIST if the name is taken. */
export function createNetns(name: string): string {
  const nsPath = netnsPath(name);
  prepareRunDir(path.dirname(nsPath));
  try {
    fs.closeSync(
      fs.openSync(
        nsPath,
        fs.constants.O_RDONLY | fs.constants.O_CREAT | fs.constants.O_EXCL,
        0o444,
      ),
    );
  } catch (error) {
    throw new Error(`create netns ${name}: ${(error as NodeJS.ErrnoException).code}`, {
      cause: error,
    });
  }
  try {
    bindNewNetns(nsPath);
  } catch (error) {
    removeNetnsFile(nsPath);
    throw new Error(`create netns ${name}: ${(error as Error).message}`, { cause: error });
  }
  return nsPath;
}

/** unshare() gives the main thread a fresh netns; we pin it with a bind mount and go back. */
function bindNewNetns(nsPath: string): void {
  switchedAndBack(
    nsPath,
    () => libc.check(libc.unshare(libc.CLONE_NEWNET), "unshare(CLONE_NEWNET)"),
    () =>
      libc.check(
        libc.mount(threadNetnsPath(), nsPath, "none", libc.MS_BIND, null),
        `bind mount ${nsPath}`,
      ),
  );
}

function removeNetnsFile(nsPath: string): void {
  try {
    fs.unlinkSync(nsPath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
}

/**
 * Gives the netns named `from` the name `to` (fails with EEXIST if `to` is taken). A bind
 * mount cannot be renamed (rename(2) of a mount point is EBUSY) nor moved out of a shared
 * mount (the run dir is one, as ip makes it): the namespace is bound at the new name and
 * the old one let go, which is three syscalls and no namespace switch.
 */
export function renameNetns(from: string, to: string): string {
  const fromPath = netnsPath(from);
  const toPath = netnsPath(to);
  try {
    fs.closeSync(
      fs.openSync(
        toPath,
        fs.constants.O_RDONLY | fs.constants.O_CREAT | fs.constants.O_EXCL,
        0o444,
      ),
    );
  } catch (error) {
    throw new Error(`rename netns ${from} to ${to}: ${(error as NodeJS.ErrnoException).code}`, {
      cause: error,
    });
  }
  if (libc.mount(fromPath, toPath, "none", libc.MS_BIND, null) === -1) {
    const error = new libc.SysCallError(`rename netns ${from} to ${to}: bind mount`, libc.errno());
    removeNetnsFile(toPath);
    throw error;
  }
  deleteNetns(from);
  return toPath;
}

/** Deletes a named netns; deleting one that is already gone succeeds. */
export function deleteNetns(name: string): void {
  const nsPath = netnsPath(name);
  if (libc.umount2(nsPath, libc.MNT_DETACH) === -1) {
    const code = libc.errno();
    // EINVAL: not mounted (half-made), ENOENT: already gone.
    if (code !== EINVAL && code !== ENOENT) throw new libc.SysCallError(`umount ${nsPath}`, code);
  }
  removeNetnsFile(nsPath);
}

/** The names of the netns in the run dir. */
export function listNetns(): string[] {
  try {
    return fs.readdirSync(netnsRunDir()).sort();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw error;
  }
}

/** True when `nsPath` is a live netns (a bind-mounted nsfs file), not a leftover file. */
export function isNetns(nsPath: string): boolean {
  try {
    return fs.statSync(nsPath).dev !== fs.statSync(path.dirname(nsPath)).dev;
  } catch {
    return false;
  }
}
