// One pod NIC's isolation: the three classifiers of policy.ts on its tap and veth, and
// the counter map they share. The filters stay when vmlet stops (the guest keeps
// running and stays guarded); attaching again swaps each filter in one step.

import fs from "node:fs";
import * as bpf from "../sys/bpf";
import { Rtnl } from "../sys/rtnl";
import { type TcFilterSpec, type TcHook, type TcLink, TcSession } from "../sys/tc";
import { ETH_P_ALL_BE } from "../sys/uapi";
import { type StepHook, timeStep } from "../util/steps";
import {
  DROP_REASONS,
  type DropReason,
  type TapPolicy,
  tapIngressProgram,
  vethEgressProgram,
  vethIngressProgram,
} from "./policy";

/** Before the renewal intercept (0x4dc): a spoofed renewal must not be steered. */
const GUARD_PRIO = 0x100;

export type DropCounts = Partial<Record<DropReason, number>>;

export class GuardError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "GuardError";
  }
}

export interface GuardLinks {
  /** The tap the guest writes to. */
  tap: string;
  /** The CNI veth, the pod's one link to the node. */
  veth: string;
  /** The pod bridge joining them, where the DHCP server listens. */
  bridge: string;
}

function spec(link: TcLink, hook: TcHook): TcFilterSpec {
  return { link, hook, prio: GUARD_PRIO, protocol: ETH_P_ALL_BE };
}

export class InterfaceGuard {
  private closed = false;

  private constructor(
    private readonly mapFd: number,
    readonly where: string,
    private readonly nsPath: string,
    private readonly specs: TcFilterSpec[],
  ) {}

  /** Loads and attaches the three classifiers; on failure nothing of this call stays open. */
  static async attach(
    nsPath: string,
    links: GuardLinks,
    policy: TapPolicy,
    steps?: StepHook,
  ): Promise<InterfaceGuard> {
    const where = `guard ${links.tap}/${links.veth} in ${nsPath}`;
    const mapFd = bpf.createCounterMap("vmlet_guard", DROP_REASONS.length);
    const progFds: number[] = [];
    // One netlink socket for the link lookups and the tc requests.
    const rtnl = Rtnl.open(nsPath);
    const tc = TcSession.on(rtnl);
    try {
      const tap = await rtnl.link(links.tap);
      const veth = await rtnl.link(links.veth);
      const bridge = await rtnl.link(links.bridge);
      const programs: [TcLink, TcHook, string, Buffer][] = [
        [tap, "ingress", "vmlet_guest", tapIngressProgram(policy, bridge.index, mapFd)],
        [veth, "ingress", "vmlet_from_node", vethIngressProgram(mapFd)],
        [
          veth,
          "egress",
          "vmlet_to_node",
          vethEgressProgram(policy.guestMac, mapFd, policy.routesIpv6 ? bridge.mac : undefined),
        ],
      ];
      const withClsact = new Set<number>();
      for (const [link, hook, name, insns] of programs) {
        const fd = await timeStep(steps, "guard: BPF load", () =>
          bpf.loadProgram(name, bpf.BPF_PROG_TYPE_SCHED_CLS, insns),
        );
        progFds.push(fd);
        await timeStep(steps, "guard: tc attach", async () => {
          // The veth carries two of the filters: one qdisc request for both.
          if (!withClsact.has(link.index)) await tc.ensureClsact(link);
          withClsact.add(link.index);
          await tc.attachBpf(spec(link, hook), fd, name, true);
        });
      }
      const specs = programs.map(([link, hook]) => spec(link, hook));
      return new InterfaceGuard(mapFd, where, nsPath, specs);
    } catch (error) {
      fs.closeSync(mapFd);
      throw new GuardError(`${where}: ${(error as Error).message}`, { cause: error });
    } finally {
      // The attached filters hold their programs, and the programs the map.
      for (const fd of progFds) fs.closeSync(fd);
      rtnl.close();
    }
  }

  /** Frames dropped so far, by reason (reasons with none are left out). */
  drops(): DropCounts {
    if (this.closed) return {};
    const values = bpf.readCounters(this.mapFd, DROP_REASONS.length);
    const out: DropCounts = {};
    for (const [i, reason] of DROP_REASONS.entries()) {
      if (values[i] > 0n) out[reason] = Number(values[i]);
    }
    return out;
  }

  /** Removes the filters and lets go of the counters: the NIC is unguarded after this. */
  async detach(): Promise<void> {
    const tc = TcSession.open(this.nsPath);
    try {
      for (const s of this.specs) await tc.deleteFilter(s);
    } finally {
      tc.close();
      this.close();
    }
  }

  /** Lets go of the counters; the filters stay until the netns goes. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.mapFd);
  }
}

/** Adds counts of `b` into `a`. */
export function addDrops(a: DropCounts, b: DropCounts): DropCounts {
  const out: DropCounts = { ...a };
  for (const [reason, n] of Object.entries(b) as [DropReason, number][]) {
    out[reason] = (out[reason] ?? 0) + n;
  }
  return out;
}
