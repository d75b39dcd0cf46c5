import assert from "node:assert/strict";
import { describe, it } from "node:test";
import zlib from "node:zlib";
import {
  HeaderBlockError,
  HeaderCompressionError,
  HeaderDeflater,
  HeaderInflater,
  parseHeaderBlock,
  SPDY3_DICTIONARY,
  serializeHeaderBlock,
  spdyHeaders,
} from "../../../src/runtime/streaming/spdy/header-block";

function adler32(b: Buffer): number {
  let a = 1;
  let s = 0;
  for (const x of b) {
    a = (a + x) % 65521;
    s = (s + a) % 65521;
  }
  return ((s << 16) | a) >>> 0;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}

function pair(name: string, value: string): Buffer {
  return Buffer.concat([
    u32(name.length),
    Buffer.from(name),
    u32(value.length),
    Buffer.from(value),
  ]);
}

describe("SPDY/3 header blocks", () => {
  it("uses the SPDY/3 dictionary (1423 bytes, the zlib dictionary id peers check)", () => {
    assert.equal(SPDY3_DICTIONARY.length, 1423);
    assert.equal(adler32(SPDY3_DICTIONARY), 3821447106);
  });

  it("round-trips names, multi-values and empty values with 32-bit counts and lengths", () => {
    const h = spdyHeaders({ streamType: "error", port: ["80", "443"], empty: "" });
    const raw = serializeHeaderBlock(h);
    assert.equal(raw.readUInt32BE(0), 3);
    assert.deepEqual(
      parseHeaderBlock(raw),
      new Map([
        ["streamtype", ["error"]],
        ["port", ["80", "443"]],
        ["empty", [""]],
      ]),
    );
  });

  for (const [name, block] of [
    ["an uppercase name", Buffer.concat([u32(1), pair("streamType", "error")])],
    ["a duplicate name", Buffer.concat([u32(2), pair("a", "1"), pair("a", "2")])],
    ["bytes after the last pair", Buffer.concat([u32(1), pair("a", "1"), Buffer.from([0])])],
    ["a count larger than the block", Buffer.concat([u32(0x7fffffff), pair("a", "1")])],
    ["a value length past the end", Buffer.concat([u32(1), u32(1), Buffer.from("a"), u32(100)])],
    ["an empty name", Buffer.concat([u32(1), pair("", "x")])],
  ] as const) {
    it(`refuses ${name}`, () => assert.throws(() => parseHeaderBlock(block), HeaderBlockError));
  }

  it("keeps one zlib context per direction: a repeated block compresses smaller", async () => {
    const def = new HeaderDeflater();
    const inf = new HeaderInflater(16 * 1024);
    const h = spdyHeaders({ streamtype: "stdout", requestid: "12345" });
    const first = await def.deflateBlock(h);
    const second = await def.deflateBlock(h);
    assert.ok(second.length < first.length, `${second.length} < ${first.length}`);
    assert.deepEqual(parseHeaderBlock(await inf.inflateBlock(first)), h);
    assert.deepEqual(parseHeaderBlock(await inf.inflateBlock(second)), h);
    // A peer's own zlib stream with the dictionary (how Go's framer writes) inflates too.
    const go = zlib.deflateSync(serializeHeaderBlock(h), { dictionary: SPDY3_DICTIONARY });
    assert.deepEqual(parseHeaderBlock(await new HeaderInflater(1024).inflateBlock(go)), h);
    def.close();
    inf.close();
  });

  it("stops a zlib bomb at the inflate cap", async () => {
    const bomb = zlib.deflateSync(
      Buffer.concat([u32(1), u32(1), Buffer.from("a"), u32(4 << 20), Buffer.alloc(4 << 20)]),
      { dictionary: SPDY3_DICTIONARY },
    );
    assert.ok(bomb.length < 10_000);
    const inf = new HeaderInflater(16 * 1024);
    await assert.rejects(inf.inflateBlock(bomb), HeaderCompressionError);
    // The context is dead afterwards: the session closes the connection.
    await assert.rejects(inf.inflateBlock(Buffer.from([1])), HeaderCompressionError);
  });

  it("rejects a block that is not zlib", async () => {
    await assert.rejects(
      new HeaderInflater(1024).inflateBlock(Buffer.from("not zlib at all")),
      HeaderCompressionError,
    );
  });
});
