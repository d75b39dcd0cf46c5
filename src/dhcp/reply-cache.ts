// DHCPv4 answered in the kernel: a reply cache on the pod bridge's tc ingress, filled by
// the user-space server. The server stays the one source of truth: the kernel replays a
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
import fs from "node:fs";
import * as bpf from "../sys/bpf";
import { Rtnl } from "../sys/rtnl";
import { type TcFilterSpec, TcSession } from "../sys/tc";
import { ETH_P_IP_BE, TC_ACT_SHOT, TC_ACT_UNSPEC } from "../sys/uapi";
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
const UDP_CHECK = ETH_HEADER + IPV4_HEADER + 6;
const MAX_FRAME = PAYLOAD + MAX_DATAGRAM;
/** The value: frame length, out ifindex, the checksum's two halves, then the frame. */
const VALUE_HEADER = 16;
const VALUE_SIZE = VALUE_HEADER + MAX_FRAME;
/** Distinct requests kept per bridge; a full cache is emptied and starts again. */
export const MAX_CACHED_REPLIES = 16;
/** struct __sk_buff's len (linux/bpf.h): the frame, Ethernet header included, at tc. */
const SKB_LEN = 0;
const XID = 4;
const SECS = 8;

/** The counter map's slots. */
export const CACHE_COUNTERS = ["hits", "misses", "errors"] as const;
type CounterName = (typeof CACHE_COUNTERS)[number];
export type ReplyCacheCounts = Record<CounterName, number>;

/** After the guard (0x100) and the intercept (0x4dc), which never sit on the bridge anyway. */
const FILTER_PRIO = 0x4dd;
const FILTER_NAME = "vmlet-dhcp-cache";

/**
 * The classifier. r6 skb, r7 payload length then the cached value, r8 the key (per-CPU
 * scratch, too big for the stack), r9 the request's xid as it lies in the packet.
 */
export function replyCacheProgram(maps: { cache: number; scratch: number; counters: number }) {
  const a = new bpf.BpfAssembler();
  const count = (slot: CounterName) => {
    a.storeImm("w", bpf.FP, -4, CACHE_COUNTERS.indexOf(slot));
    a.ldMapFd(1, maps.counters).movReg(2, bpf.FP).alu64("add", 2, -4);
    a.call(bpf.BPF_FUNC_map_lookup_elem);
    const done = `counted_${slot}`;
    a.jmp64("jeq", 0, 0, done);
    a.movImm(1, 1).atomicAdd64(0, 0, 1);
    a.label(done);
  };
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
  a.movReg(0, 7).alu64("add", 0, IPV4_HEADER).jmpReg("jgt", 0, 8, "miss");
  a.loadMem("w", 8, 6, SKB_LEN);
  a.movReg(0, 7)
    .alu64("add", 0, ETH_HEADER + IPV4_HEADER)
    .jmpReg("jgt", 0, 8, "miss");
  a.alu64("sub", 7, UDP_HEADER);
  a.jmp64("jlt", 7, MIN_REQUEST, "miss").jmp64("jgt", 7, MAX_CACHED_REQUEST, "miss");
  // The key: payload length, payload, zeros after it; xid and secs zeroed.
  a.storeImm("w", bpf.FP, -4, 0);
  a.ldMapFd(1, maps.scratch).movReg(2, bpf.FP).alu64("add", 2, -4);
  a.call(bpf.BPF_FUNC_map_lookup_elem);
  a.jmp64("jeq", 0, 0, "miss");
  a.movReg(8, 0);
  for (let off = 0; off < KEY_SIZE; off += 8) a.storeImm("dw", 8, off, 0);
  a.storeReg("w", 8, 0, 7);
  a.movReg(1, 6).movImm(2, PAYLOAD).movReg(3, 8).alu64("add", 3, 4).movReg(4, 7);
  a.call(bpf.BPF_FUNC_skb_load_bytes);
  a.jmp64("jne", 0, 0, "miss");
  a.loadMem("w", 9, 8, 4 + XID);
  a.storeImm("w", 8, 4 + XID, 0).storeImm("h", 8, 4 + SECS, 0);
  a.ldMapFd(1, maps.cache).movReg(2, 8);
  a.call(bpf.BPF_FUNC_map_lookup_elem);
  a.jmp64("jeq", 0, 0, "miss");
  a.movReg(7, 0);
  a.loadMem("w", 8, 7, 0);
  a.jmp64("jlt", 8, PAYLOAD, "miss").jmp64("jgt", 8, MAX_FRAME, "miss");
  // The request becomes the reply: its length, its bytes, the request's xid.
  a.movReg(1, 6).movReg(2, 8).movImm(3, 0).call(bpf.BPF_FUNC_skb_change_tail);
  a.jmp64("jne", 0, 0, "miss"); // unchanged: the server answers it
  a.movReg(1, 6).movImm(2, 0).movReg(3, 7).alu64("add", 3, VALUE_HEADER).movReg(4, 8).movImm(5, 0);
  a.call(bpf.BPF_FUNC_skb_store_bytes);
  a.jmp64("jne", 0, 0, "error");
  a.storeReg("w", bpf.FP, -8, 9);
  a.movReg(1, 6)
    .movImm(2, PAYLOAD + XID)
    .movReg(3, bpf.FP)
    .alu64("add", 3, -8);
  a.movImm(4, 4).movImm(5, 0).call(bpf.BPF_FUNC_skb_store_bytes);
  a.jmp64("jne", 0, 0, "error");
  // The UDP checksum is stored as 0 and built with the helper, which knows the skb's
  // checksum state: with CHECKSUM_PARTIAL (a guest's or a veth's offload, inherited from
  // the request) only the pseudo-header part goes in, as the stack would leave it for
  // the device; otherwise the whole sum, with 0 sent as 0xffff.
  const csum = (to: () => void, flags: number) => {
    a.movReg(1, 6).movImm(2, UDP_CHECK).movImm(3, 0);
    to();
    a.movImm(5, flags).call(bpf.BPF_FUNC_l4_csum_replace);
    a.jmp64("jne", 0, 0, "error");
  };
  csum(() => a.loadMem("w", 4, 7, 8), bpf.BPF_F_PSEUDO_HDR | 4);
  csum(() => a.loadMem("w", 4, 7, 12), 4);
  csum(() => a.movReg(4, 9), bpf.BPF_F_MARK_MANGLED_0 | 4);
  count("hits");
  a.loadMem("w", 1, 7, 4).movImm(2, 0).call(bpf.BPF_FUNC_redirect);
  a.exit(); // TC_ACT_REDIRECT from bpf_redirect
  a.label("error");
  count("errors");
  a.ret(TC_ACT_SHOT); // half rewritten: neither the guest's request nor a reply
  a.label("miss");
  count("misses");
  a.label("pass").ret(TC_ACT_UNSPEC);
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

/** RFC 1071's sum of `b` as big-endian 16-bit words, folded, not complemented. */
function onesSum(b: Buffer, start = 0): number {
  let sum = start;
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
  if (b.length % 2) sum += b[b.length - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
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
 * and data sums that the classifier adds back in (see replyCacheProgram). One field
 * differs: the socket's IP id comes from the kernel's per-destination counters (6.18
 * numbers DF datagrams too), the cache's is 0, which RFC 6864 allows for a DF datagram.
 */
export function replyFrame(spec: ReplyFrameSpec): {
  frame: Buffer;
  pseudoSum: number;
  dataSum: number;
} {
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

function cacheValue(outIndex: number, reply: ReturnType<typeof replyFrame>): Buffer {
  const value = Buffer.alloc(VALUE_SIZE);
  value.writeUInt32LE(reply.frame.length, 0);
  value.writeUInt32LE(outIndex, 4);
  // As bytes in packet order: the helper adds them as 16-bit words in memory order.
  value.writeUInt16BE(reply.pseudoSum, 8);
  value.writeUInt16BE(reply.dataSum, 12);
  reply.frame.copy(value, VALUE_HEADER);
  return value;
}

export class ReplyCacheError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ReplyCacheError";
  }
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

/**
 * One bridge's reply cache: the maps, and the classifier on the bridge's ingress. The
 * filter is swapped in at a fixed place, so a restarted daemon's attach replaces (and
 * frees) whatever the previous one left with its cache: it starts empty.
 */
export class DhcpReplyCache {
  private readonly keys = new Map<string, Buffer>();
  private closed = false;

  private constructor(
    private readonly maps: { cache: number; scratch: number; counters: number },
    private readonly nsPath: string,
    private readonly spec: TcFilterSpec,
    private readonly sourceMac: Buffer,
    private readonly source: string,
    private readonly portIndex: number,
    private readonly where: string,
  ) {}

  /**
   * Attaches a cache to `bridge` whose replies leave through `port` (the guest's tap).
   * `source` is the address the server's replies come from (its server id). On failure
   * nothing of this call stays.
   */
  static async attach(
    nsPath: string,
    links: { bridge: string; port: string },
    source: string,
    steps?: StepHook,
  ): Promise<DhcpReplyCache> {
    const where = `DHCP reply cache on ${links.bridge} in ${nsPath}`;
    const fds: number[] = [];
    const rtnl = Rtnl.open(nsPath);
    let progFd = -1;
    try {
      const bridge = await rtnl.link(links.bridge);
      const port = await rtnl.link(links.port);
      if (port.master !== bridge.index) {
        throw new ReplyCacheError(`${links.port} is not a port of ${links.bridge}`);
      }
      return await timeStep(steps, "DHCP: reply cache load + attach", async () => {
        const cache = bpf.createHashMap("vmlet_dhcp_rc", {
          key: KEY_SIZE,
          value: VALUE_SIZE,
          entries: MAX_CACHED_REPLIES,
        });
        fds.push(cache);
        const scratch = bpf.createScratchMap("vmlet_dhcp_key", KEY_SIZE);
        fds.push(scratch);
        const counters = bpf.createCounterMap("vmlet_dhcp_hits", CACHE_COUNTERS.length);
        fds.push(counters);
        const maps = { cache, scratch, counters };
        progFd = bpf.loadProgram(
          "vmlet_dhcp_rc",
          bpf.BPF_PROG_TYPE_SCHED_CLS,
          replyCacheProgram(maps),
        );
        const link = { name: bridge.name, index: bridge.index };
        const spec: TcFilterSpec = {
          link,
          hook: "ingress",
          prio: FILTER_PRIO,
          protocol: ETH_P_IP_BE,
        };
        const tc = TcSession.on(rtnl);
        await tc.ensureClsact(link);
        await tc.attachBpf(spec, progFd, FILTER_NAME, true);
        const mac = Buffer.from(bridge.mac.replaceAll(":", ""), "hex");
        return new DhcpReplyCache(maps, nsPath, spec, mac, source, port.index, where);
      });
    } catch (error) {
      for (const fd of fds) fs.closeSync(fd);
      throw new ReplyCacheError(`${where}: ${(error as Error).message}`, { cause: error });
    } finally {
      if (progFd >= 0) fs.closeSync(progFd); // the filter holds the program, it the maps
      rtnl.close();
    }
  }

  /**
   * Caches a reply the server just sent, for requests with these bytes. Only call it for
   * replies that are a function of the request's bytes alone (an OFFER or ACK for a
   * lease); a request the kernel would never look up (too long) is skipped.
   */
  remember(entry: CachedReply): void {
    if (this.closed) return;
    const key = requestKey(entry.request);
    if (!key || PAYLOAD + entry.reply.length > MAX_FRAME) return;
    const id = key.toString("base64");
    if (!this.keys.has(id) && this.keys.size >= MAX_CACHED_REPLIES) this.clear();
    const broadcast = entry.address === "255.255.255.255";
    const frame = replyFrame({
      sourceMac: this.sourceMac,
      destinationMac: broadcast ? BROADCAST_MAC : Buffer.from(entry.mac.replaceAll(":", ""), "hex"),
      source: this.source,
      destination: entry.address,
      payload: entry.reply,
    });
    bpf.updateElem(this.maps.cache, key, cacheValue(this.portIndex, frame), this.where);
    this.keys.set(id, key);
  }

  /** Forgets every cached reply: from now on each request reaches the server again. */
  clear(): void {
    if (this.closed) return;
    for (const key of this.keys.values()) bpf.deleteElem(this.maps.cache, key, this.where);
    this.keys.clear();
  }

  /** Replies cached now. */
  get size(): number {
    return this.keys.size;
  }

  counts(): ReplyCacheCounts {
    const out: ReplyCacheCounts = { hits: 0, misses: 0, errors: 0 };
    if (this.closed) return out;
    const values = bpf.readCounters(this.maps.counters, CACHE_COUNTERS.length);
    for (const [i, name] of CACHE_COUNTERS.entries()) out[name] = Number(values[i]);
    return out;
  }

  /** Removes the filter and lets go of the maps; the server answers everything after. */
  async detach(): Promise<void> {
    if (this.closed) return;
    let tc: TcSession | undefined;
    try {
      tc = TcSession.open(this.nsPath);
      await tc.deleteFilter(this.spec);
    } catch {
      // The netns is gone, and the filter with it.
    } finally {
      tc?.close();
      this.closed = true;
      for (const fd of Object.values(this.maps)) fs.closeSync(fd);
    }
  }
}
