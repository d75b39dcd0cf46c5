// A QEMU whose monitor never answers, found running at vmlet's start: vmlet still comes
// up and serves within the QMP deadlines, and a stop still ends that VM in time.
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import pino from "pino";
import { createVmLauncher } from "../../src/runtime/launcher";
import type { ContainerRecord } from "../../src/runtime/store";
import { FakePodNetworks } from "../../src/runtime/testing/fake-networks";
import { podConfig, startTestVmlet, type TestVmlet } from "../../src/runtime/testing/harness";
import type { VmLauncher } from "../../src/runtime/types";
import { vmPaths } from "../../src/runtime/vm";
import { readProcStat } from "../../src/runtime/vm/proc";
import type { VmRecord } from "../../src/runtime/vm/types";
import { type FakeQemuMode, startFakeQemu } from "../harness/fake-qemu";
import { requirePrivateNamespace } from "../harness/fixtures";

function dead(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}

/** Records a running container whose VM is a fake QEMU with a wedged monitor. */
async function wedgedContainer(
  stateDir: string,
  sandboxId: string,
  name: string,
  mode: FakeQemuMode,
): Promise<{ id: string; fake: ChildProcess }> {
  const id = `${name.padEnd(16, "0")}${"0".repeat(48)}`;
  const dir = path.join(stateDir, "vms", id.slice(0, 16));
  fs.mkdirSync(dir, { recursive: true });
  const paths = vmPaths(dir);
  const fake = await startFakeQemu(paths.qmpSocket, mode);
  const stat = await readProcStat(fake.pid!);
  assert.ok(stat);
  const logPath = path.join(dir, "console.log");
  const vm: VmRecord = {
    version: 1,
    id,
    dir,
    pid: fake.pid!,
    pidStartTime: stat.startTime,
    startedAt: new Date().toISOString(),
    accel: "tcg",
    qmpSocket: paths.qmpSocket,
    consoleSocket: paths.consoleSocket,
    guestAgentSocket: paths.guestAgentSocket,
    consoleRaw: paths.consoleRaw,
    consoleOffsetFile: paths.consoleOffset,
    logPath,
    overlayPath: paths.overlay,
    seedPath: paths.seed,
    qemuLogPath: paths.qemuLog,
    pidFile: paths.pidFile,
  };
  const record: ContainerRecord = {
    id,
    sandboxId,
    phase: "running",
    metadata: { name: "vm", attempt: 0 },
    image: { spec: "vmlet.io/x", id: "0".repeat(64), ref: `sha256:${"0".repeat(64)}` },
    createdAt: "1",
    startedAt: "2",
    finishedAt: "0",
    exitCode: 0,
    reason: "",
    message: "",
    labels: {},
    annotations: {},
    logPath,
    dir,
    vcpus: 1,
    memoryMiB: 64,
    mounts: [],
    vm,
    pid: fake.pid!,
  };
  fs.writeFileSync(path.join(stateDir, "containers", `${id}.json`), JSON.stringify(record));
  return { id, fake };
}

describe("a QEMU whose QMP never answers, running when vmlet starts", () => {
  test("vmlet still starts and listens, and stopping the pods kills those VMs within the grace period plus a second", {
    timeout: 120_000,
  }, async () => {
    requirePrivateNamespace();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmlet-wedged-"));
    const networks = new FakePodNetworks();
    const logger = pino({ level: "silent" });
    const fakes: ChildProcess[] = [];
    let t: TestVmlet<FakePodNetworks, VmLauncher> | undefined;
    try {
      t = await startTestVmlet({ dir, networks, launcher: createVmLauncher({ logger }) });
      const answersCaps = await t.client.runtime.RunPodSandbox({ config: podConfig("caps") });
      const silent = await t.client.runtime.RunPodSandbox({ config: podConfig("silent") });
      await t.close();
      t = undefined;

      // As a vmlet that crashed left them: two running VMs, whose monitors then wedged.
      const stateDir = path.join(dir, "state");
      const a = await wedgedContainer(stateDir, answersCaps.podSandboxId, "caps", "capabilities");
      const b = await wedgedContainer(stateDir, silent.podSandboxId, "silent", "silent");
      fakes.push(a.fake, b.fake);

      const started = Date.now();
      t = await startTestVmlet({ dir, networks, launcher: createVmLauncher({ logger }) });
      const took = Date.now() - started;
      // Both adopted at once, each within QMP's 5 s deadlines (connect; query-status).
      assert.ok(took < 9000, `vmlet took ${took} ms to listen`);
      assert.equal((await t.client.runtime.Version({})).runtimeName, "vmlet");

      // The one whose monitor negotiated was adopted: a stop presses the button, no
      // answer comes, and the grace period ends it.
      const stopAt = Date.now();
      await t.client.runtime.StopContainer({ containerId: a.id, timeout: 2 });
      assert.ok(Date.now() - stopAt < 3000, `StopContainer took ${Date.now() - stopAt} ms`);
      assert.ok(dead(a.fake.pid!), "the adopted wedged VM is killed");
      const sa = (await t.client.runtime.ContainerStatus({ containerId: a.id })).status;
      assert.equal(sa?.state, "CONTAINER_EXITED");

      // The one that never negotiated could not be adopted: StopPodSandbox kills it by pid.
      await t.client.runtime.StopPodSandbox({ podSandboxId: silent.podSandboxId });
      assert.ok(dead(b.fake.pid!), "the unadopted wedged VM is killed by its pid");
      const sb = (await t.client.runtime.ContainerStatus({ containerId: b.id })).status;
      assert.equal(sb?.state, "CONTAINER_EXITED");
      assert.match(sb?.message ?? "", /killed by vmlet by its pid: the VM could not be adopted/);
      for (const id of [answersCaps.podSandboxId, silent.podSandboxId]) {
        await t.client.runtime.RemovePodSandbox({ podSandboxId: id });
      }
    } finally {
      await t?.close();
      for (const fake of fakes) fake.kill("SIGKILL");
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
