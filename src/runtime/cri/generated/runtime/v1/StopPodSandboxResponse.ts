// Original file: proto/runtime/v1/api.proto

export type StopPodSandboxResponse = Record<string, never>;

export type StopPodSandboxResponse__Output = Record<string, never>;
