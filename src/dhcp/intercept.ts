// How a renewal unicast to the server id reaches the server.
//
// The guest's server id is its gateway (10.244.1.1 on Flannel, 169.254.1.1 on Calico):
// the one address every client can reach by unicast, whatever it does with option 121
// (Debian's udhcpc script ignores 121 and routes by option 3 only). A renewal to it
// leaves the guest addressed to the *gateway's* MAC, so the pod bridge forwards it to
// the host and never passes it up; and a frame for a foreign MAC is PACKET_OTHERHOST,
// which ip_rcv drops even when steered. Measured on this kernel (6.18):
//   - u32 + `mirred ingress redirect dev br0`: reaches br0 still OTHERHOST, dropped;
//   - cls_bpf with bpf_skb_change_type(HOST) + bpf_redirect(br0, INGRESS): dropped too,
//     the redirect re-runs eth_type_trans against the bridge's MAC;
//   - u32 + mirred into a veth carrying a passthru macvlan: works, three links per pod;
//   - cls_bpf (below): works, no extra link.
// So each bridge port gets a small direct-action classifier that takes only IPv4/UDP
// to port 67 of the server id, rewrites its destination MAC to broadcast (so it is
// accepted whatever the bridge's MAC is or becomes) and redirects it into the bridge's
// own ingress, where the server id is a local /32 and the server's socket is bound.
// Everything else, ARP and all other traffic to the gateway included, is bridged
// untouched; the bridge has arp_ignore=8 so it never answers ARP for the gateway
// address it holds, and a permanent neighbour entry per lease means it never sends ARP.
// Verified with udhcpc (stock script), dhclient and dhcpcd on Flannel- and Calico-style
// networks (test/netns/dhcp-clients.test.ts).
import koffi from "koffi";
import { createRtNetlink, type RtNetlinkSocket } from "netlink";
import * as libc from "../sys/libc";
import { withNetns } from "../sys/netns";
import { attr } from "../sys/rtnl";

// asm/unistd_64.h
const SYS_BPF = 321;
// linux/bpf.h
const BPF_PROG_LOAD = 5;
const BPF_PROG_TYPE_SCHED_CLS = 3;
const BPF_FUNC_redirect = 23;
const BPF_FUNC_skb_store_bytes = 9;
const BPF_F_INGRESS = 1;
// linux/pkt_cls.h
const TC_ACT_UNSPEC = -1;
const TCA_BPF_FD = 6;
const TCA_BPF_NAME = 7;
const TCA_BPF_FLAGS = 8;
const TCA_BPF_FLAG_ACT_DIRECT = 1;
// linux/rtnetlink.h, linux/pkt_sched.h
const RTM_NEWQDISC = 36;
const RTM_NEWTFILTER = 44;
const RTM_DELTFILTER = 45;
const TCA_KIND = 1;
const TCA_OPTIONS = 2;
const TC_H_CLSACT = 0xfffffff1;
const TC_H_MIN_INGRESS = 0xfff2;
const CLSACT_HANDLE = 0xffff0000;
// linux/netlink.h
const NLM_F_EXCL = 0x200;
const NLM_F_CREATE = 0x400;
// linux/if_ether.h, in network order as tcm_info wants it
const ETH_P_IP_BE = 0x0008;
/** Our filter's priority on each port, so close() removes exactly it. */
const FILTER_PRIO = 0x4dc;
const FILTER_NAME = "vmlet-dhcp";
const REQUEST_TIMEOUT_MS = 5000;

// ------------------------------------------------------------- eBPF assembly
// linux/bpf_common.h, linux/bpf.h instruction classes and fields
const BPF_LD = 0x00;
const BPF_ST = 0x02;
const BPF_MEM = 0x60;
const BPF_ADD = 0x00;
const BPF_ALU64 = 0x07;
const BPF_JMP = 0x05;
const BPF_JMP32 = 0x06;
const BPF_ABS = 0x20;
const BPF_IND = 0x40;
const BPF_B = 0x10;
const BPF_H = 0x08;
const BPF_W = 0x00;
const BPF_K = 0x00;
const BPF_X = 0x08;
const BPF_MOV = 0xb0;
const BPF_AND = 0x50;
const BPF_LSH = 0x60;
const BPF_JNE = 0x50;
const BPF_CALL = 0x80;
const BPF_EXIT = 0x90;

function insn(code: number, dst: number, src: number, off: number, imm: number): Buffer {
  const b = Buffer.alloc(8);
  b[0] = code;
  b[1] = (src << 4) | dst;
  b.writeInt16LE(off, 2);
  b.writeInt32LE(imm | 0, 4);
  return b;
}

/**
 * The classifier. Packet bytes are read with LD_ABS/LD_IND (offsets from the Ethernet
 * header, values in host order, an out-of-bounds read ends the program with 0).
 */
export function interceptProgram(serverId: number, bridgeIndex: number): Buffer {
  const PASS = "pass";
  const prog: (Buffer | { jne32: boolean; reg: number; imm: number; to: string })[] = [
    insn(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0), // r6 = skb (LD_ABS needs it there)
    insn(BPF_LD | BPF_ABS | BPF_H, 0, 0, 0, 12), // ethertype
    { jne32: false, reg: 0, imm: 0x0800, to: PASS },
    insn(BPF_LD | BPF_ABS | BPF_B, 0, 0, 0, 23), // IP protocol
    { jne32: false, reg: 0, imm: 17, to: PASS },
    insn(BPF_LD | BPF_ABS | BPF_W, 0, 0, 0, 30), // IP destination
    { jne32: true, reg: 0, imm: serverId | 0, to: PASS },
    insn(BPF_LD | BPF_ABS | BPF_H, 0, 0, 0, 20), // flags + fragment offset
    insn(BPF_ALU64 | BPF_AND | BPF_K, 0, 0, 0, 0x1fff),
    { jne32: false, reg: 0, imm: 0, to: PASS }, // a later fragment has no UDP header
    insn(BPF_LD | BPF_ABS | BPF_B, 0, 0, 0, 14), // version + IHL
    insn(BPF_ALU64 | BPF_AND | BPF_K, 0, 0, 0, 0x0f),
    insn(BPF_ALU64 | BPF_LSH | BPF_K, 0, 0, 0, 2),
    insn(BPF_ALU64 | BPF_MOV | BPF_X, 7, 0, 0, 0), // r7 = IP header length
    insn(BPF_LD | BPF_IND | BPF_H, 0, 7, 0, 14 + 2), // UDP destination port
    { jne32: false, reg: 0, imm: 67, to: PASS },
    // Destination MAC := broadcast, so the bridge's eth_type_trans after the redirect
    // finds a frame it may take (PACKET_BROADCAST), whatever the bridge's MAC is now.
    insn(BPF_ST | BPF_MEM | BPF_W, 10, 0, -8, -1),
    insn(BPF_ST | BPF_MEM | BPF_H, 10, 0, -4, -1),
    insn(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0),
    insn(BPF_ALU64 | BPF_MOV | BPF_K, 2, 0, 0, 0),
    insn(BPF_ALU64 | BPF_MOV | BPF_X, 3, 10, 0, 0),
    insn(BPF_ALU64 | BPF_ADD | BPF_K, 3, 0, 0, -8),
    insn(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 6),
    insn(BPF_ALU64 | BPF_MOV | BPF_K, 5, 0, 0, 0),
    insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_skb_store_bytes),
    insn(BPF_ALU64 | BPF_MOV | BPF_K, 1, 0, 0, bridgeIndex),
    insn(BPF_ALU64 | BPF_MOV | BPF_K, 2, 0, 0, BPF_F_INGRESS),
    insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_redirect),
    insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0), // TC_ACT_REDIRECT from bpf_redirect
  ];
  const passAt = prog.length;
  prog.push(insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, TC_ACT_UNSPEC));
  prog.push(insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0));
  return Buffer.concat(
    prog.map((p, i) => {
      if (Buffer.isBuffer(p)) return p;
      const target = p.to === PASS ? passAt : -1;
      return insn(
        (p.jne32 ? BPF_JMP32 : BPF_JMP) | BPF_JNE | BPF_K,
        p.reg,
        0,
        target - i - 1,
        p.imm,
      );
    }),
  );
}

const libcLib = koffi.load("libc.so.6");
const syscallBpf = libcLib.func("long syscall(long nr, int cmd, void *attr, unsigned int size)");
const BpfLoadAttr = koffi.struct("vmlet_bpf_prog_load_attr", {
  prog_type: "uint32",
  insn_cnt: "uint32",
  insns: "void *",
  license: "const char *",
  log_level: "uint32",
  log_size: "uint32",
  log_buf: "void *",
  kern_version: "uint32",
  prog_flags: "uint32",
  prog_name: koffi.array("char", 16, "String"),
  pad: koffi.array("uint8", 64),
});

/** Loads the classifier; returns its fd. The verifier's log goes into the error. */
export function loadInterceptProgram(serverId: number, bridgeIndex: number): number {
  const insns = interceptProgram(serverId, bridgeIndex);
  const log = Buffer.alloc(16384);
  const attr = {
    prog_type: BPF_PROG_TYPE_SCHED_CLS,
    insn_cnt: insns.length / 8,
    insns,
    license: "GPL",
    log_level: 1,
    log_size: log.length,
    log_buf: log,
    kern_version: 0,
    prog_flags: 0,
    prog_name: "vmlet_dhcp",
    pad: new Array<number>(64).fill(0),
  };
  const buf = Buffer.alloc(koffi.sizeof(BpfLoadAttr));
  koffi.encode(buf, BpfLoadAttr, attr);
  const fd = Number(syscallBpf(SYS_BPF, BPF_PROG_LOAD, buf, buf.length));
  if (fd < 0) {
    const errno = libc.errno();
    const text = log.toString("latin1", 0, Math.max(0, log.indexOf(0))).trim();
    throw new libc.SysCallError(`BPF_PROG_LOAD dhcp intercept${text ? ` (${text})` : ""}`, errno);
  }
  return fd;
}

// ------------------------------------------------------------- tc over rtnetlink

function tcmsg(ifindex: number, handle: number, parent: number, info: number): Buffer {
  const b = Buffer.alloc(20); // struct tcmsg, linux/rtnetlink.h
  b.writeInt32LE(ifindex, 4);
  b.writeUInt32LE(handle >>> 0, 8);
  b.writeUInt32LE(parent >>> 0, 12);
  b.writeUInt32LE(info >>> 0, 16);
  return b;
}

function u32le(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}

function errnoCode(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return /Request rejected: (\S+)/.exec(message)?.[1] ?? message;
}

export interface InterceptPort {
  name: string;
  index: number;
}

/** The classifier attached to a bridge's ports; detach() removes it again. */
export class DhcpIntercept {
  private constructor(
    private readonly socket: RtNetlinkSocket,
    private readonly nsPath: string,
    private readonly ports: InterceptPort[],
  ) {}

  /**
   * Attaches the classifier to the ingress of each port of the bridge (index
   * `bridgeIndex`). An existing filter of ours on a port is replaced, so a restarted
   * daemon can attach again.
   */
  static async attach(
    nsPath: string,
    serverId: number,
    bridgeIndex: number,
    ports: InterceptPort[],
  ): Promise<DhcpIntercept> {
    const socket = withNetns(nsPath, () => createRtNetlink());
    const intercept = new DhcpIntercept(socket, nsPath, []);
    let fd = -1;
    try {
      fd = withNetns(nsPath, () => loadInterceptProgram(serverId, bridgeIndex));
      for (const port of ports) {
        await intercept.request(
          `add clsact qdisc on ${port.name}`,
          RTM_NEWQDISC,
          NLM_F_CREATE | NLM_F_EXCL,
          [
            tcmsg(port.index, CLSACT_HANDLE, TC_H_CLSACT, 0),
            attr(TCA_KIND, Buffer.from("clsact\0")),
          ],
          ["EEXIST"],
        );
        await intercept.deleteFilter(port);
        intercept.ports.push(port);
        const options = Buffer.concat([
          attr(TCA_BPF_FD, u32le(fd)),
          attr(TCA_BPF_NAME, Buffer.from(`${FILTER_NAME}\0`)),
          attr(TCA_BPF_FLAGS, u32le(TCA_BPF_FLAG_ACT_DIRECT)),
        ]);
        await intercept.request(
          `add bpf filter on ${port.name}`,
          RTM_NEWTFILTER,
          NLM_F_CREATE | NLM_F_EXCL,
          [
            filterHeader(port.index),
            attr(TCA_KIND, Buffer.from("bpf\0")),
            attr(TCA_OPTIONS, options),
          ],
        );
      }
      return intercept;
    } catch (error) {
      await intercept.detach().catch(() => undefined);
      throw error;
    } finally {
      // The attached filters hold the program; our fd is no longer needed.
      if (fd >= 0) libc.close(fd);
    }
  }

  /** Removes the filters (the clsact qdiscs stay: harmless, and others may use them). */
  async detach(): Promise<void> {
    try {
      for (const port of this.ports.splice(0)) {
        await this.deleteFilter(port).catch(() => undefined);
      }
    } finally {
      this.socket.socket.socket.close();
    }
  }

  private async deleteFilter(port: InterceptPort): Promise<void> {
    await this.request(
      `delete bpf filter on ${port.name}`,
      RTM_DELTFILTER,
      0,
      [filterHeader(port.index)],
      ["ENOENT", "EINVAL", "ENODEV"],
    );
  }

  private async request(
    operation: string,
    type: number,
    flags: number,
    body: Buffer[],
    tolerated: string[] = [],
  ): Promise<void> {
    try {
      await this.socket.request(type, Buffer.concat(body), { flags, timeout: REQUEST_TIMEOUT_MS });
    } catch (error) {
      const code = errnoCode(error);
      if (tolerated.includes(code)) return;
      throw new Error(`DHCP intercept: ${operation} in ${this.nsPath}: ${code}`, { cause: error });
    }
  }
}

function filterHeader(ifindex: number): Buffer {
  return tcmsg(
    ifindex,
    0,
    (TC_H_CLSACT & 0xffff0000) | TC_H_MIN_INGRESS,
    (FILTER_PRIO << 16) | ETH_P_IP_BE,
  );
}
