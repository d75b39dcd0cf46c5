// IPv6 clients in a guest netns (ISC dhclient -6, dhcpcd, busybox udhcpc6 with the test
// guests' script) and what a user checks of the guest's IPv6 afterwards: its global
// addresses, default route, IPv6 MTU, DNS servers, reachability.
import { execFile, execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { normalIpv6 } from "../../src/util/ipv6";
import { ClientProcess } from "./client-process";
import { ipIn, run } from "./fixtures";
import { guestDir } from "./guest-vm";

export const execFileAsync = promisify(execFile);

export interface Guest6State {
  /** Global addresses that passed DAD, as "address/prefix". */
  addresses: string[];
  defaultVia?: string;
  /**
   * The MTU of the default route: the link's IPv6 MTU (the kernel applies an RA's MTU
   * option there), or the route's own when lower (dhcpcd 9 puts it on its routes).
   */
  mtu: number;
}

export function guest6(netns: string, ifname = "eth0"): Guest6State {
  const [link] = JSON.parse(
    ipIn(netns, "-j", "-6", "addr", "show", "dev", ifname, "scope", "global"),
  ) as { addr_info: { local: string; prefixlen: number; tentative?: boolean }[] }[];
  const routes = JSON.parse(ipIn(netns, "-j", "-6", "route", "show", "default")) as {
    gateway?: string;
    metrics?: { mtu?: number }[];
  }[];
  const linkMtu = Number(run(netns, "cat", `/proc/sys/net/ipv6/conf/${ifname}/mtu`).trim());
  const routeMtu = routes[0]?.metrics?.find((m) => m.mtu !== undefined)?.mtu;
  return {
    addresses: (link?.addr_info ?? [])
      .filter((a) => !a.tentative)
      .map((a) => `${a.local}/${a.prefixlen}`),
    ...(routes[0]?.gateway ? { defaultVia: routes[0].gateway } : {}),
    mtu: Math.min(linkMtu, routeMtu ?? linkMtu),
  };
}

export function ping6(netns: string, address: string): boolean {
  try {
    execFileSync("ip", ["netns", "exec", netns, "ping", "-6", "-c1", "-W2", address], {
      stdio: "ignore",
    });
    return true;
  } catch {
    return false;
  }
}

/** The first global IPv6 address on `dev` in `netns` (throws if none). */
export function globalIpv6(netns: string, dev = "eth0"): string {
  const [link] = JSON.parse(
    ipIn(netns, "-j", "-6", "addr", "show", "dev", dev, "scope", "global"),
  ) as { addr_info: { local: string }[] }[];
  const address = link?.addr_info[0]?.local;
  if (!address) throw new Error(`no global IPv6 address on ${dev} in ${netns}`);
  return address;
}

/** The link's link-local address once it passed DAD. */
export function linkLocalOf(netns: string, dev: string): string | undefined {
  const [link] = JSON.parse(
    ipIn(netns, "-j", "-6", "addr", "show", "dev", dev, "scope", "link"),
  ) as { addr_info: { local: string; tentative?: boolean }[] }[];
  return link?.addr_info.find((a) => !a.tentative)?.local;
}

/** The nameserver lines of a resolv.conf, each address in canonical form (udhcpc6 writes them uncompressed). */
export function nameservers(resolvConf: string): string[] {
  return [...resolvConf.matchAll(/^nameserver\s+(\S+)/gm)].map((m) => {
    try {
      return normalIpv6(m[1]!);
    } catch {
      return m[1]!;
    }
  });
}

export type Ipv6ClientKind = "dhclient" | "dhcpcd" | "udhcpc6";

export interface Ipv6Client {
  process: ClientProcess;
  /** What it logs for each REPLY it takes. */
  replies: RegExp;
  /** Asks for a renewal now (udhcpc6: SIGUSR1); absent where the client has no trigger. */
  renew?(): void;
  stop(): Promise<void>;
}

/** busybox udhcpc6, built by scripts/build-udhcpc6.sh (Debian 12's busybox has none). */
export function udhcpc6Binary(): string {
  const bin = path.join(guestDir(), "busybox-udhcpc6");
  if (!fs.existsSync(bin)) throw new Error(`${bin} missing: run scripts/build-test-guests.sh`);
  return bin;
}

/** The test guests' udhcpc6 script (the tiny VM's /etc/udhcpc6/default.script). */
export const UDHCPC6_SCRIPT = path.resolve(__dirname, "../../../test/guests/udhcpc6.script");

/** Starts `kind` on `ifname` in `netns`, its files in `dir`; resolv.conf is the machine's (bind-mount it). */
export function startIpv6Client(
  kind: Ipv6ClientKind,
  netns: string,
  ifname: string,
  dir: string,
): Ipv6Client {
  if (kind === "dhclient") {
    const process = new ClientProcess(netns, [
      "dhclient",
      "-6",
      "-d",
      "-v",
      "-sf",
      "/sbin/dhclient-script",
      "-lf",
      path.join(dir, "dhclient6.leases"),
      "-pf",
      path.join(dir, "dhclient6.pid"),
      ifname,
    ]);
    return { process, replies: /RCV: Reply message on/, stop: () => process.stop() };
  }
  if (kind === "udhcpc6") {
    // Named busybox*, the binary takes its first argument as the applet (as busybox does).
    // -T 1: its renewal (a unicast REQUEST, answered UseMulticast, which 1.35 cannot hear:
    // it listens on an IPv4 socket) falls back to a multicast one after a second, not three.
    const process = new ClientProcess(netns, [
      "env",
      `UDHCPC6_STATE=${dir}`,
      udhcpc6Binary(),
      "udhcpc6",
      "-f",
      "-v",
      "-T",
      "1",
      "-i",
      ifname,
      "-s",
      UDHCPC6_SCRIPT,
    ]);
    return {
      process,
      replies: /IPv6 obtained, lease time/,
      renew: () => process.signal("SIGUSR1"),
      stop: () => process.stop(),
    };
  }
  const conf = path.join(dir, "dhcpcd.conf");
  fs.writeFileSync(
    conf,
    [
      "ipv6only",
      "ia_na 1",
      "option dhcp6_name_servers, dhcp6_domain_search",
      "nohook 30-hostname",
      "",
    ].join("\n"),
  );
  const process = new ClientProcess(netns, ["dhcpcd", "-6", "-B", "-d", "-f", conf, ifname]);
  return {
    process,
    replies: /REPLY6 received from/,
    async stop() {
      // dhcpcd 9's privilege-separated helpers outlive a SIGTERM to the master (keeping
      // our pipes open); its own stop command takes them all down.
      await execFileAsync("ip", [
        "netns",
        "exec",
        netns,
        "dhcpcd",
        "-x",
        "-6",
        "-f",
        conf,
        ifname,
      ]).catch(() => {});
      await process.stop();
    },
  };
}
