// The CRI side of streaming: what GetExec, GetAttach and GetPortForward accept, the URLs
// they hand out (single use, one minute, at most 1000 waiting), and what a connection to an
// expired or spent URL gets. The lookups are stand-ins; the VM path is streaming-vm.test.ts.
import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { CriError, failedPrecondition, notFound } from "../../../src/runtime/errors";
import { CriStreaming, parseAddress } from "../../../src/runtime/streaming/cri-calls";

const spdyUpgrade = (protocol: string) => ({
  Connection: "Upgrade",
  Upgrade: "SPDY/3.1",
  "X-Stream-Protocol-Version": protocol,
});

function upgradeStatus(
  url: string,
  headers: http.OutgoingHttpHeaders = spdyUpgrade("v4.channel.k8s.io"),
  method = "POST",
): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve(res.statusCode ?? 0);
    });
    req.on("response", (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on("error", reject);
    req.end();
  });
}

describe("CRI streaming calls", () => {
  const now = { t: 1_000_000 };
  const streaming = new CriStreaming({
    logger: pino({ level: "silent" }),
    lookups: {
      container: (id, call) => {
        if (id === "stopped") throw failedPrecondition(`${call} ${id}: container is exited`);
        if (id !== "c1") throw notFound(`${call}: container ${id} not found`);
        return { name: "default/p container c1", consoleSocket: "/nonexistent/console.sock" };
      },
      sandbox: (id, call) => {
        if (id !== "p1") throw notFound(`${call}: pod sandbox ${id} not found`);
        return { name: "default/p", ip: "127.0.0.1" };
      },
    },
    server: { tokens: { ttlMs: 60_000, maxInFlight: 5, now: () => now.t } },
  });
  const code = (fn: () => unknown) => {
    try {
      fn();
      return "OK";
    } catch (e) {
      return e instanceof CriError ? `${e.code}: ${e.message}` : String(e);
    }
  };
  const io = { stdin: false, stdout: true, stderr: false, tty: false };

  before(() => streaming.start());
  after(() => streaming.stop());

  test("exec and attach need a container, stdin/stdout/stderr, and no stderr with a tty", () => {
    assert.match(
      code(() => streaming.getExec({ containerId: "", cmd: ["true"], ...io })),
      /^INVALID_ARGUMENT: Exec: container_id is required/,
    );
    assert.match(
      code(() =>
        streaming.getExec({ containerId: "c1", cmd: ["sh"], ...io, tty: true, stderr: true }),
      ),
      /^INVALID_ARGUMENT: Exec: tty and stderr/,
    );
    assert.match(
      code(() => streaming.getAttach({ containerId: "c1", ...io, stdout: false })),
      /^INVALID_ARGUMENT: Attach: one of stdin, stdout and stderr/,
    );
    assert.match(
      code(() => streaming.getExec({ containerId: "c1", cmd: [], ...io })),
      /^INVALID_ARGUMENT: Exec: cmd is empty/,
    );
    assert.match(
      code(() => streaming.getExec({ containerId: "nope", cmd: ["true"], ...io })),
      /^NOT_FOUND: Exec: container nope/,
    );
    assert.match(
      code(() => streaming.getAttach({ containerId: "stopped", ...io })),
      /^FAILED_PRECONDITION: Attach stopped: container is exited/,
    );
    assert.match(
      code(() => streaming.getPortForward({ podSandboxId: "", port: [80] })),
      /^INVALID_ARGUMENT: PortForward: pod_sandbox_id is required/,
    );
    assert.match(
      code(() => streaming.getPortForward({ podSandboxId: "p1", port: [70000] })),
      /^INVALID_ARGUMENT: PortForward: port 70000/,
    );
  });

  test("URLs are absolute, on loopback, one per kind", () => {
    const exec = streaming.getExec({ containerId: "c1", cmd: ["true"], ...io }).url;
    const attach = streaming.getAttach({ containerId: "c1", ...io }).url;
    const pf = streaming.getPortForward({ podSandboxId: "p1", port: [80] }).url;
    assert.match(exec, /^http:\/\/127\.0\.0\.1:\d+\/exec\/[A-Za-z0-9_-]{8}$/);
    assert.match(attach, /^http:\/\/127\.0\.0\.1:\d+\/attach\/[A-Za-z0-9_-]{8}$/);
    assert.match(pf, /^http:\/\/127\.0\.0\.1:\d+\/portforward\/[A-Za-z0-9_-]{8}$/);
  });

  test("an expired URL gets 404; a fresh one upgrades, once", async () => {
    const stale = streaming.getExec({ containerId: "c1", cmd: ["true"], ...io }).url;
    now.t += 61_000;
    assert.equal(await upgradeStatus(stale), 404);
    const fresh = streaming.getExec({ containerId: "c1", cmd: ["true"], ...io }).url;
    assert.equal(await upgradeStatus(fresh), 101);
    assert.equal(await upgradeStatus(fresh), 404);
  });

  test("a WebSocket handshake ws refuses (bad Sec-WebSocket-Key) gives its slot back", async () => {
    const urls = [
      streaming.getExec({ containerId: "c1", cmd: ["true"], ...io }).url,
      streaming.getPortForward({ podSandboxId: "p1", port: [80] }).url,
    ];
    for (const url of urls) {
      const status = await upgradeStatus(
        url,
        {
          Connection: "Upgrade",
          Upgrade: "websocket",
          "Sec-WebSocket-Version": "13",
          "Sec-WebSocket-Key": "not base64 of 16 bytes",
          "Sec-WebSocket-Protocol": "v4.channel.k8s.io",
        },
        "GET",
      );
      assert.equal(status, 400, url);
    }
    for (let i = 0; i < 100 && streaming.activeStreams > 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(streaming.activeStreams, 0, "no connection is counted as served");
  });

  test("too many URLs waiting: RESOURCE_EXHAUSTED until they are used or expire", async () => {
    now.t += 61_000;
    const urls = Array.from(
      { length: 5 },
      () => streaming.getPortForward({ podSandboxId: "p1", port: [] }).url,
    );
    assert.match(
      code(() => streaming.getPortForward({ podSandboxId: "p1", port: [] })),
      /^RESOURCE_EXHAUSTED: streaming: 5 stream requests already waiting/,
    );
    assert.equal(await upgradeStatus(urls[0] ?? "", spdyUpgrade("portforward.k8s.io")), 101);
    assert.equal(
      code(() => streaming.getPortForward({ podSandboxId: "p1", port: [] })),
      "OK",
    );
  });

  test("the address setting takes host:port", () => {
    assert.deepEqual(parseAddress("127.0.0.1:0"), { host: "127.0.0.1", port: 0 });
    assert.deepEqual(parseAddress("[::1]:10010"), { host: "::1", port: 10010 });
    assert.deepEqual(parseAddress(":0"), { host: "127.0.0.1", port: 0 });
    assert.throws(() => parseAddress("127.0.0.1"), /want host:port/);
    assert.throws(() => parseAddress("h:99999"), /want host:port/);
  });
});
