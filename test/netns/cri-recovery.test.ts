// The CRI socket driven as kubelet drives it, with stand-ins for the pod network and the
// VM launcher (test/harness/cri-suite.ts): what a restart keeps (adopted VMs, vanished
// ones, half-made sandboxes, interrupted starts) and VM exits recorded once.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import { RecordStore, type StoredRecord } from "../../src/runtime/store";
import { criSuite, waitDead } from "../harness/cri-suite";
import { podConfig } from "../harness/test-vmlet";

describe("CRI recovery and VM monitoring", () => {
  const suite = criSuite();

  test("after a restart running VMs are adopted and still RUNNING, vanished ones EXITED", async () => {
    const r = () => suite.t.client.runtime;
    const a = await r().RunPodSandbox({ config: podConfig("keep") });
    const b = await r().RunPodSandbox({ config: podConfig("lose") });
    const ca = await r().CreateContainer({
      podSandboxId: a.podSandboxId,
      config: { metadata: { name: "c" }, image: { image: suite.imageRef } },
    });
    const cb = await r().CreateContainer({
      podSandboxId: b.podSandboxId,
      config: { metadata: { name: "c" }, image: { image: suite.imageRef } },
    });
    await r().StartContainer({ containerId: ca.containerId });
    await r().StartContainer({ containerId: cb.containerId });
    const pidOf = async (id: string) =>
      (
        JSON.parse((await r().ContainerStatus({ containerId: id, verbose: true })).info.info) as {
          pid: number;
        }
      ).pid;
    const pidA = await pidOf(ca.containerId);
    const pidB = await pidOf(cb.containerId);

    await suite.t.restart();
    // While vmlet was down, one VM died.
    process.kill(pidB, "SIGKILL");
    await waitDead(pidB);
    await suite.t.restart();

    assert.ok(suite.t.networks.calls.includes("recover"));
    let sa = (await r().ContainerStatus({ containerId: ca.containerId })).status;
    assert.equal(sa?.state, "CONTAINER_RUNNING");
    assert.equal(await pidOf(ca.containerId), pidA);
    process.kill(pidA, 0); // still there
    const sb = (await r().ContainerStatus({ containerId: cb.containerId })).status;
    assert.equal(sb?.state, "CONTAINER_EXITED");
    assert.match(sb?.message ?? "", /exited while vmlet was not watching it/);

    await r().StopContainer({ containerId: ca.containerId, timeout: 2 });
    sa = (await r().ContainerStatus({ containerId: ca.containerId })).status;
    assert.equal(sa?.state, "CONTAINER_EXITED");
    assert.throws(() => process.kill(pidA, 0), /ESRCH/);
    for (const id of [a.podSandboxId, b.podSandboxId]) {
      await r().StopPodSandbox({ podSandboxId: id });
      await r().RemovePodSandbox({ podSandboxId: id });
    }
    assert.deepEqual(fs.readdirSync(path.join(suite.t.stateDir, "containers")), []);
  });

  test("a VM that cannot be re-attached after a restart stays RUNNING and is stopped on a retry, not leaked", async () => {
    const r = () => suite.t.client.runtime;
    const { podSandboxId, containerId, pid } = await suite.runningVm("unattached");
    suite.t.launcher.failNextAdopt = new Error("QMP: connection refused");
    await suite.t.restart();
    assert.equal((await r().ContainerStatus({ containerId })).status?.state, "CONTAINER_RUNNING");
    await r().RemovePodSandbox({ podSandboxId });
    await waitDead(pid);
  });

  test("a VM not adopted at start is adopted again later, so that its exit is still seen", async () => {
    const r = () => suite.t.client.runtime;
    const { podSandboxId, containerId, pid } = await suite.runningVm("readopt");
    suite.t.launcher.failNextAdopt = new Error("QMP: no greeting within 5000 ms");
    await suite.t.restart();
    await suite.t.vmlet.runtime.readoptUnwatched(); // what the reaper does every 30 s
    process.kill(pid, "SIGKILL"); // the VM then ends by itself
    await waitDead(pid);
    for (let i = 0; i < 50; i++) {
      const s = (await r().ContainerStatus({ containerId })).status;
      if (s?.state === "CONTAINER_EXITED") break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.equal((await r().ContainerStatus({ containerId })).status?.state, "CONTAINER_EXITED");
    await r().RemovePodSandbox({ podSandboxId });
  });

  test("a VM that can never be adopted (its QMP never answers) is killed by its pid when the pod stops", async () => {
    const r = () => suite.t.client.runtime;
    const { podSandboxId, containerId, pid } = await suite.runningVm("wedged");
    suite.t.launcher.failAdopts = new Error("QMP: query-status: no answer within 5000 ms");
    try {
      await suite.t.restart();
      await r().StopPodSandbox({ podSandboxId });
      await waitDead(pid);
      const s = (await r().ContainerStatus({ containerId })).status;
      assert.equal(s?.state, "CONTAINER_EXITED");
      assert.equal(s?.exitCode, 137);
      assert.match(
        s?.message ?? "",
        /killed by vmlet by its pid: the VM could not be adopted \(QMP/,
      );
    } finally {
      suite.t.launcher.failAdopts = undefined;
    }
    await r().RemovePodSandbox({ podSandboxId });
  });

  test("a VM that exits on its own while RemoveContainer runs: its exit is recorded under the pod lock, and the removed container stays removed", async () => {
    const r = suite.t.client.runtime;
    const { podSandboxId, containerId, pid } = await suite.runningVm("exitrace");
    // The first write of the exit record is held, as a slow fsync would hold it (a disk
    // cannot be made slow on demand): the window in which RemoveContainer arrives.
    const put = RecordStore.prototype.put;
    let held: (() => void) | undefined;
    let hit!: () => void;
    const reached = new Promise<void>((resolve) => {
      hit = resolve;
    });
    RecordStore.prototype.put = async function (this: RecordStore<StoredRecord>, record) {
      const exited = (record as { id: string; phase?: string }).phase === "exited";
      if (exited && record.id === containerId && !held) {
        await new Promise<void>((resolve) => {
          held = resolve;
          hit();
        });
      }
      return put.call(this, record);
    };
    try {
      process.kill(pid, "SIGKILL"); // the VM ends by itself
      await reached;
      const removing = r.RemoveContainer({ containerId });
      await new Promise((resolve) => setTimeout(resolve, 200));
      held?.();
      await removing;
    } finally {
      RecordStore.prototype.put = put;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
    const listed = await r.ListContainers({ filter: { podSandboxId } });
    assert.deepEqual(listed.containers, [], "no exited record comes back after the removal");
    assert.ok(!fs.existsSync(path.join(suite.t.stateDir, "containers", `${containerId}.json`)));
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("a pod whose network did not come back after a restart is NOTREADY, so kubelet recreates it", async () => {
    const r = () => suite.t.client.runtime;
    const { podSandboxId } = await r().RunPodSandbox({ config: podConfig("netlost") });
    suite.t.networks.networks.delete(podSandboxId); // as if its netns vanished while vmlet was down
    await suite.t.restart();
    const s = (await r().PodSandboxStatus({ podSandboxId })).status;
    assert.equal(s?.state, "SANDBOX_NOTREADY");
    await r().RemovePodSandbox({ podSandboxId });
  });

  test("a container caught starting by a crash: its VM is discarded and it is reported exited", async () => {
    const r = () => suite.t.client.runtime;
    const { podSandboxId } = await r().RunPodSandbox({ config: podConfig("crashstart") });
    const { containerId } = await r().CreateContainer({
      podSandboxId,
      config: { metadata: { name: "c" }, image: { image: suite.imageRef } },
    });
    const file = path.join(suite.t.stateDir, "containers", `${containerId}.json`);
    const record = JSON.parse(fs.readFileSync(file, "utf8")) as { phase: string; dir: string };
    fs.writeFileSync(file, JSON.stringify({ ...record, phase: "starting" }));
    await suite.t.restart();
    assert.ok(suite.t.launcher.discarded.includes(record.dir));
    const s = (await r().ContainerStatus({ containerId })).status;
    assert.equal(s?.state, "CONTAINER_EXITED");
    assert.equal(s?.reason, "StartError");
    await r().RemovePodSandbox({ podSandboxId });
  });

  test("a sandbox caught half-made by a crash is torn down on the next start", async () => {
    const id = "a".repeat(64);
    const record = {
      id,
      phase: "creating",
      createdAt: "1",
      metadata: { name: "crashed", uid: "u", namespace: "default", attempt: 0 },
      hostname: "crashed",
      logDirectory: "",
      labels: {},
      annotations: {},
      runtimeHandler: "",
      ips: [],
    };
    fs.writeFileSync(
      path.join(suite.t.stateDir, "sandboxes", `${id}.json`),
      JSON.stringify(record),
    );
    await suite.t.restart();
    assert.ok(suite.t.networks.calls.includes(`tearDown ${id}`));
    assert.ok(!fs.existsSync(path.join(suite.t.stateDir, "sandboxes", `${id}.json`)));
  });
});
