// Runs this process again inside private network, mount and PID namespaces, so that
// whatever it builds (netns, links, IPAM files, processes) vanishes with it, even after
// SIGKILL: setpriv's parent-death signal ties unshare to us, --kill-child ties the
// namespace's init to unshare, and the death of a PID namespace's init ends the rest.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import * as libc from "./libc";

const MARKER = "VMLET_PRIVATE_NS";
/** The PID, in the machine's PID namespace, of the process that entered the namespace. */
const OUTER_PID = "VMLET_PRIVATE_NS_PARENT";

/**
 * Inside: a shell command that prints the PID (as the machine sees it) of a process in
 * this namespace, for `nsenter -t`. The process that entered waits outside; its one child
 * (setpriv, now unshare) holds this network and mount namespace.
 */
export function privateNamespaceHolderCommand(): string | undefined {
  const outer = process.env[OUTER_PID];
  return outer && /^\d+$/.test(outer) ? `$(pgrep -P ${outer})` : undefined;
}

/** Directories that get a fresh tmpfs inside, so nothing there reaches the machine. */
const PRIVATE_DIRS = ["/run", "/var/lib/cni"];
/** Temporary files go to a tmpfs too; /tmp itself may hold this very checkout. */
const PRIVATE_TMP = "/run/vmlet-tmp";

export function inPrivateNamespace(): boolean {
  return process.env[MARKER] === String(process.pid) || process.env[MARKER] === "1";
}

/**
 * When outside, re-executes `argv` under unshare and exits with its status. When inside,
 * mounts the private dirs and returns.
 */
export function enterPrivateNamespace(argv: string[] = process.argv.slice(1)): void {
  if (process.env[MARKER] === "1") {
    mountPrivateDirs();
    // PID 1 of a PID namespace gets no signal it has no handler for: without this one,
    // Ctrl-C would not end a program that has none of its own.
    process.on("SIGINT", () => {
      if (process.listenerCount("SIGINT") === 1) process.exit(130);
    });
    return;
  }
  // Ctrl-C goes to the whole process group: the process inside handles it (tears down
  // and exits), and this one waits for that instead of dying first and taking it along.
  process.on("SIGINT", () => {});
  const result = spawnSync(
    "setpriv",
    [
      "--pdeathsig",
      "SIGKILL",
      "unshare",
      "--net",
      "--mount",
      "--pid",
      "--fork",
      "--kill-child",
      "--mount-proc",
      "--propagation",
      "private",
      process.execPath,
      ...process.execArgv,
      ...argv,
    ],
    { stdio: "inherit", env: { ...process.env, [MARKER]: "1", [OUTER_PID]: String(process.pid) } },
  );
  if (result.error) {
    throw new Error(`setpriv/unshare into a private namespace: ${result.error.message}`, {
      cause: result.error,
    });
  }
  process.exit(result.status ?? 128 + 1);
}

function mountPrivateDirs(): void {
  for (const dir of PRIVATE_DIRS) {
    if (__dirname.startsWith(`${dir}/`)) {
      throw new Error(
        `private namespace: ${dir} gets a fresh tmpfs, but vmlet runs from ${__dirname}`,
      );
    }
    fs.mkdirSync(dir, { recursive: true });
    libc.check(libc.mount("tmpfs", dir, "tmpfs", 0, "mode=755"), `mount tmpfs on ${dir}`);
  }
  fs.mkdirSync(PRIVATE_TMP, { mode: 0o1777 });
  fs.chmodSync(PRIVATE_TMP, 0o1777);
  process.env.TMPDIR = PRIVATE_TMP;
}
