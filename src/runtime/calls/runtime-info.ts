// RuntimeService's runtime calls: Version, Status, RuntimeConfig, UpdateRuntimeConfig.
import type { RuntimeContext } from "../context";
import type * as cri from "../cri/generated";
import { CRI_API_VERSION, RUNTIME_NAME, VMLET_VERSION } from "../version";

export class RuntimeInfoCalls {
  /** From kubelet's UpdateRuntimeConfig: only reported; the CNI config decides addresses. */
  private podCidr = "";

  constructor(private readonly ctx: RuntimeContext) {}

  version(_req: cri.VersionRequest__Output): cri.VersionResponse {
    return {
      version: "0.1.0",
      runtimeName: RUNTIME_NAME,
      runtimeVersion: VMLET_VERSION,
      runtimeApiVersion: CRI_API_VERSION,
    };
  }

  status(req: cri.StatusRequest__Output): cri.StatusResponse {
    const network = this.ctx.networks.networkStatus();
    const conditions: cri.RuntimeCondition[] = [
      { type: "RuntimeReady", status: true },
      {
        type: "NetworkReady",
        status: network.ready,
        reason: network.ready ? "" : (network.reason ?? "NetworkPluginNotReady"),
        message: network.ready ? "" : (network.message ?? "the pod network is not ready"),
      },
    ];
    const info: Record<string, string> = req.verbose
      ? {
          config: JSON.stringify({
            accel: this.ctx.accel,
            stateDir: this.ctx.store.dir,
            podCidr: this.podCidr,
          }),
        }
      : {};
    return {
      status: { conditions },
      info,
      runtimeHandlers: [
        { name: "", features: { recursiveReadOnlyMounts: false, userNamespaces: false } },
      ],
      features: { supplementalGroupsPolicy: false },
    };
  }

  runtimeConfig(_req: cri.RuntimeConfigRequest__Output): cri.RuntimeConfigResponse {
    return {
      linux: { cgroupDriver: this.ctx.cgroupDriver === "systemd" ? "SYSTEMD" : "CGROUPFS" },
    };
  }

  updateRuntimeConfig(
    req: cri.UpdateRuntimeConfigRequest__Output,
  ): cri.UpdateRuntimeConfigResponse {
    const cidr = req.runtimeConfig?.networkConfig?.podCidr ?? "";
    if (cidr !== this.podCidr) {
      this.ctx.logger.info(
        { podCidr: cidr },
        "pod CIDR from kubelet (the CNI config decides addresses)",
      );
      this.podCidr = cidr;
    }
    return {};
  }
}
