// The tiny test VM: Debian's cloud kernel and a busybox initramfs (built by
// scripts/build-test-guests.sh), booted by qemu-system-x86_64 under TCG with a tap fd as
// its virtio-net NIC. Its init runs busybox udhcpc with Debian's stock script and busybox
// udhcpc6 with the guests' own script, and reports on the serial console (see
// test/guests/init, report.script, report6.script); this helper reads that console,
// parses the reports and sends console commands.
import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";

/** The built guest files. */
export interface GuestImages {
  kernel: string;
  initrd: string;
  /** qcow2: FAT + syslinux with the same kernel and initramfs, for virtio-blk boot. */
  disk: string;
}

/** Where the build script puts the guests: `<repo>/.cache/guests`, or $VMLET_GUESTS_DIR. */
export function guestDir(): string {
  return process.env.VMLET_GUESTS_DIR ?? path.resolve(__dirname, "../../../.cache/guests");
}

/** The guest files, or an error that says how to build them. */
export function guestImages(): GuestImages {
  const dir = guestDir();
  const images = {
    kernel: path.join(dir, "vmlinuz"),
    initrd: path.join(dir, "initrd.cpio.gz"),
    disk: path.join(dir, "disk.qcow2"),
  };
  const missing = Object.values(images).filter((f) => !fs.existsSync(f));
  if (missing.length > 0) {
    throw new Error(
      `test guest files missing (${missing.join(", ")}): run scripts/build-test-guests.sh`,
    );
  }
  return images;
}

/** True when the guests are built (tests may skip with a message otherwise). */
export function guestImagesBuilt(): boolean {
  try {
    guestImages();
    return true;
  } catch {
    return false;
  }
}

/** A `VMLET-GUEST <kind> key="value" ...` console line. */
export interface GuestReport {
  kind: string;
  fields: Record<string, string>;
  /** Milliseconds since QEMU was spawned when the line arrived. */
  at: number;
  line: string;
  /** Index of the line in GuestVm#console (-1 when parsed elsewhere). */
  index: number;
}

/** What the guest ended up with after a bound/renew (or on `status`). */
export interface GuestLease {
  /** bound | renew | status */
  event: string;
  /** Address with prefix as `ip -4 addr` shows it, e.g. 10.1.0.2/24 ("" if none). */
  cidr: string;
  address: string;
  prefixLength: number;
  mtu: number;
  /** `ip -4 route show` lines, whitespace normalised. */
  routes: string[];
  /** From the guest's /etc/resolv.conf, as Debian's stock script wrote it. */
  dns: string[];
  search: string[];
  domain: string;
  /** udhcpc's environment for the script: ip, subnet, router, dns, domain, search, mtu,
   * staticroutes, lease, serverid, hostname (empty for `status`). */
  dhcp: Record<string, string>;
  /** Guest uptime in seconds when reported. */
  uptime: number;
  /** Milliseconds since QEMU was spawned. */
  at: number;
}

/** What the guest's IPv6 ended up with after a udhcpc6 bound/renew (or on `status6`). */
export interface GuestLease6 {
  /** bound | renew | status */
  event: string;
  /** Global addresses as `ip -6 addr` shows them, e.g. fd00:10:244:1::5/128. */
  addresses: string[];
  /** The link's IPv6 MTU (where the kernel applies the RA's MTU option). */
  mtu: number;
  /** `ip -6 route show` lines. */
  routes: string[];
  /** The default route's gateway ("" if none yet). */
  defaultVia: string;
  /** From /etc/resolv.conf (the IPv4 client's lines too), as written. */
  dns: string[];
  search: string[];
  /** udhcpc6's environment for the script: ipv6, lease, dns, search (empty for `status6`). */
  dhcp: Record<string, string>;
  uptime: number;
  at: number;
}

export function parseGuestReport(line: string, at = 0, index = -1): GuestReport | undefined {
  const m = /VMLET-GUEST (\w+)(.*)$/.exec(line);
  if (!m) return undefined;
  const fields: Record<string, string> = {};
  for (const f of m[2].matchAll(/(\w+)="([^"]*)"/g)) fields[f[1]] = f[2];
  return { kind: m[1], fields, at, line: line.slice(m.index), index };
}

function list(value: string | undefined, sep: RegExp): string[] {
  return (value ?? "")
    .split(sep)
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

export function leaseFromReport(report: GuestReport): GuestLease {
  const f = report.fields;
  const cidr = list(f.ip, /;/)[0] ?? "";
  const [address = "", prefix = "0"] = cidr.split("/");
  const dhcp: Record<string, string> = {};
  for (const [k, v] of Object.entries(f)) if (k.startsWith("dhcp_")) dhcp[k.slice(5)] = v;
  return {
    event: f.event ?? report.kind,
    cidr,
    address,
    prefixLength: Number(prefix),
    mtu: Number(f.mtu),
    routes: list(f.routes, /;/),
    dns: list(f.dns, /[;\s]+/),
    search: list(f.search, /[;\s]+/),
    domain: f.domain ?? "",
    dhcp,
    uptime: Number(f.uptime),
    at: report.at,
  };
}

export function lease6FromReport(report: GuestReport): GuestLease6 {
  const f = report.fields;
  const routes = list(f.routes, /;/);
  const dhcp: Record<string, string> = {};
  for (const [k, v] of Object.entries(f)) if (k.startsWith("dhcp_")) dhcp[k.slice(5)] = v;
  return {
    event: f.event ?? report.kind,
    addresses: list(f.ip, /;/),
    mtu: Number(f.mtu),
    routes,
    defaultVia:
      /^default via (\S+)/.exec(routes.find((r) => r.startsWith("default ")) ?? "")?.[1] ?? "",
    dns: list(f.dns, /[;\s]+/),
    search: list(f.search, /[;\s]+/),
    dhcp,
    uptime: Number(f.uptime),
    at: report.at,
  };
}

export interface BootGuestOptions {
  /** The pod's tap fd; passed to QEMU as fd 3 (`-netdev tap,id=n0,fd=3`). */
  tapFd: number;
  /** The guest NIC's MAC (the CNI MAC). */
  mac: string;
  /** kernel: -kernel/-initrd direct boot (default); disk: the qcow2 on virtio-blk. */
  boot?: "kernel" | "disk";
  /** virtio-net host_mtu, when set. */
  hostMtu?: number;
  memoryMiB?: number;
  /** Another initramfs for the kernel boot, with its own command line (the networkd guest's). */
  initramfs?: { path: string; cmdline: string };
  /** Extra udhcpc arguments (kernel boot only), e.g. ["-O", "staticroutes"]. */
  udhcpcArgs?: string[];
  /** Extra QEMU arguments. */
  qemuArgs?: string[];
  /** Every console line, e.g. for a test log. */
  onLine?: (line: string) => void;
}

export class GuestVm {
  readonly pid: number;
  readonly argv: string[];
  /** The whole console so far, one entry a line (CR stripped). */
  readonly console: string[] = [];
  readonly reports: GuestReport[] = [];
  readonly leases: GuestLease[] = [];
  /** udhcpc6's bound/renew reports, in order. */
  readonly leases6: GuestLease6[] = [];
  /** Resolves with QEMU's exit code (or signal name) when it exits. */
  readonly exited: Promise<number | string>;
  private readonly child: ChildProcess;
  private readonly started = performance.now();
  private partial = "";
  private waiters: Array<() => void> = [];
  private exitInfo: number | string | undefined;
  private nextId = 1;

  constructor(options: BootGuestOptions) {
    const images = guestImages();
    const nic = [
      "virtio-net-pci",
      "netdev=n0",
      `mac=${options.mac}`,
      "romfile=",
      ...(options.hostMtu ? [`host_mtu=${options.hostMtu}`] : []),
    ].join(",");
    const argv = [
      "-accel",
      "tcg",
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-m",
      String(options.memoryMiB ?? 256),
      "-smp",
      "1",
      "-no-reboot",
      "-serial",
      "stdio",
      "-monitor",
      "none",
      "-netdev",
      "tap,id=n0,fd=3",
      "-device",
      nic,
    ];
    if ((options.boot ?? "kernel") === "kernel") {
      const extra = options.udhcpcArgs?.length
        ? ` vmlet.udhcpc=${options.udhcpcArgs.join(",")}`
        : "";
      argv.push(
        "-kernel",
        images.kernel,
        "-initrd",
        options.initramfs?.path ?? images.initrd,
        "-append",
        options.initramfs?.cmdline ?? `console=ttyS0 quiet panic=-1${extra}`,
      );
    } else {
      if (options.udhcpcArgs?.length) {
        throw new Error("bootGuest: udhcpcArgs need boot: kernel (the disk has a fixed cmdline)");
      }
      argv.push("-drive", `file=${images.disk},if=virtio,format=qcow2,readonly=on`);
    }
    argv.push(...(options.qemuArgs ?? []));
    this.argv = ["qemu-system-x86_64", ...argv];
    this.child = spawn("qemu-system-x86_64", argv, {
      stdio: ["pipe", "pipe", "pipe", options.tapFd],
    });
    this.child.on("error", () => {}); // a failed spawn: reported below
    if (this.child.pid === undefined) {
      throw new Error("bootGuest: qemu-system-x86_64 did not start (not installed?)");
    }
    this.pid = this.child.pid;
    const onData = (chunk: Buffer) => {
      this.partial += chunk.toString("latin1");
      const lines = this.partial.split("\n");
      this.partial = lines.pop() ?? "";
      for (const raw of lines) this.addLine(raw.replace(/\r/g, ""), options.onLine);
    };
    this.child.stdout!.on("data", onData);
    this.child.stderr!.on("data", (chunk: Buffer) => {
      for (const l of chunk.toString().split("\n")) if (l) this.addLine(`qemu: ${l}`);
    });
    this.child.stdin!.on("error", () => {});
    this.exited = new Promise((resolve) => {
      this.child.on("exit", (code, signal) => {
        this.exitInfo = code ?? signal ?? "unknown";
        this.wake();
        resolve(this.exitInfo);
      });
    });
  }

  /** Milliseconds since QEMU was spawned. */
  elapsed(): number {
    return performance.now() - this.started;
  }

  private addLine(line: string, onLine?: (line: string) => void): void {
    this.console.push(line);
    onLine?.(line);
    const report = parseGuestReport(line, this.elapsed(), this.console.length - 1);
    if (report) {
      this.reports.push(report);
      if (report.kind === "lease") this.leases.push(leaseFromReport(report));
      if (report.kind === "lease6") this.leases6.push(lease6FromReport(report));
    }
    this.wake();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** Waits until `check` returns a value; rejects on timeout or QEMU exit, with the console tail. */
  waitFor<T>(what: string, check: () => T | undefined, timeoutMs: number): Promise<T> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(
            `guest ${this.pid}: timed out after ${timeoutMs} ms waiting for ${what}\n${this.tail()}`,
          ),
        );
      }, timeoutMs);
      const poll = () => {
        const value = check();
        if (value !== undefined) {
          clearTimeout(timer);
          resolve(value);
        } else if (this.exitInfo !== undefined) {
          clearTimeout(timer);
          reject(
            new Error(
              `guest ${this.pid}: QEMU exited (${this.exitInfo}) while waiting for ${what}\n${this.tail()}`,
            ),
          );
        } else {
          this.waiters.push(poll);
        }
      };
      poll();
    });
  }

  /** The last console lines, for error messages. */
  tail(lines = 30): string {
    return this.console
      .slice(-lines)
      .map((l) => `  | ${l}`)
      .join("\n");
  }

  /** The first report of `kind` at or after report index `from` matching `match`. */
  waitForReport(
    kind: string,
    options: { from?: number; timeoutMs?: number; match?: (r: GuestReport) => boolean } = {},
  ): Promise<GuestReport> {
    const { from = 0, timeoutMs = 60_000, match = () => true } = options;
    return this.waitFor(
      `a "VMLET-GUEST ${kind}" line`,
      () => this.reports.slice(from).find((r) => r.kind === kind && match(r)),
      timeoutMs,
    );
  }

  /** The lease with index `index` (0: the first bound). */
  waitForLease(options: { index?: number; timeoutMs?: number } = {}): Promise<GuestLease> {
    const { index = 0, timeoutMs = 60_000 } = options;
    return this.waitFor(`lease #${index}`, () => this.leases[index], timeoutMs);
  }

  /** The udhcpc6 lease with index `index` (0: the first bound). */
  waitForLease6(options: { index?: number; timeoutMs?: number } = {}): Promise<GuestLease6> {
    const { index = 0, timeoutMs = 60_000 } = options;
    return this.waitFor(`IPv6 lease #${index}`, () => this.leases6[index], timeoutMs);
  }

  /** SIGUSR1 to udhcpc6; resolves with the next IPv6 lease. */
  async renew6(timeoutMs = 30_000): Promise<GuestLease6> {
    const index = this.leases6.length;
    this.command("renew6");
    return this.waitForLease6({ index, timeoutMs });
  }

  /** What the guest's IPv6 is now (addresses, routes, MTU, resolv.conf), without DHCPv6. */
  async status6(timeoutMs = 30_000): Promise<GuestLease6> {
    const from = this.reports.length;
    this.command("status6");
    return lease6FromReport(await this.waitForReport("status6", { from, timeoutMs }));
  }

  /** Writes one command line to the guest console. */
  command(line: string): void {
    if (line.includes("\n")) throw new Error("guest command: one line only");
    this.child.stdin!.write(`${line}\n`);
  }

  /** Runs a shell command in the guest; resolves with its exit code and output. */
  async run(cmd: string, timeoutMs = 30_000): Promise<{ rc: number; output: string[] }> {
    const id = String(this.nextId++);
    const fromLine = this.console.length;
    const from = this.reports.length;
    this.command(`run ${id} ${cmd}`);
    const report = await this.waitForReport("result", {
      from,
      timeoutMs,
      match: (r) => r.fields.id === id,
    });
    const output = this.console
      .slice(fromLine, report.index)
      .filter((l) => !l.includes("VMLET-GUEST") && !l.startsWith("udhcpc:"));
    return { rc: Number(report.fields.rc), output };
  }

  /** SIGUSR1 to udhcpc (a unicast renew when bound); resolves with the next lease. */
  async renew(timeoutMs = 30_000): Promise<GuestLease> {
    const index = this.leases.length;
    this.command("renew");
    return this.waitForLease({ index, timeoutMs });
  }

  /**
   * A rebind (broadcast REQUEST without server id): points the guest's ARP entry for the
   * last lease's server id at a MAC nobody has, sends SIGUSR1 (the unicast renew is lost;
   * after udhcpc's -T timeout, 1 s in this guest, it goes to REBINDING and broadcasts),
   * waits for the lease, removes the entry.
   */
  async rebind(timeoutMs = 30_000): Promise<GuestLease> {
    const server = this.leases.at(-1)?.dhcp.serverid;
    if (!server) throw new Error(`guest ${this.pid}: rebind needs a lease with a server id`);
    const add = await this.run(`arp -i eth0 -s ${server} 02:00:00:de:ad:01`);
    if (add.rc !== 0) throw new Error(`guest rebind: arp -s: ${add.output.join(" ")}`);
    try {
      return await this.renew(timeoutMs);
    } finally {
      await this.run(`arp -i eth0 -d ${server}`);
    }
  }

  /** SIGUSR2 to udhcpc: releases the lease and deconfigures eth0. */
  async release(timeoutMs = 30_000): Promise<void> {
    const from = this.reports.length;
    this.command("release");
    await this.waitForReport("ok", { from, timeoutMs, match: (r) => r.fields.cmd === "release" });
  }

  /** What the guest has now (address, routes, MTU, resolv.conf), without DHCP. */
  async status(timeoutMs = 30_000): Promise<GuestLease> {
    const from = this.reports.length;
    this.command("status");
    return leaseFromReport(await this.waitForReport("status", { from, timeoutMs }));
  }

  /** Kills this VM's QEMU (its own PID only) and waits for it to exit. */
  async stop(): Promise<void> {
    if (this.exitInfo === undefined) {
      this.child.kill("SIGKILL");
      await this.exited;
    }
  }
}

/** Boots the tiny guest on `tapFd`; the caller still owns (and closes) the fd. */
export function bootGuest(options: BootGuestOptions): GuestVm {
  return new GuestVm(options);
}
