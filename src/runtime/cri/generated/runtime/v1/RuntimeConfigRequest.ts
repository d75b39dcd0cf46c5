// Original file: proto/runtime/v1/api.proto

export type RuntimeConfigRequest = Record<string, never>;

export type RuntimeConfigRequest__Output = Record<string, never>;
