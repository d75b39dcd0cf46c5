// vmlet as a daemon: open the state, recover what a previous run left, then serve CRI.
import type { Logger } from "pino";
import type { CriCalls, ExecGroup } from "./cri/backend";
import { CriServer } from "./cri/server";
import { ImageStore } from "./images/image-store";
import type { ImageRule } from "./images/rules";
import { CriProxy } from "./proxy/router";
import { type CgroupDriver, VmRuntime } from "./service";
import { checkStateDirDepth, openStateStore } from "./store";
import { CriStreaming } from "./streaming/cri-calls";
import type { Accel, PodNetworks, VmLauncher } from "./types";

export interface VmletOptions {
  socket: string;
  stateDir: string;
  networks: PodNetworks;
  launcher: VmLauncher;
  /** Read on every pull. */
  imageRules: () => ImageRule[];
  /** Largest image download, in bytes. */
  imageMaxBytes?: number;
  accel: Accel;
  logger: Logger;
  cgroupDriver?: CgroupDriver;
  /** Where the streaming server (exec, attach, port-forward) listens; default 127.0.0.1:0. */
  streamAddress?: string;
  /** How often a failed RunPodSandbox's teardown is retried. */
  reapIntervalMs?: number;
  /** Front the node's containerd: pods of `vmHandlers` are VMs, every other pod goes to it. */
  containerd?: { socket: string; vmHandlers: string[] };
}

export interface Vmlet {
  runtime: VmRuntime;
  server: CriServer;
  streaming: CriStreaming;
  /** Stops serving; running VMs and pod networks stay up for the next start. */
  close(): Promise<void>;
}

export async function startVmlet(options: VmletOptions): Promise<Vmlet> {
  const log = options.logger;
  checkStateDirDepth(options.stateDir);
  const store = await openStateStore(options.stateDir);
  for (const kind of [store.sandboxes, store.containers, store.images]) {
    for (const u of kind.unreadable)
      log.error({ file: u.file, error: u.error }, `unreadable ${kind.kind} record: ignored`);
  }
  const images = await ImageStore.open({
    records: store.images,
    dir: options.stateDir,
    rules: options.imageRules,
    maxBytes: options.imageMaxBytes,
    logger: log,
  });
  const runtime = new VmRuntime({
    store,
    images,
    networks: options.networks,
    launcher: options.launcher,
    logger: log,
    accel: options.accel,
    cgroupDriver: options.cgroupDriver,
  });
  await runtime.recover();
  runtime.startReaper(options.reapIntervalMs);
  const streaming = new CriStreaming({
    lookups: runtime.streamLookups,
    logger: log,
    ...(options.streamAddress ? { address: options.streamAddress } : {}),
  });
  await streaming.start();
  // vmlet's own calls, with the streaming Get* calls that hand out the streaming server's URLs.
  const calls: CriCalls = { ...runtime.calls, exec: withStreaming(runtime.calls.exec, streaming) };
  let proxy: CriProxy | undefined;
  let server: CriServer | undefined;
  try {
    proxy = options.containerd
      ? await CriProxy.open({
          vm: calls,
          containerdSocket: options.containerd.socket,
          stateDir: options.stateDir,
          vmHandlers: options.containerd.vmHandlers,
          imageRules: options.imageRules,
          logger: log,
        })
      : undefined;
    server = new CriServer(proxy ?? { calls }, log);
    await server.listen(options.socket);
  } catch (error) {
    proxy?.close();
    await streaming.stop();
    throw error;
  }
  const listening = server;
  return {
    runtime,
    streaming,
    server: listening,
    async close() {
      await listening.close();
      await streaming.stop();
      proxy?.close();
      await runtime.detach();
    },
  };
}

function withStreaming(exec: ExecGroup, streaming: CriStreaming): ExecGroup {
  return {
    execSync: (q, call) => exec.execSync(q, call),
    exec: (q) => streaming.getExec(q),
    attach: (q) => streaming.getAttach(q),
    portForward: (q) => streaming.getPortForward(q),
  };
}
