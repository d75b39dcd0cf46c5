import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { expectedStreams } from "../../../src/runtime/streaming/remotecommand";
import { ResizeDecoder, ResizeParseError } from "../../../src/runtime/streaming/resize";
import { TokenCache, TokensExhaustedError } from "../../../src/runtime/streaming/tokens";

describe("streaming tokens", () => {
  it("are 8 base64url characters, single use", () => {
    const c = new TokenCache<string>();
    const t = c.insert("req");
    assert.match(t, /^[A-Za-z0-9_-]{8}$/);
    assert.equal(c.consume(t), "req");
    assert.equal(c.consume(t), undefined);
    assert.equal(c.consume("nonsense"), undefined);
  });

  it("expire after one minute", () => {
    let now = 1_000_000;
    const c = new TokenCache<number>({ now: () => now });
    const old = c.insert(1);
    now += 30_000;
    const young = c.insert(2);
    now += 30_001;
    assert.equal(c.consume(old), undefined, "61 s old");
    assert.equal(c.consume(young), 2, "31 s old");
  });

  it("refuse the 1001st request in flight with RESOURCE_EXHAUSTED, and free room as tokens are used or expire", () => {
    let now = 0;
    const c = new TokenCache<number>({ now: () => now });
    const tokens = Array.from({ length: 1000 }, (_, i) => c.insert(i));
    assert.equal(new Set(tokens).size, 1000);
    assert.throws(
      () => c.insert(1000),
      (e: unknown) => e instanceof TokensExhaustedError && e.grpcCode === 8,
    );
    c.consume(tokens[0]);
    c.insert(1000);
    now += 60_001;
    assert.equal(c.size, 0);
  });
});

describe("remotecommand expected streams", () => {
  it("waits for resize only on a tty with v3 or later", () => {
    const o = { stdin: true, stdout: true, stderr: false, tty: true };
    assert.deepEqual(expectedStreams("v4.channel.k8s.io", o), [
      "error",
      "stdin",
      "stdout",
      "resize",
    ]);
    assert.deepEqual(expectedStreams("v2.channel.k8s.io", o), ["error", "stdin", "stdout"]);
    assert.deepEqual(expectedStreams("v5.channel.k8s.io", { ...o, tty: false, stderr: true }), [
      "error",
      "stdin",
      "stdout",
      "stderr",
    ]);
  });
});

describe("resize stream", () => {
  it("splits back-to-back JSON objects, across chunk boundaries", () => {
    const d = new ResizeDecoder();
    const wire = '{"Width":80,"Height":24}\n{"Width":132,"Height":43}{"Height":1,"Width":2}';
    const got = [];
    for (const ch of wire) got.push(...d.push(Buffer.from(ch)));
    assert.deepEqual(got, [
      { width: 80, height: 24 },
      { width: 132, height: 43 },
      { width: 2, height: 1 },
    ]);
  });

  for (const [name, text] of [
    ["a negative width", '{"Width":-1,"Height":2}'],
    ["a width beyond uint16", '{"Width":70000,"Height":2}'],
    ["a missing height", '{"Width":1}'],
    ["text between objects", '{"Width":1,"Height":1} x'],
    ["an unbalanced brace", "}"],
    ["an endless object", `{"Width":${"1".repeat(5000)}`],
  ] as const) {
    it(`refuses ${name}`, () =>
      assert.throws(() => new ResizeDecoder().push(Buffer.from(text)), ResizeParseError));
  }
});
