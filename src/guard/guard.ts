// One pod NIC's isolation: the three classifiers of policy.ts on its tap and veth, the
// counter map they share and the config map they read the NIC's identity from. The
// programs are loaded first (prepare(), which needs no netns, and can run while CNI ADD
// does), then the config filled and the filters attached (attach()). The filters stay
// when vmlet stops (the guest keeps running and stays guarded); attaching again swaps
// each filter in one step.

import fs from "node:fs";
import * as bpf from "../sys/bpf";
import { Rtnl } from "../sys/rtnl";
import { type TcFilterSpec, type TcHook, type TcLink, TcSession } from "../sys/tc";
import { ETH_P_ALL_BE } from "../sys/uapi";
import { type StepHook, timeStep } from "../util/steps";
import {
  DROP_REASONS,
  type DropReason,
  encodeGuardConfig,
  GUARD_CONFIG_SIZE,
  type PrefixSlots,
  slotsFor,
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

type ProgramName = "vmlet_guest" | "vmlet_from_node" | "vmlet_to_node";

/**
 * A NIC's three programs, loaded and verified, and its two maps; nothing attached yet.
 * attach() hands them to the NIC's filters, or close() lets go of them.
 */
export class PreparedGuard {
  private done = false;
  /** Links given their clsact qdisc ahead (prepareTap): attach() does not ask again. */
  private readonly withClsact = new Set<string>();

  private constructor(
    private readonly mapFd: number,
    private readonly configFd: number,
    private readonly programs: Record<ProgramName, number>,
    private slots: PrefixSlots,
  ) {}

  /**
   * Creates the maps and loads the programs, the tap's with `slots` source prefixes per
   * family (attach() loads it again should its policy need more); on failure nothing of
   * this call stays open.
   */
  static async load(slots: PrefixSlots, steps?: StepHook): Promise<PreparedGuard> {
    const fds: number[] = [];
    try {
      const mapFd = bpf.createCounterMap("vmlet_guard", DROP_REASONS.length);
      fds.push(mapFd);
      const configFd = bpf.createArrayMap("vmlet_guard_cfg", GUARD_CONFIG_SIZE, 1);
      fds.push(configFd);
      const load = (name: ProgramName, insns: Buffer) =>
        timeStep(steps, "guard: BPF load", () => {
          const fd = bpf.loadProgram(name, bpf.BPF_PROG_TYPE_SCHED_CLS, insns);
          fds.push(fd);
          return fd;
        });
      const programs = {
        vmlet_guest: await load("vmlet_guest", tapIngressProgram(configFd, mapFd, slots)),
        vmlet_from_node: await load("vmlet_from_node", vethIngressProgram(mapFd)),
        vmlet_to_node: await load("vmlet_to_node", vethEgressProgram(configFd, mapFd)),
      };
      return new PreparedGuard(mapFd, configFd, programs, slots);
    } catch (error) {
      for (const fd of fds) fs.closeSync(fd);
      throw new GuardError(`guard: load programs: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  /**
   * The tap's clsact qdisc ahead, once the tap exists (setUp does it during CNI ADD), on
   * `rtnl`: attach() then saves that round trip.
   */
  async prepareTap(rtnl: Rtnl, tap: string): Promise<void> {
    const link = { name: tap, index: await rtnl.linkIndex(tap) };
    await TcSession.on(rtnl).ensureClsact(link);
    this.withClsact.add(tap);
  }

  /**
   * Fills the config from `policy` and attaches the three filters over `rtnl` (a
   * connection to the pod's netns), replacing any there. Consumes this: the program fds
   * are closed either way (attached filters hold their programs, and they the maps); on
   * failure the maps are closed too.
   */
  async attach(
    rtnl: Rtnl,
    links: GuardLinks,
    policy: TapPolicy,
    steps?: StepHook,
  ): Promise<InterfaceGuard> {
    if (this.done) throw new GuardError("guard: prepared programs used twice");
    this.done = true;
    const where = `guard ${links.tap}/${links.veth} in ${rtnl.nsPath}`;
    const tc = TcSession.on(rtnl);
    try {
      // Indexes the connection may know already (rewiring looked them up), and the
      // bridge's MAC: no link message (a bridge's costs the kernel 0.1-0.4 ms).
      const tap = { name: links.tap, index: await rtnl.linkIndex(links.tap) };
      const veth = { name: links.veth, index: await rtnl.linkIndex(links.veth) };
      const bridge = await rtnl.linkAddress(links.bridge);
      const need = slotsFor(policy.prefixes);
      if (need.v4 > this.slots.v4 || need.v6 > this.slots.v6) await this.reloadTap(need, steps);
      // Filled before any filter runs it: a frame never meets an empty config.
      bpf.updateArrayElem(this.configFd, 0, encodeGuardConfig(policy, bridge, this.slots));
      const filters: [TcLink, TcHook, ProgramName][] = [
        [tap, "ingress", "vmlet_guest"],
        [veth, "ingress", "vmlet_from_node"],
        [veth, "egress", "vmlet_to_node"],
      ];
      for (const [link, hook, name] of filters) {
        await timeStep(steps, "guard: tc attach", async () => {
          // The veth carries two of the filters: the session asks for its qdisc once.
          if (!this.withClsact.has(link.name)) await tc.ensureClsact(link);
          await tc.attachBpf(spec(link, hook), this.programs[name], name, true);
        });
      }
      fs.closeSync(this.configFd);
      const specs = filters.map(([link, hook]) => spec(link, hook));
      return new InterfaceGuard(this.mapFd, where, rtnl.nsPath, specs);
    } catch (error) {
      fs.closeSync(this.mapFd);
      fs.closeSync(this.configFd);
      throw new GuardError(`${where}: ${(error as Error).message}`, { cause: error });
    } finally {
      this.closePrograms();
    }
  }

  /** Lets go of the programs and maps unattached (setUp failed before the attach). */
  close(): void {
    if (this.done) return;
    this.done = true;
    this.closePrograms();
    fs.closeSync(this.mapFd);
    fs.closeSync(this.configFd);
  }

  /** The tap's program again, with room for `slots` prefixes. */
  private async reloadTap(slots: PrefixSlots, steps?: StepHook): Promise<void> {
    const insns = tapIngressProgram(this.configFd, this.mapFd, slots);
    const fd = await timeStep(steps, "guard: BPF load", () =>
      bpf.loadProgram("vmlet_guest", bpf.BPF_PROG_TYPE_SCHED_CLS, insns),
    );
    fs.closeSync(this.programs.vmlet_guest);
    this.programs.vmlet_guest = fd;
    this.slots = slots;
  }

  private closePrograms(): void {
    for (const fd of Object.values(this.programs)) fs.closeSync(fd);
  }
}

export class InterfaceGuard {
  private closed = false;

  constructor(
    private readonly mapFd: number,
    readonly where: string,
    private readonly nsPath: string,
    private readonly specs: TcFilterSpec[],
  ) {}

  /**
   * Loads and attaches the three classifiers, over `shared` (a connection to `nsPath`
   * the caller keeps) or a connection of its own; on failure nothing of this call stays
   * open.
   */
  static async attach(
    nsPath: string,
    links: GuardLinks,
    policy: TapPolicy,
    steps?: StepHook,
    shared?: Rtnl,
  ): Promise<InterfaceGuard> {
    const prepared = await PreparedGuard.load(slotsFor(policy.prefixes), steps);
    if (shared) return prepared.attach(shared, links, policy, steps);
    let rtnl: Rtnl;
    try {
      rtnl = Rtnl.open(nsPath);
    } catch (error) {
      prepared.close();
      throw error;
    }
    try {
      return await prepared.attach(rtnl, links, policy, steps);
    } finally {
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
