// Pod sandbox latency through the CRI socket: RunPodSandbox, and StopPodSandbox +
// RemovePodSandbox, over N pods (default 50) on the real tapmanager with the reference
// bridge + host-local plugins; the tapmanager's own setUp and tearDown, alternated in
// the same run, are the baseline. Usage: node dist/bench/cri.js [N]
import crypto from "node:crypto";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { podConfig, startTestVmlet } from "../src/runtime/testing/harness";
import { Tapmanager } from "../src/tapmanager";
import { report } from "./lib";
import { benchNode } from "./node";

async function main(): Promise<void> {
  const { root, cni } = await benchNode("bench", "cribench0", "10.98.0.0/16");
  const pods = Number(process.argv[2] ?? 50);
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
