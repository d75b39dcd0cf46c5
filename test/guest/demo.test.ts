import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
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
    assert.match(demo.stdout, /ExecSync \[uname -sr\] in the guest .*: Linux 6\.\S+ \(exit 0\)/);
    assert.match(
      demo.stdout,
      /stopped and removed: no pod netns or state left \(2 netns of the pool/,
    );
    assert.match(demo.stdout, /vmlet stopped: no netns left/);
  });

  it("--keep serves until Ctrl-C, and the commands it prints reach the demo node", {
    skip: !guestImagesBuilt() && "test guests not built",
    timeout: 300_000,
  }, async () => {
    const env = { ...process.env };
    delete env.VMLET_PRIVATE_NS;
    // Its own process group, as a shell gives a command: Ctrl-C is SIGINT to the group.
    const demo = spawn(
      process.execPath,
      [path.join(__dirname, "../../src/cli/main.js"), "demo", "--keep"],
      { env, detached: true, stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    demo.stdout!.on("data", (d) => {
      out += d;
    });
    demo.stderr!.on("data", (d) => {
      out += d;
    });
    const exited = new Promise<number | null>((resolve) => demo.once("exit", resolve));
    try {
      const deadline = Date.now() + 240_000;
      while (!/crictl --runtime-endpoint/.test(out)) {
        assert.equal(demo.exitCode, null, out);
        assert.ok(Date.now() < deadline, `no --keep instructions:\n${out}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      const ping = /^ {2}(nsenter .* ping -c 1 \S+)$/m.exec(out)?.[1];
      const crictl = /^ {2}(nsenter .* -m) crictl --runtime-endpoint unix:\/\/(\S+) pods/m.exec(
        out,
      );
      assert.ok(ping && crictl, out);
      // What a user would run from another shell (crictl is not a Debian package: the same
      // call through vmlet's own CRI client instead).
      assert.match(execFileSync("sh", ["-c", ping], { encoding: "utf8" }), /1 received/);
      const client = path.join(__dirname, "../../src/runtime/cri/client.js");
      const list = `require(${JSON.stringify(client)}).connectCri(${JSON.stringify(crictl[2])}).runtime.ListPodSandbox({}).then((r) => { console.log(r.items.map((i) => i.metadata.name + " " + i.state).join()); process.exit(0); })`;
      const pods = execFileSync("sh", ["-c", `${crictl[1]} ${process.execPath} -e '${list}'`], {
        encoding: "utf8",
      });
      assert.equal(pods.trim(), "demo-vm SANDBOX_READY");
    } finally {
      if (demo.exitCode === null) process.kill(-demo.pid!, "SIGINT");
    }
    assert.equal(await exited, 0, out);
    assert.match(out, /stopped and removed: no pod netns or state left/);
    assert.match(out, /vmlet stopped: no netns left/);
  });
});
