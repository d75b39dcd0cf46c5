// vmlet as a daemon: open the state, recover what a previous run left, then serve CRI.
import type { Logger } from "pino";
import { CriServer } from "./cri/server";
import { ImageStore } from "./images/image-store";
import type { ImageRule } from "./images/rules";
import { type CgroupDriver, VmRuntime } from "./service";
import { checkStateDirDepth, openStateStore } from "./store";
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
  /** How often a failed RunPodSandbox's teardown is retried. */
  reapIntervalMs?: number;
}

export interface Vmlet {
  runtime: VmRuntime;
  server: CriServer;
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
  const server = new CriServer(runtime, log);
  await server.listen(options.socket);
  return {
    runtime,
    server,
    async close() {
      await server.close();
      await runtime.detach();
    },
  };
}
