// Original file: proto/runtime/v1/api.proto

export type ImageFsInfoRequest = Record<string, never>;

export type ImageFsInfoRequest__Output = Record<string, never>;
