// tc over rtnetlink, only as much as vmlet needs: a clsact qdisc on a link, and
// direct-action eBPF filters on its ingress or egress hook. Requests go on an Rtnl's
// socket and queue, and fail as RtnlError, like every other netlink request.
import { attr, Rtnl } from "./rtnl";
import {
  NLM_F_CREATE,
  NLM_F_EXCL,
  NLM_F_REPLACE,
  RTM_DELTFILTER,
  RTM_NEWQDISC,
  RTM_NEWTFILTER,
  TC_H_CLSACT,
  TC_H_MAJ_MASK,
  TC_H_MIN_EGRESS,
  TC_H_MIN_INGRESS,
  TCA_BPF_FD,
  TCA_BPF_FLAG_ACT_DIRECT,
  TCA_BPF_FLAGS,
  TCA_BPF_NAME,
  TCA_KIND,
  TCA_OPTIONS,
} from "./uapi";

/** The clsact qdisc's handle: its major number, minor 0. */
const CLSACT_HANDLE = TC_H_CLSACT & TC_H_MAJ_MASK;

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
  return tcmsg(spec.link.index, handle, CLSACT_HANDLE | minor, (spec.prio << 16) | spec.protocol);
}

/**
 * tc requests in one netns. on(rtnl) shares a connection the caller already has (and
 * closes); open(nsPath) makes its own, which close() ends.
 */
export class TcSession {
  /** Links given a clsact qdisc by this session: asking twice costs a round trip. */
  private readonly withClsact = new Set<number>();

  private constructor(
    private readonly rtnl: Rtnl,
    private readonly owned: boolean,
  ) {}

  static on(rtnl: Rtnl): TcSession {
    return new TcSession(rtnl, false);
  }

  static open(nsPath: string): TcSession {
    return new TcSession(Rtnl.open(nsPath), true);
  }

  get nsPath(): string {
    return this.rtnl.nsPath;
  }

  close(): void {
    if (this.owned) this.rtnl.close();
  }

  /** A clsact qdisc on the link; one that exists already is fine. */
  async ensureClsact(link: TcLink): Promise<void> {
    if (this.withClsact.has(link.index)) return;
    await this.rtnl.request(
      `tc: add clsact qdisc on ${link.name}`,
      RTM_NEWQDISC,
      Buffer.concat([
        tcmsg(link.index, CLSACT_HANDLE, TC_H_CLSACT, 0),
        attr(TCA_KIND, Buffer.from("clsact\0")),
      ]),
      NLM_F_CREATE | NLM_F_EXCL,
      ["EEXIST"],
    );
    this.withClsact.add(link.index);
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
    await this.rtnl.request(
      `tc: add bpf filter ${name} on ${spec.link.name} ${spec.hook}`,
      RTM_NEWTFILTER,
      Buffer.concat([
        filterHeader(spec, 1),
        attr(TCA_KIND, Buffer.from("bpf\0")),
        attr(TCA_OPTIONS, options),
      ]),
      NLM_F_CREATE | (replace ? NLM_F_REPLACE : NLM_F_EXCL),
    );
  }

  /** Removes the filter; one that (or whose link) is gone already is fine. */
  async deleteFilter(spec: TcFilterSpec): Promise<void> {
    await this.rtnl.request(
      `tc: delete bpf filter on ${spec.link.name} ${spec.hook}`,
      RTM_DELTFILTER,
      filterHeader(spec, 0),
      0,
      ["ENOENT", "EINVAL", "ENODEV"],
    );
  }
}
