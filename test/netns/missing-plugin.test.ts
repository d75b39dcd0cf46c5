// A conflist naming a plugin that is not installed: ADD fails naming the plugin and the
// dirs searched, and, because that plugin never ran, nothing is left behind (netns, pod
// record, CNI cache, IPAM), neither by `vmlet net run` nor by RunPodSandbox.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { status } from "@grpc/grpc-js";
import { Tapmanager } from "../../src/tapmanager";
import {
  allocations,
  bridgeList,
  type CniSandbox,
  cacheFiles,
  DEBIAN_CNI_DIR,
  makeCniSandbox,
} from "../harness/cni-fixtures";
import { ip, requirePrivateNamespace } from "../harness/fixtures";
import type { ProcessLauncher } from "../harness/process-launcher";
import { podConfig, startTestVmlet, type TestVmlet } from "../harness/test-vmlet";

requirePrivateNamespace();

const VMLET = path.join(__dirname, "../../src/cli/main.js");

function netnsNames(): string[] {
  return ip("netns", "list")
    .split("\n")
    .filter(Boolean)
    .map((l) => l.split(" ")[0]);
}

/** Every file under `dir`, recursively (empty dirs count as nothing). */
function filesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return cacheFiles(dir);
}

/** The two shapes: the plugin alone (the case), and after bridge + host-local. */
const CHAINS = [
  {
    what: "the only plugin",
    conf: () => ({ cniVersion: "1.0.0", name: "m", plugins: [{ type: "no-such-plugin" }] }),
  },
  {
    what: "chained after bridge",
    conf: (cni: CniSandbox) =>
      bridgeList("m", "1.0.0", cni.dataDir, "10.93.0.0/24", [{ type: "no-such-plugin" }]),
  },
];

describe("a plugin that is not installed", () => {
  for (const chain of CHAINS) {
    it(`as ${chain.what}: vmlet net run names it and the dirs searched, and leaves nothing`, async () => {
      const cni = makeCniSandbox();
      cni.writeConf("10-m.conflist", chain.conf(cni));
      const stateDir = path.join(cni.root, "state");
      const before = netnsNames();
      const child = spawn(
        process.execPath,
        [
          VMLET,
          "net",
          "run",
          "--conf-dir",
          cni.confDir,
          "--bin-dir",
          `${cni.binDir}:${DEBIAN_CNI_DIR}`,
          "--state-dir",
          stateDir,
          "--pod",
          "default/vm1",
        ],
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      let stderr = "";
      child.stderr.on("data", (d) => {
        stderr += d;
      });
      const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
      try {
        assert.equal(code, 1);
        assert.match(
          stderr,
          new RegExp(
            `setUp default/vm1: CNI ADD .*plugin no-such-plugin: executable not found in ${cni.binDir}:${DEBIAN_CNI_DIR}`,
          ),
        );
        assert.match(stderr, /cleaned up/);
        assert.doesNotMatch(stderr, /tearDown|cleanup failed/);
        assert.deepEqual(netnsNames(), before, "no netns left");
        assert.deepEqual(filesUnder(stateDir), [], "no pod record, no CNI cache");
        assert.deepEqual(allocations(cni.dataDir, "m"), [], "no address held");
      } finally {
        child.kill("SIGKILL");
        cni.remove();
      }
    });
  }

  describe("through RunPodSandbox", () => {
    let cni: CniSandbox;
    let tm: Tapmanager;
    let t: TestVmlet<Tapmanager, ProcessLauncher>;
    before(async () => {
      cni = makeCniSandbox();
      tm = new Tapmanager({ cni: cni.client(), stateDir: path.join(cni.root, "pods") });
      t = await startTestVmlet({ networks: tm });
    });
    after(async () => {
      await t?.close();
      await tm?.close();
      cni?.remove();
    });

    for (const chain of CHAINS) {
      it(`as ${chain.what}: the error names it and the dirs, and nothing is left`, async () => {
        cni.writeConf("10-m.conflist", chain.conf(cni));
        await new Promise((resolve) => setTimeout(resolve, 300)); // the conf dir watcher reloads
        const before = netnsNames();
        await assert.rejects(
          t.client.runtime.RunPodSandbox({ config: podConfig(`missing${CHAINS.indexOf(chain)}`) }),
          (e: { code: number; details: string }) => {
            assert.equal(e.code, status.UNKNOWN);
            assert.match(
              e.details,
              new RegExp(
                `set up network: setUp default/missing\\d: CNI ADD .*plugin no-such-plugin: executable not found in ${cni.binDir}:${DEBIAN_CNI_DIR}`,
              ),
            );
            assert.doesNotMatch(e.details, /cleanup failed/);
            return true;
          },
        );
        assert.deepEqual(netnsNames(), before, "no netns left");
        assert.deepEqual(filesUnder(path.join(cni.root, "pods")), [], "no pod network record");
        assert.deepEqual(filesUnder(cni.cacheDir), [], "no CNI cache entry");
        assert.deepEqual(allocations(cni.dataDir, "m"), [], "no address held");
        assert.deepEqual(fs.readdirSync(path.join(t.stateDir, "sandboxes")), [], "no sandbox");
        assert.deepEqual((await t.client.runtime.ListPodSandbox({})).items, []);
      });
    }
  });
});
