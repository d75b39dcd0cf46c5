// Real IPv6 clients (ISC dhclient -6, dhcpcd, busybox udhcpc6, the guest kernel's own RA
// handling, rdisc6)
// in a guest netns bridged through a veth standing in for the tap, against the pod
// bridge's RA + DHCPv6 service, on a Flannel-style /64 and a Calico-style /128 network.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { Ipv6Server } from "../../src/dhcp6/server";
import { Rtnl } from "../../src/sys/rtnl";
import { type GuestIpv6, routeGuestIpv6 } from "../../src/tapmanager/guest-ipv6";
import { ClientProcess, waitFor } from "../harness/client-process";
import { bridgedGuest, ipIn, requirePrivateNamespace, type TestNetns } from "../harness/fixtures";
import {
  execFileAsync,
  guest6,
  type Ipv6ClientKind,
  linkLocalOf,
  nameservers,
  ping6,
  startIpv6Client,
} from "../harness/ipv6-guest";

requirePrivateNamespace();

const GUEST_MAC = "52:54:00:aa:bb:06";
const BRIDGE = "br0";
const GUEST_PORT = "vtap0";
const DNS6 = "fd00:10:96::a";
const SEARCH = ["default.svc.cluster.local", "svc.cluster.local"];
const MTU = 1450;

type Kind = "flannel" | "calico";

interface Topology {
  kind: Kind;
  host: TestNetns;
  pod: TestNetns;
  guest: TestNetns;
  address: string;
  ipv6: GuestIpv6;
  /** An address of the host the guest must reach through its router. */
  hostAddress: string;
  remove(): void;
}

function sysctl(netns: string, ...settings: string[]): void {
  execFileSync("ip", ["netns", "exec", netns, "sysctl", "-qw", ...settings]);
}

/** host <-veth-> pod bridge <-veth "tap"-> guest, with the pod's routes as CNI left them, moved as vmlet moves them. */
async function makeTopology(kind: Kind): Promise<Topology> {
  const { host, pod, guest, hostVeth } = bridgedGuest(
    { host: "h6", pod: "p6", guest: "g6" },
    { bridge: BRIDGE, guestPort: GUEST_PORT, guestMac: GUEST_MAC },
  );
  let ipv6: GuestIpv6;
  let hostAddress: string;
  let address: string;
  if (kind === "flannel") {
    address = "fd00:10:244:1::5";
    ipIn(host.name, "addr", "add", "fd00:10:244:1::1/64", "dev", hostVeth, "nodad");
    hostAddress = "fd00:10:244:1::1";
    ipv6 = {
      address,
      prefixLength: 64,
      onLink: { prefix: "fd00:10:244:1::", prefixLength: 64 },
      routes: [
        { dst: "fd00:10:244:1::", prefixLength: 64, gateway: "::" },
        { dst: "::", prefixLength: 0, gateway: "fd00:10:244:1::1" },
      ],
      gateway: "fd00:10:244:1::1",
    };
  } else {
    // Calico: the host veth answers as fe80::1, routes the pod's /128 to it, and the rest
    // of the world is behind another link.
    address = "fd00:10:1::3";
    sysctl(host.name, "net.ipv6.conf.all.forwarding=1");
    ipIn(host.name, "addr", "add", "fe80::1/64", "dev", hostVeth, "nodad");
    ipIn(host.name, "route", "add", `${address}/128`, "dev", hostVeth);
    ipIn(host.name, "link", "add", "up0", "type", "veth", "peer", "name", "up1");
    ipIn(host.name, "link", "set", "up0", "up");
    ipIn(host.name, "link", "set", "up1", "up");
    ipIn(host.name, "addr", "add", "2001:db8:ff::1/64", "dev", "up0", "nodad");
    hostAddress = "2001:db8:ff::1";
    ipv6 = {
      address,
      prefixLength: 128,
      routes: [{ dst: "::", prefixLength: 0, gateway: "fe80::1" }],
      gateway: "fe80::1",
    };
  }
  ipIn(guest.name, "link", "set", "eth0", "up");
  const rtnl = Rtnl.open(pod.path);
  try {
    await routeGuestIpv6(rtnl, pod.path, { ifname: "uplink", bridge: BRIDGE }, ipv6);
  } finally {
    rtnl.close();
  }
  return {
    kind,
    host,
    pod,
    guest,
    address,
    ipv6,
    hostAddress,
    remove() {
      guest.remove();
      pod.remove();
      host.remove();
    },
  };
}

const clients: Ipv6ClientKind[] = ["dhclient", "dhcpcd", "udhcpc6"];
const CLIENT_NAMES: Record<Ipv6ClientKind, string> = {
  dhclient: "ISC dhclient -6",
  dhcpcd: "dhcpcd",
  udhcpc6: "busybox udhcpc6",
};
/**
 * Lease time: short where the client renews at T1. udhcpc6 1.35 ignores T1 and renews at
 * half the valid lifetime, 30 s at the least: it gets a minute and is told to renew.
 */
const LEASE_SECONDS: Record<Ipv6ClientKind, number> = { dhclient: 8, dhcpcd: 8, udhcpc6: 60 };

describe("IPv6 RA and DHCPv6 with real clients", () => {
  let tmp: string;
  let resolvConf: string;

  before(() => {
    // The runner's mount namespace is private: these bind mounts stay in it.
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dhcp6-clients-"));
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

  for (const kind of ["flannel", "calico"] as const) {
    it(`rdisc6 on a ${kind}-style network reads M, O, the MTU, RDNSS and ${kind === "flannel" ? "the on-link /64" : "no prefix"}`, async () => {
      const t = await makeTopology(kind);
      const server = await Ipv6Server.start({
        nsPath: t.pod.path,
        device: BRIDGE,
        leases: [
          { mac: GUEST_MAC, address: t.address, dns: [DNS6], search: SEARCH, leaseSeconds: 60 },
        ],
        mtu: MTU,
        dns: [DNS6],
        search: SEARCH,
        onLink: t.ipv6.onLink ? [t.ipv6.onLink] : [],
      });
      try {
        await waitFor("the guest's link-local", 5000, () => linkLocalOf(t.guest.name, "eth0"));
        // Not execFileSync: the server answers on this process's event loop.
        const { stdout: out } = await execFileAsync("ip", [
          "netns",
          "exec",
          t.guest.name,
          "rdisc6",
          "-1",
          "-r",
          "3",
          "-w",
          "2000",
          "eth0",
        ]);
        assert.match(out, /Stateful address conf\.\s+:\s+Yes/);
        assert.match(out, /Stateful other conf\.\s+:\s+Yes/);
        assert.match(out, /Router lifetime\s+:\s+1800/);
        assert.match(out, new RegExp(`MTU\\s+:\\s+${MTU}`));
        assert.match(out, new RegExp(`Recursive DNS server\\s+:\\s+${DNS6}`));
        assert.match(out, new RegExp(`from ${server.linkLocal}`));
        if (kind === "flannel") assert.match(out, /Prefix\s+:\s+fd00:10:244:1::\/64/);
        else assert.doesNotMatch(out, /Prefix\s+:/);
        assert.ok(server.stats().router.solicitations >= 1);
      } finally {
        await server.close();
        t.remove();
      }
    });

    for (const kind6 of clients) {
      it(`${CLIENT_NAMES[kind6]} on a ${kind}-style network takes the address, the route via the bridge, MTU and DNS; pings both ways; renews`, async () => {
        const t = await makeTopology(kind);
        const dir = fs.mkdtempSync(path.join(tmp, "c-"));
        fs.writeFileSync(resolvConf, "");
        for (const f of fs.readdirSync("/var/lib/dhcpcd"))
          fs.rmSync(path.join("/var/lib/dhcpcd", f), { recursive: true });
        const leaseSeconds = LEASE_SECONDS[kind6];
        const server = await Ipv6Server.start({
          nsPath: t.pod.path,
          device: BRIDGE,
          leases: [
            { mac: GUEST_MAC, address: t.address, dns: [DNS6], search: SEARCH, leaseSeconds },
          ],
          mtu: MTU,
          dns: [DNS6],
          search: SEARCH,
          onLink: t.ipv6.onLink ? [t.ipv6.onLink] : [],
          replyPort: GUEST_PORT,
        });
        await waitFor("the guest's link-local", 5000, () => linkLocalOf(t.guest.name, "eth0"));
        const client6 = startIpv6Client(kind6, t.guest.name, "eth0", dir);
        const client = client6.process;
        let sniffer: ClientProcess | undefined;
        try {
          const want = `${t.address}/128`;
          await waitFor(`${want} on the guest`, 20_000, () =>
            guest6(t.guest.name).addresses.includes(want),
          );
          const state = await waitFor("a default route", 10_000, () => {
            const s = guest6(t.guest.name);
            return s.defaultVia ? s : undefined;
          });
          assert.equal(state.defaultVia, server.linkLocal, "default route via the RA's source");
          assert.equal(state.mtu, MTU, "MTU from the RA");
          await waitFor("the DNS server in resolv.conf", 5_000, () =>
            nameservers(fs.readFileSync(resolvConf, "utf8")).includes(DNS6),
          );
          assert.ok(ping6(t.guest.name, t.hostAddress), `guest pings ${t.hostAddress}`);
          assert.ok(ping6(t.host.name, t.address), `host pings the guest at ${t.address}`);
          assert.ok(ping6(t.pod.name, t.address), "the pod netns pings the guest");

          const replies = client.count(client6.replies);
          const served = server.stats().dhcp6.replied;
          // What reaches the guest for its renewal (udhcpc6's is a unicast: UseMulticast).
          const sniff = new ClientProcess(t.guest.name, [
            "tcpdump",
            "-l",
            "-n",
            "-v",
            "-i",
            "eth0",
            "udp",
            "port",
            "546",
          ]);
          sniffer = sniff;
          await waitFor("tcpdump", 5000, () => sniff.output.includes("listening on"));
          client6.renew?.();
          await waitFor(
            client6.renew ? "a REPLY to the renewal asked for" : "a REPLY to the renewal at T1",
            client6.renew ? 10_000 : leaseSeconds * 2000,
            () => client.count(client6.replies) > replies,
          );
          assert.ok(server.stats().dhcp6.replied > served, "the server answered the renewal");
          if (kind6 === "udhcpc6") {
            await waitFor("UseMulticast to the guest's unicast renewal", 3000, () =>
              new RegExp(`> ${t.address}\\.546: .*dhcp6 reply.*UseMulticast`).test(sniff.output),
            ).catch((error: Error) => {
              throw new Error(`${error.message}\n${sniff.output}`);
            });
          }
          assert.ok(guest6(t.guest.name).addresses.includes(want));
          // The next renewal repeats the first one's bytes: the kernel's cache answers it.
          const renewed = client.count(client6.replies);
          await waitFor(
            "a REPLY to the next renewal",
            leaseSeconds * 2000,
            () => client.count(client6.replies) > renewed,
          );
          assert.ok(
            (server.stats().dhcp6.kernel?.hits ?? 0) > 0,
            `a renewal was answered from the kernel: ${JSON.stringify(server.stats().dhcp6)}`,
          );
          assert.ok(guest6(t.guest.name).addresses.includes(want));
          assert.deepEqual(server.stats().dhcp6.dropped, {});
        } catch (error) {
          console.error(client.output, JSON.stringify(server.stats()));
          throw error;
        } finally {
          await sniffer?.stop();
          await client6.stop();
          await server.close();
          t.remove();
        }
      });
    }
  }
});
