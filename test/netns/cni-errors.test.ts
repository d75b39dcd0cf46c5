// Each way a CNI call can fail gives its typed error, names network, plugin and pod, and
// leaves nothing behind: no IPAM allocation, no link, no cache entry.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import {
  type CniClient,
  CniConfigError,
  CniError,
  CniInvalidResultError,
  CniPluginError,
  CniPluginNotFoundError,
  CniTimeoutError,
  type PodRef,
} from "../../src/cni-bridge/cni";
import {
  allocations,
  bridgeList,
  type CniSandbox,
  cacheFiles,
  eventually,
  makeCniSandbox,
  makePod,
  misbehavingPlugin,
  ptpList,
  writePlugin,
} from "../harness/cni-fixtures";
import { ipIn, makeNetns, requirePrivateNamespace, type TestNetns } from "../harness/fixtures";

requirePrivateNamespace();

let sandbox: CniSandbox;
let ns: TestNetns;
let pod: PodRef;

beforeEach(() => {
  sandbox = makeCniSandbox();
  ns = makeNetns("pod");
  pod = makePod();
});

afterEach(() => {
  ns.remove();
  sandbox.remove();
});

function podLinks(): string[] {
  return (JSON.parse(ipIn(ns.name, "-j", "link", "show")) as { ifname: string }[]).map(
    (l) => l.ifname,
  );
}

/** Slaves of `bridge` in the node netns: the host ends of pod veths. */
function bridgePorts(bridge: string): string[] {
  const out = execFileSync("ip", ["-j", "link", "show", "master", bridge], { encoding: "utf8" });
  return (JSON.parse(out || "[]") as { ifname: string }[]).map((l) => l.ifname);
}

async function clientWith(conf: unknown, timeoutMs?: number): Promise<CniClient> {
  sandbox.writeConf("10-net.conflist", conf);
  const client = sandbox.client(timeoutMs);
  await eventually(() => client.status().ready);
  return client;
}

function assertNothingLeft(network: string, bridge?: string): void {
  assert.deepEqual(allocations(sandbox.dataDir, network), [], "IPAM allocations");
  assert.deepEqual(podLinks(), ["lo"], "links in the pod netns");
  if (bridge) assert.deepEqual(bridgePorts(bridge), [], "ports on the node bridge");
  assert.deepEqual(cacheFiles(sandbox.cacheDir), [], "cache entries");
}

function names(error: Error, network: string, plugin: string): void {
  assert.match(error.message, new RegExp(`pod ${pod.namespace}/${pod.name}`));
  assert.match(error.message, new RegExp(`network ${network}`));
  assert.match(error.message, new RegExp(`plugin ${plugin}`));
}

/** PIDs of running processes (zombies aside) whose program is the CNI plugin `type`. */
function pluginProcesses(type: string): number[] {
  return fs
    .readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((pid) => {
      try {
        const running = !/^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
        return running && path.basename(fs.readlinkSync(`/proc/${pid}/exe`)) === type;
      } catch {
        return false; // gone meanwhile
      }
    })
    .map(Number);
}

function bridgeOf(conf: { plugins: unknown[] }): string {
  return (conf.plugins[0] as { bridge: string }).bridge;
}

describe("CNI errors", () => {
  it("a missing plugin after bridge: CniPluginNotFoundError, and bridge's work is undone", async () => {
    const conf = bridgeList("nf", "1.0.0", sandbox.dataDir, "10.41.0.0/24", [
      { type: "no-such-plugin" },
    ]);
    const client = await clientWith(conf);
    const error = await client.addPod(pod, ns.path).catch((e: Error) => e);
    assert.ok(error instanceof CniPluginNotFoundError, String(error));
    names(error, "nf", "no-such-plugin");
    assert.match(error.message, /rolled back with DEL/);
    assertNothingLeft("nf", bridgeOf(conf));
  });

  it("a plugin's CNI error: CniPluginError keeps code, msg and details", async () => {
    misbehavingPlugin(sandbox.binDir, "failer", "ADD", "error");
    const conf = bridgeList("pe", "1.0.0", sandbox.dataDir, "10.42.0.0/24", [{ type: "failer" }]);
    const client = await clientWith(conf);
    const error = await client.addPod(pod, ns.path).catch((e: Error) => e);
    assert.ok(error instanceof CniPluginError, String(error));
    assert.equal(error.code, 107);
    assert.equal(error.msg, "fixture refused");
    assert.equal(error.details, "asked to fail");
    assert.equal(error.exitCode, 1);
    names(error, "pe", "failer");
    assertNothingLeft("pe", bridgeOf(conf));
  });

  it("output that is not JSON: CniInvalidResultError", async () => {
    misbehavingPlugin(sandbox.binDir, "garbler", "ADD", "garbage");
    const conf = bridgeList("ir", "1.0.0", sandbox.dataDir, "10.43.0.0/24", [{ type: "garbler" }]);
    const client = await clientWith(conf);
    const error = await client.addPod(pod, ns.path).catch((e: Error) => e);
    assert.ok(error instanceof CniInvalidResultError, String(error));
    assert.match(error.output, /this is \{ not json/);
    names(error, "ir", "garbler");
    assertNothingLeft("ir", bridgeOf(conf));
  });

  it("a plugin that hangs: CniTimeoutError after the limit, and it and its children are killed", async () => {
    const pidFile = path.join(sandbox.root, "hang.pid");
    misbehavingPlugin(sandbox.binDir, "hanger", "ADD", "hang", pidFile);
    const conf = bridgeList("to", "1.0.0", sandbox.dataDir, "10.44.0.0/24", [{ type: "hanger" }]);
    const client = await clientWith(conf, 500);
    const start = Date.now();
    const error = await client.addPod(pod, ns.path).catch((e: Error) => e);
    assert.ok(error instanceof CniTimeoutError, String(error));
    assert.ok(Date.now() - start < 5000);
    assert.equal(error.timeoutMs, 500);
    names(error, "to", "hanger");
    const [pid, childPid] = fs.readFileSync(pidFile, "utf8").trim().split(" ").map(Number);
    assert.equal(error.pid, pid);
    const gone = (p: number) =>
      !fs.existsSync(`/proc/${p}`) ||
      /^State:\s+Z/m.test(fs.readFileSync(`/proc/${p}/status`, "utf8"));
    await eventually(() => gone(pid!) && gone(childPid!));
    assertNothingLeft("to", bridgeOf(conf));
  });

  it("a record that cannot be written: the bridge plugin, started meanwhile, is killed before it reads its config, and nothing is left", async () => {
    const conf = bridgeList("rf", "1.0.0", sandbox.dataDir, "10.48.0.0/24");
    const client = await clientWith(conf);
    // A cache on a tmpfs that is full: the record's write fails with ENOSPC.
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=4k", "tmpfs", sandbox.cacheDir]);
    try {
      fs.writeFileSync(path.join(sandbox.cacheDir, ".fill"), Buffer.alloc(4096));
      const error = await client.addPod(pod, ns.path).catch((e: Error) => e);
      assert.ok(error instanceof CniError, String(error));
      assert.match(
        error.message,
        /network rf.*record the attachment in the CNI cache before ADD: ENOSPC/,
      );
      assert.match(error.message, /no plugin ran, nothing to roll back/);
      fs.rmSync(path.join(sandbox.cacheDir, ".fill"));
      assertNothingLeft("rf");
      assert.deepEqual(pluginProcesses("bridge"), [], "a bridge plugin still running");
      // The node bridge was never made: the plugin acted on nothing.
      assert.throws(() => execFileSync("ip", ["link", "show", bridgeOf(conf)], { stdio: "pipe" }));
    } finally {
      execFileSync("umount", [sandbox.cacheDir], { stdio: "pipe" });
    }
  });

  it("a plugin whose DEL hangs makes DEL fail with CniTimeoutError and keeps the record for a retry", async () => {
    misbehavingPlugin(sandbox.binDir, "delhanger", "DEL", "hang");
    const client = await clientWith(
      bridgeList("dh", "1.0.0", sandbox.dataDir, "10.45.0.0/24", [{ type: "delhanger" }]),
      300,
    );
    await client.addPod(pod, ns.path);
    await assert.rejects(client.delPod(pod, ns.path), CniTimeoutError);
    // bridge's DEL still ran: the address is released even though the chain failed.
    assert.deepEqual(allocations(sandbox.dataDir, "dh"), []);
    assert.equal(cacheFiles(sandbox.cacheDir).length, 1);
  });

  it("an invalid config: not ready, and ADD gives CniConfigError naming the file", async () => {
    sandbox.writeConf("10-bad.conflist", { cniVersion: "1.0.0", name: "bad name!", plugins: [] });
    sandbox.writeConf("20-bad.conf", { cniVersion: "9.9.9", name: "v", type: "bridge" });
    const client = sandbox.client();
    const status = client.status();
    assert.equal(status.ready, false);
    assert.match(status.message!, /10-bad\.conflist.*name "bad name!"/);
    assert.match(status.message!, /20-bad\.conf.*cniVersion "9\.9\.9"/);
    const error = await client.addPod(pod, ns.path).catch((e: Error) => e);
    assert.ok(error instanceof CniConfigError, String(error));
    assert.match(error.message, /pod default\/.*cni config uninitialized/);
    assert.deepEqual(cacheFiles(sandbox.cacheDir), []);
  });

  it("a failure on the second network deletes the first again", async () => {
    misbehavingPlugin(sandbox.binDir, "failer", "ADD", "error");
    sandbox.writeConf("10-a.conflist", ptpList("first", "1.0.0", sandbox.dataDir, "10.46.0.0/24"));
    sandbox.writeConf("20-b.conflist", {
      ...ptpList("second", "1.0.0", sandbox.dataDir, "10.47.0.0/24"),
      plugins: [...ptpList("", "", sandbox.dataDir, "10.47.0.0/24").plugins, { type: "failer" }],
    });
    const client = sandbox.client();
    await eventually(() => client.network("second") !== undefined);
    const error = await client
      .addPod(pod, ns.path, { networks: ["first", "second"] })
      .catch((e: Error) => e);
    assert.ok(error instanceof CniPluginError, String(error));
    assert.match(
      error.message,
      /network second \(net1\) plugin failer.*deleted first \(eth0\) again/,
    );
    assert.deepEqual(allocations(sandbox.dataDir, "first"), []);
    assertNothingLeft("second");
  });

  it("an invalid result (bad address) is rejected, not passed on", async () => {
    const client = await clientWith({
      cniVersion: "1.0.0",
      name: "badres",
      plugins: [{ type: "liar" }],
    });
    writePlugin(
      sandbox.binDir,
      "liar",
      `#!/bin/sh\ncat >/dev/null\n[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.300/24"}]}'\nexit 0\n`,
    );
    const error = await client.addPod(pod, ns.path).catch((e: Error) => e);
    assert.ok(error instanceof CniInvalidResultError, String(error));
    assert.match(error.message, /ips\[0\]\.address "10\.0\.0\.300\/24" is not a CIDR/);
    assert.deepEqual(cacheFiles(sandbox.cacheDir), []);
  });
});
