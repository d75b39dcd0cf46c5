// Original file: proto/runtime/v1/api.proto

export type UpdateContainerResourcesResponse = Record<string, never>;

export type UpdateContainerResourcesResponse__Output = Record<string, never>;
