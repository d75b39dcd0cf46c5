// The CRI socket's HTTP/2 rewriter between a real nghttp2 client (Node's http2) and a
// real nghttp2 server: every request reaches the server with :authority "localhost" and
// its other headers intact, whatever the client's HPACK does; malformed input is refused.
import assert from "node:assert/strict";
import http2 from "node:http2";
import { Duplex } from "node:stream";
import { describe, it } from "node:test";
import { ClientStreamRewriter, H2FrameError } from "../../../src/runtime/cri/h2-rewriter";
import {
  encodeStateless,
  HpackDecoder,
  HpackError,
  huffmanDecode,
} from "../../../src/runtime/cri/hpack";

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const hex = (s: string) => Buffer.from(s.replace(/\s/g, ""), "hex");

function frame(type: number, flags: number, streamId: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(streamId, 5);
  return Buffer.concat([header, payload]);
}

interface Received {
  headers: http2.IncomingHttpHeaders;
  body: string;
}

/**
 * A Node http2 client and server joined through a rewriter. `split` cuts what the client
 * writes into pieces of that many octets before the rewriter sees them.
 */
function joined(
  options: {
    split?: number;
    client?: http2.ClientSessionOptions;
    server?: http2.ServerOptions;
  } = {},
) {
  const received: Received[] = [];
  const authorities: (string | undefined)[] = [];
  const rewriter = new ClientStreamRewriter({
    onRequest: (seen) => authorities.push(seen.original),
  });
  let serverSide: Duplex | undefined;
  const sent: Buffer[] = [];
  const clientSide: Duplex = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      sent.push(Buffer.from(chunk));
      const size = options.split ?? chunk.length;
      for (let i = 0; i < chunk.length; i += size) {
        for (const out of rewriter.push(chunk.subarray(i, i + size))) serverSide?.push(out);
      }
      callback();
    },
  });
  serverSide = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      clientSide.push(chunk);
      callback();
    },
  });
  const server = http2.createServer(options.server ?? {});
  server.on("stream", (stream, headers) => {
    let body = "";
    stream.on("data", (d: Buffer) => {
      body += d.toString();
    });
    stream.on("end", () => {
      received.push({ headers, body });
      stream.respond({ ":status": 200 });
      stream.end(`ok ${headers[":path"]}`);
    });
  });
  server.emit("connection", serverSide);
  const client = http2.connect("http://localhost", {
    ...options.client,
    createConnection: () => clientSide,
  });
  const request = (headers: http2.OutgoingHttpHeaders, body = "", requestOptions = {}) =>
    new Promise<string>((resolve, reject) => {
      const req = client.request({ ":method": "POST", ...headers }, requestOptions);
      let answer = "";
      req.on("data", (d: Buffer) => {
        answer += d.toString();
      });
      req.on("end", () => resolve(answer));
      req.on("error", reject);
      req.end(body);
    });
  const close = () => {
    client.destroy();
    server.close();
  };
  /** Type and flags of each frame the client sent. */
  const frames = () => {
    const all = Buffer.concat(sent);
    const out: { type: number; flags: number }[] = [];
    for (let i = PREFACE.length; i + 9 <= all.length; i += 9 + all.readUIntBE(i, 3)) {
      out.push({ type: all[i + 3], flags: all[i + 4] });
    }
    return out;
  };
  return { request, received, authorities, rewriter, frames, sentBytes: () => sent, close };
}

const GRPC_HEADERS = {
  "content-type": "application/grpc",
  te: "trailers",
  "user-agent": "grpc-go/1.33.3",
};

describe("HPACK", () => {
  it("decodes the RFC 7541 C.3 requests, dynamic table included", () => {
    const d = new HpackDecoder();
    const first = d.decode(hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"), 1 << 16);
    assert.deepEqual(
      first.map((f) => [f.name, f.value]),
      [
        [":method", "GET"],
        [":scheme", "http"],
        [":path", "/"],
        [":authority", "www.example.com"],
      ],
    );
    const second = d.decode(hex("8286 84be 5808 6e6f 2d63 6163 6865"), 1 << 16);
    assert.deepEqual(second.at(3), {
      name: ":authority",
      value: "www.example.com",
      neverIndex: false,
    });
    assert.deepEqual(second.at(4), { name: "cache-control", value: "no-cache", neverIndex: false });
    assert.equal(d.tableSize, 110);
  });

  it("decodes Huffman strings (RFC 7541 C.4.1) and refuses bad padding", () => {
    assert.equal(huffmanDecode(hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")), "www.example.com");
    assert.throws(() => huffmanDecode(hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff ff")), HpackError);
    assert.throws(() => huffmanDecode(hex("f1e3 c2e5 f23a 6ba0 ab90 f4fe")), HpackError);
  });

  it("honours table size updates: to 0 empties the table, above the limit is refused", () => {
    const d = new HpackDecoder(4096);
    d.decode(hex("4103 6162 63"), 1 << 16); // :authority "abc", indexed
    assert.equal(d.tableLength, 1);
    d.decode(hex("20 3fe1 1f"), 1 << 16); // size 0, then 4096 again
    assert.equal(d.tableLength, 0);
    assert.throws(() => d.decode(hex("be"), 1 << 16), /past the dynamic table/);
    assert.throws(() => d.decode(hex("3fe2 1f"), 1 << 16), /exceeds the limit 4096/);
    assert.throws(() => d.decode(hex("82 20"), 1 << 16), /after a header/);
  });

  it("encodes statelessly: what it writes decodes the same and adds nothing to a table", () => {
    const fields = [
      { name: ":method", value: "POST", neverIndex: false },
      { name: ":authority", value: "localhost", neverIndex: false },
      { name: "x-custom", value: "v".repeat(300), neverIndex: false },
      { name: "authorization", value: "secret", neverIndex: true },
    ];
    const d = new HpackDecoder();
    assert.deepEqual(d.decode(encodeStateless(fields), 1 << 16), fields);
    assert.equal(d.tableLength, 0);
  });
});

describe("HTTP/2 authority rewriter", () => {
  it("a client sending the socket path reaches the server as localhost, headers intact, request after request", async () => {
    const j = joined();
    try {
      for (let i = 0; i < 5; i++) {
        const answer = await j.request(
          {
            ":path": `/runtime.v1.RuntimeService/Call${i % 2}`,
            ":authority": "/run/vmlet/vmlet.sock",
            ...GRPC_HEADERS,
            "x-request": `n${i}`,
          },
          `body ${i}`,
        );
        assert.equal(answer, `ok /runtime.v1.RuntimeService/Call${i % 2}`);
      }
      assert.deepEqual(
        j.received.map((r) => [r.headers[":authority"], r.headers["x-request"], r.body]),
        [0, 1, 2, 3, 4].map((i) => ["localhost", `n${i}`, `body ${i}`]),
      );
      assert.equal(j.received[4].headers["user-agent"], "grpc-go/1.33.3");
      assert.ok(j.rewriter.isRewriting);
      assert.deepEqual(j.authorities, Array(5).fill("/run/vmlet/vmlet.sock"));
    } finally {
      j.close();
    }
  });

  it("localhost passes byte for byte until a request needs the rewrite, then every block is re-encoded", async () => {
    const j = joined();
    try {
      await j.request({ ":path": "/a", ":authority": "localhost", ...GRPC_HEADERS, "x-k": "same" });
      assert.equal(j.rewriter.isRewriting, false);
      // This one's fields refer to entries the first added to both tables.
      await j.request({
        ":path": "/a",
        ":authority": "%2Frun%2Fvmlet.sock",
        ...GRPC_HEADERS,
        "x-k": "same",
      });
      assert.ok(j.rewriter.isRewriting);
      await j.request({ ":path": "/a", ":authority": "localhost", ...GRPC_HEADERS, "x-k": "same" });
      assert.deepEqual(
        j.received.map((r) => [r.headers[":authority"], r.headers["x-k"]]),
        [
          ["localhost", "same"],
          ["localhost", "same"],
          ["localhost", "same"],
        ],
      );
      assert.deepEqual(j.authorities, ["localhost", "%2Frun%2Fvmlet.sock", "localhost"]);
    } finally {
      j.close();
    }
  });

  it("input cut at every octet, padded DATA and a block spread over CONTINUATION frames", async () => {
    const j = joined({
      split: 1,
      client: { paddingStrategy: http2.constants.PADDING_STRATEGY_MAX },
      server: { settings: { maxHeaderListSize: 1 << 20 } },
    });
    try {
      const big = "x".repeat(40_000); // more than two 16 KiB frames
      await j.request({ ":path": "/big", ":authority": "", "x-big": big }, "padded body");
      await j.request({ ":path": "/small", ":authority": "", "x-big": big });
      assert.equal(j.received[0].headers["x-big"], big);
      assert.equal(j.received[0].headers[":authority"], "localhost");
      assert.equal(j.received[0].body, "padded body");
      assert.equal(j.received[1].headers[":path"], "/small");
      assert.deepEqual(j.authorities, ["", ""]);
      // What the client sent really was padded (nghttp2 pads DATA; padded HEADERS are
      // the hand-made case below) and spread over CONTINUATION frames.
      const sent = j.frames();
      assert.ok(sent.some((f) => f.type === 0 && f.flags & 0x8));
      assert.ok(sent.some((f) => f.type === 9));
    } finally {
      j.close();
    }
  });

  it("a table size the server lowers is followed through the client's size update", async () => {
    const j = joined({ server: { settings: { headerTableSize: 64 } } });
    try {
      for (let i = 0; i < 4; i++) {
        await j.request({
          ":path": `/p${i}`,
          ":authority": "/s.sock",
          "x-long": "y".repeat(40 + i),
        });
      }
      assert.deepEqual(
        j.received.map((r) => [r.headers[":path"], r.headers[":authority"], r.headers["x-long"]]),
        [0, 1, 2, 3].map((i) => [`/p${i}`, "localhost", "y".repeat(40 + i)]),
      );
    } finally {
      j.close();
    }
  });

  it("HEADERS with PRIORITY and padding keep their priority and lose their padding", () => {
    const block = encodeStateless([
      { name: ":method", value: "POST", neverIndex: false },
      { name: ":path", value: "/x", neverIndex: false },
      { name: ":authority", value: "/run/vmlet/vmlet.sock", neverIndex: false },
    ]);
    const priority = hex("80000003 0f"); // exclusive on stream 3, weight 16
    const payload = Buffer.concat([Buffer.from([4]), priority, block, Buffer.alloc(4)]);
    const r = new ClientStreamRewriter();
    const out = Buffer.concat(
      r.push(Buffer.concat([PREFACE, frame(1, 0x4 | 0x8 | 0x20 | 0x1, 5, payload)])),
    );
    assert.deepEqual(out.subarray(0, PREFACE.length), PREFACE);
    const f = out.subarray(PREFACE.length);
    assert.equal(f[3], 1);
    assert.equal(f[4], 0x4 | 0x20 | 0x1); // END_HEADERS | PRIORITY | END_STREAM, no PADDED
    assert.equal(f.readUInt32BE(5), 5);
    assert.deepEqual(f.subarray(9, 14), priority);
    const fields = new HpackDecoder().decode(f.subarray(14, 9 + f.readUIntBE(0, 3)), 1 << 16);
    assert.equal(fields.find((x) => x.name === ":authority")?.value, "localhost");
  });

  it("frames other than header blocks pass through as the same bytes", () => {
    const r = new ClientStreamRewriter();
    const input = Buffer.concat([
      PREFACE,
      frame(4, 0, 0, hex("0003 00000064")), // SETTINGS
      frame(8, 0, 0, hex("00010000")), // WINDOW_UPDATE
      frame(0, 0x1, 1, Buffer.from("data")), // DATA
      frame(6, 0, 0, Buffer.alloc(8, 7)), // PING
    ]);
    const pieces = [input.subarray(0, 30), input.subarray(30, 31), input.subarray(31)];
    const out = Buffer.concat(pieces.flatMap((p) => r.push(p)));
    assert.deepEqual(out, input);
  });

  it("malformed input is refused with the reason, and stays refused", () => {
    const headers = (flags: number, payload: Buffer, stream = 1) =>
      frame(1, flags, stream, payload);
    const cases: [string, Buffer, RegExp][] = [
      ["not HTTP/2", Buffer.from("GET / HTTP/1.1\r\n\r\n"), /preface/],
      ["a stray CONTINUATION", frame(9, 0x4, 1, hex("82")), /outside a header block/],
      [
        "a frame inside a header block",
        Buffer.concat([headers(0, hex("82")), frame(0, 0, 1, Buffer.alloc(1))]),
        /inside the header block of stream 1/,
      ],
      ["HEADERS on stream 0", headers(0x4, hex("82"), 0), /stream 0/],
      ["padding past the frame", headers(0x4 | 0x8, hex("09 82")), /padding/],
      ["an index past the tables", headers(0x4, hex("ff00")), /past the dynamic table/],
      ["a header block too large", headers(0, Buffer.alloc(300 * 1024)), /larger than/],
    ];
    for (const [what, bytes, reason] of cases) {
      const r = new ClientStreamRewriter();
      const input = what === "not HTTP/2" ? bytes : Buffer.concat([PREFACE, bytes]);
      assert.throws(
        () => r.push(input),
        (e: Error) => e instanceof H2FrameError && reason.test(e.message),
        what,
      );
      assert.throws(() => r.push(PREFACE), H2FrameError, `${what}: stays refused`);
    }
  });

  it("the client's first SETTINGS ACK is dropped when the front sent its own preface", () => {
    const r = new ClientStreamRewriter({ dropFirstSettingsAck: true });
    const ack = frame(4, 0x1, 0, Buffer.alloc(0));
    const ping = frame(6, 0, 0, Buffer.alloc(8));
    const out = Buffer.concat(r.push(Buffer.concat([PREFACE, ack, ping, ack])));
    assert.deepEqual(out, Buffer.concat([PREFACE, ping, ack]));
    assert.ok(r.firstSettingsAckDropped);
  });

  it("mutated client streams end in output or an H2FrameError, never another throw", async () => {
    // A real client's bytes: preface, SETTINGS, header blocks with Huffman and indexing.
    const j = joined();
    for (let i = 0; i < 3; i++) {
      await j.request({
        ":path": `/m${i}`,
        ":authority": "/run/vmlet/vmlet.sock",
        ...GRPC_HEADERS,
      });
    }
    j.close();
    const stream = Buffer.concat(j.sentBytes());
    let seed = 7;
    const random = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    let refused = 0;
    for (let round = 0; round < 2000; round++) {
      const bytes = Buffer.from(stream);
      for (let k = 0; k < 1 + random(4); k++) {
        bytes[PREFACE.length + random(bytes.length - PREFACE.length)] = random(256);
      }
      const r = new ClientStreamRewriter();
      try {
        // Cut into pieces of random sizes, as a socket delivers them.
        for (let i = 0, step = 0; i < bytes.length; i += step) {
          step = 1 + random(64);
          r.push(bytes.subarray(i, i + step));
        }
      } catch (error) {
        assert.ok(error instanceof H2FrameError, String(error));
        refused++;
      }
    }
    assert.ok(refused > 0);
  });
});
