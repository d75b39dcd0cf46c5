// The pod bridge's router advertisements: sent to all nodes at start and periodically,
// and in answer to each router solicitation, from the bridge's link-local address (which
// the guest then routes through). RFC 4861 sections 6.2.4 and 6.2.6.
import type { Socket6 } from "../sys/socket6";
import { countDrop } from "../util/drop-log";
import { TokenBucket } from "../util/token-bucket";
import type { Ipv6Log } from "./handler";
import {
  ALL_NODES,
  buildRouterAdvertisement,
  NDP_HOP_LIMIT,
  NdpParseError,
  parseRouterSolicitation,
  type RouterAdvertisement,
} from "./ndp";

export interface RouterStats {
  solicitations: number;
  advertisements: number;
  /** hop-limit: an RS whose hop limit was not 255, so possibly forwarded (RFC 4861 6.1.1). */
  dropped: Partial<Record<"malformed" | "hop-limit" | "rate-limited" | "send-failed", number>>;
}

/** The first few RAs come quickly (MAX_INITIAL_RTR_ADVERTISEMENTS, RFC 4861 section 10). */
const INITIAL_ADVERTISEMENTS = 3;
const INITIAL_INTERVAL_MS = 4000;

export class RouterAdvertiser {
  private readonly advertisement: Buffer;
  private readonly counters: RouterStats = { solicitations: 0, advertisements: 0, dropped: {} };
  private timer?: NodeJS.Timeout;
  private sentPeriodic = 0;
  private readonly replies: TokenBucket;

  constructor(
    private readonly socket: Socket6,
    ra: RouterAdvertisement,
    private readonly intervalMs: number,
    private readonly log: Ipv6Log,
    private readonly where: string,
    maxPerSecond = 50,
  ) {
    this.advertisement = buildRouterAdvertisement(ra);
    this.replies = new TokenBucket(maxPerSecond);
  }

  start(): void {
    this.socket.onMessage((message, source, _port, hopLimit) =>
      this.solicited(message, source, hopLimit),
    );
    this.periodic();
  }

  stats(): RouterStats {
    return { ...this.counters, dropped: { ...this.counters.dropped } };
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private periodic(): void {
    this.send(ALL_NODES, "periodic");
    this.sentPeriodic++;
    const next = this.sentPeriodic < INITIAL_ADVERTISEMENTS ? INITIAL_INTERVAL_MS : this.intervalMs;
    this.timer = setTimeout(() => this.periodic(), next);
    this.timer.unref();
  }

  /**
   * Answered at once and by unicast (6.2.6 allows it), or to all nodes from "::". An RS
   * that may have been forwarded (hop limit not 255, or not told) is discarded (6.1.1).
   */
  private solicited(message: Buffer, source: string, hopLimit: number | undefined): void {
    this.counters.solicitations++;
    if (hopLimit !== NDP_HOP_LIMIT) {
      this.count("hop-limit", `RS from ${source} with hop limit ${hopLimit ?? "unknown"}`);
      return;
    }
    try {
      parseRouterSolicitation(message, source);
    } catch (error) {
      if (!(error instanceof NdpParseError)) throw error;
      this.count("malformed", `${error.message} from ${source}`);
      return;
    }
    if (!this.replies.take()) {
      this.count("rate-limited", `RS from ${source}`);
      return;
    }
    this.send(source === "::" ? ALL_NODES : source, "solicited");
  }

  private send(to: string, why: string): void {
    try {
      this.socket.send(this.advertisement, to);
      this.counters.advertisements++;
      this.log.debug({ where: this.where, to, why }, "IPv6 RA sent");
    } catch (error) {
      this.count("send-failed", `RA to ${to}: ${String(error)}`);
    }
  }

  private count(reason: keyof RouterStats["dropped"], detail: string): void {
    countDrop(
      this.counters.dropped,
      reason,
      this.log,
      { where: this.where, detail },
      "IPv6 RA drop",
    );
  }
}
