// The WebSocket channel protocols of exec and attach, each variant against a `ws` client
// that frames messages by hand as the protocol says (client-node's own exec, which takes
// v5, runs against the VM in streaming-vm.test.ts): binary and base64 channels, v5's stdin
// close, the Status on channel 3, refusals, and a message over the cap.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import type { RemoteCommandOptions } from "../../../src/runtime/streaming/remotecommand";
import { StreamingServer } from "../../../src/runtime/streaming/server";
import { serveWebSocketRemoteCommand } from "../../../src/runtime/streaming/websocket";
import { type EchoScript, EchoTarget } from "../../harness/stream-echo-target";

interface Req {
  opts: RemoteCommandOptions;
  target: EchoTarget;
}

interface Received {
  protocol: string;
  channels: Map<number, Buffer>;
  closeCode: number;
}

/** Connects, sends `messages` (then, for v5, the stdin close), and collects by channel. */
function talk(
  url: string,
  protocols: string[],
  messages: Array<Buffer | string>,
  closeStdin = false,
): Promise<Received> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, "ws"), protocols);
    const channels = new Map<number, Buffer>();
    ws.on("open", () => {
      for (const m of messages) ws.send(m);
      if (closeStdin) ws.send(Buffer.from([255, 0]));
    });
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      const base64 = ws.protocol.includes("base64");
      const channel = base64 && !isBinary ? data[0] - 0x30 : data[0];
      const body =
        base64 && !isBinary ? Buffer.from(data.subarray(1).toString(), "base64") : data.subarray(1);
      channels.set(channel, Buffer.concat([channels.get(channel) ?? Buffer.alloc(0), body]));
    });
    ws.on("close", (code) => resolve({ protocol: ws.protocol, channels, closeCode: code }));
    ws.on("unexpected-response", (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    ws.on("error", reject);
  });
}

describe("exec and attach over the WebSocket channel protocols", () => {
  const server = new StreamingServer<Req>({
    serve: (u) => u.session.close(),
    serveWebSocket: (u) => {
      void serveWebSocketRemoteCommand(
        u.req,
        u.socket,
        u.head,
        u.protocol,
        u.request.opts,
        u.request.target,
      );
    },
  });
  const url = (script: EchoScript, o: Partial<RemoteCommandOptions> = {}) =>
    server.urlFor("exec", {
      opts: { stdin: true, stdout: true, stderr: true, tty: false, ...o },
      target: new EchoTarget(script),
    });
  before(() => server.start());
  after(() => server.stop());

  test("v5: stdin echoed on stdout, stderr, v5's close ends stdin, exit 3 in the Status", async () => {
    const r = await talk(
      url({ exitCode: 3, stderr: "to-stderr" }),
      ["v5.channel.k8s.io", "v4.channel.k8s.io"],
      [Buffer.concat([Buffer.from([0]), Buffer.from("hello ")]), Buffer.from("\0world")],
      true,
    );
    assert.equal(r.protocol, "v5.channel.k8s.io");
    assert.equal(r.channels.get(1)?.toString(), "hello world");
    assert.equal(r.channels.get(2)?.toString(), "to-stderr");
    const status = JSON.parse(r.channels.get(3)?.toString() ?? "{}") as {
      reason: string;
      details: { causes: unknown[] };
    };
    assert.equal(status.reason, "NonZeroExitCode");
    assert.deepEqual(status.details.causes, [{ type: "ExitCode", message: "3" }]);
    assert.equal(r.closeCode, 1000);
  });

  test("v4.base64: text messages, channel digit then base64; Success", async () => {
    const r = await talk(
      url({ exitCode: 0, prefix: "p:" }, { stdin: false }),
      ["v4.base64.channel.k8s.io"],
      [],
    );
    assert.equal(r.protocol, "v4.base64.channel.k8s.io");
    assert.equal(r.channels.get(1)?.toString(), "p:");
    assert.deepEqual(JSON.parse(r.channels.get(3)?.toString() ?? "{}"), {
      metadata: {},
      status: "Success",
    });
  });

  test("channel.k8s.io (v1): a failure is a plain message on channel 3, success says nothing", async () => {
    const failed = await talk(
      url({ exitCode: 0, fail: "no agent" }, { stdin: false }),
      ["channel.k8s.io"],
      [],
    );
    assert.equal(failed.channels.get(3)?.toString(), "no agent");
    const ok = await talk(url({ exitCode: 0 }, { stdin: false }), ["channel.k8s.io"], []);
    assert.equal(ok.channels.get(3), undefined);
  });

  test("refusals: no protocol we speak (403), port-forward (400), a spent token (404)", async () => {
    await assert.rejects(talk(url({ exitCode: 0 }), ["v3.channel.k8s.io"], []), /HTTP 403/);
    await assert.rejects(
      talk(server.urlFor("portforward", {} as Req), ["v4.channel.k8s.io"], []),
      /HTTP 400/,
    );
    const once = url({ exitCode: 0 }, { stdin: false });
    await talk(once, ["v4.channel.k8s.io"], []);
    await assert.rejects(talk(once, ["v4.channel.k8s.io"], []), /HTTP 404/);
  });

  test("a message over 1 MiB closes the connection (1009), and the target is aborted", async () => {
    const target = new EchoTarget({ exitCode: 0 });
    const u = server.urlFor("exec", {
      opts: { stdin: true, stdout: true, stderr: false, tty: false },
      target,
    });
    const r = await talk(u, ["v4.channel.k8s.io"], [Buffer.alloc(2 << 20)]);
    assert.equal(r.closeCode, 1009);
    assert.equal(r.channels.get(1), undefined);
    for (let i = 0; i < 100 && !target.aborted; i++)
      await new Promise((res) => setTimeout(res, 10));
    assert.ok(target.aborted, "the target saw the client go");
  });
});
