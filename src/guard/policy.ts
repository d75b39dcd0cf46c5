// The guest isolation programs, built from what one pod NIC may send (its MAC, its lease
// and addresses, extra prefixes from an annotation). Three tc classifiers per NIC:
//   - tap ingress (frames from the guest): the guest speaks only as its own MAC and
//     addresses, never as a DHCP server or an IPv6 router (libvirt's clean-traffic and
//     Neutron's port security, checked frame by frame);
//   - veth ingress (frames from the node): no DHCP reaches the pod's server;
//   - veth egress (frames to the node): no DHCP leaves the pod, and nothing the pod netns
//     itself sends (ARP, NDP from the bridge) reaches the node.
// A frame that passes gets TC_ACT_UNSPEC so the next filter (the renewal intercept)
// still runs; a dropped one is counted in the NIC's array map by reason.
// What is the pod's own (its MAC, source prefixes, bridge) is not in the code: the
// programs read it from a one-entry config map per NIC (encodeGuardConfig), so they can
// be loaded and verified before the pod's network exists, while CNI ADD runs, and only
// the map's fill and the attaches are left for after it. The prefixes sit in fixed slots
// with a count (GUARD_PREFIX_SLOTS per family), checked in unrolled code.
import {
  BPF_F_INGRESS,
  BPF_FUNC_map_lookup_elem,
  BPF_FUNC_redirect,
  BPF_FUNC_skb_store_bytes,
  BpfAssembler,
  FP,
  type Reg,
} from "../sys/bpf";
import { TC_ACT_SHOT, TC_ACT_UNSPEC } from "../sys/uapi";
import { ipv4ToUint32, ipv6Words, maskOf } from "../util/ip";

/** Why a frame was dropped; the index is the map slot. */
export const DROP_REASONS = [
  "source-mac", // tap: the frame's source MAC is not the guest's
  "ipv4-source", // tap: an IPv4 source the guest does not hold
  "arp-spoof", // tap: ARP sender MAC or IP not the guest's
  "ipv6-source", // tap: an IPv6 source not the guest's, ::, or link-local
  "ethertype", // tap: not IPv4, ARP, IPv6 or RARP (VLAN tags included)
  "dhcp-server", // tap: UDP to 68 or 546, the guest acting as a DHCP server
  "router-advert", // tap: ICMPv6 type 134
  "ipv6-header-chain", // tap: more IPv6 extension headers than it reads
  "malformed", // an IPv4 (tap, veth ingress) or ARP (tap) header it cannot read
  "dhcp-from-node", // veth ingress: UDP to 67 or 68 from the node
  "netns-source", // veth egress: a frame the pod netns itself sent
] as const;
export type DropReason = (typeof DROP_REASONS)[number];

export interface Prefix {
  family: 4 | 6;
  address: string;
  prefixLength: number;
}

/** What one guest NIC may send as. */
export interface TapPolicy {
  guestMac: string;
  /** Sources it may use: its lease and addresses (as /32, /128), annotation prefixes. */
  prefixes: Prefix[];
  /**
   * The pod netns routes the guest's IPv6 (tapmanager/guest-ipv6): its forwarded frames
   * and NDP, from the bridge's MAC, may leave through the veth; its RAs and DHCPv6 may not.
   */
  routesIpv6?: boolean;
}

// linux/if_ether.h
const ETH_P_IP = 0x0800;
const ETH_P_ARP = 0x0806;
const ETH_P_RARP = 0x8035;
const ETH_P_IPV6 = 0x86dd;
// linux/in.h, linux/in6.h, linux/icmpv6.h
const IPPROTO_HOPOPTS = 0;
const IPPROTO_UDP = 17;
const IPPROTO_ROUTING = 43;
const IPPROTO_FRAGMENT = 44;
const IPPROTO_ICMPV6 = 58;
const IPPROTO_DSTOPTS = 60;
const ND_ROUTER_ADVERT = 134;
const DHCP_SERVER_PORT = 67;
const DHCP_CLIENT_PORT = 68;
const DHCPV6_CLIENT_PORT = 546;
const DHCPV6_SERVER_PORT = 547;
/** Offsets from the Ethernet header. */
const ETH_SRC = 6;
const ETH_TYPE = 12;
const L3 = 14;
/** The fixed IPv6 header's next-header byte, and where its upper layer starts. */
const IPV6_NEXT = L3 + 6;
const IPV6_L4 = L3 + 40;
/** struct __sk_buff's vlan_present (linux/bpf.h): the tag is off the data by tc time. */
const SKB_VLAN_PRESENT = 20;
/** IPv6 extension headers walked before giving up (and dropping). */
const IPV6_EXT_MAX = 4;
/**
 * Source prefixes a NIC may have per family: the annotation's 64 (runtime/net-annotations)
 * and its own addresses. Each slot is a few instructions, run only up to the count; a
 * program is built with as many as its NIC needs (PrefixSlots), since the verifier's and
 * the JIT's time grows with its length (~2 µs an instruction here: 6 ms for all slots).
 */
export const GUARD_PREFIX_SLOTS = 72;

/** Prefix slots a tap program has, per family. */
export interface PrefixSlots {
  v4: number;
  v6: number;
}

/**
 * The slots `prefixes` take, per family; at least one each (with none, the code behind a
 * match would be unreachable, which the verifier refuses).
 */
export function slotsFor(prefixes: Prefix[]): PrefixSlots {
  return {
    v4: Math.max(1, prefixes.filter((x) => x.family === 4).length),
    v6: Math.max(1, prefixes.filter((x) => x.family === 6).length),
  };
}
// The config map's one value (all u32, little-endian; packet words as LD_ABS reads them).
const CFG_GUEST_MAC_HI = 0;
const CFG_GUEST_MAC_LO = 4;
const CFG_ROUTER_MAC_HI = 8;
const CFG_ROUTER_MAC_LO = 12;
const CFG_FLAGS = 16;
const CFG_BRIDGE_INDEX = 20;
const CFG_V4_COUNT = 24;
const CFG_V6_COUNT = 28;
/** IPv4 slots: address, mask. */
const CFG_V4 = 32;
const V4_SLOT = 8;
/** IPv6 slots: four address words, four mask words. */
const CFG_V6 = CFG_V4 + GUARD_PREFIX_SLOTS * V4_SLOT;
const V6_SLOT = 32;
export const GUARD_CONFIG_SIZE = CFG_V6 + GUARD_PREFIX_SLOTS * V6_SLOT;
/** CFG_FLAGS: the pod netns routes the guest's IPv6 (TapPolicy.routesIpv6). */
const FLAG_ROUTES_IPV6 = 1;
/** Stack: the config pointer (spilled: every callee-saved register is taken). */
const STACK_CFG = -16;
/** Stack: the IPv6 source's four words, for the slot loop. */
const STACK_V6_SRC = -32;

const SKB: Reg = 6;
/** The L4 header's offset from the Ethernet header, once computed. */
const L4: Reg = 7;
/** The IPv6 next header while walking the chain. */
const NEXT: Reg = 8;
/** The word at offset 12: ethertype, then the first two bytes of L3. */
const TYPE_WORD: Reg = 8;
/** IPv4's flags + fragment offset, TTL and protocol. */
const FRAG_PROTO: Reg = 9;

function macWords(mac: string): { hi: number; lo: number } {
  const b = Buffer.from(mac.replaceAll(":", ""), "hex");
  if (b.length !== 6) throw new Error(`guard: MAC ${JSON.stringify(mac)}: expected six octets`);
  return { hi: b.readUInt32BE(0), lo: b.readUInt16BE(4) };
}

class PolicyAssembler {
  readonly a = new BpfAssembler();
  private next = 0;
  /** Reasons jumped to: only their stubs are emitted (the verifier rejects dead code). */
  private readonly used = new Set<DropReason>();
  /** loadConfig() ran: its null check's target is emitted. */
  configured = false;

  fresh(name: string): string {
    return `${name}_${this.next++}`;
  }

  /** goto the drop stub of `reason`. */
  drop(reason: DropReason): string {
    this.used.add(reason);
    return `drop_${reason}`;
  }

  /** Jumps to `to` when the `words` at `offset` fall in the prefix; falls through otherwise. */
  matchPrefix(offset: number, words: number[], prefixLength: number, to: string): void {
    const miss = this.fresh("miss");
    let left = prefixLength;
    for (let i = 0; i < words.length && left > 0; i++, left -= 32) {
      const mask = maskOf(left);
      this.a.ldAbs("w", offset + 4 * i);
      if (mask !== 0xffffffff) this.a.alu32("and", 0, mask);
      this.a.jmp("jne", 0, (words[i] & mask) >>> 0, miss);
    }
    this.a.goto(to);
    this.a.label(miss);
  }

  /**
   * r0 = the config map's value, spilled to the stack for fill(); no config (never, for an
   * array's slot 0, but the verifier asks) drops the frame uncounted.
   */
  loadConfig(configFd: number): void {
    const { a } = this;
    this.configured = true;
    a.storeImm("w", FP, -4, 0);
    a.ldMapFd(1, configFd).movReg(2, FP).alu64("add", 2, -4);
    a.call(BPF_FUNC_map_lookup_elem);
    a.jmp64("jeq", 0, 0, "unconfigured");
    a.storeReg("dw", FP, STACK_CFG, 0);
  }

  /** r1 = the config (LD_ABS and helper calls clobber r1-r5). */
  fill(): void {
    this.a.loadMem("dw", 1, FP, STACK_CFG);
  }

  /** Jumps to `to` unless the packet word in r0 equals the config's u32 at `off`. */
  jneConfig(off: number, to: string): void {
    this.fill();
    this.a.loadMem("w", 2, 1, off).jmpReg("jne", 0, 2, to);
  }

  /** Jumps to `to` when the IPv4 address in r0 falls in one of the config's first `slots` prefixes. */
  matchIpv4Slots(slots: number, to: string): void {
    const { a } = this;
    const miss = this.fresh("v4_miss");
    this.fill();
    a.loadMem("w", 2, 1, CFG_V4_COUNT);
    for (let i = 0; i < slots; i++) {
      a.jmp("jle", 2, i, miss);
      a.loadMem("w", 3, 1, CFG_V4 + V4_SLOT * i);
      a.loadMem("w", 4, 1, CFG_V4 + V4_SLOT * i + 4);
      a.movReg(5, 0).alu32Reg("and", 5, 4).jmpReg("jeq", 5, 3, to);
    }
    a.label(miss);
  }

  /** Jumps to `to` when the IPv6 address at `offset` falls in one of the first `slots` prefixes. */
  matchIpv6Slots(offset: number, slots: number, to: string): void {
    const { a } = this;
    const miss = this.fresh("v6_miss");
    for (let w = 0; w < 4; w++)
      a.ldAbs("w", offset + 4 * w).storeReg("w", FP, STACK_V6_SRC + 4 * w, 0);
    this.fill();
    a.loadMem("w", 2, 1, CFG_V6_COUNT);
    for (let i = 0; i < slots; i++) {
      const next = this.fresh("v6_next");
      a.jmp("jle", 2, i, miss);
      for (let w = 0; w < 4; w++) {
        a.loadMem("w", 3, FP, STACK_V6_SRC + 4 * w);
        a.loadMem("w", 4, 1, CFG_V6 + V6_SLOT * i + 4 * w);
        a.loadMem("w", 5, 1, CFG_V6 + V6_SLOT * i + 16 + 4 * w);
        a.alu32Reg("and", 3, 5).jmpReg("jne", 3, 4, next);
      }
      a.goto(to);
      a.label(next);
    }
    a.label(miss);
  }

  /**
   * From the word at offset 12 in `TYPE_WORD` (ethertype, then IPv4's version/IHL byte):
   * r7 = the offset of the L4 header; drops an IPv4 header it cannot read.
   */
  ipv4HeaderLength(): void {
    this.a.movReg(L4, TYPE_WORD).alu32("rsh", L4, 8).alu32("and", L4, 0xff);
    this.a.movReg(0, L4).alu32("rsh", 0, 4).jmp("jne", 0, 4, this.drop("malformed"));
    this.a.alu32("and", L4, 0x0f).alu32("lsh", L4, 2);
    this.a.jmp("jlt", L4, 20, this.drop("malformed"));
    this.a.alu32("add", L4, L3);
    // Fragment offset and protocol, in one load.
    this.a.ldAbs("w", L3 + 6).movReg(FRAG_PROTO, 0);
  }

  /** Falls through for the first (or only) fragment of an IPv4 UDP datagram; else `other`. */
  ipv4Udp(other: string): void {
    this.a.movReg(0, FRAG_PROTO).alu32("and", 0, 0xff).jmp("jne", 0, IPPROTO_UDP, other);
    this.a.movReg(0, FRAG_PROTO).alu32("rsh", 0, 16).alu32("and", 0, 0x1fff);
    this.a.jmp("jne", 0, 0, other);
  }

  /**
   * Into the bridge's own ingress, destination MAC made broadcast so the bridge takes it
   * whatever its MAC (as the renewal intercept does): the frame is never bridged on.
   */
  steer(): void {
    const { a } = this;
    a.storeImm("w", FP, -8, -1).storeImm("h", FP, -4, -1);
    a.movReg(1, SKB).movImm(2, 0).movReg(3, FP).alu64("add", 3, -8);
    a.movImm(4, 6).movImm(5, 0).call(BPF_FUNC_skb_store_bytes);
    this.fill();
    a.loadMem("w", 1, 1, CFG_BRIDGE_INDEX);
    a.movImm(2, BPF_F_INGRESS).call(BPF_FUNC_redirect);
    a.exit(); // TC_ACT_REDIRECT from bpf_redirect
  }

  /** The drop stubs and the counter update they share. */
  finish(mapFd: number): Buffer {
    for (const [index, reason] of DROP_REASONS.entries()) {
      if (!this.used.has(reason)) continue;
      this.a.label(`drop_${reason}`).storeImm("w", FP, -4, index).goto("count");
    }
    this.a.label("count");
    this.a.ldMapFd(1, mapFd).movReg(2, FP).alu64("add", 2, -4);
    this.a.call(BPF_FUNC_map_lookup_elem);
    this.a.jmp64("jeq", 0, 0, "shot");
    this.a.movImm(1, 1).atomicAdd64(0, 0, 1);
    this.a.label("shot").ret(TC_ACT_SHOT);
    if (this.configured) this.a.label("unconfigured").ret(TC_ACT_SHOT);
    return this.a.assemble();
  }
}

/**
 * Frames from the guest (tap ingress), checked against the NIC's config map. Its DHCP
 * client messages are steered into the config's bridge (the pod's server), so they are
 * never bridged to the veth.
 */
export function tapIngressProgram(
  configFd: number,
  mapFd: number,
  slots: PrefixSlots = { v4: GUARD_PREFIX_SLOTS, v6: GUARD_PREFIX_SLOTS },
): Buffer {
  for (const n of [slots.v4, slots.v6]) {
    if (!Number.isInteger(n) || n < 1 || n > GUARD_PREFIX_SLOTS) {
      throw new Error(`guard: ${n} prefix slots; 1 to ${GUARD_PREFIX_SLOTS}`);
    }
  }
  const p = new PolicyAssembler();
  const { a } = p;
  a.movReg(SKB, 1);
  p.loadConfig(configFd);
  // A VLAN tag was taken off into the skb before tc runs: the data shows the inner type.
  a.loadMem("w", 0, SKB, SKB_VLAN_PRESENT).jmp("jne", 0, 0, p.drop("ethertype"));
  a.ldAbs("w", ETH_SRC);
  p.jneConfig(CFG_GUEST_MAC_HI, p.drop("source-mac"));
  a.ldAbs("h", ETH_SRC + 4);
  p.jneConfig(CFG_GUEST_MAC_LO, p.drop("source-mac"));
  a.ldAbs("w", ETH_TYPE).movReg(TYPE_WORD, 0).alu32("rsh", 0, 16);
  a.jmp("jeq", 0, ETH_P_IP, "ipv4");
  a.jmp("jeq", 0, ETH_P_ARP, "arp");
  a.jmp("jeq", 0, ETH_P_IPV6, "ipv6");
  a.jmp("jeq", 0, ETH_P_RARP, "pass"); // QEMU's announce-self after a migration
  a.goto(p.drop("ethertype"));

  // IPv4: from its own addresses, or from 0.0.0.0 as a DHCP client only. Its DHCP
  // client messages go to the pod's server and nowhere else.
  a.label("ipv4");
  p.ipv4HeaderLength();
  a.ldAbs("w", L3 + 12).jmp("jeq", 0, 0, "ipv4_unspecified");
  p.matchIpv4Slots(slots.v4, "ipv4_own");
  a.goto(p.drop("ipv4-source"));
  a.label("ipv4_unspecified");
  p.ipv4Udp(p.drop("ipv4-source"));
  a.ldInd("w", L4, 0).jmp(
    "jne",
    0,
    (DHCP_CLIENT_PORT << 16) | DHCP_SERVER_PORT,
    p.drop("ipv4-source"),
  );
  a.goto("steer");
  a.label("ipv4_own");
  p.ipv4Udp("pass");
  a.ldInd("w", L4, 0).alu32("and", 0, 0xffff); // destination port
  a.jmp("jeq", 0, DHCP_CLIENT_PORT, p.drop("dhcp-server"));
  a.jmp("jeq", 0, DHCP_SERVER_PORT, "steer");
  a.goto("pass");
  a.label("steer");
  p.steer();

  // ARP: Ethernet/IPv4 only, sender MAC the guest's, sender IP its own or 0.0.0.0 (a probe).
  a.label("arp");
  a.ldAbs("w", L3).jmp("jne", 0, 0x00010800, p.drop("malformed"));
  a.ldAbs("h", L3 + 4).jmp("jne", 0, 0x0604, p.drop("malformed"));
  a.ldAbs("w", L3 + 8);
  p.jneConfig(CFG_GUEST_MAC_HI, p.drop("arp-spoof"));
  a.ldAbs("h", L3 + 12);
  p.jneConfig(CFG_GUEST_MAC_LO, p.drop("arp-spoof"));
  a.ldAbs("w", L3 + 14).jmp("jeq", 0, 0, "pass");
  p.matchIpv4Slots(slots.v4, "pass");
  a.goto(p.drop("arp-spoof"));

  // IPv6: from its own addresses, :: (DAD, MLD) or any link-local (NDP, RS, DHCPv6).
  a.label("ipv6");
  const src = L3 + 8;
  p.matchPrefix(src, [0, 0, 0, 0], 128, "ipv6_ok");
  p.matchPrefix(src, ipv6Words("fe80::"), 10, "ipv6_ok");
  p.matchIpv6Slots(src, slots.v6, "ipv6_ok");
  a.goto(p.drop("ipv6-source"));
  a.label("ipv6_ok");
  // Walk the extension headers to the upper layer, so an RA or a DHCPv6 reply cannot
  // hide behind one (RFC 7113).
  a.ldAbs("b", L3 + 6)
    .movReg(NEXT, 0)
    .movImm(L4, L3 + 40);
  for (let i = 0; i <= IPV6_EXT_MAX; i++) {
    a.jmp("jeq", NEXT, IPPROTO_ICMPV6, "icmp6");
    a.jmp("jeq", NEXT, IPPROTO_UDP, "udp6");
    const fragment = p.fresh("fragment");
    const options = p.fresh("options");
    if (i === IPV6_EXT_MAX) {
      for (const h of [IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT]) {
        a.jmp("jeq", NEXT, h, p.drop("ipv6-header-chain"));
      }
      a.goto("pass");
      break;
    }
    a.jmp("jeq", NEXT, IPPROTO_FRAGMENT, fragment);
    a.jmp("jeq", NEXT, IPPROTO_HOPOPTS, options);
    a.jmp("jeq", NEXT, IPPROTO_ROUTING, options);
    a.jmp("jeq", NEXT, IPPROTO_DSTOPTS, options);
    a.goto("pass"); // TCP, ESP, no next header, ...: nothing here to check
    const done = p.fresh("next");
    a.label(fragment);
    // A later fragment has no upper-layer header; the first one was checked.
    a.ldInd("h", L4, 2).alu32("and", 0, 0xfff8).jmp("jne", 0, 0, "pass");
    a.ldInd("b", L4, 0).movReg(NEXT, 0).alu32("add", L4, 8).goto(done);
    a.label(options);
    a.ldInd("b", L4, 0).movReg(NEXT, 0);
    a.ldInd("b", L4, 1).alu32("add", 0, 1).alu32("lsh", 0, 3).alu64Reg("add", L4, 0);
    a.label(done);
  }
  a.label("icmp6");
  a.ldInd("b", L4, 0).jmp("jeq", 0, ND_ROUTER_ADVERT, p.drop("router-advert"));
  a.goto("pass");
  a.label("udp6");
  a.ldInd("h", L4, 2).jmp("jeq", 0, DHCPV6_CLIENT_PORT, p.drop("dhcp-server"));
  // Its DHCPv6 goes to the pod's server only, as its DHCPv4 does.
  a.jmp("jne", 0, DHCPV6_SERVER_PORT, "pass");
  p.steer();
  a.label("pass").ret(TC_ACT_UNSPEC);
  return p.finish(mapFd);
}

/** Frames from the node into the pod (veth ingress): no DHCP or DHCPv6 reaches the pod's server. */
export function vethIngressProgram(mapFd: number): Buffer {
  const p = new PolicyAssembler();
  const { a } = p;
  a.movReg(SKB, 1);
  a.ldAbs("w", ETH_TYPE).movReg(TYPE_WORD, 0).alu32("rsh", 0, 16);
  a.jmp("jeq", 0, ETH_P_IPV6, "ipv6");
  a.jmp("jne", 0, ETH_P_IP, "pass");
  // A header this cannot read is the kernel's to drop; it is not DHCP either way.
  p.ipv4HeaderLength();
  p.ipv4Udp("pass");
  a.ldInd("h", L4, 2);
  a.jmp("jeq", 0, DHCP_SERVER_PORT, p.drop("dhcp-from-node"));
  a.jmp("jeq", 0, DHCP_CLIENT_PORT, p.drop("dhcp-from-node"));
  a.goto("pass");
  // Other pods' DHCPv6 flooded by the node's bridge (a client's SOLICIT to ff02::1:2).
  a.label("ipv6");
  a.ldAbs("b", IPV6_NEXT).jmp("jne", 0, IPPROTO_UDP, "pass");
  a.ldAbs("h", IPV6_L4 + 2);
  a.jmp("jeq", 0, DHCPV6_SERVER_PORT, p.drop("dhcp-from-node"));
  a.jmp("jeq", 0, DHCPV6_CLIENT_PORT, p.drop("dhcp-from-node"));
  a.label("pass").ret(TC_ACT_UNSPEC);
  return p.finish(mapFd);
}

/**
 * Frames from the pod to the node (veth egress): only the guest's. The guest's DHCP
 * never gets here (the tap program steers it to the server); what the pod netns sends
 * itself (the server's replies, an ARP request, the bridge's NDP) does, and stops here.
 */
export function vethEgressProgram(configFd: number, mapFd: number): Buffer {
  const p = new PolicyAssembler();
  const { a } = p;
  a.movReg(SKB, 1);
  p.loadConfig(configFd);
  a.ldAbs("w", ETH_SRC);
  p.jneConfig(CFG_GUEST_MAC_HI, "router");
  a.ldAbs("h", ETH_SRC + 4);
  p.jneConfig(CFG_GUEST_MAC_LO, "router");
  a.ret(TC_ACT_UNSPEC);
  // The netns as the guest's IPv6 router (when it is one): what it forwards, and its NDP
  // towards the gateway. Never its RAs or DHCPv6 replies, which are for the guest alone.
  a.label("router");
  p.fill();
  a.loadMem("w", 2, 1, CFG_FLAGS).alu32("and", 2, FLAG_ROUTES_IPV6);
  a.jmp("jeq", 2, 0, p.drop("netns-source"));
  a.ldAbs("w", ETH_SRC);
  p.jneConfig(CFG_ROUTER_MAC_HI, p.drop("netns-source"));
  a.ldAbs("h", ETH_SRC + 4);
  p.jneConfig(CFG_ROUTER_MAC_LO, p.drop("netns-source"));
  a.ldAbs("h", ETH_TYPE).jmp("jne", 0, ETH_P_IPV6, p.drop("netns-source"));
  a.ldAbs("b", IPV6_NEXT).movReg(NEXT, 0);
  a.jmp("jeq", NEXT, IPPROTO_ICMPV6, "router_icmp6");
  a.jmp("jne", NEXT, IPPROTO_UDP, "router_pass");
  a.ldAbs("h", IPV6_L4).jmp("jeq", 0, DHCPV6_SERVER_PORT, p.drop("netns-source"));
  a.goto("router_pass");
  a.label("router_icmp6");
  a.ldAbs("b", IPV6_L4).jmp("jeq", 0, ND_ROUTER_ADVERT, p.drop("netns-source"));
  a.label("router_pass").ret(TC_ACT_UNSPEC);
  return p.finish(mapFd);
}

/** What the bridge is to the programs: where the guest's DHCP goes, the router's MAC. */
export interface GuardBridge {
  index: number;
  mac: string;
}

/**
 * The config map's value for one NIC: the guest's MAC, its source prefixes (each family
 * at most GUARD_PREFIX_SLOTS, else an error that says so), the bridge, and the router MAC
 * when the netns routes the guest's IPv6.
 */
export function encodeGuardConfig(
  policy: TapPolicy,
  bridge: GuardBridge,
  slots: PrefixSlots = { v4: GUARD_PREFIX_SLOTS, v6: GUARD_PREFIX_SLOTS },
): Buffer {
  const b = Buffer.alloc(GUARD_CONFIG_SIZE);
  const guest = macWords(policy.guestMac);
  b.writeUInt32LE(guest.hi, CFG_GUEST_MAC_HI);
  b.writeUInt32LE(guest.lo, CFG_GUEST_MAC_LO);
  if (policy.routesIpv6) {
    const router = macWords(bridge.mac);
    b.writeUInt32LE(router.hi, CFG_ROUTER_MAC_HI);
    b.writeUInt32LE(router.lo, CFG_ROUTER_MAC_LO);
    b.writeUInt32LE(FLAG_ROUTES_IPV6, CFG_FLAGS);
  }
  b.writeUInt32LE(bridge.index, CFG_BRIDGE_INDEX);
  const v4 = policy.prefixes.filter((x) => x.family === 4);
  const v6 = policy.prefixes.filter((x) => x.family === 6);
  for (const [family, list, room] of [
    [4, v4, slots.v4],
    [6, v6, slots.v6],
  ] as const) {
    if (list.length > GUARD_PREFIX_SLOTS) {
      throw new Error(
        `guard: ${list.length} IPv${family} source prefixes; at most ${GUARD_PREFIX_SLOTS} fit`,
      );
    }
    if (list.length > room) {
      throw new Error(
        `guard: ${list.length} IPv${family} source prefixes; the program has ${room} slots`,
      );
    }
  }
  b.writeUInt32LE(v4.length, CFG_V4_COUNT);
  for (const [i, x] of v4.entries()) {
    const mask = maskOf(x.prefixLength);
    b.writeUInt32LE((ipv4ToUint32(x.address) & mask) >>> 0, CFG_V4 + V4_SLOT * i);
    b.writeUInt32LE(mask, CFG_V4 + V4_SLOT * i + 4);
  }
  b.writeUInt32LE(v6.length, CFG_V6_COUNT);
  for (const [i, x] of v6.entries()) {
    const words = ipv6Words(x.address);
    for (let w = 0; w < 4; w++) {
      const mask = maskOf(x.prefixLength - 32 * w);
      b.writeUInt32LE((words[w] & mask) >>> 0, CFG_V6 + V6_SLOT * i + 4 * w);
      b.writeUInt32LE(mask, CFG_V6 + V6_SLOT * i + 16 + 4 * w);
    }
  }
  return b;
}
