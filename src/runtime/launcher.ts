// The VM launcher `vmlet serve` runs: QEMU per container (src/runtime/vm), checked
// against the runtime's structural VmLauncher interface here.
import type { Logger } from "pino";
import type { VmLauncher } from "./types";
import { VmLauncher as QemuLauncher } from "./vm";

export function createVmLauncher(options: { logger: Logger }): VmLauncher {
  return new QemuLauncher({ log: options.logger });
}
