// What plugins see: environment, CNI_ARGS, injected config, prevResult chaining, the
// order of DEL and CHECK, STATUS and GC by version. Recording fixture plugins only.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { type CniClient, CniConfigError, type PodRef } from "../../src/cni-bridge/cni";
import {
  type CniSandbox,
  cacheFiles,
  DEBIAN_CNI_DIR,
  eventually,
  makeCniSandbox,
  makePod,
  readLog,
  recordingPlugin,
  writePlugin,
} from "../harness/cni-fixtures";
import { makeNetns, requirePrivateNamespace, type TestNetns } from "../harness/fixtures";

requirePrivateNamespace();

interface Call {
  command: string;
  containerId: string;
  netns: string;
  ifname: string;
  args: string;
  path: string;
  plugin: string;
  conf: Record<string, unknown>;
}

let sandbox: CniSandbox;
let ns: TestNetns;
let pod: PodRef;
let log: string;

beforeEach(() => {
  sandbox = makeCniSandbox();
  ns = makeNetns("pod");
  pod = makePod();
  log = path.join(sandbox.root, "calls.log");
  recordingPlugin(sandbox.binDir, "rec-a", log);
  recordingPlugin(sandbox.binDir, "rec-b", log);
});

afterEach(() => {
  ns.remove();
  sandbox.remove();
});

function calls(): Call[] {
  return (readLog(log) as unknown as Call[]).map((c) => ({ ...c, plugin: String(c.conf?.type) }));
}

async function clientWith(
  cniVersion: string,
  extra: Record<string, unknown> = {},
): Promise<CniClient> {
  sandbox.writeConf("10-rec.conflist", {
    cniVersion,
    name: "rec",
    ...extra,
    plugins: [
      { type: "rec-a", cniVersion: "0.1.0", name: "ignored", capabilities: { portMappings: true } },
      { type: "rec-b", capabilities: { bandwidth: true, dns: false } },
    ],
  });
  const client = sandbox.client();
  await eventually(() => client.status().ready);
  return client;
}

describe("the CNI protocol", () => {
  it("ADD gives each plugin the CNI environment, Kubernetes CNI_ARGS, and the list's name and version", async () => {
    const client = await clientWith("1.0.0");
    const portMappings = [{ hostPort: 80, containerPort: 8080, protocol: "tcp" as const }];
    await client.addPod(pod, ns.path, {
      capabilities: { portMappings, dns: { servers: ["1.1.1.1"] } },
    });
    const [a, b] = calls();
    for (const c of [a!, b!]) {
      assert.equal(c.command, "ADD");
      assert.equal(c.containerId, pod.sandboxId);
      assert.equal(c.netns, ns.path);
      assert.equal(c.ifname, "eth0");
      assert.equal(
        c.args,
        `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=${pod.name};K8S_POD_INFRA_CONTAINER_ID=${pod.sandboxId};K8S_POD_UID=${pod.uid}`,
      );
      assert.equal(c.path, `${sandbox.binDir}:${DEBIAN_CNI_DIR}`);
      assert.equal(c.conf.name, "rec");
      assert.equal(c.conf.cniVersion, "1.0.0");
    }
    // Only declared capabilities reach a plugin, and only those the runtime offered.
    assert.deepEqual(a!.conf.runtimeConfig, { portMappings });
    assert.equal(b!.conf.runtimeConfig, undefined);
    assert.equal(a!.conf.prevResult, undefined);
    assert.deepEqual(b!.conf.prevResult, { cniVersion: "1.0.0" });
  });

  it("a result at another version is converted to the list's version for the next plugin", async () => {
    writePlugin(
      sandbox.binDir,
      "rec-a",
      `#!/bin/sh\ncat >/dev/null\n[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion":"0.3.1","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"version":"4","address":"10.9.0.2/24","interface":0}]}'\nexit 0\n`,
    );
    const client = await clientWith("1.0.0");
    const [att] = await client.addPod(pod, ns.path);
    const b = calls().find((c) => c.plugin === "rec-b")!;
    assert.deepEqual(b.conf.prevResult, {
      cniVersion: "1.0.0",
      interfaces: [{ name: "eth0", sandbox: "/x" }],
      ips: [{ address: "10.9.0.2/24", interface: 0 }],
    });
    assert.equal(att!.result.cniVersion, "1.0.0");
  });

  it("DEL runs the chain in reverse with the cached result; CHECK runs it forward", async () => {
    const client = await clientWith("0.4.0");
    await client.addPod(pod, ns.path);
    await client.checkPod(pod, ns.path);
    await client.delPod(pod, ns.path);
    const seq = calls().map((c) => `${c.command} ${c.plugin}`);
    assert.deepEqual(seq, [
      "ADD rec-a",
      "ADD rec-b",
      "CHECK rec-a",
      "CHECK rec-b",
      "DEL rec-b",
      "DEL rec-a",
    ]);
    for (const c of calls().slice(2)) assert.deepEqual(c.conf.prevResult, { cniVersion: "0.4.0" });
    assert.deepEqual(cacheFiles(sandbox.cacheDir), []);
  });

  it("at 0.3.1 DEL gets no prevResult and CHECK is refused", async () => {
    const client = await clientWith("0.3.1");
    await client.addPod(pod, ns.path);
    await assert.rejects(client.checkPod(pod, ns.path), CniConfigError);
    await client.delPod(pod, ns.path);
    const dels = calls().filter((c) => c.command === "DEL");
    assert.equal(dels.length, 2);
    for (const c of dels) assert.equal(c.conf.prevResult, undefined);
  });

  it("disableCheck skips CHECK", async () => {
    const client = await clientWith("1.0.0", { disableCheck: true });
    await client.addPod(pod, ns.path);
    await client.checkPod(pod, ns.path);
    assert.ok(!calls().some((c) => c.command === "CHECK"));
  });

  it("the cache holds the config and result, written whole, and survives a new client", async () => {
    const client = await clientWith("1.0.0");
    await client.addPod(pod, ns.path);
    const files = cacheFiles(sandbox.cacheDir);
    assert.equal(files.length, 1);
    assert.ok(!files[0]!.includes(".tmp-"));
    const entry = JSON.parse(fs.readFileSync(files[0]!, "utf8")) as Record<string, unknown>;
    assert.equal(entry.network, "rec");
    assert.equal(entry.ifname, "eth0");
    assert.deepEqual(entry.result, { cniVersion: "1.0.0" });
    assert.equal((entry.config as { plugins: unknown[] }).plugins.length, 2);
    client.close();
    fs.rmSync(path.join(sandbox.confDir, "10-rec.conflist"));
    await sandbox.client().delPod(pod, undefined);
    assert.deepEqual(
      calls()
        .filter((c) => c.command === "DEL")
        .map((c) => [c.plugin, c.netns]),
      [
        ["rec-b", ns.path],
        ["rec-a", ns.path],
      ],
    );
  });

  it("at 1.1.0 STATUS asks every plugin, and GC deletes stale attachments and tells plugins the valid ones", async () => {
    const client = await clientWith("1.1.0");
    const stale = makePod();
    await client.addPod(pod, ns.path);
    await client.addPod(stale, ns.path);
    await client.checkStatus(); // status() asks in the background too: let that settle
    const before = calls().length;
    await client.pluginStatus();
    const status = calls()
      .slice(before)
      .filter((c) => c.command === "STATUS");
    assert.deepEqual(
      status.map((c) => [c.plugin, c.containerId, c.netns]),
      [
        ["rec-a", "", ""],
        ["rec-b", "", ""],
      ],
    );
    await client.gc([pod.sandboxId]);
    const dels = calls().filter((c) => c.command === "DEL");
    assert.deepEqual([...new Set(dels.map((c) => c.containerId))], [stale.sandboxId]);
    const gcs = calls().filter((c) => c.command === "GC");
    assert.equal(gcs.length, 2);
    for (const c of gcs) {
      assert.deepEqual(c.conf["cni.dev/valid-attachments"], [
        { containerID: pod.sandboxId, ifname: "eth0" },
      ]);
    }
    assert.equal(cacheFiles(sandbox.cacheDir).length, 1);
  });

  it("at 1.1.0 GC without the plugins' GC (networks shared with containerd) deletes only stale cached attachments", async () => {
    const client = await clientWith("1.1.0");
    const stale = makePod();
    await client.addPod(pod, ns.path);
    await client.addPod(stale, ns.path);
    await client.gc([pod.sandboxId], { pluginGc: false });
    const dels = calls().filter((c) => c.command === "DEL");
    assert.deepEqual([...new Set(dels.map((c) => c.containerId))], [stale.sandboxId]);
    assert.deepEqual(
      calls().filter((c) => c.command === "GC"),
      [],
      "no plugin is told that only vmlet's attachments are valid",
    );
  });

  it("at 1.1.0 a plugin whose STATUS fails makes the network not ready, with its error, until it answers again", async () => {
    const down = path.join(sandbox.root, "plugin-down");
    writePlugin(
      sandbox.binDir,
      "moody",
      `#!/bin/sh
cat >/dev/null
case "$CNI_COMMAND" in
  STATUS)
    [ -e ${down} ] || exit 0
    echo '{"cniVersion":"1.1.0","code":50,"msg":"the plugin is not available","details":"fixture down"}'
    exit 1 ;;
  VERSION) echo '{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}' ;;
esac
`,
    );
    sandbox.writeConf("10-moody.conflist", {
      cniVersion: "1.1.0",
      name: "moody",
      plugins: [{ type: "moody" }],
    });
    const client = sandbox.client();
    try {
      assert.deepEqual(await client.checkStatus(), { ready: true });
      fs.writeFileSync(down, "");
      const status = await client.checkStatus();
      assert.equal(status.ready, false);
      assert.equal(status.reason, "NetworkPluginNotReady");
      assert.match(status.message ?? "", /STATUS: .*moody.*the plugin is not available/);
      assert.deepEqual(client.status(), status, "kept, not asked on every call");
      fs.rmSync(down);
      assert.deepEqual(await client.checkStatus(), { ready: true });
    } finally {
      client.close();
    }
  });

  it("before 1.1.0 there is no STATUS or GC call", async () => {
    const client = await clientWith("1.0.0");
    await client.pluginStatus();
    await client.gc([]);
    assert.deepEqual(calls(), []);
  });

  it("VERSION reports what a plugin supports", async () => {
    const client = sandbox.client();
    const v = await client.versionOf("bridge");
    assert.ok(v.supportedVersions.includes("1.0.0"));
    assert.ok(v.supportedVersions.includes("0.3.1"));
  });
});
