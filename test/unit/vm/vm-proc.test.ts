import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, it } from "node:test";
import {
  isSameLiveProcess,
  parseProcStat,
  readProcStat,
  readRssBytes,
} from "../../../src/runtime/vm/proc";

describe("what /proc says about the QEMU process", () => {
  it("reads state, start time and CPU even when the command name holds spaces and parentheses", () => {
    const fields = Array.from({ length: 50 }, (_, i) => String(i + 1));
    fields[2] = "S"; // field 3
    fields[13] = "150"; // utime (field 14), in 1/100 s
    fields[14] = "50"; // stime (field 15)
    fields[21] = "987654"; // starttime (field 22)
    const text = `4242 (qemu (x) y) ${fields.slice(2).join(" ")}\n`;
    assert.deepEqual(parseProcStat(text), {
      state: "S",
      startTime: "987654",
      cpuNanos: 2_000_000_000n,
    });
  });

  it("tells a live process from one that is gone, and from a reused PID with another start time", async () => {
    const self = await readProcStat(process.pid);
    assert.ok(self);
    assert.ok(await isSameLiveProcess(process.pid, self.startTime));
    assert.ok(!(await isSameLiveProcess(process.pid, `${self.startTime}0`)));
    assert.ok((await readRssBytes(process.pid)) > 1024 * 1024);

    const child = spawn("sleep", ["60"], { stdio: "ignore" });
    const stat = await readProcStat(child.pid!);
    assert.ok(stat);
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
    assert.ok(!(await isSameLiveProcess(child.pid!, stat.startTime)));
    assert.equal(await readRssBytes(child.pid!), 0);
  });
});
