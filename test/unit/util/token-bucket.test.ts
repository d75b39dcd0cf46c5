// The replies a flooding guest can get: a burst of perSecond, then perSecond a second.
import assert from "node:assert/strict";
import { test } from "node:test";
import { countDrop } from "../../../src/util/drop-log";
import { TokenBucket } from "../../../src/util/token-bucket";

test("a token bucket gives a burst, then refills at its rate and never past its size", () => {
  const clock = { t: 0 };
  const bucket = new TokenBucket(10, () => clock.t);
  const takes = (n: number) =>
    Array.from({ length: n }, () => bucket.take()).filter(Boolean).length;
  assert.equal(takes(15), 10, "the burst");
  clock.t += 300;
  assert.equal(takes(5), 3, "3 tokens back after 300 ms");
  clock.t += 60_000;
  assert.equal(takes(50), 10, "a long quiet spell refills only to the burst");
});

test("a drop is counted by reason; only the first of each reason is a warning", () => {
  const lines: string[] = [];
  const log = {
    warn: (f: object, m: string) => lines.push(`warn ${m} ${JSON.stringify(f)}`),
    debug: (f: object, m: string) => lines.push(`debug ${m} ${JSON.stringify(f)}`),
  };
  const dropped: Partial<Record<"malformed" | "rate-limited", number>> = {};
  countDrop(dropped, "malformed", log, { where: "br0" }, "DHCP drop");
  countDrop(dropped, "malformed", log, { where: "br0" }, "DHCP drop");
  countDrop(dropped, "rate-limited", log, { where: "br0" }, "DHCP drop");
  assert.deepEqual(dropped, { malformed: 2, "rate-limited": 1 });
  assert.deepEqual(lines, [
    'warn DHCP drop {"where":"br0","reason":"malformed"}',
    'debug DHCP drop {"where":"br0","reason":"malformed"}',
    'warn DHCP drop {"where":"br0","reason":"rate-limited"}',
  ]);
});
