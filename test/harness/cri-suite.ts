// One stand-in vmlet per CRI test file (made-up pod networks, a `sleep` per "VM"), with
// a test image pulled over HTTP, and the checks those files share.
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import { after, before } from "node:test";
import { status } from "@grpc/grpc-js";
import { requirePrivateNamespace } from "./fixtures";
import { fakeQcow2 } from "./qcow2";
import { podConfig, startTestVmlet, type TestVmlet } from "./test-vmlet";

export interface CriSuite {
  /** The vmlet of this file, set in `before`. */
  readonly t: TestVmlet;
  /** The id of `vmlet.io/test`, pulled in `before`. */
  readonly imageRef: string;
  /** A pod with one started container (the process launcher's VM) and that VM's pid. */
  runningVm(name: string): Promise<{ podSandboxId: string; containerId: string; pid: number }>;
}

/** A tiny self-contained qcow2, its filler by seed; the stand-in launcher never reads it. */
export const qcow2Bytes = (seed?: string) => fakeQcow2({ size: 8192, ...(seed ? { seed } : {}) });

/** Registers `before` and `after` in the calling describe: a vmlet up, an image pulled. */
export function criSuite(): CriSuite {
  let vmlet: TestVmlet | undefined;
  let ref: string | undefined;
  const suite: CriSuite = {
    get t() {
      if (!vmlet) throw new Error("the CRI suite's vmlet is not up (before failed?)");
      return vmlet;
    },
    get imageRef() {
      if (ref === undefined) throw new Error("the CRI suite's image is not pulled");
      return ref;
    },
    async runningVm(name) {
      const r = suite.t.client.runtime;
      const { podSandboxId } = await r.RunPodSandbox({ config: podConfig(name) });
      const { containerId } = await r.CreateContainer({
        podSandboxId,
        config: { metadata: { name: "c" }, image: { image: suite.imageRef } },
      });
      await r.StartContainer({ containerId });
      const { pid } = JSON.parse(
        (await r.ContainerStatus({ containerId, verbose: true })).info.info,
      ) as { pid: number };
      return { podSandboxId, containerId, pid };
    },
  };
  before(async () => {
    requirePrivateNamespace();
    vmlet = await startTestVmlet();
    // Images come over HTTP; a data URL stand-in is not allowed, so serve one.
    const server = http.createServer((_req, res) => res.end(qcow2Bytes()));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as { port: number }).port;
    vmlet.rules.push({ name: "vmlet.io/test:latest", url: `http://127.0.0.1:${port}/test.qcow2` });
    ref = (await vmlet.client.image.PullImage({ image: { image: "vmlet.io/test" } })).imageRef;
    server.close();
  });
  after(async () => {
    await vmlet?.close();
  });
  return suite;
}

export async function rejectsWith(
  promise: Promise<unknown>,
  code: status,
  message: RegExp,
): Promise<void> {
  await assert.rejects(promise, (error: { code?: number; details?: string }) => {
    assert.equal(status[error.code ?? -1], status[code], `code for: ${error.details}`);
    assert.match(error.details ?? "", message);
    return true;
  });
}

/** Until the process is gone or a zombie: SIGKILL is not instant. */
export async function waitDead(pid: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    let state: string | undefined;
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      state = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
    } catch {
      return;
    }
    if (state === "Z") return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`process ${pid} did not die`);
}
