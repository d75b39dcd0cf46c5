// A real containerd (Debian's 1.6.20, runc) for the CRI proxy tests, with the images it
// runs served by a real docker-registry on 127.0.0.1: both started inside the test's
// private namespace with their own dirs and stopped by their PIDs. The images are the
// OCI layout scripts/build-test-oci.sh makes from busybox-static, pushed through the
// registry's HTTP API, so nothing is fetched from outside.
import { type ChildProcess, spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { connectCri } from "../../src/runtime/cri/client";

export const OCI_DIR = path.join(
  process.env.VMLET_OCI_DIR ?? path.resolve(__dirname, "../../../.cache/oci"),
);
export const CONTAINERD_BIN = "/usr/bin/containerd";
export const REGISTRY_BIN = "/usr/bin/docker-registry";
/** Where the images land in the registry; containerd reaches both names through mirrors. */
export const BUSYBOX_IMAGE = "docker.io/library/busybox:latest";
export const PAUSE_IMAGE = "registry.k8s.io/pause:3.6";

/** Why the containerd tests cannot run here, or false. */
export function containerdMissing(): string | false {
  for (const bin of [CONTAINERD_BIN, REGISTRY_BIN, "/usr/sbin/runc"]) {
    if (!fs.existsSync(bin)) return `${bin} is missing: run scripts/setup.sh`;
  }
  if (!fs.existsSync(path.join(OCI_DIR, "index.json")))
    return `no OCI images at ${OCI_DIR}: run scripts/build-test-oci.sh`;
  return false;
}

interface Daemon {
  child: ChildProcess;
  exited: Promise<void>;
  output: () => string;
}

function startDaemon(bin: string, args: string[], logFile: string): Daemon {
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  const log = fs.createWriteStream(logFile, { flags: "a" });
  let tail = "";
  const keep = (d: Buffer) => {
    log.write(d);
    tail = (tail + d.toString()).slice(-8000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise<void>((resolve) =>
    child.once("exit", () => {
      log.end();
      resolve();
    }),
  );
  return { child, exited, output: () => tail };
}

async function stopDaemon(d: Daemon | undefined, signal: NodeJS.Signals): Promise<void> {
  if (!d || d.child.exitCode !== null || d.child.signalCode !== null) return;
  d.child.kill(signal);
  const timer = setTimeout(() => d.child.kill("SIGKILL"), 10_000);
  await d.exited;
  clearTimeout(timer);
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function until(what: string, check: () => Promise<boolean>, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export interface Registry {
  /** host:port */
  address: string;
  stop(): Promise<void>;
}

/** docker-registry on 127.0.0.1 with its storage under `dir`, seeded with busybox and pause. */
export async function startRegistry(dir: string): Promise<Registry> {
  fs.mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  const config = path.join(dir, "config.yml");
  fs.writeFileSync(
    config,
    [
      "version: 0.1",
      "log:",
      "  level: warn",
      "storage:",
      "  filesystem:",
      `    rootdirectory: ${path.join(dir, "storage")}`,
      "  delete:",
      "    enabled: true",
      "http:",
      `  addr: ${address}`,
      "",
    ].join("\n"),
  );
  const daemon = startDaemon(REGISTRY_BIN, ["serve", config], path.join(dir, "registry.log"));
  const registry = { address, stop: () => stopDaemon(daemon, "SIGTERM") };
  try {
    await until(
      "docker-registry to answer",
      async () => (await fetch(`http://${address}/v2/`)).ok,
      10_000,
    );
    await pushLayout(address, OCI_DIR, {
      busybox: "library/busybox:latest",
      pause: "pause:3.6",
    });
  } catch (error) {
    await registry.stop();
    throw new Error(`registry at ${address}: ${String(error)}\n${daemon.output()}`, {
      cause: error,
    });
  }
  return registry;
}

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** Pushes each image of an OCI layout (by its ref.name) to `repo:tag`, as `docker push` would. */
async function pushLayout(
  address: string,
  layout: string,
  targets: Record<string, string>,
): Promise<void> {
  const index = JSON.parse(fs.readFileSync(path.join(layout, "index.json"), "utf8")) as {
    manifests: Descriptor[];
  };
  const blob = (digest: string) =>
    fs.readFileSync(path.join(layout, "blobs", digest.replace(":", "/")));
  for (const entry of index.manifests) {
    const target = targets[entry.annotations?.["org.opencontainers.image.ref.name"] ?? ""];
    if (!target) continue;
    const [repo, tag] = target.split(":");
    const manifestBytes = blob(entry.digest);
    const manifest = JSON.parse(manifestBytes.toString()) as {
      config: Descriptor;
      layers: Descriptor[];
    };
    for (const d of [manifest.config, ...manifest.layers]) {
      const start = await fetch(`http://${address}/v2/${repo}/blobs/uploads/`, { method: "POST" });
      if (start.status !== 202) throw new Error(`start upload to ${repo}: HTTP ${start.status}`);
      const location = new URL(start.headers.get("location") ?? "", `http://${address}`);
      location.searchParams.set("digest", d.digest);
      const put = await fetch(location, {
        method: "PUT",
        headers: { "content-type": "application/octet-stream" },
        body: blob(d.digest),
      });
      if (put.status !== 201) throw new Error(`upload ${d.digest} to ${repo}: HTTP ${put.status}`);
    }
    const put = await fetch(`http://${address}/v2/${repo}/manifests/${tag}`, {
      method: "PUT",
      headers: { "content-type": entry.mediaType },
      body: manifestBytes,
    });
    if (put.status !== 201) throw new Error(`push ${repo}:${tag}: HTTP ${put.status}`);
  }
}

export interface ContainerdOptions {
  /** Its root, state, socket, config and log all go under here. */
  dir: string;
  cniConfDir: string;
  cniBinDir: string;
  /** The registry (host:port) docker.io and registry.k8s.io are mirrored to. */
  registry: string;
}

export interface Containerd {
  socket: string;
  /** Its log (stdout and stderr), across restarts. */
  logFile: string;
  pid(): number | undefined;
  /** Starts it (again) on the same root and state: its pods and images are kept. */
  start(): Promise<void>;
  /** SIGTERM, as systemd stops it; running containers keep running (their shims). */
  stop(): Promise<void>;
  kill(): Promise<void>;
  /** Stops containerd and the shims of its containers it left running. */
  remove(): Promise<void>;
}

/** containerd with a CRI config of its own; start() brings it up and waits for its CRI. */
export function makeContainerd(options: ContainerdOptions): Containerd {
  const { dir } = options;
  fs.mkdirSync(dir, { recursive: true });
  const socket = path.join(dir, "containerd.sock");
  const config = path.join(dir, "config.toml");
  const cri = 'plugins."io.containerd.grpc.v1.cri"';
  fs.writeFileSync(
    config,
    [
      "version = 2",
      `root = "${path.join(dir, "root")}"`,
      `state = "${path.join(dir, "state")}"`,
      "[grpc]",
      `  address = "${socket}"`,
      "[ttrpc]",
      `  address = "${socket}.ttrpc"`,
      `[plugins."io.containerd.internal.v1.opt"]`,
      `  path = "${path.join(dir, "opt")}"`,
      `[${cri}]`,
      `  sandbox_image = "${PAUSE_IMAGE}"`,
      // This kernel refuses negative OOM scores, which the CRI would set for the sandbox.
      "  restrict_oom_score_adj = true",
      '  stream_server_address = "127.0.0.1"',
      '  stream_server_port = "0"',
      `[${cri}.containerd]`,
      '  snapshotter = "overlayfs"',
      '  default_runtime_name = "runc"',
      `[${cri}.containerd.runtimes.runc]`,
      '  runtime_type = "io.containerd.runc.v2"',
      `[${cri}.cni]`,
      `  bin_dir = "${options.cniBinDir}"`,
      `  conf_dir = "${options.cniConfDir}"`,
      `[${cri}.registry.mirrors."docker.io"]`,
      `  endpoint = ["http://${options.registry}"]`,
      `[${cri}.registry.mirrors."registry.k8s.io"]`,
      `  endpoint = ["http://${options.registry}"]`,
      "",
    ].join("\n"),
  );
  let daemon: Daemon | undefined;
  const shimsBefore = new Set(shimPids());
  const logFile = path.join(dir, "containerd.log");
  return {
    socket,
    logFile,
    pid: () => daemon?.child.pid,
    async start() {
      if (daemon && daemon.child.exitCode === null && daemon.child.signalCode === null) return;
      fs.rmSync(socket, { force: true });
      const d = startDaemon(CONTAINERD_BIN, ["--config", config], logFile);
      daemon = d;
      const client = connectCri(socket);
      try {
        await until(
          "containerd's CRI to answer Version",
          async () => {
            if (d.child.exitCode !== null) throw new Error("exited");
            await client.runtime.Version({ version: "v1" }, { deadlineMs: 1000 });
            return true;
          },
          30_000,
        ).catch((error: unknown) => {
          throw new Error(`containerd did not come up: ${String(error)}\n${d.output()}`, {
            cause: error,
          });
        });
      } finally {
        client.close();
      }
    },
    stop: () => stopDaemon(daemon, "SIGTERM"),
    kill: () => stopDaemon(daemon, "SIGKILL"),
    async remove() {
      await stopDaemon(daemon, "SIGTERM");
      // The shims this containerd started (and their containers) are ours to end, by PID.
      for (const pid of shimPids()) {
        if (shimsBefore.has(pid) || !shimOf(pid, dir)) continue;
        try {
          process.kill(-pid, "SIGKILL");
        } catch {
          try {
            process.kill(pid, "SIGKILL");
          } catch {
            // gone already
          }
        }
      }
    },
  };
}

/** PIDs of running containerd-shim-runc-v2 processes. */
function shimPids(): number[] {
  const out: number[] = [];
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const comm = fs.readFileSync(`/proc/${entry}/comm`, "utf8").trim();
      if (comm.startsWith("containerd-shim")) out.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

/** The shim was started for a containerd whose ttrpc socket is under `dir`. */
function shimOf(pid: number, dir: string): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(dir);
  } catch {
    return false;
  }
}

/** A short random suffix, for pod names unique within a run. */
export function suffix(): string {
  return crypto.randomBytes(3).toString("hex");
}
