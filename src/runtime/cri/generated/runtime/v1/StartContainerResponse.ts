// Original file: proto/runtime/v1/api.proto

export type StartContainerResponse = Record<string, never>;

export type StartContainerResponse__Output = Record<string, never>;
