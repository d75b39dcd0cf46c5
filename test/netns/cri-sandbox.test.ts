// The CRI socket driven as kubelet drives it, with stand-ins for the pod network and the
// VM launcher (test/harness/cri-suite.ts): RunPodSandbox, StopPodSandbox, RemovePodSandbox,
// statuses and lists; bad input, failed networks and their cleanup, duplicate attempts.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import { status } from "@grpc/grpc-js";
import { criSuite, rejectsWith } from "../harness/cri-suite";
import { podConfig } from "../harness/test-vmlet";

describe("CRI sandboxes", () => {
  const suite = criSuite();

  test("RunPodSandbox refuses configs without metadata, naming the field, and records nothing", async () => {
    const r = suite.t.client.runtime;
    const before = fs.readdirSync(path.join(suite.t.stateDir, "sandboxes"));
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
    assert.deepEqual(fs.readdirSync(path.join(suite.t.stateDir, "sandboxes")), before);
  });

  test("a sandbox runs with the pod's IPs, is listed, filtered, stopped and removed idempotently", async () => {
    const r = suite.t.client.runtime;
    const config = podConfig("web", {
      labels: { tier: "front" },
      annotations: { "vmlet.io/vcpus": "2" },
    });
    const { podSandboxId: id } = await r.RunPodSandbox({ config });
    assert.match(id, /^[0-9a-f]{64}$/);
    assert.ok(fs.existsSync(path.join(suite.t.stateDir, "sandboxes", `${id}.json`)));

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
    assert.ok(!suite.t.networks.networks.has(id), "network torn down");
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
    assert.ok(!fs.existsSync(path.join(suite.t.stateDir, "sandboxes", `${id}.json`)));
  });

  test("a second RunPodSandbox of the same pod attempt is ALREADY_EXISTS", async () => {
    const r = suite.t.client.runtime;
    const { podSandboxId } = await r.RunPodSandbox({ config: podConfig("dup") });
    await rejectsWith(
      r.RunPodSandbox({ config: podConfig("dup") }),
      status.ALREADY_EXISTS,
      new RegExp(podSandboxId),
    );
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("a network that fails to come up is torn down and the sandbox is not recorded", async () => {
    const r = suite.t.client.runtime;
    suite.t.networks.failNextSetUp = new Error("CNI ADD bridge: no IP addresses available");
    const before = fs.readdirSync(path.join(suite.t.stateDir, "sandboxes"));
    await rejectsWith(
      r.RunPodSandbox({ config: podConfig("broken") }),
      status.UNKNOWN,
      /RunPodSandbox default\/broken: set up network: CNI ADD bridge: no IP addresses available; cleaned up: network torn down, record removed/,
    );
    assert.deepEqual(fs.readdirSync(path.join(suite.t.stateDir, "sandboxes")), before);
    assert.equal(suite.t.networks.networks.size, before.length);
    const listed = await r.ListPodSandbox({ filter: { labelSelector: { app: "broken" } } });
    assert.equal(listed.items.length, 0);
  });

  test("when the teardown of a failed network fails too, the sandbox is kept unlisted and retried", async () => {
    const r = suite.t.client.runtime;
    suite.t.networks.failNextSetUp = new Error("CNI ADD: boom");
    suite.t.networks.failNextTearDown = new Error("CNI DEL: still broken");
    await rejectsWith(
      r.RunPodSandbox({ config: podConfig("sticky") }),
      status.UNKNOWN,
      /cleanup failed: network teardown: CNI DEL: still broken; sandbox [0-9a-f]{64} kept unlisted to retry the teardown/,
    );
    const listed = await r.ListPodSandbox({ filter: { labelSelector: { app: "sticky" } } });
    assert.equal(listed.items.length, 0, "kubelet never sees it");
    const kept = fs
      .readdirSync(path.join(suite.t.stateDir, "sandboxes"))
      .map((f) => f.replace(".json", ""));
    const id = kept.find(
      (k) =>
        suite.t.networks.networks.has(k) && suite.t.networks.networks.get(k)?.pod.name === "sticky",
    );
    assert.ok(id, "the record is kept while its network is");
    await suite.t.vmlet.runtime.reapHalfMade("test");
    assert.ok(!suite.t.networks.networks.has(id), "torn down on retry");
    assert.ok(!fs.existsSync(path.join(suite.t.stateDir, "sandboxes", `${id}.json`)));
  });

  test("a sandbox left half-made by a failed cleanup is torn down by the next RunPodSandbox of that pod attempt, which succeeds", async () => {
    const r = suite.t.client.runtime;
    suite.t.networks.failNextSetUp = new Error("CNI ADD: boom");
    suite.t.networks.failNextTearDown = new Error("CNI DEL: still broken");
    await rejectsWith(
      r.RunPodSandbox({ config: podConfig("wedgedcreate") }),
      status.UNKNOWN,
      /kept unlisted to retry the teardown/,
    );
    const stuck = [...suite.t.networks.networks.values()].find(
      (n) => n.pod.name === "wedgedcreate",
    );
    assert.ok(stuck, "its network is still there");
    const { podSandboxId } = await r.RunPodSandbox({ config: podConfig("wedgedcreate") });
    assert.notEqual(podSandboxId, stuck.pod.sandboxId);
    assert.ok(
      !suite.t.networks.networks.has(stuck.pod.sandboxId),
      "the half-made one is torn down",
    );
    assert.ok(
      !fs.existsSync(path.join(suite.t.stateDir, "sandboxes", `${stuck.pod.sandboxId}.json`)),
    );
    const s = await r.PodSandboxStatus({ podSandboxId });
    assert.equal(s.status?.state, "SANDBOX_READY");
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("a half-made sandbox whose teardown fails again: the retry says so, and names no sandbox as existing", async () => {
    const r = suite.t.client.runtime;
    suite.t.networks.failNextSetUp = new Error("CNI ADD: boom");
    suite.t.networks.failNextTearDown = new Error("CNI DEL: still broken");
    await rejectsWith(r.RunPodSandbox({ config: podConfig("stuck2") }), status.UNKNOWN, /CNI DEL/);
    suite.t.networks.failNextTearDown = new Error("CNI DEL: broken for good");
    await rejectsWith(
      r.RunPodSandbox({ config: podConfig("stuck2") }),
      status.UNKNOWN,
      /RunPodSandbox default\/stuck2: attempt 0: the half-made sandbox of an earlier call could not be torn down: .*CNI DEL: broken for good/,
    );
    const { podSandboxId } = await r.RunPodSandbox({ config: podConfig("stuck2") });
    assert.equal((await r.PodSandboxStatus({ podSandboxId })).status?.state, "SANDBOX_READY");
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("StopPodSandbox kills the pod's running VM", async () => {
    const r = suite.t.client.runtime;
    const { podSandboxId } = await r.RunPodSandbox({ config: podConfig("stopall") });
    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "c" }, image: { image: suite.imageRef } },
    });
    await r.StartContainer({ containerId });
    const pid = suite.t.launcher.started.length;
    assert.ok(pid > 0);
    await r.StopPodSandbox({ podSandboxId });
    const s = (await r.ContainerStatus({ containerId })).status;
    assert.equal(s?.state, "CONTAINER_EXITED");
    assert.equal(s?.exitCode, 137);
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("concurrent stop and remove of one pod, and many pods at once, end consistent", async () => {
    const r = suite.t.client.runtime;
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
      assert.ok(!suite.t.networks.networks.has(id));
    }
  });
});
