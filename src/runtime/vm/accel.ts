// Turning the configured accelerator into what QEMU is asked for.
import fs from "node:fs";
import type { ResolvedAccel } from "./argv";
import type { Accel } from "./types";

/** Whether /dev/kvm opens read-write, which is what QEMU's kvm accelerator needs. */
export function kvmAvailable(device = "/dev/kvm"): boolean {
  try {
    fs.closeSync(fs.openSync(device, fs.constants.O_RDWR));
    return true;
  } catch {
    return false;
  }
}

/** auto: kvm with tcg as QEMU's own fallback when /dev/kvm opens, else tcg. */
export function resolveAccel(accel: Accel, hasKvm: () => boolean = kvmAvailable): ResolvedAccel {
  if (accel === "auto") return hasKvm() ? "kvm:tcg" : "tcg";
  return accel;
}
