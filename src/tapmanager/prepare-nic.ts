// What a pod's first NIC needs before its CNI result is known: loopback up, the bridge and
// the tap (rewire.ts), the tap's clsact qdisc, the guard's programs loaded and verified
// (guard.ts), and the DHCP server's socket on the bridge. setUp does it while CNI ADD runs, or the netns pool does it ahead of the pod.

import fs from "node:fs";
import { ifnameFor } from "../cni-bridge/cni";
import { prepareBridgeAndTap, rewireNames } from "../cni-bridge/rewire";
import { SERVER_PORT } from "../dhcp/codec";
import { PreparedGuard } from "../guard/guard";
import type { PrefixSlots } from "../guard/policy";
import { Rtnl } from "../sys/rtnl";
import { bindUdpFd } from "../sys/udp";
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
  /**
   * The DHCP server's socket, bound to the bridge's port 67 (a plain fd: nothing on
   * Node's loop until a server takes it, and sets this undefined).
   */
  dhcpSocketFd: number | undefined;
}

/** Lets go of what of a prepared NIC no setUp took (an attached guard is its filters'). */
export function closePreparedNic(nic: PreparedNic): void {
  nic.guard.close();
  nic.rtnl.close();
  if (nic.dhcpSocketFd !== undefined) fs.closeSync(nic.dhcpSocketFd);
  nic.dhcpSocketFd = undefined;
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
      const dhcpSocketFd = bindUdpFd(nsPath, { device: names.bridge, port: SERVER_PORT });
      return { guard, rtnl, dhcpSocketFd };
    } catch (error) {
      guard.close();
      throw error;
    }
  } catch (error) {
    rtnl.close();
    throw error;
  }
}

/** Lets the event loop turn once (I/O callbacks run) before going on. */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
