// What the DHCPv6 server does with each datagram, apart from the socket: decide, rate
// limit, send, count and log. Never throws.

import type { ReplyCacheCounts } from "../sys/reply-cache";
import { countDrop } from "../util/drop-log";
import { silentLog } from "../util/silent-log";
import { TokenBucket } from "../util/token-bucket";
import {
  type Dhcp6DropReason,
  type Dhcp6Lease,
  type Dhcp6Outcome,
  type Dhcp6Reply,
  Dhcp6Responder,
} from "./responder";

/** The subset of a pino logger the IPv6 servers use. */
export interface Ipv6Log {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  debug(fields: object, message: string): void;
}

export interface Dhcp6Stats {
  received: number;
  replied: number;
  released: number;
  declined: number;
  dropped: Partial<Record<Dhcp6DropReason, number>>;
  /**
   * The kernel's reply cache (with `replyPort`): requests it answered itself (counted in
   * received and replied too), requests it passed on, and rewrites it failed.
   */
  kernel?: ReplyCacheCounts & { cached: number };
}

export type Dhcp6Send = (datagram: Buffer, port: number, address: string) => Promise<void>;

export class Dhcp6Handler {
  readonly responder: Dhcp6Responder;
  private readonly counters: Dhcp6Stats = {
    received: 0,
    replied: 0,
    released: 0,
    declined: 0,
    dropped: {},
  };
  private readonly replies: TokenBucket;
  /** Told of each reply about to be sent that binds the lease (or offers it), with its request. */
  onReplied?: (request: Buffer, source: string, reply: Dhcp6Reply) => void;

  constructor(
    serverMac: string,
    leases: Dhcp6Lease[],
    private readonly send: Dhcp6Send,
    private readonly log: Ipv6Log = silentLog,
    maxPerSecond = 200,
    private readonly where = "",
  ) {
    this.responder = new Dhcp6Responder(serverMac, leases);
    this.replies = new TokenBucket(maxPerSecond);
  }

  stats(): Dhcp6Stats {
    return { ...this.counters, dropped: { ...this.counters.dropped } };
  }

  /** The socket's message handler: `source` is the sender's address. */
  handle(datagram: Buffer, source: string): void {
    this.counters.received++;
    let outcome: Dhcp6Outcome;
    try {
      outcome = this.responder.handle(datagram, source);
    } catch (error) {
      outcome = { kind: "drop", reason: "internal", detail: String(error) };
    }
    try {
      this.act(datagram, source, outcome);
    } catch (error) {
      this.count("internal", String(error));
    }
  }

  private act(datagram: Buffer, source: string, outcome: Dhcp6Outcome): void {
    if (outcome.kind === "drop") {
      this.count(outcome.reason, outcome.detail);
      return;
    }
    const { reply, note } = outcome;
    if (note === "RELEASE") this.counters.released++;
    if (note === "DECLINE") this.counters.declined++;
    if (note) {
      this.log.info({ where: this.where, mac: reply.mac, from: reply.address }, `DHCPv6 ${note}`);
    }
    if (!this.replies.take()) {
      this.count("rate-limited", `${reply.mac} ${reply.type} to ${reply.answers}`);
      return;
    }
    // Cached before it is sent, so that the client's next message cannot race the insert.
    // Only what binds or offers the lease is replayed: a RELEASE or DECLINE must reach
    // the server to be counted and logged, and status-only replies are rare.
    if (!note && (reply.type === "ADVERTISE" || reply.bound)) {
      try {
        this.onReplied?.(datagram, source, reply);
      } catch (error) {
        this.count("internal", `caching ${reply.type}: ${String(error)}`);
      }
    }
    this.send(reply.datagram, reply.port, reply.address).then(
      () => {
        this.counters.replied++;
        this.log.debug(
          {
            where: this.where,
            mac: reply.mac,
            to: reply.address,
            transactionId: reply.transactionId,
            ...(reply.bound ? { address: reply.bound } : {}),
          },
          `DHCPv6 ${reply.type} to ${reply.answers}`,
        );
      },
      (error: unknown) =>
        this.count("send-failed", `${reply.type} to ${reply.address}: ${String(error)}`),
    );
  }

  private count(reason: Dhcp6DropReason, detail: string): void {
    countDrop(
      this.counters.dropped,
      reason,
      this.log,
      { where: this.where, detail },
      "DHCPv6 drop",
    );
  }
}
