// The QEMU command line, as a pure function of the spec, the file layout and the
// accelerator chosen: every value that reaches an option string is validated or escaped.
import path from "node:path";
import { VmSpecError } from "./errors";
import type { QemuConfinement, VmSpec } from "./types";

/** The accelerator as resolved: "kvm:tcg" asks for kvm and falls back to tcg. */
export type ResolvedAccel = "kvm" | "tcg" | "kvm:tcg";

/** The files of one VM inside its state dir. */
export interface VmPaths {
  overlay: string;
  seed: string;
  qmpSocket: string;
  consoleSocket: string;
  guestAgentSocket: string;
  consoleRaw: string;
  consoleOffset: string;
  qemuLog: string;
  pidFile: string;
}

export function vmPaths(dir: string): VmPaths {
  const at = (name: string) => path.join(dir, name);
  return {
    overlay: at("root.qcow2"),
    seed: at("seed.iso"),
    qmpSocket: at("qmp.sock"),
    consoleSocket: at("console.sock"),
    guestAgentSocket: at("qga.sock"),
    consoleRaw: at("console.raw"),
    consoleOffset: at("console.offset"),
    qemuLog: at("qemu.log"),
    pidFile: at("qemu.pid"),
  };
}

export interface QemuCommand {
  args: string[];
  /** fds for spawn's stdio slots 3, 4, ...: the tap fds in NIC order. */
  extraFds: number[];
}

/** First fd number QEMU sees the passed fds at (after stdin, stdout, stderr). */
const FIRST_PASSED_FD = 3;
// linux/if_ether.h ETH_MIN_MTU; virtio-net's host_mtu is a 16-bit field.
const MIN_MTU = 68;
const MAX_MTU = 65535;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** QEMU option values end at a comma; a literal comma is written twice. */
export function qemuOptValue(value: string): string {
  return value.replaceAll(",", ",,");
}

/**
 * QEMU's seccomp filter: no obsolete syscalls, no fork or exec, no scheduler or rlimit
 * changes. elevateprivileges stays allowed: QEMU installs the filter before -runas drops
 * to the unprivileged user, and a deny kills it at its own setgid (SIGSYS); once dropped
 * it holds no capabilities, so set*id can only choose among its own ids.
 */
export const QEMU_SANDBOX =
  "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny";
// A system user name as useradd takes it.
/** A user name QEMU's -runas takes, and nothing an argv could misread. */
export const QEMU_USER_NAME = /^[a-z_][a-z0-9_-]{0,31}$/;

export function buildQemuArgv(
  spec: VmSpec,
  paths: VmPaths,
  accel: ResolvedAccel,
  confinement?: QemuConfinement,
): QemuCommand {
  validateSpec(spec);
  if (confinement && !QEMU_USER_NAME.test(confinement.user)) {
    throw new VmSpecError(
      spec.id,
      "build QEMU command",
      `QEMU user ${JSON.stringify(confinement.user)}: not a user name`,
    );
  }
  const v = qemuOptValue;
  const args = [
    "-name",
    `guest=${spec.id},debug-threads=on`,
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-machine",
    "q35",
    ...accelArgs(accel),
    "-cpu",
    "max",
    "-smp",
    String(spec.vcpus),
    "-m",
    `${spec.memoryMiB}M`,
    // A guest shutdown stops the VM instead of ending QEMU, so vmlet sees it through QMP
    // even when it was not running at the time, then quits QEMU itself.
    "-no-shutdown",
    "-pidfile",
    paths.pidFile,
    // QEMU appends the console to logfile whether or not anyone is connected to the
    // socket; vmlet turns that file into the CRI log. The socket is the console's input.
    // Before QMP: once the QMP socket exists, the console file does too.
    "-chardev",
    `socket,id=console,path=${v(paths.consoleSocket)},server=on,wait=off,logfile=${v(paths.consoleRaw)},logappend=on`,
    "-serial",
    "chardev:console",
    "-chardev",
    `socket,id=qmp,path=${v(paths.qmpSocket)},server=on,wait=off`,
    "-mon",
    "chardev=qmp,mode=control",
    "-drive",
    `if=none,id=root,file=${v(paths.overlay)},format=qcow2,discard=unmap`,
    "-device",
    "virtio-blk-pci,drive=root,bootindex=0",
    "-drive",
    `if=none,id=seed,file=${v(paths.seed)},format=raw,readonly=on`,
    "-device",
    "virtio-blk-pci,drive=seed",
    "-device",
    "virtio-rng-pci",
    // The QEMU guest agent's port, where images with qemu-guest-agent run it: ExecSync.
    "-device",
    "virtio-serial-pci,id=vser0",
    "-chardev",
    `socket,id=qga,path=${v(paths.guestAgentSocket)},server=on,wait=off`,
    "-device",
    "virtserialport,bus=vser0.0,chardev=qga,name=org.qemu.guest_agent.0",
  ];
  if (confinement) {
    // QEMU opens every file, socket and device of its command line as root, then drops
    // to the user; it needs no access to the VM dir after that.
    args.push("-sandbox", QEMU_SANDBOX, "-runas", confinement.user);
  }
  const extraFds: number[] = [];
  spec.taps.forEach((tap, k) => {
    const fd = FIRST_PASSED_FD + k;
    extraFds.push(tap.fd);
    // No vnet_hdr= next to fd=: QEMU 7.2 refuses the pair and probes the fd itself.
    args.push("-netdev", `tap,id=net${k},fd=${fd}`);
    args.push(
      "-device",
      `virtio-net-pci,netdev=net${k},mac=${tap.guestMac.toLowerCase()},host_mtu=${tap.mtu}`,
    );
  });
  return { args, extraFds };
}

function accelArgs(accel: ResolvedAccel): string[] {
  switch (accel) {
    case "kvm":
      return ["-accel", "kvm"];
    case "tcg":
      return ["-accel", "tcg"];
    case "kvm:tcg":
      return ["-accel", "kvm", "-accel", "tcg"];
  }
}

function validateSpec(spec: VmSpec): void {
  const fail = (message: string): never => {
    throw new VmSpecError(spec.id, "build QEMU command", message);
  };
  if (!ID.test(spec.id)) fail(`id ${JSON.stringify(spec.id)}: must be 1-128 of [A-Za-z0-9_.-]`);
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > 255) {
    fail(`vcpus ${spec.vcpus}: must be an integer from 1 to 255`);
  }
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 16) {
    fail(`memoryMiB ${spec.memoryMiB}: must be an integer of at least 16`);
  }
  spec.taps.forEach((tap, k) => {
    if (!MAC.test(tap.guestMac))
      fail(`NIC ${k} (${tap.ifname}): MAC ${JSON.stringify(tap.guestMac)}`);
    if (!Number.isInteger(tap.mtu) || tap.mtu < MIN_MTU || tap.mtu > MAX_MTU) {
      fail(`NIC ${k} (${tap.ifname}): MTU ${tap.mtu} not in ${MIN_MTU}..${MAX_MTU}`);
    }
    if (!Number.isInteger(tap.fd) || tap.fd < 0) fail(`NIC ${k} (${tap.ifname}): fd ${tap.fd}`);
  });
}
