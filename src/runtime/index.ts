// The CRI runtime's public surface.
export { type CriClient, connectCri, type ImageCalls, type RuntimeCalls } from "./cri/client";
export type * as cri from "./cri/generated";
export { CRI_PROTO, loadCri } from "./cri/proto";
export { CriServer, CriServerError, DEFAULT_SOCKET } from "./cri/server";
export { startVmlet, type Vmlet, type VmletOptions } from "./daemon";
export { type CriCode, CriError } from "./errors";
export {
  DiskImageError,
  detectDiskFormat,
  NotADiskImageError,
  UnsafeDiskImageError,
} from "./images/format";
export { ImageStore, imageId } from "./images/image-store";
export {
  type ImageRule,
  loadImageRules,
  normalizeImageName,
  parseImageRules,
  resolveImage,
} from "./images/rules";
export { type CgroupDriver, VmRuntime, type VmRuntimeOptions } from "./service";
export { openStateStore, type StateStore } from "./store";
export type {
  Accel,
  CloudInitFile,
  NetworkReadiness,
  PodNetworks,
  VmExit,
  VmHandle,
  VmLauncher,
  VmSpec,
  VmStats,
  VmTap,
} from "./types";
export { createVmLauncher, QemuLauncher } from "./vm/qemu-launcher";
export { killQemuOfDir } from "./vm/vm-files";
