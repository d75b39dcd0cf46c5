// The IPv6 component's surface: one RA + DHCPv6 service per pod bridge, and the codecs.
export type { Dhcp6ParseReason } from "./codec";
export { Dhcp6ParseError, parseDhcp6 } from "./codec";
export type { Dhcp6Stats, Ipv6Log } from "./handler";
export type { OnLinkPrefix } from "./ndp";
export type { Dhcp6DropReason, Dhcp6Lease } from "./responder";
export type { RouterStats } from "./router";
export type { Ipv6ServerOptions, Ipv6ServerStats } from "./server";
export { Ipv6Server, Ipv6ServerError } from "./server";
