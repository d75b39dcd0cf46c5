// End to end, the way kubelet drives a node: `vmlet serve` on its socket with the
// reference bridge plugin, the test guest's disk served over HTTP, and
// PullImage → RunPodSandbox → CreateContainer → StartContainer. The guest takes the pod
// IP by DHCP (its console, in the CRI log, says so), a second pod reaches it, a SIGKILL
// of vmlet loses nothing, and stop + remove leave nothing behind. QEMU runs confined
// (an unprivileged user, seccomp, no cores) through all of it.
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { status as grpcStatus } from "@grpc/grpc-js";
import { type CriClient, connectCri } from "../../src/runtime/cri/client";
import {
  allocations,
  bridgeList,
  type CniSandbox,
  makeCniSandbox,
  makePod,
} from "../harness/cni-fixtures";
import { ip, makeNetns, requirePrivateNamespace, run, type TestNetns } from "../harness/fixtures";
import { podConfig } from "../harness/test-vmlet";

const MAIN = path.resolve(__dirname, "../../src/cli/main.js");
const GUEST_DISK = path.join(
  process.env.VMLET_GUESTS_DIR ?? path.resolve(__dirname, "../../../.cache/guests"),
  "disk.qcow2",
);
const skip = fs.existsSync(GUEST_DISK)
  ? false
  : `no test guest at ${GUEST_DISK}: run scripts/build-test-guests.sh`;

interface Served {
  child: ChildProcess;
  exited: Promise<number | null>;
  output: () => string;
}

async function startServe(args: string[]): Promise<Served> {
  const child = spawn(process.execPath, [MAIN, "serve", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  const exited = new Promise<number | null>((resolve) =>
    child.once("exit", (code) => resolve(code)),
  );
  await until("vmlet serve listening", async () => {
    if (child.exitCode !== null) throw new Error(`vmlet serve exited: ${out}`);
    return out.includes("CRI server listening");
  });
  return { child, exited, output: () => out };
}

async function until<T>(
  what: string,
  check: () => Promise<T | false | undefined>,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function pings(from: TestNetns, to: string): boolean {
  try {
    run(from.name, "ping", "-c", "1", "-W", "1", to);
    return true;
  } catch {
    return false;
  }
}

function nodeLinks(): string[] {
  return (JSON.parse(ip("-j", "link", "show")) as { ifname: string }[]).map((l) => l.ifname).sort();
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

describe("a VM pod end to end through the CRI socket", { skip }, () => {
  let cni: CniSandbox;
  let httpServer: http.Server;
  let served: Served | undefined;
  let client: CriClient;
  let args: string[];
  let stateDir: string;
  let neighbour: TestNetns;

  before(async () => {
    requirePrivateNamespace();
    cni = makeCniSandbox();
    cni.writeConf("10-bridge.conflist", bridgeList("e2e", "1.0.0", cni.dataDir, "10.79.0.0/24"));
    httpServer = http.createServer((_req, res) => fs.createReadStream(GUEST_DISK).pipe(res));
    await new Promise<void>((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
    const rules = path.join(cni.root, "images.json");
    const port = (httpServer.address() as { port: number }).port;
    fs.writeFileSync(
      rules,
      JSON.stringify([{ prefix: "vmlet.io/", url: `http://127.0.0.1:${port}/` }]),
    );
    stateDir = path.join(cni.root, "state");
    args = [
      `--socket=${path.join(cni.root, "vmlet.sock")}`,
      `--state-dir=${stateDir}`,
      `--cni-conf-dir=${cni.confDir}`,
      `--cni-bin-dir=${cni.binDir}:/usr/lib/cni`,
      `--image-rules=${rules}`,
      "--accel=tcg",
      "--log-level=debug",
    ];
    served = await startServe(args);
    client = connectCri(path.join(cni.root, "vmlet.sock"));
    // The second pod: a plain netns on the same network, attached by the CNI plugins.
    neighbour = makeNetns("nb");
    await cni.client().addPod(makePod("neighbour"), neighbour.path);
  });

  after(async () => {
    client?.close();
    served?.child.kill("SIGKILL");
    await served?.exited;
    httpServer?.close();
    neighbour?.remove();
    cni?.remove();
  });

  test("the guest takes the pod IP, is reachable, runs ExecSync, survives a SIGKILL of vmlet, powers off on the ACPI button, and leaves nothing", async () => {
    const linksBefore = nodeLinks();
    const { imageRef } = await client.image.PullImage({ image: { image: "vmlet.io/disk.qcow2" } });
    const logDirectory = path.join(cni.root, "pods", "default_e2e_uid");
    const sandboxConfig = podConfig("e2e", {
      logDirectory,
      annotations: { "vmlet.io/ssh-keys": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2e e2e@vmlet" },
    });
    const { podSandboxId } = await client.runtime.RunPodSandbox({ config: sandboxConfig });
    const podIp =
      (await client.runtime.PodSandboxStatus({ podSandboxId })).status?.network?.ip ?? "";
    assert.match(podIp, /^10\.79\.0\.\d+$/);
    const { containerId } = await client.runtime.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "guest" }, image: { image: imageRef }, logPath: "guest/0.log" },
      sandboxConfig,
    });
    await client.runtime.StartContainer({ containerId });
    const logPath = path.join(logDirectory, "guest/0.log");

    const lease = await until(
      "the guest's DHCP lease in the container log",
      async () => {
        const text = fs.existsSync(logPath) ? fs.readFileSync(logPath, "utf8") : "";
        return /^\S+ stdout [PF] VMLET-GUEST lease event="bound".*$/m.exec(text)?.[0];
      },
      60_000,
    );
    assert.match(lease, new RegExp(`ip="${podIp.replace(/\./g, "\\.")}/24"`));
    // The guest found its cloud-init seed (a disk labelled cidata), made for this container.
    const seed = /VMLET-GUEST seed (.*)$/m.exec(fs.readFileSync(logPath, "utf8"))?.[1] ?? "";
    assert.match(seed, new RegExp(`instance_id="${containerId}"`));
    assert.match(seed, /hostname="e2e" ssh_keys="1" files="meta-data,network-config,user-data"/);
    await until("a ping from the second pod", async () => pings(neighbour, podIp), 10_000);
    let s = (await client.runtime.ContainerStatus({ containerId, verbose: true })).status;
    assert.equal(s?.state, "CONTAINER_RUNNING");
    const { pid } = JSON.parse(
      (await client.runtime.ContainerStatus({ containerId, verbose: true })).info.info,
    ) as { pid: number };
    assert.ok(alive(pid));

    // QEMU is confined: the unprivileged user setup.sh made, a seccomp filter, no cores.
    const qemuUid = Number(execFileSync("id", ["-u", "vmlet-qemu"], { encoding: "utf8" }).trim());
    assert.ok(qemuUid > 0);
    const procStatus = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    assert.deepEqual(
      /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$/m.exec(procStatus)?.slice(1).map(Number),
      [qemuUid, qemuUid, qemuUid, qemuUid],
      "QEMU runs as vmlet-qemu (real, effective, saved, fs uid)",
    );
    assert.match(procStatus, /^CapEff:\s+0+$/m, "with no capabilities");
    assert.match(procStatus, /^Seccomp:\s+2$/m, "in seccomp filter mode (-sandbox on)");
    assert.match(
      fs.readFileSync(`/proc/${pid}/limits`, "utf8"),
      /^Max core file size\s+0\s+0\s+bytes\s*$/m,
    );
    // proc(5): the files of a process that is not dumpable are owned by root.
    assert.equal(fs.statSync(`/proc/${pid}/status`).uid, 0, "QEMU is not dumpable");

    // Structured logs: one JSON line per event, with the pod's and the container's ids.
    const started = (served?.output() ?? "")
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.msg === "VM started");
    assert.ok(started, "a 'VM started' log line");
    assert.equal(started.containerId, containerId);
    assert.equal(started.podSandboxId, podSandboxId);
    assert.equal(started.pid, pid);

    // ExecSync, as an exec probe runs it: in the VM, through its QEMU guest agent.
    const probe = await client.runtime.ExecSync({
      containerId,
      cmd: ["sh", "-c", "ip -4 -o addr show dev eth0; echo probe >&2; exit 3"],
      timeout: 30,
    });
    assert.equal(probe.exitCode, 3);
    assert.match(probe.stdout.toString(), new RegExp(`inet ${podIp.replace(/\./g, "\\.")}/24`));
    assert.equal(probe.stderr.toString(), "probe\n");

    // kubelet's log rotation: it renames the log and asks vmlet to reopen it; what the
    // guest prints next lands in a new file at the same path.
    fs.renameSync(logPath, `${logPath}.20261201-000000`);
    await client.runtime.ReopenContainerLog({ containerId });
    const printed = await client.runtime.ExecSync({
      containerId,
      cmd: ["sh", "-c", "echo after-rotation > /dev/ttyS0"],
      timeout: 30,
    });
    assert.equal(printed.exitCode, 0, printed.stderr.toString());
    await until(
      "the guest's output in the reopened log",
      async () =>
        fs.existsSync(logPath) &&
        /stdout F after-rotation$/m.test(fs.readFileSync(logPath, "utf8")),
      10_000,
    );
    assert.doesNotMatch(fs.readFileSync(`${logPath}.20261201-000000`, "utf8"), /after-rotation/);

    // A probe past its timeout is DEADLINE_EXCEEDED, in about the timeout.
    const slowAt = Date.now();
    await assert.rejects(
      client.runtime.ExecSync({ containerId, cmd: ["sleep", "30"], timeout: 1 }),
      (e: { code?: number; details?: string }) =>
        e.code === grpcStatus.DEADLINE_EXCEEDED && /did not exit within 1 s/.test(e.details ?? ""),
    );
    assert.ok(Date.now() - slowAt < 10_000, `${Date.now() - slowAt} ms`);

    // What the guest writes to its root disk is the container's writable layer, as
    // kubelet counts ephemeral storage: the overlay grows by what was written.
    const layer = async () => {
      const stats = (await client.runtime.ContainerStats({ containerId })).stats;
      return Number(stats?.writableLayer?.usedBytes?.value ?? -1);
    };
    const before = await layer();
    assert.ok(before > 0, `writable layer ${before}`);
    const write = await client.runtime.ExecSync({
      containerId,
      cmd: ["dd", "if=/dev/urandom", "of=/dev/vda", "bs=1M", "count=4", "seek=40", "conv=fsync"],
      timeout: 60,
    });
    assert.equal(write.exitCode, 0, write.stderr.toString());
    const after = await layer();
    assert.ok(after - before >= 4 * 1024 * 1024, `writable layer ${before} -> ${after}`);

    // vmlet dies hard; the VM does not.
    client.close();
    served?.child.kill("SIGKILL");
    await served?.exited;
    assert.ok(alive(pid), "QEMU outlives vmlet");
    assert.ok(pings(neighbour, podIp), "the guest is reachable while vmlet is down");
    served = await startServe(args);
    client = connectCri(path.join(cni.root, "vmlet.sock"));
    s = (await client.runtime.ContainerStatus({ containerId })).status;
    assert.equal(s?.state, "CONTAINER_RUNNING");
    const listed = (await client.runtime.ListContainers({})).containers;
    assert.deepEqual(
      listed.map((c) => [c.id, c.state]),
      [[containerId, "CONTAINER_RUNNING"]],
      "listed RUNNING after the restart",
    );
    const sandboxes = (await client.runtime.ListPodSandbox({})).items;
    assert.deepEqual(
      sandboxes.map((p) => [p.id, p.state]),
      [[podSandboxId, "SANDBOX_READY"]],
    );
    assert.ok(pings(neighbour, podIp), "still reachable after the restart");
    const again = await client.runtime.ExecSync({ containerId, cmd: ["true"], timeout: 30 });
    assert.equal(again.exitCode, 0, "ExecSync works on the adopted VM");

    // A graceful stop: the ACPI power button; the guest gives its lease back and powers off.
    const stopAt = Date.now();
    await client.runtime.StopContainer({ containerId, timeout: 60 });
    const stopMs = Date.now() - stopAt;
    s = (await client.runtime.ContainerStatus({ containerId })).status;
    assert.equal(s?.state, "CONTAINER_EXITED");
    assert.equal(s?.exitCode, 0, `exit code after a graceful stop (${stopMs} ms)`);
    assert.equal(s?.reason, "Completed");
    assert.ok(stopMs < 60_000, `graceful, not killed at the timeout: ${stopMs} ms`);
    const log = fs.readFileSync(logPath, "utf8");
    assert.match(log, /stdout [PF] VMLET-GUEST acpi event="power-button"/);
    await until(
      "vmlet's DHCP server logging the guest's RELEASE",
      async () => /"msg":"DHCP RELEASE"/.test(served?.output() ?? ""),
      5_000,
    );
    assert.ok(!alive(pid), "QEMU is gone");
    await client.runtime.StopPodSandbox({ podSandboxId });
    await client.runtime.RemovePodSandbox({ podSandboxId });

    assert.deepEqual(nodeLinks(), linksBefore, "no link of the pod left on the node");
    const netns = ip("netns", "list");
    assert.ok(!netns.includes(podSandboxId.slice(0, 20)), `no pod netns left: ${netns}`);
    assert.deepEqual(
      allocations(cni.dataDir, "e2e").filter((a) => a === podIp),
      [],
      "the pod IP is released",
    );
    for (const dir of ["sandboxes", "containers", "vms", "pods", "cni"]) {
      const left = fs.existsSync(path.join(stateDir, dir))
        ? fs.readdirSync(path.join(stateDir, dir))
        : [];
      assert.deepEqual(left, [], `nothing left in ${dir}`);
    }
    const qemuLeft = spawnSync("pgrep", ["-f", containerId], { encoding: "utf8" }).stdout.trim();
    assert.equal(qemuLeft, "", "no QEMU of the container left");
  });
});
