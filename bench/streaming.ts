// CRI streaming against the test guest (TCG), alternated in one run with its baseline:
//   exec `true`: GetExec + the SPDY exec (moby/spdystream client, its own clock from dial
//     to Status) vs ExecSync (grpc-js);
//   port-forward connect latency: one small HTTP GET per connection through vmlet's
//     port-forward vs the same GET over TCP straight to the pod IP;
//   port-forward throughput: a 16 MiB download from busybox httpd in the guest, both ways,
//     and over WebSocket (v4.channel.k8s.io, an in-process `ws` client timed from the dial
//     to the server's close).
// Usage: node dist/bench/streaming.js [N] (N rounds, 10 by default)
import { execFile } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";
import pino from "pino";
import WebSocket from "ws";
import { createVmLauncher } from "../src/runtime/vm/qemu-launcher";
import { podConfig } from "../test/harness/test-vmlet";
import { report } from "./lib";
import { benchVmlet } from "./node";

const GUEST_DISK = path.join(
  process.env.VMLET_GUESTS_DIR ?? path.resolve(__dirname, "../../.cache/guests"),
  "disk.qcow2",
);
const CLIENT = path.resolve(__dirname, "../../.cache/clients/stream-client-go");
const BIG_MIB = 16;
const CONNECTIONS = 10;
const run = promisify(execFile);

interface ClientResult {
  httpStatus?: number;
  status: string;
  error?: string;
  elapsedMs: number;
  forwards?: { replyLen: number; error: string }[];
}

async function client(...args: string[]): Promise<ClientResult> {
  const { stdout } = await run(CLIENT, args, { timeout: 120_000, maxBuffer: 1 << 22 });
  const r = JSON.parse(stdout) as ClientResult;
  if (r.error) throw new Error(`stream client: ${r.error}`);
  return r;
}

/** One GET through WebSocket port-forward; the bytes on channel 0 after the port prefix. */
function wsPortForward(
  url: string,
  request: string,
): Promise<{ bytes: number; elapsedMs: number }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const ws = new WebSocket(`${url.replace(/^http/, "ws")}?ports=8080`, ["v4.channel.k8s.io"]);
    let bytes = -2; // the port prefix
    ws.on("open", () => ws.send(Buffer.concat([Buffer.from([0]), Buffer.from(request)])));
    ws.on("message", (data: Buffer) => {
      if (data[0] === 0) bytes += data.length - 1;
      else if (data[0] === 1 && data.length > 3) reject(new Error(`ws: ${data.subarray(1)}`));
    });
    ws.on("close", () => resolve({ bytes, elapsedMs: performance.now() - t0 }));
    ws.on("error", reject);
  });
}

async function until(what: string, check: () => Promise<boolean>, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function main(): Promise<void> {
  for (const f of [GUEST_DISK, CLIENT])
    if (!fs.existsSync(f)) throw new Error(`${f} missing: run scripts/setup.sh --test-guests`);
  const rounds = Number(process.argv[2] ?? 10);
  const launcher = createVmLauncher({ logger: pino({ level: "silent" }) });
  const node = await benchVmlet("strm", "strmbench0", "10.98.0.0/24", launcher);
  const { root, t } = node;
  const disks = http.createServer((_req, res) => fs.createReadStream(GUEST_DISK).pipe(res));
  await new Promise<void>((resolve) => disks.listen(0, "127.0.0.1", resolve));
  try {
    t.rules.push({
      prefix: "vmlet.io/",
      url: `http://127.0.0.1:${(disks.address() as { port: number }).port}/`,
    });
    const r = t.client.runtime;
    const { imageRef } = await t.client.image.PullImage({ image: { image: "vmlet.io/guest" } });
    const logDirectory = path.join(root, "logs");
    const sandboxConfig = podConfig("strm", { logDirectory });
    const { podSandboxId } = await r.RunPodSandbox({ config: sandboxConfig });
    const { containerId } = await r.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "guest" }, image: { image: imageRef }, logPath: "guest.log" },
      sandboxConfig,
    });
    await r.StartContainer({ containerId });
    await until(
      "the guest agent",
      async () => (await r.ExecSync({ containerId, cmd: ["true"], timeout: 10 })).exitCode === 0,
      120_000,
    );
    const served = await r.ExecSync({
      containerId,
      cmd: [
        "sh",
        "-c",
        `mkdir -p /www && echo ok > /www/small && dd if=/dev/zero of=/www/big bs=1M count=${BIG_MIB} 2>/dev/null && httpd -p 8080 -h /www`,
      ],
      timeout: 60,
    });
    if (served.exitCode !== 0) throw new Error(`httpd in the guest: ${served.stderr}`);
    const podIp = (await r.PodSandboxStatus({ podSandboxId })).status?.network?.ip ?? "";
    const direct = `${podIp}:8080`;
    const get = (file: string) => `GET /${file} HTTP/1.0\r\n\r\n`;
    const portForward = async (file: string, connections: number) =>
      client(
        "-mode",
        "portforward",
        "-url",
        (await r.PortForward({ podSandboxId, port: [8080] })).url ?? "",
        "-port",
        "8080",
        "-request",
        get(file),
        "-connections",
        String(connections),
      );
    const straight = (file: string, connections: number) =>
      client(
        "-mode",
        "direct",
        "-addr",
        direct,
        "-request",
        get(file),
        "-connections",
        String(connections),
      );
    const checkBig = (res: ClientResult) => {
      const got = res.forwards?.[0]?.replyLen ?? 0;
      if (got < BIG_MIB << 20) throw new Error(`download short: ${got} bytes`);
    };

    const samples: Record<string, number[]> = {
      "exec true: ExecSync": [],
      "exec true: streaming": [],
      "exec true: streaming, incl. client start": [],
      "connect+GET: direct TCP": [],
      "connect+GET: port-forward": [],
      [`${BIG_MIB} MiB: direct TCP`]: [],
      [`${BIG_MIB} MiB: port-forward`]: [],
      [`${BIG_MIB} MiB: port-forward, WebSocket`]: [],
    };
    const cases: Array<() => Promise<void>> = [
      async () => {
        const t0 = performance.now();
        await r.ExecSync({ containerId, cmd: ["true"], timeout: 10 });
        samples["exec true: ExecSync"].push(performance.now() - t0);
      },
      async () => {
        const t0 = performance.now();
        const { url } = await r.Exec({ containerId, cmd: ["true"], stdout: true, stderr: true });
        const gotUrl = performance.now() - t0;
        const res = await client("-url", url ?? "", "-stderr");
        if (!res.status.includes("Success")) throw new Error(`exec: ${res.status}`);
        samples["exec true: streaming"].push(gotUrl + res.elapsedMs);
        samples["exec true: streaming, incl. client start"].push(performance.now() - t0);
      },
      async () => {
        samples["connect+GET: direct TCP"].push((await straight("small", CONNECTIONS)).elapsedMs);
      },
      async () => {
        samples["connect+GET: port-forward"].push(
          (await portForward("small", CONNECTIONS)).elapsedMs,
        );
      },
      async () => {
        const res = await straight("big", 1);
        checkBig(res);
        samples[`${BIG_MIB} MiB: direct TCP`].push(res.elapsedMs);
      },
      async () => {
        const res = await portForward("big", 1);
        checkBig(res);
        samples[`${BIG_MIB} MiB: port-forward`].push(res.elapsedMs);
      },
      async () => {
        const { url } = await r.PortForward({ podSandboxId, port: [8080] });
        const res = await wsPortForward(url ?? "", get("big"));
        if (res.bytes < BIG_MIB << 20) throw new Error(`ws download short: ${res.bytes} bytes`);
        samples[`${BIG_MIB} MiB: port-forward, WebSocket`].push(res.elapsedMs);
      },
    ];
    // Warm-up, then rounds in a rotating order so no case always runs first.
    for (const c of cases) await c();
    for (const s of Object.values(samples)) s.length = 0;
    for (let i = 0; i < rounds; i++) {
      for (let k = 0; k < cases.length; k++) await cases[(k + i) % cases.length]?.();
    }
    const mibps = (name: string) =>
      (BIG_MIB * 1000) / (samples[name].reduce((a, b) => a + b, 0) / samples[name].length);
    report(
      "streaming",
      `CRI streaming on the test guest (TCG), ${rounds} rounds; connect+GET per connection (${CONNECTIONS} a round)`,
      samples,
      [
        {
          name: "exec: streaming / ExecSync",
          of: "exec true: streaming",
          to: "exec true: ExecSync",
        },
        {
          name: "connect: port-forward / direct",
          of: "connect+GET: port-forward",
          to: "connect+GET: direct TCP",
        },
        {
          name: `${BIG_MIB} MiB: port-forward / direct`,
          of: `${BIG_MIB} MiB: port-forward`,
          to: `${BIG_MIB} MiB: direct TCP`,
        },
        {
          name: `${BIG_MIB} MiB: WebSocket / SPDY port-forward`,
          of: `${BIG_MIB} MiB: port-forward, WebSocket`,
          to: `${BIG_MIB} MiB: port-forward`,
        },
      ],
      {
        throughputMiBps: {
          direct: mibps(`${BIG_MIB} MiB: direct TCP`),
          portForward: mibps(`${BIG_MIB} MiB: port-forward`),
          portForwardWebSocket: mibps(`${BIG_MIB} MiB: port-forward, WebSocket`),
        },
      },
    );
    console.log(
      `throughput: direct ${mibps(`${BIG_MIB} MiB: direct TCP`).toFixed(1)} MiB/s, port-forward ${mibps(`${BIG_MIB} MiB: port-forward`).toFixed(1)} MiB/s, over WebSocket ${mibps(`${BIG_MIB} MiB: port-forward, WebSocket`).toFixed(1)} MiB/s`,
    );
    await r.StopPodSandbox({ podSandboxId });
    await r.RemovePodSandbox({ podSandboxId });
  } finally {
    disks.close();
    await node.close();
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
