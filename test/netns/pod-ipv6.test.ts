// Dual-stack pods end to end: CNI gives the pod an IPv4 and an IPv6 address, the
// tapmanager rewires it, and a relay guest behind the pod's tap takes its IPv6 by RA +
// DHCPv6 with real clients (ISC dhclient -6, dhcpcd, busybox udhcpc6) and its IPv4 by
// DHCP (udhcpc), on
// Flannel-style (bridge + host-local dual ranges), ptp and Calico-style (/128 via
// fe80::1) networks; it reaches a second dual-stack pod both ways. An IPv4-only pod
// sends no router advertisements.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { waitFor } from "../harness/client-process";
import { makePod } from "../harness/cni-fixtures";
import { ipIn, requirePrivateNamespace, uniqueName } from "../harness/fixtures";
import { startDhcpClient } from "../harness/guest-clients";
import {
  execFileAsync,
  globalIpv6,
  guest6,
  type Ipv6ClientKind,
  linkLocalOf,
  nameservers,
  ping6,
  startIpv6Client,
} from "../harness/ipv6-guest";
import { DUAL_STACK_STYLES } from "../harness/network-styles";
import { DNS, makePodNode, ping, removePodNode } from "../harness/pod-node";
import { startRelay } from "../harness/relay";

requirePrivateNamespace();

const DNS6 = "fd00:10:96::a";
/**
 * DHCP and DHCPv6 lease time: short where the client renews at T1. udhcpc6 1.35 ignores
 * T1 and renews at half the valid lifetime, 30 s at the least: it gets a minute and is
 * told to renew (SIGUSR1).
 */
const LEASE_SECONDS: Record<Ipv6ClientKind, number> = { dhclient: 8, dhcpcd: 8, udhcpc6: 60 };

describe("dual-stack pods: the guest takes its IPv6 by RA and DHCPv6", () => {
  let tmp: string;
  let resolvConf: string;

  before(() => {
    // The runner's mount namespace is private: these bind mounts stay in it.
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "pod-ipv6-"));
    resolvConf = path.join(tmp, "resolv.conf");
    fs.writeFileSync(resolvConf, "");
    execFileSync("mount", ["--bind", resolvConf, "/etc/resolv.conf"]);
    const dhcpcdDb = path.join(tmp, "dhcpcd-db");
    fs.mkdirSync(dhcpcdDb);
    fs.mkdirSync("/var/lib/dhcpcd", { recursive: true });
    execFileSync("mount", ["--bind", dhcpcdDb, "/var/lib/dhcpcd"]);
  });

  after(() => {
    execFileSync("umount", ["/etc/resolv.conf"]);
    execFileSync("umount", ["/var/lib/dhcpcd"]);
  });

  for (const style of DUAL_STACK_STYLES) {
    for (const kind of ["dhclient", "dhcpcd", "udhcpc6"] as Ipv6ClientKind[]) {
      it(`${kind} on ${style.name}: address, route via the pod bridge, MTU, DNS; pings a second pod both ways; renews; IPv4 beside it`, async () => {
        const node = await makePodNode({ ...style, leaseSeconds: LEASE_SECONDS[kind] });
        const pod = makePod();
        const dir = fs.mkdtempSync(path.join(tmp, "c-"));
        fs.writeFileSync(resolvConf, "");
        for (const f of fs.readdirSync("/var/lib/dhcpcd"))
          fs.rmSync(path.join("/var/lib/dhcpcd", f), { recursive: true });
        let cleanup: (() => Promise<void>)[] = [];
        try {
          const network = await node.tapmanager.setUp({
            pod,
            dns: { servers: [...DNS.nameservers, DNS6], searches: DNS.search },
          });
          const eth0 = network.interfaces[0]!;
          const ipv6 = eth0.ipv6;
          assert.ok(ipv6, `the netns read found IPv6: ${JSON.stringify(eth0)}`);
          assert.equal(ipv6.onLink !== undefined, style.onLink, JSON.stringify(ipv6));
          assert.deepEqual(ipv6.nameservers, [DNS6]);
          const podNetns = path.basename(network.netnsPath);
          assert.deepEqual(
            JSON.parse(
              ipIn(podNetns, "-j", "-6", "addr", "show", "dev", eth0.ifname, "scope", "global"),
            ),
            [],
            "the pod's IPv6 left the veth (the guest's DAD succeeds)",
          );
          const [tap] = node.tapmanager.openTaps(pod.sandboxId);
          const guest = await startRelay({ podTapFd: tap!.fd, mac: tap!.guestMac });
          cleanup.push(async () => {
            await guest.stop();
            fs.closeSync(tap!.fd);
          });
          await waitFor("the guest's link-local", 5000, () =>
            linkLocalOf(guest.netns, guest.ifname),
          );
          // A DHCPv6 server's ears in the second pod: the guest's DHCPv6 must stay in its pod.
          const listener = spawn(
            "ip",
            [
              "netns",
              "exec",
              node.other.ns.name,
              "socat",
              "-u",
              "UDP6-RECV:547,ipv6-join-group=[ff02::1:2]:eth0",
              "-",
            ],
            { stdio: ["ignore", "pipe", "ignore"] },
          );
          let overheard = 0;
          listener.stdout.on("data", (d: Buffer) => {
            overheard += d.length;
          });
          cleanup.push(async () => {
            listener.kill();
          });
          const client = startIpv6Client(kind, guest.netns, guest.ifname, dir);
          cleanup = [async () => client.stop(), ...cleanup];
          try {
            const want = `${ipv6.address}/128`;
            await waitFor(`${want} on the guest`, 30_000, () =>
              guest6(guest.netns, guest.ifname).addresses.includes(want),
            );
            const router = linkLocalOf(podNetns, eth0.bridge);
            const state = await waitFor("a default route", 10_000, () => {
              const s = guest6(guest.netns, guest.ifname);
              return s.defaultVia ? s : undefined;
            });
            assert.equal(state.defaultVia, router, "default route via the pod bridge's link-local");
            assert.equal(state.mtu, style.mtu, "MTU from the RA");
            await waitFor("the IPv6 DNS server in resolv.conf", 10_000, () =>
              nameservers(fs.readFileSync(resolvConf, "utf8")).includes(DNS6),
            );
            const other6 = globalIpv6(node.other.ns.name);
            assert.ok(ping6(guest.netns, other6), `guest pings the second pod at ${other6}`);
            assert.ok(ping6(node.other.ns.name, ipv6.address), "the second pod pings the guest");

            const replied = node.tapmanager.ipv6Stats(pod.sandboxId)[0]!.dhcp6.replied;
            const taken = client.process.count(client.replies);
            client.renew?.();
            await waitFor(
              client.renew ? "a REPLY to the renewal asked for" : "a REPLY to the renewal at T1",
              client.renew ? 10_000 : LEASE_SECONDS[kind] * 2000,
              () =>
                node.tapmanager.ipv6Stats(pod.sandboxId)[0]!.dhcp6.replied > replied &&
                client.process.count(client.replies) > taken,
            );
            assert.ok(guest6(guest.netns, guest.ifname).addresses.includes(want));
            assert.deepEqual(node.tapmanager.ipv6Stats(pod.sandboxId)[0]!.dhcp6.dropped, {});
            assert.equal(overheard, 0, "no DHCPv6 from the guest reached the second pod");
            // The listener was live: a datagram the second pod sends to the group itself is heard.
            execFileSync(
              "ip",
              [
                "netns",
                "exec",
                node.other.ns.name,
                "socat",
                "-u",
                "-",
                "UDP6-SENDTO:[ff02::1:2%eth0]:547",
              ],
              { input: "probe" },
            );
            await waitFor("the listener's own probe", 5000, () => overheard > 0);

            // IPv4 beside it: the DHCPv4 lease, and the second pod over IPv4.
            const v4 = await startDhcpClient("udhcpc", {
              netns: guest.netns,
              ifname: guest.ifname,
            });
            cleanup = [async () => v4.stop(), ...cleanup];
            const lease = await v4.waitForLease({ timeoutMs: 30_000 });
            const cni4 = eth0.addresses.find((a) => a.family === 4)!.address;
            assert.ok(lease.addresses[0]?.startsWith(`${cni4}/`), JSON.stringify(lease.addresses));
            ping(guest.netns, node.other.ip);
            ping(node.other.ns.name, cni4);
          } catch (error) {
            console.error(
              client.process.output,
              JSON.stringify(node.tapmanager.ipv6Stats(pod.sandboxId)),
            );
            throw error;
          }
        } finally {
          for (const step of cleanup) await step();
          await node.tapmanager.tearDown(pod.sandboxId);
          await removePodNode(node);
        }
      });
    }
  }

  it("an IPv4-only pod runs no RA or DHCPv6 service: a router solicitation gets no answer", async () => {
    const node = await makePodNode({
      conflist: (cni) => ({
        cniVersion: "1.0.0",
        name: "cbr0",
        plugins: [
          {
            type: "bridge",
            bridge: uniqueName("cni"),
            isGateway: true,
            ipMasq: false,
            ipam: {
              type: "host-local",
              dataDir: cni.dataDir,
              ranges: [[{ subnet: "10.244.2.0/24" }]],
            },
          },
        ],
      }),
    });
    const pod = makePod();
    try {
      const network = await node.tapmanager.setUp({ pod });
      assert.equal(network.interfaces[0]!.ipv6, undefined);
      assert.deepEqual(node.tapmanager.ipv6Stats(pod.sandboxId), []);
      const [tap] = node.tapmanager.openTaps(pod.sandboxId);
      const guest = await startRelay({ podTapFd: tap!.fd, mac: tap!.guestMac });
      try {
        await waitFor("the guest's link-local", 5000, () => linkLocalOf(guest.netns, guest.ifname));
        const rdisc = await execFileAsync("ip", [
          "netns",
          "exec",
          guest.netns,
          "rdisc6",
          "-1",
          "-r",
          "3",
          "-w",
          "1000",
          guest.ifname,
        ]).then(
          (r) => ({ code: 0, out: r.stdout }),
          (e: { code: number; stdout: string }) => ({ code: e.code, out: e.stdout }),
        );
        assert.match(rdisc.out, /No response/, rdisc.out);
        assert.notEqual(rdisc.code, 0);
      } finally {
        await guest.stop();
        fs.closeSync(tap!.fd);
      }
    } finally {
      await node.tapmanager.tearDown(pod.sandboxId);
      await removePodNode(node);
    }
  });
});
