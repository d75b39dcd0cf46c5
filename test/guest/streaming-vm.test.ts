// kubectl exec, attach and port-forward on a VM pod, end to end: `vmlet serve` with the
// reference bridge plugin runs the test guest; GetExec, GetAttach and GetPortForward go
// through the CRI socket, and the URLs they return are driven by a real SPDY client
// (moby/spdystream, client-go's library: test/clients/spdy) as kubelet proxies kubectl.
import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import { status as grpcStatus } from "@grpc/grpc-js";
import { type CriClient, connectCri } from "../../src/runtime/cri/client";
import {
  encodeSynStream,
  FrameDecoder,
  GoawayStatus,
} from "../../src/runtime/streaming/spdy/frames";
import { HeaderDeflater, spdyHeaders } from "../../src/runtime/streaming/spdy/header-block";
import { bridgeList, type CniSandbox, makeCniSandbox } from "../harness/cni-fixtures";
import { requirePrivateNamespace } from "../harness/fixtures";
import { SpdyPeer } from "../harness/spdy-peer";
import { podConfig } from "../harness/test-vmlet";

const MAIN = path.resolve(__dirname, "../../src/cli/main.js");
const CLIENT = path.resolve(__dirname, "../../../.cache/clients/stream-client-go");
const GUEST_DISK = path.join(
  process.env.VMLET_GUESTS_DIR ?? path.resolve(__dirname, "../../../.cache/guests"),
  "disk.qcow2",
);
const skip = !fs.existsSync(GUEST_DISK)
  ? `no test guest at ${GUEST_DISK}: run scripts/build-test-guests.sh`
  : !fs.existsSync(CLIENT)
    ? `no ${CLIENT}: run scripts/build-stream-client.sh`
    : false;
const WS_CLIENT = path.resolve(__dirname, "../../../test/clients/node-ws/exec.mjs");
const WS_PORTFORWARD = path.resolve(__dirname, "../../../test/clients/node-ws/portforward.mjs");
const execFileAsync = promisify(execFile);

interface WsResult {
  protocol: string;
  stdout: string;
  stderr: string;
  status: { status: string; reason?: string; details?: { causes: unknown[] } } | null;
  error: string;
}

async function wsClient(url: string, ...stdin: string[]): Promise<WsResult> {
  const { stdout } = await execFileAsync(process.execPath, [WS_CLIENT, url, ...stdin], {
    timeout: 60_000,
  });
  return JSON.parse(stdout) as WsResult;
}

interface WsForwardResult {
  protocol: string;
  output: string;
  errors: string;
  error: string;
}

async function wsPortForward(url: string, port: number, request: string): Promise<WsForwardResult> {
  const { stdout } = await execFileAsync(
    process.execPath,
    [WS_PORTFORWARD, url, String(port), request],
    { timeout: 60_000 },
  );
  return JSON.parse(stdout) as WsForwardResult;
}

interface ClientResult {
  httpStatus: number;
  protocol?: string;
  body?: string;
  stdout: string;
  stderr: string;
  status: string;
  error?: string;
  matched?: boolean;
  forwards?: { reply: string; replyLen: number; error: string }[];
}

async function client(url: string, ...args: string[]): Promise<ClientResult> {
  const { stdout } = await execFileAsync(CLIENT, ["-url", url, ...args], {
    timeout: 90_000,
    maxBuffer: 1 << 20,
  });
  return JSON.parse(stdout) as ClientResult;
}

async function until<T>(
  what: string,
  check: () => Promise<T | false | undefined>,
  timeoutMs: number,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check().catch(() => undefined);
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

function openFds(pid: number): string[] {
  const dir = `/proc/${pid}/fd`;
  return fs.readdirSync(dir).map((fd) => {
    try {
      return fs.readlinkSync(path.join(dir, fd));
    } catch {
      return "";
    }
  });
}

/** The sockets a process holds open. */
function socketCount(pid: number): number {
  return openFds(pid).filter((l) => l.startsWith("socket:")).length;
}

describe("kubectl exec, attach and port-forward on a VM pod (SPDY, moby/spdystream)", {
  skip,
}, () => {
  let cni: CniSandbox;
  let disks: http.Server;
  let served: ChildProcess;
  let output = "";
  let cri: CriClient;
  let containerId = "";
  let podSandboxId = "";
  let logPath = "";
  let consoleSocket = "";
  let vmletPid = 0;
  /** vmlet's open sockets with the VM up and no stream: what must remain after the tests. */
  let idleSockets = 0;

  before(async () => {
    requirePrivateNamespace();
    cni = makeCniSandbox();
    cni.writeConf("10-bridge.conflist", bridgeList("strm", "1.0.0", cni.dataDir, "10.83.0.0/24"));
    disks = http.createServer((_req, res) => fs.createReadStream(GUEST_DISK).pipe(res));
    await new Promise<void>((r) => disks.listen(0, "127.0.0.1", r));
    const rules = path.join(cni.root, "images.json");
    const port = (disks.address() as net.AddressInfo).port;
    fs.writeFileSync(
      rules,
      JSON.stringify([{ prefix: "vmlet.io/", url: `http://127.0.0.1:${port}/` }]),
    );
    const socket = path.join(cni.root, "vmlet.sock");
    served = spawn(
      process.execPath,
      [
        MAIN,
        "serve",
        `--socket=${socket}`,
        `--state-dir=${path.join(cni.root, "state")}`,
        `--cni-conf-dir=${cni.confDir}`,
        `--cni-bin-dir=${cni.binDir}:/usr/lib/cni`,
        `--image-rules=${rules}`,
        "--accel=tcg",
        "--stream-address=127.0.0.1:0",
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    vmletPid = served.pid ?? 0;
    served.stdout?.on("data", (d: Buffer) => {
      output += d.toString();
    });
    served.stderr?.on("data", (d: Buffer) => {
      output += d.toString();
    });
    await until(
      "vmlet serve listening",
      async () => output.includes("CRI server listening"),
      20_000,
    );
    cri = connectCri(socket);
    const { imageRef } = await cri.image.PullImage({ image: { image: "vmlet.io/disk.qcow2" } });
    const logDirectory = path.join(cni.root, "pods", "default_strm_uid");
    const sandboxConfig = podConfig("strm", { logDirectory });
    podSandboxId = (await cri.runtime.RunPodSandbox({ config: sandboxConfig })).podSandboxId;
    containerId = (
      await cri.runtime.CreateContainer({
        podSandboxId,
        config: { metadata: { name: "guest" }, image: { image: imageRef }, logPath: "guest/0.log" },
        sandboxConfig,
      })
    ).containerId;
    await cri.runtime.StartContainer({ containerId });
    logPath = path.join(logDirectory, "guest/0.log");
    await until(
      "the guest's console loop (VMLET-GUEST ready) in the CRI log",
      async () =>
        fs.existsSync(logPath) && /VMLET-GUEST ready/.test(fs.readFileSync(logPath, "utf8")),
      90_000,
    );
    await until(
      "the guest agent",
      async () =>
        (await cri.runtime.ExecSync({ containerId, cmd: ["true"], timeout: 10 })).exitCode === 0,
      30_000,
    );
    consoleSocket = consoleSocketOf(cni.root);
    idleSockets = socketCount(vmletPid);
  });

  after(async () => {
    cri?.close();
    served?.kill("SIGKILL");
    disks?.close();
    if (podSandboxId) {
      // The VM runs in its own session: kill it by the pid vmlet recorded.
      for (const f of findFiles(path.join(cni.root, "state"), "qemu.pid")) {
        const pid = Number(fs.readFileSync(f, "utf8").trim());
        if (pid > 0) {
          try {
            process.kill(pid, "SIGKILL");
          } catch {
            // already gone
          }
        }
      }
    }
    cni?.remove();
  });

  const getExec = (cmd: string[], o: { stdin?: boolean; stderr?: boolean } = {}) =>
    cri.runtime.Exec({
      containerId,
      cmd,
      stdin: o.stdin ?? false,
      stdout: true,
      stderr: o.stderr ?? true,
      tty: false,
    });

  test("GetExec returns an absolute URL on the loopback streaming server", async () => {
    const { url } = await getExec(["true"]);
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/exec\/[A-Za-z0-9_-]{8}$/);
    const listening = output.split("\n").find((l) => l.includes("streaming server listening"));
    assert.ok(listening, "the log names the streaming server");
    assert.ok(listening.includes(new URL(url).origin), listening);
  });

  test("exec: stdout and stderr of the guest's command, and its exit code 3 in the Status", async () => {
    const { url } = await getExec(["sh", "-c", "echo out-$((6*7)); echo err >&2; exit 3"]);
    const r = await client(url, "-stderr");
    assert.equal(r.httpStatus, 101, JSON.stringify(r));
    assert.equal(r.protocol, "v4.channel.k8s.io");
    assert.equal(r.stdout, "out-42\n");
    assert.equal(r.stderr, "err\n");
    const status = JSON.parse(r.status) as {
      status: string;
      reason: string;
      details: { causes: { type: string; message: string }[] };
    };
    assert.equal(status.status, "Failure");
    assert.equal(status.reason, "NonZeroExitCode");
    assert.deepEqual(status.details.causes, [{ type: "ExitCode", message: "3" }]);
  });

  test("exec: stdin reaches the command (guest-exec input-data), Success at exit 0", async () => {
    const { url } = await getExec(["sh", "-c", "tr a-z A-Z"], { stdin: true });
    const r = await client(url, "-open-stdin", "-stdin", "through the agent\n", "-stderr");
    assert.equal(r.stdout, "THROUGH THE AGENT\n", JSON.stringify(r));
    assert.deepEqual(JSON.parse(r.status), { metadata: {}, status: "Success" });
  });

  test("exec: a program the guest does not have is exit 127 with the agent's error", async () => {
    const { url } = await getExec(["/no/such/program"]);
    const r = await client(url, "-stderr");
    assert.match(r.stderr, /guest-exec/);
    assert.deepEqual((JSON.parse(r.status) as { details: { causes: unknown[] } }).details.causes, [
      { type: "ExitCode", message: "127" },
    ]);
  });

  test("exec over WebSocket with @kubernetes/client-node: stdout, stderr, exit code 3; stdin ends with v5's close", async () => {
    const failed = await wsClient(
      (await getExec(["sh", "-c", "echo ws-out; echo ws-err >&2; exit 3"])).url,
    );
    assert.equal(failed.error, "", JSON.stringify(failed));
    assert.equal(failed.protocol, "v5.channel.k8s.io");
    assert.equal(failed.stdout, "ws-out\n");
    assert.equal(failed.stderr, "ws-err\n");
    assert.equal(failed.status?.reason, "NonZeroExitCode");
    assert.deepEqual(failed.status?.details?.causes, [{ type: "ExitCode", message: "3" }]);
    const fed = await wsClient(
      (await getExec(["sh", "-c", "tr a-z A-Z"], { stdin: true })).url,
      "via websocket\n",
    );
    assert.equal(fed.stdout, "VIA WEBSOCKET\n", JSON.stringify(fed));
    assert.equal(fed.status?.status, "Success");
  });

  test("the Get* calls check their requests as kubelet does", async () => {
    const code = async (p: Promise<unknown>) =>
      p.then(
        () => "OK",
        (e: { code: number }) => grpcStatus[e.code],
      );
    assert.equal(
      await code(
        cri.runtime.Exec({ containerId, cmd: ["true"], tty: true, stdout: true, stderr: true }),
      ),
      "INVALID_ARGUMENT",
    );
    assert.equal(await code(cri.runtime.Exec({ cmd: ["true"], stdout: true })), "INVALID_ARGUMENT");
    assert.equal(
      await code(cri.runtime.Exec({ containerId, cmd: ["true"] })),
      "INVALID_ARGUMENT",
      "none of stdin, stdout, stderr",
    );
    assert.equal(
      await code(cri.runtime.Exec({ containerId, cmd: [], stdout: true })),
      "INVALID_ARGUMENT",
    );
    assert.equal(
      await code(cri.runtime.Exec({ containerId: "nope", cmd: ["true"], stdout: true })),
      "NOT_FOUND",
    );
    assert.equal(await code(cri.runtime.Attach({ stdout: true })), "INVALID_ARGUMENT");
    assert.equal(await code(cri.runtime.PortForward({})), "INVALID_ARGUMENT");
    assert.equal(await code(cri.runtime.PortForward({ podSandboxId: "nope" })), "NOT_FOUND");
    // A URL is good once.
    const { url } = await getExec(["true"]);
    assert.equal((await client(url, "-stderr")).httpStatus, 101);
    const again = await client(url, "-stderr");
    assert.equal(again.httpStatus, 404);
  });

  test("attach: a reader and a writer share the console; the CRI log keeps its copy; detach leaves the VM and frees the console", async () => {
    const tag = `attached-${process.pid}`;
    const attachUrl = async (stdin: boolean) =>
      (await cri.runtime.Attach({ containerId, stdin, stdout: true, stderr: false, tty: false }))
        .url;
    const done = `VMLET-GUEST result id="71" rc="0"`;
    const reader = client(await attachUrl(false), "-mode", "attach", "-expect", done);
    // The reader is attached before the writer types (its streams come up first).
    await new Promise((r) => setTimeout(r, 1500));
    const writer = await client(
      await attachUrl(true),
      "-mode",
      "attach",
      "-open-stdin",
      "-send",
      `run 71 echo ${tag}\n`,
      "-expect",
      done,
    );
    assert.equal(writer.httpStatus, 101, JSON.stringify(writer));
    assert.ok(writer.matched, `writer saw: ${writer.stdout} ${writer.error ?? ""}`);
    assert.match(writer.stdout, new RegExp(tag));
    const seen = await reader;
    assert.ok(seen.matched, `reader saw: ${seen.stdout} ${seen.error ?? ""}`);
    assert.match(seen.stdout, new RegExp(tag));
    // The console still goes to the CRI log.
    await until(
      "the attached command's output in the CRI log",
      async () => new RegExp(`stdout F ${tag}$`, "m").test(fs.readFileSync(logPath, "utf8")),
      10_000,
    );
    // Detached: the VM runs on, and vmlet let go of the console (a direct client gets it).
    const s = (await cri.runtime.ContainerStatus({ containerId })).status;
    assert.equal(s?.state, "CONTAINER_RUNNING");
    const direct = await talkToConsole(consoleSocket, "run 72 echo direct\n", /result id="72"/);
    assert.match(direct, /direct/);
  });

  test("attach with a terminal (kubectl attach -it): typed commands run, resizes are taken and ignored", async () => {
    const { url } = await cri.runtime.Attach({
      containerId,
      stdin: true,
      stdout: true,
      stderr: false,
      tty: true,
    });
    const r = await client(
      url,
      "-mode",
      "attach",
      "-open-stdin",
      "-tty",
      "-send",
      "run 74 echo with-a-tty\n",
      "-expect",
      'result id="74" rc="0"',
    );
    assert.ok(r.matched, JSON.stringify(r));
    assert.match(r.stdout, /with-a-tty/);
  });

  test("attach: one writer at a time; a second gets a clear Failure", async () => {
    const attachUrl = async () =>
      (await cri.runtime.Attach({ containerId, stdin: true, stdout: true, tty: false })).url;
    const first = client(
      await attachUrl(),
      "-mode",
      "attach",
      "-open-stdin",
      "-expect",
      "never-printed-by-the-guest",
      "-wait-ms",
      "6000",
    );
    await new Promise((r) => setTimeout(r, 1500));
    const second = await client(
      await attachUrl(),
      "-mode",
      "attach",
      "-open-stdin",
      "-expect",
      "x",
    );
    assert.match(
      second.status,
      /another attach is writing to this console/,
      JSON.stringify(second),
    );
    await first;
  });

  test("port-forward: HTTP GET to a listener in the guest; a refused port fails only its own connection", async () => {
    const started = await cri.runtime.ExecSync({
      containerId,
      cmd: [
        "sh",
        "-c",
        "mkdir -p /www && echo hello-from-the-guest > /www/index.html && httpd -p 8080 -h /www",
      ],
      timeout: 30,
    });
    assert.equal(started.exitCode, 0, started.stderr.toString());
    const { url } = await cri.runtime.PortForward({ podSandboxId, port: [8080] });
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/portforward\/[A-Za-z0-9_-]{8}$/);
    const r = await client(
      url,
      "-mode",
      "portforward",
      "-port",
      "8080,9,8080",
      "-connections",
      "3",
      "-request",
      "GET /index.html HTTP/1.0\r\n\r\n",
    );
    assert.equal(r.httpStatus, 101, JSON.stringify(r));
    assert.equal(r.protocol, "portforward.k8s.io");
    const [a, refused, b] = r.forwards ?? [];
    assert.match(a?.reply ?? "", /^HTTP\/1\.[01] 200/);
    assert.match(a?.reply ?? "", /hello-from-the-guest/);
    assert.equal(a?.error, "");
    assert.match(
      refused?.error ?? "",
      /error forwarding port 9 to pod default\/strm: .*ECONNREFUSED/,
    );
    assert.match(
      b?.reply ?? "",
      /hello-from-the-guest/,
      "the session outlives a refused connection",
    );
  });

  // After the SPDY port-forward test: the same httpd in the guest, on 8080.
  test("port-forward over WebSocket with @kubernetes/client-node: HTTP GET through v4.channel.k8s.io; a bad port is refused with 400", async () => {
    const { url } = await cri.runtime.PortForward({ podSandboxId, port: [8080] });
    const r = await wsPortForward(url, 8080, "GET /index.html HTTP/1.0\r\n\r\n");
    assert.equal(r.error, "", JSON.stringify(r));
    assert.equal(r.protocol, "v4.channel.k8s.io");
    assert.match(r.output, /^HTTP\/1\.[01] 200/, JSON.stringify(r));
    assert.match(r.output, /hello-from-the-guest/);
    assert.equal(r.errors, "");
    const refused = await wsPortForward(
      (await cri.runtime.PortForward({ podSandboxId, port: [8080] })).url,
      0,
      "GET / HTTP/1.0\r\n\r\n",
    );
    assert.match(refused.error, /400/, JSON.stringify(refused));
    assert.equal(refused.output, "");
  });

  test("hostile clients (truncated frame, huge header block, zlib bomb, 1000 streams) are refused and closed, on attach, exec and port-forward", async () => {
    const urls = async () => [
      (await cri.runtime.Attach({ containerId, stdin: true, stdout: true })).url,
      (await getExec(["sleep", "5"])).url,
      (await cri.runtime.PortForward({ podSandboxId, port: [8080] })).url,
    ];
    const protocolOf = (u: string) =>
      u.includes("/portforward/") ? "portforward.k8s.io" : "v4.channel.k8s.io";
    const open = async (u: string) => {
      const { port, pathname } = new URL(u);
      return SpdyPeer.upgrade(Number(port), pathname, protocolOf(u));
    };
    const goawayProtocolError = (peer: SpdyPeer) =>
      peer.of("goaway").some((g) => g.status === GoawayStatus.PROTOCOL_ERROR);
    for (const u of await urls()) {
      // A frame cut short, then the client goes: the session ends, nothing waits on it.
      const truncated = await open(u);
      const whole = encodeSynStream(1, 0, await deflate({ streamType: "error" }));
      truncated.write(whole.subarray(0, whole.length - 5));
      truncated.socket.end();
      await truncated.untilClosed();
    }
    for (const u of await urls()) {
      // A control frame past the 32 KiB cap.
      const huge = await open(u);
      huge.write(encodeSynStream(1, 0, crypto.randomBytes(40 * 1024)));
      await huge.untilClosed();
      assert.ok(goawayProtocolError(huge), `${u}: GOAWAY PROTOCOL_ERROR for a huge frame`);
    }
    for (const u of await urls()) {
      // A small header block that inflates to 4 MiB (past the 16 KiB cap).
      const bomb = await open(u);
      await bomb.synStream(1, spdyHeaders({ streamType: "error", filler: "a".repeat(4 << 20) }));
      await bomb.untilClosed();
      assert.ok(goawayProtocolError(bomb), `${u}: GOAWAY PROTOCOL_ERROR for a zlib bomb`);
    }
    for (const u of await urls()) {
      // A thousand streams: past 100 at once they are refused; the session itself survives
      // until the client leaves.
      const many = await rawUpgrade(u, protocolOf(u));
      const deflater = new HeaderDeflater();
      for (let i = 0; i < 1000; i++) {
        const headers: Record<string, string> = u.includes("/portforward/")
          ? { streamType: "data", port: "8080", requestID: String(i) }
          : { streamType: "stdout" };
        many.socket.write(
          encodeSynStream(2 * i + 1, 0, await deflater.deflateBlock(spdyHeaders(headers))),
        );
      }
      await until(
        "resets for the streams over the limit",
        async () => many.resets() >= 900,
        20_000,
      );
      many.socket.destroy();
      deflater.close();
    }
    // The agent's channel is not held by the abandoned exec: ExecSync answers at once.
    const at = Date.now();
    assert.equal(
      (await cri.runtime.ExecSync({ containerId, cmd: ["true"], timeout: 10 })).exitCode,
      0,
    );
    assert.ok(Date.now() - at < 3000, `ExecSync took ${Date.now() - at} ms`);
    assert.equal(
      (await cri.runtime.ContainerStatus({ containerId })).status?.state,
      "CONTAINER_RUNNING",
    );
  });

  test("nothing is left: vmlet holds no stream's socket, and the console has no client", async () => {
    await until(
      "vmlet's sockets back to their idle count",
      async () => socketCount(vmletPid) === idleSockets,
      10_000,
    ).catch(() => assert.equal(socketCount(vmletPid), idleSockets, openFds(vmletPid).join(" ")));
    const direct = await talkToConsole(consoleSocket, "run 73 echo still-free\n", /result id="73"/);
    assert.match(direct, /still-free/);
  });
});

/** An upgraded connection read only at the frame level: counts the RST_STREAMs it gets. */
function rawUpgrade(
  u: string,
  protocol: string,
): Promise<{ socket: net.Socket; resets(): number }> {
  const { port, pathname } = new URL(u);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), "127.0.0.1");
    const decoder = new FrameDecoder({ maxControlFrameBytes: 1 << 20 });
    let resets = 0;
    let head = Buffer.alloc(0);
    let upgraded = false;
    socket.on("error", () => {});
    socket.on("data", (d: Buffer) => {
      let chunk = d;
      if (!upgraded) {
        head = Buffer.concat([head, d]);
        const end = head.indexOf("\r\n\r\n");
        if (end < 0) return;
        if (!head.subarray(0, end).toString().startsWith("HTTP/1.1 101")) {
          reject(new Error(`upgrade refused: ${head.subarray(0, end).toString()}`));
          return;
        }
        upgraded = true;
        chunk = head.subarray(end + 4);
        resolve({ socket, resets: () => resets });
      }
      for (const f of decoder.decode(chunk)) if (f.type === "rst_stream") resets++;
    });
    socket.write(
      `POST ${pathname} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n` +
        `X-Stream-Protocol-Version: ${protocol}\r\n\r\n`,
    );
  });
}

async function deflate(headers: Record<string, string>): Promise<Buffer> {
  const d = new HeaderDeflater();
  try {
    return await d.deflateBlock(spdyHeaders(headers));
  } finally {
    d.close();
  }
}

function findFiles(dir: string, name: string): string[] {
  const out: string[] = [];
  if (!fs.existsSync(dir)) return out;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...findFiles(full, name));
    else if (e.name === name) out.push(full);
  }
  return out;
}

function consoleSocketOf(root: string): string {
  const found = findFiles(path.join(root, "state"), "console.sock");
  assert.equal(found.length, 1, `one console socket: ${found.join(", ")}`);
  return found[0] ?? "";
}

/** Writes a line to the console socket directly and reads until `until` shows up. */
function talkToConsole(socketPath: string, line: string, until: RegExp): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    let seen = "";
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`console: no ${until} in ${JSON.stringify(seen.slice(-500))}`));
    }, 15_000);
    socket.on("connect", () => socket.write(line));
    socket.on("data", (d: Buffer) => {
      seen += d.toString();
      if (until.test(seen)) {
        clearTimeout(timer);
        socket.destroy();
        resolve(seen);
      }
    });
    socket.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}
