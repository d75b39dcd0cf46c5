// Pod sandbox latency through the CRI socket: RunPodSandbox, and StopPodSandbox +
// RemovePodSandbox, over N pods (default 50) on the real tapmanager with the reference
// bridge + host-local plugins; the tapmanager's own setUp and tearDown, alternated in
// the same run, are the baseline. Usage: node dist/bench/cri.js [N]
import crypto from "node:crypto";
import { podConfig } from "../test/harness/test-vmlet";
import { inTurn, report, stepTimer } from "./lib";
import { benchVmlet } from "./node";

async function main(): Promise<void> {
  const node = await benchVmlet("bench", "cribench0", "10.98.0.0/16");
  const { tm, t } = node;
  const pods = Number(process.argv[2] ?? 50);
  const r = t.client.runtime;

  const { samples, time } = stepTimer([
    "RunPodSandbox",
    "StopPodSandbox+RemovePodSandbox",
    "tapmanager.setUp",
    "tapmanager.tearDown",
  ]);
  const warmup = 3;
  for (let i = -warmup; i < pods; i++) {
    const timed = i >= 0;
    const viaCri = async () => {
      let id = "";
      await time("RunPodSandbox", timed, async () => {
        id = (await r.RunPodSandbox({ config: podConfig(`cri-${i + warmup}`) })).podSandboxId;
      });
      await time("StopPodSandbox+RemovePodSandbox", timed, async () => {
        await r.StopPodSandbox({ podSandboxId: id });
        await r.RemovePodSandbox({ podSandboxId: id });
      });
    };
    const direct = async () => {
      const name = `tm-${i + warmup}`;
      const sandboxId = crypto.randomBytes(32).toString("hex");
      await time("tapmanager.setUp", timed, () =>
        tm.setUp({ pod: { namespace: "default", name, uid: name, sandboxId } }),
      );
      await time("tapmanager.tearDown", timed, () => tm.tearDown(sandboxId));
    };
    await inTurn(i, viaCri, direct);
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
  await node.close();
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
