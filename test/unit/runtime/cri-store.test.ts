// The state store: records survive a reopen, writes are atomic, interrupted writes and
// unreadable files do not stop vmlet from starting.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { RecordStore } from "../../../src/runtime/store/record-store";
import { writeFileAtomic } from "../../../src/util/atomic-file";

interface Thing {
  id: string;
  n: number;
}

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), "vmlet-store-"));
}

describe("state store", () => {
  test("a record put is on disk and comes back after a reopen", async () => {
    const dir = tmp();
    const a = await RecordStore.open<Thing>("thing", dir);
    await a.put({ id: "one", n: 1 });
    await a.put({ id: "two", n: 2 });
    await a.put({ id: "one", n: 11 });
    await a.delete("two");
    await a.delete("two");
    const b = await RecordStore.open<Thing>("thing", dir);
    assert.deepEqual(b.list(), [{ id: "one", n: 11 }]);
    assert.deepEqual(fs.readdirSync(dir), ["one.json"]);
  });

  test("what get returns is a copy: changing it changes nothing until put", async () => {
    const s = await RecordStore.open<Thing>("thing", tmp());
    await s.put({ id: "x", n: 1 });
    const r = s.get("x");
    if (r) r.n = 99;
    assert.equal(s.get("x")?.n, 1);
  });

  test("ids that could leave the directory are refused", async () => {
    const s = await RecordStore.open<Thing>("thing", tmp());
    await assert.rejects(s.put({ id: "../escape", n: 1 }), /thing "\.\.\/escape": invalid id/);
    await assert.rejects(s.put({ id: "", n: 1 }), /invalid id/);
  });

  test("a write interrupted before its rename leaves the old record and a temp file, removed on open", async () => {
    const dir = tmp();
    const s = await RecordStore.open<Thing>("thing", dir);
    await s.put({ id: "x", n: 1 });
    fs.writeFileSync(path.join(dir, ".x.json.deadbeef.tmp"), '{"id":"x","n":');
    const again = await RecordStore.open<Thing>("thing", dir);
    assert.equal(again.get("x")?.n, 1);
    assert.deepEqual(fs.readdirSync(dir), ["x.json"]);
  });

  test("an unreadable record is reported and skipped, not fatal", async () => {
    const dir = tmp();
    fs.writeFileSync(path.join(dir, "bad.json"), "{not json");
    fs.writeFileSync(path.join(dir, "other.json"), '{"id":"mismatch","n":1}');
    const s = await RecordStore.open<Thing>("thing", dir);
    assert.equal(s.list().length, 0);
    assert.equal(s.unreadable.length, 2);
    assert.match(s.unreadable.map((u) => u.error).join(";"), /id does not match/);
  });

  test("writeFileAtomic replaces the whole file and leaves no temp file", async () => {
    const dir = tmp();
    const file = path.join(dir, "f");
    await writeFileAtomic(file, "first");
    await writeFileAtomic(file, "second");
    assert.equal(fs.readFileSync(file, "utf8"), "second");
    assert.deepEqual(fs.readdirSync(dir), ["f"]);
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  });
});

describe("state dir", () => {
  test("a state dir too deep for QEMU's unix sockets is refused up front, with the numbers", async () => {
    const { checkStateDirDepth } = await import("../../../src/runtime/store");
    checkStateDirDepth("/var/lib/vmlet");
    assert.throws(
      () => checkStateDirDepth(`/${"d".repeat(80)}`),
      /too deep for QEMU's unix sockets .* of 108 bytes/,
    );
  });
});
