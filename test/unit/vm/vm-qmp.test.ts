import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { QmpError } from "../../../src/runtime/vm/errors";
import { QmpClient, type QmpEvent } from "../../../src/runtime/vm/qmp";

/** A real QEMU with no machine: only its QMP monitor, on a socket in a temp dir. */
async function withQemu(
  fn: (socket: string, exit: Promise<number | null>, pid: number) => Promise<void>,
) {
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
    await fn(socket, exit, qemu.pid!);
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

describe("the QMP client's deadlines", () => {
  it("fails a command a stopped QEMU never answers once its deadline passes", {
    timeout: 20_000,
  }, async () => {
    await withQemu(async (socket, _exit, pid) => {
      const qmp = await QmpClient.connect(socket, { commandTimeoutMs: 300 });
      process.kill(pid, "SIGSTOP"); // a wedged QEMU: the socket stays open, nothing answers
      try {
        const started = Date.now();
        await assert.rejects(qmp.execute("query-status"), (error: unknown) => {
          assert.ok(error instanceof QmpError);
          assert.match(error.message, /query-status: no answer within 300 ms/);
          return true;
        });
        assert.ok(Date.now() - started < 1500, `took ${Date.now() - started} ms`);
        // A per-call deadline overrides the client's.
        const t0 = Date.now();
        await assert.rejects(qmp.execute("query-status", undefined, 100), /within 100 ms/);
        assert.ok(Date.now() - t0 < 1000);
      } finally {
        process.kill(pid, "SIGCONT");
        qmp.close();
      }
    });
  });

  it("gives up connecting to a stopped QEMU within its deadline, naming the socket", {
    timeout: 20_000,
  }, async () => {
    await withQemu(async (socket, _exit, pid) => {
      process.kill(pid, "SIGSTOP");
      try {
        const started = Date.now();
        await assert.rejects(
          QmpClient.connect(socket, { timeoutMs: 300 }),
          new RegExp(`QMP ${socket}: .*within 300 ms`),
        );
        assert.ok(Date.now() - started < 1500);
      } finally {
        process.kill(pid, "SIGCONT");
      }
    });
  });

  // A fake monitor: a real QEMU greets and then answers qmp_capabilities, and cannot be
  // made to stop between the two on demand.
  it("gives up connecting when the monitor greets but never answers qmp_capabilities", {
    timeout: 20_000,
  }, async () => {
    await withFakeMonitor(
      () => {},
      async (socket) => {
        const started = Date.now();
        await assert.rejects(
          QmpClient.connect(socket, { timeoutMs: 300 }),
          /qmp_capabilities: no answer within/,
        );
        assert.ok(Date.now() - started < 1500);
      },
    );
  });
});

/**
 * A fake QMP monitor on a unix socket: it greets, answers qmp_capabilities, and hands
 * every other command to `onCommand`. It stands in for a broken or compromised QEMU,
 * whose bytes a real QEMU cannot be made to send.
 */
async function withFakeMonitor(
  onCommand: (command: { execute: string; id?: unknown }, reply: (text: string) => void) => void,
  fn: (socket: string) => Promise<void>,
  options: { answerCapabilities?: boolean } = {},
): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vm-qmp-fake-"));
  const socket = path.join(dir, "qmp.sock");
  const server = net.createServer((conn) => {
    conn.write('{"QMP": {"version": {}, "capabilities": []}}\n');
    let buffer = "";
    conn.on("data", (chunk) => {
      buffer += chunk.toString();
      for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
        const command = JSON.parse(buffer.slice(0, nl)) as { execute: string; id?: unknown };
        buffer = buffer.slice(nl + 1);
        if (command.execute === "qmp_capabilities") {
          if (options.answerCapabilities)
            conn.write(`${JSON.stringify({ return: {}, id: command.id })}\n`);
          continue;
        }
        onCommand(command, (text) => conn.write(text));
      }
    });
    conn.on("error", () => {});
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  try {
    await fn(socket);
  } finally {
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe("the QMP client, against a monitor that sends what QEMU never would", () => {
  it("drops and counts null, numbers, arrays, strings, garbage and over-long lines, and still answers", {
    timeout: 20_000,
  }, async () => {
    const bad = [
      "null",
      "42",
      "[1,2]",
      '"text"',
      "{not json",
      '{"event": 7}',
      '{"error": null, "id": "nobody"}',
      `{"pad": "${"x".repeat(2 << 20)}"}`, // longer than any line QEMU sends
    ];
    await withFakeMonitor(
      (command, reply) => {
        if (command.execute !== "query-status") return;
        reply(`${bad.join("\n")}\n`);
        reply(`${JSON.stringify({ return: { status: "running" }, id: command.id })}\n`);
      },
      async (socket) => {
        const qmp = await QmpClient.connect(socket);
        try {
          const status = await qmp.execute<{ status: string }>("query-status");
          assert.equal(status.status, "running");
          assert.equal(qmp.malformed, bad.length);
          assert.equal(qmp.closed, false);
        } finally {
          qmp.close();
        }
      },
      { answerCapabilities: true },
    );
  });

  it("rejects a command whose error is not an object, without throwing from the socket", {
    timeout: 20_000,
  }, async () => {
    await withFakeMonitor(
      (command, reply) => reply(`${JSON.stringify({ error: null, id: command.id })}\n`),
      async (socket) => {
        const qmp = await QmpClient.connect(socket);
        try {
          await assert.rejects(qmp.execute("query-status"), /query-status: error/);
        } finally {
          qmp.close();
        }
      },
      { answerCapabilities: true },
    );
  });
});
