// A reply cache in the kernel: a tc classifier on a bridge's ingress that looks a request
// up by its bytes (a key its protocol's program builds) in a hash map user space fills,
// and on a hit turns the request into the stored reply frame, patches the request's
// transaction id in, completes the UDP checksum, and redirects it out of the port the
// entry names. On a miss the request goes on untouched. The DHCPv4 and DHCPv6 programs
// (dhcp/reply-cache.ts, dhcp6/reply-cache.ts) build the key; the replay is shared here.
import fs from "node:fs";
import * as bpf from "./bpf";
import type { LinkAddress, Rtnl } from "./rtnl";
import { type TcFilterSpec, TcSession } from "./tc";
import { TC_ACT_SHOT, TC_ACT_UNSPEC } from "./uapi";

/** Counter slots. */
export const CACHE_COUNTERS = ["hits", "misses", "errors"] as const;
type CounterName = (typeof CACHE_COUNTERS)[number];
export type ReplyCacheCounts = Record<CounterName, number>;

/** A value: frame length, out ifindex, the checksum's two sums, then the frame. */
export const VALUE_HEADER = 16;

export interface ReplyCacheMaps {
  cache: number;
  scratch: number;
  counters: number;
}

export interface ReplyCacheShape {
  keySize: number;
  /** The largest frame stored. */
  maxFrame: number;
  /** The smallest (its headers). */
  minFrame: number;
  entries: number;
}

/** r0 = 1 added to counter `slot` (r0-r5 clobbered). */
export function emitCount(a: bpf.BpfAssembler, countersFd: number, slot: CounterName): void {
  a.storeImm("w", bpf.FP, -4, CACHE_COUNTERS.indexOf(slot));
  a.ldMapFd(1, countersFd).movReg(2, bpf.FP).alu64("add", 2, -4);
  a.call(bpf.BPF_FUNC_map_lookup_elem);
  const done = `counted_${slot}`;
  a.jmp64("jeq", 0, 0, done);
  a.movImm(1, 1).atomicAdd64(0, 0, 1);
  a.label(done);
}

/** r8 = the per-CPU scratch key, zeroed; jumps to "miss" if there is none. */
export function emitScratchKey(a: bpf.BpfAssembler, maps: ReplyCacheMaps, keySize: number): void {
  a.storeImm("w", bpf.FP, -4, 0);
  a.ldMapFd(1, maps.scratch).movReg(2, bpf.FP).alu64("add", 2, -4);
  a.call(bpf.BPF_FUNC_map_lookup_elem);
  a.jmp64("jeq", 0, 0, "miss");
  a.movReg(8, 0);
  for (let off = 0; off < keySize; off += 8) a.storeImm("dw", 8, off, 0);
}

export interface ReplayLayout {
  /** The reply's UDP checksum, from the Ethernet header. */
  udpCheck: number;
  /** Where the request's transaction id goes in the reply, and its length. */
  xidAt: number;
  xidLength: 3 | 4;
}

/**
 * The lookup and the replay, and the miss, error and pass exits. Expects r6 = skb, r8 =
 * the key, the request's transaction id at fp-xidLength (as it lies in the packet), and
 * r9 = the 4 bytes it adds to the checksum (as they lie in the packet, other bytes zero).
 *
 * The UDP checksum is stored as 0 and built with the helper, which knows the skb's
 * checksum state: with CHECKSUM_PARTIAL (a guest's or a veth's offload, inherited from
 * the request) only the pseudo-header sum goes in, as the stack leaves it for the
 * device; otherwise the whole sum, with 0 sent as 0xffff.
 */
export function emitReplay(
  a: bpf.BpfAssembler,
  maps: ReplyCacheMaps,
  shape: ReplyCacheShape,
  layout: ReplayLayout,
): void {
  a.ldMapFd(1, maps.cache).movReg(2, 8);
  a.call(bpf.BPF_FUNC_map_lookup_elem);
  a.jmp64("jeq", 0, 0, "miss");
  a.movReg(7, 0);
  a.loadMem("w", 8, 7, 0);
  a.jmp64("jlt", 8, shape.minFrame, "miss").jmp64("jgt", 8, shape.maxFrame, "miss");
  // The request becomes the reply: its length, its bytes, the request's id.
  a.movReg(1, 6).movReg(2, 8).movImm(3, 0).call(bpf.BPF_FUNC_skb_change_tail);
  a.jmp64("jne", 0, 0, "miss"); // unchanged: the server answers it
  const store = bpf.BPF_F_RECOMPUTE_CSUM;
  a.movReg(1, 6).movImm(2, 0).movReg(3, 7).alu64("add", 3, VALUE_HEADER).movReg(4, 8);
  a.movImm(5, store);
  a.call(bpf.BPF_FUNC_skb_store_bytes);
  a.jmp64("jne", 0, 0, "error");
  a.movReg(1, 6).movImm(2, layout.xidAt).movReg(3, bpf.FP).alu64("add", 3, -layout.xidLength);
  a.movImm(4, layout.xidLength).movImm(5, store).call(bpf.BPF_FUNC_skb_store_bytes);
  a.jmp64("jne", 0, 0, "error");
  const csum = (to: () => void, flags: number) => {
    a.movReg(1, 6).movImm(2, layout.udpCheck).movImm(3, 0);
    to();
    a.movImm(5, flags).call(bpf.BPF_FUNC_l4_csum_replace);
    a.jmp64("jne", 0, 0, "error");
  };
  csum(() => a.loadMem("w", 4, 7, 8), bpf.BPF_F_PSEUDO_HDR | 4);
  csum(() => a.loadMem("w", 4, 7, 12), 4);
  csum(() => a.movReg(4, 9), bpf.BPF_F_MARK_MANGLED_0 | 4);
  emitCount(a, maps.counters, "hits");
  a.loadMem("w", 1, 7, 4).movImm(2, 0).call(bpf.BPF_FUNC_redirect);
  a.exit(); // TC_ACT_REDIRECT from bpf_redirect
  a.label("error");
  emitCount(a, maps.counters, "errors");
  a.ret(TC_ACT_SHOT); // half rewritten: neither the request nor a reply
  a.label("miss");
  emitCount(a, maps.counters, "misses");
  a.label("pass").ret(TC_ACT_UNSPEC);
}

/** RFC 1071's sum of `b` as big-endian 16-bit words, folded, not complemented. */
export function onesSum(b: Buffer, start = 0): number {
  let sum = start;
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
  if (b.length % 2) sum += b[b.length - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** A cached reply: the frame with its id and UDP checksum zero, and the checksum's sums. */
export interface ReplyFrame {
  frame: Buffer;
  pseudoSum: number;
  dataSum: number;
}

export class ReplyCacheError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ReplyCacheError";
  }
}

export interface ReplyCacheSpec {
  /** Map and program names (15 bytes at most). */
  name: string;
  shape: ReplyCacheShape;
  program: (maps: ReplyCacheMaps) => Buffer;
  /** Its place on the bridge's ingress: one per protocol. */
  prio: number;
  protocol: number;
}

/**
 * One bridge's cache: its maps and the classifier on the bridge's ingress. The filter is
 * swapped in at a fixed place, so a restarted daemon's attach replaces (and frees) what
 * the previous one left with its cache: it starts empty.
 */
export class ReplyCache {
  private readonly keys = new Map<string, Buffer>();
  private closed = false;

  private constructor(
    private readonly spec: ReplyCacheSpec,
    private readonly maps: ReplyCacheMaps,
    private readonly nsPath: string,
    private readonly filter: TcFilterSpec,
    /** The bridge's MAC, the port's index. */
    readonly links: { bridgeMac: Buffer; portIndex: number },
    readonly where: string,
  ) {}

  /**
   * Loads and attaches, on the caller's netlink connection (it has the bridge already);
   * on failure nothing of this call stays.
   */
  static async attach(
    rtnl: Rtnl,
    links: { bridge: LinkAddress; port: string },
    spec: ReplyCacheSpec,
  ): Promise<ReplyCache> {
    const { bridge } = links;
    const where = `${spec.name} on ${bridge.name} in ${rtnl.nsPath}`;
    const fds: number[] = [];
    let progFd = -1;
    try {
      const link = { name: bridge.name, index: bridge.index };
      const tc = TcSession.on(rtnl);
      // Two requests in flight at once on the one socket: a round trip saved.
      const [port] = await Promise.all([rtnl.cachedLink(links.port), tc.ensureClsact(link)]);
      if (port.master !== bridge.index) {
        throw new ReplyCacheError(`${links.port} is not a port of ${bridge.name}`);
      }
      const { shape } = spec;
      const cache = bpf.createHashMap(spec.name, {
        key: shape.keySize,
        value: VALUE_HEADER + shape.maxFrame,
        entries: shape.entries,
      });
      fds.push(cache);
      const scratch = bpf.createScratchMap(spec.name, shape.keySize);
      fds.push(scratch);
      const counters = bpf.createCounterMap(spec.name, CACHE_COUNTERS.length);
      fds.push(counters);
      const maps = { cache, scratch, counters };
      progFd = bpf.loadProgram(spec.name, bpf.BPF_PROG_TYPE_SCHED_CLS, spec.program(maps));
      const filter: TcFilterSpec = {
        link,
        hook: "ingress",
        prio: spec.prio,
        protocol: spec.protocol,
      };
      await tc.attachBpf(filter, progFd, spec.name, true);
      const bridgeMac = Buffer.from(bridge.mac.replaceAll(":", ""), "hex");
      return new ReplyCache(
        spec,
        maps,
        rtnl.nsPath,
        filter,
        { bridgeMac, portIndex: port.index },
        where,
      );
    } catch (error) {
      for (const fd of fds) fs.closeSync(fd);
      throw new ReplyCacheError(`${where}: ${(error as Error).message}`, { cause: error });
    } finally {
      if (progFd >= 0) fs.closeSync(progFd); // the filter holds the program, it the maps
    }
  }

  /** Stores `reply` for requests with `key`; a full cache is emptied first. */
  put(key: Buffer, reply: ReplyFrame): void {
    if (this.closed) return;
    const { shape } = this.spec;
    if (key.length !== shape.keySize || reply.frame.length > shape.maxFrame) {
      throw new ReplyCacheError(`${this.where}: key of ${key.length} or frame too long`);
    }
    const id = key.toString("base64");
    if (!this.keys.has(id) && this.keys.size >= shape.entries) this.clear();
    const value = Buffer.alloc(VALUE_HEADER + shape.maxFrame);
    value.writeUInt32LE(reply.frame.length, 0);
    value.writeUInt32LE(this.links.portIndex, 4);
    // As bytes in packet order: the helper adds them as 16-bit words in memory order.
    value.writeUInt16BE(reply.pseudoSum, 8);
    value.writeUInt16BE(reply.dataSum, 12);
    reply.frame.copy(value, VALUE_HEADER);
    bpf.updateElem(this.maps.cache, key, value, this.where);
    this.keys.set(id, key);
  }

  /** Forgets every reply: from now on each request reaches the server again. */
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

  /**
   * Removes the filter and lets go of the maps. With `netnsGoing` (the netns is deleted
   * next) only the maps are let go: the netns deletion removes the filter, and the
   * program and maps it holds, with the bridge, and a retried teardown after a failure in
   * between finds the filter as a crash of vmlet would leave it (attach replaces it).
   */
  async detach(options: { netnsGoing?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      if (options.netnsGoing) return;
      let tc: TcSession;
      try {
        tc = TcSession.open(this.nsPath);
      } catch {
        return; // the netns is gone, and the filter with it
      }
      try {
        await tc.deleteFilter(this.filter);
      } finally {
        tc.close();
      }
    } finally {
      for (const fd of Object.values(this.maps)) fs.closeSync(fd);
    }
  }
}
