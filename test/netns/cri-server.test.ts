// The CRI socket driven as kubelet drives it, with stand-ins for the pod network and the
// VM launcher: every call's answer, codes for bad input, and what a restart keeps.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { status } from "@grpc/grpc-js";
import { RecordStore, type StoredRecord } from "../../src/runtime/store";
import { podConfig, startTestVmlet, type TestVmlet } from "../../src/runtime/testing/harness";
import { requirePrivateNamespace } from "../harness/fixtures";
import { fakeQcow2 } from "../harness/qcow2";

async function rejectsWith(
  promise: Promise<unknown>,
  code: status,
  message: RegExp,
): Promise<void> {
  await assert.rejects(promise, (error: { code?: number; details?: string }) => {
    assert.equal(status[error.code ?? -1], status[code], `code for: ${error.details}`);
    assert.match(error.details ?? "", message);
    return true;
  });
}

/** Until the process is gone or a zombie: SIGKILL is not instant. */
async function waitDead(pid: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    let state: string | undefined;
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      state = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
    } catch {
      return;
    }
    if (state === "Z") return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`process ${pid} did not die`);
}

/** A tiny self-contained qcow2, its filler by seed; the stand-in launcher never reads it. */
const qcow2Bytes = (seed?: string) => fakeQcow2({ size: 8192, ...(seed ? { seed } : {}) });

describe("CRI server", () => {
  let t: TestVmlet;
  let imageRef: string;

  /** A pod with one started container (the process launcher's VM) and that VM's pid. */
  async function runningVm(name: string) {
    const r = t.client.runtime;
    const { podSandboxId } = await r.RunPodSandbox({ config: podConfig(name) });
    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "c" }, image: { image: imageRef } },
    });
    await r.StartContainer({ containerId });
    const { pid } = JSON.parse(
      (await r.ContainerStatus({ containerId, verbose: true })).info.info,
    ) as { pid: number };
    return { podSandboxId, containerId, pid };
  }

  before(async () => {
    requirePrivateNamespace();
    t = await startTestVmlet();
    // Images come over HTTP; here a data URL stand-in is not allowed, so serve one.
    const http = await import("node:http");
    const server = http.createServer((_req, res) => res.end(qcow2Bytes()));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as { port: number }).port;
    t.rules.push({ name: "vmlet.io/test:latest", url: `http://127.0.0.1:${port}/test.qcow2` });
    imageRef = (await t.client.image.PullImage({ image: { image: "vmlet.io/test" } })).imageRef;
    server.close();
  });

  after(async () => {
    await t?.close();
  });

  test("the socket is 0600 in a created directory", () => {
    const st = fs.statSync(t.socket);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600);
  });

  test("Version names vmlet and API v1", async () => {
    const v = await t.client.runtime.Version({ version: "v1" });
    assert.equal(v.runtimeName, "vmlet");
    assert.equal(v.runtimeApiVersion, "v1");
    assert.match(v.runtimeVersion, /^\d+\.\d+\.\d+/);
  });

  test("Status: runtime ready; network not ready with a reason while the network is not ready", async () => {
    t.networks.readiness = {
      ready: false,
      reason: "NetworkPluginNotReady",
      message: "cni config uninitialized",
    };
    const s = await t.client.runtime.Status({ verbose: false });
    const byType = Object.fromEntries((s.status?.conditions ?? []).map((c) => [c.type, c]));
    assert.equal(byType.RuntimeReady.status, true);
    assert.equal(byType.NetworkReady.status, false);
    assert.equal(byType.NetworkReady.reason, "NetworkPluginNotReady");
    assert.match(byType.NetworkReady.message, /cni config uninitialized/);
    t.networks.readiness = { ready: true };
    const ready = await t.client.runtime.Status({});
    assert.ok(ready.status?.conditions.every((c) => c.status));
  });

  test("what kubelet calls at startup answers: RuntimeConfig, UpdateRuntimeConfig, ImageFsInfo, lists", async () => {
    const rc = await t.client.runtime.RuntimeConfig({});
    assert.equal(rc.linux?.cgroupDriver, "SYSTEMD");
    await t.client.runtime.UpdateRuntimeConfig({
      runtimeConfig: { networkConfig: { podCidr: "10.88.0.0/16" } },
    });
    const fsInfo = await t.client.image.ImageFsInfo({});
    assert.equal(fsInfo.imageFilesystems.length, 1);
    assert.ok(fsInfo.imageFilesystems[0].fsId?.mountpoint.startsWith(t.stateDir));
    assert.ok(Number(fsInfo.imageFilesystems[0].usedBytes?.value) > 0);
    assert.ok(BigInt(fsInfo.imageFilesystems[0].timestamp) > 0n);
    await t.client.runtime.ListPodSandbox({});
    await t.client.runtime.ListContainers({});
    await t.client.runtime.ListContainerStats({});
    await t.client.runtime.ListPodSandboxStats({});
    const md = await t.client.runtime.ListMetricDescriptors({});
    assert.deepEqual(md.descriptors, []);
  });

  test("Exec, Attach and PortForward check their target; resizing and checkpoints are UNIMPLEMENTED with a reason", async () => {
    const r = t.client.runtime;
    await rejectsWith(
      r.ExecSync({ containerId: "x", cmd: ["true"] }),
      status.NOT_FOUND,
      /ExecSync: .*x/,
    );
    await rejectsWith(
      r.Exec({ containerId: "x", cmd: ["sh"], stdout: true }),
      status.NOT_FOUND,
      /Exec: container x not found/,
    );
    await rejectsWith(
      r.Attach({ containerId: "x", stdout: true }),
      status.NOT_FOUND,
      /Attach: container x/,
    );
    await rejectsWith(
      r.PortForward({ podSandboxId: "x", port: [80] }),
      status.NOT_FOUND,
      /PortForward: pod sandbox x/,
    );
    await rejectsWith(
      r.UpdateContainerResources({ containerId: "x" }),
      status.UNIMPLEMENTED,
      /resizing/,
    );
    await rejectsWith(
      r.CheckpointContainer({ containerId: "x" }),
      status.UNIMPLEMENTED,
      /checkpoint/,
    );
  });

  test("RunPodSandbox refuses configs without metadata, naming the field, and records nothing", async () => {
    const r = t.client.runtime;
    const before = fs.readdirSync(path.join(t.stateDir, "sandboxes"));
    await rejectsWith(r.RunPodSandbox({}), status.INVALID_ARGUMENT, /config is required/);
    await rejectsWith(
      r.RunPodSandbox({ config: {} }),
      status.INVALID_ARGUMENT,
      /config\.metadata is required/,
    );
    for (const field of ["name", "namespace", "uid"]) {
      const metadata = { name: "p", namespace: "default", uid: "u", [field]: "" };
      await rejectsWith(
        r.RunPodSandbox({ config: { metadata } }),
        status.INVALID_ARGUMENT,
        new RegExp(`config\\.metadata\\.${field} is required`),
      );
    }
    await rejectsWith(
      r.RunPodSandbox({ config: podConfig("h"), runtimeHandler: "kata" }),
      status.INVALID_ARGUMENT,
      /unknown runtime handler "kata"/,
    );
    await rejectsWith(
      r.RunPodSandbox({
        config: {
          ...podConfig("hn"),
          linux: { securityContext: { namespaceOptions: { network: "NODE" } } },
        },
      }),
      status.INVALID_ARGUMENT,
      /hostNetwork/,
    );
    assert.deepEqual(fs.readdirSync(path.join(t.stateDir, "sandboxes")), before);
  });

  test("a sandbox runs with the pod's IPs, is listed, filtered, stopped and removed idempotently", async () => {
    const r = t.client.runtime;
    const config = podConfig("web", {
      labels: { tier: "front" },
      annotations: { "vmlet.io/vcpus": "2" },
    });
    const { podSandboxId: id } = await r.RunPodSandbox({ config });
    assert.match(id, /^[0-9a-f]{64}$/);
    assert.ok(fs.existsSync(path.join(t.stateDir, "sandboxes", `${id}.json`)));

    const { status: s } = await r.PodSandboxStatus({ podSandboxId: id });
    assert.equal(s?.state, "SANDBOX_READY");
    assert.match(s?.network?.ip ?? "", /^10\.88\.0\.\d+$/);
    assert.equal(s?.network?.additionalIps.length, 1);
    assert.match(s?.network?.additionalIps[0].ip ?? "", /^fd00::/);
    assert.equal(s?.metadata?.name, "web");
    assert.equal(s?.labels.tier, "front");
    assert.equal(s?.annotations["vmlet.io/vcpus"], "2");
    assert.ok(BigInt(s?.createdAt ?? 0) > 1_600_000_000_000_000_000n);

    const byLabel = await r.ListPodSandbox({ filter: { labelSelector: { tier: "front" } } });
    assert.deepEqual(
      byLabel.items.map((i) => i.id),
      [id],
    );
    const byPrefix = await r.ListPodSandbox({ filter: { id: id.slice(0, 12) } });
    assert.deepEqual(
      byPrefix.items.map((i) => i.id),
      [id],
    );
    const none = await r.ListPodSandbox({ filter: { labelSelector: { tier: "back" } } });
    assert.equal(none.items.length, 0);

    await r.StopPodSandbox({ podSandboxId: id });
    await r.StopPodSandbox({ podSandboxId: id });
    assert.ok(!t.networks.networks.has(id), "network torn down");
    const notReady = await r.ListPodSandbox({
      filter: { id, state: { state: "SANDBOX_NOTREADY" } },
    });
    assert.equal(notReady.items.length, 1);
    const ready = await r.ListPodSandbox({ filter: { id, state: { state: "SANDBOX_READY" } } });
    assert.equal(ready.items.length, 0);

    await r.RemovePodSandbox({ podSandboxId: id });
    await r.RemovePodSandbox({ podSandboxId: id });
    await rejectsWith(
      r.PodSandboxStatus({ podSandboxId: id }),
      status.NOT_FOUND,
      new RegExp(`pod sandbox ${id} not found`),
    );
    assert.ok(!fs.existsSync(path.join(t.stateDir, "sandboxes", `${id}.json`)));
  });

  test("a second RunPodSandbox of the same pod attempt is ALREADY_EXISTS", async () => {
    const r = t.client.runtime;
    const { podSandboxId } = await r.RunPodSandbox({ config: podConfig("dup") });
    await rejectsWith(
      r.RunPodSandbox({ config: podConfig("dup") }),
      status.ALREADY_EXISTS,
      new RegExp(podSandboxId),
    );
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("a network that fails to come up is torn down and the sandbox is not recorded", async () => {
    const r = t.client.runtime;
    t.networks.failNextSetUp = new Error("CNI ADD bridge: no IP addresses available");
    const before = fs.readdirSync(path.join(t.stateDir, "sandboxes"));
    await rejectsWith(
      r.RunPodSandbox({ config: podConfig("broken") }),
      status.UNKNOWN,
      /RunPodSandbox default\/broken: set up network: CNI ADD bridge: no IP addresses available; cleaned up: network torn down, record removed/,
    );
    assert.deepEqual(fs.readdirSync(path.join(t.stateDir, "sandboxes")), before);
    assert.equal(t.networks.networks.size, before.length);
    const listed = await r.ListPodSandbox({ filter: { labelSelector: { app: "broken" } } });
    assert.equal(listed.items.length, 0);
  });

  test("when the teardown of a failed network fails too, the sandbox is kept unlisted and retried", async () => {
    const r = t.client.runtime;
    t.networks.failNextSetUp = new Error("CNI ADD: boom");
    t.networks.failNextTearDown = new Error("CNI DEL: still broken");
    await rejectsWith(
      r.RunPodSandbox({ config: podConfig("sticky") }),
      status.UNKNOWN,
      /cleanup failed: network teardown: CNI DEL: still broken; sandbox [0-9a-f]{64} kept unlisted to retry the teardown/,
    );
    const listed = await r.ListPodSandbox({ filter: { labelSelector: { app: "sticky" } } });
    assert.equal(listed.items.length, 0, "kubelet never sees it");
    const kept = fs
      .readdirSync(path.join(t.stateDir, "sandboxes"))
      .map((f) => f.replace(".json", ""));
    const id = kept.find(
      (k) => t.networks.networks.has(k) && t.networks.networks.get(k)?.pod.name === "sticky",
    );
    assert.ok(id, "the record is kept while its network is");
    await t.vmlet.runtime.reapHalfMade("test");
    assert.ok(!t.networks.networks.has(id), "torn down on retry");
    assert.ok(!fs.existsSync(path.join(t.stateDir, "sandboxes", `${id}.json`)));
  });

  test("a sandbox left half-made by a failed cleanup is torn down by the next RunPodSandbox of that pod attempt, which succeeds", async () => {
    const r = t.client.runtime;
    t.networks.failNextSetUp = new Error("CNI ADD: boom");
    t.networks.failNextTearDown = new Error("CNI DEL: still broken");
    await rejectsWith(
      r.RunPodSandbox({ config: podConfig("wedgedcreate") }),
      status.UNKNOWN,
      /kept unlisted to retry the teardown/,
    );
    const stuck = [...t.networks.networks.values()].find((n) => n.pod.name === "wedgedcreate");
    assert.ok(stuck, "its network is still there");
    const { podSandboxId } = await r.RunPodSandbox({ config: podConfig("wedgedcreate") });
    assert.notEqual(podSandboxId, stuck.pod.sandboxId);
    assert.ok(!t.networks.networks.has(stuck.pod.sandboxId), "the half-made one is torn down");
    assert.ok(!fs.existsSync(path.join(t.stateDir, "sandboxes", `${stuck.pod.sandboxId}.json`)));
    const s = await r.PodSandboxStatus({ podSandboxId });
    assert.equal(s.status?.state, "SANDBOX_READY");
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("a half-made sandbox whose teardown fails again: the retry says so, and names no sandbox as existing", async () => {
    const r = t.client.runtime;
    t.networks.failNextSetUp = new Error("CNI ADD: boom");
    t.networks.failNextTearDown = new Error("CNI DEL: still broken");
    await rejectsWith(r.RunPodSandbox({ config: podConfig("stuck2") }), status.UNKNOWN, /CNI DEL/);
    t.networks.failNextTearDown = new Error("CNI DEL: broken for good");
    await rejectsWith(
      r.RunPodSandbox({ config: podConfig("stuck2") }),
      status.UNKNOWN,
      /RunPodSandbox default\/stuck2: attempt 0: the half-made sandbox of an earlier call could not be torn down: .*CNI DEL: broken for good/,
    );
    const { podSandboxId } = await r.RunPodSandbox({ config: podConfig("stuck2") });
    assert.equal((await r.PodSandboxStatus({ podSandboxId })).status?.state, "SANDBOX_READY");
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("unknown ids: NOT_FOUND for status and create, OK for stop and remove", async () => {
    const r = t.client.runtime;
    const ghost = "f".repeat(64);
    await rejectsWith(
      r.PodSandboxStatus({ podSandboxId: ghost }),
      status.NOT_FOUND,
      /pod sandbox f+ not found/,
    );
    await rejectsWith(
      r.PodSandboxStatus({ podSandboxId: "" }),
      status.INVALID_ARGUMENT,
      /pod_sandbox_id is required/,
    );
    await rejectsWith(
      r.CreateContainer({
        podSandboxId: ghost,
        config: { metadata: { name: "vm" }, image: { image: imageRef } },
      }),
      status.NOT_FOUND,
      /pod sandbox f+ not found/,
    );
    await rejectsWith(
      r.ContainerStatus({ containerId: ghost }),
      status.NOT_FOUND,
      /container f+ not found/,
    );
    await rejectsWith(
      r.StartContainer({ containerId: ghost }),
      status.NOT_FOUND,
      /StartContainer: container f+ not found/,
    );
    await rejectsWith(
      r.StopContainer({ containerId: ghost }),
      status.NOT_FOUND,
      /container f+ not found/,
    );
    await rejectsWith(
      r.ContainerStats({ containerId: ghost }),
      status.NOT_FOUND,
      /container f+ not found/,
    );
    await rejectsWith(
      r.PodSandboxStats({ podSandboxId: ghost }),
      status.NOT_FOUND,
      /pod sandbox f+ not found/,
    );
    await r.StopPodSandbox({ podSandboxId: ghost });
    await r.RemovePodSandbox({ podSandboxId: ghost });
    await r.RemoveContainer({ containerId: ghost });
  });

  test("without a log directory (crictl) container logs are vmlet's, and go with the sandbox", async () => {
    const r = t.client.runtime;
    const sandboxConfig = podConfig("nologdir");
    const { podSandboxId } = await r.RunPodSandbox({ config: sandboxConfig });
    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "guest" }, image: { image: "vmlet.io/test" }, logPath: "0.log" },
      sandboxConfig,
    });
    await r.StartContainer({ containerId });
    const logPath = (await r.ContainerStatus({ containerId })).status?.logPath ?? "";
    assert.ok(path.isAbsolute(logPath) && logPath.includes(podSandboxId), logPath);
    assert.match(fs.readFileSync(logPath, "utf8"), /^\S+Z stdout F /);
    await r.StopPodSandbox({ podSandboxId });
    await r.RemovePodSandbox({ podSandboxId });
    assert.ok(!fs.existsSync(path.dirname(logPath)), `${path.dirname(logPath)} removed`);
  });

  test("a log_path outside the pod's log directory is INVALID_ARGUMENT naming log_path, and no container is made", async () => {
    const r = t.client.runtime;
    const logDirectory = path.join(t.dir, "pods", "default_badlog_uid");
    const sandboxConfig = podConfig("badlog", { logDirectory });
    const { podSandboxId } = await r.RunPodSandbox({ config: sandboxConfig });
    const before = (await r.ListContainers({})).containers.length;
    for (const [logPath, why] of [
      ["/etc/cron.d/x", /must be relative to the pod's log_directory/],
      ["../../../etc/cron.d/x", /must not contain "\.\."/],
      ["guest/../../x.log", /must not contain "\.\."/],
      ["guest//0.log", /must name a file/],
      ["guest/", /must name a file/],
    ] as const) {
      await rejectsWith(
        r.CreateContainer({
          podSandboxId,
          config: { metadata: { name: "guest" }, image: { image: "vmlet.io/test" }, logPath },
          sandboxConfig,
        }),
        status.INVALID_ARGUMENT,
        new RegExp(
          `^CreateContainer default/badlog/guest: log_path ${JSON.stringify(logPath).replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}: ${why.source}`,
        ),
      );
    }
    assert.equal((await r.ListContainers({})).containers.length, before);
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("a symlink inside the pod's log directory is not followed: StartContainer fails and nothing is written through it", async () => {
    const r = t.client.runtime;
    const logDirectory = path.join(t.dir, "pods", "default_linklog_uid");
    const elsewhere = path.join(t.dir, "elsewhere");
    fs.mkdirSync(logDirectory, { recursive: true });
    fs.mkdirSync(elsewhere, { recursive: true });
    fs.symlinkSync(elsewhere, path.join(logDirectory, "guest"));
    const sandboxConfig = podConfig("linklog", { logDirectory });
    const { podSandboxId } = await r.RunPodSandbox({ config: sandboxConfig });
    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: {
        metadata: { name: "guest" },
        image: { image: "vmlet.io/test" },
        logPath: "guest/0.log",
      },
      sandboxConfig,
    });
    await rejectsWith(
      r.StartContainer({ containerId }),
      status.FAILED_PRECONDITION,
      /log_path "guest\/0\.log": .*\/guest is a symlink or not a directory: not followed/,
    );
    assert.deepEqual(fs.readdirSync(elsewhere), []);
    assert.equal((await r.ContainerStatus({ containerId })).status?.reason, "StartError");
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("a container is a VM: created, started, running, stopped, exited, removed", async () => {
    const r = t.client.runtime;
    const logDirectory = path.join(t.dir, "pods", "default_vm1_uid");
    const sandboxConfig = podConfig("vm1", {
      logDirectory,
      annotations: { "vmlet.io/memory": "1Gi" },
    });
    const { podSandboxId } = await r.RunPodSandbox({ config: sandboxConfig });
    const config = {
      metadata: { name: "guest", attempt: 0 },
      image: { image: "vmlet.io/test" },
      labels: { role: "vm" },
      annotations: { "io.kubernetes.container.hash": "abc" },
      logPath: "guest/0.log",
      linux: { resources: { cpuPeriod: 100000, cpuQuota: 300000 } },
    };
    const { containerId } = await r.CreateContainer({ podSandboxId, config, sandboxConfig });
    let s = (await r.ContainerStatus({ containerId })).status;
    assert.equal(s?.state, "CONTAINER_CREATED");
    assert.equal(s?.imageRef.endsWith(imageRef.slice("sha256:".length)), true);
    assert.equal(s?.imageId, imageRef);
    assert.equal(s?.image?.image, "vmlet.io/test");
    assert.equal(s?.logPath, path.join(logDirectory, "guest/0.log"));

    await r.StartContainer({ containerId });
    const spec = t.launcher.started.at(-1);
    assert.equal(spec?.vcpus, 3, "vCPUs from the CPU quota");
    assert.equal(spec?.memoryMiB, 1024, "memory from the pod annotation");
    assert.equal(spec?.cloudInit.hostname, "vm1");
    assert.equal(spec?.taps.length, 1);
    s = (await r.ContainerStatus({ containerId })).status;
    assert.equal(s?.state, "CONTAINER_RUNNING");
    assert.ok(BigInt(s?.startedAt ?? 0) >= BigInt(s?.createdAt ?? 0));
    assert.match(
      fs.readFileSync(path.join(logDirectory, "guest/0.log"), "utf8"),
      /^\S+Z stdout F /,
    );
    await rejectsWith(
      r.StartContainer({ containerId }),
      status.FAILED_PRECONDITION,
      /container is running, not created/,
    );

    // kubelet creates by image id and passes the name the user wrote alongside.
    const byIdPod = (await r.RunPodSandbox({ config: podConfig("byid") })).podSandboxId;
    const byId = await r.CreateContainer({
      podSandboxId: byIdPod,
      config: {
        metadata: { name: "c" },
        image: { image: imageRef, userSpecifiedImage: "vmlet.io/test:latest" },
      },
    });
    const byIdStatus = (await r.ContainerStatus({ containerId: byId.containerId })).status;
    assert.equal(byIdStatus?.image?.image, "vmlet.io/test:latest");
    assert.equal(byIdStatus?.imageId, imageRef);
    await r.RemovePodSandbox({ podSandboxId: byIdPod });

    const listed = await r.ListContainers({
      filter: { podSandboxId, state: { state: "CONTAINER_RUNNING" } },
    });
    assert.deepEqual(
      listed.containers.map((c) => c.id),
      [containerId],
    );
    const byLabel = await r.ListContainers({ filter: { labelSelector: { role: "other" } } });
    assert.equal(byLabel.containers.length, 0);

    const stats = (await r.ContainerStats({ containerId })).stats;
    assert.equal(stats?.attributes?.id, containerId);
    assert.ok(Number(stats?.memory?.workingSetBytes?.value) > 0, "memory of the VM process");
    const podStats = (await r.PodSandboxStats({ podSandboxId })).stats;
    assert.equal(podStats?.linux?.containers.length, 1);
    const all = await r.ListPodSandboxStats({ filter: { id: podSandboxId } });
    assert.equal(all.stats.length, 1);

    await rejectsWith(
      r.CreateContainer({
        podSandboxId,
        config: { ...config, metadata: { name: "sidecar" } },
        sandboxConfig,
      }),
      status.FAILED_PRECONDITION,
      /pod already has container guest .* one VM, so one container, per pod/,
    );
    await rejectsWith(
      r.CreateContainer({
        podSandboxId,
        config: { ...config, metadata: { name: "guest", attempt: 1 } },
        sandboxConfig,
      }),
      status.FAILED_PRECONDITION,
      /is still running/,
    );

    await r.StopContainer({ containerId, timeout: 5 });
    s = (await r.ContainerStatus({ containerId })).status;
    assert.equal(s?.state, "CONTAINER_EXITED");
    assert.ok(BigInt(s?.finishedAt ?? 0) >= BigInt(s?.startedAt ?? 0));
    assert.equal(s?.exitCode, 143, "SIGTERM of the stand-in VM");
    assert.equal(s?.reason, "Error");
    await r.StopContainer({ containerId, timeout: 5 });

    // kubelet restarts a container by creating its next attempt in the same pod.
    const next = await r.CreateContainer({
      podSandboxId,
      config: { ...config, metadata: { name: "guest", attempt: 1 } },
      sandboxConfig,
    });
    await r.RemoveContainer({ containerId: next.containerId });

    const dir = path.join(t.stateDir, "vms", containerId.slice(0, 16));
    assert.ok(fs.existsSync(dir));
    await rejectsWith(
      t.client.image.RemoveImage({ image: { image: imageRef } }),
      status.FAILED_PRECONDITION,
      new RegExp(`used by container ${containerId}`),
    );
    await r.RemoveContainer({ containerId });
    await r.RemoveContainer({ containerId });
    assert.ok(!fs.existsSync(dir), "VM dir removed");
    await rejectsWith(r.ContainerStatus({ containerId }), status.NOT_FOUND, /not found/);
    await r.StopPodSandbox({ podSandboxId });
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("bad container configs name the field; unknown images are NOT_FOUND", async () => {
    const r = t.client.runtime;
    const sandboxConfig = podConfig("bad");
    const { podSandboxId } = await r.RunPodSandbox({ config: sandboxConfig });
    await rejectsWith(
      r.CreateContainer({ podSandboxId }),
      status.INVALID_ARGUMENT,
      /config is required/,
    );
    await rejectsWith(
      r.CreateContainer({ podSandboxId, config: { image: { image: "x" } } }),
      status.INVALID_ARGUMENT,
      /config\.metadata\.name is required/,
    );
    await rejectsWith(
      r.CreateContainer({ podSandboxId, config: { metadata: { name: "c" } } }),
      status.INVALID_ARGUMENT,
      /config\.image\.image is required/,
    );
    await rejectsWith(
      r.CreateContainer({
        podSandboxId,
        config: { metadata: { name: "c" }, image: { image: "vmlet.io/nope" } },
      }),
      status.NOT_FOUND,
      /image vmlet\.io\/nope not found: pull it first/,
    );
    await rejectsWith(
      r.CreateContainer({
        podSandboxId,
        config: {
          metadata: { name: "c" },
          image: { image: imageRef },
          annotations: { "vmlet.io/vcpus": "lots" },
        },
      }),
      status.INVALID_ARGUMENT,
      /annotation vmlet\.io\/vcpus="lots"/,
    );
    const listed = await r.ListContainers({ filter: { podSandboxId } });
    assert.equal(listed.containers.length, 0, "nothing half-made");
    await r.StopPodSandbox({ podSandboxId });
    await rejectsWith(
      r.CreateContainer({
        podSandboxId,
        config: { metadata: { name: "c" }, image: { image: imageRef } },
      }),
      status.FAILED_PRECONDITION,
      /is stopped/,
    );
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("a VM that fails to start leaves the container exited with StartError and the reason", async () => {
    const r = t.client.runtime;
    const { podSandboxId } = await r.RunPodSandbox({ config: podConfig("nostart") });
    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "c" }, image: { image: imageRef } },
    });
    t.launcher.failNextStart = new Error("qemu-system-x86_64: could not open disk");
    await rejectsWith(
      r.StartContainer({ containerId }),
      status.UNKNOWN,
      /start VM: qemu-system-x86_64: could not open disk/,
    );
    const s = (await r.ContainerStatus({ containerId })).status;
    assert.equal(s?.state, "CONTAINER_EXITED");
    assert.equal(s?.reason, "StartError");
    assert.match(s?.message ?? "", /could not open disk/);
    await r.RemovePodSandbox({ podSandboxId });
    assert.equal((await r.ListContainers({ filter: { podSandboxId } })).containers.length, 0);
  });

  test("an image whose stored disk names a host file (pulled before that check) is refused at StartContainer", async () => {
    const r = t.client.runtime;
    const http = await import("node:http");
    const distinct = qcow2Bytes("older"); // another digest than the shared test image
    const server = http.createServer((_req, res) => res.end(distinct));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as { port: number }).port;
    t.rules.push({ name: "vmlet.io/older:latest", url: `http://127.0.0.1:${port}/older.qcow2` });
    const pulled = (await t.client.image.PullImage({ image: { image: "vmlet.io/older" } }))
      .imageRef;
    server.close();
    const blob = path.join(t.stateDir, "blobs", pulled.slice("sha256:".length));
    assert.ok(fs.existsSync(blob), blob);
    // What an older vmlet let through: a qcow2 header pointing at a host file.
    fs.writeFileSync(blob, fakeQcow2({ backingFile: "/etc/shadow" }));
    const { podSandboxId } = await r.RunPodSandbox({ config: podConfig("older") });
    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "c" }, image: { image: pulled } },
    });
    const started = t.launcher.started.length;
    await rejectsWith(
      r.StartContainer({ containerId }),
      status.FAILED_PRECONDITION,
      /image sha256:\w+: qcow2 refused: its header names a backing file "\/etc\/shadow"/,
    );
    assert.equal(t.launcher.started.length, started, "no VM was started");
    const s = (await r.ContainerStatus({ containerId })).status;
    assert.equal(s?.state, "CONTAINER_EXITED");
    assert.equal(s?.reason, "StartError");
    await r.RemovePodSandbox({ podSandboxId });
    await t.client.image.RemoveImage({ image: { image: pulled } });
  });

  test("StopPodSandbox kills the pod's running VM", async () => {
    const r = t.client.runtime;
    const { podSandboxId } = await r.RunPodSandbox({ config: podConfig("stopall") });
    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "c" }, image: { image: imageRef } },
    });
    await r.StartContainer({ containerId });
    const pid = t.launcher.started.length;
    assert.ok(pid > 0);
    await r.StopPodSandbox({ podSandboxId });
    const s = (await r.ContainerStatus({ containerId })).status;
    assert.equal(s?.state, "CONTAINER_EXITED");
    assert.equal(s?.exitCode, 137);
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("after a restart running VMs are adopted and still RUNNING, vanished ones EXITED", async () => {
    const r = () => t.client.runtime;
    const a = await r().RunPodSandbox({ config: podConfig("keep") });
    const b = await r().RunPodSandbox({ config: podConfig("lose") });
    const ca = await r().CreateContainer({
      podSandboxId: a.podSandboxId,
      config: { metadata: { name: "c" }, image: { image: imageRef } },
    });
    const cb = await r().CreateContainer({
      podSandboxId: b.podSandboxId,
      config: { metadata: { name: "c" }, image: { image: imageRef } },
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

    await t.restart();
    // While vmlet was down, one VM died.
    process.kill(pidB, "SIGKILL");
    await waitDead(pidB);
    await t.restart();

    assert.ok(t.networks.calls.includes("recover"));
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
    assert.deepEqual(fs.readdirSync(path.join(t.stateDir, "containers")), []);
  });

  test("a VM that cannot be re-attached after a restart stays RUNNING and is stopped on a retry, not leaked", async () => {
    const r = () => t.client.runtime;
    const { podSandboxId, containerId, pid } = await runningVm("unattached");
    t.launcher.failNextAdopt = new Error("QMP: connection refused");
    await t.restart();
    assert.equal((await r().ContainerStatus({ containerId })).status?.state, "CONTAINER_RUNNING");
    await r().RemovePodSandbox({ podSandboxId });
    await waitDead(pid);
  });

  test("a VM not adopted at start is adopted again later, so that its exit is still seen", async () => {
    const r = () => t.client.runtime;
    const { podSandboxId, containerId, pid } = await runningVm("readopt");
    t.launcher.failNextAdopt = new Error("QMP: no greeting within 5000 ms");
    await t.restart();
    await t.vmlet.runtime.readoptUnwatched(); // what the reaper does every 30 s
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
    const r = () => t.client.runtime;
    const { podSandboxId, containerId, pid } = await runningVm("wedged");
    t.launcher.failAdopts = new Error("QMP: query-status: no answer within 5000 ms");
    try {
      await t.restart();
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
      t.launcher.failAdopts = undefined;
    }
    await r().RemovePodSandbox({ podSandboxId });
  });

  test("a VM that exits on its own while RemoveContainer runs: its exit is recorded under the pod lock, and the removed container stays removed", async () => {
    const r = t.client.runtime;
    const { podSandboxId, containerId, pid } = await runningVm("exitrace");
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
    assert.ok(!fs.existsSync(path.join(t.stateDir, "containers", `${containerId}.json`)));
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("a pod whose network did not come back after a restart is NOTREADY, so kubelet recreates it", async () => {
    const r = () => t.client.runtime;
    const { podSandboxId } = await r().RunPodSandbox({ config: podConfig("netlost") });
    t.networks.networks.delete(podSandboxId); // as if its netns vanished while vmlet was down
    await t.restart();
    const s = (await r().PodSandboxStatus({ podSandboxId })).status;
    assert.equal(s?.state, "SANDBOX_NOTREADY");
    await r().RemovePodSandbox({ podSandboxId });
  });

  test("a container caught starting by a crash: its VM is discarded and it is reported exited", async () => {
    const r = () => t.client.runtime;
    const { podSandboxId } = await r().RunPodSandbox({ config: podConfig("crashstart") });
    const { containerId } = await r().CreateContainer({
      podSandboxId,
      config: { metadata: { name: "c" }, image: { image: imageRef } },
    });
    const file = path.join(t.stateDir, "containers", `${containerId}.json`);
    const record = JSON.parse(fs.readFileSync(file, "utf8")) as { phase: string; dir: string };
    fs.writeFileSync(file, JSON.stringify({ ...record, phase: "starting" }));
    await t.restart();
    assert.ok(t.launcher.discarded.includes(record.dir));
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
    fs.writeFileSync(path.join(t.stateDir, "sandboxes", `${id}.json`), JSON.stringify(record));
    await t.restart();
    assert.ok(t.networks.calls.includes(`tearDown ${id}`));
    assert.ok(!fs.existsSync(path.join(t.stateDir, "sandboxes", `${id}.json`)));
  });

  test("cloud-init gets user-data, SSH keys and the container's Secret files; other mounts stay out", async () => {
    const r = t.client.runtime;
    const secret = path.join(t.dir, "kubelet/pods/u/volumes/kubernetes.io~secret/creds");
    fs.mkdirSync(secret, { recursive: true });
    fs.writeFileSync(path.join(secret, "token"), "abc");
    const sandboxConfig = podConfig("seeded", {
      annotations: {
        "vmlet.io/cloud-init-user-data": "#cloud-config\nruncmd: [true]\n",
        "vmlet.io/ssh-keys": "ssh-ed25519 AAAA k",
      },
    });
    const { podSandboxId } = await r.RunPodSandbox({ config: sandboxConfig });
    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: {
        metadata: { name: "c" },
        image: { image: imageRef },
        mounts: [
          { containerPath: "/etc/creds", hostPath: secret, readonly: true },
          { containerPath: "/data", hostPath: t.dir },
        ],
      },
      sandboxConfig,
    });
    await r.StartContainer({ containerId });
    const spec = t.launcher.started.at(-1);
    assert.equal(spec?.cloudInit.instanceId, containerId);
    assert.equal(spec?.cloudInit.userData, "#cloud-config\nruncmd: [true]\n");
    assert.deepEqual(spec?.cloudInit.sshKeys, ["ssh-ed25519 AAAA k"]);
    assert.deepEqual(
      spec?.cloudInit.files.map((f) => [f.path, f.content.toString()]),
      [["/etc/creds/token", "abc"]],
    );
    const mounts = (await r.ContainerStatus({ containerId })).status?.mounts ?? [];
    assert.deepEqual(
      mounts.map((m) => m.containerPath),
      ["/etc/creds", "/data"],
    );
    await rejectsWith(
      r.ReopenContainerLog({ containerId }),
      status.UNIMPLEMENTED,
      /cannot reopen its log/,
    );
    await r.RemovePodSandbox({ podSandboxId });
    await rejectsWith(r.ReopenContainerLog({ containerId }), status.NOT_FOUND, /not found/);
  });

  test("concurrent stop and remove of one pod, and many pods at once, end consistent", async () => {
    const r = t.client.runtime;
    const ids = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        r.RunPodSandbox({ config: podConfig(`many-${i}`) }).then((x) => x.podSandboxId),
      ),
    );
    assert.equal(new Set(ids).size, 8);
    await Promise.all(
      ids.flatMap((id) => [
        r.StopPodSandbox({ podSandboxId: id }),
        r.RemovePodSandbox({ podSandboxId: id }),
      ]),
    );
    for (const id of ids) {
      await rejectsWith(r.PodSandboxStatus({ podSandboxId: id }), status.NOT_FOUND, /not found/);
      assert.ok(!t.networks.networks.has(id));
    }
  });

  test("GetContainerEvents, a stream, is UNIMPLEMENTED so kubelet relists", async () => {
    const { loadCri } = await import("../../src/runtime/cri/proto");
    const grpc = await import("@grpc/grpc-js");
    const raw = new (loadCri().RuntimeService)(
      `unix:${t.socket}`,
      grpc.credentials.createInsecure(),
    );
    const code = await new Promise<number>((resolve) => {
      const stream = raw.GetContainerEvents({});
      stream.on("error", (e: { code: number }) => resolve(e.code));
      stream.on("data", () => {});
    });
    raw.close();
    assert.equal(code, status.UNIMPLEMENTED);
  });

  test("a stale socket is replaced; a live one is not", async () => {
    const { CriServer } = await import("../../src/runtime/cri/server");
    const pino = (await import("pino")).default;
    const other = new CriServer(t.vmlet.runtime, pino({ level: "silent" }));
    await assert.rejects(other.listen(t.socket), /another server is listening there/);
    const stale = path.join(t.dir, "stale.sock");
    const net = await import("node:net");
    const s = net.createServer().listen(stale);
    await new Promise((resolve) => s.once("listening", resolve));
    // Closing a server with a path removes the file; a crashed process leaves it: copy that.
    fs.renameSync(stale, `${stale}.keep`);
    s.close();
    fs.renameSync(`${stale}.keep`, stale);
    await other.listen(stale);
    await other.close();
    fs.writeFileSync(path.join(t.dir, "file"), "x");
    await assert.rejects(other.listen(path.join(t.dir, "file")), /exists and is not a socket/);
  });
});
