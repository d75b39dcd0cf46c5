// Original file: proto/runtime/v1/api.proto

export type UpdateRuntimeConfigResponse = Record<string, never>;

export type UpdateRuntimeConfigResponse__Output = Record<string, never>;
