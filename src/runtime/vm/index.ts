// The VM launcher: QEMU per container, with the pod's taps, a cloud-init seed, QMP and
// the serial console in the CRI log; VMs outlive vmlet and are adopted again.
export { kvmAvailable, resolveAccel } from "./accel";
export {
  buildQemuArgv,
  QEMU_USER_NAME,
  type QemuCommand,
  qemuOptValue,
  type ResolvedAccel,
  type VmPaths,
  vmPaths,
} from "./argv";
export {
  CriLineSplitter,
  CriLogWriter,
  type CriPiece,
  type CriStream,
  type CriTag,
  DEFAULT_MAX_LINE_BYTES,
  formatCriLine,
  rfc3339Nano,
} from "./cri-log";
export { QmpError, VmError, VmSpecError } from "./errors";
export {
  GuestAgentCommandError,
  GuestAgentProtocolError,
  GuestAgentUnavailableError,
  type GuestExecResult,
  GuestExecTimeoutError,
  guestExec,
} from "./guest-agent";
export {
  createVmLauncher,
  DEFAULT_QEMU_USER,
  QemuLauncher,
  type QemuLauncherOptions,
} from "./qemu-launcher";
export { QmpClient, type QmpEvent } from "./qmp";
export { buildSeedFiles, type SeedFiles, writeSeedIso } from "./seed";
export type {
  Accel,
  CloudInit,
  CloudInitFile,
  QemuConfinement,
  QemuVm,
  VmExit,
  VmHandle,
  VmLauncher,
  VmLog,
  VmRecord,
  VmSpec,
  VmStats,
  VmTap,
} from "./types";
export { killQemuOfDir, killStrayQemu, removeVmFiles, removeVmState } from "./vm-files";
