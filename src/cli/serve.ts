// `vmlet serve`: the CRI runtime kubelet talks to. Flags, or a JSON config file with the
// same settings, choose the socket, the state dir, the CNI dirs, the image rules, the
// accelerator and the log level. Logs are pino JSON lines on stdout.
import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import pino from "pino";
import { CniClient } from "../cni-bridge/cni";
import { DEFAULT_SOCKET } from "../runtime/cri/server";
import { startVmlet } from "../runtime/daemon";
import { type ImageRule, loadImageRules } from "../runtime/images/rules";
import { createVmLauncher } from "../runtime/launcher";
import type { Accel } from "../runtime/types";
import { Tapmanager } from "../tapmanager";

export const SERVE_USAGE = `usage: vmlet serve [options]

  --config FILE           JSON with any of: socket, stateDir, cniConfDir, cniBinDir,
                          imageRules, accel, logLevel, cgroupDriver (flags win)
  --socket PATH           CRI socket (default ${DEFAULT_SOCKET})
  --state-dir DIR         sandboxes, containers, images, VMs (default /var/lib/vmlet)
  --cni-conf-dir DIR      CNI network configs (default /etc/cni/net.d)
  --cni-bin-dir DIR[:DIR] CNI plugin dirs (default /opt/cni/bin:/usr/lib/cni)
  --image-rules FILE      image name to URL rules, JSON (default /etc/vmlet/images.json)
  --accel kvm|tcg|auto    QEMU accelerator (default auto)
  --log-level LEVEL       trace, debug, info, warn, error (default info)`;

export interface ServeOptions {
  socket: string;
  stateDir: string;
  cniConfDir: string;
  cniBinDirs: string[];
  imageRules: string;
  accel: Accel;
  logLevel: string;
  cgroupDriver: "systemd" | "cgroupfs";
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
};

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
  };
  return validate({ ...DEFAULTS, ...file, ...flags }, "--");
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
  return o;
}

/** The rules file is read on every pull; a missing file means no image can be pulled. */
function imageRulesReader(file: string): () => ImageRule[] {
  return () => {
    if (!fs.existsSync(file)) throw new ServeConfigError(`image rules ${file}: no such file`);
    return loadImageRules(file);
  };
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
  });
  const vmlet = await startVmlet({
    socket: options.socket,
    stateDir: options.stateDir,
    networks: tapmanager,
    launcher: createVmLauncher({ logger: logger.child({ component: "vm" }) }),
    imageRules: imageRulesReader(options.imageRules),
    accel: options.accel,
    logger,
    cgroupDriver: options.cgroupDriver,
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
