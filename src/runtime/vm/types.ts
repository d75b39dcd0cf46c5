// The VM launcher's public types: what the CRI server asks for (VmSpec), what it
// persists to find the VM again after a restart (VmRecord), and what it holds (VmHandle).

import type { GuestExecResult } from "./guest-agent";

export type Accel = "kvm" | "tcg" | "auto";

/**
 * How QEMU is confined: seccomp (-sandbox), the unprivileged user it drops to (-runas),
 * and no core dumps. Without one (a debugging switch), QEMU runs as root, unfiltered,
 * with vmlet's own core limit.
 */
export interface QemuConfinement {
  user: string;
}

/** One pod NIC: a tap fd from the tapmanager, given to the guest as a virtio-net device. */
export interface VmTap {
  /** The CNI interface name (eth0, net1, ...): names the NIC in network-config. */
  ifname: string;
  /** The tap device's name in the pod netns (for messages only). */
  tap: string;
  /** Open tap fd; the launcher passes it to QEMU and never closes it. */
  fd: number;
  /** The MAC CNI gave the pod; the guest takes it. */
  guestMac: string;
  /** The pod MTU, given to the guest as virtio-net host_mtu. */
  mtu: number;
}

export interface CloudInitFile {
  /** Absolute path in the guest. */
  path: string;
  content: Buffer | string;
  /** Octal mode, e.g. "0644". */
  permissions?: string;
}

export interface CloudInit {
  instanceId: string;
  hostname: string;
  /** Given user-data (#cloud-config, a script, ...); keys and files are merged into it. */
  userData?: string;
  sshKeys?: string[];
  files: CloudInitFile[];
}

export interface VmSpec {
  /** Container id: names the VM and its files. */
  id: string;
  /** Per-container state dir: overlay, seed, sockets, console capture. */
  dir: string;
  baseImage: { path: string; format: "qcow2" | "raw" };
  vcpus: number;
  memoryMiB: number;
  accel: Accel;
  taps: VmTap[];
  cloudInit: CloudInit;
  /** The container's CRI log path (kubelet's format). */
  logPath: string;
}

/** Everything needed to find, watch and clean up a running VM; JSON-serialisable. */
export interface VmRecord {
  version: 1;
  id: string;
  dir: string;
  pid: number;
  /** Field 22 of /proc/PID/stat (clock ticks since boot), so a reused PID is not taken for QEMU. */
  pidStartTime: string;
  startedAt: string;
  /** The accelerator QEMU was started with: "kvm", "tcg" or "kvm:tcg" (kvm, tcg fallback). */
  accel: string;
  qmpSocket: string;
  consoleSocket: string;
  /** The QEMU guest agent's port (virtio-serial); absent for VMs started before it. */
  guestAgentSocket?: string;
  /** Raw serial output, appended by QEMU whether or not vmlet is attached. */
  consoleRaw: string;
  /** Bytes of consoleRaw already written to the CRI log. */
  consoleOffsetFile: string;
  logPath: string;
  overlayPath: string;
  seedPath: string;
  qemuLogPath: string;
  pidFile: string;
}

export interface VmExit {
  exitCode: number;
  /** "Completed" (the guest shut down), "Killed", or "Error". */
  reason: string;
  message: string;
  finishedAt: Date;
}

export interface VmStats {
  /** User + system CPU time of every QEMU thread. */
  cpuNanos: bigint;
  /** Resident set size of the QEMU process. */
  memoryBytes: number;
  /** Disk space the root overlay takes: what the guest has written (its writable layer). */
  diskBytes: number;
}

export interface VmHandle {
  readonly pid: number;
  readonly record: VmRecord;
  /** Resolves once QEMU has ended and the console has been drained into the CRI log. */
  readonly exited: Promise<VmExit>;
  /** ACPI power button over QMP, then SIGKILL once timeoutMs has passed. */
  stop(timeoutMs: number): Promise<void>;
  /** SIGKILL, then waits for the exit. */
  kill(): Promise<void>;
  stats(): Promise<VmStats>;
  /** Reopens the CRI log at its path (after kubelet rotated it). */
  reopenLog(): Promise<void>;
  /**
   * Runs a command in the guest through the QEMU guest agent; timeoutMs 0 = no limit
   * of its own, so that `signal` (the CRI call's cancellation) ends it.
   */
  exec(argv: string[], timeoutMs: number, signal?: AbortSignal): Promise<GuestExecResult>;
  /** Stops watching without touching the VM (what a vmlet shutdown does); adopt() resumes. */
  detach(): Promise<void>;
  /** Kills QEMU if it still runs, then removes overlay, seed, sockets and console files. */
  cleanup(): Promise<void>;
}

/** The structured logger the launcher writes to (pino's shape). */
export interface VmLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}
