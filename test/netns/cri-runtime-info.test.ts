// The CRI socket driven as kubelet drives it, with stand-ins for the pod network and the
// VM launcher (test/harness/cri-suite.ts): Version, Status, RuntimeConfig and what kubelet
// asks at startup, the calls vmlet answers UNIMPLEMENTED, and the socket itself.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import { status } from "@grpc/grpc-js";
import { criSuite, rejectsWith } from "../harness/cri-suite";

describe("CRI runtime info and the socket", () => {
  const suite = criSuite();

  test("the socket is 0600 in a created directory", () => {
    const st = fs.statSync(suite.t.socket);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600);
  });

  test("Version names vmlet and API v1", async () => {
    const v = await suite.t.client.runtime.Version({ version: "v1" });
    assert.equal(v.runtimeName, "vmlet");
    assert.equal(v.runtimeApiVersion, "v1");
    assert.match(v.runtimeVersion, /^\d+\.\d+\.\d+/);
  });

  test("Status: runtime ready; network not ready with a reason while the network is not ready", async () => {
    suite.t.networks.readiness = {
      ready: false,
      reason: "NetworkPluginNotReady",
      message: "cni config uninitialized",
    };
    const s = await suite.t.client.runtime.Status({ verbose: false });
    const byType = Object.fromEntries((s.status?.conditions ?? []).map((c) => [c.type, c]));
    assert.equal(byType.RuntimeReady.status, true);
    assert.equal(byType.NetworkReady.status, false);
    assert.equal(byType.NetworkReady.reason, "NetworkPluginNotReady");
    assert.match(byType.NetworkReady.message, /cni config uninitialized/);
    suite.t.networks.readiness = { ready: true };
    const ready = await suite.t.client.runtime.Status({});
    assert.ok(ready.status?.conditions.every((c) => c.status));
  });

  test("what kubelet calls at startup answers: RuntimeConfig, UpdateRuntimeConfig, ImageFsInfo, lists", async () => {
    const rc = await suite.t.client.runtime.RuntimeConfig({});
    assert.equal(rc.linux?.cgroupDriver, "SYSTEMD");
    await suite.t.client.runtime.UpdateRuntimeConfig({
      runtimeConfig: { networkConfig: { podCidr: "10.88.0.0/16" } },
    });
    const fsInfo = await suite.t.client.image.ImageFsInfo({});
    assert.equal(fsInfo.imageFilesystems.length, 1);
    assert.ok(fsInfo.imageFilesystems[0].fsId?.mountpoint.startsWith(suite.t.stateDir));
    assert.ok(Number(fsInfo.imageFilesystems[0].usedBytes?.value) > 0);
    assert.ok(BigInt(fsInfo.imageFilesystems[0].timestamp) > 0n);
    await suite.t.client.runtime.ListPodSandbox({});
    await suite.t.client.runtime.ListContainers({});
    await suite.t.client.runtime.ListContainerStats({});
    await suite.t.client.runtime.ListPodSandboxStats({});
    const md = await suite.t.client.runtime.ListMetricDescriptors({});
    assert.deepEqual(md.descriptors, []);
  });

  test("Exec, Attach and PortForward check their target; resizing and checkpoints are UNIMPLEMENTED with a reason", async () => {
    const r = suite.t.client.runtime;
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

  test("GetContainerEvents, a stream, is UNIMPLEMENTED so kubelet relists", async () => {
    const { loadCri } = await import("../../src/runtime/cri/proto");
    const grpc = await import("@grpc/grpc-js");
    const raw = new (loadCri().RuntimeService)(
      `unix:${suite.t.socket}`,
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
    const other = new CriServer(suite.t.vmlet.runtime, pino({ level: "silent" }));
    await assert.rejects(other.listen(suite.t.socket), /another server is listening there/);
    const stale = path.join(suite.t.dir, "stale.sock");
    const net = await import("node:net");
    const s = net.createServer().listen(stale);
    await new Promise((resolve) => s.once("listening", resolve));
    // Closing a server with a path removes the file; a crashed process leaves it: copy that.
    fs.renameSync(stale, `${stale}.keep`);
    s.close();
    fs.renameSync(`${stale}.keep`, stale);
    await other.listen(stale);
    await other.close();
    fs.writeFileSync(path.join(suite.t.dir, "file"), "x");
    await assert.rejects(
      other.listen(path.join(suite.t.dir, "file")),
      /exists and is not a socket/,
    );
  });
});
