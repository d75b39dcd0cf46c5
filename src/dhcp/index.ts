// The DHCP component's surface: one static server per pod bridge, and the codec.
export type { DhcpParseReason } from "./codec";
export { DhcpParseError, MessageType, Option, parseMessage } from "./codec";
export type {
  DhcpDropReason,
  DhcpLease,
  DhcpLog,
  DhcpServerOptions,
  DhcpStats,
} from "./server";
export { DhcpServer, DhcpServerError } from "./server";
