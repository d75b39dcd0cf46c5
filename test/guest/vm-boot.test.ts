import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import type dgram from "node:dgram";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { describe, it, type TestContext } from "node:test";
import { isSameLiveProcess } from "../../src/runtime/vm/proc";
import { QemuLauncher } from "../../src/runtime/vm/qemu-launcher";
import type { VmRecord, VmSpec } from "../../src/runtime/vm/types";
import { createNetns, deleteNetns } from "../../src/sys/netns";
import { openTap } from "../../src/sys/tap";
import { openBoundUdpSocket } from "../../src/sys/udp";
import { ipIn, linksIn, requirePrivateNamespace, uniqueName } from "../harness/fixtures";

requirePrivateNamespace();

// The shared test guest (scripts/build-test-guests.sh): busybox init that asks for DHCP
// on eth0 and prints "VMLET-GUEST ..." lines on the serial console.
const GUEST = path.resolve(__dirname, "../../../.cache/guests/disk.qcow2");
const noGuest =
  !fs.existsSync(GUEST) && `no test guest at ${GUEST}: run scripts/build-test-guests.sh`;
const MAC = "0a:58:0a:f4:00:05";
const MTU = 1400;

interface PodNet {
  ns: string;
  nsPath: string;
  remove(): void;
}

/** A pod netns with a bridge br0, as the tapmanager builds it (minus the veth). */
function podNet(): PodNet {
  const ns = uniqueName("vm");
  const nsPath = createNetns(ns);
  ipIn(ns, "link", "add", "br0", "type", "bridge");
  ipIn(ns, "link", "set", "br0", "up");
  return { ns, nsPath, remove: () => deleteNetns(ns) };
}

function plugTap(pod: PodNet, tap: string): void {
  ipIn(pod.ns, "link", "set", tap, "master", "br0", "mtu", String(MTU));
  ipIn(pod.ns, "link", "set", tap, "up");
}

function vmSpec(dir: string, fd: number): VmSpec {
  return {
    id: path.basename(dir),
    dir,
    baseImage: { path: GUEST, format: "qcow2" },
    vcpus: 1,
    memoryMiB: 256,
    accel: "tcg",
    taps: [{ ifname: "eth0", tap: "tap0", fd, guestMac: MAC, mtu: MTU }],
    cloudInit: { instanceId: path.basename(dir), hostname: "pod", files: [] },
    logPath: path.join(dir, "..", "logs", `${path.basename(dir)}.log`),
  };
}

function tempDir(): string {
  return path.join(fs.mkdtempSync(path.join(os.tmpdir(), "vm-")), "c1");
}

/** Resolves with the first DHCPDISCOVER from `mac` that reaches the socket. */
function dhcpDiscoverFrom(socket: dgram.Socket, mac: string): Promise<void> {
  const chaddr = Buffer.from(mac.replaceAll(":", ""), "hex");
  return new Promise((resolve) => {
    socket.on("message", (msg) => {
      if (msg.length < 240 || msg[0] !== 1 || !msg.subarray(28, 34).equals(chaddr)) return;
      if (msg.readUInt32BE(236) !== 0x63825363) return; // the DHCP magic cookie
      for (
        let i = 240;
        i + 1 < msg.length && msg[i] !== 255;
        i += msg[i] === 0 ? 1 : 2 + msg[i + 1]!
      ) {
        if (msg[i] === 53 && msg[i + 2] === 1) resolve(); // option 53 (message type) = DISCOVER
      }
    });
  });
}

/** The CRI log as kubelet reads it: every line checked for the format, P pieces joined. */
function criLog(logPath: string): string[] {
  if (!fs.existsSync(logPath)) return [];
  const lines: string[] = [];
  let partial = "";
  for (const line of fs.readFileSync(logPath, "utf8").split("\n").filter(Boolean)) {
    const match = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z) stdout ([PF]) (.*)$/.exec(line);
    assert.ok(match, `kubelet's log format: ${JSON.stringify(line)}`);
    partial += match[4];
    if (match[3] === "F") {
      lines.push(partial);
      partial = "";
    }
  }
  return lines;
}

async function until<T>(
  what: string,
  check: () => T | undefined | false,
  timeoutMs = 90_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function logHas(logPath: string, pattern: RegExp): string | undefined {
  return criLog(logPath).find((l) => pattern.test(l));
}

/** PIDs of live (not zombie) QEMU processes. */
function liveQemus(): number[] {
  return fs
    .readdirSync("/proc")
    .filter((p) => /^\d+$/.test(p))
    .filter((pid) => {
      try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
        return (
          stat.includes("(qemu-system-x86") &&
          (!/\) Z /.test(stat) || fs.readdirSync(`/proc/${pid}/task`).length > 1)
        );
      } catch {
        return false;
      }
    })
    .map(Number);
}

describe("a VM started by the launcher", { skip: noGuest, timeout: 240_000 }, () => {
  it("asks for DHCP on the pod tap with the CNI MAC, logs its console for kubelet, and is killed when it ignores the ACPI power button", async (t: TestContext) => {
    const pod = podNet();
    const dir = tempDir();
    const tap = openTap(pod.nsPath, { name: "tap0" });
    try {
      plugTap(pod, "tap0");
      const dhcp = await openBoundUdpSocket(pod.nsPath, { device: "br0", port: 67 });
      try {
        const discover = dhcpDiscoverFrom(dhcp, MAC);
        const spec = vmSpec(dir, tap.fd);
        const t0 = Date.now();
        const vm = await new QemuLauncher().start(spec);
        const started = Date.now() - t0;
        await discover;
        const discoverAt = Date.now() - t0;
        t.diagnostic(
          `start() ${started} ms; first DHCPDISCOVER on the tap ${discoverAt} ms after start()`,
        );

        // The guest reports the NIC it sees: the CNI MAC, and the pod MTU through host_mtu.
        const nic = await until("the guest's NIC report", () =>
          logHas(spec.logPath, /^VMLET-GUEST nic /),
        );
        assert.match(nic, new RegExp(`mac="${MAC}" mtu="${MTU}"`));

        const stats = await vm.stats();
        assert.ok(stats.cpuNanos > 0n, `CPU ${stats.cpuNanos}`);
        assert.ok(stats.memoryBytes > 16 * 1024 * 1024, `RSS ${stats.memoryBytes}`);

        // A guest that ignores the power button (its acpid stopped) is killed once the
        // timeout has passed.
        await until("the guest ready", () => logHas(spec.logPath, /^VMLET-GUEST ready$/));
        const console = net.createConnection(vm.record.consoleSocket);
        console.on("data", () => {}); // a connected reader must drain, or the guest stalls
        await new Promise((resolve) => console.once("connect", resolve));
        console.write("acpi-off\n");
        await until("acpid stopped", () => logHas(spec.logPath, /^VMLET-GUEST ok cmd="acpi-off"/));
        console.destroy();
        const t1 = Date.now();
        await vm.stop(3000);
        const exit = await vm.exited;
        const stopMs = Date.now() - t1;
        t.diagnostic(`stop(3000) returned after ${stopMs} ms: ${JSON.stringify(exit)}`);
        assert.equal(exit.exitCode, 137);
        assert.equal(exit.reason, "Killed");
        assert.ok(stopMs >= 3000 && stopMs < 8000, `${stopMs} ms`);
        assert.ok(!(await isSameLiveProcess(vm.pid, vm.record.pidStartTime)));

        assert.equal(
          await new QemuLauncher().adopt(vm.record),
          undefined,
          "a VM that is gone is not adopted",
        );
        await vm.cleanup();
        assert.ok(
          !fs.existsSync(dir),
          `state dir removed: ${fs.existsSync(dir) ? fs.readdirSync(dir) : ""}`,
        );
        assert.ok(fs.existsSync(spec.logPath), "the CRI log is kubelet's and stays");
        assert.deepEqual(liveQemus(), []);
      } finally {
        dhcp.close();
      }
    } finally {
      fs.closeSync(tap.fd);
      pod.remove();
      fs.rmSync(path.dirname(dir), { recursive: true, force: true });
    }
  });

  it("outlives a vmlet killed with SIGKILL: adopted by a new launcher, its console still logged once, and its guest's power-off is a Completed exit", async (t: TestContext) => {
    const pod = podNet();
    const dir = tempDir();
    try {
      // "vmlet": a separate process that opens the tap, starts the VM, and is killed.
      const script = `
        const { QemuLauncher } = require(${JSON.stringify(require.resolve("../../src/runtime/vm/qemu-launcher"))});
        const { openTap } = require(${JSON.stringify(require.resolve("../../src/sys/tap"))});
        (async () => {
          const { nsPath, spec } = JSON.parse(process.argv[1]);
          spec.taps[0].fd = openTap(nsPath, { name: "tap0" }).fd;
          const vm = await new QemuLauncher().start(spec);
          process.stdout.write(JSON.stringify(vm.record) + "\\n");
          setInterval(() => {}, 1000);
        })().catch((e) => { console.error(e); process.exit(1); });`;
      const spec = vmSpec(dir, -1);
      const vmlet = spawn(
        process.execPath,
        ["-e", script, JSON.stringify({ nsPath: pod.nsPath, spec })],
        {
          stdio: ["ignore", "pipe", "inherit"],
        },
      );
      const gone = new Promise((resolve) => vmlet.once("exit", resolve));
      let out = "";
      vmlet.stdout!.on("data", (d) => {
        out += d;
      });
      const record = JSON.parse(
        await until("the record", () => out.includes("\n") && out, 30_000),
      ) as VmRecord;
      await until("the guest ready", () => logHas(spec.logPath, /^VMLET-GUEST ready$/));
      vmlet.kill("SIGKILL");
      await gone;

      assert.ok(await isSameLiveProcess(record.pid, record.pidStartTime), "QEMU outlived vmlet");
      assert.ok(
        linksIn(pod.ns).some((l) => l.ifname === "tap0"),
        "QEMU holds the tap open",
      );

      const vm = await new QemuLauncher().adopt(record);
      assert.ok(vm, "adopted");
      assert.equal(vm.pid, record.pid);

      // The console's input is the socket; the adopter's tailer logs what the guest prints.
      const console = net.createConnection(record.consoleSocket);
      console.on("data", () => {}); // a connected reader must drain, or the guest's output stalls
      await new Promise((resolve) => console.once("connect", resolve));
      console.write("run 7 echo adopted-$((40 + 2))\n");
      await until("the command's output", () => logHas(spec.logPath, /^adopted-42$/));
      assert.equal(
        criLog(spec.logPath).filter((l) => l === "VMLET-GUEST ready").length,
        1,
        "logged once",
      );

      const stats = await vm.stats();
      assert.ok(stats.cpuNanos > 0n && stats.memoryBytes > 0);

      const t0 = Date.now();
      console.write("poweroff\n");
      const exit = await vm.exited;
      t.diagnostic(`guest power-off to exit ${Date.now() - t0} ms: ${JSON.stringify(exit)}`);
      console.destroy();
      assert.equal(exit.exitCode, 0);
      assert.equal(exit.reason, "Completed");
      assert.ok(
        logHas(spec.logPath, /^VMLET-GUEST ok cmd="poweroff"$/),
        "console drained before the exit",
      );

      await vm.cleanup();
      assert.ok(!fs.existsSync(dir));
      assert.deepEqual(liveQemus(), []);
      await until(
        "the tap closed with QEMU",
        () => !linksIn(pod.ns).some((l) => l.ifname === "tap0"),
        5000,
      );
    } finally {
      pod.remove();
      fs.rmSync(path.dirname(dir), { recursive: true, force: true });
    }
  });

  it("ends with exit 0 Completed when its guest powers off, and keeps logging to a rotated log after reopenLog", async (t: TestContext) => {
    const pod = podNet();
    const dir = tempDir();
    const tap = openTap(pod.nsPath, { name: "tap0" });
    try {
      plugTap(pod, "tap0");
      const spec = vmSpec(dir, tap.fd);
      const t0 = Date.now();
      const vm = await new QemuLauncher().start(spec);
      await until("the guest ready", () => logHas(spec.logPath, /^VMLET-GUEST ready$/));
      t.diagnostic(`start() to the guest's "ready" line: ${Date.now() - t0} ms`);

      // kubelet's rotation: rename the file, then ReopenContainerLog.
      fs.renameSync(spec.logPath, `${spec.logPath}.1`);
      await vm.reopenLog();
      const console = net.createConnection(vm.record.consoleSocket);
      console.on("data", () => {});
      await new Promise((resolve) => console.once("connect", resolve));
      console.write("run 1 echo after-rotation\n");
      await until("output in the new log", () => logHas(spec.logPath, /^after-rotation$/));
      assert.ok(!criLog(`${spec.logPath}.1`).includes("after-rotation"));

      console.write("poweroff\n");
      const exit = await vm.exited;
      console.destroy();
      assert.deepEqual(
        [exit.exitCode, exit.reason, exit.message],
        [0, "Completed", "the guest shut down"],
      );
      await vm.cleanup();
      assert.ok(!fs.existsSync(dir));
      assert.deepEqual(liveQemus(), []);
    } finally {
      fs.closeSync(tap.fd);
      pod.remove();
      fs.rmSync(path.dirname(dir), { recursive: true, force: true });
    }
  });

  it("reports a guest that powered off while no vmlet watched as Completed when adopted later", async () => {
    const pod = podNet();
    const dir = tempDir();
    const tap = openTap(pod.nsPath, { name: "tap0" });
    try {
      plugTap(pod, "tap0");
      const spec = vmSpec(dir, tap.fd);
      const vm = await new QemuLauncher().start(spec);
      await until("the guest ready", () => logHas(spec.logPath, /^VMLET-GUEST ready$/));
      await vm.detach(); // vmlet goes away

      const console = net.createConnection(vm.record.consoleSocket);
      console.on("data", () => {});
      await new Promise((resolve) => console.once("connect", resolve));
      console.write("poweroff\n");
      // -no-shutdown: QEMU stays, stopped, until a vmlet sees the shutdown.
      await until("the power-off printed", () =>
        fs.readFileSync(vm.record.consoleRaw, "utf8").includes('cmd="poweroff"'),
      );
      await new Promise((r) => setTimeout(r, 500));
      console.destroy();
      assert.ok(await isSameLiveProcess(vm.pid, vm.record.pidStartTime), "QEMU waits for vmlet");

      const adopted = await new QemuLauncher().adopt(vm.record);
      assert.ok(adopted);
      const exit = await adopted.exited;
      assert.deepEqual([exit.exitCode, exit.reason], [0, "Completed"]);
      assert.ok(logHas(spec.logPath, /^VMLET-GUEST ok cmd="poweroff"$/), "logged by the adopter");
      await adopted.cleanup();
      assert.ok(!fs.existsSync(dir));
    } finally {
      fs.closeSync(tap.fd);
      pod.remove();
      fs.rmSync(path.dirname(dir), { recursive: true, force: true });
    }
  });
});
