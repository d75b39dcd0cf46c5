import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import { describe, it } from "node:test";
import { ip, requirePrivateNamespace } from "../harness/fixtures";

requirePrivateNamespace();

/** The netns inode of every process we can see. */
function netnsInodesOfAllProcesses(): Set<number> {
  const inodes = new Set<number>();
  for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      inodes.add(fs.statSync(`/proc/${pid}/ns/net`).ino);
    } catch {
      // The process exited while we looked.
    }
  }
  return inodes;
}

describe("the private namespace the tests run in", () => {
  it("leaves no netns, link or process behind when a run is killed with SIGKILL", async () => {
    const netnsBefore = ip("netns", "list");
    const linksBefore = ip("-o", "link");
    // A nested run: enters its own private namespace, builds a netns, a veth and a child
    // process, reports, and waits to be killed.
    const script = `
      const { enterPrivateNamespace } = require(${JSON.stringify(require.resolve("../../src/sys/private-namespace"))});
      const { createNetns } = require(${JSON.stringify(require.resolve("../../src/sys/netns"))});
      const { execFileSync, spawn } = require("node:child_process");
      enterPrivateNamespace(["-e", process.argv[1]]);
      createNetns("victim");
      execFileSync("ip", ["link", "add", "leak0", "type", "veth", "peer", "name", "leak1"]);
      spawn("sleep", ["1000"], { stdio: "ignore" });
      console.log("ready " + require("node:fs").statSync("/proc/self/ns/net").ino);
      setInterval(() => {}, 1000);
    `;
    const env = { ...process.env };
    delete env.VMLET_PRIVATE_NS;
    const run = spawn(process.execPath, ["-e", script, script], {
      env,
      stdio: ["ignore", "pipe", "inherit"],
    });
    const inode = await new Promise<number>((resolve, reject) => {
      run.stdout.on("data", (d: Buffer) => {
        const m = /ready (\d+)/.exec(d.toString());
        if (m) resolve(Number(m[1]));
      });
      run.on("exit", (code) => reject(new Error(`nested run exited early: ${code}`)));
    });
    assert.ok(netnsInodesOfAllProcesses().has(inode), "the nested run's processes are alive");

    run.kill("SIGKILL");
    await new Promise((resolve) => run.on("exit", resolve));
    // Its init dies with it; the kernel then kills everything else in its PID namespace.
    for (let i = 0; i < 50 && netnsInodesOfAllProcesses().has(inode); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(!netnsInodesOfAllProcesses().has(inode), "no process of the killed run survives");
    assert.equal(ip("netns", "list"), netnsBefore);
    assert.equal(ip("-o", "link"), linksBefore);
  });
});
