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
import { status } from "@grpc/grpc-js";
import {
  GuestAgentCommandError,
  GuestAgentProtocolError,
  GuestAgentUnavailableError,
  GuestExecCancelledError,
  GuestExecTimeoutError,
  guestExec,
} from "../../src/runtime/vm/guest-agent";
import { requirePrivateNamespace } from "../harness/fixtures";
import { fakeQcow2 } from "../harness/qcow2";
import { podConfig, startTestVmlet } from "../harness/test-vmlet";

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

  it("a call its caller cancels ends at once, whatever its timeout, and frees the channel", {
    timeout: 30_000,
  }, async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error("the CRI call was cancelled")), 300);
    const t0 = Date.now();
    await assert.rejects(
      guestExec(socket, ["sleep", "30"], { timeoutMs: 0, signal: controller.signal }),
      (e: unknown) =>
        e instanceof GuestExecCancelledError && /the CRI call was cancelled/.test(e.message),
    );
    assert.ok(Date.now() - t0 < 1500, `took ${Date.now() - t0} ms`);
    const t1 = Date.now();
    const r = await guestExec(socket, ["true"], { timeoutMs: 10_000 });
    assert.equal(r.exitCode, 0);
    assert.ok(Date.now() - t1 < 2000, "the next call is not held behind the cancelled one");
    const already = AbortSignal.abort();
    await assert.rejects(
      guestExec(socket, ["true"], { timeoutMs: 0, signal: already }),
      GuestExecCancelledError,
    );
  });

  it("calls cancelled mid-poll hang up cleanly: qemu-ga, which quits on a reset socket, keeps running", {
    timeout: 30_000,
  }, async () => {
    // Polling without a pause, so most cancels land with a status reply still in flight.
    for (let i = 0; i < 12; i++) {
      await assert.rejects(
        guestExec(socket, ["sleep", "30"], {
          timeoutMs: 0,
          pollMs: 0,
          signal: AbortSignal.timeout(40 + 7 * i),
        }),
        GuestExecCancelledError,
      );
      assert.equal(agent.exitCode, null, `qemu-ga exited after cancel ${i + 1}`);
    }
    const r = await guestExec(socket, ["echo", "still here"], { timeoutMs: 10_000 });
    assert.equal(r.stdout.toString(), "still here\n");
    assert.equal(agent.exitCode, null);
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

  it("replies of the wrong shape (null, numbers, arrays, strings) are refused as protocol errors, never thrown elsewhere", async () => {
    const replies = [
      "null",
      "42",
      "[1]",
      '"text"',
      '{"return": null}',
      '{"return": [1]}',
      '{"return": {"pid": "1"}}',
    ];
    let next = 0;
    const server = await fakeChannel("shapes.sock", (c) => {
      c.on("data", (d) => {
        for (const text of d.toString().split("\n").filter(Boolean)) {
          const request = JSON.parse(text) as { execute: string; arguments: { id?: number } };
          if (request.execute === "guest-sync-delimited") {
            c.write(Buffer.from([0xff]));
            c.write(`{"return": ${request.arguments.id}}\n`);
          } else {
            c.write(`${replies[next++]}\n`);
          }
        }
      });
      c.on("error", () => {});
    });
    try {
      for (const reply of replies) {
        await assert.rejects(
          guestExec(path.join(dir, "shapes.sock"), ["true"], { timeoutMs: 1000 }),
          (e: unknown) => e instanceof GuestAgentProtocolError,
          `reply ${reply}`,
        );
      }
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

describe("ExecSync through the CRI socket, on qemu-ga", () => {
  it("timeout 0 lasts the call's deadline, and a cancelled call frees the agent for the next", {
    timeout: 60_000,
  }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "qga-cri-"));
    const socket = path.join(dir, "qga.sock");
    const agent = spawn(
      "qemu-ga",
      ["-m", "unix-listen", "-p", socket, "-t", dir, "-f", path.join(dir, "qga.pid")],
      { stdio: "inherit" },
    );
    const t = await startTestVmlet();
    try {
      await waitForSocket(socket);
      // The stand-in VM's ExecSync goes to this qemu-ga, as a VM's goes to its guest's.
      t.launcher.agentSocket = socket;
      const http = await import("node:http");
      const server = http.createServer((_req, res) => res.end(fakeQcow2({ size: 8192 })));
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const port = (server.address() as { port: number }).port;
      t.rules.push({ name: "vmlet.io/qga:latest", url: `http://127.0.0.1:${port}/` });
      const r = t.client.runtime;
      const { imageRef } = await t.client.image.PullImage({ image: { image: "vmlet.io/qga" } });
      server.close();
      const { podSandboxId } = await r.RunPodSandbox({ config: podConfig("qga") });
      const { containerId } = await r.CreateContainer({
        podSandboxId,
        config: { metadata: { name: "c" }, image: { image: imageRef } },
      });
      await r.StartContainer({ containerId });

      const t0 = Date.now();
      await assert.rejects(
        r.ExecSync({ containerId, cmd: ["sleep", "30"], timeout: 0 }, { deadlineMs: 1000 }),
        (e: { code?: number }) => e.code === status.DEADLINE_EXCEEDED,
      );
      assert.ok(Date.now() - t0 < 2000);
      const t1 = Date.now();
      const done = await r.ExecSync(
        { containerId, cmd: ["echo", "next"], timeout: 5 },
        { deadlineMs: 5000 },
      );
      assert.equal(done.stdout.toString(), "next\n");
      assert.ok(Date.now() - t1 < 2000, `the next ExecSync took ${Date.now() - t1} ms`);
      await r.RemovePodSandbox({ podSandboxId });
    } finally {
      await t.close();
      agent.kill();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
