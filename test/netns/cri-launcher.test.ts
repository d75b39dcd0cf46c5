// The QEMU of a start that a vmlet crash cut short is found by its VM dir's pidfile and
// killed; a pid that now belongs to another process is left alone.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { vmPaths } from "../../src/runtime/vm";
import { killQemuOfDir } from "../../src/runtime/vm/vm-files";
import { requirePrivateNamespace } from "../harness/fixtures";

function alive(pid: number): boolean {
  const stat = (() => {
    try {
      return fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    } catch {
      return "";
    }
  })();
  return stat !== "" && !stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
}

describe("discarding an interrupted start", () => {
  test("the dir's QEMU (by pidfile and QMP socket) is killed; a stranger with a reused pid is not", async () => {
    requirePrivateNamespace();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmdir-"));
    const paths = vmPaths(dir);
    // A stand-in QEMU: its command line names the dir's QMP socket, as QEMU's does.
    const fake = spawn("sh", ["-c", "sleep 1000; true", "qemu", `socket,path=${paths.qmpSocket}`], {
      stdio: "ignore",
    });
    const stranger = spawn("sh", ["-c", "sleep 1000; true"], { stdio: "ignore" });
    try {
      fs.writeFileSync(paths.pidFile, `${stranger.pid}\n`);
      assert.equal(await killQemuOfDir(dir), false);
      assert.ok(alive(stranger.pid ?? 0), "a process that is not this dir's QEMU lives");
      fs.writeFileSync(paths.pidFile, `${fake.pid}\n`);
      assert.equal(await killQemuOfDir(dir), true);
      assert.ok(!alive(fake.pid ?? 0), "the dir's QEMU is gone");
      fs.rmSync(paths.pidFile);
      assert.equal(await killQemuOfDir(dir), false, "no pidfile, nothing to do");
    } finally {
      fake.kill("SIGKILL");
      stranger.kill("SIGKILL");
    }
  });
});
