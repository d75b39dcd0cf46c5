// A CNI plugin for tests that wires a pod the way Calico does: a /32 address, an on-link
// route to 169.254.1.1 (an address outside every subnet) and a default route through it,
// and on the node a "cali" veth with proxy ARP, MAC ee:ee:ee:ee:ee:ee and a /32 route to
// the pod. Calico itself needs a datastore and felix, which can't run here. IPAM is
// delegated to the plugin named in `ipam.type` (host-local in the tests).
// Installed by calicoPluginInto(binDir); run by the CNI client like any plugin.
import { execFileSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";

const GATEWAY = "169.254.1.1";
/** IPv6: a /128 and a link-local gateway on the host veth, as Calico routes IPv6 pods. */
const GATEWAY6 = "fe80::1";
const HOST_MAC = "ee:ee:ee:ee:ee:ee";

interface Conf {
  cniVersion: string;
  name: string;
  mtu?: number;
  ipam: { type: string };
}

function ip(...args: string[]): string {
  return execFileSync("ip", args, { encoding: "utf8" });
}

function hostVethName(containerId: string, ifname: string): string {
  return `cali${crypto.createHash("sha1").update(`${containerId}.${ifname}`).digest("hex").slice(0, 11)}`;
}

function delegateIpam(conf: Conf, stdin: string): { ips: { address: string }[] } {
  const dirs = (process.env.CNI_PATH ?? "").split(":");
  const plugin = dirs.map((d) => path.join(d, conf.ipam.type)).find((p) => fs.existsSync(p));
  if (!plugin) throw new Error(`IPAM plugin ${conf.ipam.type} not found`);
  const out = execFileSync(plugin, [], { input: stdin, encoding: "utf8", env: process.env });
  return out ? JSON.parse(out) : { ips: [] };
}

function add(conf: Conf, stdin: string): unknown {
  const netns = process.env.CNI_NETNS ?? "";
  const ifname = process.env.CNI_IFNAME ?? "eth0";
  const host = hostVethName(process.env.CNI_CONTAINERID ?? "", ifname);
  const ipam = delegateIpam(conf, stdin);
  const address = ipam.ips.find((i) => !i.address.includes(":"))!.address.split("/")[0];
  const address6 = ipam.ips.find((i) => i.address.includes(":"))?.address.split("/")[0];
  const mtu = String(conf.mtu ?? 1500);
  const nsName = path.basename(netns);
  const tmp = `tmp${crypto.randomBytes(4).toString("hex")}`;
  ip("link", "add", host, "mtu", mtu, "type", "veth", "peer", "name", tmp, "mtu", mtu);
  ip("link", "set", tmp, "netns", nsName);
  ip("-n", nsName, "link", "set", tmp, "name", ifname);
  ip("link", "set", host, "address", HOST_MAC);
  fs.writeFileSync(`/proc/sys/net/ipv4/conf/${host}/proxy_arp`, "1");
  fs.writeFileSync("/proc/sys/net/ipv4/ip_forward", "1");
  ip("link", "set", host, "up");
  ip("-n", nsName, "link", "set", ifname, "up");
  ip("-n", nsName, "addr", "add", `${address}/32`, "dev", ifname);
  ip("-n", nsName, "route", "add", GATEWAY, "dev", ifname, "scope", "link");
  ip("-n", nsName, "route", "add", "default", "via", GATEWAY, "dev", ifname);
  ip("route", "add", `${address}/32`, "dev", host, "scope", "link");
  if (address6) {
    fs.writeFileSync("/proc/sys/net/ipv6/conf/all/forwarding", "1");
    ip("addr", "add", `${GATEWAY6}/64`, "dev", host, "nodad");
    ip("-n", nsName, "addr", "add", `${address6}/128`, "dev", ifname, "nodad");
    ip("-n", nsName, "-6", "route", "add", "default", "via", GATEWAY6, "dev", ifname);
    ip("-6", "route", "add", `${address6}/128`, "dev", host);
  }
  const mac = JSON.parse(ip("-n", nsName, "-j", "link", "show", ifname))[0].address as string;
  return {
    cniVersion: conf.cniVersion,
    // Calico lists its host-side veth (the bandwidth plugin finds the pod's veth by it).
    interfaces: [
      { name: host, mac: HOST_MAC },
      { name: ifname, mac, sandbox: netns },
    ],
    // Results before 1.0.0 name each address's IP version, as Calico's do.
    ips: [
      {
        address: `${address}/32`,
        interface: 1,
        ...(conf.cniVersion.startsWith("0.") ? { version: "4" } : {}),
      },
      ...(address6
        ? [
            {
              address: `${address6}/128`,
              interface: 1,
              ...(conf.cniVersion.startsWith("0.") ? { version: "6" } : {}),
            },
          ]
        : []),
    ],
    routes: [{ dst: "0.0.0.0/0" }],
    dns: {},
  };
}

function del(conf: Conf, stdin: string): void {
  const host = hostVethName(process.env.CNI_CONTAINERID ?? "", process.env.CNI_IFNAME ?? "eth0");
  try {
    ip("link", "del", host);
  } catch {
    // Gone already: DEL must be idempotent.
  }
  delegateIpam(conf, stdin);
}

function main(): void {
  const stdin = fs.readFileSync(0, "utf8");
  const conf = JSON.parse(stdin) as Conf;
  try {
    switch (process.env.CNI_COMMAND) {
      case "ADD":
        process.stdout.write(JSON.stringify(add(conf, stdin)));
        return;
      case "DEL":
        del(conf, stdin);
        return;
      case "CHECK":
        return;
      case "VERSION":
        process.stdout.write(
          JSON.stringify({ cniVersion: "1.0.0", supportedVersions: ["0.4.0", "1.0.0"] }),
        );
        return;
      default:
        throw new Error(`unknown CNI_COMMAND ${process.env.CNI_COMMAND}`);
    }
  } catch (error) {
    process.stdout.write(
      JSON.stringify({ cniVersion: conf.cniVersion, code: 999, msg: (error as Error).message }),
    );
    process.exit(1);
  }
}

if (require.main === module) main();

/** Installs this plugin as `calico-fixture` into `binDir`. */
export function calicoPluginInto(binDir: string): string {
  const file = path.join(binDir, "calico-fixture");
  fs.writeFileSync(file, `#!/bin/sh\nexec ${process.execPath} ${__filename} "$@"\n`, {
    mode: 0o755,
  });
  return "calico-fixture";
}
