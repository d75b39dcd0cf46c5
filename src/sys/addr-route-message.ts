// RTM_GETADDR and RTM_GETROUTE dumps filtered in the kernel, parsed without the netlink
// package: reading a pod's netns wants one link's addresses and the main table's routes
// out of it, both families. Unfiltered, the dumps carry every link's addresses and the
// local tables' routes (IPv6 has several per link), which the package decodes in full.
// The filters need NETLINK_GET_STRICT_CHK on the socket (netlink-sync.ts).
import { bytesToIp } from "../util/ip";
import { attr, eachAttr } from "./netlink-attr";
import {
  AF_INET,
  AF_INET6,
  AF_UNSPEC,
  IFA_ADDRESS,
  IFA_LOCAL,
  IFADDRMSG_SIZE,
  RT_TABLE_MAIN,
  RTA_DST,
  RTA_GATEWAY,
  RTA_OIF,
  RTA_PRIORITY,
  RTA_TABLE,
  RTMSG_SIZE,
  RTNH_F_ONLINK,
} from "./uapi";

export interface ParsedAddress {
  index: number;
  family: 4 | 6;
  address: string;
  prefixLength: number;
  scope: number;
}

export interface ParsedRoute {
  family: 4 | 6;
  dst: string;
  dstLength: number;
  gateway?: string;
  oif?: number;
  scope: number;
  table: number;
  onlink: boolean;
  priority?: number;
  type: number;
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}

function familyOf(af: number): 4 | 6 | undefined {
  return af === AF_INET ? 4 : af === AF_INET6 ? 6 : undefined;
}

/** The body of an address dump of both families, only link `index`'s (ifa_index). */
export function getAddressesBody(index: number): Buffer {
  const ifaddrmsg = Buffer.alloc(IFADDRMSG_SIZE);
  ifaddrmsg.writeUInt8(AF_UNSPEC, 0);
  ifaddrmsg.writeUInt32LE(index, 4);
  return ifaddrmsg;
}

/** Parses an RTM_NEWADDR body; undefined for a family other than IPv4 and IPv6. */
export function parseAddress(body: Buffer): ParsedAddress | undefined {
  if (body.length < IFADDRMSG_SIZE) throw new Error(`address message of ${body.length} bytes`);
  const family = familyOf(body.readUInt8(0));
  if (!family) return undefined;
  let local: Buffer | undefined;
  let address: Buffer | undefined;
  eachAttr(body, IFADDRMSG_SIZE, (type, value) => {
    if (type === IFA_LOCAL) local = value;
    else if (type === IFA_ADDRESS) address = value;
  });
  const bytes = local ?? address;
  if (!bytes) return undefined;
  return {
    index: body.readUInt32LE(4),
    family,
    address: bytesToIp(bytes),
    prefixLength: body.readUInt8(1),
    scope: body.readUInt8(3),
  };
}

/**
 * The body of a route dump of both families: the main table's routes (rtm_table and
 * RTA_TABLE) whose next hop uses link `oif` (RTA_OIF).
 */
export function getRoutesBody(oif: number): Buffer {
  const rtmsg = Buffer.alloc(RTMSG_SIZE);
  rtmsg.writeUInt8(AF_UNSPEC, 0);
  rtmsg.writeUInt8(RT_TABLE_MAIN, 4);
  return Buffer.concat([rtmsg, attr(RTA_TABLE, u32(RT_TABLE_MAIN)), attr(RTA_OIF, u32(oif))]);
}

/** Parses an RTM_NEWROUTE body; undefined for a family other than IPv4 and IPv6. */
export function parseRoute(body: Buffer): ParsedRoute | undefined {
  if (body.length < RTMSG_SIZE) throw new Error(`route message of ${body.length} bytes`);
  const family = familyOf(body.readUInt8(0));
  if (!family) return undefined;
  const route: ParsedRoute = {
    family,
    dst: family === 4 ? "0.0.0.0" : "::",
    dstLength: body.readUInt8(1),
    table: body.readUInt8(4),
    scope: body.readUInt8(6),
    type: body.readUInt8(7),
    onlink: (body.readUInt32LE(8) & RTNH_F_ONLINK) !== 0,
  };
  eachAttr(body, RTMSG_SIZE, (type, value) => {
    if (type === RTA_DST) route.dst = bytesToIp(value);
    else if (type === RTA_GATEWAY) route.gateway = bytesToIp(value);
    else if (type === RTA_OIF && value.length >= 4) route.oif = value.readUInt32LE(0);
    else if (type === RTA_PRIORITY && value.length >= 4) route.priority = value.readUInt32LE(0);
    else if (type === RTA_TABLE && value.length >= 4) route.table = value.readUInt32LE(0);
  });
  return route;
}
