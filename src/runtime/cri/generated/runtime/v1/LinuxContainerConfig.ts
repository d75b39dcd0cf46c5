// Original file: proto/runtime/v1/api.proto

import type {
  LinuxContainerResources as _runtime_v1_LinuxContainerResources,
  LinuxContainerResources__Output as _runtime_v1_LinuxContainerResources__Output,
} from "../../runtime/v1/LinuxContainerResources";

export interface LinuxContainerConfig {
  resources?: _runtime_v1_LinuxContainerResources | null;
}

export interface LinuxContainerConfig__Output {
  resources: _runtime_v1_LinuxContainerResources__Output | null;
}
