// The CRI runtime's composition root: builds the shared context and the call groups
// (calls/*.ts), the VM monitor and recovery over it. cri/server.ts maps each gRPC
// method to its call group (`runtime.calls.<group>`); the one-line methods below keep
// `runtime.<method>(req)` working for code written against the single class.
// One VM per pod: the pod's one container is the VM.
import { ContainerCalls } from "./calls/container";
import { type CallDeadline, ExecCalls } from "./calls/exec";
import { ImageCalls } from "./calls/image";
import { RuntimeInfoCalls } from "./calls/runtime-info";
import { SandboxCalls } from "./calls/sandbox";
import { StatsCalls } from "./calls/stats";
import { streamLookups } from "./calls/streaming";
import { createContext, type VmRuntimeOptions } from "./context";
import type * as cri from "./cri/generated";
import { Recovery } from "./recover";
import type { StreamLookups } from "./streaming/cri-calls";
import { VmMonitor } from "./vm-monitor";

export type { CgroupDriver, VmRuntimeOptions } from "./context";

/** The call groups, one per CRI area, as containerd's CRI plugin has one file per group. */
export interface RuntimeCalls {
  runtimeInfo: RuntimeInfoCalls;
  sandbox: SandboxCalls;
  container: ContainerCalls;
  exec: ExecCalls;
  stats: StatsCalls;
  image: ImageCalls;
}

export class VmRuntime {
  readonly calls: RuntimeCalls;
  /** For CRI streaming (streaming/cri-calls.ts): running VMs' sockets, ready pods' IPs. */
  readonly streamLookups: StreamLookups;
  private readonly monitor: VmMonitor;
  private readonly recovery: Recovery;

  constructor(options: VmRuntimeOptions) {
    const ctx = createContext(options);
    const monitor = new VmMonitor(ctx);
    const stats = new StatsCalls(ctx);
    const container = new ContainerCalls(ctx, monitor, stats);
    const sandbox = new SandboxCalls(ctx, container);
    this.monitor = monitor;
    this.streamLookups = streamLookups(ctx);
    this.recovery = new Recovery(ctx, sandbox, monitor);
    this.calls = {
      runtimeInfo: new RuntimeInfoCalls(ctx),
      sandbox,
      container,
      exec: new ExecCalls(ctx),
      stats,
      image: new ImageCalls(ctx),
    };
  }

  // ---- lifecycle ----

  /** After a restart: networks, half-made sandboxes, running VMs (recover.ts). */
  recover(): Promise<void> {
    return this.recovery.recover();
  }

  startReaper(intervalMs?: number): void {
    this.recovery.startReaper(intervalMs);
  }

  readoptUnwatched(): Promise<void> {
    return this.recovery.readoptUnwatched();
  }

  reapHalfMade(why: string): Promise<void> {
    return this.recovery.reapHalfMade(why);
  }

  /** Lets go of the VMs without stopping them: they outlive vmlet and are adopted next start. */
  async detach(): Promise<void> {
    this.recovery.stopReaper();
    await this.monitor.detachAll();
  }

  // ---- the CRI calls, by their old names ----

  version(req: cri.VersionRequest__Output): cri.VersionResponse {
    return this.calls.runtimeInfo.version(req);
  }
  status(req: cri.StatusRequest__Output): cri.StatusResponse {
    return this.calls.runtimeInfo.status(req);
  }
  runtimeConfig(req: cri.RuntimeConfigRequest__Output): cri.RuntimeConfigResponse {
    return this.calls.runtimeInfo.runtimeConfig(req);
  }
  updateRuntimeConfig(
    req: cri.UpdateRuntimeConfigRequest__Output,
  ): cri.UpdateRuntimeConfigResponse {
    return this.calls.runtimeInfo.updateRuntimeConfig(req);
  }
  runPodSandbox(req: cri.RunPodSandboxRequest__Output): Promise<cri.RunPodSandboxResponse> {
    return this.calls.sandbox.runPodSandbox(req);
  }
  stopPodSandbox(req: cri.StopPodSandboxRequest__Output): Promise<cri.StopPodSandboxResponse> {
    return this.calls.sandbox.stopPodSandbox(req);
  }
  removePodSandbox(
    req: cri.RemovePodSandboxRequest__Output,
  ): Promise<cri.RemovePodSandboxResponse> {
    return this.calls.sandbox.removePodSandbox(req);
  }
  podSandboxStatus(req: cri.PodSandboxStatusRequest__Output): cri.PodSandboxStatusResponse {
    return this.calls.sandbox.podSandboxStatus(req);
  }
  listPodSandbox(req: cri.ListPodSandboxRequest__Output): cri.ListPodSandboxResponse {
    return this.calls.sandbox.listPodSandbox(req);
  }
  createContainer(req: cri.CreateContainerRequest__Output): Promise<cri.CreateContainerResponse> {
    return this.calls.container.createContainer(req);
  }
  startContainer(req: cri.StartContainerRequest__Output): Promise<cri.StartContainerResponse> {
    return this.calls.container.startContainer(req);
  }
  stopContainer(req: cri.StopContainerRequest__Output): Promise<cri.StopContainerResponse> {
    return this.calls.container.stopContainer(req);
  }
  removeContainer(req: cri.RemoveContainerRequest__Output): Promise<cri.RemoveContainerResponse> {
    return this.calls.container.removeContainer(req);
  }
  listContainers(req: cri.ListContainersRequest__Output): cri.ListContainersResponse {
    return this.calls.container.listContainers(req);
  }
  containerStatus(req: cri.ContainerStatusRequest__Output): cri.ContainerStatusResponse {
    return this.calls.container.containerStatus(req);
  }
  reopenContainerLog(
    req: cri.ReopenContainerLogRequest__Output,
  ): Promise<cri.ReopenContainerLogResponse> {
    return this.calls.container.reopenContainerLog(req);
  }
  execSync(req: cri.ExecSyncRequest__Output, call?: CallDeadline): Promise<cri.ExecSyncResponse> {
    return this.calls.exec.execSync(req, call);
  }
  containerStats(req: cri.ContainerStatsRequest__Output): Promise<cri.ContainerStatsResponse> {
    return this.calls.stats.containerStats(req);
  }
  listContainerStats(
    req: cri.ListContainerStatsRequest__Output,
  ): Promise<cri.ListContainerStatsResponse> {
    return this.calls.stats.listContainerStats(req);
  }
  podSandboxStats(req: cri.PodSandboxStatsRequest__Output): Promise<cri.PodSandboxStatsResponse> {
    return this.calls.stats.podSandboxStats(req);
  }
  listPodSandboxStats(
    req: cri.ListPodSandboxStatsRequest__Output,
  ): Promise<cri.ListPodSandboxStatsResponse> {
    return this.calls.stats.listPodSandboxStats(req);
  }
  listImages(req: cri.ListImagesRequest__Output): cri.ListImagesResponse {
    return this.calls.image.listImages(req);
  }
  imageStatus(req: cri.ImageStatusRequest__Output): cri.ImageStatusResponse {
    return this.calls.image.imageStatus(req);
  }
  pullImage(req: cri.PullImageRequest__Output): Promise<cri.PullImageResponse> {
    return this.calls.image.pullImage(req);
  }
  removeImage(req: cri.RemoveImageRequest__Output): Promise<cri.RemoveImageResponse> {
    return this.calls.image.removeImage(req);
  }
  imageFsInfo(req: cri.ImageFsInfoRequest__Output): Promise<cri.ImageFsInfoResponse> {
    return this.calls.image.imageFsInfo(req);
  }
}
