// `vmlet serve`: the CRI runtime kubelet talks to. Flags, or a JSON config file with the
// same settings, choose the socket, the state dir, the CNI dirs, the image rules, the
// accelerator and the log level. Logs are pino JSON lines on stdout.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import pino from "pino";
import { CniClient } from "../cni-bridge/cni";
import { DEFAULT_SOCKET } from "../runtime/cri/server";
import { startVmlet } from "../runtime/daemon";
import { DEFAULT_MAX_IMAGE_BYTES } from "../runtime/images/image-store";
import { type ImageRule, loadImageRules } from "../runtime/images/rules";
import { parseAddress } from "../runtime/streaming/cri-calls";
import type { Accel } from "../runtime/types";
import { DEFAULT_QEMU_USER, QEMU_USER_NAME } from "../runtime/vm";
import { createVmLauncher } from "../runtime/vm/qemu-launcher";
import { DEFAULT_NETNS_POOL, Tapmanager } from "../tapmanager";
import { parseQuantity } from "../util/quantity";

/** The image store's own limit, as the setting writes it. */
export const DEFAULT_IMAGE_MAX_SIZE = `${DEFAULT_MAX_IMAGE_BYTES / 2 ** 30}Gi`;

export const SERVE_USAGE = `usage: vmlet serve [options]

  --config FILE           JSON with any of: socket, stateDir, cniConfDir, cniBinDir,
                          imageRules, accel, logLevel, cgroupDriver, qemuConfinement,
                          qemuUser, imageMaxSize, streamAddress (flags win)
  --socket PATH           CRI socket (default ${DEFAULT_SOCKET})
  --state-dir DIR         sandboxes, containers, images, VMs (default /var/lib/vmlet)
  --cni-conf-dir DIR      CNI network configs (default /etc/cni/net.d)
  --cni-bin-dir DIR[:DIR] CNI plugin dirs (default /opt/cni/bin:/usr/lib/cni)
  --image-rules FILE      image name to URL rules, JSON (default /etc/vmlet/images.json)
  --accel kvm|tcg|auto    QEMU accelerator (default auto)
  --log-level LEVEL       trace, debug, info, warn, error (default info)
  --qemu-confinement on|off
                          on: QEMU runs with seccomp, as --qemu-user, without cores;
                          off (debugging only): as root, unfiltered (default on)
  --qemu-user NAME        the user QEMU drops to (default ${DEFAULT_QEMU_USER})
  --image-max-size SIZE   largest image download, e.g. 64Gi, 500Mi (default ${DEFAULT_IMAGE_MAX_SIZE})
  --stream-address H:P    exec/attach/port-forward HTTP server kubelet proxies to
                          (default 127.0.0.1:0, a port chosen at start)
  --containerd-socket PATH
                          front the node's containerd: pods of --runtime-handler are
                          VMs, every other pod a container of containerd (default: off)
  --runtime-handler NAME  the RuntimeClass handler of VM pods, with --containerd-socket
                          (default vmlet)`;

export interface ServeOptions {
  socket: string;
  stateDir: string;
  cniConfDir: string;
  cniBinDirs: string[];
  imageRules: string;
  accel: Accel;
  logLevel: string;
  cgroupDriver: "systemd" | "cgroupfs";
  qemuConfinement: "on" | "off";
  qemuUser: string;
  /** A size such as 64Gi (binary units) or a number of bytes. */
  imageMaxSize: string;
  /** host:port of the streaming server; port 0 picks one at start. */
  streamAddress?: string;
  /** containerd's CRI socket, fronted for every pod not of `runtimeHandler`; "" is off. */
  containerdSocket?: string;
  /** The RuntimeClass handler of VM pods when fronting containerd (default vmlet). */
  runtimeHandler?: string;
  /** Pod network namespaces kept built ahead (a number, 0 for none): see netns-pool.ts. */
  netnsPool: string;
}

const DEFAULTS: ServeOptions = {
  socket: DEFAULT_SOCKET,
  stateDir: "/var/lib/vmlet",
  cniConfDir: "/etc/cni/net.d",
  cniBinDirs: ["/opt/cni/bin", "/usr/lib/cni"],
  imageRules: "/etc/vmlet/images.json",
  accel: "auto",
  logLevel: "info",
  cgroupDriver: "systemd",
  qemuConfinement: "on",
  qemuUser: DEFAULT_QEMU_USER,
  imageMaxSize: DEFAULT_IMAGE_MAX_SIZE,
  streamAddress: "127.0.0.1:0",
  containerdSocket: "",
  runtimeHandler: "vmlet",
  netnsPool: String(DEFAULT_NETNS_POOL),
};
/** More would only hold kernel memory: a burst beyond the pool takes the cold path. */
const MAX_NETNS_POOL = 64;

const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];

export class ServeConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ServeConfigError";
  }
}

export function parseServeArgs(argv: string[]): ServeOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: "string" },
      socket: { type: "string" },
      "state-dir": { type: "string" },
      "cni-conf-dir": { type: "string" },
      "cni-bin-dir": { type: "string" },
      "image-rules": { type: "string" },
      accel: { type: "string" },
      "log-level": { type: "string" },
      "qemu-confinement": { type: "string" },
      "qemu-user": { type: "string" },
      "image-max-size": { type: "string" },
      "stream-address": { type: "string" },
      "containerd-socket": { type: "string" },
      "runtime-handler": { type: "string" },
      "netns-pool": { type: "string" },
    },
    strict: true,
    allowPositionals: false,
  });
  const file = values.config ? readConfigFile(values.config) : {};
  const flags: Partial<ServeOptions> = {
    ...(values.socket ? { socket: values.socket } : {}),
    ...(values["state-dir"] ? { stateDir: values["state-dir"] } : {}),
    ...(values["cni-conf-dir"] ? { cniConfDir: values["cni-conf-dir"] } : {}),
    ...(values["cni-bin-dir"] ? { cniBinDirs: splitDirs(values["cni-bin-dir"]) } : {}),
    ...(values["image-rules"] ? { imageRules: values["image-rules"] } : {}),
    ...(values.accel ? { accel: values.accel as Accel } : {}),
    ...(values["log-level"] ? { logLevel: values["log-level"] } : {}),
    ...(values["qemu-confinement"]
      ? { qemuConfinement: values["qemu-confinement"] as ServeOptions["qemuConfinement"] }
      : {}),
    ...(values["qemu-user"] ? { qemuUser: values["qemu-user"] } : {}),
    ...(values["image-max-size"] ? { imageMaxSize: values["image-max-size"] } : {}),
    ...(values["stream-address"] ? { streamAddress: values["stream-address"] } : {}),
    ...(values["containerd-socket"] ? { containerdSocket: values["containerd-socket"] } : {}),
    ...(values["runtime-handler"] ? { runtimeHandler: values["runtime-handler"] } : {}),
    ...(values["netns-pool"] !== undefined ? { netnsPool: values["netns-pool"] } : {}),
  };
  return validate({ ...DEFAULTS, ...file, ...flags }, "--");
}

/** The netns pool's size from its setting; a clear error for anything but 0..64. */
export function netnsPoolSize(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > MAX_NETNS_POOL) {
    throw new ServeConfigError(
      `netnsPool ${JSON.stringify(value)}: want a whole number from 0 to ${MAX_NETNS_POOL}`,
    );
  }
  return n;
}

function splitDirs(value: string): string[] {
  return value.split(":").filter(Boolean);
}

function readConfigFile(file: string): Partial<ServeOptions> {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (error) {
    throw new ServeConfigError(
      `--config ${file}: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ServeConfigError(`--config ${file}: not a JSON object`);
  }
  const out: Partial<ServeOptions> = {};
  const known = new Set([...Object.keys(DEFAULTS), "cniBinDir"]);
  for (const [key, value] of Object.entries(raw)) {
    if (!known.has(key))
      throw new ServeConfigError(`--config ${file}: unknown setting ${JSON.stringify(key)}`);
    if (key === "cniBinDir" || key === "cniBinDirs") {
      if (typeof value === "string") out.cniBinDirs = splitDirs(value);
      else if (Array.isArray(value) && value.every((v) => typeof v === "string"))
        out.cniBinDirs = value;
      else
        throw new ServeConfigError(
          `--config ${file}: ${key} must be "DIR[:DIR]" or a list of dirs`,
        );
      continue;
    }
    if (typeof value !== "string")
      throw new ServeConfigError(`--config ${file}: ${key} must be a string`);
    (out as Record<string, string>)[key] = value;
  }
  return out;
}

function validate(o: ServeOptions, _prefix: string): ServeOptions {
  if (!["kvm", "tcg", "auto"].includes(o.accel)) {
    throw new ServeConfigError(`accel ${JSON.stringify(o.accel)}: want kvm, tcg or auto`);
  }
  if (!LOG_LEVELS.includes(o.logLevel)) {
    throw new ServeConfigError(
      `log level ${JSON.stringify(o.logLevel)}: want one of ${LOG_LEVELS.join(", ")}`,
    );
  }
  if (!["systemd", "cgroupfs"].includes(o.cgroupDriver)) {
    throw new ServeConfigError(
      `cgroupDriver ${JSON.stringify(o.cgroupDriver)}: want systemd or cgroupfs`,
    );
  }
  for (const [name, value] of [
    ["socket", o.socket],
    ["state dir", o.stateDir],
    ["image rules", o.imageRules],
  ] as const) {
    if (!path.isAbsolute(value))
      throw new ServeConfigError(`${name} ${JSON.stringify(value)}: must be an absolute path`);
  }
  if (o.cniBinDirs.length === 0) throw new ServeConfigError("cni bin dir: at least one directory");
  netnsPoolSize(o.netnsPool);
  if (!["on", "off"].includes(o.qemuConfinement)) {
    throw new ServeConfigError(
      `qemuConfinement ${JSON.stringify(o.qemuConfinement)}: want on or off`,
    );
  }
  if (!QEMU_USER_NAME.test(o.qemuUser)) {
    throw new ServeConfigError(`qemuUser ${JSON.stringify(o.qemuUser)}: not a user name`);
  }
  parseSize(o.imageMaxSize, "imageMaxSize");
  try {
    if (o.streamAddress !== undefined) parseAddress(o.streamAddress);
  } catch (error) {
    throw new ServeConfigError((error as Error).message);
  }
  if (o.containerdSocket && !path.isAbsolute(o.containerdSocket)) {
    throw new ServeConfigError(
      `containerdSocket ${JSON.stringify(o.containerdSocket)}: must be an absolute path`,
    );
  }
  // RuntimeClass handlers are DNS labels (k8s.io/api/node/v1).
  if (
    o.runtimeHandler !== undefined &&
    !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(o.runtimeHandler)
  ) {
    throw new ServeConfigError(
      `runtimeHandler ${JSON.stringify(o.runtimeHandler)}: want a RuntimeClass handler name (a DNS label)`,
    );
  }
  return o;
}

/** `64Gi`, `500Mi`, `1048576`: bytes, as a Kubernetes quantity. */
export function parseSize(text: string, setting: string): number {
  const bytes = parseQuantity(text) ?? Number.NaN;
  if (!Number.isSafeInteger(bytes) || bytes < 1) {
    throw new ServeConfigError(
      `${setting} ${JSON.stringify(text)}: want a size such as 64Gi or 500Mi (or bytes)`,
    );
  }
  return bytes;
}

/** The rules file is read on every pull; a missing file means no image can be pulled. */
function imageRulesReader(file: string): () => ImageRule[] {
  return () => {
    if (!fs.existsSync(file)) throw new ServeConfigError(`image rules ${file}: no such file`);
    return loadImageRules(file);
  };
}

/** QEMU would only fail at the first StartContainer: say it now, and how to fix it. */
function requireUser(user: string): void {
  const found = spawnSync("getent", ["passwd", user], { encoding: "utf8" });
  if (found.status === 0) return;
  throw new ServeConfigError(
    `qemuUser ${JSON.stringify(user)}: no such user (QEMU drops to it); scripts/setup.sh makes ${DEFAULT_QEMU_USER}, see deploy/README.md, or set qemuConfinement off for debugging`,
  );
}

/** vmlet's parts assembled: CNI client, tapmanager, VM launcher, CRI server. */
export interface RunningVmlet {
  logger: pino.Logger;
  /** Stops serving; VMs and pod networks stay up for the next start to adopt. */
  close(): Promise<void>;
}

export async function startDaemon(
  options: ServeOptions,
  destination?: pino.DestinationStream,
): Promise<RunningVmlet> {
  if (options.qemuConfinement === "on") requireUser(options.qemuUser);
  const logger = pino({ level: options.logLevel, base: { pid: process.pid } }, destination);
  const cni = new CniClient({
    confDir: options.cniConfDir,
    binDirs: options.cniBinDirs,
    cacheDir: path.join(options.stateDir, "cni"),
  });
  const tapmanager = new Tapmanager({
    cni,
    stateDir: path.join(options.stateDir, "pods"),
    log: logger.child({ component: "dhcp" }),
    sharedNetworks: Boolean(options.containerdSocket),
    netnsPool: netnsPoolSize(options.netnsPool),
  });
  const vmlet = await startVmlet({
    socket: options.socket,
    stateDir: options.stateDir,
    networks: tapmanager,
    launcher: createVmLauncher({
      logger: logger.child({ component: "vm" }),
      confinement: options.qemuConfinement === "on" ? { user: options.qemuUser } : null,
    }),
    imageRules: imageRulesReader(options.imageRules),
    imageMaxBytes: parseSize(options.imageMaxSize, "imageMaxSize"),
    accel: options.accel,
    logger,
    cgroupDriver: options.cgroupDriver,
    ...(options.streamAddress ? { streamAddress: options.streamAddress } : {}),
    ...(options.containerdSocket
      ? {
          containerd: {
            socket: options.containerdSocket,
            vmHandlers: [options.runtimeHandler ?? "vmlet"],
          },
        }
      : {}),
  });
  return {
    logger,
    async close() {
      await vmlet.close();
      await tapmanager.close();
      cni.close();
    },
  };
}

/** sysexits.h EX_SOFTWARE: vmlet ended on an error nothing handled. */
export const CRASH_EXIT_CODE = 70;

/**
 * The last resort: an error no handler caught leaves vmlet in a state nobody reasoned
 * about, so it is logged with what is known and vmlet exits non-zero. systemd restarts it
 * (Restart=always), and with KillMode=process the VMs run on and are adopted again.
 */
export function installCrashPolicy(
  logger: pino.Logger,
  exit: (code: number) => void = (code) => process.exit(code),
): void {
  const crash = (kind: string) => (error: unknown) => {
    try {
      logger.fatal(
        { err: error, kind },
        `${kind}: vmlet exits (code ${CRASH_EXIT_CODE}) to be restarted; VMs keep running`,
      );
    } finally {
      exit(CRASH_EXIT_CODE);
    }
  };
  process.on("uncaughtException", crash("uncaught exception"));
  process.on("unhandledRejection", crash("unhandled rejection"));
}

export async function serve(options: ServeOptions): Promise<number> {
  const daemon = await startDaemon(options);
  installCrashPolicy(daemon.logger);
  daemon.logger.info({ ...options }, "vmlet serving");
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once("SIGINT", () => resolve("SIGINT"));
    process.once("SIGTERM", () => resolve("SIGTERM"));
  });
  // VMs and pod networks stay up: the next start adopts them.
  daemon.logger.info({ signal }, "vmlet stopping; VMs keep running");
  await daemon.close();
  return 0;
}
