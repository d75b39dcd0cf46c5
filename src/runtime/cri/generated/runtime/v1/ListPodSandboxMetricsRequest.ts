// Original file: proto/runtime/v1/api.proto

export type ListPodSandboxMetricsRequest = Record<string, never>;

export type ListPodSandboxMetricsRequest__Output = Record<string, never>;
