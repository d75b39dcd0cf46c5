// Real DHCP clients (busybox udhcpc with Debian's stock script, dhclient, dhcpcd) in a
// guest netns whose NIC is bridged, through a veth standing in for the tap, with the
// pod's uplink veth on the pod bridge the server listens on.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { type DhcpLease, DhcpServer } from "../../src/dhcp/server";
import { ClientProcess, waitFor } from "../harness/client-process";
import {
  bridgedGuest,
  ipIn,
  requirePrivateNamespace,
  sendUdp,
  type TestNetns,
} from "../harness/fixtures";

requirePrivateNamespace();

const GUEST_MAC = "52:54:00:aa:bb:01";
const BRIDGE = "br0";
const GUEST_PORT = "vtap0";

type NetworkKind = "flannel" | "calico";

interface Topology {
  kind: NetworkKind;
  host: TestNetns;
  pod: TestNetns;
  guest: TestNetns;
  lease: DhcpLease;
  /** An address on the host the guest should reach through its gateway. */
  hostAddress: string;
  remove(): void;
}

function leaseFor(kind: NetworkKind, leaseSeconds: number): DhcpLease {
  const common = {
    mac: GUEST_MAC,
    mtu: 1450,
    dns: ["10.96.0.10"],
    search: ["default.svc.cluster.local", "svc.cluster.local"],
    domain: "cluster.local",
    hostname: "vm1",
    leaseSeconds,
  };
  if (kind === "flannel") {
    return {
      ...common,
      ip: "10.244.1.5",
      prefixLength: 24,
      router: "10.244.1.1",
      routes: [{ dst: "10.244.0.0", prefixLength: 16, gateway: "10.244.1.1" }],
    };
  }
  return { ...common, ip: "10.1.2.3", prefixLength: 32, router: "169.254.1.1", routes: [] };
}

/** host <-veth-> pod bridge <-veth "tap"-> guest, wired as the CNI network would be. */
function makeTopology(kind: NetworkKind, leaseSeconds: number): Topology {
  const { host, pod, guest, hostVeth } = bridgedGuest(
    { host: "h", pod: "p", guest: "g" },
    { bridge: BRIDGE, guestPort: GUEST_PORT, guestMac: GUEST_MAC },
  );
  const lease = leaseFor(kind, leaseSeconds);
  let hostAddress: string;
  if (kind === "flannel") {
    ipIn(host.name, "addr", "add", "10.244.1.1/24", "dev", hostVeth);
    hostAddress = "10.244.1.1";
  } else {
    // Calico: no address on the host veth, proxy ARP answers for 169.254.1.1, a /32
    // route to the pod, and the rest of the world behind another link.
    execFileSync("ip", [
      "netns",
      "exec",
      host.name,
      "sysctl",
      "-qw",
      // Proxy ARP answers only on a forwarding interface, as on a Calico node.
      "net.ipv4.ip_forward=1",
      `net.ipv4.conf.${hostVeth}.proxy_arp=1`,
    ]);
    ipIn(host.name, "route", "add", `${lease.ip}/32`, "dev", hostVeth);
    ipIn(host.name, "link", "add", "up0", "type", "veth", "peer", "name", "up1");
    ipIn(host.name, "link", "set", "up0", "up");
    ipIn(host.name, "link", "set", "up1", "up");
    ipIn(host.name, "addr", "add", "192.0.2.1/24", "dev", "up0");
    ipIn(host.name, "route", "add", "default", "via", "192.0.2.254", "dev", "up0", "onlink");
    hostAddress = "192.0.2.1";
  }
  ipIn(guest.name, "link", "set", "eth0", "up");
  return {
    kind,
    host,
    pod,
    guest,
    lease,
    hostAddress,
    remove() {
      guest.remove();
      pod.remove();
      host.remove();
    },
  };
}

interface GuestState {
  address?: string;
  mtu: number;
  routes: string[];
  /** The MTU attribute of each route that has one. */
  routeMtus: number[];
}

function guestState(guest: string): GuestState {
  const link = JSON.parse(ipIn(guest, "-j", "addr", "show", "eth0")) as {
    mtu: number;
    addr_info: { family: string; local: string; prefixlen: number }[];
  }[];
  const v4 = link[0]?.addr_info.find((a) => a.family === "inet");
  const lines = ipIn(guest, "-4", "route", "show", "dev", "eth0").split("\n").filter(Boolean);
  const routes = lines.map((l) => l.replace(/\s+(proto|metric|src|scope|mtu) \S+/g, "").trim());
  const routeMtus = lines.flatMap((l) => /\bmtu (\d+)/.exec(l)?.[1] ?? []).map(Number);
  return {
    address: v4 ? `${v4.local}/${v4.prefixlen}` : undefined,
    mtu: link[0]?.mtu ?? 0,
    routes,
    routeMtus,
  };
}

function ping(netns: string, address: string): boolean {
  try {
    execFileSync("ip", ["netns", "exec", netns, "ping", "-c1", "-W2", address], {
      stdio: "ignore",
    });
    return true;
  } catch {
    return false;
  }
}

/**
 * Datagrams the host netns took for the gateway: refused for want of a port (Flannel:
 * the gateway is the host's own address) or forwarded on (Calico: 169.254.1.1 is no
 * one's address and the host routes it away).
 */
function hostTookForGateway(host: string): number {
  const out = hostCounters(host);
  const counter = (name: string) => Number(new RegExp(`${name}\\s+(\\d+)`).exec(out)?.[1] ?? 0);
  return counter("UdpNoPorts") + counter("IpForwDatagrams");
}

function hostCounters(host: string): string {
  return execFileSync("ip", ["netns", "exec", host, "nstat", "-az", "Udp*", "IpForwDatagrams"], {
    encoding: "utf8",
  });
}

/** Removes the intercept from the guest's port: unicast renewals now go to the host. */
function cutUnicastPath(t: Topology): void {
  execFileSync("tc", ["-n", t.pod.name, "filter", "del", "dev", GUEST_PORT, "ingress"]);
}

interface ClientSpec {
  name: string;
  leaseSeconds: number;
  start(t: Topology, dir: string): ClientProcess;
  /** Whether the client installs option 121 routes. */
  classless: boolean;
  /** Makes the client renew now (by unicast), or undefined to wait for T1. */
  renew?: (c: ClientProcess, t: Topology) => void;
  acks: RegExp;
  /** What the client logs when it broadcasts a REQUEST in the rebinding state. */
  rebind: RegExp;
  /** What it logs when it starts over with a DISCOVER. */
  discover: RegExp;
  /** dhcpcd 9 puts option 26 on every route it adds instead of on the link. */
  mtuOnRoutes?: boolean;
  resolvConf(t: Topology): string[];
}

const clients: ClientSpec[] = [
  {
    name: "udhcpc (Debian's stock script)",
    leaseSeconds: 10,
    classless: false,
    start: (t, dir) =>
      new ClientProcess(t.guest.name, [
        "udhcpc",
        "-f",
        "-i",
        "eth0",
        "-s",
        "/etc/udhcpc/default.script",
        "-p",
        path.join(dir, "udhcpc.pid"),
        "-t",
        "20",
        "-T",
        "1",
      ]),
    renew: (c) => c.signal("SIGUSR1"),
    acks: /lease of \S+ obtained/,
    rebind: /broadcasting renew/,
    discover: /broadcasting discover/,
    resolvConf: () => ["domain cluster.local", "nameserver 10.96.0.10"],
  },
  {
    name: "dhclient",
    leaseSeconds: 20,
    classless: true,
    start: (t, dir) => {
      // Debian's configuration, with retries a second apart: dhclient's default backoff
      // can sleep through a short lease's whole rebinding window.
      const conf = path.join(dir, "dhclient.conf");
      const stock = fs.readFileSync("/etc/dhcp/dhclient.conf", "utf8");
      fs.writeFileSync(conf, `${stock}\ninitial-interval 1;\nbackoff-cutoff 1;\n`);
      return new ClientProcess(t.guest.name, [
        "dhclient",
        "-4",
        "-d",
        "-v",
        "-cf",
        conf,
        "-sf",
        "/sbin/dhclient-script",
        "-lf",
        path.join(dir, "dhclient.leases"),
        "-pf",
        path.join(dir, "dhclient.pid"),
        "eth0",
      ]);
    },
    acks: /DHCPACK of \S+ from/,
    rebind: /DHCPREQUEST for \S+ on eth0 to 255\.255\.255\.255/,
    discover: /DHCPDISCOVER/,
    resolvConf: () => [
      "domain cluster.local",
      // dhclient-script puts the domain (15) first on the search line.
      "search cluster.local default.svc.cluster.local. svc.cluster.local.",
      "nameserver 10.96.0.10",
    ],
  },
  {
    name: "dhcpcd",
    leaseSeconds: 20,
    classless: true,
    start: (t, dir) => {
      const conf = path.join(dir, "dhcpcd.conf");
      fs.writeFileSync(
        conf,
        [
          "ipv4only",
          "noarp",
          "noipv4ll",
          "option domain_name_servers, domain_name, domain_search, host_name",
          "option classless_static_routes, interface_mtu",
          "nohook 30-hostname",
          "",
        ].join("\n"),
      );
      return new ClientProcess(t.guest.name, ["dhcpcd", "-4", "-B", "-d", "-f", conf, "eth0"]);
    },
    acks: /acknowledged \S+ from/,
    rebind: /failed to renew DHCP, rebinding/,
    discover: /soliciting a DHCP lease/,
    mtuOnRoutes: true,
    resolvConf: () => [
      "domain cluster.local",
      "search default.svc.cluster.local svc.cluster.local",
      "nameserver 10.96.0.10",
    ],
  },
];

function expectedRoutes(t: Topology, classless: boolean): string[] {
  if (t.kind === "flannel") {
    const base = ["default via 10.244.1.1", "10.244.1.0/24"];
    return classless ? [...base, "10.244.0.0/16 via 10.244.1.1"].sort() : base.sort();
  }
  return classless
    ? ["169.254.1.1", "default via 169.254.1.1"].sort()
    : ["default via 169.254.1.1 onlink"].sort();
}

describe("DHCP server with real clients", () => {
  let tmp: string;
  let resolvConf: string;

  before(() => {
    // The runner's mount namespace is private: these bind mounts stay in it.
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dhcp-clients-"));
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

  for (const spec of clients) {
    for (const kind of ["flannel", "calico"] as const) {
      it(`${spec.name} on a ${kind}-style network gets the lease, renews by unicast and rebinds by broadcast`, async () => {
        const t = makeTopology(kind, spec.leaseSeconds);
        const dir = fs.mkdtempSync(path.join(tmp, "c-"));
        fs.writeFileSync(resolvConf, "");
        for (const f of fs.readdirSync("/var/lib/dhcpcd"))
          fs.rmSync(path.join("/var/lib/dhcpcd", f));
        const server = await DhcpServer.start({
          nsPath: t.pod.path,
          device: BRIDGE,
          serverId: t.lease.router!,
          leases: [t.lease],
          replyPort: GUEST_PORT,
        });
        const client = spec.start(t, dir);
        try {
          const want = `${t.lease.ip}/${t.lease.prefixLength}`;
          await waitFor(
            `${want} on the guest`,
            20_000,
            () => guestState(t.guest.name).address === want,
          );
          await waitFor("the client's routes", 5_000, () => client.count(spec.acks) >= 1);
          const state = await waitFor("routes", 5_000, () => {
            const s = guestState(t.guest.name);
            return s.routes.some((r) => r.startsWith("default")) && s;
          });
          if (spec.mtuOnRoutes) {
            assert.equal(state.routeMtus.length, state.routes.length, "MTU from option 26");
            for (const mtu of state.routeMtus) assert.equal(mtu, 1450, "MTU from option 26");
          } else {
            assert.equal(state.mtu, 1450, "MTU from option 26");
          }
          assert.deepEqual(state.routes.sort(), expectedRoutes(t, spec.classless), client.output);
          const resolv = await waitFor(
            "resolv.conf",
            5_000,
            () =>
              fs.readFileSync(resolvConf, "utf8").includes("nameserver") &&
              fs.readFileSync(resolvConf, "utf8"),
          );
          for (const line of spec.resolvConf(t))
            assert.ok(resolv.includes(line), `${line} in\n${resolv}`);
          assert.ok(
            ping(t.guest.name, t.hostAddress),
            `guest pings ${t.hostAddress} through its gateway`,
          );
          const neigh = ipIn(t.guest.name, "neigh", "show", t.lease.router!);
          const hostMac = JSON.parse(ipIn(t.host.name, "-j", "link", "show"))
            .map((l: { address?: string }) => l.address)
            .filter(Boolean) as string[];
          assert.ok(
            hostMac.some((m) => neigh.includes(m)),
            `the gateway is the host's MAC: ${neigh}`,
          );

          // Malformed datagrams from the guest are counted; the client is still served.
          const before = server.stats();
          const garbage = [Buffer.alloc(10), Buffer.alloc(2000, 1), Buffer.alloc(300, 0xff)];
          for (const g of garbage)
            sendUdp(t.guest.name, { address: "255.255.255.255", port: 67 }, g);
          await waitFor(
            "drops counted",
            3_000,
            () => server.stats().received >= before.received + 3,
          );
          const dropped = server.stats().dropped;
          assert.ok(
            (dropped.truncated ?? 0) >= 1 && (dropped["bad-op"] ?? 0) >= 1,
            JSON.stringify(dropped),
          );

          // Renewal: a REQUEST unicast to the server id (the gateway) reaches us, not the host.
          const acks = client.count(spec.acks);
          const hostNoPorts = hostTookForGateway(t.host.name);
          const replied = server.stats().replied;
          spec.renew?.(client, t);
          await waitFor(
            "an ACK to a unicast renewal",
            spec.leaseSeconds * 1000,
            () => client.count(spec.acks) > acks,
          );
          assert.ok(server.stats().replied > replied);
          assert.equal(
            hostTookForGateway(t.host.name),
            hostNoPorts,
            `no renewal leaked to the host: server ${JSON.stringify(server.stats())}\n${hostCounters(t.host.name)}`,
          );
          assert.equal(guestState(t.guest.name).address, want);

          if (spec.renew) {
            // The same renewal again: the kernel's reply cache answers it, with the lease.
            const hits = server.stats().kernel?.hits ?? 0;
            const acked = client.count(spec.acks);
            spec.renew(client, t);
            await waitFor(
              "an ACK to a second renewal",
              5_000,
              () => client.count(spec.acks) > acked,
            );
            assert.ok(
              (server.stats().kernel?.hits ?? 0) > hits,
              `the renewal was answered from the kernel: ${JSON.stringify(server.stats())}`,
            );
            assert.equal(guestState(t.guest.name).address, want);
          }

          // Rebind: with the unicast path cut, the client's broadcast at T2 is answered.
          cutUnicastPath(t);
          const acks2 = client.count(spec.acks);
          const rebinds = client.count(spec.rebind);
          const discovers = client.count(spec.discover);
          await waitFor(
            "an ACK to a broadcast rebind",
            spec.leaseSeconds * 4000,
            () => client.count(spec.acks) > acks2,
          );
          assert.ok(
            hostTookForGateway(t.host.name) > hostNoPorts,
            "the cut renewal went to the host, unanswered",
          );
          assert.equal(guestState(t.guest.name).address, want);
          assert.ok(client.count(spec.rebind) > rebinds, "the client rebound by broadcast");
          assert.equal(client.count(spec.discover), discovers, "it did not start over");
          if (process.env.DHCP_DEBUG) console.error(client.output);
        } catch (error) {
          console.error(client.output);
          throw error;
        } finally {
          await client.stop();
          await server.close();
          t.remove();
        }
      });
    }
  }
});
