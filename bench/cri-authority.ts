// The CRI socket's authority front against grpc-js bound to the socket directly, on one
// runtime, alternated call by call: Version (the bare socket path, HTTP/2 and gRPC) and
// RunPodSandbox on the real tapmanager with bridge + host-local. A third client sends
// the socket path as :authority, as grpc-go 1.33 does, so its blocks are re-encoded
// (direct binding refuses it). Usage: node dist/bench/cri-authority.js [versions] [pods]
import path from "node:path";
import pino from "pino";
import { connectCri } from "../src/runtime/cri/client";
import { CriServer } from "../src/runtime/cri/server";
import { podConfig } from "../test/harness/test-vmlet";
import { inTurn, report, stepTimer } from "./lib";
import { benchVmlet } from "./node";

async function main(): Promise<void> {
  const node = await benchVmlet("authority", "authbench0", "10.97.0.0/16");
  const { root, t } = node;
  const versions = Number(process.argv[2] ?? 3000);
  const pods = Number(process.argv[3] ?? 50);
  const directSocket = path.join(root, "run", "direct.sock");
  const direct = new CriServer(t.vmlet.runtime, pino({ level: "silent" }));
  await direct.listen(directSocket, { direct: true });
  const viaFront = t.client.runtime;
  const viaDirect = connectCri(directSocket).runtime;
  const pathClient = connectCri(t.socket, { "grpc.default_authority": t.socket });
  const viaPath = pathClient.runtime;

  const { samples, time } = stepTimer([
    "Version (front)",
    "Version (direct)",
    "Version (front, path authority)",
    "RunPodSandbox (front)",
    "RunPodSandbox (direct)",
  ]);
  const warmup = 50;
  for (let i = -warmup; i < versions; i++) {
    const timed = i >= 0;
    const front = () => time("Version (front)", timed, () => viaFront.Version({}).then(() => {}));
    const bare = () => time("Version (direct)", timed, () => viaDirect.Version({}).then(() => {}));
    await inTurn(i, front, bare);
    await time("Version (front, path authority)", timed, () => viaPath.Version({}));
  }
  for (let i = -3; i < pods; i++) {
    const timed = i >= 0;
    const run = (name: string, r: typeof viaFront) => async () => {
      const { podSandboxId } = await time(`RunPodSandbox (${name})`, timed, () =>
        r.RunPodSandbox({ config: podConfig(`${name}-${i + 3}`) }),
      );
      await r.StopPodSandbox({ podSandboxId });
      await r.RemovePodSandbox({ podSandboxId });
    };
    await inTurn(i, run("front", viaFront), run("direct", viaDirect));
  }
  report(
    "cri-authority",
    `CRI socket: authority front vs grpc-js bound directly, ${versions} Versions, ${pods} pods`,
    samples,
    [
      { name: "Version front / direct", of: "Version (front)", to: "Version (direct)" },
      {
        name: "Version rewritten / direct",
        of: "Version (front, path authority)",
        to: "Version (direct)",
      },
      {
        name: "RunPodSandbox front / direct",
        of: "RunPodSandbox (front)",
        to: "RunPodSandbox (direct)",
      },
    ],
    { versions, pods },
  );
  pathClient.close();
  await direct.close();
  await node.close();
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
