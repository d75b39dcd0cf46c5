// A Debian guest with systemd-networkd's defaults (one .network file, DHCP=yes) on a
// Flannel-style dual-stack pod, through the tapmanager and the guard: one TCG boot, and
// everything a user checks from it. networkd takes IPv4 by DHCP, and IPv6 by RA then
// DHCPv6: with DHCP=yes it starts DHCPv6 only once an RA with M set arrives.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { waitFor } from "../harness/client-process";
import { makePod } from "../harness/cni-fixtures";
import { ipIn, requirePrivateNamespace } from "../harness/fixtures";
import { guestImagesBuilt } from "../harness/guest-vm";
import { linkLocalOf, ping6 } from "../harness/ipv6-guest";
import { FLANNEL_DUAL_STACK } from "../harness/network-styles";
import {
  bootNetworkdGuest,
  networkdGuestBuilt,
  networkdInitramfs,
  waitForNetworkd,
} from "../harness/networkd-guest";
import { DNS, makePodNode, ping, removePodNode } from "../harness/pod-node";

requirePrivateNamespace();

const skip =
  guestImagesBuilt() && networkdGuestBuilt()
    ? false
    : `networkd guest not built (${networkdInitramfs()}): run scripts/build-networkd-guest.sh`;

const DNS6 = "fd00:10:96::a";
// T1 (half of it, for DHCPv4 and DHCPv6) comes while the test still watches.
const LEASE_SECONDS = 20;

function globalIpv6(netns: string): string {
  const [link] = JSON.parse(
    ipIn(netns, "-j", "-6", "addr", "show", "dev", "eth0", "scope", "global"),
  ) as {
    addr_info: { local: string }[];
  }[];
  const address = link?.addr_info[0]?.local;
  if (!address) throw new Error(`no global IPv6 address in ${netns}`);
  return address;
}

describe("a Debian guest with systemd-networkd's defaults", { skip }, () => {
  it("on a Flannel-style dual-stack pod holds both addresses, the IPv6 route via the RA's source, the MTU and DNS; pings a second pod over IPv6 both ways; renews both", async (t) => {
    const node = await makePodNode({
      conflist: FLANNEL_DUAL_STACK.conflist,
      leaseSeconds: LEASE_SECONDS,
    });
    const pod = makePod();
    const consoleLog: string[] = [];
    try {
      const network = await node.tapmanager.setUp({
        pod,
        dns: { servers: [...DNS.nameservers, DNS6], searches: DNS.search },
      });
      const eth0 = network.interfaces[0]!;
      const pod4 = eth0.addresses.find((a) => a.family === 4)!.address;
      const pod6 = eth0.ipv6!.address;
      const router = linkLocalOf(path.basename(network.netnsPath), eth0.bridge);
      assert.ok(router, "the pod bridge has its link-local address");
      const other6 = globalIpv6(node.other.ns.name);
      const [tap] = node.tapmanager.openTaps(pod.sandboxId);
      const vm = bootNetworkdGuest({
        tapFd: tap!.fd,
        mac: tap!.guestMac,
        hostMtu: tap!.mtu,
        ping: [node.other.ip, other6],
        onLine: (l) => consoleLog.push(l),
      });
      fs.closeSync(tap!.fd);
      try {
        const state = await waitForNetworkd(vm, { timeoutMs: 150_000 });
        assert.equal(state.mac, tap!.guestMac);
        assert.deepEqual(state.ipv4, [`${pod4}/24`], "the pod's IPv4 with the netns's mask");
        assert.deepEqual(
          state.ipv6,
          [`${pod6}/128`],
          "the pod's IPv6 from DHCPv6, and no SLAAC address",
        );
        assert.ok(
          state.routes4.some((r) =>
            r.startsWith(`default via ${FLANNEL_DUAL_STACK.gateway4} dev ${state.ifname}`),
          ),
          JSON.stringify(state.routes4),
        );
        assert.ok(
          state.routes6.some((r) => r.startsWith(`default via ${router} proto ra`)),
          `IPv6 default route via the RA's source ${router}: ${JSON.stringify(state.routes6)}`,
        );
        assert.ok(
          state.routes6.some((r) => r.startsWith(`${FLANNEL_DUAL_STACK.prefix6} proto ra`)),
          `the on-link /64 from the prefix option: ${JSON.stringify(state.routes6)}`,
        );
        assert.equal(state.mtu, FLANNEL_DUAL_STACK.mtu, "link MTU");
        assert.equal(state.mtu6, FLANNEL_DUAL_STACK.mtu, "IPv6 MTU");
        // networkd lists a server once per source: DHCPv6 option 23 and the RA's RDNSS.
        assert.deepEqual(
          [...new Set(state.dns)].sort(),
          [...DNS.nameservers, DNS6].sort(),
          "DNS from DHCPv4 and from DHCPv6/RDNSS",
        );
        // networkd takes no search domains by default (UseDomains=no): they reach its lease.
        assert.equal(state.dhcp4Lease.DOMAINNAME, DNS.search[0], JSON.stringify(state.dhcp4Lease));

        const pings = await Promise.all(
          [node.other.ip, other6].map((addr) =>
            vm.waitForReport("ping", { match: (r) => r.fields.addr === addr }),
          ),
        );
        for (const p of pings) assert.equal(p.fields.rc, "0", `the guest pings ${p.fields.addr}`);
        ping(node.other.ns.name, pod4);
        assert.ok(ping6(node.other.ns.name, pod6), "the second pod pings the guest over IPv6");

        // Renewals at T1 are answered, and the guest keeps both addresses.
        const v4 = node.tapmanager.dhcpStats(pod.sandboxId)[0]!.replied;
        const v6 = node.tapmanager.ipv6Stats(pod.sandboxId)[0]!.dhcp6.replied;
        await waitFor("a DHCPv4 and a DHCPv6 renewal answered", LEASE_SECONDS * 2000, () =>
          node.tapmanager.dhcpStats(pod.sandboxId)[0]!.replied > v4 &&
          node.tapmanager.ipv6Stats(pod.sandboxId)[0]!.dhcp6.replied > v6
            ? true
            : undefined,
        );
        const after = await waitForNetworkd(vm, { from: vm.reports.length, timeoutMs: 30_000 });
        assert.deepEqual(after.ipv4, state.ipv4);
        assert.deepEqual(after.ipv6, state.ipv6);
        const ipv6 = node.tapmanager.ipv6Stats(pod.sandboxId)[0]!;
        assert.deepEqual(ipv6.dhcp6.dropped, {});
        assert.ok(ipv6.router.solicitations >= 1, "the guest solicited an RA");

        // networkd starts DHCPv6 only after an RA with M set, in its own words (its log,
        // printed by the report loop before the second report).
        const journal = vm.console.filter((l) => l.startsWith("networkd-journal: "));
        const ra = journal.findIndex((l) =>
          /NDISC: Received Router Advertisement: flags MANAGED/.test(l),
        );
        const solicit = journal.findIndex((l) => /DHCPv6 client: Starting in Solicit mode/.test(l));
        assert.ok(ra >= 0 && solicit > ra, `the RA with M, then DHCPv6:\n${journal.join("\n")}`);
        assert.ok(journal.some((l) => l.includes("Acquiring DHCPv6 lease on NDisc request")));
        const online = vm.reports.find((r) => r.kind === "online");
        t.diagnostic(
          `since QEMU spawned: network-online ${online?.at.toFixed(0)} ms, both families ${state.report.at.toFixed(0)} ms (guest uptime ${state.uptime} s)`,
        );
        t.diagnostic(
          `guard drops: ${JSON.stringify(node.tapmanager.dropCounts(pod.sandboxId)?.total)}`,
        );
      } catch (error) {
        console.error(consoleLog.join("\n"));
        throw error;
      } finally {
        await vm.stop();
      }
    } finally {
      await node.tapmanager.tearDown(pod.sandboxId);
      await removePodNode(node);
    }
  });
});
