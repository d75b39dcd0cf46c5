// vmlet on a private socket and state dir, with the stand-in networks and launcher, and
// a CRI client on it: what the CRI tests and benches drive. VMLET_TEST_LOG=debug shows logs.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { type CriClient, connectCri } from "../../src/runtime/cri/client";
import { startVmlet, type Vmlet } from "../../src/runtime/daemon";
import type { ImageRule } from "../../src/runtime/images/rules";
import type { PodNetworks, VmLauncher } from "../../src/runtime/types";
import { FakePodNetworks } from "./fake-networks";
import { ProcessLauncher } from "./process-launcher";

export interface TestVmlet<
  N extends PodNetworks = FakePodNetworks,
  L extends VmLauncher = ProcessLauncher,
> {
  dir: string;
  socket: string;
  stateDir: string;
  networks: N;
  launcher: L;
  rules: ImageRule[];
  vmlet: Vmlet;
  client: CriClient;
  /** Drops this vmlet without stopping anything, as a SIGKILL would, and starts another on the same state. */
  restart(): Promise<void>;
  close(): Promise<void>;
}

export async function startTestVmlet<
  N extends PodNetworks = FakePodNetworks,
  L extends VmLauncher = ProcessLauncher,
>(
  options: { networks?: N; launcher?: L; rules?: ImageRule[]; dir?: string } = {},
): Promise<TestVmlet<N, L>> {
  const dir = options.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "vmlet-cri-"));
  const socket = path.join(dir, "run", "vmlet.sock");
  const stateDir = path.join(dir, "state");
  const networks = options.networks ?? (new FakePodNetworks() as unknown as N);
  const launcher = options.launcher ?? (new ProcessLauncher() as unknown as L);
  const rules = options.rules ?? [];
  const logger = pino({ level: process.env.VMLET_TEST_LOG ?? "silent" }, pino.destination(2));
  const start = () =>
    startVmlet({
      socket,
      stateDir,
      networks,
      launcher,
      imageRules: () => rules,
      accel: "tcg",
      logger,
    });
  const t: TestVmlet<N, L> = {
    dir,
    socket,
    stateDir,
    networks,
    launcher,
    rules,
    vmlet: await start(),
    client: connectCri(socket),
    async restart() {
      t.client.close();
      await t.vmlet.close();
      t.vmlet = await start();
      t.client = connectCri(socket);
    },
    async close() {
      t.client.close();
      await t.vmlet.close();
    },
  };
  return t;
}

/** A sandbox config as kubelet sends it, with a unique pod. */
export function podConfig(
  name: string,
  extra: {
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    attempt?: number;
    logDirectory?: string;
  } = {},
) {
  return {
    metadata: { name, namespace: "default", uid: `uid-${name}`, attempt: extra.attempt ?? 0 },
    hostname: name,
    logDirectory: extra.logDirectory ?? "",
    labels: { app: name, ...extra.labels },
    annotations: extra.annotations ?? {},
    linux: { securityContext: { namespaceOptions: { network: "POD" as const } } },
  };
}
