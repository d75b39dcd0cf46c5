import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  encodeData,
  encodeGoaway,
  encodeHeaders,
  encodePing,
  encodeRstStream,
  encodeSettings,
  encodeSynReply,
  encodeSynStream,
  encodeWindowUpdate,
  FLAG_FIN,
  type Frame,
  FrameDecoder,
  SpdyFrameError,
} from "../../../src/runtime/streaming/spdy/frames";
import { rng } from "../../harness/rng";

const limits = { maxControlFrameBytes: 4096 };

/** Data pieces of one frame merged back, so byte-at-a-time and whole-buffer decodes compare equal. */
function merge(frames: Frame[]): Frame[] {
  const out: Frame[] = [];
  for (const f of frames) {
    const prev = out[out.length - 1];
    if (f.type === "data" && !f.first && prev?.type === "data" && prev.streamId === f.streamId) {
      out[out.length - 1] = { ...prev, data: Buffer.concat([prev.data, f.data]), fin: f.fin };
    } else out.push(f.type === "data" ? { ...f, data: Buffer.from(f.data) } : f);
  }
  return out;
}

const wire = Buffer.concat([
  encodeSynStream(1, FLAG_FIN, Buffer.from("hdrs"), 0, 3),
  encodeSynReply(2, 0, Buffer.from("r")),
  encodeHeaders(3, FLAG_FIN, Buffer.from("hh")),
  encodeData(1, Buffer.from("hello world"), false),
  encodeData(1, Buffer.alloc(0), true),
  encodeRstStream(5, 5),
  encodeSettings([{ flags: 0, id: 7, value: 1 << 20 }]),
  encodePing(7),
  encodeGoaway(9, 1),
  encodeWindowUpdate(0, 1000),
  encodeWindowUpdate(3, 5),
]);

describe("SPDY/3.1 frame codec", () => {
  it("decodes every frame type it encodes, whole or one byte at a time", () => {
    const whole = merge(new FrameDecoder(limits).decode(wire));
    assert.deepEqual(
      whole.map((f) => f.type),
      [
        "syn_stream",
        "syn_reply",
        "headers",
        "data",
        "data",
        "rst_stream",
        "settings",
        "ping",
        "goaway",
        "window_update",
        "window_update",
      ],
    );
    assert.deepEqual(whole[0], {
      type: "syn_stream",
      streamId: 1,
      associatedId: 0,
      priority: 3,
      flags: FLAG_FIN,
      headerBlock: Buffer.from("hdrs"),
    });
    assert.equal((whole[3] as { data: Buffer }).data.toString(), "hello world");
    assert.deepEqual(whole[4], {
      type: "data",
      streamId: 1,
      data: Buffer.alloc(0),
      first: true,
      fin: true,
    });
    assert.deepEqual(whole[6], {
      type: "settings",
      flags: 0,
      entries: [{ flags: 0, id: 7, value: 1 << 20 }],
    });
    assert.deepEqual(whole[8], { type: "goaway", lastGoodStreamId: 9, status: 1 });
    assert.deepEqual(whole[9], { type: "window_update", streamId: 0, delta: 1000 });

    const d = new FrameDecoder(limits);
    const bytewise: Frame[] = [];
    for (let i = 0; i < wire.length; i++) bytewise.push(...d.decode(wire.subarray(i, i + 1)));
    assert.deepEqual(merge(bytewise), whole);
  });

  it("passes a large data frame on in pieces without buffering it whole", () => {
    const d = new FrameDecoder(limits);
    const frame = encodeData(3, Buffer.alloc(100_000, 7), true);
    const pieces: Frame[] = [];
    for (let off = 0; off < frame.length; off += 1000)
      pieces.push(...d.decode(frame.subarray(off, off + 1000)));
    assert.ok(pieces.length > 50);
    const datas = pieces.filter((p) => p.type === "data");
    assert.equal(
      datas.reduce((n, p) => n + (p.type === "data" ? p.data.length : 0), 0),
      100_000,
    );
    assert.deepEqual(
      datas.map((p) => p.type === "data" && p.fin),
      [...Array(datas.length - 1).fill(false), true],
    );
  });

  it("skips control frame types it does not know", () => {
    const unknown = Buffer.from([0x80, 0x03, 0x00, 0x05, 0, 0, 0, 3, 1, 2, 3]); // type 5: NOOP in SPDY/2
    const frames = new FrameDecoder(limits).decode(Buffer.concat([unknown, encodePing(1)]));
    assert.deepEqual(frames, [{ type: "ping", id: 1 }]);
  });

  for (const [name, bytes] of [
    ["a control frame of version 2", Buffer.from([0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1])],
    ["a data frame on stream 0", encodeData(0, Buffer.from("x"), false)],
    [
      "a RST_STREAM of 7 bytes",
      Buffer.from([0x80, 0x03, 0x00, 0x03, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 1]),
    ],
    ["a RST_STREAM with status 0", encodeRstStream(1, 0)],
    ["a PING of 5 bytes", Buffer.from([0x80, 0x03, 0x00, 0x06, 0, 0, 0, 5, 0, 0, 0, 1, 0])],
    [
      "a SETTINGS count beyond its length",
      Buffer.from([0x80, 0x03, 0x00, 0x04, 0, 0, 0, 4, 0, 0, 0, 9]),
    ],
    ["a WINDOW_UPDATE of delta 0", encodeWindowUpdate(1, 0)],
    ["a SYN_STREAM on stream 0", encodeSynStream(0, 0, Buffer.from("x"))],
    ["a control frame over the size limit", encodeSynStream(1, 0, Buffer.alloc(5000))],
  ] as const) {
    it(`refuses ${name}`, () => {
      assert.throws(() => new FrameDecoder(limits).decode(bytes), SpdyFrameError);
    });
  }

  it("never throws anything but SpdyFrameError on random and mutated input", () => {
    const next = rng(14);
    for (let round = 0; round < 3000; round++) {
      const d = new FrameDecoder(limits);
      let input: Buffer;
      if (round % 2 === 0) {
        input = Buffer.from(wire);
        for (let k = 0; k < 1 + (next() % 6); k++) input[next() % input.length] = next() & 0xff;
      } else {
        input = Buffer.alloc(next() % 64);
        for (let k = 0; k < input.length; k++) input[k] = next() & 0xff;
        if (input.length > 0 && next() % 2) input[0] |= 0x80;
      }
      try {
        let off = 0;
        while (off < input.length) {
          const n = 1 + (next() % 17);
          d.decode(input.subarray(off, off + n));
          off += n;
        }
      } catch (e) {
        assert.ok(e instanceof SpdyFrameError, `round ${round}: ${String(e)}`);
      }
    }
  });
});
