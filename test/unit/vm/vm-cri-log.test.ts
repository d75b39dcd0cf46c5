import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import {
  CriLineSplitter,
  CriLogWriter,
  type CriPiece,
  formatCriLine,
  rfc3339Nano,
} from "../../../src/runtime/vm/cri-log";

const text = (pieces: CriPiece[]) => pieces.map((p) => `${p.tag}:${p.text.toString()}`);

/** What kubelet does when it reads the log: P pieces joined to the F that ends them. */
function kubeletLines(log: string): string[] {
  const lines: string[] = [];
  let partial = "";
  for (const line of log.split("\n").filter(Boolean)) {
    const match = /^(\S+) (stdout|stderr) ([PF]) (.*)$/.exec(line);
    assert.ok(match, `a CRI log line: ${line}`);
    assert.ok(!Number.isNaN(Date.parse(match[1]!)), `an RFC 3339 time: ${match[1]}`);
    partial += match[4];
    if (match[3] === "F") {
      lines.push(partial);
      partial = "";
    }
  }
  return lines;
}

describe("the CRI log format", () => {
  it("writes timestamps as Go's RFC3339Nano in UTC (nanoseconds, trailing zeros dropped)", () => {
    const at = BigInt(Date.UTC(2016, 9, 6, 0, 17, 9)) * 1_000_000n + 669_794_202n;
    assert.equal(rfc3339Nano(at), "2016-10-06T00:17:09.669794202Z");
    assert.equal(rfc3339Nano(at - 2n), "2016-10-06T00:17:09.6697942Z");
    assert.equal(rfc3339Nano(at - 669_794_202n), "2016-10-06T00:17:09Z");
  });

  it("formats a line as time, stream, tag and text", () => {
    const at = BigInt(Date.UTC(2016, 9, 6, 0, 17, 9)) * 1_000_000n + 669_794_202n;
    const line = formatCriLine(at, "stdout", { tag: "F", text: Buffer.from("hello world") });
    assert.equal(line.toString(), "2016-10-06T00:17:09.669794202Z stdout F hello world\n");
  });

  it("ends complete lines with F and drops the CR of a console's CR LF", () => {
    const s = new CriLineSplitter(100);
    assert.deepEqual(text(s.push(Buffer.from("one\r\ntwo\nthr"))), ["F:one", "F:two"]);
    assert.equal(s.pendingBytes, 3);
    assert.deepEqual(text(s.push(Buffer.from("ee\r\n"))), ["F:three"]);
    assert.deepEqual(text(s.push(Buffer.from("\n"))), ["F:"]);
  });

  it("cuts a line longer than the maximum into P pieces and the F piece that ends it", () => {
    const s = new CriLineSplitter(4);
    assert.deepEqual(text(s.push(Buffer.from("abcd\n"))), ["F:abcd"]);
    assert.deepEqual(text(s.push(Buffer.from("abcdefghij\n"))), ["P:abcd", "P:efgh", "F:ij"]);
    // Still arriving: full pieces are written at once, the rest waits for more.
    assert.deepEqual(text(s.push(Buffer.from("0123456789"))), ["P:0123", "P:4567"]);
    assert.deepEqual(text(s.push(Buffer.from("\n"))), ["F:89"]);
  });

  it("flushes an unfinished line (a prompt) as P, and ends it with F at the end of the stream", () => {
    const s = new CriLineSplitter(100);
    assert.deepEqual(text(s.push(Buffer.from("login: "))), []);
    assert.deepEqual(text(s.flushPartial()), ["P:login: "]);
    assert.deepEqual(text(s.push(Buffer.from("root\nlast words"))), ["F:root"]);
    assert.deepEqual(text(s.end()), ["F:last words"]);
    assert.deepEqual(s.end(), []);
  });

  it("gives the same lines, in pieces of at most the maximum, however the stream is cut", () => {
    const max = 8;
    let seed = 42;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let round = 0; round < 500; round++) {
      const text = Array.from({ length: rand(120) }, () => "ab\r\n"[rand(4)]).join("");
      const splitter = new CriLineSplitter(max);
      const pieces: CriPiece[] = [];
      const data = Buffer.from(text);
      for (let at = 0; at < data.length; ) {
        const n = 1 + rand(3 * max);
        pieces.push(...splitter.push(data.subarray(at, at + n)));
        at += n;
      }
      pieces.push(...splitter.end());
      const lines: string[] = [];
      let line = "";
      for (const piece of pieces) {
        assert.ok(piece.text.length <= max, JSON.stringify(text));
        line += piece.text.toString();
        if (piece.tag === "F") {
          lines.push(line);
          line = "";
        }
      }
      // Whole lines lose the CR of a CR LF; an unfinished last line is ended as it is.
      const segments = text.split("\n");
      const last = segments.pop() ?? "";
      const expected = segments.map((l) => (l.endsWith("\r") ? l.slice(0, -1) : l));
      if (last !== "") expected.push(last);
      assert.deepEqual(lines, expected, JSON.stringify(text));
    }
  });

  it("appends to the log, and after kubelet renames it, reopenLog writes to a new file at the path", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vm-cri-log-"));
    try {
      const logPath = path.join(dir, "pods", "c", "0.log");
      const writer = await CriLogWriter.open(logPath);
      await writer.write([
        { tag: "P", text: Buffer.from("a long ") },
        { tag: "F", text: Buffer.from("line") },
      ]);
      fs.renameSync(logPath, `${logPath}.1`);
      await writer.write([{ tag: "F", text: Buffer.from("still old") }]);
      await writer.reopen();
      await writer.write([{ tag: "F", text: Buffer.from("new") }]);
      await writer.close();
      assert.deepEqual(kubeletLines(fs.readFileSync(`${logPath}.1`, "utf8")), [
        "a long line",
        "still old",
      ]);
      assert.deepEqual(kubeletLines(fs.readFileSync(logPath, "utf8")), ["new"]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("never writes through a symlink at the log path, on open or on reopen after a rotation", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cri-log-link-"));
    try {
      const target = path.join(dir, "shadow");
      fs.writeFileSync(target, "root:secret\n");
      const log = path.join(dir, "0.log");
      fs.symlinkSync(target, log);
      await assert.rejects(CriLogWriter.open(log), /CRI log .*0\.log is a symlink: not followed/);
      fs.rmSync(log);
      const writer = await CriLogWriter.open(log);
      fs.renameSync(log, `${log}.1`); // kubelet rotates; something plants a link meanwhile
      fs.symlinkSync(target, log);
      await assert.rejects(writer.reopen(), /is a symlink: not followed/);
      await writer.write([{ tag: "F", text: Buffer.from("still to the open file") }]);
      await writer.close();
      assert.equal(fs.readFileSync(target, "utf8"), "root:secret\n");
      assert.match(fs.readFileSync(`${log}.1`, "utf8"), /stdout F still to the open file\n$/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
