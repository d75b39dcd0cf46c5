import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import { describe, it } from "node:test";
import { createNetns, deleteNetns, isNetns, listNetns, withNetns } from "../../src/sys/netns";
import { ip, requirePrivateNamespace, uniqueName } from "../harness/fixtures";

requirePrivateNamespace();

const inode = (p: string) => fs.statSync(p).ino;

describe("named netns", () => {
  it("creates a netns that iproute2 sees and enters, and deletes it", () => {
    const name = uniqueName("ns");
    const nsPath = createNetns(name);
    try {
      assert.equal(nsPath, `/run/netns/${name}`);
      assert.ok(isNetns(nsPath));
      assert.match(ip("netns", "list"), new RegExp(`^${name}\\b`, "m"));
      assert.ok(listNetns().includes(name));
      // iproute2 enters it and finds only a loopback device: a fresh netns.
      const links = ip("netns", "exec", name, "ip", "-o", "link");
      assert.deepEqual(
        links
          .trim()
          .split("\n")
          .map((l) => l.split(": ")[1]),
        ["lo"],
      );
      assert.notEqual(inode(nsPath), inode("/proc/self/ns/net"));
    } finally {
      deleteNetns(name);
    }
    assert.ok(!fs.existsSync(nsPath));
    assert.doesNotMatch(ip("netns", "list"), new RegExp(name));
  });

  it("a netns made beside another runtime's (containerd's bind mounts) leaves that runtime able to remove its own", () => {
    const dir = fs.mkdtempSync("/run/netns-beside-");
    const other = `${dir}/cni-other`;
    const saved = process.env.VMLET_NETNS_DIR;
    process.env.VMLET_NETNS_DIR = dir;
    try {
      // What containerd does: a plain dir, a bind mount of the pod's netns in it.
      fs.writeFileSync(other, "");
      execFileSync("mount", ["--bind", "/proc/self/ns/net", other]);
      const name = uniqueName("ns");
      const nsPath = createNetns(name);
      assert.ok(isNetns(nsPath));
      // containerd's StopPodSandbox: unmount, then unlink (EBUSY if a copy stayed below).
      execFileSync("umount", [other]);
      fs.unlinkSync(other);
      deleteNetns(name);
      assert.deepEqual(fs.readdirSync(dir), []);
    } finally {
      if (saved === undefined) delete process.env.VMLET_NETNS_DIR;
      else process.env.VMLET_NETNS_DIR = saved;
      spawnSync("umount", ["-R", dir], { stdio: "ignore" });
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("deleting a netns twice succeeds", () => {
    const name = uniqueName("ns");
    createNetns(name);
    deleteNetns(name);
    deleteNetns(name);
  });

  it("refuses a name that is taken, naming it, and leaves the first netns intact", () => {
    const name = uniqueName("ns");
    const nsPath = createNetns(name);
    try {
      assert.throws(() => createNetns(name), new RegExp(`create netns ${name}: EEXIST`));
      assert.ok(isNetns(nsPath));
    } finally {
      deleteNetns(name);
    }
  });

  it("refuses names that are not path-safe", () => {
    assert.throws(() => createNetns("../etc"), /netns name/);
    assert.throws(() => createNetns(""), /netns name/);
  });
});

describe("withNetns", () => {
  it("runs the function inside the netns and returns to the original one", () => {
    const name = uniqueName("ns");
    const nsPath = createNetns(name);
    try {
      const before = inode("/proc/thread-self/ns/net");
      const inside = withNetns(nsPath, () => inode("/proc/thread-self/ns/net"));
      assert.equal(inside, inode(nsPath));
      assert.equal(inode("/proc/thread-self/ns/net"), before);
    } finally {
      deleteNetns(name);
    }
  });

  it("returns to the original netns when the function throws", () => {
    const name = uniqueName("ns");
    const nsPath = createNetns(name);
    try {
      const before = inode("/proc/thread-self/ns/net");
      assert.throws(() =>
        withNetns(nsPath, () => {
          throw new Error("boom");
        }),
      );
      assert.equal(inode("/proc/thread-self/ns/net"), before);
    } finally {
      deleteNetns(name);
    }
  });

  it("refuses an async function, which would await while switched", () => {
    const name = uniqueName("ns");
    const nsPath = createNetns(name);
    try {
      const before = inode("/proc/thread-self/ns/net");
      assert.throws(() => withNetns(nsPath, async () => 1), /must be synchronous/);
      assert.equal(inode("/proc/thread-self/ns/net"), before);
    } finally {
      deleteNetns(name);
    }
  });

  it("names the path of a netns that does not exist", () => {
    assert.throws(
      () => withNetns("/run/netns/nope-x", () => 1),
      /open netns \/run\/netns\/nope-x: ENOENT/,
    );
  });

  it("stops the process when it cannot return to the original netns", () => {
    // A child makes the restoring setns fail; it must die, not print "continued".
    const script = `
      const libc = require(${JSON.stringify(require.resolve("../../src/sys/libc"))});
      const { withNetns, createNetns } = require(${JSON.stringify(require.resolve("../../src/sys/netns"))});
      const p = createNetns("abort-${process.pid}");
      const real = libc.setns;
      let calls = 0;
      libc.setns = (fd, type) => (++calls === 2 ? -1 : real(fd, type));
      try { withNetns(p, () => 1); } catch {}
      console.log("continued");
    `;
    const child = spawnSync(process.execPath, ["-e", script], { encoding: "utf8" });
    assert.equal(child.signal, "SIGABRT");
    assert.doesNotMatch(child.stdout, /continued/);
    assert.match(child.stderr, /setns back from .*abort-/);
    deleteNetns(`abort-${process.pid}`);
  });
});
