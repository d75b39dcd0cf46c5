// The relay's copy loop, in its own process (started by relay.ts): fds 3 and 4 are two
// taps; each direction is a worker thread doing blocking read → write, so neither this
// process's nor the test process's libuv threadpool is used. Frames keep their vnet
// header (both taps have IFF_VNET_HDR with the same header size). SIGTERM ends it.
import fs from "node:fs";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";

interface Direction {
  from: number;
  to: number;
  name: string;
}

function copyLoop({ from, to, name }: Direction): void {
  const buf = Buffer.allocUnsafe(65536 + 64);
  let frames = 0;
  let dropped = 0;
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(from, buf, 0, buf.length, null);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "EAGAIN" || code === "EINTR") continue;
      parentPort?.postMessage({ name, error: String(error), frames, dropped });
      return;
    }
    if (n === 0) {
      parentPort?.postMessage({ name, error: "EOF", frames, dropped });
      return;
    }
    try {
      fs.writeSync(to, buf, 0, n);
      frames++;
    } catch {
      // The other tap is down or its queue is full: a lost frame, as on a wire.
      dropped++;
    }
  }
}

if (isMainThread) {
  const directions: Direction[] = [
    { from: 3, to: 4, name: "pod->guest" },
    { from: 4, to: 3, name: "guest->pod" },
  ];
  for (const d of directions) {
    const worker = new Worker(__filename, { workerData: d });
    worker.on("message", (m) => {
      process.stderr.write(`relay ${JSON.stringify(m)}\n`);
      process.exit(1);
    });
    worker.on("error", (e) => {
      process.stderr.write(`relay ${d.name}: ${e.stack ?? e}\n`);
      process.exit(1);
    });
  }
  process.on("SIGTERM", () => process.exit(0));
  process.stdout.write("relay ready\n");
} else {
  copyLoop(workerData as Direction);
}
