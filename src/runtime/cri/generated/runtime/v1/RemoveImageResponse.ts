// Original file: proto/runtime/v1/api.proto

export type RemoveImageResponse = Record<string, never>;

export type RemoveImageResponse__Output = Record<string, never>;
