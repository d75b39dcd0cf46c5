// The CRI endpoint: RuntimeService and ImageService on a unix socket, each call handed
// to the runtime and its errors turned into gRPC status codes kubelet understands.
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { errorMessage } from "../../util/errors";
import { CriError, GRPC_CODES } from "../errors";
import { AuthorityFront } from "./authority-front";
import type { CriBackend } from "./backend";
import type { ImageServiceHandlers } from "./generated/runtime/v1/ImageService";
import type { RuntimeServiceHandlers } from "./generated/runtime/v1/RuntimeService";
import { loadCri } from "./proto";

export const DEFAULT_SOCKET = "/run/vmlet/vmlet.sock";

export class CriServerError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CriServerError";
  }
}

/** Calls vmlet answers UNIMPLEMENTED, each with why. */
const UNIMPLEMENTED: Record<string, string> = {
  UpdateContainerResources: "resizing a running VM is not supported",
  CheckpointContainer: "checkpointing a VM is not supported",
};

export interface ListenOptions {
  /**
   * Binds grpc-js to the socket itself, without the authority front: clients that send
   * the socket path as :authority then fail. Only the benchmark's baseline uses it.
   */
  direct?: boolean;
}

export class CriServer {
  private server: grpc.Server | undefined;
  private front: AuthorityFront | undefined;
  private socketPath: string | undefined;

  constructor(
    private readonly runtime: CriBackend,
    private readonly logger: Logger,
  ) {}

  /** Listens on `socketPath` (mode 0600), creating its directory and replacing a stale socket. */
  async listen(socketPath: string, options: ListenOptions = {}): Promise<void> {
    await prepareSocketPath(socketPath);
    const server = new grpc.Server();
    const cri = loadCri();
    server.addService(cri.RuntimeService.service, this.runtimeHandlers());
    server.addService(cri.ImageService.service, this.imageHandlers());
    const credentials = grpc.ServerCredentials.createInsecure();
    // The socket is born 0600: no window in which another user could connect.
    const umask = process.umask(0o177);
    try {
      if (options.direct) {
        await new Promise<number>((resolve, reject) =>
          server.bindAsync(`unix:${socketPath}`, credentials, (error, port) =>
            error ? reject(error) : resolve(port),
          ),
        );
      } else {
        // Node's HTTP/2 layer refuses the :authority many clients send (the socket
        // path, or none), so vmlet accepts connections itself and normalises it.
        const front = new AuthorityFront(server.createConnectionInjector(credentials), this.logger);
        await front.listen(socketPath);
        this.front = front;
      }
    } catch (error) {
      throw new CriServerError(`listen on ${socketPath}: ${errorMessage(error)}`, { cause: error });
    } finally {
      process.umask(umask);
    }
    fs.chmodSync(socketPath, 0o600);
    this.server = server;
    this.socketPath = socketPath;
    this.logger.info({ socket: socketPath }, "CRI server listening");
  }

  /** Stops taking calls, lets running ones finish for `graceMs`, then cuts them. */
  async close(graceMs = 5000): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    const front = this.front;
    this.front = undefined;
    front?.stopAccepting();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        server.forceShutdown();
        resolve();
      }, graceMs);
      server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    front?.destroyAll();
    if (this.socketPath) fs.rmSync(this.socketPath, { force: true });
  }

  // Each method goes to its call group (src/runtime/calls/): a new group is a file there,
  // a field of VmRuntime.calls, and its methods mapped here.
  private runtimeHandlers(): RuntimeServiceHandlers {
    const { runtimeInfo: info, sandbox, container, exec, stats } = this.runtime.calls;
    return {
      Version: this.unary("Version", (q) => info.version(q)),
      Status: this.unary("Status", (q) => info.status(q)),
      RuntimeConfig: this.unary("RuntimeConfig", (q) => info.runtimeConfig(q)),
      UpdateRuntimeConfig: this.unary("UpdateRuntimeConfig", (q) => info.updateRuntimeConfig(q)),
      RunPodSandbox: this.unary("RunPodSandbox", (q) => sandbox.runPodSandbox(q)),
      StopPodSandbox: this.unary("StopPodSandbox", (q) => sandbox.stopPodSandbox(q)),
      RemovePodSandbox: this.unary("RemovePodSandbox", (q) => sandbox.removePodSandbox(q)),
      PodSandboxStatus: this.unary("PodSandboxStatus", (q) => sandbox.podSandboxStatus(q)),
      ListPodSandbox: this.unary("ListPodSandbox", (q) => sandbox.listPodSandbox(q)),
      CreateContainer: this.unary("CreateContainer", (q) => container.createContainer(q)),
      StartContainer: this.unary("StartContainer", (q) => container.startContainer(q)),
      StopContainer: this.unary("StopContainer", (q) => container.stopContainer(q)),
      RemoveContainer: this.unary("RemoveContainer", (q) => container.removeContainer(q)),
      ListContainers: this.unary("ListContainers", (q) => container.listContainers(q)),
      ContainerStatus: this.unary("ContainerStatus", (q) => container.containerStatus(q)),
      ReopenContainerLog: this.unary("ReopenContainerLog", (q) => container.reopenContainerLog(q)),
      ContainerStats: this.unary("ContainerStats", (q) => stats.containerStats(q)),
      ListContainerStats: this.unary("ListContainerStats", (q) => stats.listContainerStats(q)),
      PodSandboxStats: this.unary("PodSandboxStats", (q) => stats.podSandboxStats(q)),
      ListPodSandboxStats: this.unary("ListPodSandboxStats", (q) => stats.listPodSandboxStats(q)),
      // kubelet asks for these only with PodAndContainerStatsFromCRI; vmlet has no extra metrics.
      ListMetricDescriptors: this.unary(
        "ListMetricDescriptors",
        (q) => stats.listMetricDescriptors?.(q) ?? { descriptors: [] },
      ),
      ListPodSandboxMetrics: this.unary(
        "ListPodSandboxMetrics",
        (q) => stats.listPodSandboxMetrics?.(q) ?? { podMetrics: [] },
      ),
      UpdateContainerResources: this.optional(
        "UpdateContainerResources",
        container.updateContainerResources?.bind(container),
      ),
      ExecSync: this.unary("ExecSync", (q, call) => exec.execSync(q, call)),
      Exec: this.optional("Exec", exec.exec?.bind(exec)),
      Attach: this.optional("Attach", exec.attach?.bind(exec)),
      PortForward: this.optional("PortForward", exec.portForward?.bind(exec)),
      CheckpointContainer: this.optional(
        "CheckpointContainer",
        container.checkpointContainer?.bind(container),
      ),
      // kubelet's evented PLEG (a feature gate) falls back to relisting on UNIMPLEMENTED.
      GetContainerEvents: (call) => {
        call.emit("error", {
          code: grpc.status.UNIMPLEMENTED,
          details: "GetContainerEvents: container events are not supported; kubelet relists",
        });
      },
    };
  }

  private imageHandlers(): ImageServiceHandlers {
    const { image } = this.runtime.calls;
    return {
      ListImages: this.unary("ListImages", (q) => image.listImages(q)),
      ImageStatus: this.unary("ImageStatus", (q) => image.imageStatus(q)),
      PullImage: this.unary("PullImage", (q) => image.pullImage(q)),
      RemoveImage: this.unary("RemoveImage", (q) => image.removeImage(q)),
      ImageFsInfo: this.unary("ImageFsInfo", (q) => image.imageFsInfo(q)),
    };
  }

  private unary<Req, Res>(
    method: string,
    handle: (request: Req, call: CallContext) => Res | Promise<Res>,
  ): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      const started = process.hrtime.bigint();
      // grpc-js emits "cancelled" when the client cancels and when the deadline passes.
      const controller = new AbortController();
      call.once("cancelled", () => controller.abort(new Error("the CRI call was cancelled")));
      const deadline = call.getDeadline();
      const context: CallContext = {
        signal: controller.signal,
        deadline: deadline instanceof Date ? deadline.getTime() : deadline,
      };
      Promise.resolve()
        .then(() => handle(call.request, context))
        .then(
          (response) => {
            this.logger.debug({ method, ms: elapsedMs(started) }, "CRI call");
            callback(null, response);
          },
          (error: unknown) => {
            const serviceError = toServiceError(error);
            const level =
              serviceError.code === grpc.status.INTERNAL ||
              serviceError.code === grpc.status.UNKNOWN
                ? "error"
                : "warn";
            this.logger[level](
              { method, ms: elapsedMs(started), code: grpc.status[serviceError.code], err: error },
              serviceError.details,
            );
            callback(serviceError);
          },
        );
    };
  }

  /** A call the backend may lack (vmlet's runtime alone): UNIMPLEMENTED then. */
  private optional<Req, Res>(
    method: string,
    handle: ((request: Req, call: CallContext) => Res | Promise<Res>) | undefined,
  ): grpc.handleUnaryCall<Req, Res> {
    return handle ? this.unary(method, handle) : this.unimplemented(method);
  }

  private unimplemented<Req, Res>(method: string): grpc.handleUnaryCall<Req, Res> {
    return this.unary<Req, Res>(method, () => {
      throw new CriError("UNIMPLEMENTED", `${method}: ${UNIMPLEMENTED[method] ?? "not supported"}`);
    });
  }
}

/** What a handler may know of its call: when the client gives up on it. */
export interface CallContext {
  /** Aborted when the client cancels the call or its deadline passes. */
  signal: AbortSignal;
  /** The call's deadline, ms since the epoch; Infinity when the client set none. */
  deadline: number;
}

export function toServiceError(
  error: unknown,
): Partial<grpc.ServiceError> & { code: grpc.status; details: string } {
  if (error instanceof CriError) return { code: GRPC_CODES[error.code], details: error.message };
  return { code: grpc.status.INTERNAL, details: errorMessage(error) };
}

function elapsedMs(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e6;
}

/** Creates the directory; removes a socket nobody listens on; refuses anything else. */
async function prepareSocketPath(socketPath: string): Promise<void> {
  await fs.promises.mkdir(path.dirname(socketPath), { recursive: true, mode: 0o700 });
  let st: fs.Stats;
  try {
    st = await fs.promises.lstat(socketPath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw error;
  }
  if (!st.isSocket())
    throw new CriServerError(`listen on ${socketPath}: exists and is not a socket`);
  if (await answers(socketPath)) {
    throw new CriServerError(`listen on ${socketPath}: another server is listening there`);
  }
  await fs.promises.rm(socketPath, { force: true });
}

function answers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(socketPath);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}
