// The guest agent client against Debian's real qemu-ga, run here on a unix socket
// (`-m unix-listen`) instead of a VM's virtio-serial port: the protocol is the same, and
// the VM path is covered by the end-to-end CRI test. Plus agents that never answer or
// answer garbage, as a hung or hostile guest would.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import {
  GuestAgentCommandError,
  GuestAgentProtocolError,
  GuestAgentUnavailableError,
  GuestExecTimeoutError,
  guestExec,
} from "../../src/runtime/vm/guest-agent";
import { requirePrivateNamespace } from "../harness/fixtures";

requirePrivateNamespace();

async function waitForSocket(file: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!fs.existsSync(file)) {
    assert.ok(Date.now() < deadline, `no socket at ${file}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("guest agent client, against qemu-ga", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "qga-"));
  const socket = path.join(dir, "qga.sock");
  let agent: ChildProcess;

  before(async () => {
    agent = spawn(
      "qemu-ga",
      ["-m", "unix-listen", "-p", socket, "-t", dir, "-f", path.join(dir, "qga.pid")],
      { stdio: "inherit" },
    );
    await waitForSocket(socket);
  });

  after(() => {
    agent.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("runs a command: exit code, stdout and stderr as bytes", async () => {
    const r = await guestExec(socket, ["sh", "-c", "printf 'out\\0put'; echo err >&2; exit 3"], {
      timeoutMs: 10_000,
    });
    assert.equal(r.exitCode, 3);
    assert.deepEqual(r.stdout, Buffer.from("out\0put"));
    assert.equal(r.stderr.toString(), "err\n");
  });

  it("takes calls one at a time on the one channel, each with its own answer", async () => {
    const results = await Promise.all(
      [1, 2, 3, 4].map((n) => guestExec(socket, ["sh", "-c", `echo ${n}`], { timeoutMs: 10_000 })),
    );
    assert.deepEqual(
      results.map((r) => r.stdout.toString()),
      ["1\n", "2\n", "3\n", "4\n"],
    );
  });

  it("a program that is not there: the agent's error, named", async () => {
    await assert.rejects(
      guestExec(socket, ["/no/such/program"], { timeoutMs: 10_000 }),
      (error: unknown) =>
        error instanceof GuestAgentCommandError &&
        error.command === "guest-exec" &&
        /no\/such\/program|No such file/.test(error.message),
    );
  });

  it("a command past its limit: a timeout error, and the channel still works after", async () => {
    const t0 = Date.now();
    await assert.rejects(
      guestExec(socket, ["sleep", "5"], { timeoutMs: 300 }),
      GuestExecTimeoutError,
    );
    assert.ok(Date.now() - t0 < 3000);
    const r = await guestExec(socket, ["true"], { timeoutMs: 10_000 });
    assert.equal(r.exitCode, 0);
  });
});

describe("guest agent client, without a working agent", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "qga-bad-"));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** A socket that accepts, as QEMU's chardev does, and then does `behave`. */
  async function fakeChannel(name: string, behave: (c: net.Socket) => void): Promise<net.Server> {
    const server = net.createServer(behave);
    await new Promise<void>((resolve) => server.listen(path.join(dir, name), resolve));
    return server;
  }

  it("no socket: unavailable, naming it", async () => {
    await assert.rejects(
      guestExec(path.join(dir, "missing.sock"), ["true"], { timeoutMs: 1000 }),
      (e: unknown) => e instanceof GuestAgentUnavailableError && /missing\.sock/.test(e.message),
    );
  });

  it("a guest with no agent (nothing reads the port): unavailable after the agent timeout", async () => {
    const server = await fakeChannel("silent.sock", () => {});
    try {
      const t0 = Date.now();
      await assert.rejects(
        guestExec(path.join(dir, "silent.sock"), ["true"], { timeoutMs: 0, agentTimeoutMs: 300 }),
        (e: unknown) =>
          e instanceof GuestAgentUnavailableError && /qemu-guest-agent/.test(e.message),
      );
      assert.ok(Date.now() - t0 < 3000);
    } finally {
      server.close();
    }
  });

  it("a hostile agent: junk before the sync is skipped, a reply that is not JSON is refused", async () => {
    const server = await fakeChannel("hostile.sock", (c) => {
      c.on("data", (d) => {
        const request = JSON.parse(d.toString().trim()) as {
          execute: string;
          arguments: { id?: number };
        };
        if (request.execute === "guest-sync-delimited") {
          c.write(Buffer.concat([Buffer.from("junk {\n"), Buffer.from([0xff])]));
          c.write(`{"return": ${request.arguments.id}}\n`);
        } else {
          c.write("this is not json\n");
        }
      });
    });
    try {
      await assert.rejects(
        guestExec(path.join(dir, "hostile.sock"), ["true"], { timeoutMs: 1000 }),
        (e: unknown) => e instanceof GuestAgentProtocolError && /not JSON/.test(e.message),
      );
    } finally {
      server.close();
    }
  });

  it("a flood without a newline is cut off, not buffered without end", async () => {
    const server = await fakeChannel("flood.sock", (c) => {
      c.on("data", (d) => {
        const request = JSON.parse(d.toString().trim()) as { arguments: { id?: number } };
        if (request.arguments.id !== undefined) {
          c.write(Buffer.from([0xff]));
          c.write(`{"return": ${request.arguments.id}}\n`);
          return;
        }
        const chunk = Buffer.alloc(1024 * 1024, 0x61);
        const pump = () => {
          while (!c.destroyed && c.write(chunk)) {}
          if (!c.destroyed) c.once("drain", pump);
        };
        pump();
      });
      c.on("error", () => {});
    });
    try {
      await assert.rejects(
        guestExec(path.join(dir, "flood.sock"), ["true"], { timeoutMs: 10_000 }),
        (e: unknown) => e instanceof Error && /over \d+ bytes/.test(e.message),
      );
    } finally {
      server.close();
    }
  });
});
