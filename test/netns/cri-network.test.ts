// The CRI server on the real tapmanager and the reference CNI plugins (the VM launcher
// is the process stand-in): pods get their IPs from host-local, and stopping a pod
// leaves no netns, no allocation and no record.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { status } from "@grpc/grpc-js";
import { Tapmanager } from "../../src/tapmanager";
import { allocations, bridgeList, type CniSandbox, makeCniSandbox } from "../harness/cni-fixtures";
import { ip, linksIn, requirePrivateNamespace } from "../harness/fixtures";
import type { ProcessLauncher } from "../harness/process-launcher";
import { fakeQcow2 } from "../harness/qcow2";
import { podConfig, startTestVmlet, type TestVmlet } from "../harness/test-vmlet";

function netnsNames(): string[] {
  return ip("netns", "list")
    .split("\n")
    .filter(Boolean)
    .map((l) => l.split(" ")[0]);
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe("CRI on the tapmanager and real CNI plugins", () => {
  let cni: CniSandbox;
  let tm: Tapmanager;
  let t: TestVmlet<Tapmanager, ProcessLauncher>;
  let imageRef: string;

  before(async () => {
    requirePrivateNamespace();
    cni = makeCniSandbox();
    tm = new Tapmanager({ cni: cni.client(), stateDir: path.join(cni.root, "pods") });
    t = await startTestVmlet({ networks: tm });
    const http = await import("node:http");
    const disk = fakeQcow2({ size: 8192 });
    const server = http.createServer((_req, res) => res.end(disk));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    t.rules.push({
      name: "vmlet.io/disk:latest",
      url: `http://127.0.0.1:${(server.address() as { port: number }).port}/`,
    });
    imageRef = (await t.client.image.PullImage({ image: { image: "vmlet.io/disk" } })).imageRef;
    server.close();
  });

  after(async () => {
    await t?.close();
    await tm?.close();
    cni?.remove();
  });

  test("NetworkReady is false with NetworkPluginNotReady until a CNI config appears", async () => {
    const s = await t.client.runtime.Status({});
    const net = s.status?.conditions.find((c) => c.type === "NetworkReady");
    assert.equal(net?.status, false);
    assert.equal(net?.reason, "NetworkPluginNotReady");
    assert.match(net?.message ?? "", /no valid network config/);
    cni.writeConf("10-bridge.conflist", bridgeList("podnet", "1.0.0", cni.dataDir, "10.77.0.0/24"));
    await until("NetworkReady", async () => {
      const now = await t.client.runtime.Status({});
      return now.status?.conditions.find((c) => c.type === "NetworkReady")?.status === true;
    });
  });

  test("a pod gets its IP from the CNI plugins; the VM gets the pod's tap with the CNI MAC", async () => {
    const r = t.client.runtime;
    const { podSandboxId } = await r.RunPodSandbox({
      config: {
        ...podConfig("net1"),
        dnsConfig: {
          servers: ["10.96.0.10"],
          searches: ["default.svc.cluster.local"],
          options: [],
        },
      },
    });
    const { status: s } = await r.PodSandboxStatus({ podSandboxId });
    assert.match(s?.network?.ip ?? "", /^10\.77\.0\.\d+$/);
    assert.deepEqual(allocations(cni.dataDir, "podnet"), [s?.network?.ip]);
    const network = tm.get(podSandboxId);
    assert.ok(network);
    assert.ok(netnsNames().includes(path.basename(network.netnsPath)));
    assert.deepEqual(network.interfaces[0].dns.nameservers, ["10.96.0.10"]);

    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "vm" }, image: { image: imageRef } },
    });
    await r.StartContainer({ containerId });
    const spec = t.launcher.started.at(-1);
    assert.equal(spec?.taps[0].guestMac, network.interfaces[0].guestMac);
    assert.equal(spec?.taps[0].tap, network.interfaces[0].tap);
    const tapLink = linksIn(path.basename(network.netnsPath)).find(
      (l) => l.ifname === network.interfaces[0].tap,
    );
    assert.ok(tapLink, "the tap exists in the pod netns");

    await r.StopContainer({ containerId, timeout: 1 });
    await r.StopPodSandbox({ podSandboxId });
    assert.ok(!netnsNames().includes(path.basename(network.netnsPath)), "netns removed");
    assert.deepEqual(allocations(cni.dataDir, "podnet"), [], "IP released");
    const after = await r.PodSandboxStatus({ podSandboxId });
    assert.equal(after.status?.state, "SANDBOX_NOTREADY");
    await r.RemovePodSandbox({ podSandboxId });
    await r.RemovePodSandbox({ podSandboxId });
    assert.deepEqual(fs.readdirSync(path.join(t.stateDir, "sandboxes")), []);
    assert.deepEqual(fs.readdirSync(path.join(t.stateDir, "containers")), []);
    assert.deepEqual(fs.readdirSync(path.join(cni.root, "pods")), []);
  });

  test("vmlet.io/allowed-source-prefixes: a bad value is INVALID_ARGUMENT naming it, with nothing built; a good one reaches the pod network", async () => {
    const r = t.client.runtime;
    const netnsBefore = netnsNames();
    for (const bad of ["10.1.0.0/33", "10.1.0.1/24", "fd00::/129", "bogus", "10.1.0.0", ","]) {
      await assert.rejects(
        r.RunPodSandbox({
          config: podConfig("prefixes", {
            annotations: { "vmlet.io/allowed-source-prefixes": bad },
          }),
        }),
        (error: { code?: number; details?: string }) => {
          assert.equal(
            status[error.code ?? -1],
            "INVALID_ARGUMENT",
            `for ${bad}: ${error.details}`,
          );
          assert.match(error.details ?? "", /annotation vmlet\.io\/allowed-source-prefixes=/);
          return true;
        },
      );
    }
    assert.deepEqual(netnsNames(), netnsBefore, "no netns made");
    assert.deepEqual(allocations(cni.dataDir, "podnet"), [], "no address taken");
    assert.deepEqual(fs.readdirSync(path.join(t.stateDir, "sandboxes")), [], "no sandbox record");

    const { podSandboxId } = await r.RunPodSandbox({
      config: podConfig("prefixes", {
        annotations: { "vmlet.io/allowed-source-prefixes": " 10.123.0.0/24, fd00:7::/64" },
      }),
    });
    try {
      const record = JSON.parse(
        fs.readFileSync(path.join(cni.root, "pods", `${podSandboxId}.json`), "utf8"),
      );
      assert.deepEqual(record.request.allowedSourcePrefixes, [
        { family: 4, address: "10.123.0.0", prefixLength: 24 },
        { family: 6, address: "fd00:7::", prefixLength: 64 },
      ]);
      assert.ok(tm.dropCounts(podSandboxId), "the pod's NIC is guarded");
    } finally {
      await r.StopPodSandbox({ podSandboxId });
      await r.RemovePodSandbox({ podSandboxId });
    }
  });

  test("a CNI failure leaves no netns, no allocation and no sandbox, and says what was cleaned", async () => {
    // tuning refuses an unknown sysctl at ADD, after bridge and host-local did their part.
    const tuning = { type: "tuning", sysctl: { "net.ipv4.conf.eth0.no_such_sysctl": "1" } };
    cni.writeConf(
      "10-bridge.conflist",
      bridgeList("podnet", "1.0.0", cni.dataDir, "10.77.0.0/24", [tuning]),
    );
    try {
      await new Promise((resolve) => setTimeout(resolve, 300)); // the tapmanager's watcher reloads
      const netnsBefore = netnsNames();
      await assert.rejects(
        t.client.runtime.RunPodSandbox({ config: podConfig("broken") }),
        (e: { code: number; details: string }) => {
          assert.equal(e.code, status.UNKNOWN);
          assert.match(
            e.details,
            /RunPodSandbox default\/broken: set up network: .*tuning.*cleaned up: network torn down, record removed/,
          );
          return true;
        },
      );
      assert.deepEqual(netnsNames(), netnsBefore);
      assert.deepEqual(allocations(cni.dataDir, "podnet"), []);
      assert.deepEqual(fs.readdirSync(path.join(t.stateDir, "sandboxes")), []);
    } finally {
      cni.writeConf(
        "10-bridge.conflist",
        bridgeList("podnet", "1.0.0", cni.dataDir, "10.77.0.0/24"),
      );
    }
  });

  test("concurrent duplicate RunPodSandbox calls of one pod attempt make one sandbox with one netns and one address", async () => {
    const r = t.client.runtime;
    const before = netnsNames().length;
    const calls = await Promise.allSettled(
      [1, 2, 3].map(() => r.RunPodSandbox({ config: podConfig("twice") })),
    );
    const made = calls.flatMap((c) => (c.status === "fulfilled" ? [c.value.podSandboxId] : []));
    assert.equal(made.length, 1, `one call succeeds: ${JSON.stringify(calls)}`);
    for (const c of calls) {
      if (c.status === "fulfilled") continue;
      const error = c.reason as { code?: number; details?: string };
      assert.equal(error.code, status.ALREADY_EXISTS);
      assert.match(error.details ?? "", new RegExp(`exists as sandbox ${made[0]}`));
    }
    assert.equal(netnsNames().length, before + 1, "one netns");
    assert.equal(allocations(cni.dataDir, "podnet").length, 1, "one IPAM allocation");
    const listed = await r.ListPodSandbox({ filter: { labelSelector: { app: "twice" } } });
    assert.deepEqual(
      listed.items.map((i) => i.id),
      made,
    );
    await r.StopPodSandbox({ podSandboxId: made[0]! });
    await r.RemovePodSandbox({ podSandboxId: made[0]! });
    assert.equal(netnsNames().length, before);
    assert.deepEqual(allocations(cni.dataDir, "podnet"), []);
  });

  test("after a restart of vmlet the pod network is recovered and the pod is still READY", async () => {
    await new Promise((resolve) => setTimeout(resolve, 300)); // the watcher reloads the good config
    const r = () => t.client.runtime;
    const { podSandboxId } = await r().RunPodSandbox({ config: podConfig("survivor") });
    const ipBefore = (await r().PodSandboxStatus({ podSandboxId })).status?.network?.ip;
    await tm.close();
    await t.restart();
    const s = (await r().PodSandboxStatus({ podSandboxId })).status;
    assert.equal(s?.state, "SANDBOX_READY");
    assert.equal(s?.network?.ip, ipBefore);
    assert.ok(tm.get(podSandboxId), "tapmanager knows the pod again");
    await r().StopPodSandbox({ podSandboxId });
    await r().RemovePodSandbox({ podSandboxId });
    assert.deepEqual(allocations(cni.dataDir, "podnet"), []);
  });
});
