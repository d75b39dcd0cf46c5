// The tapmanager end to end: for each network style and each real DHCP client (in a relay
// guest behind the pod's tap, and in a tiny VM on it), the guest's lease equals what CNI
// gave the pod, it reaches its gateway and a second pod, the second pod reaches it, and a
// renewal and a rebind are answered.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { CniClient, PodRef } from "../../src/cni-bridge/cni";
import { Tapmanager } from "../../src/tapmanager";
import type { PodNetwork } from "../../src/tapmanager/types";
import { calicoPluginInto } from "../harness/calico-plugin";
import { type CniSandbox, hostLocal, makeCniSandbox, makePod } from "../harness/cni-fixtures";
import {
  ip as ipCmd,
  makeNetns,
  requirePrivateNamespace,
  run,
  type TestNetns,
  uniqueName,
} from "../harness/fixtures";
import { type DhcpClientKind, type GuestNetState, startDhcpClient } from "../harness/guest-clients";
import { bootGuest, guestImagesBuilt } from "../harness/guest-vm";
import { startRelay } from "../harness/relay";

requirePrivateNamespace();

const DNS = {
  nameservers: ["10.96.0.10"],
  search: ["default.svc.cluster.local", "svc.cluster.local"],
};

interface NetworkStyle {
  name: string;
  conflist(cni: CniSandbox): unknown;
  mtu: number;
  /** The mask the guest must get: the CNI one where the netns routed it on-link. */
  guestPrefix: number;
  gateway: string;
  /** Routes beyond the default one that a client taking option 121 must have. */
  extraRoutes: RegExp[];
  /** Whether the gateway itself answers ping (Calico's 169.254.1.1 is only proxy-ARPed). */
  gatewayAnswersPing: boolean;
  /** The node's uplink with a default route: proxy ARP answers only for routable targets. */
  needsUplink?: boolean;
}

const STYLES: NetworkStyle[] = [
  {
    name: "Flannel-style (bridge + host-local, /24, MTU 1450, cluster route)",
    conflist: (cni) => ({
      cniVersion: "1.0.0",
      name: "cbr0",
      plugins: [
        {
          type: "bridge",
          bridge: uniqueName("cni"),
          isGateway: true,
          ipMasq: false,
          mtu: 1450,
          dns: DNS,
          ipam: hostLocal(cni.dataDir, "10.244.1.0/24", {
            routes: [{ dst: "0.0.0.0/0" }, { dst: "10.244.0.0/16" }],
          }),
        },
      ],
    }),
    mtu: 1450,
    guestPrefix: 24,
    gateway: "10.244.1.1",
    extraRoutes: [/^10\.244\.0\.0\/16 via 10\.244\.1\.1 dev eth0/],
    gatewayAnswersPing: true,
  },
  {
    name: "ptp + host-local",
    conflist: (cni) => ({
      cniVersion: "1.0.0",
      name: "ptpnet",
      plugins: [
        {
          type: "ptp",
          ipMasq: false,
          mtu: 1500,
          dns: DNS,
          ipam: hostLocal(cni.dataDir, "10.71.0.0/16"),
        },
      ],
    }),
    mtu: 1500,
    guestPrefix: 32,
    gateway: "10.71.0.1",
    extraRoutes: [/^10\.71\.0\.0\/16 via 10\.71\.0\.1 dev eth0/],
    gatewayAnswersPing: true,
  },
  {
    name: "Calico-style (/32, 169.254.1.1 on-link, proxy ARP)",
    conflist: (cni) => ({
      cniVersion: "1.0.0",
      name: "k8s-pod-network",
      plugins: [
        {
          type: calicoPluginInto(cni.binDir),
          mtu: 1440,
          ipam: {
            type: "host-local",
            dataDir: cni.dataDir,
            ranges: [[{ subnet: "192.168.50.0/24" }]],
          },
        },
      ],
    }),
    mtu: 1440,
    guestPrefix: 32,
    gateway: "169.254.1.1",
    extraRoutes: [/^169\.254\.1\.1 dev eth0/],
    gatewayAnswersPing: false,
    needsUplink: true,
  },
];

/** The pod's DNS as kubelet gives it; the Calico fixture's result has none. */
const KUBELET_DNS = { servers: DNS.nameservers, searches: DNS.search };

interface Node {
  cni: CniSandbox;
  tapmanager: Tapmanager;
  plainClient: CniClient;
  /** A second, ordinary pod on the same network. */
  other: { ns: TestNetns; pod: PodRef; ip: string };
  uplink?: string;
}

async function makeNode(style: NetworkStyle): Promise<Node> {
  const cni = makeCniSandbox();
  cni.writeConf("10-net.conflist", style.conflist(cni));
  const tapmanager = new Tapmanager({ cni: cni.client(), stateDir: path.join(cni.root, "pods") });
  const plainClient = cni.client();
  const ns = makeNetns("other");
  const pod = makePod();
  const [attachment] = await plainClient.addPod(pod, ns.path);
  const ip = attachment.result.ips[0].address.split("/")[0];
  const node: Node = { cni, tapmanager, plainClient, other: { ns, pod, ip } };
  if (style.needsUplink) {
    node.uplink = uniqueName("up");
    ipCmd("link", "add", node.uplink, "type", "veth", "peer", "name", `${node.uplink}p`);
    ipCmd("link", "set", node.uplink, "up");
    ipCmd("route", "add", "default", "dev", node.uplink);
  }
  return node;
}

async function removeNode(node: Node): Promise<void> {
  await node.tapmanager.close();
  await node.plainClient.delPod(node.other.pod, node.other.ns.path);
  node.other.ns.remove();
  node.cni.remove();
  if (node.uplink) ipCmd("link", "del", node.uplink);
}

function ping(netns: string, ip: string): void {
  run(netns, "ping", "-c", "1", "-W", "3", ip);
}

function assertLeaseMatches(
  style: NetworkStyle,
  network: PodNetwork,
  state: GuestNetState,
  takes121: boolean,
  mtuOnRoutes = false,
  takes119 = takes121,
): void {
  const eth0 = network.interfaces[0];
  const cniAddress = eth0.addresses.find((a) => a.family === 4)!;
  assert.deepEqual(state.addresses, [`${cniAddress.address}/${style.guestPrefix}`]);
  assert.ok(
    state.routes.some((r) => r.startsWith(`default via ${style.gateway} dev eth0`)),
    `default route via ${style.gateway} in ${JSON.stringify(state.routes)}`,
  );
  if (takes121) {
    for (const route of style.extraRoutes) {
      assert.ok(
        state.routes.some((r) => route.test(r)),
        `${route} in ${JSON.stringify(state.routes)}`,
      );
    }
  }
  // dhcpcd 9 puts option 26 on its routes instead of the link.
  if (mtuOnRoutes)
    assert.ok(
      state.routes.some((r) => r.includes(`mtu ${style.mtu}`)),
      JSON.stringify(state.routes),
    );
  else assert.equal(state.mtu, style.mtu);
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

for (const style of STYLES) {
  describe(`a pod on a ${style.name} network`, () => {
    let node: Node;
    before(async () => {
      node = await makeNode(style);
    });
    after(async () => {
      await removeNode(node);
    });

    for (const kind of ["udhcpc", "dhclient", "dhcpcd"] as DhcpClientKind[]) {
      it(`gives ${kind} in a relay guest the CNI lease, reachability, renewal and rebind`, async () => {
        const pod = makePod();
        const network = await node.tapmanager.setUp({ pod, dns: KUBELET_DNS });
        const [tap] = node.tapmanager.openTaps(pod.sandboxId);
        const guest = await startRelay({ podTapFd: tap.fd, mac: tap.guestMac });
        // udhcpc asks for 121 only when told to; the stock script then ignores it.
        const client = await startDhcpClient(kind, { netns: guest.netns, ifname: guest.ifname });
        try {
          const state: GuestNetState = await client.waitForLease({ timeoutMs: 30_000 });
          assertLeaseMatches(style, network, state, kind !== "udhcpc", kind === "dhcpcd");
          if (style.gatewayAnswersPing) ping(guest.netns, style.gateway);
          try {
            ping(guest.netns, node.other.ip);
          } catch (error) {
            throw new Error(
              `guest routes ${JSON.stringify(state.routes)}: ${(error as Error).message}`,
            );
          }
          ping(node.other.ns.name, state.addresses[0].split("/")[0]);

          const before = node.tapmanager.dhcpStats(pod.sandboxId)[0].replied;
          if (kind === "dhclient") {
            // dhclient has no renew trigger; its restart with the lease file is an INIT-REBOOT.
            const dir = client.dir;
            const from = client.events().length;
            await client.stop();
            const again = await startDhcpClient(kind, {
              netns: guest.netns,
              ifname: guest.ifname,
              dir,
            });
            try {
              const rebooted = await again.waitForLease({ from, timeoutMs: 30_000 });
              assertLeaseMatches(style, network, rebooted, true);
            } finally {
              await again.stop();
            }
          } else {
            assertLeaseMatches(
              style,
              network,
              await client.renew(30_000),
              kind !== "udhcpc",
              kind === "dhcpcd",
            );
            if (kind === "udhcpc")
              assertLeaseMatches(style, network, await client.rebind(30_000), false);
          }
          assert.ok(
            node.tapmanager.dhcpStats(pod.sandboxId)[0].replied > before,
            "the server answered",
          );
        } finally {
          await client.stop();
          await guest.stop();
          fs.closeSync(tap.fd);
          await node.tapmanager.tearDown(pod.sandboxId);
        }
      });
    }

    it("gives a tiny VM (udhcpc with Debian's stock script) the CNI lease, reachability, renewal and rebind", {
      skip: !guestImagesBuilt() && "test guests not built (scripts/build-test-guests.sh)",
    }, async () => {
      const pod = makePod();
      const network = await node.tapmanager.setUp({ pod, dns: KUBELET_DNS });
      const [tap] = node.tapmanager.openTaps(pod.sandboxId);
      const vm = bootGuest({ tapFd: tap.fd, mac: tap.guestMac, hostMtu: tap.mtu });
      fs.closeSync(tap.fd);
      try {
        const lease = await vm.waitForLease({ timeoutMs: 60_000 });
        const state = { ...lease, addresses: [lease.cidr], resolvConf: "" };
        assertLeaseMatches(style, network, state, false);
        assert.equal(lease.dhcp.serverid, style.gateway, "the server id is the gateway");
        if (style.gatewayAnswersPing)
          assert.equal((await vm.run(`ping -c 1 -W 3 ${style.gateway}`)).rc, 0);
        assert.equal((await vm.run(`ping -c 1 -W 3 ${node.other.ip}`)).rc, 0);
        ping(node.other.ns.name, lease.address);
        const renewed = await vm.renew();
        assert.equal(renewed.cidr, lease.cidr);
        const rebound = await vm.rebind();
        assert.equal(rebound.cidr, lease.cidr);
      } finally {
        vm.stop();
        await vm.exited;
        await node.tapmanager.tearDown(pod.sandboxId);
      }
    });
  });
}
