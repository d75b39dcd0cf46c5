// StartContainer → DHCP lease with the test guest, through the CRI socket: the time from
// the StartContainer call to the guest's "lease bound" line in the container log, over N
// pods (default 5, each a TCG boot). Needs the VM launcher and scripts/build-test-guests.sh.
// Usage: node dist/bench/cri-lease.js [N]
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { performance } from "node:perf_hooks";
import pino from "pino";
import { createVmLauncher } from "../src/runtime/vm/qemu-launcher";
import { podConfig } from "../test/harness/test-vmlet";
import { report } from "./lib";
import { benchVmlet } from "./node";

const GUEST_DISK = path.join(
  process.env.VMLET_GUESTS_DIR ?? path.resolve(__dirname, "../../.cache/guests"),
  "disk.qcow2",
);

async function main(): Promise<void> {
  if (!fs.existsSync(GUEST_DISK))
    throw new Error(`no test guest at ${GUEST_DISK}: run scripts/build-test-guests.sh`);
  const pods = Number(process.argv[2] ?? 5);
  const launcher = createVmLauncher({ logger: pino({ level: "silent" }) });
  const node = await benchVmlet("lease", "crilease0", "10.97.0.0/24", launcher);
  const { root, t } = node;
  const server = http.createServer((_req, res) => fs.createReadStream(GUEST_DISK).pipe(res));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.rules.push({
    prefix: "vmlet.io/",
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}/`,
  });
  const { imageRef } = await t.client.image.PullImage({ image: { image: "vmlet.io/guest" } });
  const r = t.client.runtime;
  const samples: Record<string, number[]> = {
    "StartContainer call": [],
    "StartContainer → lease": [],
  };
  for (let i = 0; i < pods; i++) {
    const logDirectory = path.join(root, "logs", String(i));
    const sandboxConfig = podConfig(`lease-${i}`, { logDirectory });
    const { podSandboxId } = await r.RunPodSandbox({ config: sandboxConfig });
    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "guest" }, image: { image: imageRef }, logPath: "guest.log" },
      sandboxConfig,
    });
    const logPath = path.join(logDirectory, "guest.log");
    const t0 = performance.now();
    await r.StartContainer({ containerId });
    samples["StartContainer call"].push(performance.now() - t0);
    for (;;) {
      if (
        fs.existsSync(logPath) &&
        fs.readFileSync(logPath, "utf8").includes('VMLET-GUEST lease event="bound"')
      )
        break;
      if (performance.now() - t0 > 60_000) throw new Error(`pod ${i}: no lease after 60 s`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    samples["StartContainer → lease"].push(performance.now() - t0);
    await r.StopPodSandbox({ podSandboxId });
    await r.RemovePodSandbox({ podSandboxId });
  }
  report(
    "cri-lease",
    `StartContainer to DHCP lease, test guest under TCG, ${pods} pods`,
    samples,
    [],
    { pods },
  );
  server.close();
  await node.close();
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
