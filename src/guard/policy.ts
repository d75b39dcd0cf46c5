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
/** Offsets from the Ethernet header. */
const ETH_SRC = 6;
const ETH_TYPE = 12;
const L3 = 14;
/** struct __sk_buff's vlan_present (linux/bpf.h): the tag is off the data by tc time. */
const SKB_VLAN_PRESENT = 20;
/** IPv6 extension headers walked before giving up (and dropping). */
const IPV6_EXT_MAX = 4;

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

  /** Jumps to `to` when the IPv4 address in r0 falls in the prefix; r0 is kept. */
  matchIpv4(address: string, prefixLength: number, to: string): void {
    const mask = maskOf(prefixLength);
    this.a.movReg(1, 0);
    if (mask !== 0xffffffff) this.a.alu32("and", 1, mask);
    this.a.jmp("jeq", 1, (ipv4ToUint32(address) & mask) >>> 0, to);
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
  steer(bridgeIndex: number): void {
    const { a } = this;
    a.storeImm("w", FP, -8, -1).storeImm("h", FP, -4, -1);
    a.movReg(1, SKB).movImm(2, 0).movReg(3, FP).alu64("add", 3, -8);
    a.movImm(4, 6).movImm(5, 0).call(BPF_FUNC_skb_store_bytes);
    a.movImm(1, bridgeIndex).movImm(2, BPF_F_INGRESS).call(BPF_FUNC_redirect);
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
    return this.a.assemble();
  }
}

/**
 * Frames from the guest (tap ingress). Its DHCP client messages are steered into the
 * bridge at `bridgeIndex` (the pod's server), so they are never bridged to the veth.
 */
export function tapIngressProgram(policy: TapPolicy, bridgeIndex: number, mapFd: number): Buffer {
  const p = new PolicyAssembler();
  const { a } = p;
  const mac = macWords(policy.guestMac);
  // A /0 (a routing guest) allows every source of its family: no test to emit, and the
  // verifier rejects code after a test that always succeeds.
  const v4Any = policy.prefixes.some((x) => x.family === 4 && x.prefixLength === 0);
  const v6Any = policy.prefixes.some((x) => x.family === 6 && x.prefixLength === 0);
  const v4 = v4Any ? [] : policy.prefixes.filter((x) => x.family === 4);
  const v6 = v6Any ? [] : policy.prefixes.filter((x) => x.family === 6);
  a.movReg(SKB, 1);
  // A VLAN tag was taken off into the skb before tc runs: the data shows the inner type.
  a.loadMem("w", 0, SKB, SKB_VLAN_PRESENT).jmp("jne", 0, 0, p.drop("ethertype"));
  a.ldAbs("w", ETH_SRC).jmp("jne", 0, mac.hi, p.drop("source-mac"));
  a.ldAbs("h", ETH_SRC + 4).jmp("jne", 0, mac.lo, p.drop("source-mac"));
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
  for (const x of v4) p.matchIpv4(x.address, x.prefixLength, "ipv4_own");
  a.goto(v4Any ? "ipv4_own" : p.drop("ipv4-source"));
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
  p.steer(bridgeIndex);

  // ARP: Ethernet/IPv4 only, sender MAC the guest's, sender IP its own or 0.0.0.0 (a probe).
  a.label("arp");
  a.ldAbs("w", L3).jmp("jne", 0, 0x00010800, p.drop("malformed"));
  a.ldAbs("h", L3 + 4).jmp("jne", 0, 0x0604, p.drop("malformed"));
  a.ldAbs("w", L3 + 8).jmp("jne", 0, mac.hi, p.drop("arp-spoof"));
  a.ldAbs("h", L3 + 12).jmp("jne", 0, mac.lo, p.drop("arp-spoof"));
  a.ldAbs("w", L3 + 14).jmp("jeq", 0, 0, "pass");
  for (const x of v4) p.matchIpv4(x.address, x.prefixLength, "pass");
  a.goto(v4Any ? "pass" : p.drop("arp-spoof"));

  // IPv6: from its own addresses, :: (DAD, MLD) or any link-local (NDP, RS, DHCPv6).
  a.label("ipv6");
  const src = L3 + 8;
  p.matchPrefix(src, [0, 0, 0, 0], 128, "ipv6_ok");
  p.matchPrefix(src, ipv6Words("fe80::"), 10, "ipv6_ok");
  for (const x of v6) p.matchPrefix(src, ipv6Words(x.address), x.prefixLength, "ipv6_ok");
  a.goto(v6Any ? "ipv6_ok" : p.drop("ipv6-source"));
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
  a.label("pass").ret(TC_ACT_UNSPEC);
  return p.finish(mapFd);
}

/** Frames from the node into the pod (veth ingress): no DHCP reaches the pod's server. */
export function vethIngressProgram(mapFd: number): Buffer {
  const p = new PolicyAssembler();
  const { a } = p;
  a.movReg(SKB, 1);
  a.ldAbs("w", ETH_TYPE).movReg(TYPE_WORD, 0).alu32("rsh", 0, 16);
  a.jmp("jne", 0, ETH_P_IP, "pass");
  // A header this cannot read is the kernel's to drop; it is not DHCP either way.
  p.ipv4HeaderLength();
  p.ipv4Udp("pass");
  a.ldInd("h", L4, 2);
  a.jmp("jeq", 0, DHCP_SERVER_PORT, p.drop("dhcp-from-node"));
  a.jmp("jeq", 0, DHCP_CLIENT_PORT, p.drop("dhcp-from-node"));
  a.label("pass").ret(TC_ACT_UNSPEC);
  return p.finish(mapFd);
}

/**
 * Frames from the pod to the node (veth egress): only the guest's. The guest's DHCP
 * never gets here (the tap program steers it to the server); what the pod netns sends
 * itself (the server's replies, an ARP request, the bridge's NDP) does, and stops here.
 */
export function vethEgressProgram(guestMac: string, mapFd: number): Buffer {
  const p = new PolicyAssembler();
  const { a } = p;
  const mac = macWords(guestMac);
  a.movReg(SKB, 1);
  a.ldAbs("w", ETH_SRC).jmp("jne", 0, mac.hi, p.drop("netns-source"));
  a.ldAbs("h", ETH_SRC + 4).jmp("jne", 0, mac.lo, p.drop("netns-source"));
  a.ret(TC_ACT_UNSPEC);
  return p.finish(mapFd);
}
