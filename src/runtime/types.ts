// What the runtime uses from its two collaborators, as structural interfaces: the
// tapmanager (src/tapmanager) builds each pod's network, the VM launcher
// (src/runtime/vm) runs QEMU. Either plugs in as it is; tests plug in stand-ins.
import type { OpenedTap, PodDrops, PodNetwork, PodNetworkRequest } from "../tapmanager/types";
import type { VmSpec } from "./vm/types";

export type { OpenedTap, PodDrops, PodNetwork, PodNetworkRequest };

export interface NetworkReadiness {
  ready: boolean;
  reason?: string;
  message?: string;
}

/** The tapmanager, as the runtime sees it. */
export interface PodNetworks {
  setUp(req: PodNetworkRequest): Promise<PodNetwork>;
  /** Idempotent: tearing down a pod without a network is not an error. */
  tearDown(sandboxId: string): Promise<void>;
  get(sandboxId: string): PodNetwork | undefined;
  /** Fresh fds of the pod's taps; the caller closes them once QEMU has them. */
  openTaps(sandboxId: string): OpenedTap[];
  /** Re-attaches pod networks after a restart; what it returns is only logged. */
  recover(): Promise<unknown>;
  /** After recover() and before serving: frees what networks hold for unknown pods. */
  collectGarbage?(): Promise<void>;
  networkStatus(): NetworkReadiness;
  /** What the pod's guest isolation dropped, for the log at teardown (and metrics later). */
  dropCounts?(sandboxId: string): PodDrops | undefined;
}

// The VM's request is the launcher's own type; the handle below is what the runtime uses.
export type { Accel, CloudInitFile, VmSpec } from "./vm/types";

export interface VmExit {
  exitCode: number;
  reason: string;
  message?: string;
  finishedAt: Date | number;
}

export interface VmStats {
  cpuNanos: bigint;
  memoryBytes: number;
  /** The VM's writable layer on disk; absent when the launcher cannot tell. */
  diskBytes?: number;
}

export interface VmHandle {
  pid: number;
  /** JSON the runtime persists and gives back to `adopt` after a restart. */
  record: unknown;
  exited: Promise<VmExit>;
  /** ACPI power-down, then kill when `timeoutMs` has passed. */
  stop(timeoutMs: number): Promise<void>;
  kill(): Promise<void>;
  stats(): Promise<VmStats>;
  /** Reopen the log file after kubelet rotated it; absent when the launcher cannot. */
  reopenLog?(): Promise<void>;
  /** Stop watching, leaving the VM running (vmlet shutting down); `adopt` resumes. */
  detach?(): Promise<void>;
  /** The VM's console and guest agent sockets (kubectl attach and exec); absent when none. */
  channels?: { consoleSocket: string; guestAgentSocket?: string };
  /** Runs a command in the guest (ExecSync); absent when the launcher cannot. */
  exec?(argv: string[], timeoutMs: number, signal?: AbortSignal): Promise<ExecResult>;
}

export interface ExecResult {
  exitCode: number;
  stdout: Buffer;
  stderr: Buffer;
}

/** The VM launcher, as the runtime sees it. */
export interface VmLauncher {
  start(spec: VmSpec): Promise<VmHandle>;
  /** The handle of a VM still running from before a restart; undefined when it is gone. */
  adopt(record: unknown): Promise<VmHandle | undefined>;
  /** Kills whatever VM a start into `dir` that never returned left running. */
  discard?(dir: string): Promise<unknown>;
  /**
   * Kills the VM of a record that `adopt` could not take (its QMP does not answer), by
   * its pid, only while that pid is still the recorded process; true if it was running.
   */
  killRecorded?(record: unknown): Promise<boolean>;
}
