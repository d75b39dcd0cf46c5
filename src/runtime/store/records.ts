// What vmlet persists about each sandbox, container and image. Times are nanoseconds
// since the epoch as decimal strings, the way CRI carries them (int64 > 2^53).

/** `creating` is written before the network is built; a restart that finds it cleans up. */
export type SandboxPhase = "creating" | "ready" | "stopped";

export interface SandboxRecord {
  id: string;
  phase: SandboxPhase;
  createdAt: string;
  metadata: { name: string; uid: string; namespace: string; attempt: number };
  hostname: string;
  logDirectory: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  runtimeHandler: string;
  /** Pod IPs as the network gave them: the first is the primary. */
  ips: string[];
}

/** `starting` is written before QEMU is spawned; a restart that finds it reports a failed start. */
export type ContainerPhase = "created" | "starting" | "running" | "exited";

export interface MountRecord {
  containerPath: string;
  hostPath: string;
  readonly: boolean;
}

export interface ContainerRecord {
  id: string;
  sandboxId: string;
  phase: ContainerPhase;
  metadata: { name: string; attempt: number };
  /** The image as kubelet named it, and the image id it resolved to. */
  image: { spec: string; id: string; ref: string };
  createdAt: string;
  startedAt: string;
  finishedAt: string;
  exitCode: number;
  reason: string;
  message: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  logPath: string;
  /** The VM's working directory: overlay, seed, QMP socket. */
  dir: string;
  vcpus: number;
  memoryMiB: number;
  mounts: MountRecord[];
  /** The launcher's record of the running VM, handed back to it on restart. */
  vm?: unknown;
  pid?: number;
}

export type DiskFormat = "qcow2" | "raw";

export interface ImageRecord {
  /** The sha256 of the disk file, hex: also the blob's file name. */
  id: string;
  size: number;
  format: DiskFormat;
  repoTags: string[];
  /** `repository@sha256:<hex>` names it was pulled by; absent in records written before them. */
  repoDigests?: string[];
  /** Where it was last pulled from. */
  source: string;
  pulledAt: string;
}
