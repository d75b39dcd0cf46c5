// The CNI client's public surface.
export type {
  CniClientOptions,
  NetworkStatus,
  PodAttachment,
  PodNetworkOptions,
  PodRef,
} from "./client";
export { CniClient, ifnameFor, kubernetesCniArgs } from "./client";
export type { NetworkConfigList, PluginConfig } from "./config";
export { loadConfDir, parseNetworkFile } from "./config";
export {
  CniConfigError,
  CniError,
  CniInvalidResultError,
  CniPluginError,
  CniPluginNotFoundError,
  CniTimeoutError,
} from "./errors";
export type { VersionInfo } from "./network";
export type { CniDns, CniInterface, CniIp, CniResult, CniRoute } from "./result";
export { convertResult, parseResult, toWire } from "./result";
export type { PortMapping, RuntimeConfig } from "./runtime-config";
export type { CniVersion } from "./version";
