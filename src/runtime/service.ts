// The CRI runtime: every RuntimeService and ImageService call, in CRI's own message
// types, over the state store, the image store, the pod networks and the VM launcher.
// One VM per pod: the pod's one container is the VM.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import type { Logger } from "pino";
import { KeyedLock } from "../util/keyed-lock";
import { cniCapabilities } from "./cni-capabilities";
import {
  containerMessage,
  containerStatusMessage,
  imageMessage,
  matchesId,
  matchesLabels,
  nowNs,
  podIps,
  sandboxMessage,
  sandboxStatusMessage,
  toNs,
} from "./convert";
import type * as cri from "./cri/generated";
import { CriError, errorMessage, failedPrecondition, invalidArgument, notFound } from "./errors";
import { type ImageStore, imageId, repoDigests } from "./images/image-store";
import { containerLogPath, makeLogDirs } from "./log-path";
import { allowedSourcePrefixes } from "./net-annotations";
import type { StateStore } from "./store";
import type { ContainerRecord, SandboxRecord } from "./store/records";
import type { StreamLookups } from "./streaming/cri-calls";
import type {
  Accel,
  CloudInitFile,
  OpenedTap,
  PodNetworks,
  VmExit,
  VmHandle,
  VmLauncher,
  VmSpec,
} from "./types";
import { CRI_API_VERSION, RUNTIME_NAME, VMLET_VERSION } from "./version";
import {
  GuestAgentCommandError,
  GuestAgentUnavailableError,
  GuestExecCancelledError,
  GuestExecTimeoutError,
} from "./vm/guest-agent";
import { ANNOTATION_USER_DATA, filesFromMount, isCopiedVolume, sshKeys, vmSize } from "./vm-config";

export type CgroupDriver = "systemd" | "cgroupfs";

export interface VmRuntimeOptions {
  store: StateStore;
  images: ImageStore;
  networks: PodNetworks;
  launcher: VmLauncher;
  logger: Logger;
  accel: Accel;
  /** What RuntimeConfig tells kubelet; vmlet makes no cgroups of its own. */
  cgroupDriver?: CgroupDriver;
}

interface Running {
  handle: VmHandle;
  /** The VM's exit; a rejected `handle.exited` becomes an Error exit. */
  exited: Promise<VmExit>;
}

/** Exit code and reason of a VM whose start failed or that vanished while vmlet was down. */
const START_ERROR_EXIT = 128;
const UNKNOWN_EXIT = 255;
/** ExecSync with timeout 0 and no call deadline: the most it may hold the agent's channel. */
const EXEC_TIMEOUT_CAP_MS = 120_000;
/** 128 + SIGKILL, as a shell reports a killed process. */
const KILLED_EXIT = 137;

export class VmRuntime {
  private readonly store: StateStore;
  private readonly images: ImageStore;
  private readonly networks: PodNetworks;
  private readonly launcher: VmLauncher;
  private readonly logger: Logger;
  private readonly accel: Accel;
  private readonly cgroupDriver: CgroupDriver;
  private readonly vmDir: string;
  private readonly lock = new KeyedLock();
  /** RunPodSandbox by pod attempt (namespace, name, uid, attempt). */
  private readonly attemptLock = new KeyedLock();
  private readonly running = new Map<string, Running>();
  private readonly cpuSamples = new Map<string, { atNs: bigint; cpuNanos: bigint }>();
  private podCidr = "";
  /** Sandboxes inside RunPodSandbox: the reaper leaves them alone. */
  private readonly creating = new Set<string>();
  private reaper: NodeJS.Timeout | undefined;
  private readopting = false;
  /** Let go of the VMs (vmlet stopping): nothing is adopted any more. */
  private detached = false;

  constructor(options: VmRuntimeOptions) {
    this.store = options.store;
    this.images = options.images;
    this.networks = options.networks;
    this.launcher = options.launcher;
    this.logger = options.logger;
    this.accel = options.accel;
    this.cgroupDriver = options.cgroupDriver ?? "systemd";
    this.vmDir = path.join(options.store.dir, "vms");
  }

  // ---- runtime ----

  version(_req: cri.VersionRequest__Output): cri.VersionResponse {
    return {
      version: "0.1.0",
      runtimeName: RUNTIME_NAME,
      runtimeVersion: VMLET_VERSION,
      runtimeApiVersion: CRI_API_VERSION,
    };
  }

  status(req: cri.StatusRequest__Output): cri.StatusResponse {
    const network = this.networks.networkStatus();
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
            accel: this.accel,
            stateDir: this.store.dir,
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
    return { linux: { cgroupDriver: this.cgroupDriver === "systemd" ? "SYSTEMD" : "CGROUPFS" } };
  }

  updateRuntimeConfig(
    req: cri.UpdateRuntimeConfigRequest__Output,
  ): cri.UpdateRuntimeConfigResponse {
    const cidr = req.runtimeConfig?.networkConfig?.podCidr ?? "";
    if (cidr !== this.podCidr) {
      this.logger.info(
        { podCidr: cidr },
        "pod CIDR from kubelet (the CNI config decides addresses)",
      );
      this.podCidr = cidr;
    }
    return {};
  }

  // ---- sandboxes ----

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
    return this.attemptLock.run(attemptKey, () => this.runPodSandboxLocked(req, config, md, pod));
  }

  private async runPodSandboxLocked(
    req: cri.RunPodSandboxRequest__Output,
    config: cri.PodSandboxConfig__Output,
    md: cri.PodSandboxMetadata__Output,
    pod: string,
  ): Promise<cri.RunPodSandboxResponse> {
    // Checked before anything is recorded: a bad annotation leaves nothing behind.
    const capabilities = cniCapabilities(config, pod);
    const allowedPrefixes = allowedSourcePrefixes(config.annotations ?? {});
    const same = this.store.sandboxes
      .list()
      .find(
        (s) =>
          s.metadata.uid === md.uid &&
          s.metadata.namespace === md.namespace &&
          s.metadata.name === md.name &&
          s.metadata.attempt === md.attempt,
      );
    if (same?.phase === "creating") {
      // Left by a RunPodSandbox whose cleanup failed: kubelet never learnt its id, so it
      // is finished off now, and this call makes the sandbox anew.
      await this.lock.run(same.id, async () => {
        if (this.store.sandboxes.get(same.id)?.phase !== "creating") return;
        const log = this.sandboxLog(same);
        const cleaned = await this.undoSandbox(same.id, log);
        log.warn(`half-made sandbox of the same pod attempt: ${cleaned}`);
        if (this.store.sandboxes.has(same.id)) {
          throw new CriError(
            "UNKNOWN",
            `RunPodSandbox ${pod}: attempt ${md.attempt}: the half-made sandbox of an earlier call could not be torn down: ${cleaned}`,
          );
        }
      });
    } else if (same) {
      throw new CriError(
        "ALREADY_EXISTS",
        `RunPodSandbox ${pod}: attempt ${md.attempt} exists as sandbox ${same.id}`,
      );
    }

    const id = newId();
    const log = this.logger.child({ pod, podSandboxId: id });
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
    this.creating.add(id);
    try {
      await this.store.sandboxes.put(record);
    } catch (error) {
      this.creating.delete(id);
      throw error;
    }
    return this.lock.run(id, async () => {
      try {
        const network = await this.networks.setUp({
          pod: { namespace: md.namespace, name: md.name, uid: md.uid, sandboxId: id },
          hostname: record.hostname,
          capabilities,
          ...(allowedPrefixes.length > 0 ? { allowedSourcePrefixes: allowedPrefixes } : {}),
          dns: config.dnsConfig
            ? { servers: config.dnsConfig.servers, searches: config.dnsConfig.searches }
            : undefined,
        });
        await this.store.sandboxes.put({ ...record, phase: "ready", ips: podIps(network) });
        log.info({ ips: podIps(network) }, "pod sandbox ready");
        return { podSandboxId: id };
      } catch (error) {
        const cleaned = await this.undoSandbox(id, log);
        throw new CriError(
          "UNKNOWN",
          `RunPodSandbox ${pod}: set up network: ${errorMessage(error)}; ${cleaned}`,
          { cause: error },
        );
      } finally {
        this.creating.delete(id);
      }
    });
  }

  async stopPodSandbox(
    req: cri.StopPodSandboxRequest__Output,
  ): Promise<cri.StopPodSandboxResponse> {
    const id = required(req.podSandboxId, "StopPodSandbox", "pod_sandbox_id");
    // Idempotent, as kubelet retries: a sandbox already gone is stopped.
    if (!this.store.sandboxes.has(id)) return {};
    await this.lock.run(id, () => this.stopSandboxLocked(id));
    return {};
  }

  async removePodSandbox(
    req: cri.RemovePodSandboxRequest__Output,
  ): Promise<cri.RemovePodSandboxResponse> {
    const id = required(req.podSandboxId, "RemovePodSandbox", "pod_sandbox_id");
    if (!this.store.sandboxes.has(id)) return {};
    await this.lock.run(id, async () => {
      const sandbox = this.store.sandboxes.get(id);
      if (!sandbox) return;
      await this.stopSandboxLocked(id);
      for (const c of this.containersOf(id)) await this.removeContainerLocked(c.id);
      // Logs are kubelet's when it gave a log directory; without one they were ours.
      if (!sandbox.logDirectory) {
        await fs.promises.rm(this.fallbackLogDir(id), { recursive: true, force: true });
      }
      await this.store.sandboxes.delete(id);
      this.sandboxLog(sandbox).info("pod sandbox removed");
    });
    return {};
  }

  /** Where container logs go for a sandbox that kubelet gave no log directory. */
  private fallbackLogDir(sandboxId: string): string {
    return path.join(this.store.dir, "logs", sandboxId);
  }

  podSandboxStatus(req: cri.PodSandboxStatusRequest__Output): cri.PodSandboxStatusResponse {
    const sandbox = this.mustSandbox(req.podSandboxId, "PodSandboxStatus");
    const info: Record<string, string> = {};
    if (req.verbose) {
      const network = this.networks.get(sandbox.id);
      info.info = JSON.stringify({ phase: sandbox.phase, hostname: sandbox.hostname, network });
    }
    return {
      status: sandboxStatusMessage(sandbox),
      info,
      containersStatuses: this.containersOf(sandbox.id).map(containerStatusMessage),
      timestamp: nowNs(),
    };
  }

  listPodSandbox(req: cri.ListPodSandboxRequest__Output): cri.ListPodSandboxResponse {
    const f = req.filter;
    const items = this.store.sandboxes
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

  // ---- containers ----

  async createContainer(
    req: cri.CreateContainerRequest__Output,
  ): Promise<cri.CreateContainerResponse> {
    const sandboxId = required(req.podSandboxId, "CreateContainer", "pod_sandbox_id");
    const config = req.config;
    if (!config) throw invalidArgument("CreateContainer: config is required");
    if (!config.metadata?.name)
      throw invalidArgument("CreateContainer: config.metadata.name is required");
    if (!config.image?.image)
      throw invalidArgument("CreateContainer: config.image.image is required");
    const imageSpec = config.image.image;
    const name = config.metadata.name;
    const attempt = config.metadata.attempt;
    return this.lock.run(sandboxId, async () => {
      const sandbox = this.store.sandboxes.get(sandboxId);
      if (!sandbox || sandbox.phase === "creating") {
        throw notFound(`CreateContainer ${name}: pod sandbox ${sandboxId} not found`);
      }
      const where = `CreateContainer ${sandbox.metadata.namespace}/${sandbox.metadata.name}/${name}`;
      if (sandbox.phase !== "ready")
        throw failedPrecondition(`${where}: pod sandbox ${sandboxId} is stopped`);
      // One VM per pod: a restart of the same container (a new attempt after the last
      // one exited) is fine, a second container or a second live attempt is not.
      for (const other of this.containersOf(sandboxId)) {
        if (other.metadata.name !== name) {
          throw failedPrecondition(
            `${where}: pod already has container ${other.metadata.name} (${other.id}); vmlet runs one VM, so one container, per pod`,
          );
        }
        if (other.phase !== "exited") {
          throw failedPrecondition(
            `${where}: container ${other.id} of this pod is still ${other.phase}`,
          );
        }
      }
      const image = this.images.find(imageSpec);
      if (!image) throw notFound(`${where}: image ${imageSpec} not found: pull it first`);
      let size: ReturnType<typeof vmSize>;
      try {
        size = vmSize(
          { ...sandbox.annotations, ...config.annotations },
          config.linux?.resources ?? undefined,
        );
      } catch (error) {
        throw invalidArgument(`${where}: ${errorMessage(error)}`);
      }
      const id = newId();
      const dir = vmDirFor(this.vmDir, id);
      const logPath = config.logPath
        ? containerLogPath(
            where,
            sandbox.logDirectory || this.fallbackLogDir(sandboxId),
            config.logPath,
          )
        : path.join(dir, "console.log");
      const record: ContainerRecord = {
        id,
        sandboxId,
        phase: "created",
        metadata: { name, attempt },
        image: {
          // kubelet creates containers by image id; status shows the name the user wrote.
          spec: isImageId(imageSpec, image.id)
            ? config.image?.userSpecifiedImage || image.repoTags[0] || imageSpec
            : imageSpec,
          id: image.id,
          ref: repoDigests(image)[0] ?? imageId(image),
        },
        createdAt: nowNs(),
        startedAt: "0",
        finishedAt: "0",
        exitCode: 0,
        reason: "",
        message: "",
        labels: config.labels,
        annotations: config.annotations,
        logPath,
        dir,
        vcpus: size.vcpus,
        memoryMiB: size.memoryMiB,
        mounts: config.mounts.map((m) => ({
          containerPath: m.containerPath,
          hostPath: m.hostPath,
          readonly: m.readonly,
        })),
      };
      await this.store.containers.put(record);
      try {
        await fs.promises.mkdir(dir, { recursive: true, mode: 0o700 });
      } catch (error) {
        await this.store.containers.delete(id);
        throw new CriError(
          "INTERNAL",
          `${where}: create ${dir}: ${errorMessage(error)}; record removed`,
        );
      }
      this.containerLog(record).info({ image: imageSpec, ...size }, "container created");
      return { containerId: id };
    });
  }

  async startContainer(
    req: cri.StartContainerRequest__Output,
  ): Promise<cri.StartContainerResponse> {
    const first = this.mustContainer(req.containerId, "StartContainer");
    await this.lock.run(first.sandboxId, async () => {
      const record = this.mustContainer(first.id, "StartContainer");
      const where = `StartContainer ${record.id}`;
      if (record.phase !== "created")
        throw failedPrecondition(`${where}: container is ${record.phase}, not created`);
      const sandbox = this.store.sandboxes.get(record.sandboxId);
      if (sandbox?.phase !== "ready")
        throw failedPrecondition(`${where}: pod sandbox ${record.sandboxId} is not ready`);
      const image = this.images.find(record.image.id);
      if (!image) throw failedPrecondition(`${where}: image sha256:${record.image.id} was removed`);
      const annotations = { ...sandbox.annotations, ...record.annotations };
      const log = this.containerLog(record);

      await this.store.containers.put({ ...record, phase: "starting" });
      let taps: OpenedTap[] = [];
      let handle: VmHandle;
      try {
        const files: CloudInitFile[] = record.mounts
          .filter((m) => isCopiedVolume(m.hostPath))
          .flatMap(filesFromMount);
        await this.images.verify(image).catch((error: unknown) => {
          throw failedPrecondition(`image sha256:${image.id}: ${errorMessage(error)}`);
        });
        taps = this.networks.openTaps(record.sandboxId);
        const logDirectory = sandbox.logDirectory || this.fallbackLogDir(record.sandboxId);
        await makeLogDirs(where, logDirectory, record.logPath);
        const spec: VmSpec = {
          id: record.id,
          dir: record.dir,
          baseImage: { path: this.images.blobPath(image), format: image.format },
          vcpus: record.vcpus,
          memoryMiB: record.memoryMiB,
          accel: this.accel,
          taps,
          cloudInit: {
            instanceId: record.id,
            hostname: sandbox.hostname,
            userData: annotations[ANNOTATION_USER_DATA],
            sshKeys: sshKeys(annotations),
            files,
          },
          logPath: record.logPath,
        };
        handle = await this.launcher.start(spec);
      } catch (error) {
        await this.store.containers.put({
          ...record,
          phase: "exited",
          exitCode: START_ERROR_EXIT,
          reason: "StartError",
          message: errorMessage(error),
          startedAt: nowNs(),
          finishedAt: nowNs(),
        });
        log.error({ err: error }, "VM start failed");
        const code = error instanceof CriError ? error.code : "UNKNOWN";
        throw new CriError(
          code,
          `${where}: start VM: ${errorMessage(error)}; container marked exited`,
          {
            cause: error,
          },
        );
      } finally {
        for (const tap of taps) closeQuietly(tap.fd);
      }
      try {
        await this.store.containers.put({
          ...record,
          phase: "running",
          startedAt: nowNs(),
          vm: handle.record,
          pid: handle.pid,
        });
      } catch (error) {
        await handle.kill().catch(() => {});
        throw error;
      }
      this.watch(record, handle);
      log.info({ pid: handle.pid }, "VM started");
    });
    return {};
  }

  async stopContainer(req: cri.StopContainerRequest__Output): Promise<cri.StopContainerResponse> {
    const record = this.mustContainer(req.containerId, "StopContainer");
    const timeoutMs = Math.max(0, Number(req.timeout)) * 1000;
    await this.lock.run(record.sandboxId, () => this.stopContainerLocked(record.id, timeoutMs));
    return {};
  }

  async removeContainer(
    req: cri.RemoveContainerRequest__Output,
  ): Promise<cri.RemoveContainerResponse> {
    const id = required(req.containerId, "RemoveContainer", "container_id");
    const record = this.store.containers.get(id);
    if (!record) return {}; // idempotent
    await this.lock.run(record.sandboxId, () => this.removeContainerLocked(id));
    return {};
  }

  listContainers(req: cri.ListContainersRequest__Output): cri.ListContainersResponse {
    const f = req.filter;
    const containers = this.store.containers
      .list()
      .filter(
        (c) =>
          matchesId(c.id, f?.id) &&
          matchesId(c.sandboxId, f?.podSandboxId) &&
          matchesLabels(c.labels, f?.labelSelector),
      )
      .map(containerMessage)
      .filter((c) => !f?.state || c.state === f.state.state);
    return { containers };
  }

  containerStatus(req: cri.ContainerStatusRequest__Output): cri.ContainerStatusResponse {
    const record = this.mustContainer(req.containerId, "ContainerStatus");
    const info: Record<string, string> = {};
    if (req.verbose) {
      info.info = JSON.stringify({
        pid: record.pid,
        dir: record.dir,
        vcpus: record.vcpus,
        memoryMiB: record.memoryMiB,
        vm: record.vm,
      });
    }
    return { status: containerStatusMessage(record), info };
  }

  async reopenContainerLog(
    req: cri.ReopenContainerLogRequest__Output,
  ): Promise<cri.ReopenContainerLogResponse> {
    const record = this.mustContainer(req.containerId, "ReopenContainerLog");
    const running = this.running.get(record.id);
    if (!running)
      throw failedPrecondition(
        `ReopenContainerLog ${record.id}: container is ${record.phase}, not running`,
      );
    if (!running.handle.reopenLog) {
      throw new CriError(
        "UNIMPLEMENTED",
        `ReopenContainerLog ${record.id}: the VM launcher cannot reopen its log`,
      );
    }
    await running.handle.reopenLog();
    return {};
  }

  // ---- exec ----

  /**
   * Runs a command in the VM through the QEMU guest agent (exec probes, crictl exec -s).
   * An agent's error starting the command (no such program, say) is the shell's 127.
   */
  async execSync(
    req: cri.ExecSyncRequest__Output,
    call?: { signal?: AbortSignal; deadline?: number },
  ): Promise<cri.ExecSyncResponse> {
    const record = this.mustContainer(req.containerId, "ExecSync");
    const where = `ExecSync ${record.id}`;
    if (req.cmd.length === 0 || req.cmd[0] === "") throw invalidArgument(`${where}: cmd is empty`);
    const handle = this.running.get(record.id)?.handle;
    if (record.phase !== "running" || !handle) {
      throw failedPrecondition(`${where}: container is ${record.phase}, not running`);
    }
    if (!handle.exec) {
      throw new CriError("UNIMPLEMENTED", `${where}: this VM launcher cannot run commands`);
    }
    // timeout 0 (crictl's default) is the call's deadline, or a cap: never no limit, which
    // would hold the VM's one agent channel, and every later probe, forever.
    const requested = Math.max(0, Number(req.timeout)) * 1000;
    const untilDeadline = (call?.deadline ?? Number.POSITIVE_INFINITY) - Date.now();
    const timeoutMs =
      requested > 0
        ? requested
        : Number.isFinite(untilDeadline)
          ? Math.max(1, untilDeadline)
          : EXEC_TIMEOUT_CAP_MS;
    try {
      const result = await handle.exec(req.cmd, timeoutMs, call?.signal);
      return { stdout: result.stdout, stderr: result.stderr, exitCode: result.exitCode };
    } catch (error) {
      if (error instanceof GuestAgentCommandError) {
        return {
          stdout: Buffer.alloc(0),
          stderr: Buffer.from(`${error.message}\n`),
          exitCode: 127,
        };
      }
      const message = `${where} ${JSON.stringify(req.cmd)}: ${errorMessage(error)}`;
      if (error instanceof GuestExecTimeoutError) throw new CriError("DEADLINE_EXCEEDED", message);
      if (error instanceof GuestExecCancelledError) throw new CriError("CANCELLED", message);
      if (error instanceof GuestAgentUnavailableError) throw failedPrecondition(message);
      throw new CriError("UNKNOWN", message, { cause: error });
    }
  }

  /** What CRI streaming (Exec, Attach, PortForward) looks up: running VMs, ready pods. */
  streamLookups(): StreamLookups {
    return {
      container: (id, call) => {
        const record = this.mustContainer(id, call);
        const handle = this.running.get(record.id)?.handle;
        if (record.phase !== "running" || !handle) {
          throw failedPrecondition(
            `${call} ${record.id}: container is ${record.phase}, not running`,
          );
        }
        const sandbox = this.store.sandboxes.get(record.sandboxId);
        const pod = sandbox ? `${sandbox.metadata.namespace}/${sandbox.metadata.name}` : "?";
        return { name: `${pod} container ${record.id}`, ...handle.channels };
      },
      sandbox: (id, call) => {
        const sandbox = this.mustSandbox(id, call);
        const network = this.networks.get(id);
        const ip = network ? podIps(network)[0] : undefined;
        if (sandbox.phase !== "ready" || !network || !ip) {
          throw failedPrecondition(`${call} ${id}: pod sandbox is not ready (no pod network)`);
        }
        const name = `${sandbox.metadata.namespace}/${sandbox.metadata.name}`;
        return { name, ip };
      },
    };
  }

  // ---- stats ----

  async containerStats(
    req: cri.ContainerStatsRequest__Output,
  ): Promise<cri.ContainerStatsResponse> {
    const record = this.mustContainer(req.containerId, "ContainerStats");
    return { stats: await this.statsOf(record) };
  }

  async listContainerStats(
    req: cri.ListContainerStatsRequest__Output,
  ): Promise<cri.ListContainerStatsResponse> {
    const f = req.filter;
    const selected = this.store.containers
      .list()
      .filter(
        (c) =>
          c.phase !== "exited" &&
          matchesId(c.id, f?.id) &&
          matchesId(c.sandboxId, f?.podSandboxId) &&
          matchesLabels(c.labels, f?.labelSelector),
      );
    return { stats: await Promise.all(selected.map((c) => this.statsOf(c))) };
  }

  async podSandboxStats(
    req: cri.PodSandboxStatsRequest__Output,
  ): Promise<cri.PodSandboxStatsResponse> {
    const sandbox = this.mustSandbox(req.podSandboxId, "PodSandboxStats");
    return { stats: await this.sandboxStatsOf(sandbox) };
  }

  async listPodSandboxStats(
    req: cri.ListPodSandboxStatsRequest__Output,
  ): Promise<cri.ListPodSandboxStatsResponse> {
    const f = req.filter;
    const selected = this.store.sandboxes
      .list()
      .filter(
        (s) =>
          s.phase === "ready" &&
          matchesId(s.id, f?.id) &&
          matchesLabels(s.labels, f?.labelSelector),
      );
    return { stats: await Promise.all(selected.map((s) => this.sandboxStatsOf(s))) };
  }

  // ---- images ----

  listImages(req: cri.ListImagesRequest__Output): cri.ListImagesResponse {
    const wanted = req.filter?.image?.image;
    if (wanted) {
      const found = this.images.find(wanted);
      return { images: found ? [imageMessage(found)] : [] };
    }
    return { images: this.images.list().map(imageMessage) };
  }

  imageStatus(req: cri.ImageStatusRequest__Output): cri.ImageStatusResponse {
    const ref = req.image?.image;
    if (!ref) throw invalidArgument("ImageStatus: image.image is required");
    const found = this.images.find(ref);
    // An absent image is not an error: kubelet asks before it pulls.
    if (!found) return { image: null, info: {} };
    const info: Record<string, string> = req.verbose
      ? {
          info: JSON.stringify({
            format: found.format,
            source: found.source,
            pulledAt: found.pulledAt,
          }),
        }
      : {};
    return { image: imageMessage(found), info };
  }

  async pullImage(req: cri.PullImageRequest__Output): Promise<cri.PullImageResponse> {
    const ref = req.image?.image;
    if (!ref) throw invalidArgument("PullImage: image.image is required");
    const record = await this.images.pull(ref);
    return { imageRef: imageId(record) };
  }

  async removeImage(req: cri.RemoveImageRequest__Output): Promise<cri.RemoveImageResponse> {
    const ref = req.image?.image;
    if (!ref) throw invalidArgument("RemoveImage: image.image is required");
    const found = this.images.find(ref);
    if (!found) return {}; // idempotent
    const users = this.store.containers.list().filter((c) => c.image.id === found.id);
    if (users.length > 0) {
      throw failedPrecondition(
        `RemoveImage ${ref}: image ${imageId(found)} is used by container${users.length > 1 ? "s" : ""} ${users.map((c) => c.id).join(", ")}`,
      );
    }
    await this.images.remove(found);
    return {};
  }

  async imageFsInfo(_req: cri.ImageFsInfoRequest__Output): Promise<cri.ImageFsInfoResponse> {
    const usage = await this.images.fsUsage();
    return {
      imageFilesystems: [
        {
          timestamp: nowNs(),
          fsId: { mountpoint: usage.mountpoint },
          usedBytes: { value: String(usage.usedBytes) },
          inodesUsed: { value: String(usage.inodesUsed) },
        },
      ],
      containerFilesystems: [],
    };
  }

  // ---- recovery ----

  /**
   * After a restart: pod networks come back through the tapmanager; a sandbox caught
   * half-made is undone; running VMs are adopted, vanished ones reported as exited.
   */
  async recover(): Promise<void> {
    try {
      const outcome = await this.networks.recover();
      this.logger.info({ outcome }, "pod networks recovered");
    } catch (error) {
      this.logger.error({ err: error }, "recover pod networks failed");
    }
    try {
      await this.networks.collectGarbage?.();
    } catch (error) {
      this.logger.warn({ err: error }, "CNI garbage collection failed; pods are unaffected");
    }
    await this.reapHalfMade("found half-made after a restart");
    for (const sandbox of this.store.sandboxes.list()) {
      if (sandbox.phase === "ready" && !this.networks.get(sandbox.id)) {
        // Its network did not come back: NOTREADY, so that kubelet makes the pod anew.
        await this.store.sandboxes.put({ ...sandbox, phase: "stopped" });
        this.sandboxLog(sandbox).warn(
          "pod network not recovered after a restart: sandbox NOTREADY",
        );
      }
    }
    const adoptions: Promise<void>[] = [];
    for (const record of this.store.containers.list()) {
      const log = this.containerLog(record);
      if (record.phase === "starting") {
        try {
          await this.launcher.discard?.(record.dir);
        } catch (error) {
          log.error({ err: error }, "kill the VM of an interrupted start failed");
        }
        await this.recordExit(record.id, {
          exitCode: START_ERROR_EXIT,
          reason: "StartError",
          message: "vmlet restarted while the VM was starting",
          finishedAt: nowNs(),
        });
        log.warn("VM start interrupted by a restart: marked exited");
      } else if (record.phase === "running") {
        // All at once, each within the launcher's deadline: one wedged QEMU holds up
        // neither the others nor the socket.
        adoptions.push(
          this.reattach(record).then(
            () => {},
            (error: unknown) => {
              // Left RUNNING on record: a stop or removal tries again, and kills it by
              // its pid if it still cannot be adopted, rather than leak the VM.
              log.error({ err: error }, "adopt VM failed; a stop or removal will retry");
            },
          ),
        );
      }
    }
    await Promise.all(adoptions);
  }

  /**
   * Retries, every `intervalMs`, the teardown of sandboxes whose RunPodSandbox failed
   * and whose network could not be torn down then: kubelet never learnt their ids.
   */
  startReaper(intervalMs = 30_000): void {
    this.reaper = setInterval(() => {
      this.reapHalfMade("retrying the teardown of a failed RunPodSandbox").catch((error: unknown) =>
        this.logger.error({ err: error }, "reap half-made sandboxes failed"),
      );
      if (this.readopting) return; // a wedged QEMU's adoption may outlast the interval
      this.readopting = true;
      this.readoptUnwatched()
        .catch((error: unknown) => this.logger.error({ err: error }, "re-adopting VMs failed"))
        .finally(() => {
          this.readopting = false;
        });
    }, intervalMs);
    this.reaper.unref();
  }

  /**
   * Tries again to adopt VMs running on record that no one watches (their adoption failed
   * at start): one adopted now has its exit seen; one that is gone is recorded exited.
   */
  async readoptUnwatched(): Promise<void> {
    for (const record of this.store.containers.list()) {
      if (record.phase !== "running" || this.running.has(record.id)) continue;
      await this.lock.run(record.sandboxId, async () => {
        const now = this.store.containers.get(record.id);
        if (now?.phase !== "running" || this.running.has(now.id) || this.detached) return;
        try {
          await this.reattach(now);
        } catch (error) {
          this.containerLog(now).warn({ err: error }, "adopt VM failed again; will retry");
        }
      });
    }
  }

  async reapHalfMade(why: string): Promise<void> {
    for (const sandbox of this.store.sandboxes.list()) {
      if (sandbox.phase !== "creating" || this.creating.has(sandbox.id)) continue;
      await this.lock.run(sandbox.id, async () => {
        if (this.store.sandboxes.get(sandbox.id)?.phase !== "creating") return;
        const log = this.sandboxLog(sandbox);
        log.warn(`${why}: ${await this.undoSandbox(sandbox.id, log)}`);
      });
    }
  }

  /** Lets go of the VMs without stopping them: they outlive vmlet and are adopted next start. */
  async detach(): Promise<void> {
    this.detached = true;
    if (this.reaper) clearInterval(this.reaper);
    const handles = [...this.running.values()].map((r) => r.handle);
    this.running.clear();
    for (const handle of handles) await handle.detach?.().catch(() => {});
  }

  // ---- internals ----

  private async stopSandboxLocked(id: string): Promise<void> {
    const sandbox = this.store.sandboxes.get(id);
    if (!sandbox) return;
    const log = this.sandboxLog(sandbox);
    // CRI: running containers of a stopped sandbox are forcibly terminated.
    for (const c of this.containersOf(id)) await this.stopContainerLocked(c.id, 0);
    // Read before the network goes: what the guest tried to send that it may not.
    const drops = this.networks.dropCounts?.(id);
    try {
      await this.networks.tearDown(id);
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
      await this.store.sandboxes.put({ ...sandbox, phase: "stopped" });
      log.info("pod sandbox stopped");
    }
  }

  private async stopContainerLocked(id: string, timeoutMs: number): Promise<void> {
    let running = this.running.get(id);
    if (!running) {
      // Running on record but not watched: adoption failed at start; try again, so a
      // VM is never left behind by a stop or a removal.
      const record = this.store.containers.get(id);
      if (record?.phase !== "running") return; // stopped already (idempotent)
      try {
        running = await this.reattach(record);
      } catch (error) {
        // Its QMP does not answer: the VM still ends, by its known pid, so that a stop
        // succeeds rather than fail on every retry.
        if (!this.launcher.killRecorded || record.vm === undefined) throw error;
        const killed = await this.launcher.killRecorded(record.vm);
        await this.recordExit(id, {
          exitCode: KILLED_EXIT,
          reason: "Killed",
          message: `${killed ? "killed by vmlet by its pid" : "gone"}: the VM could not be adopted (${errorMessage(error)})`,
          finishedAt: nowNs(),
        });
        this.containerLog(record).warn(
          { err: error, killed },
          "VM not adoptable: killed by its pid",
        );
        return;
      }
      if (!running) return;
    }
    const log = this.containerLog(this.store.containers.get(id));
    try {
      if (timeoutMs > 0) await running.handle.stop(timeoutMs);
      else await running.handle.kill();
    } catch (error) {
      log.warn({ err: error }, "stop VM failed; killing it");
      await running.handle.kill();
    }
    // Recorded here, under the pod lock this runs in; the watcher's turn then finds it done.
    await this.recordVmExit(id, running.handle, await running.exited);
    log.info({ timeoutMs }, "VM stopped");
  }

  private async removeContainerLocked(id: string): Promise<void> {
    const record = this.store.containers.get(id);
    if (!record) return;
    await this.stopContainerLocked(id, 0);
    await fs.promises.rm(record.dir, { recursive: true, force: true });
    await this.store.containers.delete(id);
    this.cpuSamples.delete(id);
    this.containerLog(record).info("container removed");
  }

  /** Adopts a VM that runs on record; a VM that is gone is recorded as exited. */
  private async reattach(record: ContainerRecord): Promise<Running | undefined> {
    const log = this.containerLog(record);
    const handle = record.vm === undefined ? undefined : await this.launcher.adopt(record.vm);
    if (handle && this.detached) {
      // Adopted as vmlet let go of its VMs: this one goes too, for the next start.
      await handle.detach?.();
      return undefined;
    }
    if (handle) {
      this.watch(record, handle);
      log.info({ pid: handle.pid }, "VM adopted");
      return this.running.get(record.id);
    }
    await this.recordExit(record.id, {
      exitCode: UNKNOWN_EXIT,
      reason: "Error",
      message: "the VM exited while vmlet was not watching it",
      finishedAt: nowNs(),
    });
    log.warn("VM gone: marked exited");
    return undefined;
  }

  /** Records the VM's exit when it comes, under the pod lock, as every change of the pod is. */
  private watch(record: ContainerRecord, handle: VmHandle): void {
    const exited = handle.exited.catch(
      (error: unknown): VmExit => ({
        exitCode: UNKNOWN_EXIT,
        reason: "Error",
        message: errorMessage(error),
        finishedAt: Date.now(),
      }),
    );
    this.running.set(record.id, { handle, exited });
    void exited.then((exit) =>
      this.lock
        .run(record.sandboxId, () => this.recordVmExit(record.id, handle, exit))
        .catch((error: unknown) =>
          this.logger.error({ err: error, containerId: record.id }, "record VM exit failed"),
        ),
    );
  }

  /** Once per VM: the first caller (a stop under the lock, or the watcher) records it. */
  private async recordVmExit(id: string, handle: VmHandle, exit: VmExit): Promise<void> {
    if (this.running.get(id)?.handle !== handle) return; // recorded, detached, or replaced
    this.running.delete(id);
    await this.recordExit(id, {
      exitCode: exit.exitCode,
      reason: exit.reason || (exit.exitCode === 0 ? "Completed" : "Error"),
      message: exit.message || "",
      finishedAt: toNs(exit.finishedAt),
    });
    this.containerLog(this.store.containers.get(id)).info(
      { exitCode: exit.exitCode, reason: exit.reason },
      "VM exited",
    );
  }

  private async recordExit(
    id: string,
    exit: { exitCode: number; reason: string; message: string; finishedAt: string },
  ): Promise<void> {
    const record = this.store.containers.get(id);
    if (!record) return;
    await this.store.containers.put({ ...record, phase: "exited", ...exit });
  }

  /**
   * Tears down whatever part of the sandbox's network exists, then forgets the sandbox;
   * says what it did. A failed teardown keeps the `creating` record, so that the
   * reaper and the next start retry it: nothing is leaked unrecorded.
   */
  private async undoSandbox(id: string, log: Logger): Promise<string> {
    try {
      await this.networks.tearDown(id);
    } catch (error) {
      log.error({ err: error }, "tear down network failed");
      return `cleanup failed: network teardown: ${errorMessage(error)}; sandbox ${id} kept unlisted to retry the teardown`;
    }
    try {
      await this.store.sandboxes.delete(id);
    } catch (error) {
      return `cleaned up: network torn down; record removal failed (${errorMessage(error)})`;
    }
    return "cleaned up: network torn down, record removed";
  }

  private async statsOf(record: ContainerRecord): Promise<cri.ContainerStats> {
    const timestamp = nowNs();
    let cpuNanos = 0n;
    let memoryBytes = 0;
    let diskBytes: number | undefined;
    const running = this.running.get(record.id);
    if (running) {
      try {
        const s = await running.handle.stats();
        cpuNanos = s.cpuNanos;
        memoryBytes = s.memoryBytes;
        diskBytes = s.diskBytes;
      } catch (error) {
        this.containerLog(record).debug({ err: error }, "VM stats failed");
      }
    }
    const atNs = BigInt(timestamp);
    const previous = this.cpuSamples.get(record.id);
    let nanoCores = 0n;
    if (previous && atNs > previous.atNs && cpuNanos >= previous.cpuNanos) {
      nanoCores = ((cpuNanos - previous.cpuNanos) * 1_000_000_000n) / (atNs - previous.atNs);
    }
    if (running) this.cpuSamples.set(record.id, { atNs, cpuNanos });
    const limit = record.memoryMiB * 1024 * 1024;
    return {
      attributes: {
        id: record.id,
        metadata: record.metadata,
        labels: record.labels,
        annotations: record.annotations,
      },
      cpu: {
        timestamp,
        usageCoreNanoSeconds: { value: cpuNanos.toString() },
        usageNanoCores: { value: nanoCores.toString() },
      },
      memory: {
        timestamp,
        workingSetBytes: { value: String(memoryBytes) },
        usageBytes: { value: String(memoryBytes) },
        rssBytes: { value: String(memoryBytes) },
        availableBytes: { value: String(Math.max(0, limit - memoryBytes)) },
      },
      // The root overlay: what kubelet counts as the container's ephemeral storage.
      ...(diskBytes === undefined
        ? {}
        : {
            writableLayer: {
              timestamp,
              fsId: { mountpoint: record.dir },
              usedBytes: { value: String(diskBytes) },
              inodesUsed: { value: "1" },
            },
          }),
    };
  }

  private async sandboxStatsOf(sandbox: SandboxRecord): Promise<cri.PodSandboxStats> {
    const containers = await Promise.all(
      this.containersOf(sandbox.id)
        .filter((c) => c.phase !== "exited")
        .map((c) => this.statsOf(c)),
    );
    const timestamp = nowNs();
    const sum = (pick: (s: cri.ContainerStats) => string | number | undefined) =>
      containers.reduce((acc, s) => acc + BigInt(pick(s) ?? 0), 0n).toString();
    return {
      attributes: {
        id: sandbox.id,
        metadata: sandbox.metadata,
        labels: sandbox.labels,
        annotations: sandbox.annotations,
      },
      linux: {
        cpu: {
          timestamp,
          usageCoreNanoSeconds: { value: sum((s) => uint64(s.cpu?.usageCoreNanoSeconds?.value)) },
          usageNanoCores: { value: sum((s) => uint64(s.cpu?.usageNanoCores?.value)) },
        },
        memory: {
          timestamp,
          workingSetBytes: { value: sum((s) => uint64(s.memory?.workingSetBytes?.value)) },
          usageBytes: { value: sum((s) => uint64(s.memory?.usageBytes?.value)) },
        },
        process: { timestamp, processCount: { value: String(containers.length) } },
        containers,
      },
    };
  }

  private containersOf(sandboxId: string): ContainerRecord[] {
    return this.store.containers.list().filter((c) => c.sandboxId === sandboxId);
  }

  private mustSandbox(id: string, call: string): SandboxRecord {
    required(id, call, "pod_sandbox_id");
    const sandbox = this.store.sandboxes.get(id);
    if (!sandbox || sandbox.phase === "creating")
      throw notFound(`${call}: pod sandbox ${id} not found`);
    return sandbox;
  }

  private mustContainer(id: string, call: string): ContainerRecord {
    required(id, call, "container_id");
    const record = this.store.containers.get(id);
    if (!record) throw notFound(`${call}: container ${id} not found`);
    return record;
  }

  private sandboxLog(sandbox: SandboxRecord): Logger {
    return this.logger.child({
      pod: `${sandbox.metadata.namespace}/${sandbox.metadata.name}`,
      podSandboxId: sandbox.id,
    });
  }

  private containerLog(record: ContainerRecord | undefined): Logger {
    if (!record) return this.logger;
    const sandbox = this.store.sandboxes.get(record.sandboxId);
    return this.logger.child({
      pod: sandbox ? `${sandbox.metadata.namespace}/${sandbox.metadata.name}` : undefined,
      podSandboxId: record.sandboxId,
      containerId: record.id,
    });
  }
}

/** QEMU's sockets live in the VM dir, and a unix socket path has 108 bytes (linux/un.h). */
const UNIX_PATH_MAX = 108;
/** The longest name the launcher gives a socket in the VM dir, with room to spare. */
const SOCKET_NAME_BUDGET = 24;
/** Enough of the container id to be unique on a node, short enough for socket paths. */
const VM_DIR_ID_CHARS = 16;

function vmDirFor(vmDir: string, id: string): string {
  return path.join(vmDir, id.slice(0, VM_DIR_ID_CHARS));
}

/** Refuses a state dir so deep that QEMU could not bind its sockets under it. */
export function checkStateDirDepth(stateDir: string): void {
  const longest = path.join(
    path.resolve(stateDir),
    "vms",
    "x".repeat(VM_DIR_ID_CHARS),
    "x".repeat(SOCKET_NAME_BUDGET),
  );
  if (Buffer.byteLength(longest) >= UNIX_PATH_MAX) {
    throw new Error(
      `state dir ${stateDir}: too deep for QEMU's unix sockets under it (${Buffer.byteLength(longest)} of ${UNIX_PATH_MAX} bytes); use a shorter path`,
    );
  }
}

function isImageId(ref: string, id: string): boolean {
  return ref === id || ref === `sha256:${id}`;
}

function required(value: string, call: string, field: string): string {
  if (!value) throw invalidArgument(`${call}: ${field} is required`);
  return value;
}

/** 64 hex digits, as containerd makes them; also a valid CNI container id. */
function newId(): string {
  return crypto.randomBytes(32).toString("hex");
}

function uint64(value: string | number | { toString(): string } | undefined): string {
  return value === undefined ? "0" : value.toString();
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // the launcher keeps its hands off these fds; nothing else can have closed them
  }
}
