// What the tapmanager gives the rest of vmlet: a pod's network as built, and the taps
// a VM needs. The persisted form of PodNetwork is the "container side network".
import type { PodRef } from "../cni-bridge/cni";
import type { RuntimeConfig } from "../cni-bridge/cni/runtime-config";
import type { DropCounts } from "../guard/guard";
import type { Ipv4Route } from "../util/ip";

export type { PodRef };

export interface PodNetworkRequest {
  pod: PodRef;
  /** Network names for eth0, net1, ...; the node's default network when absent. */
  networks?: string[];
  /** CNI capability args (portMappings, dns, ...). */
  capabilities?: RuntimeConfig;
  /** kubelet's DNS config for the pod (PodSandboxConfig.dns_config); wins over CNI's. */
  dns?: { servers: string[]; searches: string[] };
  /** DHCP option 12; the pod name when absent. */
  hostname?: string;
  /**
   * Source prefixes the guest may send from beyond its own addresses, on every NIC
   * (an NFV pod that routes, or holds extra addresses).
   */
  allowedSourcePrefixes?: IpAddress[];
}

export interface IpAddress {
  family: 4 | 6;
  address: string;
  prefixLength: number;
}

/** One NIC of the VM: a tap on a bridge with the veth that CNI made. */
export interface PodInterface {
  /** The CNI interface name (eth0, net1, ...). */
  ifname: string;
  network: string;
  bridge: string;
  tap: string;
  /** The MAC CNI gave the pod; the guest takes it. */
  guestMac: string;
  mtu: number;
  /** Addresses as CNI and the netns gave them; IPv4 ones are served by DHCP. */
  addresses: IpAddress[];
  /** The IPv4 router the guest gets (option 3). */
  gateway?: string;
  /** The IPv4 routes the guest gets (option 121), default route included. */
  routes: Ipv4Route[];
  dns: { nameservers: string[]; search: string[]; domain?: string };
}

export interface PodNetwork {
  pod: PodRef;
  netnsPath: string;
  hostname: string;
  interfaces: PodInterface[];
}

/** What a pod's guest isolation dropped, by reason: in total and per NIC. */
export interface PodDrops {
  total: DropCounts;
  interfaces: { ifname: string; drops: DropCounts }[];
}

/** A tap opened for a VM: pass `fd` to QEMU and close it here once QEMU has it. */
export interface OpenedTap {
  ifname: string;
  tap: string;
  fd: number;
  guestMac: string;
  mtu: number;
}
