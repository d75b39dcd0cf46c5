// Container logs through the CRI socket (stand-ins as in test/harness/cri-suite.ts): where
// they go without a log directory, and log paths that would leave the pod's directory.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import { status } from "@grpc/grpc-js";
import { criSuite, rejectsWith } from "../harness/cri-suite";
import { podConfig } from "../harness/test-vmlet";

describe("CRI container logs", () => {
  const suite = criSuite();

  test("without a log directory (crictl) container logs are vmlet's, and go with the sandbox", async () => {
    const r = suite.t.client.runtime;
    const sandboxConfig = podConfig("nologdir");
    const { podSandboxId } = await r.RunPodSandbox({ config: sandboxConfig });
    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "guest" }, image: { image: "vmlet.io/test" }, logPath: "0.log" },
      sandboxConfig,
    });
    await r.StartContainer({ containerId });
    const logPath = (await r.ContainerStatus({ containerId })).status?.logPath ?? "";
    assert.ok(path.isAbsolute(logPath) && logPath.includes(podSandboxId), logPath);
    assert.match(fs.readFileSync(logPath, "utf8"), /^\S+Z stdout F /);
    await r.StopPodSandbox({ podSandboxId });
    await r.RemovePodSandbox({ podSandboxId });
    assert.ok(!fs.existsSync(path.dirname(logPath)), `${path.dirname(logPath)} removed`);
  });

  test("a log_path outside the pod's log directory is INVALID_ARGUMENT naming log_path, and no container is made", async () => {
    const r = suite.t.client.runtime;
    const logDirectory = path.join(suite.t.dir, "pods", "default_badlog_uid");
    const sandboxConfig = podConfig("badlog", { logDirectory });
    const { podSandboxId } = await r.RunPodSandbox({ config: sandboxConfig });
    const before = (await r.ListContainers({})).containers.length;
    for (const [logPath, why] of [
      ["/etc/cron.d/x", /must be relative to the pod's log_directory/],
      ["../../../etc/cron.d/x", /must not contain "\.\."/],
      ["guest/../../x.log", /must not contain "\.\."/],
      ["guest//0.log", /must name a file/],
      ["guest/", /must name a file/],
    ] as const) {
      await rejectsWith(
        r.CreateContainer({
          podSandboxId,
          config: { metadata: { name: "guest" }, image: { image: "vmlet.io/test" }, logPath },
          sandboxConfig,
        }),
        status.INVALID_ARGUMENT,
        new RegExp(
          `^CreateContainer default/badlog/guest: log_path ${JSON.stringify(logPath).replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}: ${why.source}`,
        ),
      );
    }
    assert.equal((await r.ListContainers({})).containers.length, before);
    await r.RemovePodSandbox({ podSandboxId });
  });

  test("a symlink inside the pod's log directory is not followed: StartContainer fails and nothing is written through it", async () => {
    const r = suite.t.client.runtime;
    const logDirectory = path.join(suite.t.dir, "pods", "default_linklog_uid");
    const elsewhere = path.join(suite.t.dir, "elsewhere");
    fs.mkdirSync(logDirectory, { recursive: true });
    fs.mkdirSync(elsewhere, { recursive: true });
    fs.symlinkSync(elsewhere, path.join(logDirectory, "guest"));
    const sandboxConfig = podConfig("linklog", { logDirectory });
    const { podSandboxId } = await r.RunPodSandbox({ config: sandboxConfig });
    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: {
        metadata: { name: "guest" },
        image: { image: "vmlet.io/test" },
        logPath: "guest/0.log",
      },
      sandboxConfig,
    });
    await rejectsWith(
      r.StartContainer({ containerId }),
      status.FAILED_PRECONDITION,
      /log_path "guest\/0\.log": .*\/guest is a symlink or not a directory: not followed/,
    );
    assert.deepEqual(fs.readdirSync(elsewhere), []);
    assert.equal((await r.ContainerStatus({ containerId })).status?.reason, "StartError");
    await r.RemovePodSandbox({ podSandboxId });
  });
});
