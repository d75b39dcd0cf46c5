import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { describe, it } from "node:test";
import { requirePrivateNamespace } from "../harness/fixtures";
import { guestImagesBuilt } from "../harness/guest-vm";

requirePrivateNamespace();

describe("vmlet demo (README's main-job command)", () => {
  it("runs a VM pod through the CRI socket, and the guest leases the pod IP", {
    skip: !guestImagesBuilt() && "test guests not built",
  }, () => {
    const env = { ...process.env };
    // A nested private namespace of its own, as on a machine.
    delete env.VMLET_PRIVATE_NS;
    const demo = spawnSync(
      process.execPath,
      [path.join(__dirname, "../../src/cli/main.js"), "demo"],
      { env, encoding: "utf8", timeout: 240_000 },
    );
    assert.equal(demo.status, 0, `${demo.stdout}\n${demo.stderr}`);
    const podIp = /pod IP (\d+\.\d+\.\d+\.\d+)/.exec(demo.stdout)?.[1];
    assert.ok(podIp, demo.stdout);
    assert.match(demo.stdout, new RegExp(`VMLET-GUEST lease event="bound".* ip="${podIp}/24"`));
    assert.match(demo.stdout, /the node reaches the guest: time=/);
    assert.match(demo.stdout, /ContainerStatus: CONTAINER_RUNNING/);
    assert.match(demo.stdout, /stopped and removed: no netns or state left/);
  });
});
