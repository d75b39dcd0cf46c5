// The CRI socket driven as kubelet drives it, with stand-ins for the pod network and the
// VM launcher (test/harness/cri-suite.ts): the container calls, unknown ids, bad configs,
// start failures and cloud-init inputs.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import { status } from "@grpc/grpc-js";
import { criSuite, qcow2Bytes, rejectsWith } from "../harness/cri-suite";
import { fakeQcow2 } from "../harness/qcow2";
import { podConfig } from "../harness/test-vmlet";

describe("CRI containers", () => {
  const suite = criSuite();

  test("unknown ids: NOT_FOUND for status and create, OK for stop and remove", async () => {
    const r = suite.t.client.runtime;
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
        config: { metadata: { name: "vm" }, image: { image: suite.imageRef } },
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

  test("a container is a VM: created, started, running, stopped, exited, removed", async () => {
    const r = suite.t.client.runtime;
    const logDirectory = path.join(suite.t.dir, "pods", "default_vm1_uid");
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
    assert.equal(s?.imageRef.endsWith(suite.imageRef.slice("sha256:".length)), true);
    assert.equal(s?.imageId, suite.imageRef);
    assert.equal(s?.image?.image, "vmlet.io/test");
    assert.equal(s?.logPath, path.join(logDirectory, "guest/0.log"));

    await r.StartContainer({ containerId });
    const spec = suite.t.launcher.started.at(-1);
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
        image: { image: suite.imageRef, userSpecifiedImage: "vmlet.io/test:latest" },
      },
    });
    const byIdStatus = (await r.ContainerStatus({ containerId: byId.containerId })).status;
    assert.equal(byIdStatus?.image?.image, "vmlet.io/test:latest");
    assert.equal(byIdStatus?.imageId, suite.imageRef);
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

    const dir = path.join(suite.t.stateDir, "vms", containerId.slice(0, 16));
    assert.ok(fs.existsSync(dir));
    await rejectsWith(
      suite.t.client.image.RemoveImage({ image: { image: suite.imageRef } }),
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
    const r = suite.t.client.runtime;
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
          image: { image: suite.imageRef },
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
        config: { metadata: { name: "c" }, image: { image: suite.imageRef } },
      }),
      status.FAILED_PRECONDITION,
      /is stopped/,
    );
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("a VM that fails to start leaves the container exited with StartError and the reason", async () => {
    const r = suite.t.client.runtime;
    const { podSandboxId } = await r.RunPodSandbox({ config: podConfig("nostart") });
    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "c" }, image: { image: suite.imageRef } },
    });
    suite.t.launcher.failNextStart = new Error("qemu-system-x86_64: could not open disk");
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
    const r = suite.t.client.runtime;
    const http = await import("node:http");
    const distinct = qcow2Bytes("older"); // another digest than the shared test image
    const server = http.createServer((_req, res) => res.end(distinct));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as { port: number }).port;
    suite.t.rules.push({
      name: "vmlet.io/older:latest",
      url: `http://127.0.0.1:${port}/older.qcow2`,
    });
    const pulled = (await suite.t.client.image.PullImage({ image: { image: "vmlet.io/older" } }))
      .imageRef;
    server.close();
    const blob = path.join(suite.t.stateDir, "blobs", pulled.slice("sha256:".length));
    assert.ok(fs.existsSync(blob), blob);
    // What an older vmlet let through: a qcow2 header pointing at a host file.
    fs.writeFileSync(blob, fakeQcow2({ backingFile: "/etc/shadow" }));
    const { podSandboxId } = await r.RunPodSandbox({ config: podConfig("older") });
    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "c" }, image: { image: pulled } },
    });
    const started = suite.t.launcher.started.length;
    await rejectsWith(
      r.StartContainer({ containerId }),
      status.FAILED_PRECONDITION,
      /image sha256:\w+: qcow2 refused: its header names a backing file "\/etc\/shadow"/,
    );
    assert.equal(suite.t.launcher.started.length, started, "no VM was started");
    const s = (await r.ContainerStatus({ containerId })).status;
    assert.equal(s?.state, "CONTAINER_EXITED");
    assert.equal(s?.reason, "StartError");
    await r.RemovePodSandbox({ podSandboxId });
    await suite.t.client.image.RemoveImage({ image: { image: pulled } });
  });

  test("cloud-init gets user-data, SSH keys and the container's Secret files; other mounts stay out", async () => {
    const r = suite.t.client.runtime;
    const secret = path.join(suite.t.dir, "kubelet/pods/u/volumes/kubernetes.io~secret/creds");
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
        image: { image: suite.imageRef },
        mounts: [
          { containerPath: "/etc/creds", hostPath: secret, readonly: true },
          { containerPath: "/data", hostPath: suite.t.dir },
        ],
      },
      sandboxConfig,
    });
    await r.StartContainer({ containerId });
    const spec = suite.t.launcher.started.at(-1);
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
});
