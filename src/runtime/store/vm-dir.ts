// Where a container's VM files go under the state dir, and the check that the state dir
// is shallow enough for them: QEMU binds its unix sockets in the VM dir.
import path from "node:path";

/** A unix socket path has 108 bytes (sun_path in linux/un.h). */
const UNIX_PATH_MAX = 108;
/** The longest name the launcher gives a socket in the VM dir, with room to spare. */
const SOCKET_NAME_BUDGET = 24;
/** Enough of the container id to be unique on a node, short enough for socket paths. */
const VM_DIR_ID_CHARS = 16;

export function vmDirFor(stateDir: string, containerId: string): string {
  return path.join(stateDir, "vms", containerId.slice(0, VM_DIR_ID_CHARS));
}

/** Refuses a state dir so deep that QEMU could not bind its sockets under it. */
export function checkStateDirDepth(stateDir: string): void {
  const longest = path.join(
    path.resolve(stateDir),
    "vms",
    "x".repeat(VM_DIR_ID_CHARS),
    "x".repeat(SOCKET_NAME_BUDGET),
  );
  if (Buffer.byteLength(longest) >= UNIX_PATH_MAX) {
    throw new Error(
      `state dir ${stateDir}: too deep for QEMU's unix sockets under it (${Buffer.byteLength(longest)} of ${UNIX_PATH_MAX} bytes); use a shorter path`,
    );
  }
}
