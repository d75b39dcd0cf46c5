// RunPodSandbox of a container pod through vmlet fronting containerd, against the same
// call straight to containerd's socket, alternated pod by pod on one real containerd
// (Debian's 1.6.20, runc, bridge + host-local). What vmlet adds is the owner map's
// durable write and one more gRPC hop. PodSandboxStatus, alternated the same way, shows the hop alone.
// Usage: node dist/bench/cri-proxy.js [pods] [status calls]
import fs from "node:fs";
import path from "node:path";
import pino from "pino";
import { connectCri } from "../src/runtime/cri/client";
import { CriServer } from "../src/runtime/cri/server";
import { CriProxy } from "../src/runtime/proxy/router";
import { containerdMissing, makeContainerd, startRegistry } from "../test/harness/containerd";
import { podConfig } from "../test/harness/test-vmlet";
import { inTurn, report, stepTimer, summarize } from "./lib";
import { benchVmlet } from "./node";
import { BIN_DIR } from "./plugin";

async function main(): Promise<void> {
  const missing = containerdMissing();
  if (missing) throw new Error(`cri-proxy bench: ${missing}`);
  const node = await benchVmlet("proxy", "pxbench0", "10.96.0.0/16");
  const { root, t } = node;
  const pods = Number(process.argv[2] ?? 40);
  const statusCalls = Number(process.argv[3] ?? 1000);
  const registry = await startRegistry(path.join(root, "registry"));
  const containerd = makeContainerd({
    dir: path.join(root, "containerd"),
    cniConfDir: path.join(root, "net.d"),
    cniBinDir: BIN_DIR,
    registry: registry.address,
  });
  await containerd.start();
  const logger = pino({ level: "silent" });
  const proxy = await CriProxy.open({
    vm: t.vmlet.runtime.calls,
    containerdSocket: containerd.socket,
    stateDir: path.join(root, "proxy-state"),
    vmHandlers: ["vmlet"],
    imageRules: () => [],
    logger,
  });
  const proxySocket = path.join(root, "run", "proxy.sock");
  const server = new CriServer(proxy, logger);
  await server.listen(proxySocket);
  const viaVmlet = connectCri(proxySocket);
  const direct = connectCri(containerd.socket);
  const logs = path.join(root, "pods");
  fs.mkdirSync(logs);

  const { samples, time } = stepTimer([
    "RunPodSandbox (via vmlet)",
    "RunPodSandbox (direct)",
    "PodSandboxStatus (via vmlet)",
    "PodSandboxStatus (direct)",
  ]);
  const warmup = 3;
  for (let i = -warmup; i < pods; i++) {
    const timed = i >= 0;
    const run = (name: string, client: typeof direct) => async () => {
      const podName = `${name}-${i + warmup}`;
      const config = podConfig(podName, { logDirectory: path.join(logs, podName) });
      const { podSandboxId } = await time(`RunPodSandbox (${name})`, timed, () =>
        client.runtime.RunPodSandbox({ config }),
      );
      await client.runtime.StopPodSandbox({ podSandboxId });
      await client.runtime.RemovePodSandbox({ podSandboxId });
    };
    await inTurn(i, run("via vmlet", viaVmlet), run("direct", direct));
  }
  // The hop alone: a call containerd answers from memory, on one pod.
  const statusConfig = podConfig("status", { logDirectory: path.join(logs, "status") });
  const { podSandboxId } = await viaVmlet.runtime.RunPodSandbox({ config: statusConfig });
  for (let i = -50; i < statusCalls; i++) {
    const timed = i >= 0;
    const status = (name: string, client: typeof direct) => () =>
      time(`PodSandboxStatus (${name})`, timed, () =>
        client.runtime.PodSandboxStatus({ podSandboxId }).then(() => {}),
      );
    await inTurn(i, status("via vmlet", viaVmlet), status("direct", direct));
  }
  await viaVmlet.runtime.StopPodSandbox({ podSandboxId });
  await viaVmlet.runtime.RemovePodSandbox({ podSandboxId });
  const a = summarize(samples["RunPodSandbox (via vmlet)"]);
  const b = summarize(samples["RunPodSandbox (direct)"]);
  const added = { p50: a.p50 - b.p50, p90: a.p90 - b.p90 };
  console.log(`added by vmlet: p50 ${added.p50.toFixed(2)} ms, p90 ${added.p90.toFixed(2)} ms`);
  report(
    "cri-proxy",
    `RunPodSandbox of a container pod: through vmlet fronting containerd vs containerd's own socket, ${pods} pods each`,
    samples,
    [
      {
        name: "RunPodSandbox via / direct",
        of: "RunPodSandbox (via vmlet)",
        to: "RunPodSandbox (direct)",
      },
      {
        name: "PodSandboxStatus via / direct",
        of: "PodSandboxStatus (via vmlet)",
        to: "PodSandboxStatus (direct)",
      },
    ],
    { pods, statusCalls, addedMs: added, target: "<= 1.05 x direct + 2 ms" },
  );
  viaVmlet.close();
  direct.close();
  await server.close();
  proxy.close();
  await containerd.remove();
  await registry.stop();
  await node.close();
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
