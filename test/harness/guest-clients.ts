// Real DHCP clients (busybox udhcpc with Debian's stock script, ISC dhclient, dhcpcd) run
// in a guest netns, e.g. the relay guest's. Each client runs in the foreground (its PID is
// ours to stop) inside its own mount and UTS namespaces, where /etc is an overlay whose
// upper layer is in the client's temp dir: the client's scripts write /etc/resolv.conf
// (and anything else in /etc) there, never to the machine's. The stock scripts run
// unchanged, through a small hook that calls them and then logs the event to a file.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ipIn } from "./fixtures";

export type DhcpClientKind = "udhcpc" | "dhclient" | "dhcpcd";

export interface DhcpClientOptions {
  /** The guest netns name. */
  netns: string;
  ifname: string;
  /** Extra client arguments, e.g. ["-O", "staticroutes"] for udhcpc, ["--noarp"] for dhcpcd. */
  args?: string[];
  /** Reuse a directory (lease files kept: a restart is an INIT-REBOOT). */
  dir?: string;
}

/** The guest's network as the client left it. */
export interface GuestNetState {
  /** IPv4 addresses on the interface, as CIDRs. */
  addresses: string[];
  /** `ip -4 route show` lines of the netns's main table, whitespace normalised. */
  routes: string[];
  mtu: number;
  /** From the resolv.conf the client's script wrote ("" and [] if it wrote none). */
  resolvConf: string;
  dns: string[];
  search: string[];
  domain: string;
}

export interface DhcpClientEvent {
  /** udhcpc: bound, renew, deconfig, leasefail, nak; dhclient/dhcpcd: $reason (BOUND, RENEW, REBIND, REBOOT, ...). */
  event: string;
  rc: number;
  /** The server id the script saw ("" when none). */
  serverId: string;
}

export interface DhcpClient {
  kind: DhcpClientKind;
  pid: number;
  netns: string;
  ifname: string;
  /** Temp dir with the pid/lease files, the /etc overlay and the event log. */
  dir: string;
  /** The client's stdout and stderr so far. */
  output(): string;
  /** Script events so far, in order. */
  events(): DhcpClientEvent[];
  /** Waits for the event with index >= `from` that configured a lease, then reads the state. */
  waitForLease(options?: { from?: number; timeoutMs?: number }): Promise<GuestNetState>;
  state(): GuestNetState;
  /**
   * Asks for a renewal (unicast REQUEST to the server) and waits for the resulting lease.
   * udhcpc: SIGUSR1; dhcpcd: `dhcpcd -4 -N IFACE`; dhclient has no renew trigger (throws:
   * restart it with the same dir for an INIT-REBOOT, or let T1 expire).
   */
  renew(timeoutMs?: number): Promise<GuestNetState>;
  /**
   * udhcpc only: a rebind (broadcast REQUEST, no server id). Points the guest's neighbour
   * entry for the server at a MAC nobody has, sends SIGUSR1 (the unicast renew is lost;
   * after udhcpc's -T timeout, 3 s by default, it goes to REBINDING and broadcasts), waits
   * for the lease, removes the entry. (Routes and rules do not stop udhcpc's unicast: its
   * socket is bound to the device.)
   * dhclient and dhcpcd have no trigger; they rebind at T2 when renewals go unanswered.
   */
  rebind(timeoutMs?: number): Promise<GuestNetState>;
  /** The server id of the last lease (from the script's environment). */
  serverId(): string | undefined;
  /**
   * SIGTERM (then SIGKILL after 3 s) to the client's own PID, waits for it, then for the
   * helper processes it forked (dhcpcd's privsep), killing those left after 3 s. Leaves the dir.
   */
  stop(): Promise<void>;
}

/** A locally administered MAC no test uses: frames sent to it reach no one. */
export const NOWHERE_MAC = "02:00:00:de:ad:01";

const LEASE_EVENTS: Record<DhcpClientKind, string[]> = {
  udhcpc: ["bound", "renew"],
  dhclient: ["BOUND", "RENEW", "REBIND", "REBOOT"],
  dhcpcd: ["BOUND", "RENEW", "REBIND", "REBOOT", "STATIC"],
};

function stockScript(kind: DhcpClientKind): string {
  switch (kind) {
    case "udhcpc":
      return "/etc/udhcpc/default.script";
    case "dhclient":
      return "/sbin/dhclient-script";
    case "dhcpcd":
      return fs.existsSync("/usr/lib/dhcpcd/dhcpcd-run-hooks")
        ? "/usr/lib/dhcpcd/dhcpcd-run-hooks"
        : "/lib/dhcpcd/dhcpcd-run-hooks";
  }
}

/** Runs `cmd` in its own mount+UTS namespaces, /etc overlaid, inside the netns. */
const WRAPPER = `
set -e
d=$1; ns=$2; shift 2
mkdir -p "$d/etc-upper" "$d/etc-work" "$d/varlib"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$d/etc-upper,workdir=$d/etc-work" /etc
for v in /var/lib/dhcp /var/lib/dhcpcd; do [ -d "$v" ] && mount --bind "$d/varlib" "$v"; done
: > /etc/resolv.conf
exec ip netns exec "$ns" "$@"
`;

function commandLine(kind: DhcpClientKind, dir: string, ifname: string, args: string[]): string[] {
  const hook = path.join(dir, "hook");
  switch (kind) {
    case "udhcpc":
      return ["udhcpc", "-i", ifname, "-f", "-s", hook, "-p", path.join(dir, "pid"), ...args];
    case "dhclient":
      return [
        "dhclient",
        "-4",
        "-d",
        "-v",
        "-pf",
        path.join(dir, "pid"),
        "-lf",
        path.join(dir, "leases"),
        "-sf",
        hook,
        ...args,
        ifname,
      ];
    case "dhcpcd":
      return ["dhcpcd", "-B", "-4", "-L", "-t", "0", "-c", hook, ...args, ifname];
  }
}

function normalise(line: string): string {
  return line.replace(/\s+/g, " ").trim();
}

/** PIDs whose parent chain leads to `pid`, read from /proc. */
function descendants(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8");
      // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      parent.set(Number(entry), ppid);
    } catch {}
  }
  const out: number[] = [];
  for (const p of parent.keys()) {
    for (let q = parent.get(p); q !== undefined && q > 1; q = parent.get(q)) {
      if (q === pid) {
        out.push(p);
        break;
      }
    }
  }
  return out;
}

/** Running (a zombie, exited but not reaped, counts as gone). */
function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat[stat.lastIndexOf(")") + 2] !== "Z";
  } catch {
    return false;
  }
}

/** Reads a guest netns's IPv4 state, and a resolv.conf the client wrote. */
export function readGuestNetState(
  netns: string,
  ifname: string,
  resolvConfPath?: string,
): GuestNetState {
  const addrs = JSON.parse(ipIn(netns, "-j", "-4", "addr", "show", "dev", ifname)) as Array<{
    mtu: number;
    addr_info?: Array<{ local: string; prefixlen: number }>;
  }>;
  const routes = ipIn(netns, "-4", "route", "show").split("\n").map(normalise).filter(Boolean);
  let resolvConf = "";
  if (resolvConfPath) {
    try {
      resolvConf = fs.readFileSync(resolvConfPath, "utf8");
    } catch {
      resolvConf = "";
    }
  }
  const words = (key: string) =>
    resolvConf
      .split("\n")
      .map((l) => l.trim().split(/\s+/))
      .filter((w) => w[0] === key)
      .flatMap((w) => w.slice(1));
  return {
    addresses: (addrs[0]?.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`),
    routes,
    mtu:
      addrs[0]?.mtu ?? Number(ipIn(netns, "-j", "link", "show", ifname).match(/"mtu":(\d+)/)?.[1]),
    resolvConf,
    dns: words("nameserver"),
    search: words("search"),
    domain: words("domain")[0] ?? "",
  };
}

/** Starts a DHCP client on `ifname` in the guest netns. */
export async function startDhcpClient(
  kind: DhcpClientKind,
  options: DhcpClientOptions,
): Promise<DhcpClient> {
  const { netns, ifname, args = [] } = options;
  const dir = options.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), `vmlet-${kind}-`));
  const eventsFile = path.join(dir, "events");
  const eventVar = kind === "udhcpc" ? "$1" : "$reason";
  const serverVar = kind === "udhcpc" ? "$serverid" : "$new_dhcp_server_identifier";
  fs.writeFileSync(
    path.join(dir, "hook"),
    `#!/bin/sh\n${stockScript(kind)} "$@"\nrc=$?\necho "${eventVar} $rc ${serverVar}" >> ${eventsFile}\nexit $rc\n`,
    { mode: 0o755 },
  );
  const argv = commandLine(kind, dir, ifname, args);
  const child: ChildProcess = spawn(
    "unshare",
    [
      "--mount",
      "--uts",
      "--propagation",
      "private",
      "sh",
      "-c",
      WRAPPER,
      "sh",
      dir,
      netns,
      ...argv,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  child.on("error", () => {}); // a failed spawn: reported below
  if (child.pid === undefined) throw new Error(`${kind}: unshare did not start`);
  let out = "";
  child.stdout!.on("data", (d) => {
    out += d;
  });
  child.stderr!.on("data", (d) => {
    out += d;
  });
  let exitInfo: string | undefined;
  const exited = new Promise<void>((resolve) => {
    child.on("exit", (code, signal) => {
      exitInfo = String(code ?? signal);
      resolve();
    });
  });
  const pid = child.pid;
  const resolvConf = path.join(dir, "etc-upper", "resolv.conf");

  const events = (): DhcpClientEvent[] => {
    let text = "";
    try {
      text = fs.readFileSync(eventsFile, "utf8");
    } catch {
      return [];
    }
    return text
      .split("\n")
      .filter(Boolean)
      .map((l) => {
        const [event, rc, serverId = ""] = l.split(" ");
        return { event, rc: Number(rc), serverId };
      });
  };

  const state = () => readGuestNetState(netns, ifname, resolvConf);
  const serverId = () =>
    events()
      .filter((e) => LEASE_EVENTS[kind].includes(e.event) && e.serverId)
      .at(-1)?.serverId;

  const waitForLease = async (o: { from?: number; timeoutMs?: number } = {}) => {
    const { from = 0, timeoutMs = 30_000 } = o;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = events()
        .slice(from)
        .find((e) => LEASE_EVENTS[kind].includes(e.event));
      if (hit) return state();
      if (exitInfo !== undefined) {
        throw new Error(`${kind} in ${netns} exited (${exitInfo}) before a lease:\n${out}`);
      }
      if (Date.now() > deadline) {
        throw new Error(
          `${kind} in ${netns}: no lease after ${timeoutMs} ms; events ${JSON.stringify(events())}:\n${out}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  const control = (flag: string) =>
    execFileSync("dhcpcd", ["-4", flag, ifname], { encoding: "utf8", stdio: "pipe" });

  return {
    kind,
    pid,
    netns,
    ifname,
    dir,
    output: () => out,
    events,
    waitForLease,
    state,
    async renew(timeoutMs = 30_000) {
      const from = events().length;
      if (kind === "udhcpc") process.kill(pid, "SIGUSR1");
      else if (kind === "dhcpcd") control("-N");
      else throw new Error("dhclient has no renew trigger; restart it (INIT-REBOOT) or use T1");
      return waitForLease({ from, timeoutMs });
    },
    async rebind(timeoutMs = 30_000) {
      if (kind !== "udhcpc") throw new Error(`${kind} has no rebind trigger; it rebinds at T2`);
      const server = serverId();
      if (!server) throw new Error("udhcpc rebind: no lease with a server id yet");
      const from = events().length;
      ipIn(
        netns,
        "neigh",
        "replace",
        server,
        "lladdr",
        NOWHERE_MAC,
        "dev",
        ifname,
        "nud",
        "permanent",
      );
      try {
        process.kill(pid, "SIGUSR1");
        return await waitForLease({ from, timeoutMs });
      } finally {
        ipIn(netns, "neigh", "del", server, "dev", ifname);
      }
    },
    serverId,
    async stop() {
      if (exitInfo !== undefined) return;
      // dhcpcd forks privilege-separation helpers: they are our client's, so we end them too.
      const helpers = descendants(pid);
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 3000);
      await exited;
      clearTimeout(timer);
      const deadline = Date.now() + 3000;
      while (helpers.some(alive) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      for (const h of helpers.filter(alive)) process.kill(h, "SIGKILL");
    },
  };
}
