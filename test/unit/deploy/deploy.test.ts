// deploy/: what an operator copies onto a node must work as shipped.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { parseServeArgs } from "../../../src/cli/serve";
import { parseImageRules } from "../../../src/runtime/images/rules";

const DEPLOY = path.join(__dirname, "../../../../deploy");

describe("deploy/", () => {
  it("config.json is every serve setting at its default", () => {
    const fromFile = parseServeArgs(["--config", path.join(DEPLOY, "config.json")]);
    assert.deepEqual(fromFile, { ...parseServeArgs([]), imageRules: "/etc/vmlet/images.json" });
  });

  it("images.json parses as image rules, each fetched over https or pinned by a sha256", () => {
    const file = path.join(DEPLOY, "images.json");
    const rules = parseImageRules(fs.readFileSync(file, "utf8"), file);
    assert.equal(rules.length, 2);
    for (const rule of rules) {
      assert.ok(rule.url.startsWith("https://") || rule.sha256, JSON.stringify(rule));
    }
  });

  it("runtimeclass.yaml is a RuntimeClass whose handler is vmlet's default runtime handler", () => {
    const script =
      "import sys, yaml, json; print(json.dumps(list(yaml.safe_load_all(sys.stdin.read()))))";
    const parsed = spawnSync("/usr/bin/python3", ["-c", script], {
      input: fs.readFileSync(path.join(DEPLOY, "runtimeclass.yaml"), "utf8"),
      encoding: "utf8",
    });
    assert.equal(parsed.status, 0, parsed.stderr);
    const [rc, ...rest] = JSON.parse(parsed.stdout) as Record<string, unknown>[];
    assert.deepEqual(rest, []);
    assert.equal(rc?.apiVersion, "node.k8s.io/v1");
    assert.equal(rc?.kind, "RuntimeClass");
    assert.equal(rc?.handler, parseServeArgs([]).runtimeHandler);
  });

  it("vmlet.service: systemd parses it without a warning; a restart leaves the VMs alone", () => {
    const unit = path.join(DEPLOY, "vmlet.service");
    const verify = spawnSync("systemd-analyze", ["verify", unit], { encoding: "utf8" });
    assert.equal(verify.error, undefined, "systemd-analyze (Debian package systemd)");
    assert.equal(`${verify.stdout}${verify.stderr}`, "");
    const text = fs.readFileSync(unit, "utf8");
    assert.match(text, /^KillMode=process$/m);
    // A core of vmlet or of a QEMU it starts would hold guest memory, Secrets included.
    assert.match(text, /^LimitCORE=0$/m);
    assert.match(text, /^ExecStart=.* serve --config \/etc\/vmlet\/config\.json$/m);
  });
});
