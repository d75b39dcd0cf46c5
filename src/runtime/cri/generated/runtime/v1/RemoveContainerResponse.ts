// Original file: proto/runtime/v1/api.proto

export type RemoveContainerResponse = Record<string, never>;

export type RemoveContainerResponse__Output = Record<string, never>;
