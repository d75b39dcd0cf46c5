// `vmlet serve` settings: flags, a config file, and which wins.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { parseServeArgs } from "../../src/cli/serve";

function configFile(content: unknown): string {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "vmlet-serve-")), "vmlet.json");
  fs.writeFileSync(file, typeof content === "string" ? content : JSON.stringify(content));
  return file;
}

describe("vmlet serve settings", () => {
  test("defaults are the node paths kubelet and the CNI plugins use", () => {
    const o = parseServeArgs([]);
    assert.equal(o.socket, "/run/vmlet/vmlet.sock");
    assert.equal(o.stateDir, "/var/lib/vmlet");
    assert.equal(o.cniConfDir, "/etc/cni/net.d");
    assert.deepEqual(o.cniBinDirs, ["/opt/cni/bin", "/usr/lib/cni"]);
    assert.equal(o.accel, "auto");
    assert.equal(o.logLevel, "info");
  });

  test("flags set everything; --cni-bin-dir takes DIR:DIR", () => {
    const o = parseServeArgs([
      "--socket=/s.sock",
      "--state-dir=/st",
      "--cni-conf-dir=/c",
      "--cni-bin-dir=/a:/b",
      "--image-rules=/r.json",
      "--accel=tcg",
      "--log-level=debug",
    ]);
    assert.deepEqual(o, {
      socket: "/s.sock",
      stateDir: "/st",
      cniConfDir: "/c",
      cniBinDirs: ["/a", "/b"],
      imageRules: "/r.json",
      accel: "tcg",
      logLevel: "debug",
      cgroupDriver: "systemd",
    });
  });

  test("a config file sets the same, and flags win over it", () => {
    const file = configFile({
      socket: "/f.sock",
      accel: "kvm",
      cniBinDir: ["/x"],
      cgroupDriver: "cgroupfs",
    });
    const o = parseServeArgs(["--config", file, "--accel", "tcg"]);
    assert.equal(o.socket, "/f.sock");
    assert.equal(o.accel, "tcg");
    assert.deepEqual(o.cniBinDirs, ["/x"]);
    assert.equal(o.cgroupDriver, "cgroupfs");
  });

  test("bad settings are refused, naming the setting", () => {
    assert.throws(() => parseServeArgs(["--accel", "xen"]), /accel "xen": want kvm, tcg or auto/);
    assert.throws(() => parseServeArgs(["--log-level", "loud"]), /log level "loud"/);
    assert.throws(
      () => parseServeArgs(["--socket", "rel.sock"]),
      /socket "rel\.sock": must be an absolute path/,
    );
    assert.throws(() => parseServeArgs(["--bogus"]), /Unknown option '--bogus'/);
    assert.throws(() => parseServeArgs(["--config", configFile("{")]), /--config .*vmlet\.json: /);
    assert.throws(
      () => parseServeArgs(["--config", configFile({ sokcet: "/x" })]),
      /unknown setting "sokcet"/,
    );
    assert.throws(
      () => parseServeArgs(["--config", configFile({ accel: 1 })]),
      /accel must be a string/,
    );
  });
});
