// The kernel layer against iproute2 doing the same job: netns create+delete, tap
// open+close, and a netlink round trip (list links). iproute2 runs as a process per
// operation, which is what a runtime that shells out pays. Usage: node dist/bench/sys.js [N]
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { createNetns, deleteNetns } from "../src/sys/netns";
import { enterPrivateNamespace } from "../src/sys/private-namespace";
import { Rtnl } from "../src/sys/rtnl";
import { openTap } from "../src/sys/tap";
import { alternate, report } from "./lib";

const ip = (...args: string[]) => execFileSync("ip", args, { stdio: "ignore" });

async function main(): Promise<void> {
  enterPrivateNamespace();
  const iterations = Number(process.argv[2] ?? 200);
  const podNs = createNetns("bench-pod");
  const rtnl = Rtnl.open(podNs);
  const samples = await alternate(iterations, {
    "netns create+delete": (i) => {
      createNetns(`b${i}`);
      deleteNetns(`b${i}`);
    },
    "ip netns add+del": (i) => {
      ip("netns", "add", `i${i}`);
      ip("netns", "del", `i${i}`);
    },
    "tap open+close": () => {
      fs.closeSync(openTap(podNs, { name: "btap" }).fd);
    },
    "ip tuntap add+del": () => {
      ip("-n", "bench-pod", "tuntap", "add", "itap", "mode", "tap", "vnet_hdr");
      ip("-n", "bench-pod", "link", "del", "itap");
    },
    "netlink list links": async () => {
      await rtnl.links();
    },
    "ip -j link show": () => {
      ip("-n", "bench-pod", "-j", "link", "show");
    },
  });
  rtnl.close();
  deleteNetns("bench-pod");
  report("sys", `kernel layer vs iproute2, ${iterations} iterations each, alternating`, samples, [
    { name: "netns: vmlet / ip", of: "netns create+delete", to: "ip netns add+del" },
    { name: "tap: vmlet / ip", of: "tap open+close", to: "ip tuntap add+del" },
    { name: "links: vmlet / ip", of: "netlink list links", to: "ip -j link show" },
  ]);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
