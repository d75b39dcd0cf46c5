// The built-in default: vmlet's main job on a demo node. In a private namespace it writes
// a bridge + host-local CNI config, serves the test guest's disk over HTTP, starts vmlet,
// and runs one VM pod through the CRI socket the way kubelet does; then it shows the pod
// IP, the lease the guest took, and that the node reaches the guest.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { parseArgs } from "node:util";
import pino from "pino";
import { connectCri } from "../runtime/cri/client";
import { DEFAULT_QEMU_USER } from "../runtime/vm";
import { listNetns } from "../sys/netns";
import { enterPrivateNamespace, privateNamespaceHolderCommand } from "../sys/private-namespace";
import { Rtnl } from "../sys/rtnl";
import { DEFAULT_NETNS_POOL, isPoolNetns } from "../tapmanager";
import { DEFAULT_IMAGE_MAX_SIZE, startDaemon } from "./serve";

const ROOT = "/run/vmlet-demo";
const SOCKET = "/run/vmlet/vmlet.sock";
const IMAGE = "vmlet.io/demo-guest";
const LEASE_TIMEOUT_MS = 120_000;

function guestDisk(): string {
  const dir = process.env.VMLET_GUESTS_DIR ?? path.resolve(__dirname, "../../../.cache/guests");
  const disk = path.join(dir, "disk.qcow2");
  if (!fs.existsSync(disk)) {
    throw new Error(`demo guest ${disk} is missing: run scripts/build-test-guests.sh first`);
  }
  return disk;
}

function say(text: string): void {
  console.log(`demo: ${text}`);
}

/** Serves one file on 127.0.0.1, the demo's image registry. */
async function serveFile(file: string): Promise<{ url: string; close(): void }> {
  const server = http.createServer((_req, res) => {
    res.setHeader("content-length", fs.statSync(file).size);
    fs.createReadStream(file).pipe(res);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  return { url: `http://127.0.0.1:${port}/disk.qcow2`, close: () => server.close() };
}

/** Records still in the state dir's sandbox, container, VM and pod dirs. */
function stateLeft(stateDir: string): string[] {
  return ["sandboxes", "containers", "vms", "pods"].flatMap((dir) => {
    const full = path.join(stateDir, dir);
    return fs.existsSync(full) ? fs.readdirSync(full).map((f) => `${dir}/${f}`) : [];
  });
}

async function waitForLease(logPath: string): Promise<string> {
  const deadline = Date.now() + LEASE_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const text = fs.existsSync(logPath) ? fs.readFileSync(logPath, "utf8") : "";
    const line = /VMLET-GUEST lease event="bound".*$/m.exec(text)?.[0];
    if (line) return line;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`no DHCP lease in ${logPath} after ${LEASE_TIMEOUT_MS / 1000} s`);
}

export async function runDemo(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { keep: { type: "boolean" } }, strict: true });
  const disk = guestDisk();
  enterPrivateNamespace();
  say("a private node namespace: nothing here touches the machine's network");
  const node = Rtnl.open("/proc/self/ns/net");
  await node.setUp("lo");
  node.close();

  const confDir = path.join(ROOT, "net.d");
  fs.mkdirSync(confDir, { recursive: true });
  fs.writeFileSync(
    path.join(confDir, "10-demo.conflist"),
    JSON.stringify({
      cniVersion: "1.0.0",
      name: "demo",
      plugins: [
        {
          type: "bridge",
          bridge: "cni0",
          isGateway: true,
          ipMasq: false,
          ipam: {
            type: "host-local",
            ranges: [[{ subnet: "10.88.0.0/24" }]],
            routes: [{ dst: "0.0.0.0/0" }],
          },
        },
      ],
    }),
  );
  const registry = await serveFile(disk);
  const rules = path.join(ROOT, "images.json");
  fs.writeFileSync(rules, JSON.stringify([{ name: IMAGE, url: registry.url }]));
  const logFile = path.join(ROOT, "vmlet.log");
  const daemon = await startDaemon(
    {
      socket: SOCKET,
      stateDir: path.join(ROOT, "state"),
      cniConfDir: confDir,
      cniBinDirs: ["/opt/cni/bin", "/usr/lib/cni"],
      imageRules: rules,
      accel: "tcg",
      logLevel: "info",
      cgroupDriver: "systemd",
      qemuConfinement: "on",
      qemuUser: DEFAULT_QEMU_USER,
      imageMaxSize: DEFAULT_IMAGE_MAX_SIZE,
      netnsPool: String(DEFAULT_NETNS_POOL),
    },
    pino.destination({ dest: logFile, sync: true }),
  );
  say(`vmlet serving CRI on ${SOCKET} (log: ${logFile})`);
  const cri = connectCri(SOCKET);
  try {
    const version = await cri.runtime.Version({ version: "v1" });
    say(
      `Version: ${version.runtimeName} ${version.runtimeVersion}, CRI ${version.runtimeApiVersion}`,
    );
    const { imageRef } = await cri.image.PullImage({ image: { image: IMAGE } });
    say(`PullImage ${IMAGE} -> ${imageRef}`);
    const logDirectory = path.join(ROOT, "pods", "default_demo-vm");
    const sandboxConfig = {
      metadata: { name: "demo-vm", namespace: "default", uid: "demo-vm-uid", attempt: 0 },
      hostname: "demo-vm",
      logDirectory,
      labels: { app: "demo" },
      annotations: {},
      dnsConfig: { servers: ["10.96.0.10"], searches: ["default.svc.cluster.local"], options: [] },
      linux: { securityContext: { namespaceOptions: { network: "POD" as const } } },
    };
    const { podSandboxId } = await cri.runtime.RunPodSandbox({ config: sandboxConfig });
    const status = await cri.runtime.PodSandboxStatus({ podSandboxId });
    const podIp = status.status?.network?.ip ?? "";
    say(`RunPodSandbox -> ${podSandboxId.slice(0, 13)}, pod IP ${podIp}`);
    const { containerId } = await cri.runtime.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "guest" }, image: { image: imageRef }, logPath: "guest/0.log" },
      sandboxConfig,
    });
    await cri.runtime.StartContainer({ containerId });
    say(`StartContainer ${containerId.slice(0, 13)}: QEMU (TCG) boots the guest`);
    const t0 = Date.now();
    const lease = await waitForLease(path.join(logDirectory, "guest/0.log"));
    say(
      `the guest's lease, from its console in the CRI log (${((Date.now() - t0) / 1000).toFixed(1)} s):`,
    );
    console.log(`  ${lease.replace(/ dhcp_\w+="[^"]*"/g, "")}`);
    const ping = execFileSync("ping", ["-c", "1", "-W", "3", podIp], { encoding: "utf8" });
    say(`the node reaches the guest: ${/time=\S+ ms/.exec(ping)?.[0] ?? "reply"}`);
    const container = await cri.runtime.ContainerStatus({ containerId });
    say(`ContainerStatus: ${container.status?.state}`);
    const exec = await cri.runtime.ExecSync({
      containerId,
      cmd: ["uname", "-sr"],
      timeout: 30,
    });
    say(
      `ExecSync [uname -sr] in the guest (QEMU guest agent): ${exec.stdout.toString().trim()} (exit ${exec.exitCode})`,
    );
    if (values.keep) {
      const holder = privateNamespaceHolderCommand();
      say("vmlet keeps serving until Ctrl-C (or SIGINT to this process group).");
      if (holder) {
        // The demo node is a network and mount namespace: enter both to reach it.
        const enter = `nsenter -t ${holder} -n -m`;
        say("from another shell, as root, inside the demo node:");
        console.log(`  ${enter} ping -c 1 ${podIp}`);
        console.log(
          `  ${enter} crictl --runtime-endpoint unix://${SOCKET} pods   # crictl: cri-tools`,
        );
      }
      await new Promise<void>((resolve) => process.once("SIGINT", () => resolve()));
    }
    const stopAt = Date.now();
    await cri.runtime.StopContainer({ containerId, timeout: 30 });
    const stopped = (await cri.runtime.ContainerStatus({ containerId })).status;
    say(
      `StopContainer: ACPI power button, ${stopped?.state} with exit ${stopped?.exitCode} ` +
        `(${stopped?.reason}) in ${((Date.now() - stopAt) / 1000).toFixed(1)} s`,
    );
    await cri.runtime.StopPodSandbox({ podSandboxId });
    await cri.runtime.RemovePodSandbox({ podSandboxId });
    const pooled = listNetns().filter(isPoolNetns);
    const left = [
      ...listNetns().filter((n) => !isPoolNetns(n)),
      ...stateLeft(path.join(ROOT, "state")),
    ];
    say(
      left.length === 0
        ? `stopped and removed: no pod netns or state left (${pooled.length} netns of the pool kept built for the next pods)`
        : `left behind: ${left.join(", ")}`,
    );
    say(`run with --keep to leave it serving and reach it with crictl through ${SOCKET}`);
    return 0;
  } finally {
    cri.close();
    await daemon.close();
    registry.close();
    const left = listNetns();
    say(left.length === 0 ? "vmlet stopped: no netns left" : `left behind: ${left.join(", ")}`);
  }
}
