// The three pod network styles the tests run on, as their CNI configs and what a guest on
// each must be told: Flannel-style (bridge + host-local), ptp, and Calico-style (/32,
// 169.254.1.1 on-link, proxy ARP from the fixture plugin); and their dual-stack forms
// (Flannel-style dual ranges, ptp dual-stack, Calico-style /128 via fe80::1).
import { calicoPluginInto } from "./calico-plugin";
import { type CniSandbox, hostLocal } from "./cni-fixtures";
import { uniqueName } from "./fixtures";
import { DNS, type GuestExpectation } from "./pod-node";

export interface NetworkStyle extends GuestExpectation {
  name: string;
  conflist(cni: CniSandbox): unknown;
  /** The node's uplink with a default route: proxy ARP answers only for routable targets. */
  needsUplink?: boolean;
}

export const NETWORK_STYLES: NetworkStyle[] = [
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

export interface DualStackStyle {
  name: string;
  conflist(cni: CniSandbox): unknown;
  needsUplink?: boolean;
  mtu: number;
  /** Whether the netns had the IPv6 prefix on-link (the RA then carries it). */
  onLink: boolean;
}

const dualRanges = (cni: CniSandbox, v4: string, v6: string) => ({
  type: "host-local",
  dataDir: cni.dataDir,
  ranges: [[{ subnet: v4 }], [{ subnet: v6 }]],
  routes: [{ dst: "0.0.0.0/0" }, { dst: "::/0" }],
});

export const DUAL_STACK_STYLES: DualStackStyle[] = [
  {
    name: "Flannel-style dual-stack (bridge + host-local dual ranges)",
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
          ipam: dualRanges(cni, "10.244.1.0/24", "fd00:10:244:1::/64"),
        },
      ],
    }),
    mtu: 1450,
    onLink: true,
  },
  {
    name: "ptp dual-stack",
    conflist: (cni) => ({
      cniVersion: "1.0.0",
      name: "ptpnet",
      plugins: [
        {
          type: "ptp",
          ipMasq: false,
          mtu: 1500,
          ipam: dualRanges(cni, "10.71.0.0/16", "fd00:10:71::/64"),
        },
      ],
    }),
    mtu: 1500,
    onLink: false,
  },
  {
    name: "Calico-style dual-stack (/128, fe80::1 gateway)",
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
            ranges: [[{ subnet: "192.168.50.0/24" }], [{ subnet: "fd00:192:168:50::/64" }]],
          },
        },
      ],
    }),
    mtu: 1440,
    onLink: false,
    needsUplink: true,
  },
];
/**
 * Flannel-style dual-stack: the bridge plugin with host-local dual ranges (a /24 and a
 * /64, both on-link on the bridge, which is the gateway of each), MTU 1450.
 */
export const FLANNEL_DUAL_STACK = {
  ...DUAL_STACK_STYLES[0]!,
  gateway4: "10.244.1.1",
  prefix6: "fd00:10:244:1::/64",
};
