// `vmlet serve` settings: flags, a config file, and which wins.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { netnsPoolSize, parseServeArgs, parseSize, startDaemon } from "../../../src/cli/serve";

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
      "--stream-address=127.0.0.1:10010",
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
      qemuConfinement: "on",
      qemuUser: "vmlet-qemu",
      imageMaxSize: "64Gi",
      streamAddress: "127.0.0.1:10010",
      containerdSocket: "",
      runtimeHandler: "vmlet",
      netnsPool: "2",
    });
  });

  test("--netns-pool (or netnsPool) sizes the pool of pod netns built ahead; 0 turns it off", () => {
    assert.equal(netnsPoolSize(parseServeArgs([]).netnsPool), 2);
    assert.equal(netnsPoolSize(parseServeArgs(["--netns-pool=0"]).netnsPool), 0);
    assert.equal(
      netnsPoolSize(parseServeArgs(["--config", configFile({ netnsPool: "8" })]).netnsPool),
      8,
    );
    for (const bad of ["-1", "two", "1.5", "65", ""]) {
      assert.throws(
        () => parseServeArgs([`--netns-pool=${bad}`]),
        new RegExp(`netnsPool "${bad.replace(".", "\\.")}": want a whole number from 0 to 64`),
      );
    }
  });

  test("the streaming server's address: host:port, loopback and a chosen port by default", () => {
    assert.equal(parseServeArgs([]).streamAddress, "127.0.0.1:0");
    assert.equal(
      parseServeArgs(["--config", configFile({ streamAddress: "[::1]:0" })]).streamAddress,
      "[::1]:0",
    );
    assert.throws(
      () => parseServeArgs(["--stream-address", "localhost"]),
      /stream address "localhost": want host:port/,
    );
  });

  test("--containerd-socket and --runtime-handler (or their config keys) turn on fronting containerd", () => {
    const o = parseServeArgs(["--containerd-socket=/run/c.sock", "--runtime-handler=kata-vm"]);
    assert.equal(o.containerdSocket, "/run/c.sock");
    assert.equal(o.runtimeHandler, "kata-vm");
    const file = configFile({ containerdSocket: "/run/d.sock" });
    assert.equal(parseServeArgs(["--config", file]).containerdSocket, "/run/d.sock");
    assert.throws(
      () => parseServeArgs(["--containerd-socket", "c.sock"]),
      /containerdSocket "c.sock": must be an absolute path/,
    );
    assert.throws(
      () => parseServeArgs(["--runtime-handler", "VM_pods"]),
      /runtimeHandler "VM_pods": want a RuntimeClass handler name/,
    );
  });

  test("QEMU confinement is on by default; --qemu-confinement off and --qemu-user change it", () => {
    const o = parseServeArgs(["--qemu-confinement=off", "--qemu-user=qemu"]);
    assert.equal(o.qemuConfinement, "off");
    assert.equal(o.qemuUser, "qemu");
    const file = configFile({ qemuConfinement: "off", imageMaxSize: "500Mi" });
    assert.equal(parseServeArgs(["--config", file]).qemuConfinement, "off");
    assert.throws(
      () => parseServeArgs(["--qemu-confinement", "maybe"]),
      /qemuConfinement "maybe": want on or off/,
    );
    assert.throws(() => parseServeArgs(["--qemu-user", "a b"]), /qemuUser "a b": not a user name/);
  });

  test("serve refuses to start when the QEMU user does not exist, saying how to make it", async () => {
    await assert.rejects(
      startDaemon({ ...parseServeArgs([]), qemuUser: "vmlet-no-such-user" }),
      /qemuUser "vmlet-no-such-user": no such user \(QEMU drops to it\); scripts\/setup\.sh makes vmlet-qemu/,
    );
  });

  test("the image download cap takes binary units or bytes", () => {
    assert.equal(parseSize(parseServeArgs([]).imageMaxSize, "imageMaxSize"), 64 * 2 ** 30);
    assert.equal(parseSize("500Mi", "x"), 500 * 2 ** 20);
    assert.equal(parseSize("4096", "x"), 4096);
    assert.throws(
      () => parseServeArgs(["--image-max-size", "lots"]),
      /imageMaxSize "lots": want a size such as 64Gi or 500Mi/,
    );
    assert.throws(() => parseServeArgs(["--image-max-size", "0"]), /imageMaxSize "0"/);
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
