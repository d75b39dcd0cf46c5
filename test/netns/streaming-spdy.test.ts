// CRI streaming over SPDY/3.1 against a real client: Debian's moby/spdystream (the library
// client-go uses) in a Go program (scripts/build-stream-client.sh), through vmlet's HTTP
// upgrade, token checks and remotecommand protocol. The target behind it is a test echo
// (test/harness/stream-echo-target.ts) until exec and attach reach the guest.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import {
  type RemoteCommandOptions,
  type RemoteCommandProtocol,
  serveRemoteCommand,
} from "../../src/runtime/streaming/remotecommand";
import { StreamingServer } from "../../src/runtime/streaming/server";
import {
  encodeSynStream,
  FrameDecoder,
  GoawayStatus,
} from "../../src/runtime/streaming/spdy/frames";
import { spdyHeaders } from "../../src/runtime/streaming/spdy/header-block";
import { SpdyPeer } from "../harness/spdy-peer";
import { type EchoScript, EchoTarget } from "../harness/stream-echo-target";

const CLIENT = path.resolve(__dirname, "../../../.cache/clients/stream-client-go");
const run = promisify(execFile);

interface Req {
  opts: RemoteCommandOptions;
  target: EchoTarget;
}

interface ClientResult {
  httpStatus: number;
  protocol?: string;
  accepted?: string[];
  body?: string;
  stdout: string;
  stdoutLen: number;
  stdoutSha256: string;
  stderr: string;
  status: string;
  error?: string;
}

async function client(url: string, ...args: string[]): Promise<ClientResult> {
  const { stdout } = await run(CLIENT, ["-url", url, ...args], {
    timeout: 60_000,
    maxBuffer: 1 << 20,
  });
  return JSON.parse(stdout) as ClientResult;
}

describe("CRI streaming with moby/spdystream (client-go's SPDY)", () => {
  const errors: Error[] = [];
  const server = new StreamingServer<Req>({
    serve: (u) => {
      void serveRemoteCommand(
        u.session,
        u.protocol as RemoteCommandProtocol,
        u.request.opts,
        u.request.target,
        { streamCreationTimeoutMs: 5000, onError: (e) => errors.push(e) },
        u.head,
      );
    },
  });
  const io = (o: Partial<RemoteCommandOptions> = {}): RemoteCommandOptions => ({
    stdin: true,
    stdout: true,
    stderr: false,
    tty: false,
    ...o,
  });
  const exec = (script: EchoScript, o?: Partial<RemoteCommandOptions>) => {
    const target = new EchoTarget(script);
    return { target, url: server.urlFor("exec", { opts: io(o), target }) };
  };

  before(async () => {
    assert.ok(fs.existsSync(CLIENT), `${CLIENT} missing: run scripts/build-stream-client.sh`);
    await server.start();
  });
  after(() => server.stop());

  it("an exec gets stdin echoed on stdout, stderr, and the exit code in the v4 Status", async () => {
    const { url } = exec({ exitCode: 3, prefix: "out:", stderr: "warning\n" }, { stderr: true });
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/exec\/[A-Za-z0-9_-]{8}$/);
    const r = await client(url, "-open-stdin", "-stdin", "hello vm\n", "-stderr");
    assert.equal(r.httpStatus, 101);
    assert.equal(r.protocol, "v4.channel.k8s.io");
    assert.equal(r.error, undefined);
    assert.equal(r.stdout, "out:hello vm\n");
    assert.equal(r.stderr, "warning\n");
    const status = JSON.parse(r.status);
    assert.equal(status.status, "Failure");
    assert.equal(status.reason, "NonZeroExitCode");
    assert.deepEqual(status.details.causes, [{ type: "ExitCode", message: "3" }]);
  });

  it("a successful exec ends with {status: Success}; v5 is negotiated when offered first", async () => {
    const { url } = exec({ exitCode: 0 });
    const r = await client(
      url,
      "-open-stdin",
      "-stdin",
      "x",
      "-protocols",
      "v5.channel.k8s.io,v4.channel.k8s.io",
    );
    assert.equal(r.protocol, "v5.channel.k8s.io");
    assert.equal(r.stdout, "x");
    assert.deepEqual(JSON.parse(r.status), { metadata: {}, status: "Success" });
  });

  it("a target error reaches the client as an InternalError Status", async () => {
    const { url } = exec({ exitCode: 0, fail: "guest agent not running" }, { stdin: false });
    const r = await client(url);
    const status = JSON.parse(r.status);
    assert.equal(status.reason, "InternalError");
    assert.match(status.message, /guest agent not running/);
  });

  it("a v2 client gets the plain failure message on the error stream", async () => {
    const { url } = exec({ exitCode: 7 }, { stdin: false });
    const r = await client(url, "-protocols", "v2.channel.k8s.io");
    assert.equal(r.protocol, "v2.channel.k8s.io");
    assert.match(r.status, /non-zero exit code: exit status 7/);
  });

  it("1 MiB of stdout and 1 MiB of stdin pass though spdystream never sends WINDOW_UPDATE", async () => {
    const { url } = exec({ exitCode: 0, stdoutBytes: 1 << 20 });
    const chunk = "0123456789abcdef".repeat(64); // 1 KiB
    const r = await client(url, "-open-stdin", "-stdin", chunk, "-stdin-repeat", "1024");
    assert.equal(r.stdoutLen, 2 << 20);
    const expected = createHash("sha256")
      .update(Buffer.alloc(1 << 20, "x"))
      .update(chunk.repeat(1024))
      .digest("hex");
    assert.equal(r.stdoutSha256, expected);
    assert.deepEqual(JSON.parse(r.status).status, "Success");
  });

  it("a tty exec waits for the resize stream and hands the sizes to the target", async () => {
    const { url } = exec({ exitCode: 0, reportResize: true }, { stdin: false, tty: true });
    const r = await client(url, "-tty", "-resize", "80x24,132x43");
    assert.equal(r.stdout, "80x24\n132x43\n");
    assert.equal(JSON.parse(r.status).status, "Success");
  });

  it("a token works once: the second use gets 404", async () => {
    const { url } = exec({ exitCode: 0 }, { stdin: false });
    assert.equal((await client(url)).httpStatus, 101);
    const again = await client(url);
    assert.equal(again.httpStatus, 404);
    assert.equal((await client(`${server.baseUrl}/exec/AAAAAAAA`)).httpStatus, 404);
  });

  it("an unsupported protocol gets 403 with X-Accepted-Stream-Protocol-Versions", async () => {
    const { url, target } = exec({ exitCode: 0 });
    const r = await client(url, "-protocols", "v9.channel.k8s.io");
    assert.equal(r.httpStatus, 403);
    assert.deepEqual(r.accepted, [
      "v5.channel.k8s.io",
      "v4.channel.k8s.io",
      "v3.channel.k8s.io",
      "v2.channel.k8s.io",
      "channel.k8s.io",
    ]);
    assert.equal(target.started, false);
  });

  it("a malformed SPDY frame closes only its own connection", async () => {
    let release: () => void = () => {};
    const hold = new Promise<void>((r) => {
      release = r;
    });
    const slow = exec({ exitCode: 0, prefix: "survived", hold }, { stdin: false });
    const pending = client(slow.url);
    while (!slow.target.started) await new Promise((r) => setTimeout(r, 10));

    const bad = exec({ exitCode: 0 });
    const { port, pathname } = new URL(bad.url);
    const sock = net.connect(Number(port), "127.0.0.1");
    const received: Buffer[] = [];
    sock.on("data", (d: Buffer) => received.push(d));
    const closed = new Promise<void>((r) => sock.on("close", () => r()));
    sock.write(
      `POST ${pathname} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n` +
        "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
    );
    // A SYN_STREAM whose header block is not zlib: the shared context is unusable.
    sock.write(encodeSynStream(1, 0, Buffer.from("this is not a zlib stream")));
    await closed;
    const all = Buffer.concat(received);
    const headEnd = all.indexOf("\r\n\r\n");
    assert.match(all.subarray(0, headEnd).toString(), /^HTTP\/1\.1 101/);
    const frames = new FrameDecoder({ maxControlFrameBytes: 1 << 16 }).decode(
      all.subarray(headEnd + 4),
    );
    assert.deepEqual(frames.at(-1), {
      type: "goaway",
      lastGoodStreamId: 0,
      status: GoawayStatus.PROTOCOL_ERROR,
    });
    assert.equal(bad.target.started, false);

    release();
    const r = await pending;
    assert.equal(r.stdout, "survived");
    assert.equal(JSON.parse(r.status).status, "Success");
  });

  it("a client that never opens its streams is dropped after the creation timeout", async () => {
    const { url, target } = exec({ exitCode: 0 });
    const { port, pathname } = new URL(url);
    const sock = net.connect(Number(port), "127.0.0.1");
    sock.on("data", () => {});
    const t0 = Date.now();
    const closed = new Promise<void>((r) => sock.on("close", () => r()));
    sock.write(
      `GET ${pathname} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n` +
        "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
    );
    await closed;
    assert.ok(Date.now() - t0 >= 4500, "held for the (5 s test) creation timeout");
    assert.equal(target.started, false);
    assert.ok(errors.some((e) => /timed out .*\(missing: error, stdin, stdout\)/.test(e.message)));
  });

  it("a client that goes away mid-run aborts the target, and its streams are released", async () => {
    let release: () => void = () => {};
    const hold = new Promise<void>((r) => {
      release = r;
    });
    const { url, target } = exec({ exitCode: 0, hold }, { stdin: false });
    const { port, pathname } = new URL(url);
    const peer = await SpdyPeer.upgrade(Number(port), pathname, "v4.channel.k8s.io");
    await peer.synStream(1, spdyHeaders({ streamType: "error" }));
    await peer.synStream(3, spdyHeaders({ streamType: "stdout" }));
    while (!target.started) await new Promise((r) => setTimeout(r, 10));
    peer.close();
    while (!target.aborted) await new Promise((r) => setTimeout(r, 10));
    release();
  });

  it("an unknown or duplicate streamType is reset without disturbing the exec", async () => {
    const { url } = exec({ exitCode: 0, prefix: "ok" }, { stdin: false });
    const { port, pathname } = new URL(url);
    const peer = await SpdyPeer.upgrade(Number(port), pathname, "v4.channel.k8s.io");
    await peer.synStream(1, spdyHeaders({ streamType: "error" }));
    await peer.synStream(3, spdyHeaders({ streamType: "error" }));
    await peer.synStream(5, spdyHeaders({ streamType: "bogus" }));
    await peer.synStream(7, spdyHeaders({ streamType: "stdout" }));
    await peer.until((p) => p.finOn(1) && p.finOn(7));
    assert.deepEqual(
      peer.of("rst_stream").map((f) => f.streamId),
      [3, 5],
    );
    assert.equal(peer.dataOn(7).toString(), "ok");
    assert.deepEqual(JSON.parse(peer.dataOn(1).toString()), { metadata: {}, status: "Success" });
    peer.close();
  });
});
