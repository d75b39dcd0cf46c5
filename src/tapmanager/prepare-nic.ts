// What a pod's first NIC needs before its CNI result is known: loopback up, the bridge and
// the tap (rewire.ts), the tap's clsact qdisc, and the guard's programs loaded and verified
// (guard.ts). setUp does it while CNI ADD runs, or the netns pool does it ahead of the pod.

import { ifnameFor } from "../cni-bridge/cni";
import { prepareBridgeAndTap, rewireNames } from "../cni-bridge/rewire";
import { PreparedGuard } from "../guard/guard";
import type { PrefixSlots } from "../guard/policy";
import { Rtnl } from "../sys/rtnl";
import type { StepHook } from "../util/steps";

/** The NIC this prepares: pods mostly have one, and every pod has this one. */
export const PREPARED_IFNAME = ifnameFor(0);

/**
 * A first NIC made ahead: its guard's programs for rewiring to attach, and the connection
 * to its netns that made it, kept open for setUp's second half (it knows the bridge's and
 * the tap's indexes, and opening another costs a netns switch). Close both if unused.
 */
export interface PreparedNic {
  guard: PreparedGuard;
  rtnl: Rtnl;
}

/** Lets go of a prepared NIC that no setUp took. */
export function closePreparedNic(nic: PreparedNic): void {
  nic.guard.close();
  nic.rtnl.close();
}

/**
 * Prepares the first NIC in the netns at `nsPath`. In chunks of a millisecond or so with a
 * turn of the event loop between them, so a plugin's pipes and exit are read in time when
 * this runs beside ADD. A later network's plugins find nothing of vmlet's under their
 * names (br-/tap- are vmlet's own), as CNI leaves a netns. On failure nothing stays open.
 */
export async function prepareFirstNic(
  nsPath: string,
  slots: PrefixSlots,
  steps?: StepHook,
): Promise<PreparedNic> {
  const rtnl = Rtnl.open(nsPath);
  try {
    await rtnl.setUp("lo");
    const names = rewireNames(PREPARED_IFNAME);
    await nextTurn();
    await prepareBridgeAndTap(rtnl, nsPath, names, steps);
    await nextTurn();
    const guard = await PreparedGuard.load(slots, steps);
    try {
      // The tap's clsact qdisc, on this connection: attach() then need not ask for it.
      await guard.prepareTap(rtnl, names.tap);
    } catch (error) {
      guard.close();
      throw error;
    }
    return { guard, rtnl };
  } catch (error) {
    rtnl.close();
    throw error;
  }
}

/** Lets the event loop turn once (I/O callbacks run) before going on. */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
