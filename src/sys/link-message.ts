// RTM_GETLINK without the netlink package's parser: a link's message carries dozens of
// attributes (statistics, per-family config, queue and XDP details) that the package
// decodes in full, ~0.1 ms a link; vmlet reads six of them. The kernel is also asked to
// leave the statistics out (RTEXT_FILTER_SKIP_STATS), which it then neither gathers nor
// sends.
import { macToString } from "../util/mac";
import { attr, eachAttr } from "./netlink-attr";
import { AF_UNSPEC, IFLA_ADDRESS, IFLA_IFNAME, IFLA_LINKINFO } from "./uapi";

// linux/rtnetlink.h, linux/if_link.h, linux/if.h
export const RTM_GETLINK = 18;
const IFLA_MTU = 4;
const IFLA_LINK = 5;
const IFLA_MASTER = 10;
const IFLA_EXT_MASK = 29;
const IFLA_INFO_KIND = 1;
const RTEXT_FILTER_SKIP_STATS = 1 << 3;
const IFF_UP = 0x1;
/** struct ifinfomsg: family u8, pad u8, type u16, index s32, flags u32, change u32. */
const IFINFOMSG_SIZE = 16;

/** What vmlet reads of a link (rtnl.ts's LinkInfo). */
export interface ParsedLink {
  index: number;
  name: string;
  mac: string;
  mtu: number;
  up: boolean;
  master?: number;
  kind?: string;
  peerIndex?: number;
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}

/** The body of an RTM_GETLINK for `name` (by IFLA_IFNAME), or of a dump when omitted. */
export function getLinkBody(name?: string): Buffer {
  const ifinfomsg = Buffer.alloc(IFINFOMSG_SIZE);
  ifinfomsg.writeUInt8(AF_UNSPEC, 0);
  return Buffer.concat([
    ifinfomsg,
    ...(name === undefined ? [] : [attr(IFLA_IFNAME, Buffer.from(`${name}\0`))]),
    attr(IFLA_EXT_MASK, u32(RTEXT_FILTER_SKIP_STATS)),
  ]);
}

function cString(value: Buffer): string {
  const end = value.indexOf(0);
  return value.toString("utf8", 0, end < 0 ? value.length : end);
}

/** Parses an RTM_NEWLINK message body (what RTM_GETLINK answers). */
export function parseLink(body: Buffer): ParsedLink {
  if (body.length < IFINFOMSG_SIZE) throw new Error(`link message of ${body.length} bytes`);
  const link: ParsedLink = {
    index: body.readInt32LE(4),
    name: "",
    mac: "",
    mtu: 0,
    up: (body.readUInt32LE(8) & IFF_UP) !== 0,
  };
  eachAttr(body, IFINFOMSG_SIZE, (type, value) => {
    if (type === IFLA_IFNAME) link.name = cString(value);
    else if (type === IFLA_ADDRESS && value.length > 0) link.mac = macToString(value);
    else if (type === IFLA_MTU && value.length >= 4) link.mtu = value.readUInt32LE(0);
    else if (type === IFLA_MASTER && value.length >= 4) {
      if (value.readUInt32LE(0) !== 0) link.master = value.readUInt32LE(0);
    } else if (type === IFLA_LINK && value.length >= 4) link.peerIndex = value.readUInt32LE(0);
    else if (type === IFLA_LINKINFO) {
      eachAttr(value, 0, (t, v) => {
        if (t === IFLA_INFO_KIND) link.kind = cString(v);
      });
    }
  });
  return link;
}
