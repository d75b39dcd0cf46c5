// The tapmanager's admission limit: no more than `limit` pod networks are built at once,
// the rest start in the order they came, and a failing one frees its slot.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Limiter } from "../../../src/util/limiter";

describe("limiter", () => {
  it("runs at most `limit` tasks at once, the others in arrival order, failures included", async () => {
    const limiter = new Limiter(3);
    let running = 0;
    let peak = 0;
    const started: number[] = [];
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) =>
        limiter.run(async () => {
          started.push(i);
          running++;
          peak = Math.max(peak, running);
          await new Promise((r) => setTimeout(r, 1 + (i % 4)));
          running--;
          if (i % 5 === 0) throw new Error(`task ${i} fails`);
          return i;
        }),
      ),
    );
    assert.equal(peak, 3);
    assert.deepEqual(
      started,
      Array.from({ length: 20 }, (_, i) => i),
    );
    assert.equal(results.filter((r) => r.status === "rejected").length, 4);
    // Every slot came back: a fourth task now starts at once.
    let ran = false;
    await limiter.run(async () => {
      ran = true;
    });
    assert.ok(ran);
  });

  it("refuses a limit that is not a positive integer", () => {
    assert.throws(() => new Limiter(0), /limit 0 is not a positive integer/);
  });
});
