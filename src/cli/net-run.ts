// `vmlet net run`: pod networks for network engineers, without a cluster. Sets up each
// pod's network, prints it as one JSON line, serves DHCP, and tears down on SIGINT or
// SIGTERM, or when the --exec command (given the taps as fds 3, 4, ...) exits.
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { CniClient } from "../cni-bridge/cni";
import { type PodNetwork, Tapmanager } from "../tapmanager";

export const NET_RUN_USAGE = `usage: vmlet net run --pod NAMESPACE/NAME [--pod ...] [options]

  --conf-dir DIR        CNI network configs (default /etc/cni/net.d)
  --bin-dir DIR[:DIR]   CNI plugin dirs (default /opt/cni/bin:/usr/lib/cni)
  --network NAME        attach this network (repeat for eth0, net1, ...; default: the conf dir's first)
  --state-dir DIR       pod network state and CNI cache (default /run/vmlet/net-run);
                        one run at a time per dir: give parallel runs their own
  --exec CMD            run CMD (via /bin/sh -c) with the taps as fds 3, 4, ... and
                        VMLET_TAP_FDS, VMLET_MACS, VMLET_MTUS set; exit with its status`;

export interface NetRunOptions {
  pods: { namespace: string; name: string }[];
  confDir: string;
  binDirs: string[];
  networks: string[];
  stateDir: string;
  exec?: string;
}

export function parseNetRunArgs(argv: string[]): NetRunOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      pod: { type: "string", multiple: true },
      "conf-dir": { type: "string", default: "/etc/cni/net.d" },
      "bin-dir": { type: "string", default: "/opt/cni/bin:/usr/lib/cni" },
      network: { type: "string", multiple: true },
      "state-dir": { type: "string", default: "/run/vmlet/net-run" },
      exec: { type: "string" },
    },
    strict: true,
    allowPositionals: false,
  });
  const pods = (values.pod ?? []).map((p) => {
    const m = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\/([a-z0-9]([-.a-z0-9]*[a-z0-9])?)$/.exec(p);
    if (!m) throw new Error(`--pod ${JSON.stringify(p)}: expected NAMESPACE/NAME (DNS labels)`);
    return { namespace: m[1], name: m[3] };
  });
  if (pods.length === 0) throw new Error("--pod: at least one NAMESPACE/NAME is required");
  return {
    pods,
    confDir: values["conf-dir"] as string,
    binDirs: (values["bin-dir"] as string).split(":").filter(Boolean),
    networks: values.network ?? [],
    stateDir: values["state-dir"] as string,
    ...(values.exec ? { exec: values.exec } : {}),
  };
}

/** The JSON line printed for a pod once its network is ready. */
export function describePod(network: PodNetwork): Record<string, unknown> {
  return {
    pod: `${network.pod.namespace}/${network.pod.name}`,
    netns: network.netnsPath,
    interfaces: network.interfaces.map((i) => ({
      ifname: i.ifname,
      network: i.network,
      tap: i.tap,
      mac: i.guestMac,
      mtu: i.mtu,
      addresses: i.addresses.map((a) => `${a.address}/${a.prefixLength}`),
      gateway: i.gateway ?? null,
      routes: i.routes.map((r) => ({ dst: `${r.dst}/${r.prefixLength}`, gateway: r.gateway })),
      dns: i.dns,
      // The IPv6 family apart: the guest gets it by RA + DHCPv6, routed by the pod netns.
      ipv6: i.ipv6
        ? {
            address: `${i.ipv6.address}/${i.ipv6.prefixLength}`,
            onLink: i.ipv6.onLink ? `${i.ipv6.onLink.prefix}/${i.ipv6.onLink.prefixLength}` : null,
            gateway: i.ipv6.gateway ?? null,
            routes: i.ipv6.routes.map((r) => ({
              dst: `${r.dst}/${r.prefixLength}`,
              gateway: r.gateway,
            })),
            nameservers: i.ipv6.nameservers,
          }
        : null,
    })),
  };
}

/**
 * Makes this run the state dir's one user: at start a run tears down what the dir holds
 * (leftovers of a run that was killed), which must never be a live run's pods.
 */
function claimStateDir(stateDir: string): () => void {
  fs.mkdirSync(stateDir, { recursive: true });
  const file = path.join(stateDir, "owner.pid");
  for (let attempt = 0; ; attempt++) {
    try {
      fs.writeFileSync(file, `${process.pid}\n`, { flag: "wx" });
      return () => fs.rmSync(file, { force: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0) throw error;
    }
    const owner = Number(fs.readFileSync(file, "utf8").trim());
    if (isLiveNetRun(owner)) {
      throw new Error(
        `--state-dir ${stateDir}: in use by vmlet net run (pid ${owner}); give each run its own`,
      );
    }
    fs.rmSync(file, { force: true }); // its run was killed: take over, clean up below
  }
}

function isLiveNetRun(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    return argv.includes("net") && argv.includes("run");
  } catch {
    return false;
  }
}

export async function netRun(options: NetRunOptions): Promise<number> {
  const release = claimStateDir(options.stateDir);
  try {
    return await netRunClaimed(options);
  } finally {
    release();
  }
}

async function netRunClaimed(options: NetRunOptions): Promise<number> {
  const cni = new CniClient({
    confDir: options.confDir,
    binDirs: options.binDirs,
    cacheDir: path.join(options.stateDir, "cni"),
  });
  const tapmanager = new Tapmanager({ cni, stateDir: path.join(options.stateDir, "pods") });
  const ids: string[] = [];
  let stopping = false;
  const stopped = new Promise<void>((resolve) => {
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      process.on(signal, () => {
        stopping = true;
        resolve();
      });
    }
  });
  try {
    // Leftovers of a run that was killed are torn down first.
    const leftovers = await tapmanager.recover();
    for (const id of [...leftovers.recovered, ...leftovers.failed.map((f) => f.sandboxId)]) {
      await tapmanager.tearDown(id);
    }
    const networks: PodNetwork[] = [];
    for (const pod of options.pods) {
      if (stopping) return 0;
      const sandboxId = crypto.randomBytes(16).toString("hex");
      ids.push(sandboxId);
      const network = await tapmanager.setUp({
        pod: { ...pod, uid: crypto.randomUUID(), sandboxId },
        ...(options.networks.length > 0 ? { networks: options.networks } : {}),
      });
      networks.push(network);
      process.stdout.write(`${JSON.stringify(describePod(network))}\n`);
    }
    if (options.exec === undefined) {
      await stopped;
      return 0;
    }
    return await execWithTaps(
      options.exec,
      ids.flatMap((id) => tapmanager.openTaps(id)),
      stopped,
    );
  } finally {
    // What each guest tried to send that it may not, read before the networks go.
    for (const [i, id] of ids.entries()) {
      const drops = tapmanager.dropCounts(id);
      const pod = options.pods[i];
      if (drops) {
        process.stdout.write(
          `${JSON.stringify({ pod: `${pod.namespace}/${pod.name}`, drops: drops.total, interfaces: drops.interfaces })}\n`,
        );
      }
    }
    await tapmanager.close();
    for (const id of ids.reverse()) await tapmanager.tearDown(id);
    cni.close();
  }
}

async function execWithTaps(
  command: string,
  taps: { fd: number; guestMac: string; mtu: number }[],
  stopped: Promise<void>,
): Promise<number> {
  const fds = taps.map((_, i) => 3 + i);
  const child = spawn("/bin/sh", ["-c", command], {
    stdio: ["inherit", "inherit", "inherit", ...taps.map((t) => t.fd)],
    env: {
      ...process.env,
      VMLET_TAP_FDS: fds.join(","),
      VMLET_MACS: taps.map((t) => t.guestMac).join(","),
      VMLET_MTUS: taps.map((t) => String(t.mtu)).join(","),
    },
  });
  // The child holds its own copies now.
  for (const t of taps) fs.closeSync(t.fd);
  void stopped.then(() => child.kill("SIGTERM"));
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("exit", (code, signal) =>
      resolve(code ?? 128 + (signal ? os.constants.signals[signal] : 0)),
    );
  });
}
