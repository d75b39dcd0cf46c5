// Boot and stop figures for the VM launcher with the shared test guest under TCG:
// start() latency, start() → first DHCPDISCOVER on the pod tap, start() → the guest's
// "ready" console line in the CRI log, adopt() after a restart, guest power-off → exit,
// and stop(): the ACPI power button, the guest's graceful poweroff, QEMU's exit.
// Usage: node dist/bench/vm-boot.js [N] (N boots, 5 by default)

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { QemuLauncher } from "../src/runtime/vm/qemu-launcher";
import { createNetns, deleteNetns } from "../src/sys/netns";
import { enterPrivateNamespace } from "../src/sys/private-namespace";
import { openTap } from "../src/sys/tap";
import { openBoundUdpSocket } from "../src/sys/udp";
import { report } from "./lib";

const GUEST = path.resolve(__dirname, "../../.cache/guests/disk.qcow2");
const MAC = "0a:58:0a:f4:00:05";

async function until(check: () => boolean, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function main(): Promise<void> {
  enterPrivateNamespace();
  if (!fs.existsSync(GUEST))
    throw new Error(`no test guest at ${GUEST}: run scripts/build-test-guests.sh`);
  const runs = Number(process.argv[2] ?? 5);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "vm-bench-"));
  const nsPath = createNetns("vmbench");
  const ip = (...args: string[]) => execFileSync("ip", ["-n", "vmbench", ...args]);
  ip("link", "add", "br0", "type", "bridge");
  ip("link", "set", "br0", "up");
  const dhcp = await openBoundUdpSocket(nsPath, { device: "br0", port: 67 });
  const chaddr = Buffer.from(MAC.replaceAll(":", ""), "hex");
  let discoverAt = 0;
  dhcp.on("message", (msg) => {
    if (!discoverAt && msg.length >= 240 && msg[0] === 1 && msg.subarray(28, 34).equals(chaddr)) {
      discoverAt = performance.now();
    }
  });
  const figures = { start: [] as number[], discover: [] as number[], ready: [] as number[] };
  const adoptMs: number[] = [];
  const powerOff: number[] = [];
  const acpiStop: number[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      const tap = openTap(nsPath, { name: "tap0" });
      ip("link", "set", "tap0", "master", "br0", "up");
      const dir = path.join(root, `c${i}`);
      const logPath = path.join(root, "logs", `c${i}.log`);
      discoverAt = 0;
      const t0 = performance.now();
      const vm = await new QemuLauncher().start({
        id: `c${i}`,
        dir,
        baseImage: { path: GUEST, format: "qcow2" },
        vcpus: 1,
        memoryMiB: 256,
        accel: "tcg",
        taps: [{ ifname: "eth0", tap: "tap0", fd: tap.fd, guestMac: MAC, mtu: 1500 }],
        cloudInit: { instanceId: `c${i}`, hostname: "bench", files: [] },
        logPath,
      });
      figures.start.push(performance.now() - t0);
      await until(
        () =>
          fs.existsSync(logPath) && fs.readFileSync(logPath, "utf8").includes("VMLET-GUEST ready"),
      );
      figures.ready.push(performance.now() - t0);
      await until(() => discoverAt > 0);
      figures.discover.push(discoverAt - t0);

      await vm.detach();
      const a0 = performance.now();
      const adopted = (await new QemuLauncher().adopt(vm.record))!;
      adoptMs.push(performance.now() - a0);

      if (i % 2 === 0) {
        const console = net.createConnection(vm.record.consoleSocket);
        console.on("data", () => {});
        await new Promise((resolve) => console.once("connect", resolve));
        const p0 = performance.now();
        console.write("poweroff\n");
        await adopted.exited;
        powerOff.push(performance.now() - p0);
        console.destroy();
      } else {
        const k0 = performance.now();
        await adopted.stop(30_000);
        const exit = await adopted.exited;
        if (exit.reason !== "Completed") throw new Error(`stop(): ${JSON.stringify(exit)}`);
        acpiStop.push(performance.now() - k0);
      }
      await adopted.cleanup();
      fs.closeSync(tap.fd);
    }
  } finally {
    dhcp.close();
    deleteNetns("vmbench");
    fs.rmSync(root, { recursive: true, force: true });
  }
  report(
    "vm-boot",
    `VM launcher, test guest under TCG (${os.cpus().length} CPUs: ${os.cpus()[0]?.model}), ${runs} boots`,
    {
      "start() (overlay, seed, spawn, QMP)": figures.start,
      "start() -> first DISCOVER": figures.discover,
      "start() -> ready in CRI log": figures.ready,
      "adopt() (QMP, console)": adoptMs,
      "guest poweroff -> exited": powerOff,
      "stop(): ACPI -> exited": acpiStop,
    },
    [],
    { runs },
  );
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
