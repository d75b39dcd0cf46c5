// The conflists real installers write (test/fixtures/stock-cni, sources in its README),
// unmodified: for each, every DHCP client in a relay guest (and the tiny VM on some)
// gets the lease that equals the netns, pings a second pod both ways, and is answered a
// renewal. The Flannel and containerd rows have hairpinMode on, so the node bridge
// reflects the guest's own broadcasts back down the veth; their guests also reach their
// own pod IP through a node DNAT (a Service IP, as kube-proxy does it), hairpin's purpose.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { PodNetwork } from "../../src/tapmanager/types";
import type { CniSandbox } from "../harness/cni-fixtures";
import { ip, nodeEndOf, requirePrivateNamespace, run } from "../harness/fixtures";
import type { DhcpClientKind } from "../harness/guest-clients";
import { guestImagesBuilt } from "../harness/guest-vm";
import {
  checkRelayGuest,
  checkVmGuest,
  type GuestExpectation,
  makePodNode,
  type PodNode,
  removePodNode,
} from "../harness/pod-node";
import { type Conflist, stockCalico, stockConflist } from "../harness/stock-cni";

requirePrivateNamespace();

interface StockRow extends GuestExpectation {
  name: string;
  file: string;
  /** Only where a plugin cannot run here: Calico's own plugin needs a datastore and felix. */
  conflist?(cni: CniSandbox): Conflist;
  needsUplink?: boolean;
  /** The node bridge has hairpin on: check the guest reaches itself through a node DNAT. */
  hairpin?: boolean;
  /** Also boot the tiny VM on this network. */
  vm?: boolean;
}

const ROWS: StockRow[] = [
  {
    name: "Flannel (bridge cni0 with hairpinMode, isDefaultGateway, MTU 1450; portmap)",
    file: "flannel.conflist",
    mtu: 1450,
    guestPrefix: 24,
    gateway: "10.244.1.1",
    extraRoutes: [/^10\.244\.0\.0\/16 via 10\.244\.1\.1 dev eth0/],
    gatewayAnswersPing: true,
    hairpin: true,
    vm: true,
  },
  {
    name: "Calico (the Calico-style plugin; portmap with snat; bandwidth)",
    file: "calico.conflist",
    conflist: (cni) => stockCalico(cni, "192.168.60.0/24"),
    mtu: 1440,
    guestPrefix: 32,
    gateway: "169.254.1.1",
    extraRoutes: [/^169\.254\.1\.1 dev eth0/],
    gatewayAnswersPing: false,
    needsUplink: true,
    vm: true,
  },
  {
    name: "kindnet (ptp + host-local, route 0.0.0.0/0; portmap)",
    file: "kindnet.conflist",
    mtu: 1500,
    guestPrefix: 32,
    gateway: "10.244.0.1",
    extraRoutes: [/^10\.244\.0\.1 dev eth0/],
    gatewayAnswersPing: true,
  },
  {
    name: "the reference bridge as containerd's and kubeadm guides set it up, hairpinMode on",
    file: "containerd-bridge.conflist",
    mtu: 1500,
    guestPrefix: 16,
    gateway: "10.88.0.1",
    extraRoutes: [],
    gatewayAnswersPing: true,
    hairpin: true,
  },
];

const SERVICE_IP = "10.96.200.1";

/**
 * kube-proxy needs br_netfilter (bridge-nf-call-iptables): with it, a DNAT back to the
 * sender's own bridge port is bridged, and only hairpin lets it out the port it came in.
 */
const BRIDGED_NAT = (() => {
  try {
    return fs.readFileSync("/proc/sys/net/bridge/bridge-nf-call-iptables", "utf8").trim() === "1";
  } catch {
    return false;
  }
})();

/**
 * What kube-proxy (iptables mode) makes of a ClusterIP with one endpoint: DNAT to the pod,
 * and masquerade when the pod is its own client, so that its reply comes back through the
 * node. In the test's netns (the node). Returns the rules' removal.
 */
function serviceTo(podIp: string): () => void {
  const rules = [
    ["PREROUTING", "-d", `${SERVICE_IP}/32`, "-j", "DNAT", "--to-destination", podIp],
    ["POSTROUTING", "-s", `${podIp}/32`, "-d", `${podIp}/32`, "-j", "MASQUERADE"],
  ];
  const iptables = (op: string, rule: string[]) =>
    execFileSync("iptables", ["-w", "-t", "nat", op, ...rule], { stdio: "pipe" });
  // At the head of the chains, as kube-proxy puts its jumps: the bridge plugin's ipMasq
  // chain accepts pod-to-subnet traffic unmasqueraded.
  for (const r of rules) iptables("-I", r);
  return () => {
    for (const r of rules) iptables("-D", r);
  };
}

for (const row of ROWS) {
  describe(`the stock ${row.name} config`, () => {
    let node: PodNode;
    before(async () => {
      node = await makePodNode({
        conflist: (cni) => (row.conflist ? row.conflist(cni) : stockConflist(row.file)),
        ...(row.needsUplink ? { needsUplink: true } : {}),
      });
    });
    after(async () => {
      await removePodNode(node);
      // The bridge plugin leaves its bridge; the next row may want the same name.
      if (ip("-j", "link", "show").includes('"ifname":"cni0"')) ip("link", "del", "cni0");
    });

    const selfThroughService = (guest: { netns: string; ip: string; pod: PodNetwork }) => {
      if (!row.hairpin) return;
      const remove = serviceTo(guest.ip);
      const port = nodeEndOf(path.basename(guest.pod.netnsPath));
      try {
        run(guest.netns, "ping", "-c", "1", "-W", "3", SERVICE_IP);
        // The path really is the hairpin one: without it on the node's port, no answer.
        if (BRIDGED_NAT) {
          ip("link", "set", "dev", port, "type", "bridge_slave", "hairpin", "off");
          assert.throws(() => run(guest.netns, "ping", "-c", "1", "-W", "1", SERVICE_IP));
        }
      } finally {
        ip("link", "set", "dev", port, "type", "bridge_slave", "hairpin", "on");
        remove();
      }
    };

    for (const kind of ["udhcpc", "dhclient", "dhcpcd"] as DhcpClientKind[]) {
      it(`gives ${kind} in a relay guest the lease, both-way reachability and a renewal`, () =>
        checkRelayGuest(node, row, kind, {
          more: selfThroughService,
        }));
    }

    if (row.vm) {
      it(
        "gives the tiny VM the lease, both-way reachability and a renewal",
        {
          skip: !guestImagesBuilt() && "test guests not built (scripts/build-test-guests.sh)",
        },
        () =>
          checkVmGuest(node, row, {
            more: async (vm, guest) => {
              if (!row.hairpin) return;
              const remove = serviceTo(guest.ip);
              try {
                const { rc } = await vm.run(`ping -c 1 -W 3 ${SERVICE_IP}`);
                assert.equal(rc, 0, "the VM reaches its own pod IP through the Service IP");
              } finally {
                remove();
              }
            },
          }),
      );
    }
  });
}
