// The DHCPv6 server's decisions, without sockets (RFC 8415 section 18.3): one datagram and
// its source in, a reply (bytes and where to send them), a note, or a counted drop out.
// The server is static: each known client has one address, always the same.
import { isLinkLocal, macFromEui64, normalIpv6 } from "../util/ipv6";
import { normalMac } from "../util/mac";
import {
  addressesValue,
  CLIENT_PORT,
  type Dhcp6Message,
  Dhcp6Option,
  Dhcp6ParseError,
  type Dhcp6ParseReason,
  Dhcp6Status,
  Dhcp6Type,
  duidLl,
  encodeDomainList,
  formatDhcp6,
  type IaNa,
  iaAddrOption,
  iaNaOption,
  option,
  parseDhcp6,
  statusOption,
} from "./codec";

/** What one guest NIC (by MAC) is given over DHCPv6. */
export interface Dhcp6Lease {
  mac: string;
  address: string;
  dns: string[];
  search: string[];
  /** Valid and preferred lifetime of the address; T1 and T2 follow from it. */
  leaseSeconds: number;
}

export type Dhcp6DropReason =
  | Dhcp6ParseReason
  | "not-link-local"
  | "server-message"
  | "bad-message-type"
  | "no-client-id"
  | "unexpected-server-id"
  | "other-server"
  | "unknown-client"
  | "unexpected-ia"
  | "nothing-to-confirm"
  | "rate-limited"
  | "send-failed"
  | "internal";

export interface Dhcp6Reply {
  type: "ADVERTISE" | "REPLY";
  /** What the reply answers, for the logs. */
  answers: string;
  datagram: Buffer;
  /** The client's source (its link-local, or its lease for UseMulticast), and port 546. */
  address: string;
  port: number;
  mac: string;
  transactionId: number;
  /** The address the reply binds (a REPLY to a REQUEST, RENEW, REBIND or rapid commit). */
  bound?: string;
}

export type Dhcp6Outcome =
  | { kind: "reply"; reply: Dhcp6Reply; note?: "RELEASE" | "DECLINE" }
  | { kind: "drop"; reason: Dhcp6DropReason; detail: string };

const TYPE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(Dhcp6Type).map(([name, code]) => [code, name]),
);
/** What a client may send by unicast once told it may (RFC 8415 section 21.12, Server Unicast). */
const UNICAST_TYPES: ReadonlySet<number> = new Set([
  Dhcp6Type.REQUEST,
  Dhcp6Type.RENEW,
  Dhcp6Type.RELEASE,
  Dhcp6Type.DECLINE,
]);
/** 255: a client takes this ADVERTISE at once instead of waiting for others (18.2.1). */
const MAX_PREFERENCE = 255;

function drop(reason: Dhcp6DropReason, detail: string): Dhcp6Outcome {
  return { kind: "drop", reason, detail };
}

/** A lease with the options every reply to it carries, encoded once. */
interface PreparedLease extends Dhcp6Lease {
  /** IAADDR with the lease's lifetimes. */
  iaAddr: Buffer;
  /** DNS (23) and domain list (24), when the lease has them. */
  config: Buffer[];
}

/** Decides the answer to each datagram for one pod bridge's leases. handle() never throws. */
export class Dhcp6Responder {
  readonly serverDuid: Buffer;
  private readonly serverIdOption: Buffer;
  private readonly byMac = new Map<string, PreparedLease>();

  /** `serverMac`: the bridge's MAC, which the server's DUID-LL is made of. */
  constructor(serverMac: string, leases: Dhcp6Lease[]) {
    this.serverDuid = duidLl(normalMac(serverMac));
    this.serverIdOption = option(Dhcp6Option.SERVERID, this.serverDuid);
    for (const lease of leases) {
      const mac = normalMac(lease.mac);
      if (this.byMac.has(mac)) throw new Error(`two DHCPv6 leases for MAC ${mac}`);
      const seconds = lease.leaseSeconds;
      if (!Number.isInteger(seconds) || seconds < 1) {
        throw new Error(`DHCPv6 lease for ${mac}: leaseSeconds ${seconds}`);
      }
      const address = normalIpv6(lease.address);
      const dns = lease.dns.map(normalIpv6);
      const config: Buffer[] = [];
      if (dns.length > 0) config.push(option(Dhcp6Option.DNS_SERVERS, addressesValue(dns)));
      if (lease.search.length > 0) {
        config.push(option(Dhcp6Option.DOMAIN_LIST, encodeDomainList(lease.search)));
      }
      this.byMac.set(mac, {
        ...lease,
        mac,
        address,
        dns,
        iaAddr: iaAddrOption(address, seconds, seconds),
        config,
      });
    }
  }

  leases(): Dhcp6Lease[] {
    return [...this.byMac.values()].map(({ iaAddr: _a, config: _c, ...lease }) => lease);
  }

  /** `source`: the datagram's source address (a "%zone" is ignored). */
  handle(datagram: Buffer, source: string): Dhcp6Outcome {
    try {
      return this.decide(parseDhcp6(datagram), source.split("%")[0]!);
    } catch (error) {
      if (error instanceof Dhcp6ParseError) return drop(error.reason, error.message);
      return drop("internal", String(error));
    }
  }

  private decide(m: Dhcp6Message, from: string): Dhcp6Outcome {
    // (Addresses parsed from the wire are in canonical form: compared as text below.)
    // Clients multicast from their link-local address (section 16); a reply goes back to
    // it. A unicast (never a Server Unicast option here) gets UseMulticast (below).
    const unicast = !isLinkLocal(from);
    if (unicast && !UNICAST_TYPES.has(m.type)) return drop("not-link-local", `from ${from}`);
    const source = unicast ? normalIpv6(from) : from;
    const name = TYPE_NAMES[m.type] ?? `type ${m.type}`;
    switch (m.type) {
      case Dhcp6Type.ADVERTISE:
      case Dhcp6Type.REPLY:
      case Dhcp6Type.RECONFIGURE:
        return drop("server-message", `${name} from ${source}`);
      case Dhcp6Type.SOLICIT:
      case Dhcp6Type.CONFIRM:
      case Dhcp6Type.REBIND:
        if (m.serverId) return drop("unexpected-server-id", `${name} from ${source}`);
        break;
      case Dhcp6Type.REQUEST:
      case Dhcp6Type.RENEW:
      case Dhcp6Type.RELEASE:
      case Dhcp6Type.DECLINE:
        if (!m.serverId) return drop("other-server", `${name} from ${source} names no server`);
        break;
      case Dhcp6Type.INFORMATION_REQUEST:
        if (m.iaNa.length > 0 || m.otherIa) {
          return drop("unexpected-ia", `INFORMATION-REQUEST from ${source} holds an IA`);
        }
        break;
      default:
        return drop("bad-message-type", `${name} from ${source}`);
    }
    if (m.serverId && !m.serverId.raw.equals(this.serverDuid)) {
      return drop("other-server", `${name} from ${source} for ${m.serverId.raw.toString("hex")}`);
    }
    if (!m.clientId && m.type !== Dhcp6Type.INFORMATION_REQUEST) {
      return drop("no-client-id", `${name} from ${source}`);
    }
    const lease = this.clientOf(m, source);
    if (!lease) {
      return drop(
        "unknown-client",
        `${name} from ${source} (DUID MAC ${m.clientId?.mac ?? "none"})`,
      );
    }
    // Unicast without a Server Unicast option (busybox udhcpc6 1.35 renews so, from its
    // leased address): discarded, and answered UseMulticast (section 18.4), so the client
    // sends it again by multicast. Only to the client's own lease, which is on this link
    // (a /128 route and a neighbour entry on the bridge): a reply goes nowhere else.
    if (unicast) {
      if (source !== lease.address) {
        return drop("not-link-local", `${name} from ${source}, which is not ${lease.mac}'s lease`);
      }
      return this.useMulticast(m, source, lease);
    }
    switch (m.type) {
      case Dhcp6Type.SOLICIT:
        return m.rapidCommit
          ? this.reply(m, source, lease, "REPLY", this.assign(m, lease), [
              option(Dhcp6Option.RAPID_COMMIT, Buffer.alloc(0)),
            ])
          : this.reply(m, source, lease, "ADVERTISE", this.assign(m, lease), [
              option(Dhcp6Option.PREFERENCE, Buffer.from([MAX_PREFERENCE])),
            ]);
      case Dhcp6Type.REQUEST:
      case Dhcp6Type.RENEW:
      case Dhcp6Type.REBIND:
        return this.reply(m, source, lease, "REPLY", this.assign(m, lease));
      case Dhcp6Type.CONFIRM:
        return this.confirm(m, source, lease);
      case Dhcp6Type.RELEASE:
      case Dhcp6Type.DECLINE:
        return this.release(m, source, lease);
      default:
        return this.reply(m, source, lease, "REPLY", []);
    }
  }

  /** By the MAC in the client's DUID, else by the MAC in its EUI-64 link-local source. */
  private clientOf(m: Dhcp6Message, source: string): PreparedLease | undefined {
    const byDuid = m.clientId?.mac ? this.byMac.get(m.clientId.mac) : undefined;
    if (byDuid) return byDuid;
    const mac = macFromEui64(source);
    return mac ? this.byMac.get(mac) : undefined;
  }

  /**
   * Each IA_NA the client sent, echoed by IAID with the lease's address. An address the
   * client holds that is not its lease goes back with zero lifetimes (18.3.4, 18.3.5);
   * a REQUEST that names only such addresses gets NotOnLink (18.3.2).
   */
  private assign(m: Dhcp6Message, lease: PreparedLease): Buffer[] {
    if (m.iaNa.length === 0) {
      return [statusOption(Dhcp6Status.NO_ADDRS_AVAIL, "only IA_NA is served")];
    }
    const seconds = lease.leaseSeconds;
    const t1 = Math.floor(seconds / 2);
    const t2 = Math.floor((seconds * 4) / 5);
    return m.iaNa.map((ia: IaNa) => {
      const foreign = ia.addresses.filter((a) => a.address !== lease.address);
      if (
        m.type === Dhcp6Type.REQUEST &&
        foreign.length > 0 &&
        foreign.length === ia.addresses.length
      ) {
        return iaNaOption(ia.iaid, 0, 0, [
          statusOption(Dhcp6Status.NOT_ON_LINK, `${foreign[0]!.address} is not on this link`),
        ]);
      }
      return iaNaOption(ia.iaid, t1, t2, [
        lease.iaAddr,
        ...foreign.map((a) => iaAddrOption(a.address, 0, 0)),
      ]);
    });
  }

  /** 18.4: a REPLY of the server id, the client id and UseMulticast, nothing else. */
  private useMulticast(m: Dhcp6Message, source: string, lease: PreparedLease): Dhcp6Outcome {
    const options = [this.serverIdOption];
    if (m.clientId) options.push(option(Dhcp6Option.CLIENTID, m.clientId.raw));
    options.push(statusOption(Dhcp6Status.USE_MULTICAST, "use multicast"));
    return {
      kind: "reply",
      reply: {
        type: "REPLY",
        answers: `${TYPE_NAMES[m.type] ?? String(m.type)} by unicast`,
        datagram: formatDhcp6(Dhcp6Type.REPLY, m.transactionId, options),
        address: source,
        port: CLIENT_PORT,
        mac: lease.mac,
        transactionId: m.transactionId,
      },
    };
  }

  /** 18.3.3: Success when every address the client names is its lease, else NotOnLink. */
  private confirm(m: Dhcp6Message, source: string, lease: PreparedLease): Dhcp6Outcome {
    const named = m.iaNa.flatMap((ia) => ia.addresses.map((a) => a.address));
    if (named.length === 0) return drop("nothing-to-confirm", `CONFIRM from ${source}`);
    const ok = named.every((a) => a === lease.address);
    return this.reply(m, source, lease, "REPLY", [
      ok
        ? statusOption(Dhcp6Status.SUCCESS, "on link")
        : statusOption(Dhcp6Status.NOT_ON_LINK, `not all of ${named.join(", ")} are on this link`),
    ]);
  }

  /** 18.3.7, 18.3.8: Success overall; an IA without the lease's address gets NoBinding. */
  private release(m: Dhcp6Message, source: string, lease: PreparedLease): Dhcp6Outcome {
    const note = m.type === Dhcp6Type.RELEASE ? "RELEASE" : "DECLINE";
    const unbound = m.iaNa
      .filter((ia) => !ia.addresses.some((a) => a.address === lease.address))
      .map((ia) =>
        iaNaOption(ia.iaid, 0, 0, [statusOption(Dhcp6Status.NO_BINDING, "no such binding")]),
      );
    const outcome = this.reply(m, source, lease, "REPLY", [
      statusOption(Dhcp6Status.SUCCESS, note === "RELEASE" ? "released" : "declined"),
      ...unbound,
    ]);
    return outcome.kind === "reply" ? { ...outcome, note } : outcome;
  }

  private reply(
    m: Dhcp6Message,
    source: string,
    lease: PreparedLease,
    type: "ADVERTISE" | "REPLY",
    body: Buffer[],
    extra: Buffer[] = [],
  ): Dhcp6Outcome {
    const options: Buffer[] = [this.serverIdOption];
    if (m.clientId) options.push(option(Dhcp6Option.CLIENTID, m.clientId.raw));
    options.push(...extra, ...body);
    const configures =
      m.type === Dhcp6Type.SOLICIT ||
      m.type === Dhcp6Type.REQUEST ||
      m.type === Dhcp6Type.RENEW ||
      m.type === Dhcp6Type.REBIND ||
      m.type === Dhcp6Type.INFORMATION_REQUEST;
    // Sent asked for or not, as the DHCPv4 server sends the MTU: a guest needs its DNS.
    if (configures) options.push(...lease.config);
    const binds =
      m.iaNa.length > 0 &&
      (type === "REPLY" || m.rapidCommit) &&
      m.type !== Dhcp6Type.CONFIRM &&
      m.type !== Dhcp6Type.RELEASE &&
      m.type !== Dhcp6Type.DECLINE;
    return {
      kind: "reply",
      reply: {
        type,
        answers: TYPE_NAMES[m.type] ?? String(m.type),
        datagram: formatDhcp6(
          type === "ADVERTISE" ? Dhcp6Type.ADVERTISE : Dhcp6Type.REPLY,
          m.transactionId,
          options,
        ),
        address: source,
        port: CLIENT_PORT,
        mac: lease.mac,
        transactionId: m.transactionId,
        ...(binds ? { bound: lease.address } : {}),
      },
    };
  }
}
