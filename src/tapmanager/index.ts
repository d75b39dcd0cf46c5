export { DEFAULT_NETNS_POOL, isPoolNetns } from "./netns-pool";
export {
  PodNetworkError,
  type RecoverOutcome,
  Tapmanager,
  type TapmanagerOptions,
} from "./tapmanager";
export type * from "./types";
