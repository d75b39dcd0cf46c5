// The VM types, declared once: what the runtime asks a launcher for (VmSpec), what it
// holds (VmHandle) and persists to find the VM again after a restart (the handle's
// record; QEMU's is VmRecord), and the launcher itself (VmLauncher). QemuLauncher is the
// real one; tests plug in stand-ins that implement only the required members.

import type { OpenedTap } from "../../tapmanager/types";
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

/**
 * One pod NIC, as the tapmanager opens it: `fd` goes to QEMU as a virtio-net device with
 * the guest MAC CNI gave the pod and the pod MTU as `host_mtu`; `ifname` names the NIC in
 * network-config, `tap` (the device in the pod netns) is for messages. The launcher never
 * closes the fd; the runtime does once QEMU has it.
 */
export type VmTap = OpenedTap;

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
  /** "Completed" (the guest shut down), "Killed", or "Error"; empty: told by the code. */
  reason: string;
  /** What ended it, when the launcher can tell. */
  message?: string;
  finishedAt: Date;
}

export interface VmStats {
  /** User + system CPU time of every thread of the VM's process. */
  cpuNanos: bigint;
  /** Resident set size of the VM's process. */
  memoryBytes: number;
  /** Disk space the root overlay takes (the guest's writable layer); absent when unknown. */
  diskBytes?: number;
}

/** A VM being watched; R is the launcher's record of it. */
export interface VmHandle<R = unknown> {
  readonly pid: number;
  /** JSON the runtime persists and gives back to `adopt` after a restart. */
  readonly record: R;
  /** Resolves once the VM has ended (for QEMU: and its console is drained into the CRI log). */
  readonly exited: Promise<VmExit>;
  /** ACPI power-down, then kill once `timeoutMs` has passed. */
  stop(timeoutMs: number): Promise<void>;
  /** SIGKILL, then waits for the exit. */
  kill(): Promise<void>;
  stats(): Promise<VmStats>;
  /** Reopens the CRI log at its path (after kubelet rotated it); absent when the launcher cannot. */
  reopenLog?(): Promise<void>;
  /**
   * Runs a command in the guest (ExecSync); timeoutMs 0 = no limit of its own, so that
   * `signal` (the CRI call's cancellation) ends it. Absent when the launcher cannot.
   */
  exec?(argv: string[], timeoutMs: number, signal?: AbortSignal): Promise<GuestExecResult>;
  /** The VM's console and guest agent sockets (kubectl attach and exec); absent when none. */
  readonly channels?: { consoleSocket: string; guestAgentSocket?: string };
  /** Stops watching, leaving the VM running (vmlet shutting down); `adopt` resumes. */
  detach?(): Promise<void>;
}

/** A QEMU VM: every optional member of VmHandle, always an exit message and the overlay's size, and cleanup. */
export interface QemuVm extends VmHandle<VmRecord> {
  readonly exited: Promise<Required<VmExit>>;
  stats(): Promise<Required<VmStats>>;
  reopenLog(): Promise<void>;
  exec(argv: string[], timeoutMs: number, signal?: AbortSignal): Promise<GuestExecResult>;
  detach(): Promise<void>;
  /** Kills QEMU if it still runs, then removes overlay, seed, sockets and console files. */
  cleanup(): Promise<void>;
}

/** What the runtime needs of a VM launcher; R is the record it persists per VM. */
export interface VmLauncher<R = unknown> {
  start(spec: VmSpec): Promise<VmHandle<R>>;
  /** The handle of a VM still running from before a restart; undefined when it is gone. */
  adopt(record: R): Promise<VmHandle<R> | undefined>;
  /** Kills whatever VM a start into `dir` that never returned left running. */
  discard?(dir: string): Promise<unknown>;
  /**
   * Kills the VM of a record that `adopt` could not take (its QMP does not answer), by
   * its pid, only while that pid is still the recorded process; true if it was running.
   */
  killRecorded?(record: R): Promise<boolean>;
}

/** The structured logger the launcher writes to (pino's shape). */
export interface VmLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}
