// Original file: proto/runtime/v1/api.proto

export type ListMetricDescriptorsRequest = Record<string, never>;

export type ListMetricDescriptorsRequest__Output = Record<string, never>;
