export {
  PodNetworkError,
  type RecoverOutcome,
  Tapmanager,
  type TapmanagerOptions,
} from "./tapmanager";
export type * from "./types";
