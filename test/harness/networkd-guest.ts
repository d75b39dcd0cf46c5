// The systemd-networkd test guest: a debootstrapped Debian (systemd, udev, networkd with
// one DHCP=yes .network file) packed whole as an initramfs by
// scripts/build-networkd-guest.sh, booted with the tiny guest's kernel through GuestVm.
// Its report loop (test/guests/networkd/report) prints what networkd configured.
import fs from "node:fs";
import path from "node:path";
import { bootGuest, type GuestReport, type GuestVm, guestDir } from "./guest-vm";

/** `<repo>/.cache/networkd-guest/initrd.cpio`, or $VMLET_NETWORKD_GUEST. */
export function networkdInitramfs(): string {
  return (
    process.env.VMLET_NETWORKD_GUEST ?? path.resolve(guestDir(), "../networkd-guest/initrd.cpio")
  );
}

export function networkdGuestBuilt(): boolean {
  return fs.existsSync(networkdInitramfs());
}

/** One `VMLET-GUEST net` report: the guest's network as networkd left it. */
export interface NetworkdState {
  seq: number;
  /** Both families were configured before the loop's deadline. */
  complete: boolean;
  ifname: string;
  mac: string;
  mtu: number;
  /** /proc/sys/net/ipv6/conf/IF/mtu: the MTU IPv6 uses on the link. */
  mtu6: number;
  /** Global addresses as "address/prefix". */
  ipv4: string[];
  ipv6: string[];
  routes4: string[];
  routes6: string[];
  /** networkd's DNS servers and search domains (its link state file). */
  dns: string[];
  domains: string[];
  /** networkd's DHCPv4 lease file: ADDRESS, LIFETIME, T1, SERVER_ADDRESS, DOMAINNAME, DOMAIN_SEARCH_LIST. */
  dhcp4Lease: Record<string, string>;
  uptime: number;
  report: GuestReport;
}

const list = (v: string | undefined) => (v ?? "").split(";").filter((s) => s !== "");

export function networkdState(report: GuestReport): NetworkdState {
  const f = report.fields;
  return {
    seq: Number(f.seq),
    complete: f.complete === "yes",
    ifname: f.ifname ?? "",
    mac: f.mac ?? "",
    mtu: Number(f.mtu),
    mtu6: Number(f.mtu6),
    ipv4: list(f.ip4),
    ipv6: list(f.ip6),
    routes4: list(f.routes4),
    routes6: list(f.routes6),
    dns: list(f.dns),
    domains: list(f.domains),
    dhcp4Lease: Object.fromEntries(
      list(f.dhcp4_lease).map((kv) => [
        kv.slice(0, kv.indexOf("=")),
        kv.slice(kv.indexOf("=") + 1),
      ]),
    ),
    uptime: Number(f.uptime),
    report,
  };
}

export interface NetworkdGuestOptions {
  tapFd: number;
  mac: string;
  hostMtu?: number;
  /** Addresses the guest pings once it is configured (reported as `VMLET-GUEST ping`). */
  ping?: string[];
  onLine?: (line: string) => void;
}

/** Boots the networkd guest on `tapFd` under TCG; the caller still owns (and closes) the fd. */
export function bootNetworkdGuest(options: NetworkdGuestOptions): GuestVm {
  const pings = options.ping?.length ? ` vmlet.ping=${options.ping.join(",")}` : "";
  return bootGuest({
    tapFd: options.tapFd,
    mac: options.mac,
    ...(options.hostMtu ? { hostMtu: options.hostMtu } : {}),
    // The whole system is unpacked into RAM: 118 MB of files, the cpio itself freed after.
    memoryMiB: 512,
    initramfs: { path: networkdInitramfs(), cmdline: `console=ttyS0 quiet panic=-1${pings}` },
    ...(options.onLine ? { onLine: options.onLine } : {}),
  });
}

/** The first `net` report at or after report index `from` that says both families are up. */
export async function waitForNetworkd(
  vm: GuestVm,
  options: { from?: number; timeoutMs?: number; minSeq?: number } = {},
): Promise<NetworkdState> {
  const report = await vm.waitForReport("net", {
    from: options.from ?? 0,
    timeoutMs: options.timeoutMs ?? 120_000,
    match: (r) => r.fields.complete === "yes" && Number(r.fields.seq) >= (options.minSeq ?? 0),
  });
  return networkdState(report);
}
