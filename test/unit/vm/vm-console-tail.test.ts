import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { ConsoleTailer } from "../../../src/runtime/vm/console-tail";
import { CriLogWriter } from "../../../src/runtime/vm/cri-log";

function logLines(logPath: string): string[] {
  if (!fs.existsSync(logPath)) return [];
  return fs
    .readFileSync(logPath, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((line) => {
      const match = /^\S+Z stdout ([PF]) (.*)$/.exec(line);
      assert.ok(match, `a CRI log line: ${line}`);
      return `${match[1]}:${match[2]}`;
    });
}

async function until(what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function withFiles(fn: (raw: string, offset: string, log: string) => Promise<void>) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vm-tail-"));
  try {
    await fn(
      path.join(dir, "console.raw"),
      path.join(dir, "console.offset"),
      path.join(dir, "c.log"),
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function tailer(
  raw: string,
  offsetPath: string,
  log: string,
  partialFlushMs = 200,
  reclaimBytes = 0,
) {
  const writer = await CriLogWriter.open(log);
  const t = await ConsoleTailer.start({
    rawPath: raw,
    offsetPath,
    writer,
    partialFlushMs,
    pollMs: 50,
    reclaimBytes,
    onError: (error) => assert.fail(error),
  });
  return {
    t,
    close: async (final: boolean) => {
      await t.stop(final);
      await writer.close();
    },
  };
}

describe("the console tailer", () => {
  it("follows the raw console as it grows, including a file created after it started", async () => {
    await withFiles(async (raw, offset, log) => {
      const { close } = await tailer(raw, offset, log);
      fs.appendFileSync(raw, "first\r\n");
      await until("first line", () => logLines(log).length === 1);
      fs.appendFileSync(raw, "second\r\nthird\n");
      await until("three lines", () => logLines(log).length === 3);
      await close(false);
      assert.deepEqual(logLines(log), ["F:first", "F:second", "F:third"]);
      assert.equal(
        fs.readFileSync(offset, "utf8").trim(),
        String("first\r\nsecond\r\nthird\n".length),
      );
    });
  });

  it("resumes after a restart at the saved offset: output written meanwhile is logged once", async () => {
    await withFiles(async (raw, offset, log) => {
      const first = await tailer(raw, offset, log);
      fs.appendFileSync(raw, "before\n");
      await until("before", () => logLines(log).length === 1);
      await first.close(false); // vmlet goes away; the guest goes on printing
      fs.appendFileSync(raw, "while away\nunfinished");
      const second = await tailer(raw, offset, log);
      await until("while away", () => logLines(log).length === 2);
      fs.appendFileSync(raw, " line\n");
      await until("the finished line", () => logLines(log).length === 3);
      await second.close(false);
      assert.deepEqual(logLines(log), ["F:before", "F:while away", "F:unfinished line"]);
    });
  });

  it("logs a prompt with no newline as P after a short wait, and the last partial line as F at the end", async () => {
    await withFiles(async (raw, offset, log) => {
      const { close } = await tailer(raw, offset, log, 100);
      fs.appendFileSync(raw, "login: ");
      await until("the prompt", () => logLines(log).length === 1);
      fs.appendFileSync(raw, "root\nbye");
      await until("the answer", () => logLines(log).length === 2);
      await close(true);
      assert.deepEqual(logLines(log), ["P:login: ", "F:root", "F:bye"]);
    });
  });

  it("starts over when the raw file is truncated", async () => {
    await withFiles(async (raw, offset, log) => {
      const { close } = await tailer(raw, offset, log);
      fs.appendFileSync(raw, "a long first line\n");
      await until("first", () => logLines(log).length === 1);
      fs.writeFileSync(raw, "new\n");
      await until("after truncation", () => logLines(log).length === 2);
      await close(false);
      assert.deepEqual(logLines(log), ["F:a long first line", "F:new"]);
    });
  });

  it("frees the disk blocks of console output already logged, keeping offsets valid", async () => {
    await withFiles(async (raw, offset, log) => {
      const { close } = await tailer(raw, offset, log, 200, 64 * 1024);
      const line = `${"x".repeat(1023)}\n`;
      fs.appendFileSync(raw, line.repeat(1024)); // 1 MiB
      await until("every line", () => logLines(log).length === 1024);
      await until("blocks freed", () => fs.statSync(raw).blocks * 512 < 128 * 1024);
      assert.equal(fs.statSync(raw).size, 1024 * 1024, "the size (and so the offsets) unchanged");
      fs.appendFileSync(raw, "after\n");
      await until("a line after the hole", () => logLines(log).length === 1025);
      await close(false);
      assert.equal(logLines(log).at(-1), "F:after");
    });
  });

  it("catches up on a 2 GiB console backlog in bounded chunks: RSS stays under 100 MiB above its baseline", async () => {
    await withFiles(async (raw, offset) => {
      // Sparse: a first and a last line around 2 GiB the guest "wrote" while vmlet was down.
      fs.writeFileSync(raw, "first line\n");
      fs.truncateSync(raw, 2 * GiB - "last line\n".length);
      fs.appendFileSync(raw, "last line\n");
      const result = await catchUp(raw, offset);
      assert.equal(result.saved, 2 * GiB, "the whole backlog is logged and its offset saved");
      assertFlat("2 GiB backlog", result);
    });
  });

  it("catches up on a backlog of four million one-byte lines with RSS under 100 MiB above its baseline", async () => {
    await withFiles(async (raw, offset) => {
      fs.writeFileSync(raw, Buffer.alloc(8 * 1024 * 1024, "x\n"));
      const result = await catchUp(raw, offset);
      assert.equal(result.saved, 8 * 1024 * 1024);
      assertFlat("4 Mi one-byte lines", result);
    });
  });
});

const GiB = 2 ** 30;

interface CatchUp {
  baselineKiB: number;
  peakKiB: number;
  ms: number;
  saved: number;
}

/** Runs the tailer over `raw` in a child process (CRI log: /dev/null) and reports its RSS. */
async function catchUp(raw: string, offset: string): Promise<CatchUp> {
  const child = spawn(
    process.execPath,
    [path.join(__dirname, "../../harness/console-backlog-child.js"), raw, offset, "/dev/null"],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let out = "";
  child.stdout.on("data", (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on("data", (d: Buffer) => {
    out += d.toString();
  });
  // A guard for the machine: a tailer that reads the backlog whole is stopped at 1 GiB.
  let killedAtKiB = 0;
  const guard = setInterval(() => {
    const text = fs.readFileSync(`/proc/${child.pid}/status`, "utf8");
    const rss = Number(/^VmRSS:\s+(\d+) kB$/m.exec(text)?.[1] ?? 0);
    if (rss > 1024 * 1024) {
      killedAtKiB = rss;
      child.kill("SIGKILL");
    }
  }, 50);
  const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
  clearInterval(guard);
  assert.equal(killedAtKiB, 0, `the catch-up grew to ${killedAtKiB} KiB RSS: killed`);
  assert.equal(code, 0, out);
  return JSON.parse(out) as CatchUp;
}

function assertFlat(what: string, result: CatchUp): void {
  const growthMiB = (result.peakKiB - result.baselineKiB) / 1024;
  console.log(
    `${what} caught up in ${result.ms} ms; RSS ${(result.baselineKiB / 1024).toFixed(0)} MiB baseline, peak +${growthMiB.toFixed(1)} MiB`,
  );
  assert.ok(growthMiB < 100, `peak RSS ${growthMiB.toFixed(1)} MiB above the baseline`);
}
