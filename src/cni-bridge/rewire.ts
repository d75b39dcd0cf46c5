// Rewiring one CNI interface of a pod's netns for a VM: the veth CNI made joins a bridge
// with a tap, the guest takes the veth's MAC and addresses (served by DHCP), and the
// veth keeps only its link to the node.
import crypto from "node:crypto";
import fs from "node:fs";
import { ignoringRtnlErrors, type Rtnl } from "../sys/rtnl";
import { openTap } from "../sys/tap";
import { type Ipv4Route, ON_LINK } from "../util/ip";
import { macToString } from "../util/mac";
import { type StepHook, timeStep } from "../util/steps";

export interface RewireNames {
  /** The CNI interface (the veth's pod end), e.g. eth0. */
  ifname: string;
  bridge: string;
  tap: string;
}

/** What moves from the veth to the guest: the pod's addresses, routes, MTU and MAC. */
export interface PodIdentity {
  addresses: { address: string; prefixLength: number }[];
  /** Routes through the veth. */
  routes: Ipv4Route[];
  mtu: number;
  /** The veth's MAC as CNI made it, which the guest takes. */
  mac: string;
}

export interface RewiredInterface extends RewireNames {
  guestMac: string;
}

/** Bridge and tap names for a CNI interface; unique inside the pod's netns. */
export function rewireNames(ifname: string): RewireNames {
  return { ifname, bridge: `br-${ifname}`.slice(0, 15), tap: `tap-${ifname}`.slice(0, 15) };
}

/** A random unicast, locally administered MAC (RFC 7042 section 2.1). */
export function randomLocalMac(): string {
  const bytes = crypto.randomBytes(6);
  bytes[0] = (bytes[0] & 0xfc) | 0x02;
  return macToString(bytes);
}

/**
 * What of the rewiring needs no CNI result, done ahead (while the plugins run): the
 * bridge (its random MAC from the start) and the persistent tap enslaved to it, both up.
 * rewireInterface() then finds them and goes on. The names are vmlet's own (br-, tap-),
 * which no plugin makes in a pod's netns.
 */
export async function prepareBridgeAndTap(
  rtnl: Rtnl,
  nsPath: string,
  names: RewireNames,
  steps?: StepHook,
): Promise<void> {
  await rtnl.createBridge(names.bridge, randomLocalMac());
  await timeStep(steps, "rewire: tap open", () =>
    fs.closeSync(openTap(nsPath, { name: names.tap, persist: true }).fd),
  );
  await rtnl.setMaster(names.tap, names.bridge);
  await rtnl.setUp(names.bridge);
  await rtnl.setUp(names.tap);
}

/**
 * Moves the pod's identity from the veth to the guest: addresses and routes off the veth,
 * a new MAC on it, then bridge + persistent tap (vnet headers, the veth's MTU) with it.
 * Safe to run again on a half-rewired netns: each step checks what is already there.
 */
export async function rewireInterface(
  rtnl: Rtnl,
  nsPath: string,
  names: RewireNames,
  view: PodIdentity,
  steps?: StepHook,
  /** prepareBridgeAndTap() made the bridge and tap in this setUp: no need to look. */
  prepared = false,
): Promise<RewiredInterface> {
  const { ifname, bridge, tap } = names;
  // Read once per connection: setUp's read of the netns has it, on the same one.
  const veth = await rtnl.cachedLink(ifname);
  // Routes through the veth go with its addresses; delete the rest explicitly first.
  for (const route of view.routes) {
    await ignoringRtnlErrors(["ESRCH", "ENOENT"], () =>
      rtnl.deleteRoute({
        dst: route.dst,
        dstLength: route.prefixLength,
        device: ifname,
        ...(route.gateway === ON_LINK ? {} : { gateway: route.gateway }),
      }),
    );
  }
  for (const a of view.addresses) {
    await ignoringRtnlErrors(["EADDRNOTAVAIL"], () =>
      rtnl.deleteAddress(ifname, `${a.address}/${a.prefixLength}`),
    );
  }
  // Calico and others pin the pod IP to this MAC on the node: the guest must take it.
  const newVethMac = veth.mac === view.mac ? randomLocalMac() : undefined;

  if (!prepared && !(await rtnl.findLink(bridge))) {
    await rtnl.createBridge(bridge, randomLocalMac());
  }
  await rtnl.setMtu(bridge, view.mtu);
  if (!prepared && !(await rtnl.findLink(tap))) {
    // Persistent, so it outlives this fd and can be reopened for QEMU, also after a restart.
    await timeStep(steps, "rewire: tap open", () =>
      fs.closeSync(openTap(nsPath, { name: tap, persist: true }).fd),
    );
  }
  await rtnl.setMtu(tap, view.mtu);
  if (!prepared) await rtnl.setMaster(tap, bridge);
  // The veth's new MAC, its port on the bridge and up, in one request. Up before the
  // guest's MAC is pinned to the tap is safe: no frame with that MAC exists before the
  // guest runs, so the veth port cannot learn it meanwhile.
  await rtnl.changeLink(ifname, {
    ...(newVethMac ? { mac: newVethMac } : {}),
    master: bridge,
    up: true,
  });
  await pinGuestToTap(rtnl, names, view.mac);
  if (!prepared) for (const name of [bridge, tap]) await rtnl.setUp(name);
  return { ...names, guestMac: view.mac };
}

/**
 * Frames for the guest leave the pod bridge only through the tap, whatever the node
 * bridge does. A node bridge with hairpin on (Flannel's stock config, and what
 * kube-proxy needs for a pod to reach itself through a Service) sends the guest's own
 * broadcasts, and its DNAT'd frames to itself, back down the veth with the guest's MAC
 * as source. A learning veth port would then move the guest's MAC onto the veth and the
 * DHCP OFFER and every later reply would go back to the node. So the veth port does not
 * learn (it is the only way to the rest of the network: unknown destinations flood to it
 * anyway), and the guest's MAC is pinned to the tap with a static FDB entry. Both are
 * set again, unchanged, when rewiring runs again (recovery).
 */
async function pinGuestToTap(rtnl: Rtnl, names: RewireNames, guestMac: string): Promise<void> {
  await rtnl.setBridgePortLearning(names.ifname, false);
  await rtnl.setStaticFdb(names.tap, guestMac, names.bridge);
}
