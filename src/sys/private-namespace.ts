// Runs this process again inside private network, mount and PID namespaces, so that
// whatever it builds (netns, links, IPAM files, processes) vanishes with it, even after
// SIGKILL: setpriv's parent-death signal ties unshare to us, --kill-child ties the
// namespace's init to unshare, and the death of a PID namespace's init ends the rest.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import * as libc from "./libc";

const MARKER = "VMLET_PRIVATE_NS";

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
    return;
  }
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
    { stdio: "inherit", env: { ...process.env, [MARKER]: "1" } },
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
