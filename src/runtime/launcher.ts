// The VM launcher `vmlet serve` runs. Until src/runtime/vm (QEMU, QMP, seed) is merged,
// this build has none: StartContainer fails with FAILED_PRECONDITION saying so, and no
// VM can have been started by it, so there is nothing to adopt.
import type { Logger } from "pino";
import { CriError } from "./errors";
import type { VmHandle, VmLauncher, VmSpec } from "./types";

class MissingLauncher implements VmLauncher {
  async start(spec: VmSpec): Promise<VmHandle> {
    throw new CriError(
      "FAILED_PRECONDITION",
      `start VM ${spec.id}: this vmlet build has no VM launcher (src/runtime/vm is not merged yet)`,
    );
  }

  async adopt(): Promise<VmHandle | undefined> {
    return undefined;
  }
}

export function createVmLauncher(_options: { logger: Logger }): VmLauncher {
  return new MissingLauncher();
}

/** Whether this build can start VMs at all. */
export function vmLauncherAvailable(): boolean {
  return false;
}
