// A node for pod-network tests: a CNI sandbox with one network, a tapmanager on it, a
// second ordinary pod on the same network (for reachability both ways), and optionally
// an uplink with a default route (proxy ARP answers only for routable targets). Plus the
// check that a guest's DHCP lease gives it what the netns had.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import type { CniClient, PodRef } from "../../src/cni-bridge/cni";
import type { DhcpLog } from "../../src/dhcp/server";
import { Tapmanager } from "../../src/tapmanager";
import type { PodNetwork } from "../../src/tapmanager/types";
import { type CniSandbox, makeCniSandbox, makePod } from "./cni-fixtures";
import { ip as ipCmd, makeNetns, run, type TestNetns, uniqueName } from "./fixtures";
import { type DhcpClientKind, type GuestNetState, startDhcpClient } from "./guest-clients";
import { bootGuest, type GuestVm } from "./guest-vm";
import { startRelay } from "./relay";

/** The DNS the tests give pods (as kubelet would: cluster DNS and search list). */
export const DNS = {
  nameservers: ["10.96.0.10"],
  search: ["default.svc.cluster.local", "svc.cluster.local"],
};

/** The pod's DNS as kubelet gives it to the tapmanager. */
export const KUBELET_DNS = { servers: DNS.nameservers, searches: DNS.search };

/** What a guest on a network must be told. */
export interface LeaseExpectation {
  mtu: number;
  /** The mask the guest must get: the CNI one where the netns routed it on-link. */
  guestPrefix: number;
  gateway: string;
  /** Routes beyond the default one that a client taking option 121 must have. */
  extraRoutes: RegExp[];
}

/** A LeaseExpectation, and whether the gateway answers ping (Calico's 169.254.1.1 is only proxy-ARPed). */
export interface GuestExpectation extends LeaseExpectation {
  gatewayAnswersPing: boolean;
}

export interface PodNode {
  cni: CniSandbox;
  tapmanager: Tapmanager;
  plainClient: CniClient;
  /** A second, ordinary pod on the same network. */
  other: { ns: TestNetns; pod: PodRef; ip: string };
  uplink?: string;
}

export async function makePodNode(options: {
  conflist(cni: CniSandbox): unknown;
  needsUplink?: boolean;
  /** Where the tapmanager logs; silent by default. */
  log?: DhcpLog;
  /** DHCP and DHCPv6 lease time; short where a test waits for a renewal. */
  leaseSeconds?: number;
}): Promise<PodNode> {
  const cni = makeCniSandbox();
  cni.writeConf("10-net.conflist", options.conflist(cni));
  const tapmanager = new Tapmanager({
    cni: cni.client(),
    stateDir: path.join(cni.root, "pods"),
    ...(options.log ? { log: options.log } : {}),
    ...(options.leaseSeconds ? { leaseSeconds: options.leaseSeconds } : {}),
  });
  const plainClient = cni.client();
  const node: Partial<PodNode> = { cni, tapmanager, plainClient };
  try {
    if (options.needsUplink) {
      node.uplink = uniqueName("up");
      ipCmd("link", "add", node.uplink, "type", "veth", "peer", "name", `${node.uplink}p`);
      ipCmd("link", "set", node.uplink, "up");
      ipCmd("route", "add", "default", "dev", node.uplink);
    }
    const ns = makeNetns("other");
    const pod = makePod();
    node.other = { ns, pod, ip: "" };
    const [attachment] = await plainClient.addPod(pod, ns.path);
    node.other.ip = attachment.result.ips[0].address.split("/")[0];
    return node as PodNode;
  } catch (error) {
    node.other?.ns.remove();
    cni.remove();
    if (node.uplink) ipCmd("link", "del", node.uplink);
    throw error;
  }
}

export async function removePodNode(node: PodNode): Promise<void> {
  await node.tapmanager.close();
  await node.plainClient.delPod(node.other.pod, node.other.ns.path);
  node.other.ns.remove();
  node.cni.remove();
  if (node.uplink) ipCmd("link", "del", node.uplink);
}

export function ping(netns: string, ip: string): void {
  run(netns, "ping", "-c", "1", "-W", "3", ip);
}

/** The guest's state equals what the pod's netns had (address, routes, MTU, DNS). */
export function assertLeaseMatches(
  expected: LeaseExpectation,
  network: PodNetwork,
  state: GuestNetState,
  takes121: boolean,
  mtuOnRoutes = false,
  takes119 = takes121,
): void {
  const eth0 = network.interfaces[0];
  const cniAddress = eth0.addresses.find((a) => a.family === 4)!;
  assert.deepEqual(state.addresses, [`${cniAddress.address}/${expected.guestPrefix}`]);
  assert.ok(
    state.routes.some((r) => r.startsWith(`default via ${expected.gateway} dev eth0`)),
    `default route via ${expected.gateway} in ${JSON.stringify(state.routes)}`,
  );
  if (takes121) {
    for (const route of expected.extraRoutes) {
      assert.ok(
        state.routes.some((r) => route.test(r)),
        `${route} in ${JSON.stringify(state.routes)}`,
      );
    }
  }
  // dhcpcd 9 puts option 26 on its routes instead of the link.
  if (mtuOnRoutes)
    assert.ok(
      state.routes.some((r) => r.includes(`mtu ${expected.mtu}`)),
      JSON.stringify(state.routes),
    );
  else assert.equal(state.mtu, expected.mtu);
  assert.deepEqual(state.dns, DNS.nameservers);
  if (takes119) {
    // dhclient writes the names fully qualified, with the root's dot.
    assert.deepEqual(
      state.search.map((s) => s.replace(/\.$/, "")),
      DNS.search,
    );
  } else {
    // Debian's udhcpc script ignores 119 and writes option 15 as "domain".
    assert.equal(state.domain, DNS.search[0]);
  }
}

export interface GuestCheckOptions {
  /** Also a rebind (udhcpc and the VM only: the others have no trigger). */
  rebind?: boolean;
}

/**
 * A pod set up by the tapmanager, a relay guest on its tap running `kind`: the lease
 * equals the netns, the guest reaches its gateway and the second pod and is reached by
 * it, a renewal (dhclient: an INIT-REBOOT) and, when asked, a rebind are answered.
 * `more` runs with the guest bound, before the renewal.
 */
export async function checkRelayGuest(
  node: PodNode,
  expected: GuestExpectation,
  kind: DhcpClientKind,
  options: GuestCheckOptions & {
    more?: (guest: { netns: string; ip: string; pod: PodNetwork }) => Promise<void> | void;
  } = {},
): Promise<void> {
  const pod = makePod();
  const network = await node.tapmanager.setUp({ pod, dns: KUBELET_DNS });
  const [tap] = node.tapmanager.openTaps(pod.sandboxId);
  const guest = await startRelay({ podTapFd: tap.fd, mac: tap.guestMac });
  // udhcpc asks for 121 only when told to; the stock script then ignores it.
  const client = await startDhcpClient(kind, { netns: guest.netns, ifname: guest.ifname });
  try {
    const state: GuestNetState = await client.waitForLease({ timeoutMs: 30_000 });
    assertLeaseMatches(expected, network, state, kind !== "udhcpc", kind === "dhcpcd");
    if (expected.gatewayAnswersPing) ping(guest.netns, expected.gateway);
    try {
      ping(guest.netns, node.other.ip);
    } catch (error) {
      throw new Error(`guest routes ${JSON.stringify(state.routes)}: ${(error as Error).message}`);
    }
    const guestIp = state.addresses[0].split("/")[0];
    ping(node.other.ns.name, guestIp);
    await options.more?.({ netns: guest.netns, ip: guestIp, pod: network });

    const before = node.tapmanager.dhcpStats(pod.sandboxId)[0].replied;
    if (kind === "dhclient") {
      // dhclient has no renew trigger; its restart with the lease file is an INIT-REBOOT.
      const dir = client.dir;
      const from = client.events().length;
      await client.stop();
      const again = await startDhcpClient(kind, { netns: guest.netns, ifname: guest.ifname, dir });
      try {
        const rebooted = await again.waitForLease({ from, timeoutMs: 30_000 });
        assertLeaseMatches(expected, network, rebooted, true);
      } finally {
        await again.stop();
      }
    } else {
      assertLeaseMatches(
        expected,
        network,
        await client.renew(30_000),
        kind !== "udhcpc",
        kind === "dhcpcd",
      );
      if (kind === "udhcpc" && options.rebind)
        assertLeaseMatches(expected, network, await client.rebind(30_000), false);
    }
    assert.ok(node.tapmanager.dhcpStats(pod.sandboxId)[0].replied > before, "the server answered");
  } finally {
    await client.stop();
    await guest.stop();
    fs.closeSync(tap.fd);
    await node.tapmanager.tearDown(pod.sandboxId);
  }
}

/** checkRelayGuest's checks for the tiny VM (udhcpc with Debian's stock script). */
export async function checkVmGuest(
  node: PodNode,
  expected: GuestExpectation,
  options: GuestCheckOptions & {
    more?: (vm: GuestVm, guest: { ip: string }) => Promise<void> | void;
  } = {},
): Promise<void> {
  const pod = makePod();
  const network = await node.tapmanager.setUp({ pod, dns: KUBELET_DNS });
  const [tap] = node.tapmanager.openTaps(pod.sandboxId);
  const vm = bootGuest({ tapFd: tap.fd, mac: tap.guestMac, hostMtu: tap.mtu });
  fs.closeSync(tap.fd);
  try {
    const lease = await vm.waitForLease({ timeoutMs: 60_000 });
    const state = { ...lease, addresses: [lease.cidr], resolvConf: "" };
    assertLeaseMatches(expected, network, state, false);
    assert.equal(lease.dhcp.serverid, expected.gateway, "the server id is the gateway");
    if (expected.gatewayAnswersPing)
      assert.equal((await vm.run(`ping -c 1 -W 3 ${expected.gateway}`)).rc, 0);
    assert.equal((await vm.run(`ping -c 1 -W 3 ${node.other.ip}`)).rc, 0);
    ping(node.other.ns.name, lease.address);
    await options.more?.(vm, { ip: lease.address });
    const renewed = await vm.renew();
    assert.equal(renewed.cidr, lease.cidr);
    if (options.rebind) {
      const rebound = await vm.rebind();
      assert.equal(rebound.cidr, lease.cidr);
    }
  } finally {
    vm.stop();
    await vm.exited;
    await node.tapmanager.tearDown(pod.sandboxId);
  }
}
