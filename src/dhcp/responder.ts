// The server's decisions, without sockets: one datagram in, a reply (bytes and where to
// send them), a note, or a counted drop out. RFC 2131 sections 4.3 and 4.1.

import { errorMessage } from "../util/errors";
import { type Ipv4Route, inIpv4Prefix, ipv4ToUint32, maskOf, prefixToMask } from "../util/ip";
import { normalMac } from "../util/mac";
import {
  BOOTREQUEST,
  CLIENT_PORT,
  DEFAULT_MAX_MESSAGE,
  type DhcpMessage,
  DhcpParseError,
  type DhcpParseReason,
  encodeClasslessRoutes,
  encodeSearchList,
  FLAG_BROADCAST,
  formatMessage,
  formatWithOptionsArea,
  HTYPE_ETHERNET,
  ips,
  MAX_DATAGRAM,
  MessageType,
  Option,
  optionsArea,
  parseMessage,
  u8,
  u16,
  u32,
} from "./codec";

/** What one guest NIC (by MAC) is given. */
export interface DhcpLease {
  mac: string;
  ip: string;
  prefixLength: number;
  router?: string;
  /** The routes the netns had, in any order: option 121 orders them. */
  routes: Ipv4Route[];
  mtu?: number;
  dns: string[];
  search: string[];
  domain?: string;
  hostname?: string;
  leaseSeconds: number;
}

export type DhcpDropReason =
  | DhcpParseReason
  | "wrong-op"
  | "bad-htype"
  | "relayed"
  | "no-message-type"
  | "bad-message-type"
  | "unknown-mac"
  | "other-server"
  | "bad-request"
  | "rate-limited"
  | "send-failed"
  | "internal";

export interface DhcpReply {
  type: "OFFER" | "ACK" | "NAK";
  datagram: Buffer;
  /** Where to send it: the client's address, or 255.255.255.255. */
  address: string;
  port: number;
  lease?: DhcpLease;
  xid: number;
}

export type DhcpOutcome =
  | { kind: "reply"; reply: DhcpReply; request: DhcpMessage }
  | { kind: "note"; event: "RELEASE" | "DECLINE"; mac: string; ip: string }
  | { kind: "drop"; reason: DhcpDropReason; detail: string };

const BROADCAST = "255.255.255.255";
const ZERO = "0.0.0.0";
/** Always sent, asked for or not: what a guest cannot work without (and 26, see below). */
const ALWAYS = [
  Option.MESSAGE_TYPE,
  Option.SERVER_ID,
  Option.LEASE_TIME,
  Option.SUBNET_MASK,
  Option.ROUTER,
  // Debian's udhcpc script does not ask for the MTU, and a Flannel VXLAN 1450 must arrive.
  Option.MTU,
];
function normalLeaseMac(mac: string): string {
  try {
    return normalMac(mac);
  } catch (error) {
    throw new Error(`lease ${errorMessage(error)}`, { cause: error });
  }
}

const LEASE_ONLY = new Set<number>([Option.LEASE_TIME, Option.RENEWAL_TIME, Option.REBINDING_TIME]);

/**
 * Option 121 for a lease. A client that takes 121 ignores option 3 (RFC 3442), so the
 * default route goes in too; a gateway outside the subnet (Calico's 169.254.1.1) first
 * gets an on-link /32, or the client could not install the routes through it.
 */
export function classlessRoutesFor(lease: DhcpLease): Ipv4Route[] {
  const routes: Ipv4Route[] = lease.routes.map((r) => ({ ...r }));
  const gateways = new Set<string>(routes.map((r) => r.gateway).filter((g) => g !== ZERO));
  if (lease.router) {
    gateways.add(lease.router);
    if (!routes.some((r) => r.prefixLength === 0)) {
      routes.push({ dst: ZERO, prefixLength: 0, gateway: lease.router });
    }
  }
  for (const gw of gateways) {
    const reachable =
      inIpv4Prefix(gw, lease.ip, lease.prefixLength) ||
      routes.some((r) => r.gateway === ZERO && inIpv4Prefix(gw, r.dst, r.prefixLength));
    if (!reachable) routes.push({ dst: gw, prefixLength: 32, gateway: ZERO });
  }
  // Clients install 121 in order: on-link routes first, so the gateways of the later
  // ones are reachable when they come; most specific first within each (default last).
  return routes.sort(
    (a, b) =>
      Number(a.gateway !== ZERO) - Number(b.gateway !== ZERO) || b.prefixLength - a.prefixLength,
  );
}

interface PreparedLease {
  lease: DhcpLease;
  /** Encoded configuration options, by code. */
  options: Map<number, Buffer>;
  /**
   * Reply option areas already made, by type, parameter request list and size limit: a
   * client asks the same way every time, so a reply is one buffer and a header.
   */
  areas: Map<string, Buffer>;
}

/** Option areas kept per lease; a client varying its requests gets them made afresh. */
const MAX_CACHED_AREAS = 8;

function prepare(lease: DhcpLease, serverId: string): PreparedLease {
  ipv4ToUint32(lease.ip);
  const options = new Map<number, Buffer>();
  options.set(Option.SERVER_ID, ips([serverId]));
  options.set(Option.LEASE_TIME, u32(lease.leaseSeconds));
  options.set(Option.RENEWAL_TIME, u32(Math.floor(lease.leaseSeconds / 2)));
  options.set(Option.REBINDING_TIME, u32(Math.floor((lease.leaseSeconds * 7) / 8)));
  options.set(Option.SUBNET_MASK, ips([prefixToMask(lease.prefixLength)]));
  if (lease.router) options.set(Option.ROUTER, ips([lease.router]));
  if (lease.mtu !== undefined) options.set(Option.MTU, u16(lease.mtu));
  if (lease.dns.length > 0) options.set(Option.DNS, ips(lease.dns));
  if (lease.hostname) options.set(Option.HOSTNAME, Buffer.from(lease.hostname, "latin1"));
  if (lease.domain) options.set(Option.DOMAIN, Buffer.from(lease.domain, "latin1"));
  if (lease.prefixLength < 31) {
    const bcast = (ipv4ToUint32(lease.ip) | ~maskOf(lease.prefixLength)) >>> 0;
    options.set(Option.BROADCAST, u32(bcast));
  }
  if (lease.search.length > 0) options.set(Option.SEARCH_LIST, encodeSearchList(lease.search));
  const routes = classlessRoutesFor(lease);
  if (routes.length > 0) options.set(Option.CLASSLESS_ROUTES, encodeClasslessRoutes(routes));
  return { lease, options, areas: new Map() };
}

/** Decides the answer to each datagram for one pod's leases. Never throws from handle(). */
export class DhcpResponder {
  private readonly byMac = new Map<string, PreparedLease>();

  constructor(
    readonly serverId: string,
    leases: DhcpLease[],
  ) {
    ipv4ToUint32(serverId);
    for (const lease of leases) {
      const mac = normalLeaseMac(lease.mac);
      if (this.byMac.has(mac)) throw new Error(`two leases for MAC ${mac}`);
      this.byMac.set(mac, prepare({ ...lease, mac }, serverId));
    }
  }

  leases(): DhcpLease[] {
    return [...this.byMac.values()].map((p) => p.lease);
  }

  handle(datagram: Buffer): DhcpOutcome {
    try {
      return this.decide(parseMessage(datagram));
    } catch (error) {
      if (error instanceof DhcpParseError) {
        return { kind: "drop", reason: error.reason, detail: error.message };
      }
      return { kind: "drop", reason: "internal", detail: String(error) };
    }
  }

  private decide(m: DhcpMessage): DhcpOutcome {
    if (m.op !== BOOTREQUEST) return drop("wrong-op", `op ${m.op}`);
    if (m.htype !== HTYPE_ETHERNET || m.hlen !== 6) {
      return drop("bad-htype", `htype ${m.htype} hlen ${m.hlen}`);
    }
    if (m.giaddr !== ZERO) return drop("relayed", `giaddr ${m.giaddr}`);
    const type = m.options.messageType;
    if (type === undefined) return drop("no-message-type", `from ${m.mac}`);
    const prepared = this.byMac.get(m.mac);
    if (!prepared) return drop("unknown-mac", m.mac);
    const { lease } = prepared;
    switch (type) {
      case MessageType.DISCOVER:
        return this.reply(m, prepared, "OFFER");
      case MessageType.REQUEST:
        return this.request(m, prepared);
      case MessageType.INFORM:
        return this.reply(m, prepared, "ACK", { inform: true });
      case MessageType.RELEASE:
        return { kind: "note", event: "RELEASE", mac: m.mac, ip: m.ciaddr };
      case MessageType.DECLINE:
        return {
          kind: "note",
          event: "DECLINE",
          mac: m.mac,
          ip: m.options.requestedIp ?? lease.ip,
        };
      default:
        return drop("bad-message-type", `type ${type} from ${m.mac}`);
    }
  }

  /** RFC 2131 4.3.2: the four states a REQUEST can come from. */
  private request(m: DhcpMessage, p: PreparedLease): DhcpOutcome {
    const { serverId, requestedIp } = m.options;
    if (serverId !== undefined) {
      // SELECTING: the client names the server it chose.
      if (serverId !== this.serverId) return drop("other-server", `${m.mac} chose ${serverId}`);
      if (requestedIp === undefined) return drop("bad-request", `${m.mac}: selecting without 50`);
      return requestedIp === p.lease.ip ? this.reply(m, p, "ACK") : this.nak(m, requestedIp);
    }
    if (requestedIp !== undefined) {
      // INIT-REBOOT: ciaddr must be zero.
      return requestedIp === p.lease.ip ? this.reply(m, p, "ACK") : this.nak(m, requestedIp);
    }
    if (m.ciaddr !== ZERO) {
      // RENEWING (unicast to us) or REBINDING (broadcast).
      return m.ciaddr === p.lease.ip ? this.reply(m, p, "ACK") : this.nak(m, m.ciaddr);
    }
    return drop("bad-request", `${m.mac}: REQUEST without server id, 50 or ciaddr`);
  }

  private nak(m: DhcpMessage, wanted: string): DhcpOutcome {
    const { datagram } = formatMessage({ xid: m.xid, flags: m.flags, chaddr: m.chaddr }, [
      [Option.MESSAGE_TYPE, u8(MessageType.NAK)],
      [Option.SERVER_ID, ips([this.serverId])],
      [Option.MESSAGE, Buffer.from(`${wanted} is not yours`, "latin1")],
    ]);
    // RFC 2131 4.3.2: a NAK is broadcast, the client may have no usable address.
    return {
      kind: "reply",
      request: m,
      reply: { type: "NAK", datagram, address: BROADCAST, port: CLIENT_PORT, xid: m.xid },
    };
  }

  private reply(
    m: DhcpMessage,
    p: PreparedLease,
    type: "OFFER" | "ACK",
    how: { inform?: boolean } = {},
  ): DhcpOutcome {
    const inform = how.inform === true;
    const requested = m.options.parameterRequestList ?? [];
    const limit = Math.min(
      MAX_DATAGRAM,
      Math.max(DEFAULT_MAX_MESSAGE, (m.options.maxMessageSize ?? 0) - 28),
    );
    const key = `${type}${inform ? "i" : ""}/${limit}/${requested.join(",")}`;
    let area = p.areas.get(key);
    if (!area) {
      const options: [number, Buffer][] = [
        [Option.MESSAGE_TYPE, u8(type === "OFFER" ? MessageType.OFFER : MessageType.ACK)],
      ];
      for (const code of this.optionOrder(requested)) {
        if (inform && LEASE_ONLY.has(code)) continue;
        const value = p.options.get(code);
        if (value) options.push([code, value]);
      }
      const header = { xid: 0, flags: 0, chaddr: Buffer.alloc(0) };
      area = Buffer.from(optionsArea(formatMessage(header, options, limit).datagram));
      if (p.areas.size < MAX_CACHED_AREAS) p.areas.set(key, area);
    }
    const datagram = formatWithOptionsArea(
      {
        xid: m.xid,
        flags: m.flags,
        ciaddr: m.ciaddr,
        yiaddr: inform ? ZERO : p.lease.ip,
        chaddr: m.chaddr,
      },
      area,
    );
    return {
      kind: "reply",
      request: m,
      reply: {
        type,
        datagram,
        address: this.destination(m, p.lease, inform),
        port: CLIENT_PORT,
        lease: p.lease,
        xid: m.xid,
      },
    };
  }

  /**
   * RFC 2131 4.1, except that a guest never picks where a reply goes: ciaddr only when
   * it is the lease (a RENEW, or an INFORM from its own address), else broadcast when
   * asked, else the lease IP (whose neighbour entry the server set). A reply sent to any
   * other address would make the pod netns ARP for it, as the gateway.
   */
  private destination(m: DhcpMessage, lease: DhcpLease, inform: boolean): string {
    if (m.ciaddr !== ZERO && m.ciaddr === lease.ip) return m.ciaddr;
    if (m.flags & FLAG_BROADCAST) return BROADCAST;
    return inform ? BROADCAST : lease.ip;
  }

  /** The always-sent options, then what the client asked for in its order, then the rest. */
  private optionOrder(requested: number[]): number[] {
    const order: number[] = [];
    const add = (code: number) => {
      if (code !== Option.MESSAGE_TYPE && !order.includes(code)) order.push(code);
    };
    for (const code of ALWAYS) add(code);
    for (const code of requested) add(code);
    for (const code of [
      Option.RENEWAL_TIME,
      Option.REBINDING_TIME,
      Option.CLASSLESS_ROUTES,
      Option.DNS,
      Option.DOMAIN,
      Option.SEARCH_LIST,
      Option.HOSTNAME,
      Option.BROADCAST,
    ]) {
      add(code);
    }
    return order;
  }
}

function drop(reason: DhcpDropReason, detail: string): DhcpOutcome {
  return { kind: "drop", reason, detail };
}
