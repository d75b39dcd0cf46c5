// RuntimeService's container calls: CreateContainer, StartContainer, StopContainer,
// RemoveContainer, ListContainers, ContainerStatus, ReopenContainerLog. The pod's one
// container is its VM; every change runs under the pod's lock.
import fs from "node:fs";
import path from "node:path";
import { errorMessage } from "../../util/errors";
import {
  containerLog,
  containersOf,
  fallbackLogDir,
  mustContainer,
  newId,
  type Running,
  type RuntimeContext,
  required,
  START_ERROR_EXIT,
  vmDirOf,
} from "../context";
import {
  containerMessage,
  containerStatusMessage,
  matchesId,
  matchesLabels,
  nowNs,
} from "../convert";
import type * as cri from "../cri/generated";
import { CriError, failedPrecondition, invalidArgument, notFound } from "../errors";
import { imageId, repoDigests } from "../images/image-store";
import { containerLogPath, makeLogDirs } from "../log-path";
import type { ContainerRecord } from "../store/records";
import type { CloudInitFile, OpenedTap, VmHandle, VmSpec } from "../types";
import {
  ANNOTATION_USER_DATA,
  filesFromMount,
  isCopiedVolume,
  sshKeys,
  vmSize,
} from "../vm-config";
import type { VmMonitor } from "../vm-monitor";
import type { StatsCalls } from "./stats";

/** 128 + SIGKILL, as a shell reports a killed process. */
const KILLED_EXIT = 137;

export class ContainerCalls {
  constructor(
    private readonly ctx: RuntimeContext,
    private readonly monitor: VmMonitor,
    private readonly stats: StatsCalls,
  ) {}

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
    return this.ctx.lock.run(sandboxId, async () => {
      const sandbox = this.ctx.store.sandboxes.get(sandboxId);
      if (!sandbox || sandbox.phase === "creating") {
        throw notFound(`CreateContainer ${name}: pod sandbox ${sandboxId} not found`);
      }
      const where = `CreateContainer ${sandbox.metadata.namespace}/${sandbox.metadata.name}/${name}`;
      if (sandbox.phase !== "ready")
        throw failedPrecondition(`${where}: pod sandbox ${sandboxId} is stopped`);
      // One VM per pod: a restart of the same container (a new attempt after the last
      // one exited) is fine, a second container or a second live attempt is not.
      for (const other of containersOf(this.ctx, sandboxId)) {
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
      const image = this.ctx.images.find(imageSpec);
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
      const dir = vmDirOf(this.ctx, id);
      const logPath = config.logPath
        ? containerLogPath(
            where,
            sandbox.logDirectory || fallbackLogDir(this.ctx, sandboxId),
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
      await this.ctx.store.containers.put(record);
      try {
        await fs.promises.mkdir(dir, { recursive: true, mode: 0o700 });
      } catch (error) {
        await this.ctx.store.containers.delete(id);
        throw new CriError(
          "INTERNAL",
          `${where}: create ${dir}: ${errorMessage(error)}; record removed`,
        );
      }
      containerLog(this.ctx, record).info({ image: imageSpec, ...size }, "container created");
      return { containerId: id };
    });
  }

  async startContainer(
    req: cri.StartContainerRequest__Output,
  ): Promise<cri.StartContainerResponse> {
    const first = mustContainer(this.ctx, req.containerId, "StartContainer");
    await this.ctx.lock.run(first.sandboxId, () => this.startLocked(first.id));
    return {};
  }

  private async startLocked(containerId: string): Promise<void> {
    const { store, images } = this.ctx;
    const record = mustContainer(this.ctx, containerId, "StartContainer");
    const where = `StartContainer ${record.id}`;
    if (record.phase !== "created")
      throw failedPrecondition(`${where}: container is ${record.phase}, not created`);
    const sandbox = store.sandboxes.get(record.sandboxId);
    if (sandbox?.phase !== "ready")
      throw failedPrecondition(`${where}: pod sandbox ${record.sandboxId} is not ready`);
    const image = images.find(record.image.id);
    if (!image) throw failedPrecondition(`${where}: image sha256:${record.image.id} was removed`);
    const annotations = { ...sandbox.annotations, ...record.annotations };
    const log = containerLog(this.ctx, record);

    await store.containers.put({ ...record, phase: "starting" });
    let taps: OpenedTap[] = [];
    let handle: VmHandle;
    try {
      const files: CloudInitFile[] = record.mounts
        .filter((m) => isCopiedVolume(m.hostPath))
        .flatMap(filesFromMount);
      await images.verify(image).catch((error: unknown) => {
        throw failedPrecondition(`image sha256:${image.id}: ${errorMessage(error)}`);
      });
      taps = this.ctx.networks.openTaps(record.sandboxId);
      const logDirectory = sandbox.logDirectory || fallbackLogDir(this.ctx, record.sandboxId);
      await makeLogDirs(where, logDirectory, record.logPath);
      const spec: VmSpec = {
        id: record.id,
        dir: record.dir,
        baseImage: { path: images.blobPath(image), format: image.format },
        vcpus: record.vcpus,
        memoryMiB: record.memoryMiB,
        accel: this.ctx.accel,
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
      handle = await this.ctx.launcher.start(spec);
    } catch (error) {
      await store.containers.put({
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
      await store.containers.put({
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
    this.monitor.watch(record, handle);
    log.info({ pid: handle.pid }, "VM started");
  }

  async stopContainer(req: cri.StopContainerRequest__Output): Promise<cri.StopContainerResponse> {
    const record = mustContainer(this.ctx, req.containerId, "StopContainer");
    const timeoutMs = Math.max(0, Number(req.timeout)) * 1000;
    await this.ctx.lock.run(record.sandboxId, () => this.stopLocked(record.id, timeoutMs));
    return {};
  }

  async removeContainer(
    req: cri.RemoveContainerRequest__Output,
  ): Promise<cri.RemoveContainerResponse> {
    const id = required(req.containerId, "RemoveContainer", "container_id");
    const record = this.ctx.store.containers.get(id);
    if (!record) return {}; // idempotent
    await this.ctx.lock.run(record.sandboxId, () => this.removeLocked(id));
    return {};
  }

  listContainers(req: cri.ListContainersRequest__Output): cri.ListContainersResponse {
    const f = req.filter;
    const containers = this.ctx.store.containers
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
    const record = mustContainer(this.ctx, req.containerId, "ContainerStatus");
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
    const record = mustContainer(this.ctx, req.containerId, "ReopenContainerLog");
    const running = this.ctx.running.get(record.id);
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

  /** Stops the container's VM (kill when timeoutMs is 0); the caller holds the pod lock. */
  async stopLocked(id: string, timeoutMs: number): Promise<void> {
    const running = this.ctx.running.get(id) ?? (await this.adoptToStop(id));
    if (!running) return;
    const log = containerLog(this.ctx, this.ctx.store.containers.get(id));
    try {
      if (timeoutMs > 0) await running.handle.stop(timeoutMs);
      else await running.handle.kill();
    } catch (error) {
      log.warn({ err: error }, "stop VM failed; killing it");
      await running.handle.kill();
    }
    // Recorded here, under the pod lock this runs in; the watcher's turn then finds it done.
    await this.monitor.recordVmExit(id, running.handle, await running.exited);
    log.info({ timeoutMs }, "VM stopped");
  }

  /**
   * Running on record but not watched: adoption failed at start; tried again, so that a
   * VM is never left behind by a stop or a removal. Undefined when nothing is left to stop.
   */
  private async adoptToStop(id: string): Promise<Running | undefined> {
    const record = this.ctx.store.containers.get(id);
    if (record?.phase !== "running") return undefined; // stopped already (idempotent)
    try {
      return await this.monitor.reattach(record);
    } catch (error) {
      // Its QMP does not answer: the VM still ends, by its known pid, so that a stop
      // succeeds rather than fail on every retry.
      const launcher = this.ctx.launcher;
      if (!launcher.killRecorded || record.vm === undefined) throw error;
      const killed = await launcher.killRecorded(record.vm);
      await this.monitor.recordExit(id, {
        exitCode: KILLED_EXIT,
        reason: "Killed",
        message: `${killed ? "killed by vmlet by its pid" : "gone"}: the VM could not be adopted (${errorMessage(error)})`,
        finishedAt: nowNs(),
      });
      containerLog(this.ctx, record).warn(
        { err: error, killed },
        "VM not adoptable: killed by its pid",
      );
      return undefined;
    }
  }

  /** Stops the VM, removes its files and its record; the caller holds the pod lock. */
  async removeLocked(id: string): Promise<void> {
    const record = this.ctx.store.containers.get(id);
    if (!record) return;
    await this.stopLocked(id, 0);
    await fs.promises.rm(record.dir, { recursive: true, force: true });
    await this.ctx.store.containers.delete(id);
    this.stats.forget(id);
    containerLog(this.ctx, record).info("container removed");
  }
}

function isImageId(ref: string, id: string): boolean {
  return ref === id || ref === `sha256:${id}`;
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // the launcher keeps its hands off these fds; nothing else can have closed them
  }
}
