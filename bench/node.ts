// The node every network benchmark runs on: a private namespace (lo up) and a bridge +
// host-local network config in a fresh temp dir, with a CNI client for it.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { CniClient } from "../src/cni-bridge/cni";
import type { VmLauncher } from "../src/runtime/types";
import { enterPrivateNamespace } from "../src/sys/private-namespace";
import { Rtnl } from "../src/sys/rtnl";
import { Tapmanager } from "../src/tapmanager";
import { startTestVmlet, type TestVmlet } from "../test/harness/test-vmlet";
import { BIN_DIR } from "./plugin";

export interface BenchNode {
  root: string;
  /** The bridge plugin's config, as the network list holds it. */
  plugin: Record<string, unknown>;
  list: { cniVersion: string; name: string; plugins: Record<string, unknown>[] };
  cni: CniClient;
}

/**
 * Where the bench node keeps its files (pod records, CNI cache, IPAM): the private
 * namespace's tmpfs by default; VMLET_BENCH_DIR=DIR puts them on DIR's file system, as a
 * node's /var/lib is (on ext4 a replacing rename costs a flush that tmpfs never shows).
 */
function benchParent(): string {
  const dir = process.env.VMLET_BENCH_DIR;
  if (!dir) return os.tmpdir();
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

const FS_NAMES = new Map<number, string>([
  [0xef53, "ext4"],
  [0x01021994, "tmpfs"],
  [0x58465342, "xfs"],
  [0x9123683e, "btrfs"],
  [0x794c7630, "overlayfs"],
]);

/** The file system `dir` is on, by name: benchmarks print it beside their figures. */
export function fileSystemOf(dir: string): string {
  const type = fs.statfsSync(dir).type;
  return FS_NAMES.get(type) ?? `fs 0x${type.toString(16)}`;
}

/** Call first: re-executes the benchmark in a private namespace when outside one. */
export async function benchNode(name: string, bridge: string, subnet: string): Promise<BenchNode> {
  enterPrivateNamespace();
  const lo = Rtnl.open("/proc/self/ns/net");
  await lo.setUp("lo");
  lo.close();
  const root = fs.mkdtempSync(path.join(benchParent(), `${name}-bench-`));
  const confDir = path.join(root, "net.d");
  fs.mkdirSync(confDir);
  const plugin = {
    type: "bridge",
    bridge,
    isGateway: true,
    ipMasq: false,
    ipam: {
      type: "host-local",
      dataDir: path.join(root, "ipam"),
      ranges: [[{ subnet }]],
      routes: [{ dst: "0.0.0.0/0" }],
    },
  };
  const list = { cniVersion: "1.0.0", name, plugins: [plugin] };
  fs.writeFileSync(path.join(confDir, "10-bench.conflist"), JSON.stringify(list));
  const cni = new CniClient({ confDir, binDirs: [BIN_DIR], cacheDir: path.join(root, "cache") });
  return { root, plugin, list, cni };
}

/** A vmlet on a bench node: the real tapmanager behind the CRI socket; close() ends both. */
export async function benchVmlet(
  name: string,
  bridge: string,
  subnet: string,
  launcher?: VmLauncher,
): Promise<
  BenchNode & { tm: Tapmanager; t: TestVmlet<Tapmanager, VmLauncher>; close(): Promise<void> }
> {
  const node = await benchNode(name, bridge, subnet);
  const tm = new Tapmanager({ cni: node.cni, stateDir: path.join(node.root, "pods") });
  const t = await startTestVmlet<Tapmanager, VmLauncher>({
    networks: tm,
    dir: node.root,
    ...(launcher ? { launcher } : {}),
  });
  return {
    ...node,
    tm,
    t,
    async close() {
      await t.close();
      await tm.close();
      node.cni.close();
    },
  };
}
