// vmlet in front of a real containerd: ordinary pods become containers (containerd,
// runc, busybox from a local registry), pods of the `vmlet` RuntimeClass become VMs, all
// behind vmlet's one CRI socket, on one CNI network.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { status as grpcStatus } from "@grpc/grpc-js";
import { type CriClient, connectCri } from "../../src/runtime/cri/client";
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
import { podConfig } from "../harness/test-vmlet";
import { type Served, startServe } from "../harness/vmlet-serve";

const CNI_BIN = "/usr/lib/cni";
const GO_CLIENT = path.resolve(__dirname, "../../../.cache/clients/cri-client-go");

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

const GUEST_DISK = path.join(
  process.env.VMLET_GUESTS_DIR ?? path.resolve(__dirname, "../../../.cache/guests"),
  "disk.qcow2",
);
const proxySkip =
  containerdMissing() ||
  (fs.existsSync(GUEST_DISK)
    ? false
    : `no test guest at ${GUEST_DISK}: run scripts/build-test-guests.sh`);

async function until<T>(
  what: string,
  check: () => Promise<T | false | undefined>,
  timeoutMs: number,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check().catch(() => undefined);
    if (value) return value;
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

function grpcError(code: number, details: RegExp) {
  return (e: { code?: number; details?: string }) => {
    assert.equal(e.code, code, e.details);
    assert.match(e.details ?? "", details);
    return true;
  };
}

describe("vmlet fronting containerd: container pods and VM pods behind one socket", {
  skip: proxySkip,
}, () => {
  let cni: CniSandbox;
  let registry: Registry;
  let containerd: Containerd;
  let httpServer: http.Server;
  let served: Served | undefined;
  let args: string[];
  let socket: string;
  let stateDir: string;
  let client: CriClient;
  // The two pods, as the first test makes them.
  let boxPod: string;
  let boxContainer: string;
  let boxIp: string;
  let vmPod: string;
  let vmContainer: string;
  let vmIp: string;
  let vmImageRef: string;

  const boxConfig = () => podConfig("box", { logDirectory: path.join(cni.root, "pods", "box") });
  const vmConfig = () => podConfig("vm", { logDirectory: path.join(cni.root, "pods", "vm") });

  before(async () => {
    requirePrivateNamespace();
    cni = makeCniSandbox();
    // One network for both runtimes: the same conf dir, bin dir, bridge and IPAM.
    cni.writeConf("10-bridge.conflist", bridgeList("proxy", "1.0.0", cni.dataDir, "10.82.0.0/24"));
    registry = await startRegistry(path.join(cni.root, "registry"));
    containerd = makeContainerd({
      dir: path.join(cni.root, "containerd"),
      cniConfDir: cni.confDir,
      cniBinDir: CNI_BIN,
      registry: registry.address,
    });
    await containerd.start();
    httpServer = http.createServer((_req, res) => fs.createReadStream(GUEST_DISK).pipe(res));
    await new Promise<void>((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
    const rules = path.join(cni.root, "images.json");
    const port = (httpServer.address() as { port: number }).port;
    fs.writeFileSync(
      rules,
      JSON.stringify([{ prefix: "vmlet.io/", url: `http://127.0.0.1:${port}/` }]),
    );
    socket = path.join(cni.root, "vmlet.sock");
    stateDir = path.join(cni.root, "state");
    args = [
      `--state-dir=${stateDir}`,
      `--cni-conf-dir=${cni.confDir}`,
      `--cni-bin-dir=${CNI_BIN}`,
      `--image-rules=${rules}`,
      "--accel=tcg",
      "--log-level=debug",
      `--containerd-socket=${containerd.socket}`,
    ];
    served = await startServe([`--socket=${socket}`, ...args], socket);
    client = connectCri(socket);
    for (const dir of ["box", "vm"])
      fs.mkdirSync(path.join(cni.root, "pods", dir), { recursive: true });
  });

  after(async () => {
    client?.close();
    served?.child.kill("SIGKILL");
    await served?.exited;
    await containerd?.remove();
    await registry?.stop();
    httpServer?.close();
    cni?.remove();
  });

  test("a container pod and a VM pod on one CNI network ping each other both ways; ExecSync runs in each", async () => {
    // Pulls go where the image lives: vmlet's rules name the disk, containerd takes the rest.
    const box = await client.image.PullImage({ image: { image: "busybox" } });
    vmImageRef = (await client.image.PullImage({ image: { image: "vmlet.io/disk.qcow2" } }))
      .imageRef;

    boxPod = (await client.runtime.RunPodSandbox({ config: boxConfig() })).podSandboxId;
    vmPod = (await client.runtime.RunPodSandbox({ config: vmConfig(), runtimeHandler: "vmlet" }))
      .podSandboxId;
    boxIp =
      (await client.runtime.PodSandboxStatus({ podSandboxId: boxPod })).status?.network?.ip ?? "";
    vmIp =
      (await client.runtime.PodSandboxStatus({ podSandboxId: vmPod })).status?.network?.ip ?? "";
    assert.match(boxIp, /^10\.82\.0\.\d+$/);
    assert.match(vmIp, /^10\.82\.0\.\d+$/);
    assert.notEqual(boxIp, vmIp);

    boxContainer = (
      await client.runtime.CreateContainer({
        podSandboxId: boxPod,
        config: {
          metadata: { name: "sleeper" },
          image: { image: box.imageRef },
          command: ["sleep", "3600"],
          logPath: "sleeper.log",
        },
        sandboxConfig: boxConfig(),
      })
    ).containerId;
    await client.runtime.StartContainer({ containerId: boxContainer });
    vmContainer = (
      await client.runtime.CreateContainer({
        podSandboxId: vmPod,
        config: { metadata: { name: "guest" }, image: { image: vmImageRef }, logPath: "guest.log" },
        sandboxConfig: vmConfig(),
      })
    ).containerId;
    await client.runtime.StartContainer({ containerId: vmContainer });
    const vmLog = path.join(cni.root, "pods", "vm", "guest.log");
    await until(
      "the guest's DHCP lease in its log",
      async () =>
        fs.existsSync(vmLog) &&
        /VMLET-GUEST lease event="bound"/.test(fs.readFileSync(vmLog, "utf8")),
      90_000,
    );

    // The container (containerd, runc) and the VM (vmlet, QEMU) reach each other.
    const fromBox = await client.runtime.ExecSync({
      containerId: boxContainer,
      cmd: ["ping", "-c", "1", "-W", "5", vmIp],
      timeout: 20,
    });
    assert.equal(fromBox.exitCode, 0, `container → VM: ${fromBox.stdout}${fromBox.stderr}`);
    const fromVm = await until(
      "a ping from the VM to the container",
      async () => {
        const r = await client.runtime.ExecSync({
          containerId: vmContainer,
          cmd: ["ping", "-c", "1", "-W", "5", boxIp],
          timeout: 20,
        });
        return r.exitCode === 0 ? r : false;
      },
      30_000,
    );
    assert.match(fromVm.stdout.toString(), /1 packets received/);
    // Each ExecSync ran where it was meant to: the container sees its IP, the VM its own.
    const boxAddr = await client.runtime.ExecSync({
      containerId: boxContainer,
      cmd: ["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
      timeout: 10,
    });
    assert.match(boxAddr.stdout.toString(), new RegExp(`inet ${boxIp}/24`));
    const vmAddr = await client.runtime.ExecSync({
      containerId: vmContainer,
      cmd: ["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
      timeout: 20,
    });
    assert.match(vmAddr.stdout.toString(), new RegExp(`inet ${vmIp}/24`));
  });

  test("lists show both pods, their containers and images; Status and ImageFsInfo merge both sides", async () => {
    const pods = (await client.runtime.ListPodSandbox({})).items;
    assert.deepEqual(
      pods.map((p) => [p.id, p.metadata?.name, p.state, p.runtimeHandler]).sort(),
      [
        [boxPod, "box", "SANDBOX_READY", ""],
        [vmPod, "vm", "SANDBOX_READY", "vmlet"],
      ].sort(),
    );
    const containers = (await client.runtime.ListContainers({})).containers;
    assert.deepEqual(
      containers.map((c) => [c.id, c.state]).sort(),
      [
        [boxContainer, "CONTAINER_RUNNING"],
        [vmContainer, "CONTAINER_RUNNING"],
      ].sort(),
    );
    // A filter naming one side's object asks that side alone.
    const onlyVm = (await client.runtime.ListContainers({ filter: { podSandboxId: vmPod } }))
      .containers;
    assert.deepEqual(
      onlyVm.map((c) => c.id),
      [vmContainer],
    );
    const onlyBox = (await client.runtime.ListPodSandbox({ filter: { id: boxPod } })).items;
    assert.deepEqual(
      onlyBox.map((p) => p.id),
      [boxPod],
    );
    const stats = (await client.runtime.ListContainerStats({})).stats;
    assert.deepEqual(stats.map((s) => s.attributes?.id).sort(), [boxContainer, vmContainer].sort());

    const images = (await client.image.ListImages({})).images.flatMap((i) => i.repoTags);
    assert.ok(images.includes(BUSYBOX_IMAGE), images.join(", "));
    assert.ok(
      images.some((t) => t.startsWith("vmlet.io/disk.qcow2")),
      images.join(", "),
    );
    assert.equal(
      (await client.image.ImageStatus({ image: { image: "busybox" } })).image?.repoTags[0],
      BUSYBOX_IMAGE,
    );
    assert.equal(
      (await client.image.ImageStatus({ image: { image: vmImageRef } })).image?.id,
      vmImageRef,
    );

    const fs0 = (await client.image.ImageFsInfo({})).imageFilesystems;
    assert.ok(fs0.length >= 2, JSON.stringify(fs0));
    assert.ok(
      fs0[0].fsId?.mountpoint.startsWith(path.join(cni.root, "containerd")),
      `containerd's image filesystem first (kubelet watches only it): ${fs0[0].fsId?.mountpoint}`,
    );
    const status = (await client.runtime.Status({})).status?.conditions ?? [];
    assert.deepEqual(
      status.map((c) => [c.type, c.status]),
      [
        ["RuntimeReady", true],
        ["NetworkReady", true],
      ],
    );
    assert.equal((await client.runtime.Version({ version: "v1" })).runtimeName, "vmlet");
    // Streaming for a container: containerd's own absolute URL, as it made it.
    const { url } = await client.runtime.Exec({
      containerId: boxContainer,
      cmd: ["true"],
      stdout: true,
    });
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/exec\/\S+$/);
    const forward = await client.runtime.PortForward({ podSandboxId: boxPod, port: [80] });
    assert.match(forward.url, /^http:\/\/127\.0\.0\.1:\d+\/portforward\/\S+$/);
  });

  test("a VM image in a container pod, and an OCI image in a VM pod, are FAILED_PRECONDITION naming both", async () => {
    await assert.rejects(
      client.runtime.CreateContainer({
        podSandboxId: boxPod,
        config: {
          metadata: { name: "wrong" },
          image: { image: "vmlet.io/disk.qcow2" },
          logPath: "wrong.log",
        },
        sandboxConfig: boxConfig(),
      }),
      grpcError(
        grpcStatus.FAILED_PRECONDITION,
        /pod default\/box .*image vmlet\.io\/disk\.qcow2 is a VM image.*runtimeClassName vmlet/,
      ),
    );
    await assert.rejects(
      client.runtime.CreateContainer({
        podSandboxId: vmPod,
        config: { metadata: { name: "wrong" }, image: { image: "busybox" }, logPath: "wrong.log" },
        sandboxConfig: vmConfig(),
      }),
      grpcError(
        grpcStatus.FAILED_PRECONDITION,
        /pod default\/vm .*VM pod.*image busybox is not a VM image/,
      ),
    );
    const names = (await client.runtime.ListContainers({})).containers.map((c) => c.metadata?.name);
    assert.ok(!names.includes("wrong"), "nothing made");
  });

  test("with containerd killed, lists fail naming it and Status says so; restarted, every pod is back", async () => {
    await containerd.kill();
    await assert.rejects(
      client.runtime.ListPodSandbox({}),
      grpcError(
        grpcStatus.UNAVAILABLE,
        /ListPodSandbox: containerd at \S+ cannot be reached.*fails rather than answer without containerd's/,
      ),
    );
    await assert.rejects(
      client.runtime.ListContainers({}),
      grpcError(grpcStatus.UNAVAILABLE, /ListContainers: containerd at/),
    );
    await assert.rejects(
      client.image.ListImages({}),
      grpcError(grpcStatus.UNAVAILABLE, /ListImages: containerd at/),
    );
    const down = (await client.runtime.Status({})).status?.conditions ?? [];
    const runtimeReady = down.find((c) => c.type === "RuntimeReady");
    assert.equal(runtimeReady?.status, false);
    assert.match(runtimeReady?.reason ?? "", /^containerd: ContainerdUnreachable$/);
    assert.match(
      runtimeReady?.message ?? "",
      /^containerd: Status: containerd at \S+ cannot be reached/,
    );
    // The VM pod is still served: its calls never needed containerd.
    const vmStatus = (await client.runtime.ContainerStatus({ containerId: vmContainer })).status;
    assert.equal(vmStatus?.state, "CONTAINER_RUNNING");

    await containerd.start();
    const pods = await until(
      "ListPodSandbox through vmlet again",
      async () => (await client.runtime.ListPodSandbox({})).items,
      10_000,
    );
    assert.deepEqual(
      pods.map((p) => [p.id, p.state]).sort(),
      [
        [boxPod, "SANDBOX_READY"],
        [vmPod, "SANDBOX_READY"],
      ].sort(),
    );
    const box = (await client.runtime.ContainerStatus({ containerId: boxContainer })).status;
    assert.equal(box?.state, "CONTAINER_RUNNING", "the container ran on while containerd was down");
    const ping = await client.runtime.ExecSync({
      containerId: boxContainer,
      cmd: ["ping", "-c", "1", "-W", "5", vmIp],
      timeout: 20,
    });
    assert.equal(ping.exitCode, 0);
    const up = (await client.runtime.Status({})).status?.conditions ?? [];
    assert.ok(
      up.every((c) => c.status),
      JSON.stringify(up),
    );
  });

  test("a restart of vmlet keeps the routing map", async () => {
    client.close();
    served?.child.kill("SIGKILL");
    await served?.exited;
    const map = JSON.parse(
      fs.readFileSync(path.join(stateDir, "proxy", "owners.json"), "utf8"),
    ) as {
      ids: Record<string, { owner: string; handler?: string }>;
    };
    assert.equal(map.ids[boxPod]?.owner, "containerd");
    assert.equal(map.ids[boxContainer]?.owner, "containerd");
    assert.equal(map.ids[vmPod]?.owner, "vmlet");
    assert.equal(map.ids[vmPod]?.handler, "vmlet");
    assert.equal(map.ids[vmContainer]?.owner, "vmlet");

    served = await startServe([`--socket=${socket}`, ...args], socket);
    client = connectCri(socket);
    const vm = (await client.runtime.PodSandboxStatus({ podSandboxId: vmPod })).status;
    assert.equal(vm?.runtimeHandler, "vmlet", "the VM pod's handler, as kubelet sent it");
    assert.equal(
      (await client.runtime.ContainerStatus({ containerId: boxContainer })).status?.state,
      "CONTAINER_RUNNING",
    );
    assert.equal(
      (await client.runtime.ContainerStatus({ containerId: vmContainer })).status?.state,
      "CONTAINER_RUNNING",
    );
    const exec = await client.runtime.ExecSync({
      containerId: vmContainer,
      cmd: ["true"],
      timeout: 20,
    });
    assert.equal(exec.exitCode, 0);
  });

  test("a pod containerd made before vmlet fronted it is listed, and stopped and removed, through vmlet", async () => {
    const direct = connectCri(containerd.socket);
    try {
      const config = podConfig("before", { logDirectory: path.join(cni.root, "pods", "box") });
      const { podSandboxId } = await direct.runtime.RunPodSandbox({ config });
      const listed = (await client.runtime.ListPodSandbox({})).items.map((p) => p.id);
      assert.ok(listed.includes(podSandboxId), "listed through vmlet");
      await client.runtime.StopPodSandbox({ podSandboxId });
      await client.runtime.RemovePodSandbox({ podSandboxId });
      const left = (await direct.runtime.ListPodSandbox({ filter: { id: podSandboxId } })).items;
      assert.deepEqual(left, [], "containerd removed it");
    } finally {
      direct.close();
    }
  });

  test("a grpc-go client dialing as kubelet 1.26 does runs a container pod's sandbox on containerd through vmlet", {
    skip: fs.existsSync(GO_CLIENT) ? false : `no ${GO_CLIENT}: run scripts/build-test-clients.sh`,
  }, async () => {
    const name = `gopod-${suffix()}`;
    const out = await new Promise<string>((resolve, reject) =>
      execFile(GO_CLIENT, [socket, name], { timeout: 60_000 }, (error, stdout, stderr) =>
        error ? reject(new Error(`cri-client-go: ${stderr}`, { cause: error })) : resolve(stdout),
      ),
    );
    const lines = out
      .trim()
      .split("\n")
      .map(
        (l) =>
          JSON.parse(l) as {
            call: string;
            podSandboxId?: string;
            items?: { id: string; state: string }[];
          },
      );
    const id = lines.find((l) => l.call === "RunPodSandbox")?.podSandboxId ?? "";
    const states = lines
      .filter((l) => l.call === "ListPodSandbox")
      .map((l) => l.items?.find((i) => i.id === id)?.state ?? "gone");
    assert.deepEqual(states, ["SANDBOX_READY", "SANDBOX_NOTREADY", "gone"]);
    assert.match(
      fs.readFileSync(containerd.logFile, "utf8"),
      new RegExp(`RunPodSandbox for &PodSandboxMetadata\\{Name:${name},`),
      "containerd ran it",
    );
  });

  test("stop and remove work for each pod, and leave neither runtime nor the map holding it", async () => {
    await client.runtime.StopContainer({ containerId: vmContainer, timeout: 60 });
    assert.equal(
      (await client.runtime.ContainerStatus({ containerId: vmContainer })).status?.state,
      "CONTAINER_EXITED",
    );
    await client.runtime.StopContainer({ containerId: boxContainer, timeout: 2 });
    assert.equal(
      (await client.runtime.ContainerStatus({ containerId: boxContainer })).status?.state,
      "CONTAINER_EXITED",
    );
    for (const podSandboxId of [vmPod, boxPod]) {
      await client.runtime.StopPodSandbox({ podSandboxId });
      await client.runtime.RemovePodSandbox({ podSandboxId });
    }
    assert.deepEqual((await client.runtime.ListPodSandbox({})).items, []);
    assert.deepEqual((await client.runtime.ListContainers({})).containers, []);
    const direct = connectCri(containerd.socket);
    try {
      assert.deepEqual(
        (await direct.runtime.ListPodSandbox({})).items,
        [],
        "containerd holds no pod",
      );
    } finally {
      direct.close();
    }
    const map = JSON.parse(
      fs.readFileSync(path.join(stateDir, "proxy", "owners.json"), "utf8"),
    ) as {
      ids: Record<string, unknown>;
    };
    assert.deepEqual(map.ids, {});
  });
});
