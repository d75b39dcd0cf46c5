// The per-pod static DHCP server: a socket on the pod's bridge inside the pod's netns,
// answering only the MACs it was given. All pods' servers live in the one daemon.
import type dgram from "node:dgram";
import fs from "node:fs";
import type { ReplyCacheCounts } from "../sys/reply-cache";
import { Rtnl } from "../sys/rtnl";
import { addServedAddress, removeServedAddress, type ServedAddress } from "../sys/served-address";
import { bindUdpFd, listenOnUdpFd } from "../sys/udp";
import { DeferredAttach } from "../util/deferred-attach";
import { countDrop } from "../util/drop-log";
import { ipv4ToUint32 } from "../util/ip";
import { silentLog } from "../util/silent-log";
import { type StepHook, timeStep } from "../util/steps";
import { TokenBucket } from "../util/token-bucket";
import { SERVER_PORT } from "./codec";
import { DhcpIntercept } from "./intercept";
import { DhcpReplyCache } from "./reply-cache";
import {
  type DhcpDropReason,
  type DhcpLease,
  type DhcpOutcome,
  type DhcpReply,
  DhcpResponder,
} from "./responder";

export type { DhcpDropReason, DhcpLease } from "./responder";

/** The subset of a pino logger the server uses. */
export interface DhcpLog {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  debug(fields: object, message: string): void;
}

export interface DhcpStats {
  received: number;
  replied: number;
  released: number;
  declined: number;
  dropped: Partial<Record<DhcpDropReason, number>>;
  /**
   * The kernel's reply cache (with `replyPort`): requests it answered itself (counted in
   * received and replied too), requests it passed on, and rewrites it failed.
   */
  kernel?: ReplyCacheCounts & { cached: number };
}

export interface DhcpServerOptions {
  nsPath: string;
  /** The pod bridge; the server's socket is bound to it. */
  device: string;
  /**
   * Option 54 and the address renewals are unicast to. Give the guest's gateway (option
   * 3): every client can reach it by unicast, and the intercept brings those frames here.
   */
  serverId: string;
  leases: DhcpLease[];
  log?: DhcpLog;
  /** Replies per second the server sends at most (burst the same); a flood is dropped. */
  maxRepliesPerSecond?: number;
  /**
   * Attach the renewal intercept to the bridge's ports (default). Off where something
   * else brings the guest's DHCP to the bridge: the tapmanager's guest isolation steers
   * every DHCP client message from the tap, and lets none in from the veth.
   */
  intercept?: boolean;
  /**
   * The bridge port the leases' guest is behind (the pod's tap). With it, each OFFER and
   * ACK sent is also cached in the kernel (reply-cache.ts), which answers the same request
   * bytes again by itself, out of this port; without it every request reaches the socket.
   */
  replyPort?: string;
  /**
   * Attach the reply cache after start() returns (begun a turn later, on a connection of
   * its own), off the caller's critical path: until it is attached every request reaches
   * the socket, which answers it as it does a miss. A failure is logged, and the server
   * goes on without it. close() waits for or stops an attach under way.
   */
  replyCacheInBackground?: boolean;
  /**
   * A connection to `nsPath` the caller keeps open until start() returns, used instead of
   * one of the server's own (the tapmanager's one per pod).
   */
  rtnl?: Rtnl;
  /**
   * A UDP socket made ahead in the netns and bound to `device`'s port 67 (bindUdpFd):
   * the server owns it from start() on, and closes it also if start() fails.
   */
  socketFd?: number;
  /** Told the socket's opening time (the benchmarks' breakdown). */
  steps?: StepHook;
}

export class DhcpServerError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "DhcpServerError";
  }
}

/** What the server does with each datagram, apart from the socket; never throws. */
export class DhcpHandler {
  readonly responder: DhcpResponder;
  private readonly counters: DhcpStats = {
    received: 0,
    replied: 0,
    released: 0,
    declined: 0,
    dropped: {},
  };
  private readonly replies: TokenBucket;
  /** Told of each OFFER or ACK about to be sent, with the request it answers. */
  onReplied?: (request: Buffer, reply: DhcpReply) => void;

  constructor(
    serverId: string,
    leases: DhcpLease[],
    private readonly send: (datagram: Buffer, port: number, address: string) => Promise<void>,
    private readonly log: DhcpLog = silentLog,
    maxPerSecond = 200,
    private readonly where = "",
  ) {
    this.responder = new DhcpResponder(serverId, leases);
    this.replies = new TokenBucket(maxPerSecond);
  }

  stats(): DhcpStats {
    return { ...this.counters, dropped: { ...this.counters.dropped } };
  }

  /** The socket's message handler. */
  handle(datagram: Buffer): void {
    this.counters.received++;
    let outcome: DhcpOutcome;
    try {
      outcome = this.responder.handle(datagram);
    } catch (error) {
      outcome = { kind: "drop", reason: "internal", detail: String(error) };
    }
    try {
      this.act(datagram, outcome);
    } catch (error) {
      this.count("internal", String(error));
    }
  }

  private act(datagram: Buffer, outcome: DhcpOutcome): void {
    if (outcome.kind === "drop") {
      this.count(outcome.reason, outcome.detail);
      return;
    }
    if (outcome.kind === "note") {
      if (outcome.event === "RELEASE") this.counters.released++;
      else this.counters.declined++;
      this.log.info(
        { where: this.where, mac: outcome.mac, ip: outcome.ip },
        `DHCP ${outcome.event}`,
      );
      return;
    }
    if (!this.replies.take()) {
      this.count("rate-limited", `${outcome.request.mac} ${outcome.reply.type}`);
      return;
    }
    const { reply, request } = outcome;
    // Cached before it is sent: a client answering the reply at once must not race the
    // insert. A NAK is never replayed: it answers a lease that is not the guest's.
    if (reply.type !== "NAK" && reply.lease) {
      try {
        this.onReplied?.(datagram, reply);
      } catch (error) {
        this.count("internal", `caching ${reply.type}: ${error}`);
      }
    }
    this.send(reply.datagram, reply.port, reply.address).then(
      () => {
        this.counters.replied++;
        this.log.debug(
          { where: this.where, mac: request.mac, xid: reply.xid, to: reply.address },
          `DHCP ${reply.type}`,
        );
      },
      (error: unknown) => this.count("send-failed", `${reply.type} to ${reply.address}: ${error}`),
    );
  }

  private count(reason: DhcpDropReason, detail: string): void {
    countDrop(this.counters.dropped, reason, this.log, { where: this.where, detail }, "DHCP drop");
  }
}

/** The server id on the bridge, reachable by unicast from each lease without ARP. */
function servedAddress(device: string, serverId: string, leases: DhcpLease[]): ServedAddress {
  return { device, address: serverId, clients: leases.map((l) => ({ ip: l.ip, mac: l.mac })) };
}

/**
 * One pod bridge's DHCP server. start() resolves once the socket listens and unicast
 * renewals are steered to it: a DISCOVER sent after that is answered.
 *
 * What it changes in the pod netns, and close() undoes: the server id as a /32 on the
 * bridge, a /32 route per lease, the intercept filter on each bridge port (unless
 * `intercept: false`). What stays
 * until the bridge goes: arp_ignore=8 on the bridge, the permanent neighbour entries,
 * the ports' clsact qdiscs. One server per bridge: a second one would share that state.
 */
export class DhcpServer {
  private closed = false;

  private constructor(
    private readonly options: DhcpServerOptions,
    private readonly handler: DhcpHandler,
    private readonly socket: dgram.Socket,
    private readonly intercept: DhcpIntercept | undefined,
    private readonly cache: DeferredAttach<DhcpReplyCache> | undefined,
  ) {}

  static async start(options: DhcpServerOptions): Promise<DhcpServer> {
    const { nsPath, device, serverId, leases } = options;
    const where = `DHCP on ${device} in ${nsPath}`;
    let socket: dgram.Socket | undefined;
    let handler: DhcpHandler | undefined;
    let cache: DeferredAttach<DhcpReplyCache> | undefined;
    let aheadFd = options.socketFd;
    const rtnl = options.rtnl ?? Rtnl.open(nsPath);
    try {
      const send = (datagram: Buffer, port: number, address: string) =>
        new Promise<void>((resolve, reject) => {
          if (!socket) return reject(new Error("no socket"));
          socket.send(datagram, port, address, (error) => (error ? reject(error) : resolve()));
        });
      handler = await timeStep(
        options.steps,
        "DHCP: handler",
        () =>
          new DhcpHandler(serverId, leases, send, options.log, options.maxRepliesPerSecond, where),
      );
      const bridge = await rtnl.linkAddress(device);
      // The bridge holds the server id (the guest's gateway address) so that steered
      // renewals are local; it must never answer ARP for it, or it would take the
      // guest's traffic to the real gateway. Unicast replies need a route and a
      // permanent neighbour entry per lease: the netns never sends an ARP request (which
      // would teach the guest that the gateway address lives at the bridge's MAC).
      const address = servedAddress(device, serverId, handler.responder.leases());
      await timeStep(options.steps, "DHCP: served address", () => addServedAddress(rtnl, address));
      socket = await timeStep(options.steps, "DHCP: socket open", () => {
        const fd = aheadFd ?? bindUdpFd(nsPath, { device, port: SERVER_PORT });
        aheadFd = undefined; // dgram's from here, failing or not
        return listenOnUdpFd(fd);
      });
      const served = handler;
      socket.on("message", (datagram) => served.handle(datagram));
      socket.on("error", (error) =>
        options.log?.warn({ where, error: String(error) }, "DHCP socket"),
      );
      const intercept =
        options.intercept === false
          ? undefined
          : await DhcpIntercept.attach(
              nsPath,
              ipv4ToUint32(serverId),
              bridge.index,
              (await rtnl.links())
                .filter((l) => l.master === bridge.index)
                .map((p) => ({ name: p.name, index: p.index })),
            );
      const { replyPort } = options;
      if (replyPort) {
        const attach = (on: Rtnl) =>
          DhcpReplyCache.attach(on, { bridge, port: replyPort }, serverId, options.steps);
        cache = options.replyCacheInBackground
          ? DeferredAttach.later(
              () => Rtnl.using(nsPath, attach),
              (error) =>
                options.log?.warn(
                  { where, err: String(error) },
                  "DHCP reply cache not attached: the server answers every request",
                ),
            )
          : DeferredAttach.now(await attach(rtnl));
        const kernel = cache;
        handler.onReplied = (request, reply) =>
          kernel.current?.remember({
            request,
            reply: reply.datagram,
            address: reply.address,
            mac: reply.lease?.mac ?? "",
          });
      }
      options.log?.info({ where, serverId, leases: leases.length }, "DHCP server listening");
      return new DhcpServer(options, handler, socket, intercept, cache);
    } catch (error) {
      socket?.close();
      if (aheadFd !== undefined) fs.closeSync(aheadFd);
      await cache?.detach().catch(() => undefined);
      let cleaned = "nothing to clean up";
      if (handler) {
        const served = servedAddress(device, serverId, handler.responder.leases());
        cleaned = await removeServedAddress(rtnl, served).then(
          () => "removed its address and routes",
          (e: unknown) => `could not remove its address and routes: ${e}`,
        );
      }
      throw new DhcpServerError(`start ${where}: ${(error as Error).message} (${cleaned})`, {
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

  stats(): DhcpStats {
    const stats = this.handler.stats();
    const cache = this.cache?.current;
    if (!cache) return stats;
    const kernel = { ...cache.counts(), cached: cache.size };
    return {
      ...stats,
      received: stats.received + kernel.hits,
      replied: stats.replied + kernel.hits,
      kernel,
    };
  }

  /**
   * Stops answering and removes the filters, routes and address it added. With
   * `netnsGoing` (the caller deletes the netns next, as a pod's teardown does) it only
   * stops answering and lets go of its sockets and BPF maps: the netns deletion removes
   * the rest at once, and each undo here is a netlink round trip on the teardown's path.
   * If the netns outlives that (the teardown failed before deleting it), what is left is
   * what a crash of vmlet leaves, which the retried teardown or a new start() handles.
   */
  async close(options: { netnsGoing?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.socket.close();
    await this.cache?.detach(options);
    await this.intercept?.detach(options);
    if (options.netnsGoing) return;
    const { nsPath, device, serverId } = this.options;
    let rtnl: Rtnl;
    try {
      rtnl = Rtnl.open(nsPath);
    } catch {
      return; // the netns is gone, and all of it with it
    }
    try {
      await removeServedAddress(
        rtnl,
        servedAddress(device, serverId, this.handler.responder.leases()),
      );
    } finally {
      rtnl.close();
    }
  }
}
