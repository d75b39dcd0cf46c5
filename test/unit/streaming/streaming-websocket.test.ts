// The WebSocket channel protocols of exec and attach, each variant against a `ws` client
// that frames messages by hand as the protocol says (client-node's own exec, which takes
// v5, runs against the VM in streaming-vm.test.ts): binary and base64 channels, v5's stdin
// close, the Status on channel 3, refusals, and a message over the cap. Then port-forward
// over WebSocket against real TCP listeners: the 2-byte port prefixes, channels 2i and 2i+1.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import net from "node:net";
import type { Duplex } from "node:stream";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import type { RemoteCommandOptions } from "../../../src/runtime/streaming/remotecommand";
import { StreamingServer, writeRaw } from "../../../src/runtime/streaming/server";
import { serveWebSocketRemoteCommand } from "../../../src/runtime/streaming/websocket";
import {
  portForwardPorts,
  serveWebSocketPortForward,
} from "../../../src/runtime/streaming/websocket-portforward";
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

  test("refusals: no protocol we speak (403), a spent token (404)", async () => {
    await assert.rejects(talk(url({ exitCode: 0 }), ["v3.channel.k8s.io"], []), /HTTP 403/);
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

/** Every message of a port-forward connection, in order, as [channel, payload]. */
function forwardTalk(
  url: string,
  protocols: string[],
  messages: Array<[number, string]>,
): Promise<{ protocol: string; messages: Array<[number, Buffer]>; closeCode: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, "ws"), protocols);
    const got: Array<[number, Buffer]> = [];
    const base64 = protocols[0]?.includes("base64") ?? false;
    ws.on("open", () => {
      for (const [channel, text] of messages)
        ws.send(
          base64
            ? `${channel}${Buffer.from(text).toString("base64")}`
            : Buffer.concat([Buffer.from([channel]), Buffer.from(text)]),
        );
    });
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      if (base64 && !isBinary)
        got.push([data[0] - 0x30, Buffer.from(data.subarray(1).toString(), "base64")]);
      else got.push([data[0], data.subarray(1)]);
    });
    ws.on("close", (code) => resolve({ protocol: ws.protocol, messages: got, closeCode: code }));
    ws.on("unexpected-response", (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    ws.on("error", reject);
  });
}

/** What the pod would be: replies "<tag>:<first line>" and closes. */
function lineServer(tag: string): Promise<net.Server> {
  const s = net.createServer((c) => {
    c.once("data", (d) => c.end(`${tag}:${d.toString()}`));
    c.on("error", () => c.destroy());
  });
  return new Promise((resolve) => s.listen(0, "127.0.0.1", () => resolve(s)));
}

const portOf = (s: net.Server) => (s.address() as net.AddressInfo).port;

function dialLoopback(port: number): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const c = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
    c.once("error", (e: NodeJS.ErrnoException) => reject(new Error(`connect: ${e.code}`)));
    c.once("connect", () => {
      c.removeAllListeners("error");
      resolve(c);
    });
  });
}

describe("port-forward over WebSocket (kubelet's channel layout)", () => {
  const errors: Error[] = [];
  const server = new StreamingServer<{ ports: number[] }>({
    serve: (u) => u.session.close(),
    serveWebSocket: (u) => {
      let ports: number[];
      try {
        ports = portForwardPorts(u.req.url, u.request.ports);
      } catch (e) {
        writeRaw(u.socket, 400, (e as Error).message, {});
        return;
      }
      serveWebSocketPortForward(u.req, u.socket, u.head, u.protocol, ports, {
        podName: "default/web",
        dial: dialLoopback,
        onError: (e) => errors.push(e),
      });
    },
  });
  const pods: net.Server[] = [];
  before(async () => {
    await server.start();
    pods.push(await lineServer("one"), await lineServer("two"));
  });
  after(async () => {
    await server.stop();
    for (const p of pods) p.close();
  });
  const le = (port: number) => {
    const b = Buffer.alloc(2);
    b.writeUInt16LE(port);
    return b;
  };

  test("two ports: each of channels 0-3 starts with its port (LE), data on 2i, close 1000 when both end", async () => {
    const [one, two] = pods.map(portOf);
    const r = await forwardTalk(
      `${server.urlFor("portforward", { ports: [] })}?ports=${one}&ports=${two}`,
      ["v4.channel.k8s.io"],
      [
        [0, "to-one\n"],
        [2, "to-two\n"],
      ],
    );
    assert.equal(r.protocol, "v4.channel.k8s.io");
    for (const channel of [0, 1, 2, 3]) {
      const first = r.messages.find(([c]) => c === channel);
      assert.deepEqual(first?.[1], le(channel < 2 ? one : two), `channel ${channel}'s first`);
    }
    const text = (channel: number) =>
      Buffer.concat(
        r.messages
          .filter(([c]) => c === channel)
          .slice(1)
          .map(([, b]) => b),
      ).toString();
    assert.equal(text(0), "one:to-one\n");
    assert.equal(text(2), "two:to-two\n");
    assert.equal(text(1), "");
    assert.equal(text(3), "");
    assert.equal(r.closeCode, 1000);
  });

  test("v4.base64, comma-separated ports: a refused port reports on its own error channel only", async () => {
    const closed = await lineServer("gone");
    const refused = portOf(closed);
    await new Promise((res) => closed.close(res));
    const one = portOf(pods[0]);
    errors.length = 0;
    const r = await forwardTalk(
      `${server.urlFor("portforward", { ports: [] })}?ports=${refused},${one}`,
      ["v4.base64.channel.k8s.io"],
      [[2, "hi\n"]],
    );
    assert.equal(r.protocol, "v4.base64.channel.k8s.io");
    const on = (channel: number) => r.messages.filter(([c]) => c === channel).map(([, b]) => b);
    assert.deepEqual(on(0), [le(refused)], "no data for the refused port");
    assert.equal(on(1).length, 2);
    assert.deepEqual(on(1)[0], le(refused));
    assert.match(
      on(1)[1]?.toString() ?? "",
      new RegExp(`error forwarding port ${refused} to pod default/web: .*ECONNREFUSED`),
    );
    assert.equal(Buffer.concat(on(2).slice(1)).toString(), "one:hi\n");
    assert.deepEqual(on(3), [le(one)]);
    assert.equal(errors.length, 1);
  });

  test("a reset ends its own port with ECONNRESET on its error channel; 4 MiB from another arrive whole, in messages of 1 MiB at most", async () => {
    const big = crypto.randomBytes(4 << 20);
    const servers = [
      net.createServer((c) => c.once("data", () => c.resetAndDestroy())),
      net.createServer((c) => c.once("data", () => c.end(big))),
    ];
    await Promise.all(
      servers.map((sv) => new Promise<void>((res) => sv.listen(0, "127.0.0.1", () => res()))),
    );
    try {
      const [reset, bulk] = servers.map(portOf);
      const r = await forwardTalk(
        `${server.urlFor("portforward", { ports: [] })}?ports=${reset}&ports=${bulk}`,
        ["portforward.k8s.io"],
        [
          [0, "go\n"],
          [2, "go\n"],
        ],
      );
      assert.equal(r.protocol, "portforward.k8s.io");
      const on = (channel: number) => r.messages.filter(([c]) => c === channel).map(([, b]) => b);
      assert.match(
        Buffer.concat(on(1).slice(1)).toString(),
        new RegExp(`error forwarding port ${reset} to pod default/web: ECONNRESET`),
      );
      const got = Buffer.concat(on(2).slice(1));
      assert.equal(got.length, big.length);
      assert.ok(got.equals(big), "the bytes arrive unchanged");
      assert.ok(on(2).every((b) => b.length <= 1 << 20));
      assert.deepEqual(on(3), [le(bulk)], "no error for the port that worked");
      assert.equal(r.closeCode, 1000);
    } finally {
      for (const sv of servers) sv.close();
    }
  });

  test("no protocol header gets the unnamed binary one; the request's ports when the query has none", async () => {
    const one = portOf(pods[0]);
    const r = await forwardTalk(server.urlFor("portforward", { ports: [one] }), [], [[0, "x\n"]]);
    assert.equal(r.protocol, "");
    assert.deepEqual(r.messages[0], [0, le(one)]);
    assert.equal(
      Buffer.concat(
        r.messages
          .filter(([c]) => c === 0)
          .slice(1)
          .map(([, b]) => b),
      ).toString(),
      "one:x\n",
    );
  });

  test("refusals: port 0, 65536 or a name in the query (400), no ports at all (400), an exec protocol (403)", async () => {
    const url = () => server.urlFor("portforward", { ports: [] });
    for (const q of ["?ports=0", "?ports=65536", "?ports=80,http", "?port="])
      await assert.rejects(forwardTalk(`${url()}${q}`, ["v4.channel.k8s.io"], []), /HTTP 400/, q);
    await assert.rejects(forwardTalk(url(), ["v4.channel.k8s.io"], []), /HTTP 400/);
    await assert.rejects(forwardTalk(`${url()}?ports=80`, ["v5.channel.k8s.io"], []), /HTTP 403/);
    assert.throws(() => portForwardPorts("/x?ports=0", []), /query parameter "ports"/);
    assert.throws(() => portForwardPorts("/x", []), /query parameter "ports" is required/);
  });
});
