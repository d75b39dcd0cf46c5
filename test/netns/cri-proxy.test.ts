// vmlet in front of a real containerd: ordinary pods become containers (containerd,
// runc, busybox from a local registry), pods of the `vmlet` RuntimeClass become VMs, all
// behind vmlet's one CRI socket, on one CNI network.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { type CriClient, connectCri } from "../../src/runtime/cri/client";
import { podConfig } from "../../src/runtime/testing/harness";
import { bridgeList, type CniSandbox, makeCniSandbox } from "../harness/cni-fixtures";
import {
  BUSYBOX_IMAGE,
  type Containerd,
  containerdMissing,
  makeContainerd,
  type Registry,
  startRegistry,
  suffix,
} from "../harness/containerd";
import { requirePrivateNamespace } from "../harness/fixtures";

const CNI_BIN = "/usr/lib/cni";

describe("containerd alone, as the test setup starts it", { skip: containerdMissing() }, () => {
  let cni: CniSandbox;
  let registry: Registry;
  let containerd: Containerd;
  let client: CriClient;

  before(async () => {
    requirePrivateNamespace();
    cni = makeCniSandbox();
    cni.writeConf("10-bridge.conflist", bridgeList("alone", "1.0.0", cni.dataDir, "10.81.0.0/24"));
    registry = await startRegistry(path.join(cni.root, "registry"));
    containerd = makeContainerd({
      dir: path.join(cni.root, "containerd"),
      cniConfDir: cni.confDir,
      cniBinDir: CNI_BIN,
      registry: registry.address,
    });
    await containerd.start();
    client = connectCri(containerd.socket);
  });

  after(async () => {
    client?.close();
    await containerd?.remove();
    await registry?.stop();
    cni?.remove();
  });

  test("runs a busybox pod pulled from the local registry, with a pod IP on the CNI network", async () => {
    const { imageRef } = await client.image.PullImage({ image: { image: "busybox" } });
    assert.match(imageRef, /^sha256:[0-9a-f]{64}$/);
    const name = `alone-${suffix()}`;
    const logDirectory = path.join(cni.root, "pods", name);
    fs.mkdirSync(logDirectory, { recursive: true });
    const config = podConfig(name, { logDirectory });
    const { podSandboxId } = await client.runtime.RunPodSandbox({ config });
    const status = (await client.runtime.PodSandboxStatus({ podSandboxId })).status;
    assert.equal(status?.state, "SANDBOX_READY");
    assert.match(status?.network?.ip ?? "", /^10\.81\.0\.\d+$/);
    const { containerId } = await client.runtime.CreateContainer({
      podSandboxId,
      config: {
        metadata: { name: "sleeper" },
        image: { image: BUSYBOX_IMAGE },
        command: ["sleep", "3600"],
        logPath: "sleeper.log",
      },
      sandboxConfig: config,
    });
    await client.runtime.StartContainer({ containerId });
    const exec = await client.runtime.ExecSync({
      containerId,
      cmd: ["sh", "-c", "ip -4 -o addr show dev eth0"],
      timeout: 10,
    });
    assert.equal(exec.exitCode, 0, exec.stderr.toString());
    assert.match(exec.stdout.toString(), new RegExp(`inet ${status?.network?.ip}/24`));
    await client.runtime.StopPodSandbox({ podSandboxId });
    await client.runtime.RemovePodSandbox({ podSandboxId });
    assert.deepEqual((await client.runtime.ListPodSandbox({})).items, []);
  });
});
