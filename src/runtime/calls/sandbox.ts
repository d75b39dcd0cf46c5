// RuntimeService's sandbox calls: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
// PodSandboxStatus, ListPodSandbox. A sandbox is the pod's network (the tapmanager);
// it is recorded `creating` before anything is built, so a crash leaves nothing unknown.
import fs from "node:fs";
import type { Logger } from "pino";
import { errorMessage } from "../../util/errors";
import { KeyedLock } from "../../util/keyed-lock";
import { cniCapabilities } from "../cni-capabilities";
import {
  containersOf,
  fallbackLogDir,
  mustSandbox,
  newId,
  type RuntimeContext,
  required,
  sandboxLog,
} from "../context";
import {
  containerStatusMessage,
  matchesId,
  matchesLabels,
  nowNs,
  podIps,
  sandboxMessage,
  sandboxStatusMessage,
} from "../convert";
import type * as cri from "../cri/generated";
import { CriError, invalidArgument } from "../errors";
import { allowedSourcePrefixes } from "../net-annotations";
import type { SandboxRecord } from "../store/records";
import type { ContainerCalls } from "./container";

export class SandboxCalls {
  /** RunPodSandbox by pod attempt (namespace, name, uid, attempt). */
  private readonly attemptLock = new KeyedLock();

  constructor(
    private readonly ctx: RuntimeContext,
    private readonly containers: ContainerCalls,
  ) {}

  async runPodSandbox(req: cri.RunPodSandboxRequest__Output): Promise<cri.RunPodSandboxResponse> {
    const config = req.config;
    if (!config) throw invalidArgument("RunPodSandbox: config is required");
    const md = config.metadata;
    if (!md) throw invalidArgument("RunPodSandbox: config.metadata is required");
    for (const field of ["name", "namespace", "uid"] as const) {
      if (!md[field]) throw invalidArgument(`RunPodSandbox: config.metadata.${field} is required`);
    }
    const pod = `${md.namespace}/${md.name}`;
    if (req.runtimeHandler !== "") {
      throw invalidArgument(
        `RunPodSandbox ${pod}: unknown runtime handler ${JSON.stringify(req.runtimeHandler)}`,
      );
    }
    if (config.linux?.securityContext?.namespaceOptions?.network === "NODE") {
      throw invalidArgument(
        `RunPodSandbox ${pod}: hostNetwork pods are not supported: a VM pod has its own network`,
      );
    }
    // One call per pod attempt at a time: a duplicate sees the first one's sandbox, and
    // a pod attempt never gets two networks.
    const attemptKey = JSON.stringify([md.namespace, md.name, md.uid, md.attempt]);
    return this.attemptLock.run(attemptKey, () => this.runLocked(req, config, md, pod));
  }

  private async runLocked(
    req: cri.RunPodSandboxRequest__Output,
    config: cri.PodSandboxConfig__Output,
    md: cri.PodSandboxMetadata__Output,
    pod: string,
  ): Promise<cri.RunPodSandboxResponse> {
    const { store, lock, creating } = this.ctx;
    // Checked before anything is recorded: a bad annotation leaves nothing behind.
    const capabilities = cniCapabilities(config, pod);
    const allowedPrefixes = allowedSourcePrefixes(config.annotations ?? {});
    await this.finishEarlierAttempt(md, pod);

    const id = newId();
    const log = this.ctx.logger.child({ pod, podSandboxId: id });
    const record: SandboxRecord = {
      id,
      phase: "creating",
      createdAt: nowNs(),
      metadata: { name: md.name, uid: md.uid, namespace: md.namespace, attempt: md.attempt },
      hostname: config.hostname || md.name,
      logDirectory: config.logDirectory,
      labels: config.labels,
      annotations: config.annotations,
      runtimeHandler: req.runtimeHandler,
      ips: [],
    };
    // Recorded before anything is built: a crash from here on is cleaned up by recover().
    creating.add(id);
    try {
      await store.sandboxes.put(record);
    } catch (error) {
      creating.delete(id);
      throw error;
    }
    return lock.run(id, async () => {
      try {
        const network = await this.ctx.networks.setUp({
          pod: { namespace: md.namespace, name: md.name, uid: md.uid, sandboxId: id },
          hostname: record.hostname,
          capabilities,
          ...(allowedPrefixes.length > 0 ? { allowedSourcePrefixes: allowedPrefixes } : {}),
          dns: config.dnsConfig
            ? { servers: config.dnsConfig.servers, searches: config.dnsConfig.searches }
            : undefined,
        });
        await store.sandboxes.put({ ...record, phase: "ready", ips: podIps(network) });
        log.info({ ips: podIps(network) }, "pod sandbox ready");
        return { podSandboxId: id };
      } catch (error) {
        const cleaned = await this.undo(id, log);
        throw new CriError(
          "UNKNOWN",
          `RunPodSandbox ${pod}: set up network: ${errorMessage(error)}; ${cleaned}`,
          { cause: error },
        );
      } finally {
        creating.delete(id);
      }
    });
  }

  /**
   * A sandbox of the same pod attempt: ALREADY_EXISTS, unless a RunPodSandbox whose
   * cleanup failed left it half-made (kubelet never learnt its id); that one is finished
   * off now, and the call makes the sandbox anew.
   */
  private async finishEarlierAttempt(
    md: cri.PodSandboxMetadata__Output,
    pod: string,
  ): Promise<void> {
    const same = this.ctx.store.sandboxes
      .list()
      .find(
        (s) =>
          s.metadata.uid === md.uid &&
          s.metadata.namespace === md.namespace &&
          s.metadata.name === md.name &&
          s.metadata.attempt === md.attempt,
      );
    if (!same) return;
    if (same.phase !== "creating") {
      throw new CriError(
        "ALREADY_EXISTS",
        `RunPodSandbox ${pod}: attempt ${md.attempt} exists as sandbox ${same.id}`,
      );
    }
    await this.ctx.lock.run(same.id, async () => {
      if (this.ctx.store.sandboxes.get(same.id)?.phase !== "creating") return;
      const log = sandboxLog(this.ctx, same);
      const cleaned = await this.undo(same.id, log);
      log.warn(`half-made sandbox of the same pod attempt: ${cleaned}`);
      if (this.ctx.store.sandboxes.has(same.id)) {
        throw new CriError(
          "UNKNOWN",
          `RunPodSandbox ${pod}: attempt ${md.attempt}: the half-made sandbox of an earlier call could not be torn down: ${cleaned}`,
        );
      }
    });
  }

  async stopPodSandbox(
    req: cri.StopPodSandboxRequest__Output,
  ): Promise<cri.StopPodSandboxResponse> {
    const id = required(req.podSandboxId, "StopPodSandbox", "pod_sandbox_id");
    // Idempotent, as kubelet retries: a sandbox already gone is stopped.
    if (!this.ctx.store.sandboxes.has(id)) return {};
    await this.ctx.lock.run(id, () => this.stopLocked(id));
    return {};
  }

  async removePodSandbox(
    req: cri.RemovePodSandboxRequest__Output,
  ): Promise<cri.RemovePodSandboxResponse> {
    const id = required(req.podSandboxId, "RemovePodSandbox", "pod_sandbox_id");
    const { store } = this.ctx;
    if (!store.sandboxes.has(id)) return {};
    await this.ctx.lock.run(id, async () => {
      const sandbox = store.sandboxes.get(id);
      if (!sandbox) return;
      await this.stopLocked(id);
      for (const c of containersOf(this.ctx, id)) await this.containers.removeLocked(c.id);
      // Logs are kubelet's when it gave a log directory; without one they were ours.
      if (!sandbox.logDirectory) {
        await fs.promises.rm(fallbackLogDir(this.ctx, id), { recursive: true, force: true });
      }
      await store.sandboxes.delete(id);
      sandboxLog(this.ctx, sandbox).info("pod sandbox removed");
    });
    return {};
  }

  podSandboxStatus(req: cri.PodSandboxStatusRequest__Output): cri.PodSandboxStatusResponse {
    const sandbox = mustSandbox(this.ctx, req.podSandboxId, "PodSandboxStatus");
    const info: Record<string, string> = {};
    if (req.verbose) {
      const network = this.ctx.networks.get(sandbox.id);
      info.info = JSON.stringify({ phase: sandbox.phase, hostname: sandbox.hostname, network });
    }
    return {
      status: sandboxStatusMessage(sandbox),
      info,
      containersStatuses: containersOf(this.ctx, sandbox.id).map(containerStatusMessage),
      timestamp: nowNs(),
    };
  }

  listPodSandbox(req: cri.ListPodSandboxRequest__Output): cri.ListPodSandboxResponse {
    const f = req.filter;
    const items = this.ctx.store.sandboxes
      .list()
      .filter((s) => s.phase !== "creating")
      .map(sandboxMessage)
      .filter(
        (s) =>
          matchesId(s.id ?? "", f?.id) &&
          (!f?.state || s.state === f.state.state) &&
          matchesLabels(s.labels ?? {}, f?.labelSelector),
      );
    return { items };
  }

  /**
   * Tears down whatever part of the sandbox's network exists, then forgets the sandbox;
   * says what it did. A failed teardown keeps the `creating` record, so that the
   * reaper and the next start retry it: nothing is leaked unrecorded.
   */
  async undo(id: string, log: Logger): Promise<string> {
    try {
      await this.ctx.networks.tearDown(id);
    } catch (error) {
      log.error({ err: error }, "tear down network failed");
      return `cleanup failed: network teardown: ${errorMessage(error)}; sandbox ${id} kept unlisted to retry the teardown`;
    }
    try {
      await this.ctx.store.sandboxes.delete(id);
    } catch (error) {
      return `cleaned up: network torn down; record removal failed (${errorMessage(error)})`;
    }
    return "cleaned up: network torn down, record removed";
  }

  /** Stops the pod's VM, then tears down its network; the caller holds the pod lock. */
  private async stopLocked(id: string): Promise<void> {
    const sandbox = this.ctx.store.sandboxes.get(id);
    if (!sandbox) return;
    const log = sandboxLog(this.ctx, sandbox);
    // CRI: running containers of a stopped sandbox are forcibly terminated.
    for (const c of containersOf(this.ctx, id)) await this.containers.stopLocked(c.id, 0);
    // Read before the network goes: what the guest tried to send that it may not.
    const drops = this.ctx.networks.dropCounts?.(id);
    try {
      await this.ctx.networks.tearDown(id);
    } catch (error) {
      throw new CriError(
        "UNKNOWN",
        `StopPodSandbox ${sandbox.metadata.namespace}/${sandbox.metadata.name} (${id}): tear down network: ${errorMessage(error)}; the VM is stopped, retry to finish`,
        { cause: error },
      );
    }
    if (drops)
      log.info({ drops: drops.total, byInterface: drops.interfaces }, "guest isolation drops");
    if (sandbox.phase !== "stopped") {
      await this.ctx.store.sandboxes.put({ ...sandbox, phase: "stopped" });
      log.info("pod sandbox stopped");
    }
  }
}
