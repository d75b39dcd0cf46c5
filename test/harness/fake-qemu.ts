// A fake QEMU for the wedged-monitor tests: a process whose command line names its QMP
// socket (as QEMU's does, which is how vmlet tells its QEMU from a reused pid) and whose
// monitor greets and then never answers. A real QEMU cannot be wedged that way on
// demand: stopped with SIGSTOP it does not even greet.
//   node fake-qemu.js QMP_SOCKET silent        greets, answers nothing
//   node fake-qemu.js QMP_SOCKET capabilities  also answers qmp_capabilities, then nothing
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import type { ContainerRecord } from "../../src/runtime/store";
import { vmPaths } from "../../src/runtime/vm";
import { readProcStat } from "../../src/runtime/vm/proc";
import type { VmRecord } from "../../src/runtime/vm/types";

export type FakeQemuMode = "silent" | "capabilities";

/** Starts the fake; resolves once its socket listens. */
export async function startFakeQemu(socket: string, mode: FakeQemuMode): Promise<ChildProcess> {
  const child = spawn(process.execPath, [__filename, socket, mode], { stdio: "ignore" });
  for (let i = 0; i < 500 && !fs.existsSync(socket); i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  if (!fs.existsSync(socket)) throw new Error(`fake QEMU: no socket ${socket}`);
  return child;
}

/** Records a running container whose VM is a fake QEMU with a wedged monitor. */
export async function wedgedContainer(
  stateDir: string,
  sandboxId: string,
  name: string,
  mode: FakeQemuMode,
): Promise<{ id: string; fake: ChildProcess }> {
  const id = `${name.padEnd(16, "0")}${"0".repeat(48)}`;
  const dir = path.join(stateDir, "vms", id.slice(0, 16));
  fs.mkdirSync(dir, { recursive: true });
  const paths = vmPaths(dir);
  const fake = await startFakeQemu(paths.qmpSocket, mode);
  const stat = await readProcStat(fake.pid!);
  assert.ok(stat);
  const logPath = path.join(dir, "console.log");
  const vm: VmRecord = {
    version: 1,
    id,
    dir,
    pid: fake.pid!,
    pidStartTime: stat.startTime,
    startedAt: new Date().toISOString(),
    accel: "tcg",
    qmpSocket: paths.qmpSocket,
    consoleSocket: paths.consoleSocket,
    guestAgentSocket: paths.guestAgentSocket,
    consoleRaw: paths.consoleRaw,
    consoleOffsetFile: paths.consoleOffset,
    logPath,
    overlayPath: paths.overlay,
    seedPath: paths.seed,
    qemuLogPath: paths.qemuLog,
    pidFile: paths.pidFile,
  };
  const record: ContainerRecord = {
    id,
    sandboxId,
    phase: "running",
    metadata: { name: "vm", attempt: 0 },
    image: { spec: "vmlet.io/x", id: "0".repeat(64), ref: `sha256:${"0".repeat(64)}` },
    createdAt: "1",
    startedAt: "2",
    finishedAt: "0",
    exitCode: 0,
    reason: "",
    message: "",
    labels: {},
    annotations: {},
    logPath,
    dir,
    vcpus: 1,
    memoryMiB: 64,
    mounts: [],
    vm,
    pid: fake.pid!,
  };
  fs.writeFileSync(path.join(stateDir, "containers", `${id}.json`), JSON.stringify(record));
  return { id, fake };
}

function serve(socket: string, mode: FakeQemuMode): void {
  fs.rmSync(socket, { force: true });
  net
    .createServer((conn) => {
      conn.write('{"QMP": {"version": {}, "capabilities": []}}\n');
      let buffer = "";
      conn.on("data", (chunk) => {
        buffer += chunk.toString();
        for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
          const command = JSON.parse(buffer.slice(0, nl)) as { execute?: string; id?: unknown };
          buffer = buffer.slice(nl + 1);
          if (mode === "capabilities" && command.execute === "qmp_capabilities") {
            conn.write(`${JSON.stringify({ return: {}, id: command.id })}\n`);
          }
        }
      });
      conn.on("error", () => {});
    })
    .listen(socket);
}

if (require.main === module) {
  const [socket, mode] = process.argv.slice(2);
  if (!socket || (mode !== "silent" && mode !== "capabilities")) {
    console.error("usage: fake-qemu.js QMP_SOCKET silent|capabilities");
    process.exit(2);
  }
  serve(socket, mode);
}
