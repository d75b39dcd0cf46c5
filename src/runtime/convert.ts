// Records to CRI messages, and the small pieces of CRI semantics shared by the calls:
// timestamps, label selectors, id prefixes.
import type * as cri from "./cri/generated";
import { imageId, repoDigests } from "./images/image-store";
import type { ContainerRecord, ImageRecord, SandboxRecord } from "./store/records";
import type { PodNetwork } from "./types";

/** Nanoseconds since the epoch as CRI's int64, in a string (it exceeds 2^53). */
export function nowNs(): string {
  return toNs(Date.now());
}

export function toNs(time: Date | number): string {
  const ms = typeof time === "number" ? time : time.getTime();
  return (BigInt(Math.trunc(ms)) * 1_000_000n).toString();
}

export function matchesLabels(
  labels: Record<string, string>,
  selector: Record<string, string> | undefined,
): boolean {
  if (!selector) return true;
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

/** Filters take a full id or, as crictl passes them, a unique-enough prefix. */
export function matchesId(id: string, filter: string | undefined): boolean {
  return !filter || id.startsWith(filter);
}

/** The pod's IPs: the first IPv4 of the first interface leads, the rest follow. */
export function podIps(network: PodNetwork): string[] {
  const all = network.interfaces.flatMap((i) => i.addresses);
  const ordered = [...all.filter((a) => a.family === 4), ...all.filter((a) => a.family === 6)];
  return [...new Set(ordered.map((a) => a.address))];
}

export function sandboxState(record: SandboxRecord): cri.PodSandboxState__Output {
  return record.phase === "ready" ? "SANDBOX_READY" : "SANDBOX_NOTREADY";
}

export function sandboxMessage(record: SandboxRecord): cri.PodSandbox {
  return {
    id: record.id,
    metadata: record.metadata,
    state: sandboxState(record),
    createdAt: record.createdAt,
    labels: record.labels,
    annotations: record.annotations,
    runtimeHandler: record.runtimeHandler,
  };
}

export function sandboxStatusMessage(record: SandboxRecord): cri.PodSandboxStatus {
  const [ip = "", ...rest] = record.ips;
  return {
    id: record.id,
    metadata: record.metadata,
    state: sandboxState(record),
    createdAt: record.createdAt,
    network: { ip, additionalIps: rest.map((a) => ({ ip: a })) },
    linux: { namespaces: { options: { network: "POD", pid: "CONTAINER", ipc: "POD" } } },
    labels: record.labels,
    annotations: record.annotations,
    runtimeHandler: record.runtimeHandler,
  };
}

export function containerState(record: ContainerRecord): cri.ContainerState__Output {
  switch (record.phase) {
    case "created":
    case "starting":
      return "CONTAINER_CREATED";
    case "running":
      return "CONTAINER_RUNNING";
    case "exited":
      return "CONTAINER_EXITED";
  }
}

export function containerMessage(record: ContainerRecord): cri.Container {
  return {
    id: record.id,
    podSandboxId: record.sandboxId,
    metadata: record.metadata,
    image: { image: record.image.spec },
    imageRef: record.image.ref,
    imageId: `sha256:${record.image.id}`,
    state: containerState(record),
    createdAt: record.createdAt,
    labels: record.labels,
    annotations: record.annotations,
  };
}

export function containerStatusMessage(record: ContainerRecord): cri.ContainerStatus {
  return {
    id: record.id,
    metadata: record.metadata,
    state: containerState(record),
    createdAt: record.createdAt,
    startedAt: record.startedAt,
    finishedAt: record.finishedAt,
    exitCode: record.exitCode,
    image: { image: record.image.spec },
    imageRef: record.image.ref,
    imageId: `sha256:${record.image.id}`,
    reason: record.reason,
    message: record.message,
    labels: record.labels,
    annotations: record.annotations,
    mounts: record.mounts.map((m) => ({
      containerPath: m.containerPath,
      hostPath: m.hostPath,
      readonly: m.readonly,
    })),
    logPath: record.logPath,
  };
}

export function imageMessage(record: ImageRecord): cri.Image {
  return {
    id: imageId(record),
    repoTags: record.repoTags,
    repoDigests: repoDigests(record),
    size: String(record.size),
    spec: { image: imageId(record) },
  };
}
