export { PodNetworkError, Tapmanager, type TapmanagerOptions } from "./tapmanager";
export type * from "./types";
