// Test fixtures for network tests: unique names, netns and veth pairs made with
// iproute2 (test code may shell out; src/ may not), all inside the private namespace.
import { execFileSync } from "node:child_process";
import crypto from "node:crypto";
import { inPrivateNamespace } from "../../src/sys/private-namespace";

/** Refuses to run a network test outside the runner's private namespace. */
export function requirePrivateNamespace(): void {
  if (!inPrivateNamespace()) {
    throw new Error("network tests must run through `node dist/test/run.js` (a private netns)");
  }
}

/** A short unique name, fit for an interface (15 bytes) or netns. */
export function uniqueName(prefix: string): string {
  return `${prefix}${crypto.randomBytes(4).toString("hex")}`.slice(0, 15);
}

export function ip(...args: string[]): string {
  return execFileSync("ip", args, { encoding: "utf8" });
}

/** `ip` inside a named netns. */
export function ipIn(netns: string, ...args: string[]): string {
  return ip("-n", netns, ...args);
}

export function run(netns: string, command: string, ...args: string[]): string {
  return execFileSync("ip", ["netns", "exec", netns, command, ...args], { encoding: "utf8" });
}

export interface TestNetns {
  name: string;
  path: string;
  remove(): void;
}

/** A named netns made with `ip netns add`, loopback up. */
export function makeNetns(prefix = "t"): TestNetns {
  requirePrivateNamespace();
  const name = uniqueName(prefix);
  ip("netns", "add", name);
  ipIn(name, "link", "set", "lo", "up");
  return {
    name,
    path: `/run/netns/${name}`,
    remove: () => ip("netns", "del", name),
  };
}

/** A veth pair between two netns, both ends up; names are returned. */
export function vethPair(a: string, b: string): { a: string; b: string } {
  const nameA = uniqueName("va");
  const nameB = uniqueName("vb");
  ipIn(a, "link", "add", nameA, "type", "veth", "peer", "name", nameB, "netns", b);
  ipIn(a, "link", "set", nameA, "up");
  ipIn(b, "link", "set", nameB, "up");
  return { a: nameA, b: nameB };
}

export interface JsonLink {
  ifname: string;
  address?: string;
  mtu: number;
  flags: string[];
  master?: string;
  linkinfo?: { info_kind?: string };
}

export function linksIn(netns: string): JsonLink[] {
  return JSON.parse(ipIn(netns, "-j", "-d", "link", "show")) as JsonLink[];
}

/** Sends one UDP datagram from inside `netns` with a separate node process. */
export function sendUdp(
  netns: string,
  to: { address: string; port: number; device?: string },
  payload: Buffer | string,
): void {
  const script = `
    const s = require("dgram").createSocket("udp4");
    s.bind(0, () => {
      s.setBroadcast(true);
      s.send(Buffer.from(process.argv[1], "base64"), ${to.port}, ${JSON.stringify(to.address)}, (e) => { if (e) throw e; s.close(); });
    });`;
  const data = Buffer.from(payload).toString("base64");
  execFileSync("ip", ["netns", "exec", netns, process.execPath, "-e", script, data], {
    stdio: "inherit",
  });
}

/** The node's end of the veth `ifname` in `netns` (its peer, in the test's own netns). */
export function nodeEndOf(netns: string, ifname = "eth0"): string {
  const [veth] = JSON.parse(ipIn(netns, "-j", "link", "show", ifname)) as { link_index: number }[];
  const links = JSON.parse(ip("-j", "link", "show")) as { ifindex: number; ifname: string }[];
  const link = links.find((l) => l.ifindex === veth.link_index);
  if (!link) throw new Error(`no node end of ${ifname} in ${netns}`);
  return link.ifname;
}

export interface BridgedGuest {
  host: TestNetns;
  pod: TestNetns;
  guest: TestNetns;
  /** The host's end of the uplink veth, up and without addresses. */
  hostVeth: string;
}

/**
 * host <-veth "uplink"-> pod bridge <-veth `guestPort`-> guest "eth0" (MAC `guestMac`,
 * MTU 1500, left down): the shape of a rewired pod, with a veth standing in for the tap.
 */
export function bridgedGuest(
  tags: { host: string; pod: string; guest: string },
  names: { bridge: string; guestPort: string; guestMac: string },
): BridgedGuest {
  const host = makeNetns(tags.host);
  const pod = makeNetns(tags.pod);
  const guest = makeNetns(tags.guest);
  const hostVeth = uniqueName("hv");
  ipIn(
    host.name,
    "link",
    "add",
    hostVeth,
    "type",
    "veth",
    "peer",
    "name",
    "uplink",
    "netns",
    pod.name,
  );
  ipIn(
    guest.name,
    "link",
    "add",
    "eth0",
    "type",
    "veth",
    "peer",
    "name",
    names.guestPort,
    "netns",
    pod.name,
  );
  ipIn(guest.name, "link", "set", "eth0", "address", names.guestMac, "mtu", "1500");
  ipIn(pod.name, "link", "add", names.bridge, "type", "bridge");
  for (const port of ["uplink", names.guestPort])
    ipIn(pod.name, "link", "set", port, "master", names.bridge, "up");
  ipIn(pod.name, "link", "set", names.bridge, "up");
  ipIn(host.name, "link", "set", hostVeth, "up");
  return { host, pod, guest, hostVeth };
}
