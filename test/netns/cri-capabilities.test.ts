// Capability args reach the VM through the CRI path: RunPodSandbox on the stock Calico
// chain (Calico-style plugin, portmap with snat, bandwidth) with a hostPort and with the
// bandwidth annotations; the guest (real udhcpc in a relay guest on the pod's tap) serves
// the port, and its traffic through the host veth is held to the annotated rates.
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { status } from "@grpc/grpc-js";
import { Tapmanager } from "../../src/tapmanager";
import { allocations, type CniSandbox, makeCniSandbox } from "../harness/cni-fixtures";
import {
  ip,
  ipIn,
  makeNetns,
  nodeEndOf,
  requirePrivateNamespace,
  type TestNetns,
} from "../harness/fixtures";
import { type DhcpClient, startDhcpClient } from "../harness/guest-clients";
import type { ProcessLauncher } from "../harness/process-launcher";
import { type RelayGuest, startRelay } from "../harness/relay";
import { stockCalico } from "../harness/stock-cni";
import { podConfig, startTestVmlet, type TestVmlet } from "../harness/test-vmlet";

requirePrivateNamespace();

const NODE_IP = "192.0.2.1";
const CLIENT_IP = "192.0.2.2";
const SUBNET = "192.168.70.0/24";

interface Guest {
  relay: RelayGuest;
  client: DhcpClient;
  ip: string;
  stop(): Promise<void>;
}

/** A relay guest on the pod's tap with udhcpc, once it has its lease. */
async function guestOn(tm: Tapmanager, podSandboxId: string): Promise<Guest> {
  const [tap] = tm.openTaps(podSandboxId);
  const relay = await startRelay({ podTapFd: tap.fd, mac: tap.guestMac });
  fs.closeSync(tap.fd);
  const client = await startDhcpClient("udhcpc", { netns: relay.netns, ifname: relay.ifname });
  try {
    const state = await client.waitForLease();
    return {
      relay,
      client,
      ip: state.addresses[0].split("/")[0],
      async stop() {
        await client.stop();
        await relay.stop();
      },
    };
  } catch (error) {
    await client.stop();
    await relay.stop();
    throw error;
  }
}

/** A TCP server in `netns` on `port` that answers every connection with `reply`. */
async function serveIn(netns: string, port: number, reply: string): Promise<ChildProcess> {
  const script = `require("net").createServer((c) => c.end(${JSON.stringify(reply)}))
    .listen(${port}, "0.0.0.0", () => console.log("listening"));`;
  const child = spawn("ip", ["netns", "exec", netns, process.execPath, "-e", script], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (d) => String(d).includes("listening") && resolve());
    child.once("exit", (code) => reject(new Error(`server in ${netns} exited (${code})`)));
  });
  return child;
}

/** What a TCP connection to host:port from `netns` (the node when undefined) reads. */
function readFrom(host: string, port: number, netns?: string): string {
  const script = `const s = require("net").connect(${port}, ${JSON.stringify(host)});
    let out = ""; s.setTimeout(5000, () => { console.error("timeout"); process.exit(2); });
    s.on("data", (d) => (out += d)).on("end", () => process.stdout.write(out));`;
  const argv = [process.execPath, "-e", script];
  const [cmd, ...args] = netns ? ["ip", "netns", "exec", netns, ...argv] : argv;
  return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/** iperf3 from the node to `ip` for 3 s after 2 s left out; bits/s the receiver got. */
function iperf(serverNetns: string, ip: string, reverse: boolean): number {
  const server = spawn("ip", ["netns", "exec", serverNetns, "iperf3", "-s", "-1", "-p", "5201"], {
    stdio: "ignore",
  });
  try {
    for (let i = 0; ; i++) {
      try {
        const out = execFileSync(
          "iperf3",
          ["-c", ip, "-p", "5201", "-t", "3", "-O", "2", "-J", ...(reverse ? ["-R"] : [])],
          { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
        );
        const result = JSON.parse(out) as { end: { sum_received: { bits_per_second: number } } };
        return result.end.sum_received.bits_per_second;
      } catch (error) {
        // The server may not be listening yet.
        if (i >= 20) throw error;
        execFileSync("sleep", ["0.1"]);
      }
    }
  } finally {
    server.kill("SIGKILL");
  }
}

/** The token buckets the bandwidth plugin made: tbf qdiscs on the node, by device. */
function tokenBuckets(): Map<string, number> {
  const out = new Map<string, number>();
  const qdiscs = execFileSync("tc", ["qdisc", "show"], { encoding: "utf8" });
  for (const m of qdiscs.matchAll(/qdisc tbf \S+ dev (\S+) .*burst (\d+)b/g)) {
    out.set(m[1], Number(m[2]));
  }
  return out;
}

/**
 * Nearly empties a token bucket by sending 95% of `bytes` (its size) as UDP through it, as
 * fast as Python can: kubelet's and containerd's burst is math.MaxUint32 bits, so the bucket
 * lets some 250 MB through unshaped before the rate holds. (Sending more would block at the
 * rate: the queue behind the bucket is as deep as the bucket.) What is left goes in
 * iperf's omitted first seconds. Ingress: from the node to the pod IP; egress: frames put
 * straight onto the pod end of the veth, from the pod netns, as the guest's MAC (the guard
 * lets nothing else leave through the veth).
 */
function drainBucket(
  direction: "ingress" | "egress",
  bytes: number,
  pod: { ip: string; netns: string; mac: string },
): void {
  const frames = Math.floor((bytes * 0.95) / 1400);
  const send =
    direction === "ingress"
      ? `s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); dst = (${JSON.stringify(pod.ip)}, 9)
def one(): s.sendto(b"x" * 1400, dst)`
      : `s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(("eth0", 0))
frame = b"\\xff" * 6 + bytes.fromhex(${JSON.stringify(pod.mac.replaceAll(":", ""))}) + b"\\x08\\x00" + b"\\x45" + b"\\x00" * 1399
def one(): s.send(frame)`;
  const script = `import socket
${send}
for _ in range(${frames}):
    try: one()
    except OSError: pass
`;
  const argv = ["/usr/bin/python3", "-c", script];
  if (direction === "ingress") execFileSync(argv[0], argv.slice(1), { stdio: "inherit" });
  else execFileSync("ip", ["netns", "exec", pod.netns, ...argv], { stdio: "inherit" });
}

function natRules(): string {
  return execFileSync("iptables", ["-w", "-t", "nat", "-S"], { encoding: "utf8" });
}

describe("capability args through RunPodSandbox on the stock Calico chain", () => {
  let cni: CniSandbox;
  let tm: Tapmanager;
  let t: TestVmlet<Tapmanager, ProcessLauncher>;
  let uplink: string;
  let outside: TestNetns;

  before(async () => {
    // The node: an uplink with the node IP, and a client outside it on the other end.
    outside = makeNetns("out");
    uplink = `up${outside.name.slice(-8)}`;
    ip("link", "add", uplink, "type", "veth", "peer", "name", "eth0", "netns", outside.name);
    ip("addr", "add", `${NODE_IP}/24`, "dev", uplink);
    ip("link", "set", uplink, "up");
    ip("route", "add", "default", "via", CLIENT_IP);
    ipIn(outside.name, "addr", "add", `${CLIENT_IP}/24`, "dev", "eth0");
    ipIn(outside.name, "link", "set", "eth0", "up");
    cni = makeCniSandbox();
    cni.writeConf("10-calico.conflist", stockCalico(cni, SUBNET));
    tm = new Tapmanager({ cni: cni.client(), stateDir: path.join(cni.root, "pods") });
    t = await startTestVmlet({ networks: tm });
  });

  after(async () => {
    await t?.close();
    await tm?.close();
    cni?.remove();
    ip("route", "del", "default");
    ip("link", "del", uplink);
    outside.remove();
  });

  it("a hostPort reaches the guest's listener at nodeIP:hostPort, from the node and from outside", async () => {
    const r = t.client.runtime;
    const { podSandboxId } = await r.RunPodSandbox({
      config: {
        ...podConfig("web"),
        portMappings: [{ protocol: "TCP", containerPort: 8080, hostPort: 30080, hostIp: "" }],
      },
    });
    const guest = await guestOn(tm, podSandboxId);
    const server = await serveIn(guest.relay.netns, 8080, `served by ${guest.ip}`);
    try {
      assert.match(natRules(), /--dports 30080 -j CNI-DN-/, "portmap made its DNAT");
      assert.equal(readFrom(NODE_IP, 30080, outside.name), `served by ${guest.ip}`);
      assert.equal(readFrom(NODE_IP, 30080), `served by ${guest.ip}`);
    } finally {
      server.kill("SIGKILL");
      await guest.stop();
      await r.StopPodSandbox({ podSandboxId });
      await r.RemovePodSandbox({ podSandboxId });
    }
    assert.doesNotMatch(natRules(), /30080/, "the DNAT went with the pod");
    assert.deepEqual(allocations(cni.dataDir, "k8s-pod-network"), []);
  });

  it("the bandwidth annotations hold the guest's traffic through the host veth to their rates", {
    timeout: 120_000,
  }, async () => {
    const r = t.client.runtime;
    const limitBits = 8_000_000;
    const limited = await r.RunPodSandbox({
      config: podConfig("slow", {
        annotations: {
          "kubernetes.io/ingress-bandwidth": "8M",
          "kubernetes.io/egress-bandwidth": "8M",
        },
      }),
    });
    const free = await r.RunPodSandbox({ config: podConfig("fast") });
    const slowGuest = await guestOn(tm, limited.podSandboxId);
    const fastGuest = await guestOn(tm, free.podSandboxId);
    try {
      const buckets = tokenBuckets();
      const podNetns = path.basename(tm.get(limited.podSandboxId)!.netnsPath);
      const hostVeth = nodeEndOf(podNetns);
      const ingressBucket = buckets.get(hostVeth);
      const [egressDev, egressBucket] = [...buckets].find(([dev]) => dev !== hostVeth) ?? [];
      assert.ok(ingressBucket && egressBucket && egressDev, `tbf on ${hostVeth} and an ifb`);
      const slow = { ip: slowGuest.ip, netns: podNetns, mac: slowGuest.relay.mac };
      drainBucket("ingress", ingressBucket, slow);
      const ingress = iperf(slowGuest.relay.netns, slowGuest.ip, false);
      drainBucket("egress", egressBucket, slow);
      const egress = iperf(slowGuest.relay.netns, slowGuest.ip, true);
      const rates = {
        ingress,
        egress,
        freeIngress: iperf(fastGuest.relay.netns, fastGuest.ip, false),
        freeEgress: iperf(fastGuest.relay.netns, fastGuest.ip, true),
      };
      const mbit = Object.fromEntries(
        Object.entries(rates).map(([k, v]) => [k, Math.round(v / 1e5) / 10]),
      );
      console.log(`rates in Mbit/s, limit 8: ${JSON.stringify(mbit)}`);
      for (const dir of ["ingress", "egress"] as const) {
        assert.ok(rates[dir] < limitBits * 1.25, `${dir} ${mbit[dir]} Mbit/s is held to 8`);
        assert.ok(rates[dir] > limitBits * 0.5, `${dir} ${mbit[dir]} Mbit/s is near 8`);
      }
      assert.ok(rates.freeIngress > limitBits * 3, `unlimited ingress ${mbit.freeIngress}`);
      assert.ok(rates.freeEgress > limitBits * 3, `unlimited egress ${mbit.freeEgress}`);
    } finally {
      await slowGuest.stop();
      await fastGuest.stop();
      for (const { podSandboxId } of [limited, free]) {
        await r.StopPodSandbox({ podSandboxId });
        await r.RemovePodSandbox({ podSandboxId });
      }
    }
  });

  it("a bandwidth annotation that is not a quantity is INVALID_ARGUMENT, naming it", async () => {
    await assert.rejects(
      t.client.runtime.RunPodSandbox({
        config: podConfig("bad", { annotations: { "kubernetes.io/egress-bandwidth": "fast" } }),
      }),
      (e: { code: number; details: string }) => {
        assert.equal(e.code, status.INVALID_ARGUMENT);
        assert.match(e.details, /default\/bad: annotation kubernetes\.io\/egress-bandwidth "fast"/);
        return true;
      },
    );
    assert.deepEqual((await t.client.runtime.ListPodSandbox({})).items, []);
  });
});
