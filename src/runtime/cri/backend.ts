// What the CRI server hands each call to, by call group (as VmRuntime.calls has them):
// vmlet's runtime, or the proxy that routes between it and the node's containerd.
import type * as cri from "./generated";
import type { CallContext } from "./server";

// The server passes the call's context only where a handler uses it (ExecSync).
type Call<Req, Res> = (request: Req, call?: CallContext) => Res | Promise<Res>;

export interface RuntimeInfoGroup {
  version: Call<cri.VersionRequest__Output, cri.VersionResponse>;
  status: Call<cri.StatusRequest__Output, cri.StatusResponse>;
  runtimeConfig: Call<cri.RuntimeConfigRequest__Output, cri.RuntimeConfigResponse>;
  updateRuntimeConfig: Call<
    cri.UpdateRuntimeConfigRequest__Output,
    cri.UpdateRuntimeConfigResponse
  >;
}

export interface SandboxGroup {
  runPodSandbox: Call<cri.RunPodSandboxRequest__Output, cri.RunPodSandboxResponse>;
  stopPodSandbox: Call<cri.StopPodSandboxRequest__Output, cri.StopPodSandboxResponse>;
  removePodSandbox: Call<cri.RemovePodSandboxRequest__Output, cri.RemovePodSandboxResponse>;
  podSandboxStatus: Call<cri.PodSandboxStatusRequest__Output, cri.PodSandboxStatusResponse>;
  listPodSandbox: Call<cri.ListPodSandboxRequest__Output, cri.ListPodSandboxResponse>;
}

export interface ContainerGroup {
  createContainer: Call<cri.CreateContainerRequest__Output, cri.CreateContainerResponse>;
  startContainer: Call<cri.StartContainerRequest__Output, cri.StartContainerResponse>;
  stopContainer: Call<cri.StopContainerRequest__Output, cri.StopContainerResponse>;
  removeContainer: Call<cri.RemoveContainerRequest__Output, cri.RemoveContainerResponse>;
  listContainers: Call<cri.ListContainersRequest__Output, cri.ListContainersResponse>;
  containerStatus: Call<cri.ContainerStatusRequest__Output, cri.ContainerStatusResponse>;
  reopenContainerLog: Call<cri.ReopenContainerLogRequest__Output, cri.ReopenContainerLogResponse>;
  // Not served by vmlet's own runtime (the server answers UNIMPLEMENTED without them).
  updateContainerResources?: Call<
    cri.UpdateContainerResourcesRequest__Output,
    cri.UpdateContainerResourcesResponse
  >;
  checkpointContainer?: Call<
    cri.CheckpointContainerRequest__Output,
    cri.CheckpointContainerResponse
  >;
}

export interface ExecGroup {
  execSync: Call<cri.ExecSyncRequest__Output, cri.ExecSyncResponse>;
  // Streaming: UNIMPLEMENTED without them.
  exec?: Call<cri.ExecRequest__Output, cri.ExecResponse>;
  attach?: Call<cri.AttachRequest__Output, cri.AttachResponse>;
  portForward?: Call<cri.PortForwardRequest__Output, cri.PortForwardResponse>;
}

export interface StatsGroup {
  containerStats: Call<cri.ContainerStatsRequest__Output, cri.ContainerStatsResponse>;
  listContainerStats: Call<cri.ListContainerStatsRequest__Output, cri.ListContainerStatsResponse>;
  podSandboxStats: Call<cri.PodSandboxStatsRequest__Output, cri.PodSandboxStatsResponse>;
  listPodSandboxStats: Call<
    cri.ListPodSandboxStatsRequest__Output,
    cri.ListPodSandboxStatsResponse
  >;
  // No extra metrics without them.
  listMetricDescriptors?: Call<
    cri.ListMetricDescriptorsRequest__Output,
    cri.ListMetricDescriptorsResponse
  >;
  listPodSandboxMetrics?: Call<
    cri.ListPodSandboxMetricsRequest__Output,
    cri.ListPodSandboxMetricsResponse
  >;
}

export interface ImageGroup {
  listImages: Call<cri.ListImagesRequest__Output, cri.ListImagesResponse>;
  imageStatus: Call<cri.ImageStatusRequest__Output, cri.ImageStatusResponse>;
  pullImage: Call<cri.PullImageRequest__Output, cri.PullImageResponse>;
  removeImage: Call<cri.RemoveImageRequest__Output, cri.RemoveImageResponse>;
  imageFsInfo: Call<cri.ImageFsInfoRequest__Output, cri.ImageFsInfoResponse>;
}

/** Every CRI call, by group. */
export interface CriCalls {
  runtimeInfo: RuntimeInfoGroup;
  sandbox: SandboxGroup;
  container: ContainerGroup;
  exec: ExecGroup;
  stats: StatsGroup;
  image: ImageGroup;
}

export interface CriBackend {
  calls: CriCalls;
}
