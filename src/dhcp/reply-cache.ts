// DHCPv4 answered in the kernel: a reply cache (sys/reply-cache) on the pod bridge's tc
// ingress, filled by the user-space server. The server stays the one source of truth: the kernel replays a
// reply only for a request byte-identical (xid and secs aside) to one the server answered,
// with that request's xid patched in, straight back out of the guest's port. Everything
// else (a miss, a malformed or oversized request, IP options, fragments) goes on to the
// server's socket as before and is parsed, answered or dropped and counted there.
//
// Why in the kernel: a Node server that answers with replies made beforehand is still
// 0.84-0.99x dnsmasq (bench/dhcp's floor row); the wakeup of the user-space socket is the
// cost, not vmlet's handling (~6 µs).
//
// How a request reaches br0's ingress: in a tapmanager pod the guard's tap program steers
// the guest's DHCP into it with bpf_redirect(BPF_F_INGRESS); on a plain bridge (the tests'
// and benchmark's veth port) the bridge passes the broadcast up, and the renewal intercept
// steers unicast renewals in. The program sees all three (test/netns/dhcp-reply-cache).
//
// No rate limit here, unlike the socket path's token bucket: a hit costs the kernel about
// what the guest's send cost it, yields one reply of a request's size, goes only out of the
// port the cache names (the guest's own tap, behind the guard that admits only its MAC),
// and wakes no process. A flooding guest floods itself, at its own expense.
import * as bpf from "../sys/bpf";
import {
  emitReplay,
  emitScratchKey,
  onesSum,
  ReplyCache,
  type ReplyCacheCounts,
  type ReplyCacheMaps,
  type ReplyFrame,
} from "../sys/reply-cache";
import type { LinkAddress, Rtnl } from "../sys/rtnl";
import { ETH_P_IP_BE } from "../sys/uapi";
import { ipToBytes } from "../util/ip";
import { type StepHook, timeStep } from "../util/steps";
import { MAX_DATAGRAM } from "./codec";

/** A request's UDP payload is cached only up to this many bytes (the key is 512). */
export const MAX_CACHED_REQUEST = 508;
/** The fixed BOOTP header and the cookie: no shorter request is valid. */
const MIN_REQUEST = 240;
const KEY_SIZE = 4 + MAX_CACHED_REQUEST;
const ETH_HEADER = 14;
const IPV4_HEADER = 20;
const UDP_HEADER = 8;
const PAYLOAD = ETH_HEADER + IPV4_HEADER + UDP_HEADER;
const SHAPE = {
  keySize: KEY_SIZE,
  minFrame: PAYLOAD,
  maxFrame: PAYLOAD + MAX_DATAGRAM,
  /** Distinct requests kept per bridge; a full cache is emptied and starts again. */
  entries: 16,
};
/** struct __sk_buff's len (linux/bpf.h): the frame, Ethernet header included, at tc. */
const SKB_LEN = 0;
const XID = 4;
const SECS = 8;

/** After the guard (0x100) and the intercept (0x4dc), which never sit on the bridge anyway. */
const FILTER_PRIO = 0x4dd;

/**
 * The classifier. r6 skb, r7 the payload's length, r8 the key (per-CPU scratch, too big
 * for the stack), r9 the request's xid as it lies in the packet.
 */
export function replyCacheProgram(maps: ReplyCacheMaps): Buffer {
  const a = new bpf.BpfAssembler();
  a.movReg(6, 1);
  a.ldAbs("h", 12).jmp("jne", 0, 0x0800, "pass");
  // Version 4 without IP options: the layout every cached reply has (and checksum
  // offload's csum_start, which the reply inherits from the request, points right).
  a.ldAbs("b", ETH_HEADER).jmp("jne", 0, 0x45, "pass");
  a.ldAbs("h", ETH_HEADER + 6)
    .alu32("and", 0, 0x3fff)
    .jmp("jne", 0, 0, "pass"); // MF, offset
  a.ldAbs("b", ETH_HEADER + 9).jmp("jne", 0, 17, "pass");
  a.ldAbs("h", ETH_HEADER + IPV4_HEADER + 2).jmp("jne", 0, 67, "pass");
  // A DHCP request: from here on a hit or a miss. Lengths as the socket would see them.
  a.ldAbs("h", ETH_HEADER + IPV4_HEADER + 4).movReg(7, 0); // UDP length
  a.ldAbs("h", ETH_HEADER + 2).movReg(8, 0); // IP total length
  a.movReg(0, 7).alu64("add", 0, IPV4_HEADER).jmpReg64("jgt", 0, 8, "miss");
  a.loadMem("w", 8, 6, SKB_LEN);
  a.movReg(0, 7)
    .alu64("add", 0, ETH_HEADER + IPV4_HEADER)
    .jmpReg64("jgt", 0, 8, "miss");
  a.alu64("sub", 7, UDP_HEADER);
  a.jmp64("jlt", 7, MIN_REQUEST, "miss").jmp64("jgt", 7, MAX_CACHED_REQUEST, "miss");
  // The key: payload length, payload, zeros after it; xid and secs zeroed.
  emitScratchKey(a, maps, KEY_SIZE);
  a.storeReg("w", 8, 0, 7);
  a.movReg(1, 6).movImm(2, PAYLOAD).movReg(3, 8).alu64("add", 3, 4).movReg(4, 7);
  a.call(bpf.BPF_FUNC_skb_load_bytes);
  a.jmp64("jne", 0, 0, "miss");
  a.loadMem("w", 9, 8, 4 + XID).storeReg("w", bpf.FP, -4, 9);
  a.storeImm("w", 8, 4 + XID, 0).storeImm("h", 8, 4 + SECS, 0);
  emitReplay(a, maps, SHAPE, { udpCheck: PAYLOAD - 2, xidAt: PAYLOAD + XID, xidLength: 4 });
  return a.assemble();
}

/** The key of a request's UDP payload, or undefined for one the kernel never caches. */
export function requestKey(payload: Buffer): Buffer | undefined {
  if (payload.length < MIN_REQUEST || payload.length > MAX_CACHED_REQUEST) return undefined;
  const key = Buffer.alloc(KEY_SIZE);
  key.writeUInt32LE(payload.length, 0);
  payload.copy(key, 4);
  key.fill(0, 4 + XID, 4 + SECS + 2);
  return key;
}

export interface ReplyFrameSpec {
  /** The bridge's MAC: the socket's replies leave from it. */
  sourceMac: Buffer;
  /** ff:ff:ff:ff:ff:ff for a broadcast, else the lease's MAC (its permanent neighbour). */
  destinationMac: Buffer;
  source: string;
  destination: string;
  /** The DHCP reply; its xid is zeroed in the frame. */
  payload: Buffer;
}

/** The IPv4 TTL of the server's socket: the netns default, net.ipv4.ip_default_ttl. */
const TTL = 64;
const IP_DF = 0x4000;

/**
 * The reply frame as the kernel sends the server's datagram (DF set, the socket's TTL,
 * from port 67 to 68), xid zero and the UDP checksum 0, and the checksum's pseudo-header
 * and data sums that the classifier adds back in (sys/reply-cache). One field differs:
 * the socket's IP id comes from the kernel's per-destination counters (6.18 numbers DF
 * datagrams too), the cache's is 0, which RFC 6864 allows for a DF datagram.
 */
export function replyFrame(spec: ReplyFrameSpec): ReplyFrame {
  const udpLength = UDP_HEADER + spec.payload.length;
  const frame = Buffer.alloc(PAYLOAD + spec.payload.length);
  spec.destinationMac.copy(frame, 0);
  spec.sourceMac.copy(frame, 6);
  frame.writeUInt16BE(0x0800, 12);
  const ip = frame.subarray(ETH_HEADER, ETH_HEADER + IPV4_HEADER);
  ip[0] = 0x45;
  ip.writeUInt16BE(IPV4_HEADER + udpLength, 2);
  ip.writeUInt16BE(IP_DF, 6);
  ip[8] = TTL;
  ip[9] = 17;
  ipToBytes(spec.source).copy(ip, 12);
  ipToBytes(spec.destination).copy(ip, 16);
  ip.writeUInt16BE(~onesSum(ip) & 0xffff, 10);
  const udp = frame.subarray(ETH_HEADER + IPV4_HEADER);
  udp.writeUInt16BE(67, 0);
  udp.writeUInt16BE(68, 2);
  udp.writeUInt16BE(udpLength, 4);
  spec.payload.copy(udp, UDP_HEADER);
  udp.fill(0, UDP_HEADER + XID, UDP_HEADER + XID + 4);
  const pseudo = Buffer.alloc(12);
  ip.copy(pseudo, 0, 12, 20);
  pseudo[9] = 17;
  pseudo.writeUInt16BE(udpLength, 10);
  return { frame, pseudoSum: onesSum(pseudo), dataSum: onesSum(udp) };
}

/** What a cached reply is: the request it answers and where the socket sent it. */
export interface CachedReply {
  /** The request's UDP payload, as the server's socket received it. */
  request: Buffer;
  /** The reply's UDP payload. */
  reply: Buffer;
  /** Its destination: 255.255.255.255 or the lease's address. */
  address: string;
  /** The lease's MAC, the destination of a reply that is not broadcast. */
  mac: string;
}

const BROADCAST_MAC = Buffer.alloc(6, 0xff);

/** One pod bridge's DHCPv4 reply cache, its replies leaving through the guest's port. */
export class DhcpReplyCache {
  private constructor(
    private readonly cache: ReplyCache,
    private readonly source: string,
  ) {}

  /**
   * Attaches a cache to `bridge` whose replies leave through `port` (the guest's tap).
   * `source` is the address the server's replies come from (its server id).
   */
  static async attach(
    rtnl: Rtnl,
    links: { bridge: LinkAddress; port: string },
    source: string,
    steps?: StepHook,
  ): Promise<DhcpReplyCache> {
    const cache = await timeStep(steps, "DHCP: reply cache load + attach", () =>
      ReplyCache.attach(rtnl, links, {
        name: "vmlet_dhcp_rc",
        shape: SHAPE,
        program: replyCacheProgram,
        prio: FILTER_PRIO,
        protocol: ETH_P_IP_BE,
      }),
    );
    return new DhcpReplyCache(cache, source);
  }

  /**
   * Caches a reply the server just sent, for requests with these bytes. Only call it for
   * replies that are a function of the request's bytes alone (an OFFER or ACK for a
   * lease); a request the kernel would never look up (too long) is skipped.
   */
  remember(entry: CachedReply): void {
    const key = requestKey(entry.request);
    if (!key || PAYLOAD + entry.reply.length > SHAPE.maxFrame) return;
    const broadcast = entry.address === "255.255.255.255";
    const reply = replyFrame({
      sourceMac: this.cache.links.bridgeMac,
      destinationMac: broadcast ? BROADCAST_MAC : Buffer.from(entry.mac.replaceAll(":", ""), "hex"),
      source: this.source,
      destination: entry.address,
      payload: entry.reply,
    });
    this.cache.put(key, reply);
  }

  /** Forgets every cached reply. */
  clear(): void {
    this.cache.clear();
  }

  get size(): number {
    return this.cache.size;
  }

  counts(): ReplyCacheCounts {
    return this.cache.counts();
  }

  /** See ReplyCache.detach: with `netnsGoing`, the filter is left to the netns deletion. */
  detach(options: { netnsGoing?: boolean } = {}): Promise<void> {
    return this.cache.detach(options);
  }
}
