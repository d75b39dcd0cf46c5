import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import { describe, it } from "node:test";
import { createNetns, deleteNetns } from "../../src/sys/netns";
import { openTap } from "../../src/sys/tap";
import { ipIn, linksIn, requirePrivateNamespace, uniqueName } from "../harness/fixtures";

requirePrivateNamespace();

function withPodNetns(fn: (name: string, nsPath: string) => Promise<void> | void) {
  return async () => {
    const name = uniqueName("tap");
    const nsPath = createNetns(name);
    try {
      await fn(name, nsPath);
    } finally {
      deleteNetns(name);
    }
  };
}

describe("openTap", () => {
  it(
    "creates a tap with vnet headers inside the given netns, gone when its fd closes",
    withPodNetns((ns, nsPath) => {
      const tap = openTap(nsPath, { name: "tap0" });
      const link = linksIn(ns).find((l) => l.ifname === "tap0");
      assert.ok(link, "tap0 exists in the pod netns");
      const details = ipIn(ns, "-d", "link", "show", "tap0");
      assert.match(details, /tun type tap/);
      assert.match(details, /vnet_hdr on/);
      assert.match(details, /pi off/);
      fs.closeSync(tap.fd);
      assert.ok(!linksIn(ns).some((l) => l.ifname === "tap0"));
    }),
  );

  it(
    "lets the kernel name the tap when no name is given",
    withPodNetns((ns, nsPath) => {
      const tap = openTap(nsPath);
      try {
        assert.match(tap.name, /^tap\d+$/);
        assert.ok(linksIn(ns).some((l) => l.ifname === tap.name));
      } finally {
        fs.closeSync(tap.fd);
      }
    }),
  );

  it(
    "keeps a persistent tap after close and reopens it by name",
    withPodNetns((ns, nsPath) => {
      const first = openTap(nsPath, { name: "ptap", persist: true });
      fs.closeSync(first.fd);
      assert.ok(linksIn(ns).some((l) => l.ifname === "ptap"));
      const again = openTap(nsPath, { name: "ptap" });
      assert.equal(again.name, "ptap");
      fs.closeSync(again.fd);
      ipIn(ns, "link", "del", "ptap");
    }),
  );

  it(
    "gives an fd that QEMU's -netdev tap,fd=N accepts",
    withPodNetns(async (_ns, nsPath) => {
      const tap = openTap(nsPath, { name: "qtap" });
      try {
        const qemu = spawn(
          "qemu-system-x86_64",
          ["-M", "none", "-display", "none", "-monitor", "stdio", "-netdev", "tap,id=n0,fd=3"],
          { stdio: ["pipe", "pipe", "pipe", tap.fd] },
        );
        let out = "";
        qemu.stdout!.on("data", (d) => {
          out += d;
        });
        qemu.stderr!.on("data", (d) => {
          out += d;
        });
        qemu.stdin!.write("info network\nquit\n");
        const code = await new Promise<number | null>((resolve) => qemu.on("exit", resolve));
        assert.equal(code, 0, out);
        assert.match(out, /n0: index=0,type=tap,fd=3/);
      } finally {
        fs.closeSync(tap.fd);
      }
    }),
  );

  it("names the netns when it cannot open the tap there", () => {
    assert.throws(() => openTap("/run/netns/missing-x"), /missing-x/);
    assert.throws(() => openTap("/proc/self/ns/net", { name: "x".repeat(16) }), /longer than 15/);
  });
});
