// CRI's Exec, Attach and PortForward: each call is checked and answered with a single-use
// URL on the streaming server; the connection kubelet then makes to that URL runs the
// exec (guest agent), the attach (serial console) or the port-forward (TCP to the pod IP).
// The runtime is reached only through the narrow lookups below.
import net from "node:net";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { errorMessage } from "../../util/errors";
import type * as cri from "../cri/generated";
import { CriError, invalidArgument } from "../errors";
import { ConsoleAttacher } from "./console-attach";
import { guestExecTarget } from "./guest-exec-target";
import { servePortForward } from "./portforward";
import {
  type RemoteCommandOptions,
  type RemoteCommandProtocol,
  type StreamTarget,
  serveRemoteCommand,
} from "./remotecommand";
import {
  StreamingServer,
  type StreamingServerOptions,
  type UpgradedStream,
  type WebSocketUpgrade,
  writeRaw,
} from "./server";
import { TokensExhaustedError } from "./tokens";
import { serveWebSocketRemoteCommand } from "./websocket";
import { portForwardPorts, serveWebSocketPortForward } from "./websocket-portforward";

/** containerd's and kubelet's dial timeout for a forwarded port. */
export const PORT_FORWARD_CONNECT_TIMEOUT_MS = 5000;

/** What a call stored behind its token. */
export type StreamRequest =
  | { kind: "exec"; containerId: string; cmd: string[]; io: RemoteCommandOptions }
  | { kind: "attach"; containerId: string; io: RemoteCommandOptions }
  | { kind: "portforward"; podSandboxId: string; ports: number[] };

/** A running container's VM, as streaming needs it. */
export interface StreamContainer {
  /** For messages: "<namespace>/<pod> container <id>". */
  name: string;
  guestAgentSocket?: string;
  consoleSocket?: string;
}

/** A ready pod, as port-forward needs it. */
export interface StreamSandbox {
  name: string;
  /** The pod's IPv4 (or IPv6) address, where the guest listens. */
  ip: string;
}

/**
 * The runtime's side. Each throws a CriError (NOT_FOUND, FAILED_PRECONDITION) naming the
 * call and object when the container is not running or the pod not ready.
 */
export interface StreamLookups {
  container(id: string, call: string): StreamContainer;
  sandbox(id: string, call: string): StreamSandbox;
}

export interface CriStreamingOptions {
  lookups: StreamLookups;
  logger: Logger;
  /** host:port to listen on; default 127.0.0.1 and a port chosen at start. */
  address?: string;
  server?: Omit<StreamingServerOptions<StreamRequest>, "serve" | "address" | "port">;
  /** Test hook: the dialer port-forward uses (default: TCP to the pod IP from the node). */
  dial?: (sandbox: StreamSandbox, port: number) => Promise<Duplex>;
  streamCreationTimeoutMs?: number;
}

export class CriStreaming {
  readonly server: StreamingServer<StreamRequest>;
  readonly attacher = new ConsoleAttacher();
  private readonly lookups: StreamLookups;
  private readonly log: Logger;
  private readonly dial: (sandbox: StreamSandbox, port: number) => Promise<Duplex>;
  private active = 0;

  constructor(private readonly options: CriStreamingOptions) {
    this.lookups = options.lookups;
    this.log = options.logger.child({ component: "streaming" });
    this.dial = options.dial ?? ((sandbox, port) => dialPod(sandbox.ip, port));
    const { host, port } = parseAddress(options.address ?? "127.0.0.1:0");
    this.server = new StreamingServer<StreamRequest>({
      ...options.server,
      address: host,
      port,
      serve: (u) => this.serve(u),
      serveWebSocket: (u) => this.serveWebSocket(u),
    });
  }

  async start(): Promise<void> {
    await this.server.start();
    this.log.info({ url: this.server.baseUrl }, "streaming server listening");
  }

  stop(): Promise<void> {
    return this.server.stop();
  }

  /** Upgraded connections being served now. */
  get activeStreams(): number {
    return this.active;
  }

  getExec(req: cri.ExecRequest__Output): { url: string } {
    const call = "Exec";
    const io = remoteCommandOptions(call, req);
    if (req.cmd.length === 0 || req.cmd[0] === "") throw invalidArgument(`${call}: cmd is empty`);
    this.lookups.container(required(call, "container_id", req.containerId), call);
    return {
      url: this.url("exec", { kind: "exec", containerId: req.containerId, cmd: [...req.cmd], io }),
    };
  }

  getAttach(req: cri.AttachRequest__Output): { url: string } {
    const call = "Attach";
    const io = remoteCommandOptions(call, req);
    this.lookups.container(required(call, "container_id", req.containerId), call);
    return { url: this.url("attach", { kind: "attach", containerId: req.containerId, io }) };
  }

  getPortForward(req: cri.PortForwardRequest__Output): { url: string } {
    const call = "PortForward";
    this.lookups.sandbox(required(call, "pod_sandbox_id", req.podSandboxId), call);
    for (const port of req.port) {
      if (!Number.isInteger(port) || port < 1 || port > 65535)
        throw invalidArgument(`${call}: port ${port}: must be 1-65535`);
    }
    return {
      url: this.url("portforward", {
        kind: "portforward",
        podSandboxId: req.podSandboxId,
        ports: [...req.port],
      }),
    };
  }

  private url(kind: StreamRequest["kind"], request: StreamRequest): string {
    try {
      return this.server.urlFor(kind, request);
    } catch (error) {
      if (error instanceof TokensExhaustedError)
        throw new CriError("RESOURCE_EXHAUSTED", error.message, { cause: error });
      throw error;
    }
  }

  /** One upgraded connection; never throws (failures go to its client and the log). */
  private serve(u: UpgradedStream<StreamRequest>): void {
    const request = u.request;
    const log = this.log.child({ kind: request.kind, protocol: u.protocol });
    this.active++;
    const done = () => {
      this.active--;
    };
    if (request.kind === "portforward") {
      let sandbox: StreamSandbox;
      try {
        sandbox = this.lookups.sandbox(request.podSandboxId, "PortForward");
      } catch (error) {
        log.warn({ err: error, podSandboxId: request.podSandboxId }, "port-forward refused");
        u.session.start({ stream: (s) => s.destroy(), close: done }, u.head);
        u.session.close();
        return;
      }
      servePortForward(
        u.session,
        {
          podName: sandbox.name,
          dial: (port) => this.dial(sandbox, port),
          ...(this.options.streamCreationTimeoutMs
            ? { streamCreationTimeoutMs: this.options.streamCreationTimeoutMs }
            : {}),
          onError: (error) => log.info({ err: error }, "port-forward connection failed"),
          onClose: done,
        },
        u.head,
      );
      return;
    }
    const target = this.targetOf(request);
    void serveRemoteCommand(
      u.session,
      u.protocol as RemoteCommandProtocol,
      request.io,
      target,
      {
        ...(this.options.streamCreationTimeoutMs
          ? { streamCreationTimeoutMs: this.options.streamCreationTimeoutMs }
          : {}),
        onError: (error) =>
          log.info({ err: error, containerId: request.containerId }, error.message),
      },
      u.head,
    ).finally(done);
  }

  /** Exec or attach for a client that speaks the WebSocket channel protocols. */
  private serveWebSocket(u: WebSocketUpgrade<StreamRequest>): void {
    const request = u.request;
    if (request.kind === "portforward") {
      this.serveWebSocketPortForward(u, request);
      return;
    }
    const log = this.log.child({
      kind: request.kind,
      protocol: u.protocol,
      transport: "websocket",
    });
    this.active++;
    void serveWebSocketRemoteCommand(
      u.req,
      u.socket,
      u.head,
      u.protocol,
      request.io,
      this.targetOf(request),
      {
        onError: (error) =>
          log.info({ err: error, containerId: request.containerId }, error.message),
      },
    ).finally(() => {
      this.active--;
    });
  }

  /** kubelet's WebSocket port-forward: the ports from the query, else the request's. */
  private serveWebSocketPortForward(
    u: WebSocketUpgrade<StreamRequest>,
    request: Extract<StreamRequest, { kind: "portforward" }>,
  ): void {
    const log = this.log.child({
      kind: "portforward",
      protocol: u.protocol,
      transport: "websocket",
    });
    let ports: number[];
    let sandbox: StreamSandbox;
    try {
      ports = portForwardPorts(u.req.url, request.ports);
    } catch (error) {
      writeRaw(u.socket, 400, `unable to upgrade: ${errorMessage(error)}`, {});
      return;
    }
    try {
      sandbox = this.lookups.sandbox(request.podSandboxId, "PortForward");
    } catch (error) {
      log.warn({ err: error, podSandboxId: request.podSandboxId }, "port-forward refused");
      writeRaw(u.socket, 404, `unable to upgrade: ${errorMessage(error)}`, {});
      return;
    }
    this.active++;
    serveWebSocketPortForward(u.req, u.socket, u.head, u.protocol, ports, {
      podName: sandbox.name,
      dial: (port) => this.dial(sandbox, port),
      onError: (error) => log.info({ err: error }, "port-forward connection failed"),
      onClose: () => {
        this.active--;
      },
    });
  }

  /** The backend of an exec or attach, or a target that reports why there is none. */
  private targetOf(request: Exclude<StreamRequest, { kind: "portforward" }>): StreamTarget {
    const call = request.kind === "exec" ? "Exec" : "Attach";
    let container: StreamContainer;
    try {
      container = this.lookups.container(request.containerId, call);
    } catch (error) {
      return failing(error as Error);
    }
    const describe = `${call} ${container.name}`;
    if (request.kind === "exec") {
      if (!container.guestAgentSocket)
        return failing(new Error(`${describe}: the VM has no guest agent port`));
      return guestExecTarget(container.guestAgentSocket, request.cmd, describe);
    }
    if (!container.consoleSocket)
      return failing(new Error(`${describe}: the VM has no console socket`));
    return this.attacher.target(container.consoleSocket, describe);
  }
}

/**
 * The guest holds the pod IP; the pod netns keeps no address once rewired (the veth is a
 * bridge port), so the pod is reached from the node, as every CNI network lets the node do.
 */
function dialPod(ip: string, port: number): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const where = `${ip.includes(":") ? `[${ip}]` : ip}:${port}`;
    const socket = net.connect({ host: ip, port, allowHalfOpen: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connect ${where}: no answer in ${PORT_FORWARD_CONNECT_TIMEOUT_MS} ms`));
    }, PORT_FORWARD_CONNECT_TIMEOUT_MS);
    socket.once("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new Error(`connect ${where}: ${error.code ?? error.message}`, { cause: error }));
    });
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.removeAllListeners("error");
      // Until port-forward takes it: a reset then must not become an unhandled 'error'.
      socket.on("error", () => socket.destroy());
      resolve(socket);
    });
  });
}

function failing(error: Error): StreamTarget {
  return { run: async () => error };
}

function required(call: string, field: string, value: string): string {
  if (!value) throw invalidArgument(`${call}: ${field} is required`);
  return value;
}

/** kubelet's checks for exec and attach, in its order. */
function remoteCommandOptions(
  call: string,
  req: { tty: boolean; stdin: boolean; stdout: boolean; stderr: boolean },
): RemoteCommandOptions {
  if (req.tty && req.stderr)
    throw invalidArgument(
      `${call}: tty and stderr cannot both be true (a terminal has one output)`,
    );
  if (!req.stdin && !req.stdout && !req.stderr)
    throw invalidArgument(`${call}: one of stdin, stdout and stderr must be true`);
  return { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
}

/** "127.0.0.1:0", "[::1]:10010", ":0" (loopback). */
export function parseAddress(address: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(address);
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || port > 65535) {
    throw new Error(`stream address ${JSON.stringify(address)}: want host:port, e.g. 127.0.0.1:0`);
  }
  return { host: m[1] ?? (m[2] || "127.0.0.1"), port };
}
