// Original file: proto/runtime/v1/api.proto

export type RemovePodSandboxResponse = Record<string, never>;

export type RemovePodSandboxResponse__Output = Record<string, never>;
