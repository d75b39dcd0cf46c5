// What a server attaches after its start (the DHCP reply caches): stopped if not begun,
// waited for and detached if under way, logged and forgotten if it fails.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DeferredAttach } from "../../../src/util/deferred-attach";

function fake() {
  const events: string[] = [];
  const made = { detach: async () => void events.push("detached") };
  return { events, made };
}

describe("DeferredAttach", () => {
  it("attaches a turn later, not within the call", async () => {
    const { events, made } = fake();
    const pending = DeferredAttach.later(
      async () => {
        events.push("attached");
        return made;
      },
      (e) => events.push(`error ${e}`),
    );
    assert.deepEqual(events, []);
    assert.equal(pending.current, undefined);
    assert.equal(await pending.whenSettled(), true);
    assert.deepEqual(events, ["attached"]);
    assert.equal(pending.current, made);
    await pending.detach();
    assert.deepEqual(events, ["attached", "detached"]);
    assert.equal(pending.current, undefined);
  });

  it("never begins when detached first", async () => {
    const { events, made } = fake();
    const pending = DeferredAttach.later(
      async () => {
        events.push("attached");
        return made;
      },
      (e) => events.push(`error ${e}`),
    );
    await pending.detach();
    assert.deepEqual(events, []);
    assert.equal(await pending.whenSettled(), false);
  });

  it("detaches what an attach under way makes, once it is made", async () => {
    const { events, made } = fake();
    let finish: () => void = () => {};
    const pending = DeferredAttach.later(
      async () => {
        events.push("attaching");
        await new Promise<void>((resolve) => {
          finish = resolve;
        });
        events.push("attached");
        return made;
      },
      (e) => events.push(`error ${e}`),
    );
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(events, ["attaching"]);
    const detached = pending.detach();
    finish();
    await detached;
    assert.deepEqual(events, ["attaching", "attached", "detached"]);
    assert.equal(pending.current, undefined);
  });

  it("holds one attached already, and detaches it", async () => {
    const { events, made } = fake();
    const slot = DeferredAttach.now(made);
    assert.equal(slot.current, made);
    assert.equal(await slot.whenSettled(), true);
    await slot.detach();
    assert.deepEqual(events, ["detached"]);
  });

  it("reports a failed attach, and detach() then has nothing to do", async () => {
    const { events } = fake();
    const pending = DeferredAttach.later(
      async (): Promise<{ detach(): Promise<void> }> => {
        throw new Error("verifier said no");
      },
      (e) => events.push(`error ${(e as Error).message}`),
    );
    assert.equal(await pending.whenSettled(), false);
    await pending.detach();
    assert.deepEqual(events, ["error verifier said no"]);
  });
});
