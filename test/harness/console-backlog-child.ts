// A child process for the console backlog test: a ConsoleTailer catches up on a raw
// console file into a CRI log, and the child reports its resident memory before and at
// its peak while doing so. A process of its own, so the test's heap does not count.
import fs from "node:fs";
import { ConsoleTailer } from "../../src/runtime/vm/console-tail";
import { CriLogWriter } from "../../src/runtime/vm/cri-log";

/** A /proc/self/status field in KiB. */
function statusKiB(field: "VmRSS" | "VmHWM"): number {
  const text = fs.readFileSync("/proc/self/status", "utf8");
  return Number(new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(text)?.[1]);
}

async function main(): Promise<void> {
  const [rawPath, offsetPath, logPath] = process.argv.slice(2) as [string, string, string];
  const size = fs.statSync(rawPath).size;
  const writer = await CriLogWriter.open(logPath);
  // proc(5) clear_refs: 5 resets the peak RSS (VmHWM) to the current RSS.
  fs.writeFileSync("/proc/self/clear_refs", "5");
  const baselineKiB = statusKiB("VmRSS");
  const started = Date.now();
  let failure: Error | undefined;
  const tailer = await ConsoleTailer.start({
    rawPath,
    offsetPath,
    writer,
    pollMs: 50,
    reclaimBytes: 0,
    onError: (error) => {
      failure = error;
    },
  });
  while (tailer.offset < size && !failure) await new Promise((r) => setTimeout(r, 20));
  const ms = Date.now() - started;
  await tailer.stop(false);
  await writer.close();
  if (failure) throw failure;
  const saved = Number(fs.readFileSync(offsetPath, "utf8").trim());
  process.stdout.write(
    `${JSON.stringify({ baselineKiB, peakKiB: statusKiB("VmHWM"), ms, saved, size })}\n`,
  );
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
