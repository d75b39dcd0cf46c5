// The pod data path with and without guest isolation: a frame pump writes legitimate
// guest frames (its MAC, its IP, UDP to the node) to the tap fd, as QEMU would, and the
// node counts what its UDP layer receives (/proc/net/snmp). tap -> bridge -> veth -> node,
// as the tapmanager built it before isolation (the renewal intercept on both ports) and
// now (the guard, which steers DHCP itself), switched between bursts, the order
// alternating. Guests here run under TCG, far slower than the path itself, hence the
// pump. Usage: node dist/bench/datapath.js [ROUNDS]
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { performance } from "node:perf_hooks";
import { DhcpIntercept } from "../src/dhcp/intercept";
import { InterfaceGuard } from "../src/guard/guard";
import { createNetns, deleteNetns } from "../src/sys/netns";
import { enterPrivateNamespace } from "../src/sys/private-namespace";
import { Rtnl } from "../src/sys/rtnl";
import { openTap } from "../src/sys/tap";
import { report } from "./lib";

const ip = (...args: string[]) => execFileSync("ip", args, { stdio: "ignore" });

const GUEST_MAC = "52:54:00:be:0c:01";
const GUEST_IP = "10.9.0.2";
const NODE_IP = "10.9.0.1";
const PORT = 9999;

function frame(size: number): Buffer {
  const udpLen = size - 14 - 20;
  const b = Buffer.alloc(10 + size); // a zero virtio-net header first
  const f = b.subarray(10);
  Buffer.alloc(6, 0xff).copy(f, 0); // flooded to the veth: no MAC learning needed
  Buffer.from(GUEST_MAC.replaceAll(":", ""), "hex").copy(f, 6);
  f.writeUInt16BE(0x0800, 12);
  f.writeUInt8(0x45, 14);
  f.writeUInt16BE(20 + udpLen, 16);
  f.writeUInt8(64, 22);
  f.writeUInt8(17, 23);
  Buffer.from(GUEST_IP.split(".").map(Number)).copy(f, 26);
  Buffer.from(NODE_IP.split(".").map(Number)).copy(f, 30);
  let sum = 0;
  for (let i = 14; i < 34; i += 2) sum += f.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  f.writeUInt16BE(~sum & 0xffff, 24);
  f.writeUInt16BE(40000, 34);
  f.writeUInt16BE(PORT, 36);
  f.writeUInt16BE(udpLen, 38); // checksum 0: none
  return b;
}

/** Datagrams the node's UDP layer took, queued or dropped for a full buffer. */
function udpReceived(): number {
  const lines = fs.readFileSync("/proc/net/snmp", "utf8").split("\n");
  const header = lines.find((l) => l.startsWith("Udp: In"))!.split(/\s+/);
  const values = lines.filter((l) => l.startsWith("Udp: "))[1].split(/\s+/);
  const at = (name: string) => Number(values[header.indexOf(name)]);
  return at("InDatagrams") + at("RcvbufErrors");
}

async function settled(): Promise<number> {
  let last = udpReceived();
  for (;;) {
    await new Promise((r) => setTimeout(r, 20));
    const now = udpReceived();
    if (now === last) return now;
    last = now;
  }
}

/**
 * Writes `count` frames; returns the wall ms until the node had them, the CPU ms this
 * process spent (the path runs inside its writes: neighbours on the machine do not count
 * there), and how many the node got.
 */
async function burst(
  tapFd: number,
  f: Buffer,
  count: number,
): Promise<{ ms: number; cpuMs: number; got: number }> {
  const before = await settled();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < count; i++) fs.writeSync(tapFd, f);
  // tun hands each frame to the backlog and bottom halves run it on the way out of the
  // write: almost all of the path is inside the loop.
  const cpu = process.cpuUsage(cpu0);
  let got = udpReceived() - before;
  let t1 = performance.now();
  while (got < count) {
    await new Promise((r) => setImmediate(r));
    const now = udpReceived() - before;
    if (now === got && performance.now() - t1 > 100) break;
    if (now !== got) t1 = performance.now();
    got = now;
  }
  return { ms: t1 - t0, cpuMs: (cpu.user + cpu.system) / 1000, got };
}

async function main(): Promise<void> {
  enterPrivateNamespace();
  const rounds = Number(process.argv[2] ?? 60);
  const pod = createNetns("bench-dp");
  ip("link", "add", "nveth", "type", "veth", "peer", "name", "eth0", "netns", "bench-dp");
  ip("addr", "add", `${NODE_IP}/24`, "dev", "nveth");
  ip("link", "set", "nveth", "up");
  ip("-n", "bench-dp", "link", "add", "br0", "type", "bridge");
  const tap = openTap(pod, { name: "tap0" });
  for (const l of ["eth0", "tap0"]) ip("-n", "bench-dp", "link", "set", l, "master", "br0", "up");
  ip("-n", "bench-dp", "link", "set", "br0", "up");
  // A receiver on the node; the count is the kernel's, so it need not keep up.
  const sink = (await import("node:dgram")).createSocket("udp4");
  await new Promise<void>((r) => sink.bind(PORT, NODE_IP, () => r()));
  sink.on("message", () => {});

  const rtnl = Rtnl.open(pod);
  const bridge = await rtnl.link("br0");
  const ports = (await rtnl.links()).filter((l) => l.master === bridge.index);
  rtnl.close();
  // Without isolation: today's data path, the renewal intercept on both ports. With it:
  // what the tapmanager builds now, the guard (which steers DHCP itself) and no intercept.
  const attachIntercept = () =>
    DhcpIntercept.attach(
      pod,
      0x0a0900fe,
      bridge.index,
      ports.map((p) => ({ name: p.name, index: p.index })),
    );
  let intercept: DhcpIntercept | undefined = await attachIntercept();
  const policy = {
    guestMac: GUEST_MAC,
    prefixes: [{ family: 4 as const, address: GUEST_IP, prefixLength: 32 }],
  };
  let guard: InterfaceGuard | undefined;
  const setGuard = async (on: boolean) => {
    if (on && !guard) {
      await intercept?.detach();
      intercept = undefined;
      guard = await InterfaceGuard.attach(
        pod,
        { tap: "tap0", veth: "eth0", bridge: "br0" },
        policy,
      );
    }
    if (!on && guard) {
      await guard.detach();
      guard = undefined;
      intercept = await attachIntercept();
    }
  };

  const sizes = [
    { name: "64 B", size: 64, count: 5_000 },
    { name: "1400 B", size: 1400, count: 5_000 },
  ];
  const samples: Record<string, number[]> = {};
  const rates: Record<string, number[]> = {};
  const cpuRates: Record<string, number[]> = {};
  const pairs: Record<string, { wall: number[]; cpu: number[] }> = {};
  const lost: Record<string, number> = {};
  const label = (size: string, on: boolean) => `${size}, ${on ? "guard" : "no guard"}`;
  for (const s of sizes) {
    const f = frame(s.size);
    for (const on of [true, false]) {
      samples[label(s.name, on)] = [];
      rates[label(s.name, on)] = [];
      cpuRates[label(s.name, on)] = [];
    }
    pairs[s.name] = { wall: [], cpu: [] };
    for (let round = -2; round < rounds; round++) {
      const order = round % 2 === 0 ? [true, false] : [false, true];
      const pair: Record<string, { rate: number; cpuRate: number }> = {};
      for (const on of order) {
        await setGuard(on && process.env.BENCH_AA !== "1");
        const name = label(s.name, on);
        const { ms, cpuMs, got } = await burst(tap.fd, f, s.count);
        if (round < 0) continue; // warm-up
        lost[name] = (lost[name] ?? 0) + (s.count - got);
        // ms per 1000 frames delivered: the table's unit; the rate is its inverse.
        samples[name].push((ms * 1000) / Math.max(1, got));
        pair[String(on)] = { rate: (got / ms) * 1000, cpuRate: (got / cpuMs) * 1000 };
        rates[name].push(pair[String(on)].rate);
        cpuRates[name].push(pair[String(on)].cpuRate);
      }
      if (round < 0) continue;
      // Each round's two bursts ran back to back: their ratio sees the same machine.
      pairs[s.name].wall.push(pair.true.rate / pair.false.rate);
      pairs[s.name].cpu.push(pair.true.cpuRate / pair.false.cpuRate);
    }
  }
  await setGuard(false);
  await intercept?.detach();
  sink.close();
  fs.closeSync(tap.fd);
  deleteNetns("bench-dp");
  ip("link", "del", "nveth");

  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const pps = Object.fromEntries(Object.entries(rates).map(([k, v]) => [k, Math.round(median(v))]));
  const mbps = Object.fromEntries(
    sizes.flatMap((s) =>
      ["guard", "no guard"].map((g) => {
        const k = `${s.name}, ${g}`;
        return [k, Math.round((pps[k] * s.size * 8) / 1e6)];
      }),
    ),
  );
  const rateRatio = Object.fromEntries(
    sizes.map((s) => [
      s.name,
      { wall: median(pairs[s.name].wall), cpu: median(pairs[s.name].cpu) },
    ]),
  );
  const cpuPps = Object.fromEntries(
    Object.entries(cpuRates).map(([k, v]) => [k, Math.round(median(v))]),
  );
  for (const [k, v] of Object.entries(pps)) {
    console.log(`${k.padEnd(20)} ${v} frames/s, ${mbps[k]} Mbit/s; ${cpuPps[k]} frames per CPU-s`);
  }
  for (const [k, v] of Object.entries(rateRatio)) {
    console.log(
      `rate ratio ${k} (guard / no guard, median of paired rounds): wall ${v.wall.toFixed(3)}, per CPU-s ${v.cpu.toFixed(3)}`,
    );
  }
  report(
    "datapath",
    `tap -> bridge -> veth -> node UDP, ms per 1000 frames, ${rounds} rounds, alternating`,
    samples,
    sizes.map((s) => ({
      name: `${s.name}: guard / none`,
      of: `${s.name}, guard`,
      to: `${s.name}, no guard`,
    })),
    {
      framesPerSecond: pps,
      framesPerCpuSecond: cpuPps,
      megabitsPerSecond: mbps,
      rateRatio,
      lostFrames: lost,
    },
  );
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
