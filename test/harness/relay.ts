// The relay guest: a guest netns whose NIC (a second tap there) is joined to the pod's
// tap by a copy loop, so real DHCP clients can run "behind" the pod tap exactly where a
// VM's NIC would be, without a VM. The copy loop runs in a child node process
// (relay-child.js) that gets both tap fds through spawn's stdio.
import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { openTap } from "../../src/sys/tap";
import { ipIn, makeNetns, type TestNetns } from "./fixtures";

export interface RelayOptions {
  /** The pod's tap fd (the one QEMU would get). The caller keeps owning it. */
  podTapFd: number;
  /** The guest NIC's MAC (the CNI MAC). */
  mac: string;
  /** Guest NIC MTU; the kernel default (1500) when omitted. */
  mtu?: number;
  /** Name of the NIC in the guest netns, "eth0" by default. */
  ifname?: string;
  /** An existing guest netns (name); a new one is made (and removed by stop) otherwise. */
  netns?: string;
}

export interface RelayGuest {
  /** The guest netns name (use with ipIn / run / the DHCP client helpers). */
  netns: string;
  nsPath: string;
  /** The guest NIC (a tap) in the guest netns. */
  ifname: string;
  mac: string;
  /** PID of the relay child process. */
  pid: number;
  /** Kills the relay (own PID only), which removes the guest tap; removes a netns it made. */
  stop(): Promise<void>;
}

function waitForReady(child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = "";
    let err = "";
    const timer = setTimeout(
      () => reject(new Error(`relay: not ready after 10 s: ${err}`)),
      10_000,
    );
    child.stderr!.on("data", (d) => {
      err += d;
    });
    child.stdout!.on("data", (d) => {
      out += d;
      if (out.includes("relay ready")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`relay exited (${code ?? signal}) before ready: ${err}`));
    });
  });
}

/** Makes the guest netns and its NIC, and starts the relay between it and the pod tap. */
export async function startRelay(options: RelayOptions): Promise<RelayGuest> {
  const ifname = options.ifname ?? "eth0";
  const made: TestNetns | undefined = options.netns ? undefined : makeNetns("g");
  const netns = options.netns ?? made!.name;
  const nsPath = `/run/netns/${netns}`;
  let child: ChildProcess | undefined;
  try {
    const tap = openTap(nsPath, { name: ifname });
    try {
      ipIn(netns, "link", "set", ifname, "address", options.mac);
      if (options.mtu) ipIn(netns, "link", "set", ifname, "mtu", String(options.mtu));
      ipIn(netns, "link", "set", ifname, "up");
      child = spawn(process.execPath, [path.join(__dirname, "relay-child.js")], {
        stdio: ["ignore", "pipe", "pipe", options.podTapFd, tap.fd],
      });
      child.on("error", () => {}); // a failed spawn ends in "exit" too
    } finally {
      // The child holds the guest tap now; it vanishes when the child exits.
      fs.closeSync(tap.fd);
    }
    await waitForReady(child);
  } catch (error) {
    if (child?.pid !== undefined && child.exitCode === null) child.kill("SIGKILL");
    made?.remove();
    throw error;
  }
  const relay = child;
  const exited = new Promise<void>((resolve) => {
    if (relay.exitCode !== null || relay.signalCode !== null) resolve();
    else relay.once("exit", () => resolve());
  });
  return {
    netns,
    nsPath,
    ifname,
    mac: options.mac,
    pid: relay.pid!,
    async stop() {
      if (relay.exitCode === null && relay.signalCode === null) relay.kill("SIGKILL");
      await exited;
      made?.remove();
    },
  };
}
