import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { VmError } from "../../src/runtime/vm/errors";
import { QemuLauncher } from "../../src/runtime/vm/qemu-launcher";
import type { VmSpec } from "../../src/runtime/vm/types";
import { removeVmState } from "../../src/runtime/vm/vm-files";
import { requirePrivateNamespace } from "../harness/fixtures";

requirePrivateNamespace();

function withDir(fn: (root: string) => Promise<void>) {
  return async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "vm-err-"));
    try {
      await fn(root);
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  };
}

function spec(root: string, overrides: Partial<VmSpec> = {}): VmSpec {
  const base = path.join(root, "base.raw");
  if (!fs.existsSync(base)) execFileSync("qemu-img", ["create", "-q", "-f", "raw", base, "1M"]);
  return {
    id: "c1",
    dir: path.join(root, "c1"),
    baseImage: { path: base, format: "raw" },
    vcpus: 1,
    memoryMiB: 64,
    accel: "tcg",
    taps: [],
    cloudInit: { instanceId: "c1", hostname: "pod", files: [] },
    logPath: path.join(root, "logs", "c1.log"),
    ...overrides,
  };
}

function qemuPids(): number[] {
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

describe("a VM that cannot start", () => {
  it(
    "fails at the overlay for a missing base image, naming the VM, the step and the file, and leaves nothing",
    withDir(async (root) => {
      const s = spec(root, {
        baseImage: { path: path.join(root, "missing.qcow2"), format: "qcow2" },
      });
      await assert.rejects(new QemuLauncher().start(s), (error: unknown) => {
        assert.ok(error instanceof VmError);
        assert.match(
          error.message,
          /^vm c1: create overlay: qemu-img create .*root\.qcow2 on .*missing\.qcow2: /,
        );
        assert.match(error.message, /removed its files/);
        return true;
      });
      assert.ok(!fs.existsSync(s.dir));
    }),
  );

  it(
    "reports QEMU's own error when it refuses a NIC fd that is not a tap, and leaves no process or file",
    withDir(async (root) => {
      const fd = fs.openSync("/dev/null", "r");
      try {
        const s = spec(root, {
          taps: [{ ifname: "eth0", tap: "tap0", fd, guestMac: "02:00:00:00:00:01", mtu: 1500 }],
        });
        await assert.rejects(new QemuLauncher().start(s), (error: unknown) => {
          assert.ok(error instanceof VmError);
          assert.match(
            error.message,
            /^vm c1: wait for QMP: QEMU exited \(code 1\): .*-netdev tap,id=net0,fd=3: .*TUNGETIFF.*; removed its files$/,
          );
          return true;
        });
        assert.ok(!fs.existsSync(s.dir));
        assert.deepEqual(qemuPids(), []);
      } finally {
        fs.closeSync(fd);
      }
    }),
  );

  it(
    "says so when the QEMU binary does not exist",
    withDir(async (root) => {
      const s = spec(root);
      await assert.rejects(
        new QemuLauncher({ qemuBinary: "/nonexistent/qemu" }).start(s),
        // QEMU is started through prlimit (core limit 0), which says it cannot run it.
        /^VmError: vm c1: wait for QMP: QEMU exited \(code 127\): prlimit: failed to execute \/nonexistent\/qemu: No such file or directory/,
      );
      assert.ok(!fs.existsSync(s.dir));
    }),
  );

  it(
    "names the QEMU user when it does not exist, and leaves nothing",
    withDir(async (root) => {
      const s = spec(root);
      await assert.rejects(
        new QemuLauncher({ confinement: { user: "vmlet-no-such-user" } }).start(s),
        /^VmError: vm c1: wait for QMP: QEMU exited \(code 1\): qemu-system-x86_64: -runas vmlet-no-such-user: User "vmlet-no-such-user" doesn't exist.*; removed its files$/,
      );
      assert.ok(!fs.existsSync(s.dir));
      assert.deepEqual(qemuPids(), []);
    }),
  );

  it(
    "kills the QEMU of an earlier start that never returned (found by its pidfile) before starting again",
    withDir(async (root) => {
      const s = spec(root);
      const launcher = new QemuLauncher();
      const first = await launcher.start(s);
      // As if vmlet died inside start(): the handle and record are lost, the files stay.
      await first.detach();
      const second = await launcher.start(s);
      try {
        assert.notEqual(second.pid, first.pid);
        assert.deepEqual(qemuPids(), [second.pid]);
      } finally {
        await second.cleanup();
      }
      assert.deepEqual(qemuPids(), []);
    }),
  );
});

describe("an adopted VM whose QEMU ends without a guest shutdown", () => {
  it(
    "exits 137 Killed, saying its status is unknown, when killed by someone else",
    withDir(async (root) => {
      const s = spec(root);
      const first = await new QemuLauncher().start(s);
      await first.detach();
      const vm = await new QemuLauncher({ pollMs: 100 }).adopt(first.record);
      assert.ok(vm);
      const stats = await vm.stats();
      assert.ok(stats.memoryBytes > 0);
      process.kill(vm.pid, "SIGKILL"); // not vmlet
      const exit = await vm.exited;
      assert.equal(exit.exitCode, 137);
      assert.equal(exit.reason, "Killed");
      assert.match(exit.message, /without a guest shutdown.*exit status is unknown/);
      const gone = await vm.stats();
      assert.deepEqual([gone.cpuNanos, gone.memoryBytes], [0n, 0], "no process, no CPU or RSS");
      assert.ok(gone.diskBytes > 0, "its overlay takes disk until cleanup()");
      await vm.cleanup();
      assert.ok(!fs.existsSync(s.dir));
    }),
  );
});

describe("a wedged QEMU (stopped with SIGSTOP: its QMP socket takes connections, nothing answers)", () => {
  it(
    "is killed by stop() within the grace period plus a second: the grace period starts at once",
    { timeout: 60_000 },
    withDir(async (root) => {
      const vm = await new QemuLauncher().start(spec(root));
      process.kill(vm.pid, "SIGSTOP");
      const started = Date.now();
      await vm.stop(1000);
      const took = Date.now() - started;
      const exit = await vm.exited;
      assert.ok(took < 2000, `stop took ${took} ms`);
      assert.equal(exit.reason, "Killed");
      assert.deepEqual(qemuPids(), []);
      await vm.cleanup();
    }),
  );

  it(
    "is not adopted past the deadline, and killRecorded() kills it by its pid",
    { timeout: 60_000 },
    withDir(async (root) => {
      const first = await new QemuLauncher().start(spec(root));
      await first.detach();
      process.kill(first.pid, "SIGSTOP");
      const launcher = new QemuLauncher({ qmpTimeoutMs: 300, adoptTimeoutMs: 1000 });
      const started = Date.now();
      await assert.rejects(launcher.adopt(first.record), /^VmError: vm c1: adopt.*within 300 ms/);
      assert.ok(Date.now() - started < 1500, `adopt took ${Date.now() - started} ms`);
      assert.deepEqual(qemuPids(), [first.pid], "not adopted is not killed");
      assert.equal(await launcher.killRecorded(first.record), true);
      assert.deepEqual(qemuPids(), []);
      assert.equal(await launcher.killRecorded(first.record), false, "gone: nothing to kill");
      await removeVmState(first.record);
    }),
  );
});

describe("QEMU's confinement", () => {
  /** Uid, seccomp mode and core limit of a running QEMU. */
  function confinementOf(pid: number): { uid: number; seccomp: number; core: string } {
    const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    const limits = fs.readFileSync(`/proc/${pid}/limits`, "utf8");
    return {
      uid: Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]),
      seccomp: Number(/^Seccomp:\s+(\d+)/m.exec(status)?.[1]),
      core: /^Max core file size\s+(\S+)/m.exec(limits)?.[1] ?? "",
    };
  }

  it(
    "by default: the vmlet-qemu user, a seccomp filter, core limit 0; off (debugging): root, unfiltered, vmlet's own core limit",
    withDir(async (root) => {
      const qemuUid = Number(execFileSync("id", ["-u", "vmlet-qemu"], { encoding: "utf8" }));
      const confined = await new QemuLauncher().start(spec(root));
      try {
        assert.deepEqual(confinementOf(confined.pid), { uid: qemuUid, seccomp: 2, core: "0" });
      } finally {
        await confined.cleanup();
      }
      const relaxed = await new QemuLauncher({ confinement: null }).start(
        spec(root, { id: "c2", dir: path.join(root, "c2") }),
      );
      try {
        const ownCore = /^Max core file size\s+(\S+)/m.exec(
          fs.readFileSync("/proc/self/limits", "utf8"),
        )?.[1];
        assert.deepEqual(confinementOf(relaxed.pid), { uid: 0, seccomp: 0, core: ownCore });
      } finally {
        await relaxed.cleanup();
      }
      assert.deepEqual(qemuPids(), []);
    }),
  );
});
