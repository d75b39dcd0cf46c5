// vmlet serve's last resort: an error nothing handled is logged as a JSON line with its
// context, and the process exits non-zero so that systemd restarts it.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { describe, it } from "node:test";
import { CRASH_EXIT_CODE } from "../../../src/cli/serve";

const SERVE = path.resolve(__dirname, "../../../src/cli/serve.js");

/** A process with serve's crash policy and logger settings, then `fault`. */
function crashWith(fault: string) {
  const script = `
    const pino = require("pino");
    const { installCrashPolicy } = require(${JSON.stringify(SERVE)});
    installCrashPolicy(pino({ base: { pid: process.pid } }));
    setTimeout(() => { ${fault} }, 10);
    setTimeout(() => console.log("still alive"), 500);`;
  return spawnSync(process.execPath, ["-e", script], { encoding: "utf8", timeout: 10_000 });
}

function fatalLine(stdout: string): Record<string, unknown> {
  const line = stdout
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .find((l) => l.level === 60);
  assert.ok(line, `a fatal JSON line in: ${stdout}`);
  return line;
}

describe("vmlet serve's crash policy", () => {
  it("an uncaught exception is logged with its stack and ends the process with a non-zero code", () => {
    const run = crashWith('throw new Error("boom in a socket handler")');
    assert.equal(run.status, CRASH_EXIT_CODE);
    const line = fatalLine(run.stdout);
    assert.equal(line.kind, "uncaught exception");
    const err = line.err as { message?: string; stack?: string };
    assert.equal(err.message, "boom in a socket handler");
    assert.match(err.stack ?? "", /at Timeout/);
    assert.match(String(line.msg), /exits .* to be restarted; VMs keep running/);
    assert.ok(!run.stdout.includes("still alive"));
  });

  it("an unhandled rejection is logged and ends the process the same way", () => {
    const run = crashWith('Promise.reject(new Error("a promise nobody awaited"))');
    assert.equal(run.status, CRASH_EXIT_CODE);
    const line = fatalLine(run.stdout);
    assert.equal(line.kind, "unhandled rejection");
    assert.equal((line.err as { message?: string }).message, "a promise nobody awaited");
  });
});
