// What every call group of the runtime shares: the stores, the pod networks, the
// launcher, the per-pod lock and the VMs being watched. Built once by VmRuntime; the
// call groups (calls/*.ts), the VM monitor and recovery all take this one object.
import crypto from "node:crypto";
import path from "node:path";
import type { Logger } from "pino";
import { KeyedLock } from "../util/keyed-lock";
import { invalidArgument, notFound } from "./errors";
import type { ImageStore } from "./images/image-store";
import type { StateStore } from "./store";
import type { ContainerRecord, SandboxRecord } from "./store/records";
import { vmDirFor } from "./store/vm-dir";
import type { Accel, PodNetworks, VmExit, VmHandle, VmLauncher } from "./types";

export type CgroupDriver = "systemd" | "cgroupfs";

export interface VmRuntimeOptions {
  store: StateStore;
  images: ImageStore;
  networks: PodNetworks;
  launcher: VmLauncher;
  logger: Logger;
  accel: Accel;
  /** What RuntimeConfig tells kubelet; vmlet makes no cgroups of its own. */
  cgroupDriver?: CgroupDriver;
}

/** A VM vmlet watches: its handle, and its exit (a rejected `handle.exited` is an Error exit). */
export interface Running {
  handle: VmHandle;
  exited: Promise<VmExit>;
}

export interface RuntimeContext {
  readonly store: StateStore;
  readonly images: ImageStore;
  readonly networks: PodNetworks;
  readonly launcher: VmLauncher;
  readonly logger: Logger;
  readonly accel: Accel;
  readonly cgroupDriver: CgroupDriver;
  /** Every change of one pod (its sandbox and its container) runs under its sandbox id. */
  readonly lock: KeyedLock;
  /** The VMs watched now, by container id. */
  readonly running: Map<string, Running>;
  /** Sandboxes inside RunPodSandbox: the reaper leaves them alone. */
  readonly creating: Set<string>;
  /** Set once vmlet lets go of its VMs (shutting down): nothing is adopted any more. */
  detached: boolean;
}

export function createContext(options: VmRuntimeOptions): RuntimeContext {
  return {
    store: options.store,
    images: options.images,
    networks: options.networks,
    launcher: options.launcher,
    logger: options.logger,
    accel: options.accel,
    cgroupDriver: options.cgroupDriver ?? "systemd",
    lock: new KeyedLock(),
    running: new Map(),
    creating: new Set(),
    detached: false,
  };
}

/** Exit code of a VM whose start failed (or was cut short by a restart). */
export const START_ERROR_EXIT = 128;
/** Exit code of a VM that vanished while vmlet was not watching it. */
export const UNKNOWN_EXIT = 255;

/** The VM dir of a new container under the state dir. */
export function vmDirOf(ctx: RuntimeContext, containerId: string): string {
  return vmDirFor(ctx.store.dir, containerId);
}

/** Where container logs go for a sandbox that kubelet gave no log directory. */
export function fallbackLogDir(ctx: RuntimeContext, sandboxId: string): string {
  return path.join(ctx.store.dir, "logs", sandboxId);
}

export function containersOf(ctx: RuntimeContext, sandboxId: string): ContainerRecord[] {
  return ctx.store.containers.list().filter((c) => c.sandboxId === sandboxId);
}

export function required(value: string, call: string, field: string): string {
  if (!value) throw invalidArgument(`${call}: ${field} is required`);
  return value;
}

export function mustSandbox(ctx: RuntimeContext, id: string, call: string): SandboxRecord {
  required(id, call, "pod_sandbox_id");
  const sandbox = ctx.store.sandboxes.get(id);
  if (!sandbox || sandbox.phase === "creating")
    throw notFound(`${call}: pod sandbox ${id} not found`);
  return sandbox;
}

export function mustContainer(ctx: RuntimeContext, id: string, call: string): ContainerRecord {
  required(id, call, "container_id");
  const record = ctx.store.containers.get(id);
  if (!record) throw notFound(`${call}: container ${id} not found`);
  return record;
}

export function sandboxLog(ctx: RuntimeContext, sandbox: SandboxRecord): Logger {
  return ctx.logger.child({
    pod: `${sandbox.metadata.namespace}/${sandbox.metadata.name}`,
    podSandboxId: sandbox.id,
  });
}

export function containerLog(ctx: RuntimeContext, record: ContainerRecord | undefined): Logger {
  if (!record) return ctx.logger;
  const sandbox = ctx.store.sandboxes.get(record.sandboxId);
  return ctx.logger.child({
    pod: sandbox ? `${sandbox.metadata.namespace}/${sandbox.metadata.name}` : undefined,
    podSandboxId: record.sandboxId,
    containerId: record.id,
  });
}

/** 64 hex digits, as containerd makes them; also a valid CNI container id. */
export function newId(): string {
  return crypto.randomBytes(32).toString("hex");
}
