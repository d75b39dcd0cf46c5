// tc over rtnetlink, only as much as vmlet needs: a clsact qdisc on a link, and
// direct-action eBPF filters on its ingress or egress hook.
import { createRtNetlink, type RtNetlinkSocket } from "netlink";
import { withNetns } from "./netns";
import { attr, errnoCode, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE } from "./rtnl";

// linux/pkt_cls.h
export const TC_ACT_UNSPEC = -1;
export const TC_ACT_SHOT = 2;
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
const TC_H_MIN_EGRESS = 0xfff3;
const CLSACT_HANDLE = 0xffff0000;
// linux/if_ether.h, in network order as tcm_info wants it
export const ETH_P_ALL_BE = 0x0300;
export const ETH_P_IP_BE = 0x0008;
const REQUEST_TIMEOUT_MS = 5000;

export type TcHook = "ingress" | "egress";

export interface TcLink {
  name: string;
  index: number;
}

/** Where a filter sits: its link, hook, priority and protocol identify it. */
export interface TcFilterSpec {
  link: TcLink;
  hook: TcHook;
  /** Lower runs first; unique per owner on a hook, so deleting takes exactly it. */
  prio: number;
  /** tcm_info's protocol half, network order (ETH_P_ALL_BE, ETH_P_IP_BE). */
  protocol: number;
}

export class TcError extends Error {
  constructor(
    message: string,
    readonly code: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "TcError";
  }
}

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

function filterHeader(spec: TcFilterSpec, handle: number): Buffer {
  const minor = spec.hook === "ingress" ? TC_H_MIN_INGRESS : TC_H_MIN_EGRESS;
  return tcmsg(
    spec.link.index,
    handle,
    (TC_H_CLSACT & 0xffff0000) | minor,
    (spec.prio << 16) | spec.protocol,
  );
}

/** A netlink socket in one netns for tc requests; close() it when done. */
export class TcSession {
  private constructor(
    private readonly socket: RtNetlinkSocket,
    readonly nsPath: string,
  ) {}

  static open(nsPath: string): TcSession {
    return new TcSession(
      withNetns(nsPath, () => createRtNetlink()),
      nsPath,
    );
  }

  close(): void {
    this.socket.socket.socket.close();
  }

  /** A clsact qdisc on the link; one that exists already is fine. */
  async ensureClsact(link: TcLink): Promise<void> {
    await this.request(
      `add clsact qdisc on ${link.name}`,
      RTM_NEWQDISC,
      NLM_F_CREATE | NLM_F_EXCL,
      [tcmsg(link.index, CLSACT_HANDLE, TC_H_CLSACT, 0), attr(TCA_KIND, Buffer.from("clsact\0"))],
      ["EEXIST"],
    );
  }

  /**
   * Attaches a loaded program as a direct-action bpf filter. With `replace`, a filter at
   * the same place is swapped for it in one step (no moment without one); otherwise the
   * place must be free.
   */
  async attachBpf(
    spec: TcFilterSpec,
    progFd: number,
    name: string,
    replace = false,
  ): Promise<void> {
    const options = Buffer.concat([
      attr(TCA_BPF_FD, u32le(progFd)),
      attr(TCA_BPF_NAME, Buffer.from(`${name}\0`)),
      attr(TCA_BPF_FLAGS, u32le(TCA_BPF_FLAG_ACT_DIRECT)),
    ]);
    // A fixed handle makes the filter addressable for NLM_F_REPLACE.
    await this.request(
      `add bpf filter ${name} on ${spec.link.name} ${spec.hook}`,
      RTM_NEWTFILTER,
      NLM_F_CREATE | (replace ? NLM_F_REPLACE : NLM_F_EXCL),
      [filterHeader(spec, 1), attr(TCA_KIND, Buffer.from("bpf\0")), attr(TCA_OPTIONS, options)],
    );
  }

  /** Removes the filter; one that (or whose link) is gone already is fine. */
  async deleteFilter(spec: TcFilterSpec): Promise<void> {
    await this.request(
      `delete bpf filter on ${spec.link.name} ${spec.hook}`,
      RTM_DELTFILTER,
      0,
      [filterHeader(spec, 0)],
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
      throw new TcError(`tc: ${operation} in ${this.nsPath}: ${code}`, code, { cause: error });
    }
  }
}
