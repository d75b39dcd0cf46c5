// The tapmanager end to end: for each network style and each real DHCP client (in a relay
// guest behind the pod's tap, and in a tiny VM on it), the guest's lease equals what CNI
// gave the pod, it reaches its gateway and a second pod, the second pod reaches it, and a
// renewal and a rebind are answered.
import { after, before, describe, it } from "node:test";
import { calicoPluginInto } from "../harness/calico-plugin";
import { type CniSandbox, hostLocal } from "../harness/cni-fixtures";
import { requirePrivateNamespace, uniqueName } from "../harness/fixtures";
import type { DhcpClientKind } from "../harness/guest-clients";
import { guestImagesBuilt } from "../harness/guest-vm";
import {
  checkRelayGuest,
  checkVmGuest,
  DNS,
  type GuestExpectation,
  makePodNode,
  type PodNode,
  removePodNode,
} from "../harness/pod-node";

requirePrivateNamespace();

interface NetworkStyle extends GuestExpectation {
  name: string;
  conflist(cni: CniSandbox): unknown;
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

for (const style of STYLES) {
  describe(`a pod on a ${style.name} network`, () => {
    let node: PodNode;
    before(async () => {
      node = await makePodNode(style);
    });
    after(async () => {
      await removePodNode(node);
    });

    for (const kind of ["udhcpc", "dhclient", "dhcpcd"] as DhcpClientKind[]) {
      it(`gives ${kind} in a relay guest the CNI lease, reachability, renewal and rebind`, () =>
        checkRelayGuest(node, style, kind, { rebind: true }));
    }

    it(
      "gives a tiny VM (udhcpc with Debian's stock script) the CNI lease, reachability, renewal and rebind",
      {
        skip: !guestImagesBuilt() && "test guests not built (scripts/build-test-guests.sh)",
      },
      () => checkVmGuest(node, style, { rebind: true }),
    );
  });
}
