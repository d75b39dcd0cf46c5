// ContainerStats, PodSandboxStats and their lists: CPU and memory of each VM's process,
// its writable layer on disk, and CPU rates from the previous sample of each container.
import {
  containerLog,
  containersOf,
  mustContainer,
  mustSandbox,
  type RuntimeContext,
} from "../context";
import { matchesId, matchesLabels, nowNs } from "../convert";
import type * as cri from "../cri/generated";
import type { ContainerRecord, SandboxRecord } from "../store/records";

interface CpuSample {
  atNs: bigint;
  cpuNanos: bigint;
}

export class StatsCalls {
  /** The last CPU reading per container, for usageNanoCores. */
  private readonly cpuSamples = new Map<string, CpuSample>();

  constructor(private readonly ctx: RuntimeContext) {}

  /** Drops what is kept for a removed container, so that its samples do not pile up. */
  forget(containerId: string): void {
    this.cpuSamples.delete(containerId);
  }

  async containerStats(
    req: cri.ContainerStatsRequest__Output,
  ): Promise<cri.ContainerStatsResponse> {
    const record = mustContainer(this.ctx, req.containerId, "ContainerStats");
    return { stats: await this.statsOf(record) };
  }

  async listContainerStats(
    req: cri.ListContainerStatsRequest__Output,
  ): Promise<cri.ListContainerStatsResponse> {
    const f = req.filter;
    const selected = this.ctx.store.containers
      .list()
      .filter(
        (c) =>
          c.phase !== "exited" &&
          matchesId(c.id, f?.id) &&
          matchesId(c.sandboxId, f?.podSandboxId) &&
          matchesLabels(c.labels, f?.labelSelector),
      );
    return { stats: await Promise.all(selected.map((c) => this.statsOf(c))) };
  }

  async podSandboxStats(
    req: cri.PodSandboxStatsRequest__Output,
  ): Promise<cri.PodSandboxStatsResponse> {
    const sandbox = mustSandbox(this.ctx, req.podSandboxId, "PodSandboxStats");
    return { stats: await this.sandboxStatsOf(sandbox) };
  }

  async listPodSandboxStats(
    req: cri.ListPodSandboxStatsRequest__Output,
  ): Promise<cri.ListPodSandboxStatsResponse> {
    const f = req.filter;
    const selected = this.ctx.store.sandboxes
      .list()
      .filter(
        (s) =>
          s.phase === "ready" &&
          matchesId(s.id, f?.id) &&
          matchesLabels(s.labels, f?.labelSelector),
      );
    return { stats: await Promise.all(selected.map((s) => this.sandboxStatsOf(s))) };
  }

  private async statsOf(record: ContainerRecord): Promise<cri.ContainerStats> {
    const timestamp = nowNs();
    let cpuNanos = 0n;
    let memoryBytes = 0;
    let diskBytes: number | undefined;
    const running = this.ctx.running.get(record.id);
    if (running) {
      try {
        const s = await running.handle.stats();
        cpuNanos = s.cpuNanos;
        memoryBytes = s.memoryBytes;
        diskBytes = s.diskBytes;
      } catch (error) {
        containerLog(this.ctx, record).debug({ err: error }, "VM stats failed");
      }
    }
    const atNs = BigInt(timestamp);
    const previous = this.cpuSamples.get(record.id);
    let nanoCores = 0n;
    if (previous && atNs > previous.atNs && cpuNanos >= previous.cpuNanos) {
      nanoCores = ((cpuNanos - previous.cpuNanos) * 1_000_000_000n) / (atNs - previous.atNs);
    }
    if (running) this.cpuSamples.set(record.id, { atNs, cpuNanos });
    const limit = record.memoryMiB * 1024 * 1024;
    return {
      attributes: {
        id: record.id,
        metadata: record.metadata,
        labels: record.labels,
        annotations: record.annotations,
      },
      cpu: {
        timestamp,
        usageCoreNanoSeconds: { value: cpuNanos.toString() },
        usageNanoCores: { value: nanoCores.toString() },
      },
      memory: {
        timestamp,
        workingSetBytes: { value: String(memoryBytes) },
        usageBytes: { value: String(memoryBytes) },
        rssBytes: { value: String(memoryBytes) },
        availableBytes: { value: String(Math.max(0, limit - memoryBytes)) },
      },
      // The root overlay: what kubelet counts as the container's ephemeral storage.
      ...(diskBytes === undefined
        ? {}
        : {
            writableLayer: {
              timestamp,
              fsId: { mountpoint: record.dir },
              usedBytes: { value: String(diskBytes) },
              inodesUsed: { value: "1" },
            },
          }),
    };
  }

  private async sandboxStatsOf(sandbox: SandboxRecord): Promise<cri.PodSandboxStats> {
    const containers = await Promise.all(
      containersOf(this.ctx, sandbox.id)
        .filter((c) => c.phase !== "exited")
        .map((c) => this.statsOf(c)),
    );
    const timestamp = nowNs();
    const sum = (pick: (s: cri.ContainerStats) => string | number | undefined) =>
      containers.reduce((acc, s) => acc + BigInt(pick(s) ?? 0), 0n).toString();
    return {
      attributes: {
        id: sandbox.id,
        metadata: sandbox.metadata,
        labels: sandbox.labels,
        annotations: sandbox.annotations,
      },
      linux: {
        cpu: {
          timestamp,
          usageCoreNanoSeconds: { value: sum((s) => uint64(s.cpu?.usageCoreNanoSeconds?.value)) },
          usageNanoCores: { value: sum((s) => uint64(s.cpu?.usageNanoCores?.value)) },
        },
        memory: {
          timestamp,
          workingSetBytes: { value: sum((s) => uint64(s.memory?.workingSetBytes?.value)) },
          usageBytes: { value: sum((s) => uint64(s.memory?.usageBytes?.value)) },
        },
        process: { timestamp, processCount: { value: String(containers.length) } },
        containers,
      },
    };
  }
}

function uint64(value: string | number | { toString(): string } | undefined): string {
  return value === undefined ? "0" : value.toString();
}
