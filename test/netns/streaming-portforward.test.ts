// Port-forward's connection handling against the Go spdystream client (client-go's SPDY
// library), with TCP servers on loopback standing where the guest listens (the VM path is
// test/guest/streaming-vm.test.ts): the client's half-close reaches the pod and the
// answer still comes back; a pod that resets or stops reading ends only its own
// connection; the session goes on, and nothing stays open.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import pino from "pino";
import { notFound } from "../../src/runtime/errors";
import { CriStreaming } from "../../src/runtime/streaming/cri-calls";

const CLIENT = path.resolve(__dirname, "../../../.cache/clients/stream-client-go");
const skip = fs.existsSync(CLIENT) ? false : `no ${CLIENT}: run scripts/build-stream-client.sh`;
const run = promisify(execFile);

interface Forward {
  reply: string;
  replyLen: number;
  error: string;
}

describe("port-forward connections (moby/spdystream client)", { skip }, () => {
  const pods = new Map<number, net.Server>();
  const open = new Set<net.Socket>();
  const dialed: number[] = [];
  let streaming: CriStreaming;

  /** A pod port: `behave` gets each accepted connection. */
  async function pod(behave: (c: net.Socket) => void): Promise<number> {
    const server = net.createServer({ allowHalfOpen: true }, (c) => {
      open.add(c);
      c.on("close", () => open.delete(c));
      c.on("error", () => {});
      behave(c);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as net.AddressInfo).port;
    pods.set(port, server);
    return port;
  }

  let answersAtEnd = 0;
  let resets = 0;
  let closesEarly = 0;

  before(async () => {
    // Counts what it got and answers only after the client's FIN: half-close both ways.
    answersAtEnd = await pod((c) => {
      let n = 0;
      c.on("data", (d: Buffer) => {
        n += d.length;
      });
      c.on("end", () => c.end(`got ${n} bytes then EOF`));
    });
    resets = await pod((c) => c.once("data", () => c.resetAndDestroy()));
    closesEarly = await pod((c) => c.destroy());
    streaming = new CriStreaming({
      logger: pino({ level: "silent" }),
      lookups: {
        container: (id, call) => {
          throw notFound(`${call}: container ${id} not found`);
        },
        sandbox: () => ({ name: "default/pf", ip: "127.0.0.1" }),
      },
      dial: (_sandbox, port) =>
        new Promise((resolve, reject) => {
          dialed.push(port);
          const s = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
          s.once("connect", () => {
            s.removeAllListeners("error");
            s.on("error", () => {});
            resolve(s);
          });
          s.once("error", reject);
        }),
    });
    await streaming.start();
  });

  after(async () => {
    await streaming.stop();
    for (const s of pods.values()) s.close();
  });

  async function forward(ports: number[], sendBytes = 0): Promise<Forward[]> {
    const { url } = streaming.getPortForward({ podSandboxId: "pf", port: [] });
    const args = [
      "-mode",
      "portforward",
      "-url",
      url,
      "-port",
      ports.join(","),
      "-request",
      "hello",
    ];
    args.push("-connections", String(ports.length), "-send-bytes", String(sendBytes));
    const { stdout } = await run(CLIENT, args, { timeout: 60_000 });
    const r = JSON.parse(stdout) as { httpStatus: number; error?: string; forwards?: Forward[] };
    assert.equal(r.httpStatus, 101, JSON.stringify(r));
    assert.equal(r.error ?? "", "");
    return r.forwards ?? [];
  }

  test("the client's half-close reaches the pod, and the pod's answer after it comes back", async () => {
    const [f] = await forward([answersAtEnd], 1 << 20);
    assert.equal(f?.reply, `got ${5 + (1 << 20)} bytes then EOF`);
    assert.equal(f?.error, "");
  });

  test("a reset (ECONNRESET) and a pod that stops reading (EPIPE) end only their own connection", async () => {
    const [reset, early, after] = await forward([resets, closesEarly, answersAtEnd], 4 << 20);
    assert.equal(reset?.replyLen, 0);
    assert.equal(early?.replyLen, 0);
    assert.equal(after?.reply, `got ${5 + (4 << 20)} bytes then EOF`, "the session went on");
  });

  test("a port nobody listens on: the error stream says so; nothing stays open after", async () => {
    const spare = await pod(() => {});
    const port = spare;
    await new Promise<void>((r) => pods.get(port)?.close(() => r()));
    const [refused] = await forward([port]);
    assert.match(
      refused?.error ?? "",
      new RegExp(`error forwarding port ${port} to pod default/pf: .*ECONNREFUSED`),
    );
    for (let i = 0; i < 100 && (open.size > 0 || streaming.activeStreams > 0); i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(open.size, 0, "every pod connection closed");
    assert.equal(streaming.activeStreams, 0, "every session ended");
  });
});
