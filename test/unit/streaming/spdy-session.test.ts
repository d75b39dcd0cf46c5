import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, it } from "node:test";
import zlib from "node:zlib";
import {
  encodeData,
  encodePing,
  encodeRstStream,
  encodeSettings,
  encodeSynStream,
  encodeWindowUpdate,
  FLAG_UNIDIRECTIONAL,
  GoawayStatus,
  RstStatus,
} from "../../../src/runtime/streaming/spdy/frames";
import { SPDY3_DICTIONARY, spdyHeaders } from "../../../src/runtime/streaming/spdy/header-block";
import { SpdySession, type SpdySessionOptions } from "../../../src/runtime/streaming/spdy/session";
import type { SpdyStream } from "../../../src/runtime/streaming/spdy/stream";
import { SpdyPeer } from "../../harness/spdy-peer";

interface Served {
  session: SpdySession;
  streams: SpdyStream[];
  closeError?: Error;
  closed: boolean;
}

/** A loopback server whose connections each get a server SpdySession. */
function sessionServer(opts: Partial<SpdySessionOptions> = {}, onStream?: (s: SpdyStream) => void) {
  const served: Served[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    const session = new SpdySession(sock, opts);
    const entry: Served = { session, streams: [], closed: false };
    served.push(entry);
    session.start({
      stream: (s) => {
        entry.streams.push(s);
        onStream?.(s);
      },
      close: (e) => {
        entry.closed = true;
        entry.closeError = e;
      },
    });
  });
  return { server, served };
}

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return (server.address() as net.AddressInfo).port;
}

async function waitFor(pred: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe("SPDY/3.1 server session", () => {
  // Echoes each stream's data back, upper-cased, and ends when the peer ends.
  const echo = sessionServer({}, (s) => {
    s.on("data", (d: Buffer) => s.write(Buffer.from(d.toString().toUpperCase())));
    s.on("end", () => s.end());
  });
  let port = 0;
  before(async () => {
    port = await listen(echo.server);
  });
  after(() => echo.server.close());

  it("answers a SYN_STREAM with SYN_REPLY, carries data both ways, and half-closes both sides", async () => {
    const peer = await SpdyPeer.connect(port);
    await peer.synStream(1, spdyHeaders({ streamType: "stdin", Port: "80" }));
    peer.write(encodeData(1, Buffer.from("hello"), false));
    peer.write(encodeData(1, Buffer.alloc(0), true));
    await peer.until((p) => p.finOn(1));
    const reply = peer.of("syn_reply")[0];
    assert.equal(reply.streamId, 1);
    assert.equal(reply.headers?.size, 0);
    assert.equal(peer.dataOn(1).toString(), "HELLO");
    const served = echo.served[echo.served.length - 1];
    assert.deepEqual(
      served.streams[0].headers,
      new Map([
        ["streamtype", ["stdin"]],
        ["port", ["80"]],
      ]),
    );
    await waitFor(() => served.session.streamCount === 0, "the stream to be forgotten");
    peer.close();
  });

  it("echoes the peer's PING and measures its own", async () => {
    const peer = await SpdyPeer.connect(port);
    peer.write(encodePing(5));
    await peer.until((p) => p.of("ping").length > 0);
    assert.deepEqual(peer.of("ping")[0], { type: "ping", id: 5 });
    const session = echo.served[echo.served.length - 1].session;
    const rtt = session.ping();
    await peer.until((p) => p.of("ping").length > 1);
    const ours = peer.of("ping")[1];
    assert.equal(ours.id % 2, 0, "a server ping id is even");
    peer.write(encodePing(ours.id));
    assert.ok((await rtt) >= 0);
    peer.close();
  });

  for (const [name, send] of [
    ["an even (server-side) stream id", (p: SpdyPeer) => p.synStream(2, spdyHeaders({ a: "b" }))],
    [
      "garbage with the control bit",
      async (p: SpdyPeer) => p.write(Buffer.from("\xff\xffGET / HTTP/1.1\r\n\r\n", "latin1")),
    ],
    [
      "a decreasing stream id",
      async (p: SpdyPeer) => {
        await p.synStream(5, spdyHeaders({ a: "b" }));
        await p.synStream(3, spdyHeaders({ a: "b" }));
      },
    ],
  ] as const) {
    it(`answers ${name} with GOAWAY PROTOCOL_ERROR and closes only that connection`, async () => {
      const bystander = await SpdyPeer.connect(port);
      await bystander.synStream(1, spdyHeaders({ streamtype: "stdin" }));
      await bystander.until((p) => p.of("syn_reply").length === 1);
      const peer = await SpdyPeer.connect(port);
      await send(peer);
      await peer.untilClosed();
      assert.equal(peer.of("goaway")[0]?.status, GoawayStatus.PROTOCOL_ERROR);
      const served = echo.served[echo.served.length - 1];
      assert.ok(served.closeError, "the session reports why it closed");
      // The other connection still works.
      bystander.write(encodeData(1, Buffer.from("still here"), true));
      await bystander.until((p) => p.finOn(1));
      assert.equal(bystander.dataOn(1).toString(), "STILL HERE");
      bystander.close();
    });
  }

  it("refuses a malformed header block with RST_STREAM and keeps the connection", async () => {
    const peer = await SpdyPeer.connect(port);
    // Built by hand (our deflater lowercases): an uppercase name is a stream error; the
    // zlib context stays in step, so the connection carries on.
    const raw = Buffer.concat([
      Buffer.from([0, 0, 0, 1, 0, 0, 0, 1]),
      Buffer.from("A"),
      Buffer.from([0, 0, 0, 1]),
      Buffer.from("b"),
    ]);
    const block = zlib.deflateSync(raw, {
      dictionary: SPDY3_DICTIONARY,
      finishFlush: zlib.constants.Z_SYNC_FLUSH,
    });
    peer.write(encodeSynStream(1, 0, block));
    await peer.until((p) => p.of("rst_stream").length > 0);
    assert.deepEqual(peer.of("rst_stream")[0], {
      type: "rst_stream",
      streamId: 1,
      status: RstStatus.PROTOCOL_ERROR,
    });
    peer.write(encodePing(1));
    await peer.until((p) => p.of("ping").length > 0);
    peer.close();
  });

  it("takes a unidirectional stream's data without answering it", async () => {
    const peer = await SpdyPeer.connect(port);
    await peer.synStream(1, spdyHeaders({ a: "b" }), FLAG_UNIDIRECTIONAL);
    peer.write(encodeData(1, Buffer.from("one way"), true));
    const served = echo.served[echo.served.length - 1];
    await waitFor(
      () => served.session.streamCount === 0 && served.streams.length === 1,
      "the stream to finish",
    );
    peer.write(encodePing(1));
    await peer.until((p) => p.of("ping").length === 1);
    assert.equal(peer.of("syn_reply").length, 0);
    assert.equal(peer.dataOn(1).length, 0, "nothing sent back on it");
    peer.close();
  });

  it("destroys a stream the peer resets, and the reader sees the error", async () => {
    const peer = await SpdyPeer.connect(port);
    await peer.synStream(1, spdyHeaders({ a: "b" }));
    await peer.until((p) => p.of("syn_reply").length === 1);
    const served = echo.served[echo.served.length - 1];
    const s = served.streams[0];
    peer.write(encodeRstStream(1, RstStatus.CANCEL));
    await waitFor(() => s.destroyed, "the stream to be destroyed");
    assert.match(String(s.errored), /reset by the peer \(status 5\)/);
    assert.equal(served.session.streamCount, 0);
    peer.close();
  });
});

describe("SPDY/3.1 session against hostile peers", () => {
  it("a thousand streams: 100 served, the rest refused, and all gone when the peer leaves", async () => {
    const { server, served } = sessionServer();
    const port = await listen(server);
    const peer = await SpdyPeer.connect(port);
    for (let id = 1; id < 2000; id += 2)
      await peer.synStream(id, spdyHeaders({ streamtype: "data" }));
    await peer.until((p) => p.of("syn_reply").length + p.of("rst_stream").length === 1000, 10_000);
    assert.equal(peer.of("syn_reply").length, 100);
    assert.ok(peer.of("rst_stream").every((f) => f.status === RstStatus.REFUSED_STREAM));
    peer.write(encodePing(1));
    await peer.until((p) => p.of("ping").length === 1);
    const session = served[0].session;
    assert.equal(session.streamCount, 100);
    peer.close();
    await waitFor(() => served[0].closed, "the session to close");
    assert.equal(session.streamCount, 0);
    assert.ok(served[0].streams.every((s) => s.destroyed));
    server.close();
  });

  it("random and mutated frame streams never take the server down", async () => {
    const { server, served } = sessionServer({}, (s) => s.resume());
    const port = await listen(server);
    let seed = 0x5eed;
    const next = (): number => {
      seed ^= seed << 13;
      seed >>>= 0;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      seed >>>= 0;
      return seed;
    };
    const valid = Buffer.concat([
      encodeData(1, Buffer.from("abc"), false),
      encodeWindowUpdate(0, 100),
      encodePing(3),
      encodeRstStream(1, 5),
      encodeSettings([{ flags: 0, id: 7, value: 100 }]),
    ]);
    for (let round = 0; round < 40; round++) {
      const peer = await SpdyPeer.connect(port);
      await peer.synStream(1, spdyHeaders({ a: "b" }));
      const junk = Buffer.from(valid);
      for (let k = 0; k < 1 + (next() % 8); k++) junk[next() % junk.length] = next() & 0xff;
      peer.write(junk);
      await new Promise((r) => setTimeout(r, 5));
      peer.close();
    }
    await waitFor(() => served.every((x) => x.closed), "every session to end");
    // Still serving.
    const peer = await SpdyPeer.connect(port);
    peer.write(encodePing(1));
    await peer.until((p) => p.of("ping").length === 1);
    peer.close();
    server.close();
  });
});

describe("SPDY/3.1 flow control", () => {
  const big = Buffer.alloc(200 * 1024, 0x61);

  it("strict: sends no more than the peer's window until WINDOW_UPDATE arrives", async () => {
    const { server } = sessionServer({ flowControl: "strict" }, (s) => s.end(big));
    const port = await listen(server);
    const peer = await SpdyPeer.connect(port);
    await peer.synStream(1, spdyHeaders({ a: "b" }));
    await peer.until((p) => p.dataOn(1).length >= 64 * 1024);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(peer.dataOn(1).length, 64 * 1024, "stops at the initial 64 KiB window");
    peer.write(encodeWindowUpdate(1, 1 << 20));
    peer.write(encodeWindowUpdate(0, 1 << 20));
    await peer.until((p) => p.finOn(1));
    assert.equal(peer.dataOn(1).length, big.length);
    peer.close();
    server.close();
  });

  it("strict: a SETTINGS initial window shrink holds data back on open streams", async () => {
    let stream: SpdyStream | undefined;
    const { server } = sessionServer({ flowControl: "strict" }, (s) => {
      stream = s;
    });
    const port = await listen(server);
    const peer = await SpdyPeer.connect(port);
    await peer.synStream(1, spdyHeaders({ a: "b" }));
    await peer.until((p) => p.of("syn_reply").length === 1);
    peer.write(encodeSettings([{ flags: 0, id: 7, value: 1000 }]));
    await waitFor(() => stream !== undefined, "stream");
    await new Promise((r) => setTimeout(r, 50));
    stream!.write(Buffer.alloc(5000));
    await peer.until((p) => p.dataOn(1).length >= 1000);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(peer.dataOn(1).length, 1000);
    peer.close();
    server.close();
  });

  it("auto: a peer that never sends WINDOW_UPDATE (moby/spdystream) still gets everything", async () => {
    const { server } = sessionServer({}, (s) => s.end(big));
    const port = await listen(server);
    const peer = await SpdyPeer.connect(port);
    await peer.synStream(1, spdyHeaders({ a: "b" }));
    await peer.until((p) => p.finOn(1));
    assert.equal(peer.dataOn(1).length, big.length);
    peer.close();
    server.close();
  });

  it("credits the peer with WINDOW_UPDATE (stream and session) as data is consumed", async () => {
    let got = 0;
    const { server } = sessionServer({ flowControl: "strict" }, (s) =>
      s.on("data", (d: Buffer) => (got += d.length)),
    );
    const port = await listen(server);
    const peer = await SpdyPeer.connect(port);
    await peer.synStream(1, spdyHeaders({ a: "b" }));
    for (let i = 0; i < 4; i++) peer.write(encodeData(1, Buffer.alloc(16 * 1024), false));
    await peer.until((p) => p.of("window_update").filter((w) => w.streamId === 1).length > 0);
    await peer.until((p) => p.of("window_update").some((w) => w.streamId === 0));
    const credit = peer
      .of("window_update")
      .filter((w) => w.streamId === 1)
      .reduce((n, w) => n + w.delta, 0);
    assert.ok(credit >= 32 * 1024 && credit <= got, `credited ${credit} of ${got}`);
    peer.close();
    server.close();
  });

  it("strict: a peer overrunning the stream window gets RST_STREAM FLOW_CONTROL_ERROR", async () => {
    const { server } = sessionServer({ flowControl: "strict" }, (s) => s.pause());
    const port = await listen(server);
    const peer = await SpdyPeer.connect(port);
    await peer.synStream(1, spdyHeaders({ a: "b" }));
    peer.write(encodeData(1, Buffer.alloc(70 * 1024), false));
    await peer.until((p) => p.of("rst_stream").length > 0);
    assert.equal(peer.of("rst_stream")[0].status, RstStatus.FLOW_CONTROL_ERROR);
    peer.close();
    server.close();
  });

  it("stops reading the socket while a stream's reader lags (bounded buffers)", async () => {
    let stream: SpdyStream | undefined;
    const { server } = sessionServer({ maxStreamBuffer: 128 * 1024 }, (s) => {
      stream = s;
      s.pause();
    });
    const port = await listen(server);
    const peer = await SpdyPeer.connect(port);
    await peer.synStream(1, spdyHeaders({ a: "b" }));
    const chunk = encodeData(1, Buffer.alloc(32 * 1024), false);
    for (let i = 0; i < 200; i++) peer.write(chunk); // 6.4 MB, far past the cap
    await waitFor(() => stream !== undefined && stream.readableLength > 128 * 1024, "buffering");
    await new Promise((r) => setTimeout(r, 300));
    const held = stream!.readableLength;
    assert.ok(held < 512 * 1024, `buffered ${held} bytes`);
    let total = held;
    stream!.on("data", (d: Buffer) => (total += d.length));
    stream!.resume();
    await waitFor(() => total >= 200 * 32 * 1024, "all data after resuming", 10_000);
    peer.close();
    server.close();
  });

  it("refuses streams beyond maxConcurrentStreams with REFUSED_STREAM", async () => {
    const { server } = sessionServer({ maxConcurrentStreams: 3 });
    const port = await listen(server);
    const peer = await SpdyPeer.connect(port);
    for (let id = 1; id <= 9; id += 2) await peer.synStream(id, spdyHeaders({ a: "b" }));
    await peer.until((p) => p.of("syn_reply").length + p.of("rst_stream").length === 5);
    assert.deepEqual(
      peer.of("syn_reply").map((f) => f.streamId),
      [1, 3, 5],
    );
    assert.deepEqual(
      peer.of("rst_stream").map((f) => [f.streamId, f.status]),
      [
        [7, RstStatus.REFUSED_STREAM],
        [9, RstStatus.REFUSED_STREAM],
      ],
    );
    peer.write(encodeData(1, Buffer.alloc(0), true));
    peer.close();
    server.close();
  });
});
