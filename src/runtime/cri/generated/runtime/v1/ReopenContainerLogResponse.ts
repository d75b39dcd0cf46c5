// Original file: proto/runtime/v1/api.proto

export type ReopenContainerLogResponse = Record<string, never>;

export type ReopenContainerLogResponse__Output = Record<string, never>;
