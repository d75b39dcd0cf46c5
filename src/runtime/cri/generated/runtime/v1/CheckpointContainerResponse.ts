// Original file: proto/runtime/v1/api.proto

export type CheckpointContainerResponse = Record<string, never>;

export type CheckpointContainerResponse__Output = Record<string, never>;
