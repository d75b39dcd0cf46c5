import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { QmpError } from "../../src/runtime/vm/errors";
import { QmpClient, type QmpEvent } from "../../src/runtime/vm/qmp";

/** A real QEMU with no machine: only its QMP monitor, on a socket in a temp dir. */
async function withQemu(fn: (socket: string, exit: Promise<number | null>) => Promise<void>) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vm-qmp-"));
  const socket = path.join(dir, "qmp.sock");
  const qemu = spawn(
    "qemu-system-x86_64",
    ["-M", "none", "-display", "none", "-nodefaults", "-qmp", `unix:${socket},server=on,wait=off`],
    { stdio: "ignore" },
  );
  const exit = new Promise<number | null>((resolve) => qemu.once("exit", (code) => resolve(code)));
  try {
    for (let i = 0; i < 500 && !fs.existsSync(socket); i++)
      await new Promise((r) => setTimeout(r, 10));
    await fn(socket, exit);
  } finally {
    qemu.kill("SIGKILL");
    await exit;
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe("the QMP client, against a real QEMU", () => {
  it("negotiates capabilities and runs commands, matching replies to requests", async () => {
    await withQemu(async (socket) => {
      const qmp = await QmpClient.connect(socket);
      const [status, version, name] = await Promise.all([
        qmp.execute<{ status: string; running: boolean }>("query-status"),
        qmp.execute<{ qemu: { major: number } }>("query-version"),
        qmp.execute<Record<string, unknown>>("query-name"),
      ]);
      assert.equal(typeof status.running, "boolean");
      assert.ok(version.qemu.major >= 7);
      assert.deepEqual(name, {});
      qmp.close();
    });
  });

  it("rejects a failed command with QEMU's error class and description", async () => {
    await withQemu(async (socket) => {
      const qmp = await QmpClient.connect(socket);
      await assert.rejects(qmp.execute("no-such-command"), (error: unknown) => {
        assert.ok(error instanceof QmpError);
        assert.equal(error.errorClass, "CommandNotFound");
        assert.match(error.message, /no-such-command: .*has not been found/);
        return true;
      });
      qmp.close();
    });
  });

  it("delivers events (SHUTDOWN on quit) and reports the connection closing as QEMU exits", async () => {
    await withQemu(async (socket, exit) => {
      const qmp = await QmpClient.connect(socket);
      const events: QmpEvent[] = [];
      qmp.on("event", (e) => events.push(e));
      const closed = new Promise<void>((resolve) => qmp.once("close", () => resolve()));
      await qmp.execute("quit").catch(() => {});
      await closed;
      assert.equal(await exit, 0);
      const shutdown = events.find((e) => e.event === "SHUTDOWN");
      assert.ok(shutdown, `events: ${events.map((e) => e.event).join(",")}`);
      assert.equal(shutdown.data.guest, false);
      assert.equal(qmp.closed, true);
      await assert.rejects(qmp.execute("query-status"), /connection closed/);
    });
  });

  it("fails to connect with a message naming the socket when nothing listens", async () => {
    await assert.rejects(QmpClient.connect("/nonexistent/qmp.sock"), /QMP \/nonexistent\/qmp.sock/);
  });
});
