// rtnetlink inside one netns: links, addresses, routes, neighbours. The socket is made
// while the main thread is inside the netns, so every request manages that netns. Each
// request completes inside its call (netlink-sync.ts): the returned promise is settled,
// and awaiting it costs a microtask, not a turn of the event loop.
// Over 400 lines: one request and its reply parser per object kind, over one socket and
// queue; the kinds share the framing, the error type and what the connection knows of
// its links (indexes, last-read links), which each kind's changes keep true.
import { type NetlinkSocket, RtNetlinkSocket, rt } from "netlink";
import { formatInfo } from "netlink/dist/rt/ifla";
import { AttrStream } from "netlink/dist/structs";
import { errnoCode } from "../util/errors";
import { bytesToIp, ipToBytes } from "../util/ip";
import { macToBuffer, macToString } from "../util/mac";
import { getAddressesBody, getRoutesBody, parseAddress, parseRoute } from "./addr-route-message";
import { getLinkBody, parseLink, RTM_GETLINK } from "./link-message";
import { attr } from "./netlink-attr";
import { SyncNetlinkSocket } from "./netlink-sync";
import { withNetns } from "./netns";

import {
  AF_BRIDGE,
  AF_INET,
  AF_INET6,
  AF_UNSPEC,
  IFLA_ADDRESS,
  IFLA_AF_SPEC,
  IFLA_BRPORT_LEARNING,
  IFLA_IFNAME,
  IFLA_INET_CONF,
  IFLA_LINKINFO,
  IFLA_NET_NS_FD,
  IFLA_PROTINFO,
  IPV4_DEVCONF_ARP_IGNORE,
  NDA_LLADDR,
  NDA_MASTER,
  NLA_F_NESTED,
  NLM_F_CREATE,
  NLM_F_DUMP,
  NLM_F_EXCL,
  NLM_F_REPLACE,
  NTF_MASTER,
  NUD_NOARP,
  RT_SCOPE_HOST,
  RT_SCOPE_LINK,
  RT_SCOPE_NOWHERE,
  RT_SCOPE_UNIVERSE,
  RT_TABLE_MAIN,
  RTM_GETADDR,
  RTM_GETROUTE,
  RTM_NEWADDR,
  RTM_NEWROUTE,
  RTM_SETLINK,
  RTN_UNICAST,
  RTNH_F_ONLINK,
  RTPROT_BOOT,
  VETH_INFO_PEER,
} from "./uapi";

// netlink requests to the kernel answer at once; a silent socket means something broke.
const REQUEST_TIMEOUT_MS = 5000;

export type IpFamily = 4 | 6;

/** linux/rtnetlink.h RTM_NEWLINK. */
const RTM_NEWLINK = 16;

export interface LinkInfo {
  index: number;
  name: string;
  /** Lower-case colon-separated MAC; empty for links without one (lo has 00:00:...). */
  mac: string;
  mtu: number;
  up: boolean;
  /** Index of the bridge this link is enslaved to. */
  master?: number;
  /** IFLA_INFO_KIND: "bridge", "veth", "tun", ... */
  kind?: string;
  /** For a veth: the peer's index in its own netns (IFLA_LINK). */
  peerIndex?: number;
}

/** What a link is to a program or a frame: its index and MAC. */
export type LinkAddress = Pick<LinkInfo, "name" | "index" | "mac">;

export interface AddressInfo {
  index: number;
  family: IpFamily;
  address: string;
  prefixLength: number;
  scope: number;
}

export interface RouteInfo {
  family: IpFamily;
  /** Destination network, e.g. "10.1.0.0"; "0.0.0.0" or "::" for the default route. */
  dst: string;
  dstLength: number;
  gateway?: string;
  /** Output link index. */
  oif?: number;
  scope: number;
  table: number;
  onlink: boolean;
  priority?: number;
  /** RTN_* type: 1 unicast, 2 local, 3 broadcast, ... */
  type: number;
}

export interface RouteSpec {
  dst: string;
  dstLength: number;
  gateway?: string;
  /** Link name the route goes out of. */
  device?: string;
  onlink?: boolean;
  /** "link" for a route without gateway; inferred when omitted. */
  scope?: "link" | "universe" | "host";
  priority?: number;
}

/** A failed rtnetlink request, naming the operation, the netns and the errno. */
export class RtnlError extends Error {
  readonly code: string;
  constructor(operation: string, nsPath: string, code: string, options?: ErrorOptions) {
    super(`${operation} in ${nsPath}: ${code}`, options);
    this.name = "RtnlError";
    this.code = code;
  }
}

function familyOf(ip: string): IpFamily {
  return ip.includes(":") ? 6 : 4;
}

function afOf(family: IpFamily): number {
  return family === 4 ? AF_INET : AF_INET6;
}

function encode(data: Parameters<AttrStream["emit"]>[0]): Buffer {
  const stream = new AttrStream();
  stream.emit(data);
  return Buffer.concat(stream.bufs);
}

export { attr };

/** An rtnetlink connection to one netns. Close it when done. */
export class Rtnl {
  private readonly socket: RtNetlinkSocket;

  private constructor(
    private readonly transport: SyncNetlinkSocket,
    private path: string,
  ) {
    // The netlink package formats and parses; the transport sends and reads.
    this.socket = new RtNetlinkSocket(transport as unknown as NetlinkSocket);
  }

  /**
   * Link indexes by name, looked up once per connection, by SIOCGIFINDEX (a name lookup)
   * rather than RTM_GETLINK (0.1-0.2 ms: a bridge's message is kilobytes of options and
   * per-family state). A connection serves one setUp, recovery or teardown of one pod,
   * whose links nothing else renames or re-creates meanwhile; one this connection
   * deletes or creates is forgotten, so a re-created link's new index is looked up.
   */
  private readonly indexes = new Map<string, number>();
  /**
   * Links as this connection last read them (RTM_GETLINK), for cachedLink(); a change
   * made over this connection to a link (or to its ports, for a bridge) drops it.
   */
  private readonly seen = new Map<string, LinkInfo>();
  private strict = false;

  /** The index of the link called `name`, looked up once per connection. */
  async linkIndex(name: string): Promise<number> {
    return this.indexOf(name);
  }

  private async indexOf(name: string): Promise<number> {
    const known = this.indexes.get(name);
    if (known !== undefined) return known;
    const index = await this.call(`find link ${name}`, async () => this.transport.indexOf(name));
    this.indexes.set(name, index);
    return index;
  }

  /**
   * The link's index (once per connection) and MAC (SIOCGIFHWADDR), without the kernel
   * building its message: a bridge's is kilobytes, and only these two are wanted.
   */
  async linkAddress(name: string): Promise<LinkAddress> {
    const index = await this.indexOf(name);
    const mac = await this.call(`read MAC of ${name}`, async () =>
      macToString(this.transport.hardwareAddress(name)),
    );
    return { name, index, mac };
  }

  /** What this connection knows of `name` is stale: it deleted, made or changed it. */
  private forget(name: string): void {
    this.indexes.delete(name);
    this.seen.delete(name);
  }

  /**
   * The link as this connection read it last, unless it changed it since; else one
   * RTM_GETLINK. For attributes nothing but this connection changes while it serves one
   * pod (the veth's MAC and MTU, a port's master).
   */
  async cachedLink(name: string): Promise<LinkInfo> {
    return this.seen.get(name) ?? this.link(name);
  }

  /** The netns this connection is to, by the name it had when opened or was given since. */
  get nsPath(): string {
    return this.path;
  }

  /**
   * The netns was given another name (a pooled one, taken by a pod): the socket stays
   * bound to the namespace itself; only what errors name it changes.
   */
  netnsRenamed(nsPath: string): void {
    this.path = nsPath;
  }

  static open(nsPath: string): Rtnl {
    return new Rtnl(
      withNetns(nsPath, () => SyncNetlinkSocket.open()),
      nsPath,
    );
  }

  /** Runs `fn` on a connection of its own to `nsPath`, closed after. */
  static async using<T>(nsPath: string, fn: (rtnl: Rtnl) => Promise<T>): Promise<T> {
    const rtnl = Rtnl.open(nsPath);
    try {
      return await fn(rtnl);
    } finally {
      rtnl.close();
    }
  }

  close(): void {
    this.transport.close();
  }

  /** Requests go one at a time, in the order asked. */
  private queue: Promise<unknown> = Promise.resolve();

  private call<T>(operation: string, request: () => Promise<T>): Promise<T> {
    const run = async () => {
      try {
        return await request();
      } catch (error) {
        throw new RtnlError(operation, this.nsPath, errnoCode(error), { cause: error });
      }
    };
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /**
   * A request the netlink package has no call for (tc's qdiscs and filters), on this
   * socket's queue; an errno in `tolerated` counts as done.
   */
  async request(
    operation: string,
    type: number,
    body: Buffer,
    flags: number,
    tolerated: readonly string[] = [],
  ): Promise<void> {
    try {
      await this.call(operation, () =>
        this.socket.request(type, body, { flags, timeout: REQUEST_TIMEOUT_MS }),
      );
    } catch (error) {
      if (error instanceof RtnlError && tolerated.includes(error.code)) return;
      throw error;
    }
  }

  async links(): Promise<LinkInfo[]> {
    const [messages] = await this.call("RTM_GETLINK dump", () =>
      this.transport.request(RTM_GETLINK, getLinkBody(), { flags: NLM_F_DUMP }),
    );
    return messages.filter((m) => m.type === RTM_NEWLINK).map((m) => parseLink(m.data));
  }

  /**
   * The link called `name`, or undefined. One RTM_GETLINK by IFLA_IFNAME: the kernel looks
   * the name up, so no dump of every link crosses the socket and gets parsed.
   */
  async findLink(name: string): Promise<LinkInfo | undefined> {
    try {
      const [messages] = await this.call(`find link ${name}`, () =>
        this.transport.request(RTM_GETLINK, getLinkBody(name)),
      );
      const message = messages.find((m) => m.type === RTM_NEWLINK);
      const link = message && parseLink(message.data);
      if (link) {
        this.indexes.set(link.name, link.index);
        this.seen.set(link.name, link);
      }
      return link;
    } catch (error) {
      if (error instanceof RtnlError && error.code === "ENODEV") return undefined;
      throw error;
    }
  }

  async link(name: string): Promise<LinkInfo> {
    const link = await this.findLink(name);
    if (!link) throw new RtnlError(`find link ${name}`, this.nsPath, "ENODEV");
    return link;
  }

  async addresses(family?: IpFamily): Promise<AddressInfo[]> {
    const messages = await this.call("RTM_GETADDR dump", () =>
      this.socket.getAddresses(family ? { family: afOf(family) } : undefined, undefined, {
        timeout: REQUEST_TIMEOUT_MS,
      }),
    );
    return messages
      .filter((m) => m.data.family === AF_INET || m.data.family === AF_INET6)
      .map((m) => ({
        index: m.data.index ?? 0,
        family: m.data.family === AF_INET ? 4 : 6,
        address: bytesToIp((m.attrs.local ?? m.attrs.address) as Buffer),
        prefixLength: m.data.prefixlen ?? 0,
        scope: m.data.scope ?? 0,
      }));
  }

  /**
   * Link `index`'s addresses, both families, in one dump the kernel filters (strict
   * checking, on from here): no other link's addresses are built, sent or parsed.
   */
  async addressesOf(index: number): Promise<AddressInfo[]> {
    const [messages] = await this.call(`RTM_GETADDR dump of link ${index}`, () =>
      this.strictTransport().request(RTM_GETADDR, getAddressesBody(index), { flags: NLM_F_DUMP }),
    );
    return messages.flatMap((m) => (m.type === RTM_NEWADDR ? (parseAddress(m.data) ?? []) : []));
  }

  /**
   * The main table's routes out of link `oif`, both families, in one dump the kernel
   * filters (strict checking, on from here): the local tables and other links' routes
   * are neither built nor sent.
   */
  async routesVia(oif: number): Promise<RouteInfo[]> {
    const [messages] = await this.call(`RTM_GETROUTE dump via link ${oif}`, () =>
      this.strictTransport().request(RTM_GETROUTE, getRoutesBody(oif), { flags: NLM_F_DUMP }),
    );
    return messages
      .flatMap((m) => (m.type === RTM_NEWROUTE ? (parseRoute(m.data) ?? []) : []))
      .filter((r) => r.table === RT_TABLE_MAIN);
  }

  private strictTransport(): SyncNetlinkSocket {
    if (!this.strict) {
      this.transport.enableStrictCheck();
      this.strict = true;
    }
    return this.transport;
  }

  /** Routes of the main table. */
  async routes(family: IpFamily = 4): Promise<RouteInfo[]> {
    const messages = await this.call("RTM_GETROUTE dump", () =>
      this.socket.getRoutes({ family: afOf(family) }, undefined, { timeout: REQUEST_TIMEOUT_MS }),
    );
    const zero = family === 4 ? "0.0.0.0" : "::";
    return messages
      .map((m) => {
        const table = m.attrs.table ?? m.data.table ?? 0;
        const route: RouteInfo = {
          family,
          dst: m.attrs.dst ? bytesToIp(m.attrs.dst) : zero,
          dstLength: m.data.dstLen ?? 0,
          scope: enumValue(rt.RouteScope, m.data.scope),
          table,
          onlink: ((rtFlagsRaw(m.data.flags) ?? 0) & RTNH_F_ONLINK) !== 0,
          type: enumValue(rt.RouteType, m.data.type),
        };
        if (m.attrs.gateway) route.gateway = bytesToIp(m.attrs.gateway);
        if (m.attrs.oif) route.oif = m.attrs.oif;
        if (m.attrs.priority !== undefined) route.priority = m.attrs.priority;
        return route;
      })
      .filter((r) => r.table === RT_TABLE_MAIN);
  }

  private async newLink(
    operation: string,
    name: string,
    kindAttrs: Buffer[],
    extra: Buffer[] = [],
  ) {
    this.forget(name);
    const ifname = attr(IFLA_IFNAME, Buffer.from(`${name}\0`));
    const body = Buffer.concat([
      rt.formatLink({ family: AF_UNSPEC }),
      ifname,
      ...kindAttrs,
      ...extra,
    ]);
    await this.call(operation, () =>
      this.socket.request(rt.MessageType.NEWLINK, body, {
        flags: NLM_F_CREATE | NLM_F_EXCL,
        timeout: REQUEST_TIMEOUT_MS,
      }),
    );
  }

  /** A bridge; with `mac`, it has that address from the start (no RTM_SETLINK after). */
  async createBridge(name: string, mac?: string): Promise<void> {
    const linkinfo = encode(formatInfo({ kind: "bridge" }));
    const address = mac ? [attr(IFLA_ADDRESS, macToBuffer(mac))] : [];
    await this.newLink(
      `RTM_NEWLINK bridge ${name}`,
      name,
      [attr(IFLA_LINKINFO, linkinfo)],
      address,
    );
  }

  /**
   * Creates a veth pair `name` here and `peerName` in the netns open at `peerNsFd`
   * (here when omitted).
   */
  async createVeth(name: string, peerName: string, peerNsFd?: number): Promise<void> {
    const peerAttrs = [attr(IFLA_IFNAME, Buffer.from(`${peerName}\0`))];
    if (peerNsFd !== undefined) {
      const fd = Buffer.alloc(4);
      fd.writeUInt32LE(peerNsFd);
      peerAttrs.push(attr(IFLA_NET_NS_FD, fd));
    }
    const peer = attr(
      VETH_INFO_PEER,
      Buffer.concat([rt.formatLink({ family: AF_UNSPEC }), ...peerAttrs]),
    );
    if (peerNsFd === undefined) this.forget(peerName);
    const linkinfo = encode(formatInfo({ kind: "veth", data: peer }));
    await this.newLink(`RTM_NEWLINK veth ${name} peer ${peerName}`, name, [
      attr(IFLA_LINKINFO, linkinfo),
    ]);
  }

  /** RTM_SETLINK addressed by IFLA_IFNAME (index 0): the kernel finds the link, no lookup first. */
  private async setLink(operation: string, name: string, change: { up?: boolean }, attrs: object) {
    this.seen.delete(name);
    await this.call(operation, () =>
      this.socket.setLink(
        {
          // DeviceFlags only models set bits: an empty `flags` with `change.up` clears it.
          ...(change.up === undefined
            ? {}
            : { change: { up: true as const }, flags: change.up ? { up: true as const } : {} }),
        },
        { ...attrs, ifname: name },
        { timeout: REQUEST_TIMEOUT_MS },
      ),
    );
  }

  async setUp(name: string): Promise<void> {
    await this.setLink(`set ${name} up`, name, { up: true }, {});
  }

  async setDown(name: string): Promise<void> {
    await this.setLink(`set ${name} down`, name, { up: false }, {});
  }

  async setMaster(name: string, master: string): Promise<void> {
    const bridge = await this.indexOf(master);
    // A bridge whose MTU was never set follows its ports'.
    this.seen.delete(master);
    await this.setLink(`set ${name} master ${master}`, name, {}, { master: bridge });
  }

  async setMac(name: string, mac: string): Promise<void> {
    await this.setLink(`set ${name} address ${mac}`, name, {}, { address: macToBuffer(mac) });
  }

  /**
   * Several changes to one link in a single RTM_SETLINK: the kernel applies the address,
   * then the flags, then the master (do_setlink's order), and stops at the first refused.
   */
  async changeLink(
    name: string,
    change: { mac?: string; master?: string; up?: boolean },
  ): Promise<void> {
    const attrs: { address?: Buffer; master?: number } = {};
    const what: string[] = [];
    if (change.mac) {
      attrs.address = macToBuffer(change.mac);
      what.push(`address ${change.mac}`);
    }
    if (change.master) {
      attrs.master = await this.indexOf(change.master);
      // A bridge whose MTU was never set follows its ports'.
      this.seen.delete(change.master);
      what.push(`master ${change.master}`);
    }
    if (change.up !== undefined) what.push(change.up ? "up" : "down");
    await this.setLink(`set ${name} ${what.join(" ")}`, name, { up: change.up }, attrs);
  }

  async setMtu(name: string, mtu: number): Promise<void> {
    await this.setLink(`set ${name} mtu ${mtu}`, name, {}, { mtu });
  }

  async deleteLink(name: string): Promise<void> {
    const index = await this.indexOf(name);
    this.forget(name);
    await this.call(`RTM_DELLINK ${name}`, () =>
      this.socket.delLink({ index }, undefined, { timeout: REQUEST_TIMEOUT_MS }),
    );
  }

  private addressMessage(index: number, cidr: string) {
    const [ip, len] = cidr.split("/");
    const family = familyOf(ip);
    const prefixlen = Number(len ?? (family === 4 ? 32 : 128));
    const bytes = ipToBytes(ip);
    return {
      data: { family: afOf(family), prefixlen, index },
      attrs: { local: bytes, address: bytes },
    };
  }

  async addAddress(name: string, cidr: string): Promise<void> {
    const { data, attrs } = this.addressMessage(await this.indexOf(name), cidr);
    await this.call(`RTM_NEWADDR ${cidr} dev ${name}`, () =>
      this.socket.newAddress(data, attrs, {
        flags: NLM_F_CREATE | NLM_F_EXCL,
        timeout: REQUEST_TIMEOUT_MS,
      }),
    );
  }

  async deleteAddress(name: string, cidr: string): Promise<void> {
    const { data, attrs } = this.addressMessage(await this.indexOf(name), cidr);
    await this.call(`RTM_DELADDR ${cidr} dev ${name}`, () =>
      this.socket.delAddress(data, attrs, { timeout: REQUEST_TIMEOUT_MS }),
    );
  }

  private async routeMessage(spec: RouteSpec) {
    const family = familyOf(spec.dst);
    const attrs: rt.RouteAttrs = { table: RT_TABLE_MAIN };
    if (spec.dstLength > 0) attrs.dst = ipToBytes(spec.dst);
    if (spec.gateway) attrs.gateway = ipToBytes(spec.gateway);
    if (spec.device) attrs.oif = await this.indexOf(spec.device);
    if (spec.priority !== undefined) attrs.priority = spec.priority;
    const scope =
      spec.scope === "host"
        ? RT_SCOPE_HOST
        : spec.scope === "link" || (spec.scope === undefined && !spec.gateway)
          ? RT_SCOPE_LINK
          : RT_SCOPE_UNIVERSE;
    const data: rt.Route = {
      family: afOf(family),
      dstLen: spec.dstLength,
      table: RT_TABLE_MAIN,
      protocol: RTPROT_BOOT,
      scope,
      type: RTN_UNICAST,
      flags: spec.onlink ? { __unknown: RTNH_F_ONLINK } : {},
    };
    return { data, attrs };
  }

  static describeRoute(spec: RouteSpec): string {
    const dst = spec.dstLength === 0 ? "default" : `${spec.dst}/${spec.dstLength}`;
    return [
      dst,
      spec.gateway ? `via ${spec.gateway}` : "",
      spec.device ? `dev ${spec.device}` : "",
      spec.onlink ? "onlink" : "",
    ]
      .filter(Boolean)
      .join(" ");
  }

  async addRoute(spec: RouteSpec): Promise<void> {
    const { data, attrs } = await this.routeMessage(spec);
    await this.call(`RTM_NEWROUTE ${Rtnl.describeRoute(spec)}`, () =>
      this.socket.newRoute(data, attrs, {
        flags: NLM_F_CREATE | NLM_F_EXCL,
        timeout: REQUEST_TIMEOUT_MS,
      }),
    );
  }

  async deleteRoute(spec: RouteSpec): Promise<void> {
    const { data, attrs } = await this.routeMessage(spec);
    // The kernel matches on what is given; leave scope and protocol open.
    data.scope = RT_SCOPE_NOWHERE;
    delete data.protocol;
    await this.call(`RTM_DELROUTE ${Rtnl.describeRoute(spec)}`, () =>
      this.socket.delRoute(data, attrs, { timeout: REQUEST_TIMEOUT_MS }),
    );
  }

  /**
   * The link's net.ipv4.conf.NAME.arp_ignore, set over netlink (RTM_SETLINK, the IPv4
   * devconf in IFLA_AF_SPEC) rather than through /proc/sys, which would mean entering the
   * netns to open it.
   */
  async setArpIgnore(name: string, value: number): Promise<void> {
    const index = await this.indexOf(name);
    const value32 = Buffer.alloc(4);
    value32.writeUInt32LE(value);
    const conf = attr(IFLA_INET_CONF, attr(IPV4_DEVCONF_ARP_IGNORE, value32));
    const body = Buffer.concat([
      rt.formatLink({ family: AF_UNSPEC, index }),
      attr(IFLA_AF_SPEC, attr(AF_INET, conf)),
    ]);
    await this.request(`set ${name} arp_ignore ${value}`, RTM_SETLINK, body, 0);
  }

  /**
   * Turns MAC learning on or off on a bridge port (`bridge link set dev NAME learning off`):
   * RTM_SETLINK for AF_BRIDGE with IFLA_BRPORT_LEARNING nested in IFLA_PROTINFO.
   */
  async setBridgePortLearning(name: string, learning: boolean): Promise<void> {
    const index = await this.indexOf(name);
    const protinfo = attr(
      IFLA_PROTINFO | NLA_F_NESTED,
      attr(IFLA_BRPORT_LEARNING, Buffer.from([learning ? 1 : 0])),
    );
    const body = Buffer.concat([rt.formatLink({ family: AF_BRIDGE, index }), protinfo]);
    await this.call(`set ${name} bridge port learning ${learning ? "on" : "off"}`, () =>
      this.socket.request(rt.MessageType.SETLINK, body, { timeout: REQUEST_TIMEOUT_MS }),
    );
  }

  /**
   * A static FDB entry on `port`'s bridge (`bridge fdb replace MAC dev PORT master static`):
   * frames to `mac` leave through `port` whatever the bridge learns. Replaces one that is there.
   */
  async setStaticFdb(port: string, mac: string, bridge?: string): Promise<void> {
    // With the bridge named (the caller enslaved the port), no lookup of the port's master.
    const link = bridge
      ? { index: await this.indexOf(port), master: await this.indexOf(bridge) }
      : await this.link(port);
    if (link.master === undefined) {
      throw new RtnlError(`static FDB ${mac} on ${port}`, this.nsPath, "ENOTCONN (no bridge)");
    }
    // struct ndmsg: family u8, pad u8, pad u16, ifindex s32, state u16, flags u8, type u8.
    const ndmsg = Buffer.alloc(12);
    ndmsg.writeUInt8(AF_BRIDGE, 0);
    ndmsg.writeInt32LE(link.index, 4);
    ndmsg.writeUInt16LE(NUD_NOARP, 8);
    ndmsg.writeUInt8(NTF_MASTER, 10);
    const master = Buffer.alloc(4);
    master.writeUInt32LE(link.master);
    const body = Buffer.concat([
      ndmsg,
      attr(NDA_LLADDR, macToBuffer(mac)),
      attr(NDA_MASTER, master),
    ]);
    await this.call(`RTM_NEWNEIGH bridge fdb ${mac} dev ${port} master static`, () =>
      this.socket.request(rt.MessageType.NEWNEIGH, body, {
        flags: NLM_F_CREATE | NLM_F_REPLACE,
        timeout: REQUEST_TIMEOUT_MS,
      }),
    );
  }

  /** A permanent neighbour entry, so replies reach a client that cannot answer ARP yet. */
  async setNeighbour(name: string, ip: string, mac: string): Promise<void> {
    const ifindex = await this.indexOf(name);
    await this.call(`RTM_NEWNEIGH ${ip} lladdr ${mac} dev ${name}`, () =>
      this.socket.newNeighbor(
        { family: afOf(familyOf(ip)), ifindex, state: { permanent: true } },
        { dst: ipToBytes(ip), lladdr: macToBuffer(mac) },
        { flags: NLM_F_CREATE | NLM_F_REPLACE, timeout: REQUEST_TIMEOUT_MS },
      ),
    );
  }
}

/** The netlink package gives known enum values as names and unknown ones as numbers. */
function enumValue(
  table: Record<string, string | number>,
  value: string | number | undefined,
): number {
  if (value === undefined) return 0;
  if (typeof value === "number") return value;
  const n = table[value];
  return typeof n === "number" ? n : 0;
}

function rtFlagsRaw(flags: rt.RouteFlags | undefined): number | undefined {
  return flags ? rt.formatRouteFlags(flags) : undefined;
}

/** Runs `step`, treating an RtnlError with one of `codes` (say EEXIST on a re-run) as done. */
export async function ignoringRtnlErrors(
  codes: string[],
  step: () => Promise<void>,
): Promise<void> {
  try {
    await step();
  } catch (error) {
    if (error instanceof RtnlError && codes.includes(error.code)) return;
    throw error;
  }
}
