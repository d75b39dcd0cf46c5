// The VM launcher `vmlet serve` runs: QEMU per container (src/runtime/vm), checked
// against the runtime's structural VmLauncher interface here, plus `discard`: a QEMU
// whose start was cut short by a vmlet crash has no record to adopt it by, only its
// pidfile in the VM dir.
import type { Logger } from "pino";
import type { VmHandle, VmLauncher, VmSpec } from "./types";
import { killStrayQemu, type QemuConfinement, VmLauncher as QemuLauncher, vmPaths } from "./vm";

export function createVmLauncher(options: {
  logger: Logger;
  /** null: QEMU unconfined (debugging); default: confined as user vmlet-qemu. */
  confinement?: QemuConfinement | null;
}): VmLauncher {
  const qemu = new QemuLauncher({ log: options.logger, confinement: options.confinement });
  return {
    start: (spec: VmSpec): Promise<VmHandle> => qemu.start(spec),
    adopt: (record: unknown) => qemu.adopt(record as Parameters<QemuLauncher["adopt"]>[0]),
    discard: (dir: string) => killQemuOfDir(dir),
    killRecorded: (record: unknown) =>
      qemu.killRecorded(record as Parameters<QemuLauncher["killRecorded"]>[0]),
  };
}

/** Kills the QEMU named by the dir's pidfile, if it is that dir's QEMU, and waits for it. */
/** Kills a QEMU left in a VM dir by a start that never returned; true if there was one. */
export function killQemuOfDir(dir: string): Promise<boolean> {
  return killStrayQemu(vmPaths(dir));
}
