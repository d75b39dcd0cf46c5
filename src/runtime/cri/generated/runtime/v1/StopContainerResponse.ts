// Original file: proto/runtime/v1/api.proto

export type StopContainerResponse = Record<string, never>;

export type StopContainerResponse__Output = Record<string, never>;
