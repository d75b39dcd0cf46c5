// The pod side for guest tests: a pod netns with a bridge holding the pod's tap (as the
// tapmanager builds it), and a stand-in DHCP server (busybox udhcpd) for proving the
// guests and clients without vmlet's own server.
import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { openTap } from "../../src/sys/tap";
import { ipIn, makeNetns } from "./fixtures";

export interface PodTap {
  netns: string;
  nsPath: string;
  bridge: string;
  tapName: string;
  /** The tap fd a VM (or the relay) gets. */
  tapFd: number;
  /** The bridge's address, e.g. 10.20.0.1/24, when one was given. */
  address?: string;
  /** Closes the tap fd and removes the netns. */
  remove(): void;
}

/** A pod netns with bridge `br0` (address optional) and tap `tap0` enslaved, all up. */
export function makePodTap(options: { address?: string; mtu?: number } = {}): PodTap {
  const pod = makeNetns("p");
  try {
    const tap = openTap(pod.path, { name: "tap0" });
    try {
      ipIn(pod.name, "link", "add", "br0", "type", "bridge");
      ipIn(pod.name, "link", "set", "tap0", "master", "br0");
      if (options.mtu) {
        ipIn(pod.name, "link", "set", "tap0", "mtu", String(options.mtu));
        ipIn(pod.name, "link", "set", "br0", "mtu", String(options.mtu));
      }
      if (options.address) ipIn(pod.name, "addr", "add", options.address, "dev", "br0");
      ipIn(pod.name, "link", "set", "tap0", "up");
      ipIn(pod.name, "link", "set", "br0", "up");
    } catch (error) {
      fs.closeSync(tap.fd);
      throw error;
    }
    return {
      netns: pod.name,
      nsPath: pod.path,
      bridge: "br0",
      tapName: tap.name,
      tapFd: tap.fd,
      address: options.address,
      remove() {
        try {
          fs.closeSync(tap.fd);
        } catch {}
        pod.remove();
      },
    };
  } catch (error) {
    pod.remove();
    throw error;
  }
}

export interface StandInServerConfig {
  /** Pool: the client gets `start` (a one-address pool makes the lease predictable). */
  start: string;
  end?: string;
  subnet: string;
  router?: string;
  dns?: string[];
  domain?: string;
  mtu?: number;
  leaseSeconds?: number;
  /** More udhcpd.conf lines, e.g. "option staticroutes 10.99.0.0/16 10.40.0.1". */
  extra?: string[];
}

export interface StandInServer {
  pid: number;
  output(): string;
  stop(): Promise<void>;
}

/** busybox udhcpd on `iface` in `netns` (foreground; stop() kills its own PID). */
export async function startStandInDhcpServer(
  netns: string,
  iface: string,
  config: StandInServerConfig,
): Promise<StandInServer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmlet-udhcpd-"));
  const lines = [
    `start ${config.start}`,
    `end ${config.end ?? config.start}`,
    `interface ${iface}`,
    `lease_file ${dir}/leases`,
    `pidfile ${dir}/pid`,
    `option subnet ${config.subnet}`,
    ...(config.router ? [`option router ${config.router}`] : []),
    ...(config.dns?.length ? [`option dns ${config.dns.join(" ")}`] : []),
    ...(config.domain ? [`option domain ${config.domain}`] : []),
    ...(config.mtu ? [`option mtu ${config.mtu}`] : []),
    `option lease ${config.leaseSeconds ?? 600}`,
    ...(config.extra ?? []),
  ];
  fs.writeFileSync(path.join(dir, "udhcpd.conf"), `${lines.join("\n")}\n`);
  fs.writeFileSync(path.join(dir, "leases"), "");
  const child: ChildProcess = spawn(
    "ip",
    // -a 0: no ARP ping of the address before offering (it costs 2 s a lease).
    ["netns", "exec", netns, "busybox", "udhcpd", "-f", "-a", "0", path.join(dir, "udhcpd.conf")],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  child.on("error", () => {}); // a failed spawn ends in "exit" too
  let out = "";
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`udhcpd not started: ${out}`)), 5000);
    const onData = (d: Buffer) => {
      out += d;
      if (out.includes("started")) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`udhcpd exited (${code}): ${out}`));
    });
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  await ready;
  return {
    pid: child.pid!,
    output: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
}
