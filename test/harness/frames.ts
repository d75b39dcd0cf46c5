// Hand-made Ethernet frames, as a hostile guest would write them to its tap, and a
// capture of what reaches an interface (tcpdump writing pcap to a pipe, parsed here).
import { type ChildProcess, spawn } from "node:child_process";
import { ipToBytes } from "../../src/util/ip";

export const BROADCAST_MAC = "ff:ff:ff:ff:ff:ff";

function macBytes(mac: string): Buffer {
  return Buffer.from(mac.replaceAll(":", ""), "hex");
}

function checksum(b: Buffer): number {
  let sum = 0;
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
  if (b.length % 2) sum += b[b.length - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export function ethernet(dst: string, src: string, type: number, payload: Buffer): Buffer {
  const type2 = Buffer.alloc(2);
  type2.writeUInt16BE(type);
  return Buffer.concat([macBytes(dst), macBytes(src), type2, payload]);
}

export function ipv4(src: string, dst: string, protocol: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt8(0x45, 0);
  h.writeUInt16BE(20 + payload.length, 2);
  h.writeUInt8(64, 8);
  h.writeUInt8(protocol, 9);
  ipToBytes(src).copy(h, 12);
  ipToBytes(dst).copy(h, 16);
  h.writeUInt16BE(checksum(h), 10);
  return Buffer.concat([h, payload]);
}

/** A UDP header and payload; checksum 0 (none), as IPv4 allows. */
export function udp(sport: number, dport: number, payload: Buffer | string): Buffer {
  const data = Buffer.from(payload);
  const h = Buffer.alloc(8);
  h.writeUInt16BE(sport, 0);
  h.writeUInt16BE(dport, 2);
  h.writeUInt16BE(8 + data.length, 4);
  return Buffer.concat([h, data]);
}

export function ipv6(src: string, dst: string, nextHeader: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(40);
  h.writeUInt32BE(0x60000000, 0);
  h.writeUInt16BE(payload.length, 4);
  h.writeUInt8(nextHeader, 6);
  h.writeUInt8(255, 7);
  ipToBytes(src).copy(h, 8);
  ipToBytes(dst).copy(h, 24);
  return Buffer.concat([h, payload]);
}

/** An ICMPv6 Router Advertisement body (type 134), default router for 1800 s. */
export function routerAdvert(): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt8(134, 0);
  b.writeUInt8(64, 4);
  b.writeUInt16BE(1800, 6);
  return b;
}

/** A hop-by-hop options header (8 bytes, PadN) in front of `next`. */
export function hopByHop(next: number, payload: Buffer): Buffer {
  const h = Buffer.from([next, 0, 1, 4, 0, 0, 0, 0]);
  return Buffer.concat([h, payload]);
}

export function arp(
  op: 1 | 2,
  senderMac: string,
  senderIp: string,
  targetMac: string,
  targetIp: string,
): Buffer {
  const h = Buffer.from([0, 1, 8, 0, 6, 4, 0, op]);
  return Buffer.concat([
    h,
    macBytes(senderMac),
    ipToBytes(senderIp),
    macBytes(targetMac),
    ipToBytes(targetIp),
  ]);
}

/** The zero virtio-net header a tap with IFF_VNET_HDR wants before each frame. */
export function withVnetHeader(frame: Buffer): Buffer {
  return Buffer.concat([Buffer.alloc(10), frame]);
}

export interface Capture {
  /** Frames captured so far, whole. */
  frames(): Buffer[];
  /** Resolves once a captured frame satisfies `match`. */
  waitFor(what: string, match: (frame: Buffer) => boolean, timeoutMs?: number): Promise<Buffer>;
  stop(): Promise<void>;
}

/**
 * tcpdump on `ifname` (in `netns`, or this netns), frames in the given direction only,
 * pcap on a pipe. Resolves once it listens.
 */
export async function startCapture(
  ifname: string,
  options: { netns?: string; direction?: "in" | "out" | "inout"; filter?: string } = {},
): Promise<Capture> {
  const argv = ["-i", ifname, "-Q", options.direction ?? "in", "-U", "-n", "-s", "4096", "-w", "-"];
  if (options.filter) argv.push(options.filter);
  const child: ChildProcess = options.netns
    ? spawn("ip", ["netns", "exec", options.netns, "tcpdump", ...argv], { stdio: "pipe" })
    : spawn("tcpdump", argv, { stdio: "pipe" });
  let data = Buffer.alloc(0);
  let err = "";
  child.stdout!.on("data", (d: Buffer) => {
    data = Buffer.concat([data, d]);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`tcpdump on ${ifname}: ${err}`)), 10_000);
    child.stderr!.on("data", (d) => {
      err += d;
      if (err.includes("listening on")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`tcpdump on ${ifname} exited (${code}): ${err}`));
    });
  });
  const frames = (): Buffer[] => {
    const out: Buffer[] = [];
    for (let at = 24; at + 16 <= data.length; ) {
      const caplen = data.readUInt32LE(at + 8);
      if (at + 16 + caplen > data.length) break;
      out.push(Buffer.from(data.subarray(at + 16, at + 16 + caplen)));
      at += 16 + caplen;
    }
    return out;
  };
  return {
    frames,
    async waitFor(what, match, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = frames().find(match);
        if (hit) return hit;
        if (Date.now() > deadline) {
          throw new Error(
            `capture on ${ifname}: no ${what} in ${timeoutMs} ms (${frames().length} frames)`,
          );
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async stop() {
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** A readable one-line summary of a frame, for assertion messages. */
export function describeFrame(f: Buffer): string {
  const hexMac = (o: number) =>
    [...f.subarray(o, o + 6)].map((b) => b.toString(16).padStart(2, "0")).join(":");
  const type = f.readUInt16BE(12);
  let rest = "";
  if (type === 0x0800)
    rest = ` ${[...f.subarray(26, 30)].join(".")} > ${[...f.subarray(30, 34)].join(".")} proto ${f[23]}`;
  if (type === 0x0806)
    rest = ` arp op ${f.readUInt16BE(20)} ${[...f.subarray(28, 32)].join(".")} > ${[...f.subarray(38, 42)].join(".")}`;
  if (type === 0x86dd) rest = ` ipv6 nh ${f[20]}`;
  return `${hexMac(6)} > ${hexMac(0)} 0x${type.toString(16)}${rest}`;
}
