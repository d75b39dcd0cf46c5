// vmlet in front of the node's containerd, behind the one socket kubelet knows: pods of
// vmlet's RuntimeClass handlers are VMs (vmlet's runtime), every other pod goes to
// containerd with its handler as sent. Each id is routed to the runtime that made it
// (the owner map); lists are the two sides merged, and fail when containerd cannot be
// reached, since a list without its pods would make kubelet think they are gone.
// Over 400 lines: one short route per CRI call over the same owner map and two backends;
// each is a few lines, and the calls read best side by side.
import path from "node:path";
import type { Logger } from "pino";
import type { CriBackend, CriCalls } from "../cri/backend";
import type * as cri from "../cri/generated";
import type { CallContext } from "../cri/server";
import { CriError, failedPrecondition } from "../errors";
import { type ImageRule, resolveImage } from "../images/rules";
import {
  Containerd,
  type Method as ContainerdMethod,
  type RequestOf as ContainerdRequest,
  codeOf,
} from "./containerd";
import { mergeImageFs, mergeStatus } from "./merge";
import { type Owner, OwnerMap } from "./owners";

export const DEFAULT_VM_HANDLERS = ["vmlet"];

export interface CriProxyOptions {
  /** vmlet's own runtime's calls: the VM pods. */
  vm: CriCalls;
  containerdSocket: string;
  stateDir: string;
  /** RunPodSandbox runtime handlers that make a VM pod. */
  vmHandlers: string[];
  /** vmlet's image rules, read on each use: the names they match are VM images. */
  imageRules: () => ImageRule[];
  logger: Logger;
}

export class CriProxy implements CriBackend {
  readonly calls: CriCalls;

  private constructor(
    private readonly vm: CriCalls,
    private readonly containerd: Containerd,
    private readonly owners: OwnerMap,
    private readonly vmHandlers: string[],
    private readonly imageRules: () => ImageRule[],
    private readonly logger: Logger,
  ) {
    this.calls = {
      runtimeInfo: {
        version: (q) => this.version(q),
        status: (q, c) => this.status(q, c),
        runtimeConfig: (q) => this.runtimeConfig(q),
        updateRuntimeConfig: (q, c) => this.updateRuntimeConfig(q, c),
      },
      sandbox: {
        runPodSandbox: (q, c) => this.runPodSandbox(q, c),
        stopPodSandbox: (q, c) => this.stopPodSandbox(q, c),
        removePodSandbox: (q, c) => this.removePodSandbox(q, c),
        podSandboxStatus: (q, c) => this.podSandboxStatus(q, c),
        listPodSandbox: (q, c) => this.listPodSandbox(q, c),
      },
      container: {
        createContainer: (q, c) => this.createContainer(q, c),
        startContainer: (q, c) => this.startContainer(q, c),
        stopContainer: (q, c) => this.stopContainer(q, c),
        removeContainer: (q, c) => this.removeContainer(q, c),
        listContainers: (q, c) => this.listContainers(q, c),
        containerStatus: (q, c) => this.containerStatus(q, c),
        reopenContainerLog: (q, c) => this.reopenContainerLog(q, c),
        updateContainerResources: (q, c) => this.updateContainerResources(q, c),
        checkpointContainer: (q, c) => this.checkpointContainer(q, c),
      },
      exec: {
        execSync: (q, c) => this.execSync(q, c),
        exec: (q, c) => this.exec(q, c),
        attach: (q, c) => this.attach(q, c),
        portForward: (q, c) => this.portForward(q, c),
      },
      stats: {
        containerStats: (q, c) => this.containerStats(q, c),
        listContainerStats: (q, c) => this.listContainerStats(q, c),
        podSandboxStats: (q, c) => this.podSandboxStats(q, c),
        listPodSandboxStats: (q, c) => this.listPodSandboxStats(q, c),
        listMetricDescriptors: (q, c) => this.listMetricDescriptors(q, c),
        listPodSandboxMetrics: (q, c) => this.listPodSandboxMetrics(q, c),
      },
      image: {
        listImages: (q, c) => this.listImages(q, c),
        imageStatus: (q, c) => this.imageStatus(q, c),
        pullImage: (q, c) => this.pullImage(q, c),
        removeImage: (q, c) => this.removeImage(q, c),
        imageFsInfo: (q, c) => this.imageFsInfo(q, c),
      },
    };
  }

  /**
   * Opens the owner map and records in it every pod and container vmlet already has (made
   * before the proxy was on, or by a RunPodSandbox a crash cut short): an id the map does
   * not know is then containerd's.
   */
  static async open(options: CriProxyOptions): Promise<CriProxy> {
    const owners = await OwnerMap.open(path.join(options.stateDir, "proxy", "owners.json"));
    const vm = options.vm;
    const sandboxes = (await vm.sandbox.listPodSandbox({ filter: null })).items ?? [];
    for (const s of sandboxes) {
      if (s.id && !owners.get(s.id)) await owners.set(s.id, { owner: "vmlet", kind: "sandbox" });
    }
    const containers = (await vm.container.listContainers({ filter: null })).containers ?? [];
    for (const c of containers) {
      if (c.id && !owners.get(c.id))
        await owners.set(c.id, { owner: "vmlet", kind: "container", sandbox: c.podSandboxId });
    }
    const containerd = new Containerd(options.containerdSocket);
    options.logger.info(
      { containerd: options.containerdSocket, vmHandlers: options.vmHandlers },
      "CRI proxy: VM pods by runtime handler, every other pod to containerd",
    );
    return new CriProxy(
      vm,
      containerd,
      owners,
      options.vmHandlers,
      options.imageRules,
      options.logger,
    );
  }

  close(): void {
    this.containerd.close();
  }

  // ---- runtime ----

  private version(q: cri.VersionRequest__Output) {
    return this.vm.runtimeInfo.version(q);
  }

  private async status(q: cri.StatusRequest__Output, c?: CallContext) {
    const [vmlet, containerd] = await Promise.all([
      Promise.resolve()
        .then(() => this.vm.runtimeInfo.status(q, c))
        .catch((e: unknown) => asError(e)),
      this.containerd.call("Status", q, c).catch((e: unknown) => asError(e)),
    ]);
    return mergeStatus(
      [
        { name: "vmlet", answer: vmlet },
        { name: "containerd", answer: containerd },
      ],
      this.vmHandlers,
    );
  }

  private runtimeConfig(q: cri.RuntimeConfigRequest__Output) {
    return this.vm.runtimeInfo.runtimeConfig(q);
  }

  private async updateRuntimeConfig(q: cri.UpdateRuntimeConfigRequest__Output, c?: CallContext) {
    await this.vm.runtimeInfo.updateRuntimeConfig(q, c);
    await this.containerd.call("UpdateRuntimeConfig", q, c);
    return {};
  }

  // ---- sandboxes ----

  private async runPodSandbox(q: cri.RunPodSandboxRequest__Output, c?: CallContext) {
    if (this.vmHandlers.includes(q.runtimeHandler)) {
      // vmlet's runtime knows one handler, its default; the name kubelet sent is kept here.
      const made = await this.vm.sandbox.runPodSandbox({ ...q, runtimeHandler: "" }, c);
      await this.owners.set(made.podSandboxId ?? "", {
        owner: "vmlet",
        kind: "sandbox",
        handler: q.runtimeHandler,
      });
      return made;
    }
    const made = await this.containerd.call("RunPodSandbox", q, c);
    await this.owners.set(made.podSandboxId, {
      owner: "containerd",
      kind: "sandbox",
      handler: q.runtimeHandler,
    });
    return made;
  }

  private stopPodSandbox(q: cri.StopPodSandboxRequest__Output, c?: CallContext) {
    return this.byId(q.podSandboxId, "StopPodSandbox", q, c, (v) => v.sandbox.stopPodSandbox(q, c));
  }

  private async removePodSandbox(q: cri.RemovePodSandboxRequest__Output, c?: CallContext) {
    const done = await this.byId(q.podSandboxId, "RemovePodSandbox", q, c, (v) =>
      v.sandbox.removePodSandbox(q, c),
    );
    await this.owners.forget(q.podSandboxId);
    return done;
  }

  private async podSandboxStatus(q: cri.PodSandboxStatusRequest__Output, c?: CallContext) {
    const answer = await this.byId(q.podSandboxId, "PodSandboxStatus", q, c, (v) =>
      v.sandbox.podSandboxStatus(q, c),
    );
    const handler = this.vmHandler(q.podSandboxId);
    if (handler !== undefined && answer.status) answer.status.runtimeHandler = handler;
    return answer;
  }

  private async listPodSandbox(q: cri.ListPodSandboxRequest__Output, c?: CallContext) {
    const [vmlet, containerd] = await this.both(
      "ListPodSandbox",
      this.ownerIfKnown(q.filter?.id),
      () => this.vm.sandbox.listPodSandbox(q, c),
      () => this.containerd.call("ListPodSandbox", q, c),
    );
    const vmItems = (vmlet?.items ?? []).map((s) => {
      const handler = this.vmHandler(s.id ?? "");
      return handler === undefined ? s : { ...s, runtimeHandler: handler };
    });
    return { items: [...(containerd?.items ?? []), ...vmItems] };
  }

  private async podSandboxStats(q: cri.PodSandboxStatsRequest__Output, c?: CallContext) {
    return this.byId(q.podSandboxId, "PodSandboxStats", q, c, (v) => v.stats.podSandboxStats(q, c));
  }

  private async listPodSandboxStats(q: cri.ListPodSandboxStatsRequest__Output, c?: CallContext) {
    const [vmlet, containerd] = await this.both(
      "ListPodSandboxStats",
      this.ownerIfKnown(q.filter?.id),
      () => this.vm.stats.listPodSandboxStats(q, c),
      () => this.containerd.call("ListPodSandboxStats", q, c),
    );
    return { stats: [...(containerd?.stats ?? []), ...(vmlet?.stats ?? [])] };
  }

  // ---- containers ----

  private async createContainer(q: cri.CreateContainerRequest__Output, c?: CallContext) {
    const owner = this.ownerOf(q.podSandboxId);
    const image = q.config?.image?.image ?? "";
    const meta = q.sandboxConfig?.metadata;
    const pod = meta ? `${meta.namespace}/${meta.name}` : q.podSandboxId;
    const vmImage = await this.isVmImage(image);
    if (owner === "containerd" && vmImage) {
      throw failedPrecondition(
        `CreateContainer in pod ${pod} (sandbox ${q.podSandboxId}, a container pod run by containerd): image ${image} is a VM image (vmlet's image rules name it); run the pod with runtimeClassName ${this.vmHandlers[0]}`,
      );
    }
    if (owner === "vmlet" && image !== "" && !vmImage) {
      throw failedPrecondition(
        `CreateContainer in pod ${pod} (sandbox ${q.podSandboxId}, a VM pod of runtime handler ${this.vmHandler(q.podSandboxId) || this.vmHandlers[0]}): image ${image} is not a VM image (no vmlet image rule names it): an OCI image runs in a pod without that runtimeClassName`,
      );
    }
    const made =
      owner === "vmlet"
        ? await this.vm.container.createContainer(q, c)
        : await this.containerd.call("CreateContainer", q, c);
    await this.owners.set(made.containerId ?? "", {
      owner,
      kind: "container",
      sandbox: q.podSandboxId,
    });
    return made;
  }

  private startContainer(q: cri.StartContainerRequest__Output, c?: CallContext) {
    return this.byId(q.containerId, "StartContainer", q, c, (v) =>
      v.container.startContainer(q, c),
    );
  }

  private stopContainer(q: cri.StopContainerRequest__Output, c?: CallContext) {
    return this.byId(q.containerId, "StopContainer", q, c, (v) => v.container.stopContainer(q, c));
  }

  private async removeContainer(q: cri.RemoveContainerRequest__Output, c?: CallContext) {
    const done = await this.byId(q.containerId, "RemoveContainer", q, c, (v) =>
      v.container.removeContainer(q, c),
    );
    await this.owners.forget(q.containerId);
    return done;
  }

  private containerStatus(q: cri.ContainerStatusRequest__Output, c?: CallContext) {
    return this.byId(q.containerId, "ContainerStatus", q, c, (v) =>
      v.container.containerStatus(q, c),
    );
  }

  private reopenContainerLog(q: cri.ReopenContainerLogRequest__Output, c?: CallContext) {
    return this.byId(q.containerId, "ReopenContainerLog", q, c, (v) =>
      v.container.reopenContainerLog(q, c),
    );
  }

  private containerStats(q: cri.ContainerStatsRequest__Output, c?: CallContext) {
    return this.byId(q.containerId, "ContainerStats", q, c, (v) => v.stats.containerStats(q, c));
  }

  private async listContainers(q: cri.ListContainersRequest__Output, c?: CallContext) {
    const [vmlet, containerd] = await this.both(
      "ListContainers",
      this.ownerIfKnown(q.filter?.id) ?? this.ownerIfKnown(q.filter?.podSandboxId),
      () => this.vm.container.listContainers(q, c),
      () => this.containerd.call("ListContainers", q, c),
    );
    return { containers: [...(containerd?.containers ?? []), ...(vmlet?.containers ?? [])] };
  }

  private async listContainerStats(q: cri.ListContainerStatsRequest__Output, c?: CallContext) {
    const [vmlet, containerd] = await this.both(
      "ListContainerStats",
      this.ownerIfKnown(q.filter?.id) ?? this.ownerIfKnown(q.filter?.podSandboxId),
      () => this.vm.stats.listContainerStats(q, c),
      () => this.containerd.call("ListContainerStats", q, c),
    );
    return { stats: [...(containerd?.stats ?? []), ...(vmlet?.stats ?? [])] };
  }

  private execSync(q: cri.ExecSyncRequest__Output, c?: CallContext) {
    return this.byId(q.containerId, "ExecSync", q, c, (v) => v.exec.execSync(q, c));
  }

  // Streaming: containerd's URLs are absolute (its own streaming server), passed as they are.
  private exec(q: cri.ExecRequest__Output, c?: CallContext) {
    return this.byId(q.containerId, "Exec", q, c, (v) =>
      optional(v.exec.exec?.bind(v.exec), "Exec", q, c),
    );
  }

  private attach(q: cri.AttachRequest__Output, c?: CallContext) {
    return this.byId(q.containerId, "Attach", q, c, (v) =>
      optional(v.exec.attach?.bind(v.exec), "Attach", q, c),
    );
  }

  private portForward(q: cri.PortForwardRequest__Output, c?: CallContext) {
    return this.byId(q.podSandboxId, "PortForward", q, c, (v) =>
      optional(v.exec.portForward?.bind(v.exec), "PortForward", q, c),
    );
  }

  private updateContainerResources(
    q: cri.UpdateContainerResourcesRequest__Output,
    c?: CallContext,
  ) {
    return this.byId(q.containerId, "UpdateContainerResources", q, c, (v) =>
      optional(
        v.container.updateContainerResources?.bind(v.container),
        "UpdateContainerResources",
        q,
        c,
      ),
    );
  }

  private checkpointContainer(q: cri.CheckpointContainerRequest__Output, c?: CallContext) {
    return this.byId(q.containerId, "CheckpointContainer", q, c, (v) =>
      optional(v.container.checkpointContainer?.bind(v.container), "CheckpointContainer", q, c),
    );
  }

  private async listMetricDescriptors(
    q: cri.ListMetricDescriptorsRequest__Output,
    c?: CallContext,
  ) {
    const [vmlet, containerd] = await Promise.all([
      this.vm.stats.listMetricDescriptors?.(q, c),
      this.containerd.call("ListMetricDescriptors", q, c).catch(unimplementedAsNone),
    ]);
    return { descriptors: [...(containerd?.descriptors ?? []), ...(vmlet?.descriptors ?? [])] };
  }

  private async listPodSandboxMetrics(
    q: cri.ListPodSandboxMetricsRequest__Output,
    c?: CallContext,
  ) {
    const [vmlet, containerd] = await Promise.all([
      this.vm.stats.listPodSandboxMetrics?.(q, c),
      this.containerd.call("ListPodSandboxMetrics", q, c).catch(unimplementedAsNone),
    ]);
    return { podMetrics: [...(containerd?.podMetrics ?? []), ...(vmlet?.podMetrics ?? [])] };
  }

  // ---- images ----

  private pullImage(q: cri.PullImageRequest__Output, c?: CallContext) {
    return this.matchesRules(q.image?.image ?? "")
      ? this.vm.image.pullImage(q, c)
      : this.containerd.call("PullImage", q, c);
  }

  private async imageStatus(q: cri.ImageStatusRequest__Output, c?: CallContext) {
    const name = q.image?.image ?? "";
    if (this.matchesRules(name)) return this.vm.image.imageStatus(q, c);
    const vmlet = await this.vm.image.imageStatus(q, c);
    return vmlet.image ? vmlet : this.containerd.call("ImageStatus", q, c);
  }

  private async removeImage(q: cri.RemoveImageRequest__Output, c?: CallContext) {
    const name = q.image?.image ?? "";
    if (await this.isVmImage(name)) return this.vm.image.removeImage(q, c);
    return this.containerd.call("RemoveImage", q, c);
  }

  private async listImages(q: cri.ListImagesRequest__Output, c?: CallContext) {
    const name = q.filter?.image?.image ?? "";
    const [vmlet, containerd] = await this.both(
      "ListImages",
      name && this.matchesRules(name) ? "vmlet" : undefined,
      () => this.vm.image.listImages(q, c),
      () => this.containerd.call("ListImages", q, c),
    );
    return { images: [...(containerd?.images ?? []), ...(vmlet?.images ?? [])] };
  }

  private async imageFsInfo(q: cri.ImageFsInfoRequest__Output, c?: CallContext) {
    const [containerd, vmlet] = await Promise.all([
      this.containerd.call("ImageFsInfo", q, c),
      this.vm.image.imageFsInfo(q, c),
    ]);
    return mergeImageFs(containerd, vmlet);
  }

  // ---- routing ----

  private ownerOf(id: string): Owner {
    return this.owners.get(id)?.owner ?? "containerd";
  }

  private ownerIfKnown(id: string | undefined): Owner | undefined {
    return id ? this.owners.get(id)?.owner : undefined;
  }

  /** The handler name a VM pod was made with; undefined for containerd's pods. */
  private vmHandler(sandboxId: string): string | undefined {
    const e = this.owners.get(sandboxId);
    return e?.owner === "vmlet" ? (e.handler ?? "") : undefined;
  }

  /** The call on a sandbox or container id, to the runtime that owns the id. */
  private async byId<M extends ContainerdMethod, R>(
    id: string,
    method: M,
    q: ContainerdRequest<M>,
    c: CallContext | undefined,
    onVm: (vm: CriCalls) => R | Promise<R>,
  ): Promise<R> {
    if (this.ownerOf(id) === "vmlet") return onVm(this.vm);
    // containerd answers in the same CRI messages the server sends on.
    return (await this.containerd.call(method, q, c)) as unknown as R;
  }

  /**
   * Both sides, or only `only` when a filter names one side's object. A side that fails
   * fails the call: half a list reads to kubelet as pods that are gone.
   */
  private async both<V, D>(
    method: string,
    only: Owner | undefined,
    vm: () => V | Promise<V>,
    containerd: () => Promise<D>,
  ): Promise<[V | undefined, D | undefined]> {
    const [v, d] = await Promise.all([
      only === "containerd" ? undefined : vm(),
      only === "vmlet"
        ? undefined
        : containerd().catch((error: unknown) => {
            if (!(error instanceof CriError)) throw error;
            throw new CriError(
              error.code,
              `${error.message} (${method} lists vmlet's and containerd's pods together, and fails rather than answer without containerd's)`,
              { cause: error },
            );
          }),
    ]);
    return [v, d];
  }

  private matchesRules(name: string): boolean {
    if (name === "") return false;
    let rules: ImageRule[];
    try {
      rules = this.imageRules();
    } catch (error) {
      this.logger.debug({ err: error }, "CRI proxy: no vmlet image rules readable");
      return false;
    }
    try {
      return resolveImage(rules, name) !== undefined;
    } catch {
      // A name a rule matches but refuses (a bad digest, `..`): vmlet says why.
      return true;
    }
  }

  /** A VM image: a vmlet image rule names it, or vmlet has it (by name or id). */
  private async isVmImage(name: string): Promise<boolean> {
    if (name === "") return false;
    if (this.matchesRules(name)) return true;
    const known = await this.vm.image.imageStatus({
      image: { image: name },
      verbose: false,
    } as cri.ImageStatusRequest__Output);
    return Boolean(known.image);
  }
}

function optional<Q, R>(
  handle: ((q: Q, c?: CallContext) => R | Promise<R>) | undefined,
  method: string,
  q: Q,
  c?: CallContext,
): R | Promise<R> {
  if (!handle) throw new CriError("UNIMPLEMENTED", `${method}: not supported for VM pods yet`);
  return handle(q, c);
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}

function unimplementedAsNone(error: unknown): undefined {
  if (codeOf(error) === "UNIMPLEMENTED") return undefined;
  throw error;
}
