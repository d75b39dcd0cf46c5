// What the runtime uses from its two collaborators, as structural interfaces: the
// tapmanager (src/tapmanager) builds each pod's network, the VM launcher
// (src/runtime/vm, whose types are re-exported here) runs QEMU. Either plugs in as it
// is; tests plug in stand-ins.
import type { OpenedTap, PodDrops, PodNetwork, PodNetworkRequest } from "../tapmanager/types";

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

// The VM types have one declaration, the launcher's (vm/types.ts).
export type {
  Accel,
  CloudInitFile,
  VmExit,
  VmHandle,
  VmLauncher,
  VmSpec,
  VmStats,
  VmTap,
} from "./vm/types";
