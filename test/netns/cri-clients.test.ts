// Real gRPC clients of other stacks on `vmlet serve`'s socket, each driving a pod sandbox
// through its life: grpc-go 1.33 (Debian's, dialing the socket path as kubelet 1.26
// does, so the path is its :authority), Python's grpcio (C-core 1.51), and grpc-js, with
// the authorities other clients send (the path, percent-encoded, empty).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import type * as grpc from "@grpc/grpc-js";
import { type CriClient, connectCri } from "../../src/runtime/cri/client";
import { allocations, bridgeList, type CniSandbox, makeCniSandbox } from "../harness/cni-fixtures";
import { requirePrivateNamespace, uniqueName } from "../harness/fixtures";
import { podConfig } from "../harness/test-vmlet";
import { type Served, serveArgs, startServe } from "../harness/vmlet-serve";

const CLIENTS = path.resolve(__dirname, "../../../.cache/clients");
const GO_CLIENT = path.join(CLIENTS, "cri-client-go");
const PY_CLIENT = path.resolve(__dirname, "../../../test/clients/python/cri_client.py");
// Debian's interpreter: the machine's default python3 is another one, without grpcio.
const PYTHON = "/usr/bin/python3";
const NETWORK = "clientnet";

type Line = Record<string, unknown> & { call: string };

function runClient(file: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Line[]> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      { timeout: 60_000, env: { ...process.env, ...env } },
      (error, stdout, stderr) => {
        if (error)
          reject(
            new Error(`${path.basename(file)} ${args.join(" ")}: ${stderr}`, { cause: error }),
          );
        else
          resolve(
            stdout
              .trim()
              .split("\n")
              .map((l) => JSON.parse(l) as Line),
          );
      },
    );
  });
}

const goClient = (socket: string, pod: string) => runClient(GO_CLIENT, [socket, pod]);
const pyClient = (socket: string, pod: string, authority?: string, idleS = 0) =>
  runClient(PYTHON, [PY_CLIENT, socket, pod, ...(authority === undefined ? [] : [authority])], {
    PYTHONPATH: path.join(CLIENTS, "python"),
    CRI_CLIENT_IDLE_S: String(idleS),
  });

/** The same calls through grpc-js, printed as the other clients print them. */
async function jsClient(
  socket: string,
  pod: string,
  options: grpc.ClientOptions = {},
): Promise<Line[]> {
  const client: CriClient = connectCri(socket, options);
  const r = client.runtime;
  const lines: Line[] = [{ call: "dial" }];
  const list = async () => {
    const { items } = await r.ListPodSandbox({});
    lines.push({ call: "ListPodSandbox", items: items.map((s) => ({ id: s.id, state: s.state })) });
  };
  try {
    const v = await r.Version({ version: "v1" });
    lines.push({
      call: "Version",
      runtimeName: v.runtimeName,
      runtimeApiVersion: v.runtimeApiVersion,
    });
    const { podSandboxId } = await r.RunPodSandbox({ config: podConfig(pod) });
    lines.push({ call: "RunPodSandbox", podSandboxId });
    await list();
    await r.StopPodSandbox({ podSandboxId });
    lines.push({ call: "StopPodSandbox" });
    await list();
    await r.RemovePodSandbox({ podSandboxId });
    lines.push({ call: "RemovePodSandbox" });
    await list();
  } finally {
    client.close();
  }
  return lines;
}

/** What every client must have seen: the sandbox ready, then not ready, then gone. */
function assertLifecycle(lines: Line[], who: string): string {
  assert.deepEqual(
    lines.map((l) => l.call),
    [
      "dial",
      "Version",
      "RunPodSandbox",
      "ListPodSandbox",
      "StopPodSandbox",
      "ListPodSandbox",
      "RemovePodSandbox",
      "ListPodSandbox",
    ],
    who,
  );
  assert.equal(lines[1].runtimeName, "vmlet", who);
  assert.equal(lines[1].runtimeApiVersion, "v1", who);
  const id = String(lines[2].podSandboxId);
  assert.match(id, /^[0-9a-f]{64}$/, who);
  const stateIn = (l: Line) =>
    (l.items as { id: string; state: string }[]).find((s) => s.id === id)?.state;
  assert.equal(stateIn(lines[3]), "SANDBOX_READY", who);
  assert.equal(stateIn(lines[5]), "SANDBOX_NOTREADY", who);
  assert.equal(stateIn(lines[7]), undefined, who);
  return id;
}

describe("real gRPC clients on vmlet serve", () => {
  let cni: CniSandbox;
  let socket: string;
  let served: Served;

  before(async () => {
    requirePrivateNamespace();
    for (const f of [GO_CLIENT, path.join(CLIENTS, "python/runtime/v1/api_pb2.py")]) {
      assert.ok(fs.existsSync(f), `${f} missing: run scripts/build-test-clients.sh`);
    }
    cni = makeCniSandbox();
    cni.writeConf("10-bridge.conflist", bridgeList(NETWORK, "1.0.0", cni.dataDir, "10.81.0.0/24"));
    socket = path.join(cni.root, "run", "vmlet", "vmlet.sock");
    const args = serveArgs(cni, socket);
    served = await startServe([...args, "--log-level", "debug"], socket);
  });

  after(async () => {
    if (served?.child.exitCode === null) served.child.kill("SIGKILL");
    await served?.exited;
    cni?.remove();
  });

  /**
   * Runs one client and checks its calls, that vmlet really set the pod up and took it
   * down, and the :authority vmlet logged for the client's connection.
   */
  async function drive(
    who: string,
    run: (pod: string) => Promise<Line[]>,
    expected: { authority: string | null; rewritten: boolean },
    via = expected.rewritten ? "rewriter" : "socket",
  ): Promise<void> {
    const from = served.logs.length;
    const lines = await run(uniqueName("cli"));
    const id = assertLifecycle(lines, who);
    const records = served.records(from);
    assert.ok(
      records.some((r) => r.msg === "pod sandbox ready" && r.podSandboxId === id),
      `${who}: vmlet set the pod's network up`,
    );
    assert.deepEqual(allocations(cni.dataDir, NETWORK), [], `${who}: its address is freed`);
    const seen = records.filter((r) => r.msg === "CRI client authority");
    assert.deepEqual(
      seen.map((r) => ({ authority: r.authority, rewritten: r.rewritten })),
      [expected],
      `${who}: the authority vmlet logged at debug level`,
    );
    assert.deepEqual(
      records.filter((r) => r.msg === "CRI connection handed to grpc-js").map((r) => r.via),
      [via],
      `${who}: how the connection reached grpc-js`,
    );
  }

  test("grpc-go 1.33, dialing the socket path as kubelet 1.26 does, sends the path and is served", async () => {
    await drive("go", (pod) => goClient(socket, pod), { authority: socket, rewritten: true });
  });

  test("Python grpcio (C-core 1.51) is served with its own authority, the socket path, a percent-encoded or an empty one", async () => {
    await drive("python", (pod) => pyClient(socket, pod), {
      authority: "localhost",
      rewritten: false,
    });
    await drive("python, path", (pod) => pyClient(socket, pod, socket), {
      authority: socket,
      rewritten: true,
    });
    // What grpc C-core 1.57+ sends for a unix: target.
    const encoded = encodeURIComponent(socket);
    await drive("python, percent-encoded", (pod) => pyClient(socket, pod, encoded), {
      authority: encoded,
      rewritten: true,
    });
    await drive("python, empty", (pod) => pyClient(socket, pod, ""), {
      authority: "",
      rewritten: true,
    });
  });

  test("a client that connects and waits before its first call is served through the rewriter", async () => {
    await drive(
      "python, idle",
      (pod) => pyClient(socket, pod, undefined, 1.5),
      { authority: "localhost", rewritten: false },
      "rewriter",
    );
  });

  test("grpc-js is served as it always was, and with the socket path as authority", async () => {
    await drive("grpc-js", (pod) => jsClient(socket, pod), {
      authority: "localhost",
      rewritten: false,
    });
    await drive(
      "grpc-js, path",
      (pod) => jsClient(socket, pod, { "grpc.default_authority": socket }),
      {
        authority: socket,
        rewritten: true,
      },
    );
  });

  test("bytes that are not HTTP/2 close that connection with a log line; the daemon serves on", async () => {
    const from = served.logs.length;
    const closed = await new Promise<boolean>((resolve, reject) => {
      const s = net.connect(socket, () => s.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
      s.on("close", () => resolve(true));
      s.on("error", reject);
      s.resume();
      setTimeout(() => resolve(false), 5000).unref();
    });
    assert.ok(closed, "the connection was closed");
    // The log line may reach the pipe after the client saw the close.
    const deadline = Date.now() + 5000;
    const warning = () =>
      served.records(from).find((r) => String(r.msg).includes("malformed HTTP/2"));
    while (!warning() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const warned = warning();
    assert.match(String((warned?.err as { message?: string })?.message), /preface/);
    const lines = await goClient(socket, uniqueName("after"));
    assertLifecycle(lines, "go, after the bad client");
    assert.equal(served.child.exitCode, null);
  });

  test("SIGTERM ends serve cleanly with a rewritten and a direct connection open", async () => {
    const rewritten = connectCri(socket, { "grpc.default_authority": socket });
    const plain = connectCri(socket);
    try {
      await rewritten.runtime.Version({});
      await plain.runtime.Version({});
      served.child.kill("SIGTERM");
      assert.equal(await served.exited, 0);
      assert.ok(!fs.existsSync(socket), "the socket is removed");
    } finally {
      rewritten.close();
      plain.close();
    }
  });
});
