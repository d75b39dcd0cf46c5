// The CRI proxy's pure parts: Status ANDed over vmlet and containerd, the image
// filesystems' order, and the owner map as it survives a restart or a torn file.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import type * as cri from "../../../src/runtime/cri/generated";
import { mergeImageFs, mergeStatus } from "../../../src/runtime/proxy/merge";
import { OwnerMap } from "../../../src/runtime/proxy/owners";

function status(network: {
  ready: boolean;
  reason?: string;
  message?: string;
}): cri.StatusResponse {
  return {
    status: {
      conditions: [
        { type: "RuntimeReady", status: true },
        {
          type: "NetworkReady",
          status: network.ready,
          reason: network.reason ?? "",
          message: network.message ?? "",
        },
      ],
    },
    info: { config: "{}" },
    runtimeHandlers: [{ name: "", features: { recursiveReadOnlyMounts: false } }],
  };
}

describe("the CRI proxy's merged answers", () => {
  test("Status is ready only when both sides are, and says which side is not", () => {
    const ready = mergeStatus(
      [
        { name: "vmlet", answer: status({ ready: true }) },
        { name: "containerd", answer: status({ ready: true }) },
      ],
      ["vmlet"],
    );
    assert.deepEqual(
      ready.status?.conditions?.map((c) => [c.type, c.status, c.reason, c.message]),
      [
        ["RuntimeReady", true, "", ""],
        ["NetworkReady", true, "", ""],
      ],
    );
    assert.deepEqual(Object.keys(ready.info ?? {}).sort(), ["containerd.config", "vmlet.config"]);
    assert.deepEqual(
      ready.runtimeHandlers?.map((h) => h.name),
      ["vmlet", ""],
      "vmlet's handler by its RuntimeClass name, containerd's as it reports them",
    );

    const cniDown = mergeStatus(
      [
        { name: "vmlet", answer: status({ ready: true }) },
        {
          name: "containerd",
          answer: status({
            ready: false,
            reason: "NetworkPluginNotReady",
            message: "cni config uninitialized",
          }),
        },
      ],
      ["vmlet"],
    );
    const network = cniDown.status?.conditions?.find((c) => c.type === "NetworkReady");
    assert.equal(network?.status, false);
    assert.equal(network?.reason, "containerd: NetworkPluginNotReady");
    assert.equal(network?.message, "containerd: cni config uninitialized");

    const unreachable = mergeStatus(
      [
        { name: "vmlet", answer: status({ ready: false, message: "no network config" }) },
        {
          name: "containerd",
          answer: new Error("Status: containerd at /c.sock cannot be reached"),
        },
      ],
      ["vmlet"],
    );
    const [runtime, net] = unreachable.status?.conditions ?? [];
    assert.equal(runtime?.status, false);
    assert.equal(runtime?.reason, "containerd: ContainerdUnreachable");
    assert.equal(net?.status, false);
    assert.equal(
      net?.message,
      "vmlet: no network config; containerd: Status: containerd at /c.sock cannot be reached",
    );
  });

  test("a side that leaves out a required condition is not ready for it", () => {
    const merged = mergeStatus(
      [
        { name: "vmlet", answer: status({ ready: true }) },
        {
          name: "containerd",
          answer: { status: { conditions: [{ type: "RuntimeReady", status: true }] } },
        },
      ],
      [],
    );
    const network = merged.status?.conditions?.find((c) => c.type === "NetworkReady");
    assert.equal(network?.status, false);
    assert.equal(network?.message, "containerd: containerd does not report NetworkReady");
  });

  test("ImageFsInfo lists containerd's filesystems first: kubelet's image GC watches only the first", () => {
    const merged = mergeImageFs(
      {
        imageFilesystems: [{ fsId: { mountpoint: "/var/lib/containerd" } }],
        containerFilesystems: [],
      },
      { imageFilesystems: [{ fsId: { mountpoint: "/var/lib/vmlet" } }], containerFilesystems: [] },
    );
    assert.deepEqual(
      merged.imageFilesystems?.map((f) => f.fsId?.mountpoint),
      ["/var/lib/containerd", "/var/lib/vmlet"],
    );
  });
});

describe("the CRI proxy's owner map", () => {
  test("is kept across a reopen, and removing a sandbox forgets its containers", async () => {
    const file = path.join(
      fs.mkdtempSync(path.join(os.tmpdir(), "owners-")),
      "proxy",
      "owners.json",
    );
    const map = await OwnerMap.open(file);
    await map.set("s1", { owner: "containerd", kind: "sandbox", handler: "" });
    await map.set("c1", { owner: "containerd", kind: "container", sandbox: "s1" });
    await map.set("s2", { owner: "vmlet", kind: "sandbox", handler: "vmlet" });
    const again = await OwnerMap.open(file);
    assert.deepEqual(again.get("c1"), { owner: "containerd", kind: "container", sandbox: "s1" });
    assert.deepEqual(again.get("s2"), { owner: "vmlet", kind: "sandbox", handler: "vmlet" });
    await again.forget("s1");
    const third = await OwnerMap.open(file);
    assert.equal(third.get("s1"), undefined);
    assert.equal(third.get("c1"), undefined);
    assert.deepEqual(third.ids("vmlet"), ["s2"]);
    assert.deepEqual(fs.readdirSync(path.dirname(file)), ["owners.json"], "no temp file left");
  });

  test("a file that is not a map is an error naming it, not an empty map", async () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "owners-")), "owners.json");
    fs.writeFileSync(file, '{"version":1,"ids":{"x":{"owner":"docker"}}}');
    await assert.rejects(
      OwnerMap.open(file),
      new RegExp(`owner map ${file}: entry x: want owner and kind`),
    );
    fs.writeFileSync(file, "{");
    await assert.rejects(OwnerMap.open(file), /not JSON/);
  });
});
