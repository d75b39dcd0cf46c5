// The vmlet command line: what an operator sees for `vmlet version` and a typo.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";

const MAIN = path.join(__dirname, "../../../src/cli/main.js");
const PACKAGE = path.join(__dirname, "../../../../package.json");

function vmlet(...args: string[]) {
  return spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8" });
}

describe("vmlet command line", () => {
  it("version prints the package version", () => {
    const { version } = JSON.parse(fs.readFileSync(PACKAGE, "utf8")) as { version: string };
    const run = vmlet("version");
    assert.equal(run.status, 0, run.stderr);
    assert.equal(run.stdout, `vmlet ${version}\n`);
  });

  it("an unknown command exits 2, naming it, with the usage", () => {
    const run = vmlet("sevre");
    assert.equal(run.status, 2);
    assert.match(run.stderr, /unknown command "sevre"/);
    assert.match(run.stderr, /^ {2}serve /m);
  });
});
