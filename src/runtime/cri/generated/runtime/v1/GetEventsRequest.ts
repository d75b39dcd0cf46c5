// Original file: proto/runtime/v1/api.proto

export type GetEventsRequest = Record<string, never>;

export type GetEventsRequest__Output = Record<string, never>;
