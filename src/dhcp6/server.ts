// One pod bridge's IPv6 configuration service: router advertisements (a default route
// through the bridge, MTU, RDNSS, the on-link prefix if there is one) and a static DHCPv6
// server for the pod's address. Lives in the one daemon, like the DHCPv4 server.
import { openIcmp6Socket } from "../sys/icmp6";
import { Rtnl, RtnlError } from "../sys/rtnl";
import type { Socket6 } from "../sys/socket6";
import { openUdp6Socket } from "../sys/udp6";
import { DeferredAttach } from "../util/deferred-attach";
import { isLinkLocal } from "../util/ipv6";
import { silentLog } from "../util/silent-log";
import type { StepHook } from "../util/steps";
import { ALL_SERVERS, SERVER_PORT } from "./codec";
import { Dhcp6Handler, type Dhcp6Stats, type Ipv6Log } from "./handler";
import { ALL_ROUTERS, ICMPV6_ROUTER_SOLICITATION, NDP_HOP_LIMIT, type OnLinkPrefix } from "./ndp";
import { Dhcp6ReplyCache } from "./reply-cache";
import type { Dhcp6Lease } from "./responder";
import { RouterAdvertiser, type RouterStats } from "./router";

export interface Ipv6ServerOptions {
  nsPath: string;
  /** The pod bridge; both sockets are bound to it. */
  device: string;
  leases: Dhcp6Lease[];
  mtu?: number;
  dns: string[];
  search: string[];
  /** Prefixes really on the link (Flannel-style /64); none for a /128 pod. */
  onLink: OnLinkPrefix[];
  /** Router lifetime and the period of unsolicited RAs; RFC 4861's defaults when absent. */
  routerLifetimeSeconds?: number;
  raIntervalSeconds?: number;
  log?: Ipv6Log;
  /** DHCPv6 replies and solicited RAs per second at most; a flood beyond is dropped. */
  maxRepliesPerSecond?: number;
  raMaxPerSecond?: number;
  /** How long to wait for the bridge's link-local address to pass DAD. */
  linkLocalTimeoutMs?: number;
  /**
   * The bridge port the leases' guest is behind (the pod's tap). With it, each REPLY or
   * ADVERTISE for the lease is also cached in the kernel (reply-cache.ts), which answers
   * the same request again by itself, out of this port.
   */
  replyPort?: string;
  /**
   * Attach the reply cache after start() returns (begun a turn later, on a connection of
   * its own): until then every request reaches the socket, as a miss does; a failure is
   * logged and the service goes on without it. close() waits for or stops it.
   */
  replyCacheInBackground?: boolean;
  /**
   * A connection to `nsPath` the caller keeps open until start() returns, used instead of
   * one of the service's own (the tapmanager's one per pod).
   */
  rtnl?: Rtnl;
  /** Told the reply cache's load and attach time (the benchmarks' breakdown). */
  steps?: StepHook;
}

export interface Ipv6ServerStats {
  dhcp6: Dhcp6Stats;
  router: RouterStats;
}

export class Ipv6ServerError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "Ipv6ServerError";
  }
}

/** RFC 4861 section 6.2.1 defaults: MaxRtrAdvInterval 600 s, AdvDefaultLifetime 3 x that. */
const DEFAULT_RA_INTERVAL_S = 600;
const DEFAULT_ROUTER_LIFETIME_S = 1800;
const RT_SCOPE_LINK = 253; // linux/rtnetlink.h

function tolerate(codes: string[]): (error: unknown) => void {
  return (error) => {
    if (!(error instanceof RtnlError && codes.includes(error.code))) throw error;
  };
}

/**
 * start() resolves once the RA socket holds the bridge's link-local address and the
 * DHCPv6 socket listens: an RS or SOLICIT sent after that is answered.
 *
 * What it changes in the pod netns, and close() undoes: a /128 route per lease on the
 * bridge. What stays until the bridge goes: the permanent neighbour entries.
 */
export class Ipv6Server {
  private closed = false;

  private constructor(
    private readonly options: Ipv6ServerOptions,
    private readonly handler: Dhcp6Handler,
    private readonly udp: Socket6,
    private readonly icmp: Socket6,
    private readonly router: RouterAdvertiser,
    readonly linkLocal: string,
    private readonly cache: DeferredAttach<Dhcp6ReplyCache> | undefined,
  ) {}

  static async start(options: Ipv6ServerOptions): Promise<Ipv6Server> {
    const { nsPath, device, leases } = options;
    const log = options.log ?? silentLog;
    const where = `IPv6 RA and DHCPv6 on ${device} in ${nsPath}`;
    let icmp: Socket6 | undefined;
    let udp: Socket6 | undefined;
    let cache: DeferredAttach<Dhcp6ReplyCache> | undefined;
    let routed = false;
    const rtnl = options.rtnl ?? Rtnl.open(nsPath);
    try {
      const bridge = await rtnl.linkAddress(device);
      icmp = openIcmp6Socket(nsPath, {
        device,
        ifindex: bridge.index,
        accept: [ICMPV6_ROUTER_SOLICITATION],
        groups: [ALL_ROUTERS],
        hopLimit: NDP_HOP_LIMIT,
      });
      const linkLocal = await bindLinkLocal(rtnl, icmp, bridge.index, options.linkLocalTimeoutMs);
      const send = async (datagram: Buffer, port: number, address: string) => {
        if (!udp) throw new Error("no socket");
        udp.send(datagram, address, port);
      };
      const handler = new Dhcp6Handler(
        bridge.mac,
        leases,
        send,
        log,
        options.maxRepliesPerSecond,
        where,
      );
      // The netns reaches each guest over IPv6 as it does over IPv4: a host route on the
      // bridge and a permanent neighbour entry (no NS that could teach the guest otherwise).
      routed = true;
      for (const lease of handler.responder.leases()) {
        await rtnl
          .addRoute({ dst: lease.address, dstLength: 128, device, scope: "link" })
          .catch(tolerate(["EEXIST"]));
        await rtnl.setNeighbour(device, lease.address, lease.mac);
      }
      udp = openUdp6Socket(nsPath, {
        device,
        ifindex: bridge.index,
        port: SERVER_PORT,
        groups: [ALL_SERVERS],
      });
      const { replyPort } = options;
      if (replyPort) {
        const attach = (on: Rtnl) =>
          Dhcp6ReplyCache.attach(on, { bridge, port: replyPort }, linkLocal, options.steps);
        if (options.replyCacheInBackground) {
          cache = DeferredAttach.later(
            () => Rtnl.using(nsPath, attach),
            (error) =>
              log.warn(
                { where, err: String(error) },
                "DHCPv6 reply cache not attached: the server answers every request",
              ),
          );
        } else {
          cache = DeferredAttach.now(await attach(rtnl));
        }
        const kernel = cache;
        handler.onReplied = (request, source, reply) =>
          kernel.current?.remember({ request, source, reply: reply.datagram, mac: reply.mac });
      }
      udp.onMessage((datagram, source) => handler.handle(datagram, source));
      const router = new RouterAdvertiser(
        icmp,
        {
          sourceMac: bridge.mac,
          routerLifetime: options.routerLifetimeSeconds ?? DEFAULT_ROUTER_LIFETIME_S,
          ...(options.mtu !== undefined ? { mtu: options.mtu } : {}),
          dns: options.dns,
          search: options.search,
          dnsLifetime: options.routerLifetimeSeconds ?? DEFAULT_ROUTER_LIFETIME_S,
          onLink: options.onLink,
          prefixLifetime: Math.max(...leases.map((l) => l.leaseSeconds), 1),
        },
        (options.raIntervalSeconds ?? DEFAULT_RA_INTERVAL_S) * 1000,
        log,
        where,
        options.raMaxPerSecond,
      );
      router.start();
      log.info(
        { where, linkLocal, leases: leases.map((l) => l.address), onLink: options.onLink },
        "IPv6 RA and DHCPv6 listening",
      );
      return new Ipv6Server(options, handler, udp, icmp, router, linkLocal, cache);
    } catch (error) {
      udp?.close();
      await cache?.detach().catch(() => undefined);
      icmp?.close();
      let cleaned = "nothing to clean up";
      if (routed) {
        cleaned = await removeRoutes(rtnl, device, leases).then(
          () => "removed its routes",
          (e: unknown) => `could not remove its routes: ${String(e)}`,
        );
      }
      throw new Ipv6ServerError(`start ${where}: ${(error as Error).message} (${cleaned})`, {
        cause: error,
      });
    } finally {
      if (!options.rtnl) rtnl.close();
    }
  }

  /** Resolves once the reply cache is attached (true), or failed or was not asked for. */
  async replyCacheSettled(): Promise<boolean> {
    return (await this.cache?.whenSettled()) ?? false;
  }

  stats(): Ipv6ServerStats {
    const dhcp6 = this.handler.stats();
    const cache = this.cache?.current;
    if (cache) {
      const kernel = { ...cache.counts(), cached: cache.size };
      dhcp6.received += kernel.hits;
      dhcp6.replied += kernel.hits;
      dhcp6.kernel = kernel;
    }
    return { dhcp6, router: this.router.stats() };
  }

  /**
   * Stops advertising and answering and removes the routes and filter it added. With
   * `netnsGoing` (the caller deletes the netns next) only the sockets and BPF maps are
   * let go, as DhcpServer.close does: the netns deletion removes the rest.
   */
  async close(options: { netnsGoing?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.router.stop();
    this.icmp.close();
    this.udp.close();
    await this.cache?.detach(options);
    if (options.netnsGoing) return;
    let rtnl: Rtnl;
    try {
      rtnl = Rtnl.open(this.options.nsPath);
    } catch {
      return; // the netns is gone, and all of it with it
    }
    try {
      await removeRoutes(rtnl, this.options.device, this.handler.responder.leases());
    } finally {
      rtnl.close();
    }
  }
}

/**
 * The bridge's link-local address is the RAs' source and the guest's router. The kernel
 * gives the bridge one when it comes up, tentative until DAD passes (a second by default):
 * bind(2) refuses it until then, which is the signal waited for.
 */
async function bindLinkLocal(
  rtnl: Rtnl,
  icmp: Socket6,
  ifindex: number,
  timeoutMs = 5000,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let seen: string | undefined;
  for (;;) {
    const linkLocals = (await rtnl.addresses(6)).filter(
      (a) => a.index === ifindex && a.scope === RT_SCOPE_LINK && isLinkLocal(a.address),
    );
    for (const a of linkLocals) {
      seen = a.address;
      if (icmp.tryBind(a.address)) return a.address;
    }
    if (Date.now() > deadline) {
      throw new Error(
        seen
          ? `link-local ${seen} still tentative after ${timeoutMs} ms`
          : `no link-local address after ${timeoutMs} ms (is IPv6 disabled on the bridge?)`,
      );
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function removeRoutes(rtnl: Rtnl, device: string, leases: Dhcp6Lease[]): Promise<void> {
  const gone = tolerate(["ENODEV", "ESRCH", "EADDRNOTAVAIL", "ENOENT"]);
  for (const lease of leases) {
    await rtnl
      .deleteRoute({ dst: lease.address, dstLength: 128, device, scope: "link" })
      .catch(gone);
  }
}
