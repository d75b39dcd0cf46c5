// A fake QEMU for the wedged-monitor tests: a process whose command line names its QMP
// socket (as QEMU's does, which is how vmlet tells its QEMU from a reused pid) and whose
// monitor greets and then never answers. A real QEMU cannot be wedged that way on
// demand: stopped with SIGSTOP it does not even greet.
//   node fake-qemu.js QMP_SOCKET silent        greets, answers nothing
//   node fake-qemu.js QMP_SOCKET capabilities  also answers qmp_capabilities, then nothing
import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";

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
