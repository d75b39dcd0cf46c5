// The CNI capability args of a pod, from its sandbox config as kubelet sends it: host
// ports (portMappings), DNS, and the bandwidth annotations (bandwidth), converted the way
// containerd's CRI plugin does, so a cluster's conflist sees the same runtimeConfig.
import type { RuntimeConfig } from "../cni-bridge/cni/runtime-config";
import { parseQuantity } from "../util/quantity";
import type * as cri from "./cri/generated";
import { invalidArgument } from "./errors";

export const ANNOTATION_INGRESS_BANDWIDTH = "kubernetes.io/ingress-bandwidth";
export const ANNOTATION_EGRESS_BANDWIDTH = "kubernetes.io/egress-bandwidth";

/** containerd's burst with a rate (math.MaxUint32 bits): tbf gets the largest bucket. */
const BANDWIDTH_BURST_BITS = 0xffffffff;
/** The bounds kubelet holds bandwidth annotations to (pkg/util/bandwidth): 1k to 1P bit/s. */
const MIN_BANDWIDTH = 1e3;
const MAX_BANDWIDTH = 1e15;

function bandwidthAnnotation(
  annotations: Record<string, string>,
  key: string,
  pod: string,
): number | undefined {
  const text = annotations[key];
  if (text === undefined) return undefined;
  const bits = parseQuantity(text);
  if (bits === undefined) {
    throw invalidArgument(
      `RunPodSandbox ${pod}: annotation ${key} ${JSON.stringify(text)} is not a quantity (bits per second, e.g. 10M)`,
    );
  }
  if (bits < MIN_BANDWIDTH || bits > MAX_BANDWIDTH) {
    throw invalidArgument(
      `RunPodSandbox ${pod}: annotation ${key} ${JSON.stringify(text)} is out of range (1k to 1P bits per second)`,
    );
  }
  return bits;
}

/** runtimeConfig.bandwidth from the pod's annotations, in bits per second. */
export function bandwidthFromAnnotations(
  annotations: Record<string, string>,
  pod: string,
): RuntimeConfig["bandwidth"] {
  const ingress = bandwidthAnnotation(annotations, ANNOTATION_INGRESS_BANDWIDTH, pod);
  const egress = bandwidthAnnotation(annotations, ANNOTATION_EGRESS_BANDWIDTH, pod);
  if (ingress === undefined && egress === undefined) return undefined;
  return {
    ...(ingress === undefined ? {} : { ingressRate: ingress, ingressBurst: BANDWIDTH_BURST_BITS }),
    ...(egress === undefined ? {} : { egressRate: egress, egressBurst: BANDWIDTH_BURST_BITS }),
  };
}

/** CNI capability args from the sandbox config; a bad annotation is INVALID_ARGUMENT. */
export function cniCapabilities(config: cri.PodSandboxConfig__Output, pod: string): RuntimeConfig {
  const portMappings = config.portMappings
    .filter((p) => p.hostPort > 0)
    .map((p) => ({
      hostPort: p.hostPort,
      containerPort: p.containerPort,
      protocol: p.protocol.toLowerCase() as "tcp" | "udp" | "sctp",
      ...(p.hostIp ? { hostIP: p.hostIp } : {}),
    }));
  const dns = config.dnsConfig
    ? {
        servers: config.dnsConfig.servers,
        searches: config.dnsConfig.searches,
        options: config.dnsConfig.options,
      }
    : undefined;
  const bandwidth = bandwidthFromAnnotations(config.annotations, pod);
  return {
    ...(portMappings.length > 0 ? { portMappings } : {}),
    ...(dns ? { dns } : {}),
    ...(bandwidth ? { bandwidth } : {}),
  };
}
