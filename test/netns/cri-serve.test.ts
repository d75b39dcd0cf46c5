// `vmlet serve` as kubelet meets it: a process with a socket, JSON logs carrying pod
// ids, and a SIGKILL that loses no pod.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { CniClient } from "../../src/cni-bridge/cni";
import { type CriClient, connectCri } from "../../src/runtime/cri/client";
import { createNetns, deleteNetns } from "../../src/sys/netns";
import {
  allocations,
  bridgeList,
  type CniSandbox,
  makeCniSandbox,
  makePod,
} from "../harness/cni-fixtures";
import { wedgedContainer } from "../harness/fake-qemu";
import { requirePrivateNamespace, uniqueName } from "../harness/fixtures";
import { podConfig } from "../harness/test-vmlet";
import { type Served, serveArgs, startServe } from "../harness/vmlet-serve";

function isDead(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}

describe("vmlet serve", () => {
  let cni: CniSandbox;
  let socket: string;
  let args: string[];
  let served: Served | undefined;
  let client: CriClient | undefined;

  before(() => {
    requirePrivateNamespace();
    cni = makeCniSandbox();
    cni.writeConf(
      "10-bridge.conflist",
      bridgeList("servenet", "1.0.0", cni.dataDir, "10.78.0.0/24"),
    );
    socket = path.join(cni.root, "run", "vmlet.sock");
    args = [
      ...serveArgs(cni, socket),
      "--image-rules",
      path.join(cni.root, "images.json"),
      "--log-level",
      "debug",
    ];
  });

  after(async () => {
    client?.close();
    served?.child.kill("SIGKILL");
    await served?.exited;
    cni?.remove();
  });

  test("serves CRI on its socket, logs JSON lines with pod ids, and survives SIGKILL with its pods", async () => {
    served = await startServe(args, socket);
    client = connectCri(socket);
    assert.equal((await client.runtime.Version({})).runtimeName, "vmlet");
    assert.equal(fs.statSync(socket).mode & 0o777, 0o600);
    const { podSandboxId } = await client.runtime.RunPodSandbox({ config: podConfig("served") });
    const ip = (await client.runtime.PodSandboxStatus({ podSandboxId })).status?.network?.ip;
    assert.match(ip ?? "", /^10\.78\.0\.\d+$/);
    const ready = served.logs
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.msg === "pod sandbox ready");
    assert.equal(ready?.podSandboxId, podSandboxId);
    assert.equal(ready?.pod, "default/served");

    // An image rules file that is missing is a clear error, not a crash.
    await assert.rejects(
      client.image.PullImage({ image: { image: "vmlet.io/x" } }),
      /images\.json: no such file/,
    );

    client.close();
    served.child.kill("SIGKILL");
    await served.exited;
    served = await startServe(args, socket); // the stale socket is replaced
    client = connectCri(socket);
    const again = await client.runtime.PodSandboxStatus({ podSandboxId });
    assert.equal(again.status?.state, "SANDBOX_READY");
    assert.equal(again.status?.network?.ip, ip);
    await client.runtime.StopPodSandbox({ podSandboxId });
    await client.runtime.RemovePodSandbox({ podSandboxId });
    assert.deepEqual(allocations(cni.dataDir, "servenet"), []);

    served.child.kill("SIGTERM");
    assert.equal(await served.exited, 0);
    served = undefined;
  });

  test("a truncated pod network record is set aside with a log line naming it; vmlet starts and the other pods recover", async () => {
    served = await startServe(args, socket);
    client = connectCri(socket);
    const good = await client.runtime.RunPodSandbox({ config: podConfig("intact") });
    const torn = await client.runtime.RunPodSandbox({ config: podConfig("torn") });
    const goodIp = (await client.runtime.PodSandboxStatus(good)).status?.network?.ip;
    client.close();
    client = undefined;
    served.child.kill("SIGKILL");
    await served.exited;

    const file = path.join(cni.root, "state", "pods", `${torn.podSandboxId}.json`);
    const text = fs.readFileSync(file, "utf8");
    fs.writeFileSync(file, text.slice(0, 100));
    served = await startServe(args, socket);
    const warning = served.logs
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.file === file);
    assert.match(String(warning?.msg), /unreadable pod network record set aside/);
    client = connectCri(socket);
    const intact = await client.runtime.PodSandboxStatus(good);
    assert.equal(intact.status?.state, "SANDBOX_READY");
    assert.equal(intact.status?.network?.ip, goodIp);
    const lost = await client.runtime.PodSandboxStatus(torn);
    assert.equal(lost.status?.state, "SANDBOX_NOTREADY", "kubelet makes that pod anew");
    assert.deepEqual(allocations(cni.dataDir, "servenet"), [goodIp], "GC freed the torn pod's");
    for (const id of [good, torn]) {
      await client.runtime.StopPodSandbox(id);
      await client.runtime.RemovePodSandbox(id);
    }
    assert.deepEqual(allocations(cni.dataDir, "servenet"), []);
    served.child.kill("SIGTERM");
    assert.equal(await served.exited, 0);
    served = undefined;
  });

  test("with running QEMUs whose QMP never answers, vmlet still starts and listens, and stopping them kills them in time", async () => {
    served = await startServe(args, socket);
    client = connectCri(socket);
    const caps = await client.runtime.RunPodSandbox({ config: podConfig("wedged-caps") });
    const silent = await client.runtime.RunPodSandbox({ config: podConfig("wedged-silent") });
    client.close();
    client = undefined;
    served.child.kill("SIGKILL");
    await served.exited;

    // What the crashed vmlet left: two running VMs whose monitors then wedged, one after
    // negotiating capabilities and one before.
    const stateDir = path.join(cni.root, "state");
    const a = await wedgedContainer(stateDir, caps.podSandboxId, "caps", "capabilities");
    const b = await wedgedContainer(stateDir, silent.podSandboxId, "silent", "silent");
    try {
      // Both adopted at once, each within QMP's 5 s deadlines (connect; query-status).
      served = await startServe(args, socket, 9000);
      client = connectCri(socket);
      const stopAt = Date.now();
      await client.runtime.StopContainer({ containerId: a.id, timeout: 2 });
      assert.ok(Date.now() - stopAt < 3000, `StopContainer took ${Date.now() - stopAt} ms`);
      assert.ok(isDead(a.fake.pid!), "the adopted wedged VM is killed after the grace period");
      assert.equal(
        (await client.runtime.ContainerStatus({ containerId: a.id })).status?.state,
        "CONTAINER_EXITED",
      );
      // The one that never negotiated could not be adopted: StopPodSandbox kills it by pid.
      await client.runtime.StopPodSandbox(silent);
      assert.ok(isDead(b.fake.pid!), "the unadopted wedged VM is killed by its pid");
      const sb = (await client.runtime.ContainerStatus({ containerId: b.id })).status;
      assert.equal(sb?.state, "CONTAINER_EXITED");
      assert.match(sb?.message ?? "", /killed by vmlet by its pid: the VM could not be adopted/);
      for (const id of [caps, silent]) {
        await client.runtime.StopPodSandbox(id);
        await client.runtime.RemovePodSandbox(id);
      }
    } finally {
      a.fake.kill("SIGKILL");
      b.fake.kill("SIGKILL");
    }
    served.child.kill("SIGTERM");
    assert.equal(await served.exited, 0);
    served = undefined;
  });

  test("at start, attachments whose pod record was lost are deleted and their addresses freed; known pods keep theirs", async () => {
    served = await startServe(args, socket);
    client = connectCri(socket);
    const { podSandboxId } = await client.runtime.RunPodSandbox({ config: podConfig("kept") });
    const keptIp = (await client.runtime.PodSandboxStatus({ podSandboxId })).status?.network?.ip;
    client.close();
    client = undefined;
    served.child.kill("SIGTERM");
    assert.equal(await served.exited, 0);

    // An attachment in vmlet's CNI cache that no pod record knows: what an unreadable
    // record leaves behind. Its address stays allocated until something deletes it.
    const stateDir = path.join(cni.root, "state");
    const orphanNs = createNetns(uniqueName("orphan"));
    const orphan = makePod("orphan");
    const client2 = new CniClient({
      confDir: cni.confDir,
      binDirs: ["/usr/lib/cni"],
      cacheDir: path.join(stateDir, "cni"),
    });
    const [attachment] = await client2.addPod(orphan, orphanNs);
    client2.close();
    const orphanIp = attachment!.result.ips[0]!.address.split("/")[0];
    assert.deepEqual(allocations(cni.dataDir, "servenet").sort(), [keptIp, orphanIp].sort());

    served = await startServe(args, socket);
    assert.deepEqual(
      allocations(cni.dataDir, "servenet"),
      [keptIp],
      "the orphan's address is free",
    );
    assert.ok(!fs.existsSync(path.join(stateDir, "cni", orphan.sandboxId)), "its cache entry gone");
    client = connectCri(socket);
    const kept = await client.runtime.PodSandboxStatus({ podSandboxId });
    assert.equal(kept.status?.state, "SANDBOX_READY");
    await client.runtime.StopPodSandbox({ podSandboxId });
    await client.runtime.RemovePodSandbox({ podSandboxId });
    served.child.kill("SIGTERM");
    assert.equal(await served.exited, 0);
    served = undefined;
    deleteNetns(path.basename(orphanNs));
  });
});
