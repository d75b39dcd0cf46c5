// DHCPv6 answered in the kernel, as DHCPv4 is (dhcp/reply-cache.ts): the pod bridge's
// ingress replays a REPLY or ADVERTISE the server sent, for a request from the same
// source address with the same message bytes (the 3-byte transaction id aside), with the
// request's transaction id, straight back out of the guest's port. Everything else (a
// miss, IPv6 extension headers, a message too long for the key) reaches the server's
// socket, which parses, answers or drops and counts it as before. The same reasoning on
// floods holds: a hit answers only the port the entry names, one reply per request.
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
import { ipv6ToBytes } from "../util/ipv6";
import { type StepHook, timeStep } from "../util/steps";

/** linux/if_ether.h, network order as tc's protocol field wants it. */
const ETH_P_IPV6_BE = 0xdd86;
const ETH_HEADER = 14;
const IPV6_HEADER = 40;
const UDP_HEADER = 8;
const SOURCE = ETH_HEADER + 8;
const MESSAGE = ETH_HEADER + IPV6_HEADER + UDP_HEADER;
/** Type and transaction id: no shorter message is valid. */
const MIN_MESSAGE = 4;
const KEY_SIZE = 512;
/** The key: message length, source address, message. */
export const MAX_CACHED_MESSAGE = KEY_SIZE - 4 - 16;
/** The server's replies fit one 1500-byte frame (sys/socket6 reads no more). */
const MAX_REPLY = 1500 - IPV6_HEADER - UDP_HEADER;
const SHAPE = {
  keySize: KEY_SIZE,
  minFrame: MESSAGE + MIN_MESSAGE,
  maxFrame: MESSAGE + MAX_REPLY,
  entries: 16,
};
/** struct __sk_buff's len (linux/bpf.h). */
const SKB_LEN = 0;
/** After the DHCPv4 cache (0x4dd) on the same bridge ingress. */
const FILTER_PRIO = 0x4de;

/**
 * The classifier. r6 skb, r7 the message's length, r8 the key (per-CPU scratch), r9 the
 * transaction id as it lies in the packet (its type byte zeroed).
 */
export function reply6CacheProgram(maps: ReplyCacheMaps): Buffer {
  const a = new bpf.BpfAssembler();
  a.movReg(6, 1);
  a.ldAbs("h", 12).jmp("jne", 0, 0x86dd, "pass");
  // UDP right after the fixed header: the layout every cached reply has.
  a.ldAbs("b", ETH_HEADER + 6).jmp("jne", 0, 17, "pass");
  a.ldAbs("h", ETH_HEADER + IPV6_HEADER + 2).jmp("jne", 0, 547, "pass");
  // A DHCPv6 message to the server: from here on a hit or a miss.
  a.ldAbs("h", ETH_HEADER + IPV6_HEADER + 4).movReg(7, 0); // UDP length
  a.ldAbs("h", ETH_HEADER + 4).movReg(8, 0); // IPv6 payload length
  a.jmpReg64("jgt", 7, 8, "miss");
  a.loadMem("w", 8, 6, SKB_LEN);
  a.movReg(0, 7)
    .alu64("add", 0, ETH_HEADER + IPV6_HEADER)
    .jmpReg64("jgt", 0, 8, "miss");
  a.alu64("sub", 7, UDP_HEADER);
  a.jmp64("jlt", 7, MIN_MESSAGE, "miss").jmp64("jgt", 7, MAX_CACHED_MESSAGE, "miss");
  emitScratchKey(a, maps, KEY_SIZE);
  a.storeReg("w", 8, 0, 7);
  a.movReg(1, 6).movImm(2, SOURCE).movReg(3, 8).alu64("add", 3, 4).movImm(4, 16);
  a.call(bpf.BPF_FUNC_skb_load_bytes);
  a.jmp64("jne", 0, 0, "miss");
  a.movReg(1, 6).movImm(2, MESSAGE).movReg(3, 8).alu64("add", 3, 20).movReg(4, 7);
  a.call(bpf.BPF_FUNC_skb_load_bytes);
  a.jmp64("jne", 0, 0, "miss");
  // Type and transaction id as they lie; the id goes from fp-3, its sum without the type.
  a.loadMem("w", 9, 8, 20).storeReg("w", bpf.FP, -4, 9).alu32("and", 9, 0xffffff00);
  a.storeImm("b", 8, 21, 0).storeImm("h", 8, 22, 0);
  emitReplay(a, maps, SHAPE, {
    udpCheck: MESSAGE - 2,
    xidAt: MESSAGE + 1,
    xidLength: 3,
  });
  return a.assemble();
}

/** The key of a message from `source`, or undefined for one the kernel never caches. */
export function request6Key(message: Buffer, source: string): Buffer | undefined {
  if (message.length < MIN_MESSAGE || message.length > MAX_CACHED_MESSAGE) return undefined;
  const key = Buffer.alloc(KEY_SIZE);
  key.writeUInt32LE(message.length, 0);
  ipv6ToBytes(source.split("%")[0]!).copy(key, 4);
  message.copy(key, 20);
  key.fill(0, 21, 24);
  return key;
}

export interface Reply6FrameSpec {
  /** The bridge's MAC and link-local address: the socket's replies leave from them. */
  sourceMac: Buffer;
  source: string;
  /** The client's MAC (its neighbour entry) and link-local address. */
  destinationMac: Buffer;
  destination: string;
  /** The DHCPv6 message; its transaction id is zeroed in the frame. */
  message: Buffer;
}

/** The hop limit of the server's UDP socket: the netns default, conf/all/hop_limit. */
const HOP_LIMIT = 64;

/**
 * The frame as the kernel sends the server's datagram, from port 547 to 546, transaction
 * id and UDP checksum zero, and the checksum's sums for the classifier. One field
 * differs: the socket's flow label is the kernel's hash of the flow (auto_flowlabels, a
 * secret per boot), the cache's is 0 (RFC 6437: no label).
 */
export function reply6Frame(spec: Reply6FrameSpec): ReplyFrame {
  const udpLength = UDP_HEADER + spec.message.length;
  const frame = Buffer.alloc(MESSAGE + spec.message.length);
  spec.destinationMac.copy(frame, 0);
  spec.sourceMac.copy(frame, 6);
  frame.writeUInt16BE(0x86dd, 12);
  const ip = frame.subarray(ETH_HEADER, ETH_HEADER + IPV6_HEADER);
  ip.writeUInt32BE(0x60000000, 0);
  ip.writeUInt16BE(udpLength, 4);
  ip[6] = 17;
  ip[7] = HOP_LIMIT;
  ipv6ToBytes(spec.source.split("%")[0]!).copy(ip, 8);
  ipv6ToBytes(spec.destination.split("%")[0]!).copy(ip, 24);
  const udp = frame.subarray(ETH_HEADER + IPV6_HEADER);
  udp.writeUInt16BE(547, 0);
  udp.writeUInt16BE(546, 2);
  udp.writeUInt16BE(udpLength, 4);
  spec.message.copy(udp, UDP_HEADER);
  udp.fill(0, UDP_HEADER + 1, UDP_HEADER + 4);
  const pseudo = Buffer.alloc(40);
  ip.copy(pseudo, 0, 8, 40);
  pseudo.writeUInt32BE(udpLength, 32);
  pseudo[39] = 17;
  return { frame, pseudoSum: onesSum(pseudo), dataSum: onesSum(udp) };
}

/** A reply the server sent, and the request it answers. */
export interface Cached6Reply {
  request: Buffer;
  /** The request's source, the reply's destination. */
  source: string;
  reply: Buffer;
  mac: string;
}

/** One pod bridge's DHCPv6 reply cache, its replies leaving through the guest's port. */
export class Dhcp6ReplyCache {
  private constructor(
    private readonly cache: ReplyCache,
    private readonly linkLocal: string,
  ) {}

  /** `linkLocal`: the bridge's address the server's replies come from. */
  static async attach(
    rtnl: Rtnl,
    links: { bridge: LinkAddress; port: string },
    linkLocal: string,
    steps?: StepHook,
  ): Promise<Dhcp6ReplyCache> {
    const cache = await timeStep(steps, "DHCPv6: reply cache load + attach", () =>
      ReplyCache.attach(rtnl, links, {
        name: "vmlet_dhcp6_rc",
        shape: SHAPE,
        program: reply6CacheProgram,
        prio: FILTER_PRIO,
        protocol: ETH_P_IPV6_BE,
      }),
    );
    return new Dhcp6ReplyCache(cache, linkLocal);
  }

  /** Caches a reply that is a function of the request's bytes and source alone. */
  remember(entry: Cached6Reply): void {
    const key = request6Key(entry.request, entry.source);
    if (!key || entry.reply.length > MAX_REPLY) return;
    this.cache.put(
      key,
      reply6Frame({
        sourceMac: this.cache.links.bridgeMac,
        source: this.linkLocal,
        destinationMac: Buffer.from(entry.mac.replaceAll(":", ""), "hex"),
        destination: entry.source,
        message: entry.reply,
      }),
    );
  }

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
