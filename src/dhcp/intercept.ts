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
// networks (test/netns/dhcp-clients.test.ts). The tapmanager's pods do without it: their
// guard (src/guard/) steers every DHCP client message from the tap the same way.
import fs from "node:fs";
import * as bpf from "../sys/bpf";
import { TcSession } from "../sys/tc";
import { ETH_P_IP_BE, TC_ACT_UNSPEC } from "../sys/uapi";

/** Our filter's priority on each port, so close() removes exactly it. */
const FILTER_PRIO = 0x4dc;
const FILTER_NAME = "vmlet-dhcp";

/**
 * The classifier. Packet bytes are read with LD_ABS/LD_IND (offsets from the Ethernet
 * header, values in host order, an out-of-bounds read ends the program with 0).
 */
export function interceptProgram(serverId: number, bridgeIndex: number): Buffer {
  const a = new bpf.BpfAssembler();
  a.movReg(6, 1); // r6 = skb (LD_ABS needs it there)
  a.ldAbs("h", 12).jmp("jne", 0, 0x0800, "pass"); // ethertype
  a.ldAbs("b", 23).jmp("jne", 0, 17, "pass"); // IP protocol
  a.ldAbs("w", 30).jmp("jne", 0, serverId, "pass"); // IP destination
  a.ldAbs("h", 20).alu32("and", 0, 0x1fff); // fragment offset
  a.jmp("jne", 0, 0, "pass"); // a later fragment has no UDP header
  a.ldAbs("b", 14).alu32("and", 0, 0x0f).alu32("lsh", 0, 2); // IP header length
  a.movReg(7, 0);
  a.ldInd("h", 7, 14 + 2).jmp("jne", 0, 67, "pass"); // UDP destination port
  // Destination MAC := broadcast, so the bridge's eth_type_trans after the redirect
  // finds a frame it may take (PACKET_BROADCAST), whatever the bridge's MAC is now.
  a.storeImm("w", bpf.FP, -8, -1).storeImm("h", bpf.FP, -4, -1);
  a.movReg(1, 6).movImm(2, 0).movReg(3, bpf.FP).alu64("add", 3, -8);
  a.movImm(4, 6).movImm(5, 0).call(bpf.BPF_FUNC_skb_store_bytes);
  a.movImm(1, bridgeIndex).movImm(2, bpf.BPF_F_INGRESS).call(bpf.BPF_FUNC_redirect);
  a.exit(); // TC_ACT_REDIRECT from bpf_redirect
  a.label("pass").ret(TC_ACT_UNSPEC);
  return a.assemble();
}

/** Loads the classifier; returns its fd. The verifier's log goes into the error. */
export function loadInterceptProgram(serverId: number, bridgeIndex: number): number {
  return bpf.loadProgram(
    "vmlet_dhcp",
    bpf.BPF_PROG_TYPE_SCHED_CLS,
    interceptProgram(serverId, bridgeIndex),
    "BPF_PROG_LOAD dhcp intercept",
  );
}

export interface InterceptPort {
  name: string;
  index: number;
}

function spec(port: InterceptPort) {
  return { link: port, hook: "ingress" as const, prio: FILTER_PRIO, protocol: ETH_P_IP_BE };
}

/** The classifier attached to a bridge's ports; detach() removes it again. */
export class DhcpIntercept {
  private constructor(
    private readonly tc: TcSession,
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
    const intercept = new DhcpIntercept(TcSession.open(nsPath), []);
    let fd = -1;
    try {
      fd = loadInterceptProgram(serverId, bridgeIndex); // a program belongs to no netns
      for (const port of ports) {
        await intercept.tc.ensureClsact(port);
        await intercept.tc.deleteFilter(spec(port));
        intercept.ports.push(port);
        await intercept.tc.attachBpf(spec(port), fd, FILTER_NAME);
      }
      return intercept;
    } catch (error) {
      await intercept.detach().catch(() => undefined);
      throw new Error(`DHCP intercept: ${(error as Error).message}`, { cause: error });
    } finally {
      // The attached filters hold the program; our fd is no longer needed.
      if (fd >= 0) fs.closeSync(fd);
    }
  }

  /**
   * Removes the filters (the clsact qdiscs stay: harmless, and others may use them). With
   * `netnsGoing` (the netns is deleted next) they are left to the netns deletion.
   */
  async detach(options: { netnsGoing?: boolean } = {}): Promise<void> {
    try {
      if (options.netnsGoing) return;
      for (const port of this.ports.splice(0)) {
        await this.tc.deleteFilter(spec(port)).catch(() => undefined);
      }
    } finally {
      this.tc.close();
    }
  }
}
