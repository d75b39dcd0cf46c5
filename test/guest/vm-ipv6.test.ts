// The tiny VM on a dual-stack pod: the tapmanager (with the guard on the tap) serves RA +
// DHCPv6 beside DHCP, and the unmodified guest takes both stacks at boot: udhcpc with
// Debian's stock script for IPv4, busybox udhcpc6 (built from Debian's busybox source)
// with the guests' script for IPv6, the kernel's own RA handling for the default route
// and the MTU. Checked the way a user would, from the guest's console reports and pings.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { normalIpv6 } from "../../src/util/ipv6";
import { makePod } from "../harness/cni-fixtures";
import { requirePrivateNamespace } from "../harness/fixtures";
import {
  bootGuest,
  type GuestLease6,
  type GuestVm,
  guestDir,
  guestImagesBuilt,
} from "../harness/guest-vm";
import { globalIpv6, linkLocalOf, ping6 } from "../harness/ipv6-guest";
import { DUAL_STACK_STYLES, type DualStackStyle } from "../harness/network-styles";
import { DNS, makePodNode, ping, removePodNode } from "../harness/pod-node";

requirePrivateNamespace();

const DNS6 = "fd00:10:96::a";
/** udhcpc6 1.35 renews at half the valid lifetime (30 s at the least): the test asks it to. */
const LEASE_SECONDS = 60;

const built = guestImagesBuilt() && fs.existsSync(path.join(guestDir(), "busybox-udhcpc6"));

/** Waits (by `status6`) until the guest's IPv6 has a default route: the RA may come after the lease. */
async function withDefaultRoute(vm: GuestVm): Promise<GuestLease6> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const state = await vm.status6();
    if (state.defaultVia) return state;
    if (Date.now() > deadline) throw new Error(`no IPv6 default route: ${JSON.stringify(state)}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function checkDualStackVm(style: DualStackStyle): Promise<void> {
  const node = await makePodNode({ ...style, leaseSeconds: LEASE_SECONDS });
  const pod = makePod();
  let vm: GuestVm | undefined;
  try {
    const network = await node.tapmanager.setUp({
      pod,
      dns: { servers: [...DNS.nameservers, DNS6], searches: DNS.search },
    });
    const eth0 = network.interfaces[0]!;
    const ipv6 = eth0.ipv6;
    assert.ok(ipv6, `the netns read found IPv6: ${JSON.stringify(eth0)}`);
    const podNetns = path.basename(network.netnsPath);
    const router = linkLocalOf(podNetns, eth0.bridge);
    const [tap] = node.tapmanager.openTaps(pod.sandboxId);
    vm = bootGuest({ tapFd: tap!.fd, mac: tap!.guestMac, hostMtu: tap!.mtu });
    fs.closeSync(tap!.fd);
    const guest = vm;
    try {
      const lease6 = await guest.waitForLease6({ timeoutMs: 60_000 });
      assert.equal(lease6.event, "bound");
      assert.equal(
        normalIpv6(lease6.dhcp.ipv6!),
        ipv6.address,
        "udhcpc6 was given the pod's address",
      );
      assert.ok(
        lease6.addresses.includes(`${ipv6.address}/128`),
        `${ipv6.address}/128 on eth0: ${JSON.stringify(lease6.addresses)}`,
      );
      // (udhcpc6 1.35 hands its script the lease byte-swapped; its own log has it right.)
      const log = await guest.run("cat /run/udhcpc6.log");
      assert.ok(
        log.output.some((l) => l.includes(`IPv6 obtained, lease time ${LEASE_SECONDS}`)),
        log.output.join("\n"),
      );
      const state = await withDefaultRoute(guest);
      assert.equal(state.defaultVia, router, "default route via the pod bridge's link-local");
      assert.equal(state.mtu, style.mtu, "IPv6 MTU from the RA");
      // Both clients' resolver lines (through the guest's resolvconf), whichever wrote last.
      const servers = state.dns.map((d) => (d.includes(":") ? normalIpv6(d) : d));
      assert.deepEqual(servers.sort(), [...DNS.nameservers, DNS6].sort(), JSON.stringify(state));
      assert.ok(state.search.includes(DNS.search[0]!), JSON.stringify(state.search));

      const other6 = globalIpv6(node.other.ns.name);
      const out = await guest.run(`ping -6 -c 1 -W 3 ${other6}`);
      assert.equal(out.rc, 0, `the VM pings the second pod at ${other6}: ${out.output.join("\n")}`);
      assert.ok(ping6(node.other.ns.name, ipv6.address), "the second pod pings the VM");

      const stats = () => node.tapmanager.ipv6Stats(pod.sandboxId)[0]!.dhcp6;
      const replied = stats().replied;
      const renewed = await guest.renew6();
      assert.equal(renewed.event, "renew");
      assert.ok(renewed.addresses.includes(`${ipv6.address}/128`), JSON.stringify(renewed));
      assert.ok(stats().replied > replied, "the server answered the renewal");
      assert.deepEqual(stats().dropped, {}, "nothing the guest sent was dropped");

      // IPv4 beside it, as the IPv4-only VM tests see it.
      const lease = await guest.waitForLease({ timeoutMs: 30_000 });
      const cni4 = eth0.addresses.find((a) => a.family === 4)!.address;
      assert.equal(lease.address, cni4);
      assert.equal((await guest.run(`ping -c 1 -W 3 ${node.other.ip}`)).rc, 0);
      ping(node.other.ns.name, cni4);
    } catch (error) {
      const log = await guest
        .run("cat /run/udhcpc6.log; ip -6 addr; ip -6 route; ip -6 neigh")
        .catch(() => ({ output: [] }));
      throw new Error(
        `${(error as Error).message}\n--- udhcpc6.log\n${log.output.join("\n")}\n--- console\n${guest.tail(40)}`,
        { cause: error },
      );
    }
  } finally {
    if (vm) {
      await vm.stop();
    }
    await node.tapmanager.tearDown(pod.sandboxId);
    await removePodNode(node);
  }
}

describe("tiny VM on a dual-stack pod: udhcpc6 and the RA beside udhcpc (TCG)", {
  skip: !built,
}, () => {
  for (const style of DUAL_STACK_STYLES.filter((s) => !s.name.startsWith("ptp"))) {
    it(`on ${style.name}: the pod's IPv6, default route via the bridge, MTU, DNS; pings a second pod both ways; renews; IPv4 beside it`, async () => {
      await checkDualStackVm(style);
    });
  }
});
