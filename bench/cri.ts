// Pod sandbox latency through the CRI socket: RunPodSandbox, and StopPodSandbox +
// RemovePodSandbox, over N pods (default 50) on the real tapmanager with the reference
// bridge + host-local plugins; the tapmanager's own setUp and tearDown, alternated in
// the same run, are the baseline. Usage: node dist/bench/cri.js [N]
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { CniClient } from "../src/cni-bridge/cni";
import { podConfig, startTestVmlet } from "../src/runtime/testing/harness";
import { enterPrivateNamespace } from "../src/sys/private-namespace";
import { Rtnl } from "../src/sys/rtnl";
import { Tapmanager } from "../src/tapmanager";
import { report } from "./lib";

async function main(): Promise<void> {
  enterPrivateNamespace();
  const lo = Rtnl.open("/proc/self/ns/net");
  await lo.setUp("lo");
  lo.close();
  const pods = Number(process.argv[2] ?? 50);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "cri-bench-"));
  const confDir = path.join(root, "net.d");
  fs.mkdirSync(confDir);
  const list = {
    cniVersion: "1.0.0",
    name: "bench",
    plugins: [
      {
        type: "bridge",
        bridge: "cribench0",
        isGateway: true,
        ipMasq: false,
        ipam: {
          type: "host-local",
          dataDir: path.join(root, "ipam"),
          ranges: [[{ subnet: "10.98.0.0/16" }]],
          routes: [{ dst: "0.0.0.0/0" }],
        },
      },
    ],
  };
  fs.writeFileSync(path.join(confDir, "10-bench.conflist"), JSON.stringify(list));
  const cni = new CniClient({
    confDir,
    binDirs: ["/usr/lib/cni"],
    cacheDir: path.join(root, "cache"),
  });
  const tm = new Tapmanager({ cni, stateDir: path.join(root, "pods") });
  const t = await startTestVmlet({ networks: tm, dir: root });
  const r = t.client.runtime;

  const samples: Record<string, number[]> = {
    RunPodSandbox: [],
    "StopPodSandbox+RemovePodSandbox": [],
    "tapmanager.setUp": [],
    "tapmanager.tearDown": [],
  };
  const time = async (name: string, work: () => Promise<unknown>, timed: boolean) => {
    const t0 = performance.now();
    await work();
    if (timed) samples[name].push(performance.now() - t0);
  };
  const warmup = 3;
  for (let i = -warmup; i < pods; i++) {
    const timed = i >= 0;
    const viaCri = async () => {
      let id = "";
      await time(
        "RunPodSandbox",
        async () => {
          id = (await r.RunPodSandbox({ config: podConfig(`cri-${i + warmup}`) })).podSandboxId;
        },
        timed,
      );
      await time(
        "StopPodSandbox+RemovePodSandbox",
        async () => {
          await r.StopPodSandbox({ podSandboxId: id });
          await r.RemovePodSandbox({ podSandboxId: id });
        },
        timed,
      );
    };
    const direct = async () => {
      const name = `tm-${i + warmup}`;
      const sandboxId = crypto.randomBytes(32).toString("hex");
      await time(
        "tapmanager.setUp",
        () => tm.setUp({ pod: { namespace: "default", name, uid: name, sandboxId } }),
        timed,
      );
      await time("tapmanager.tearDown", () => tm.tearDown(sandboxId), timed);
    };
    // Alternate which goes first, so neither always runs on a warmer cache.
    if (i % 2 === 0) {
      await viaCri();
      await direct();
    } else {
      await direct();
      await viaCri();
    }
  }
  report(
    "cri",
    `CRI pod sandboxes over the socket, ${pods} pods, bridge + host-local`,
    samples,
    [
      { name: "Run / setUp", of: "RunPodSandbox", to: "tapmanager.setUp" },
      {
        name: "Stop+Remove / tearDown",
        of: "StopPodSandbox+RemovePodSandbox",
        to: "tapmanager.tearDown",
      },
    ],
    { pods },
  );
  await t.close();
  await tm.close();
  cni.close();
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
