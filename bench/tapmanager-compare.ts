// bench/tapmanager's one-pod-at-a-time part, before and after: this build and a baseline
// build of another commit (scripts/build-baseline.sh makes one), run in turn as separate
// processes, several rounds, so both see the same neighbours. Prints each step's p50 (the
// median over rounds of each round's p50) for both, and setUp's and tearDown's overhead
// over raw CNI with the target beside it.
// Usage: node dist/bench/tapmanager-compare.js BASELINE_DIST [rounds=6] [pods=20]
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { summarize } from "./lib";

const TARGET_OVERHEAD_MS = 3;

interface RunResult {
  overheadP50Ms: { setUpMs: number; tearDownMs: number };
  steps: Record<string, { p50: number }>;
  summaries: Record<string, { p50: number }>;
}

/** One run of a build's bench/tapmanager (one pod at a time only); its JSON. */
function runOnce(dist: string, pods: number): RunResult {
  execFileSync(
    process.execPath,
    [path.join(dist, "bench", "tapmanager.js"), String(pods), "0", "0", "0"],
    {
      stdio: ["ignore", "ignore", "inherit"],
    },
  );
  const file = path.join(dist, "..", "bench", "results", "tapmanager.json");
  return JSON.parse(fs.readFileSync(file, "utf8")) as RunResult;
}

function main(): void {
  const baseline = process.argv[2];
  if (!baseline || !fs.existsSync(path.join(baseline, "bench", "tapmanager.js"))) {
    throw new Error(
      "usage: tapmanager-compare BASELINE_DIST [rounds] [pods] (a dist/ with bench/tapmanager.js)",
    );
  }
  const rounds = Number(process.argv[3] ?? 6);
  const pods = Number(process.argv[4] ?? 20);
  // Real paths: each run writes its JSON beside its dist/, which a symlink would hide.
  const builds = {
    before: fs.realpathSync(baseline),
    after: fs.realpathSync(path.join(__dirname, "..")),
  };
  const runs: Record<keyof typeof builds, RunResult[]> = { before: [], after: [] };
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? (["before", "after"] as const) : (["after", "before"] as const);
    for (const which of order) {
      runs[which].push(runOnce(builds[which], pods));
      const o = runs[which].at(-1)?.overheadP50Ms;
      console.log(
        `round ${r + 1}/${rounds} ${which}: setUp +${o?.setUpMs.toFixed(1)} ms, tearDown +${o?.tearDownMs.toFixed(1)} ms`,
      );
    }
  }
  const median = (xs: number[]) => summarize(xs.filter((x) => Number.isFinite(x))).p50;
  const stepNames = [
    ...new Set([...runs.before, ...runs.after].flatMap((r) => Object.keys(r.steps))),
  ];
  const rows = [
    ...[
      "tapmanager.setUp",
      "raw ADD (netns + bridge plugin)",
      "tapmanager.tearDown",
      "raw DEL (bridge plugin + netns)",
    ].map((name) => ({
      name,
      before: median(runs.before.map((r) => r.summaries[name]?.p50 ?? Number.NaN)),
      after: median(runs.after.map((r) => r.summaries[name]?.p50 ?? Number.NaN)),
    })),
    ...stepNames.map((name) => ({
      name: `  step: ${name}`,
      before: median(runs.before.map((r) => r.steps[name]?.p50 ?? Number.NaN)),
      after: median(runs.after.map((r) => r.steps[name]?.p50 ?? Number.NaN)),
    })),
  ];
  const overhead = (which: keyof typeof builds, key: "setUpMs" | "tearDownMs") =>
    median(runs[which].map((r) => r.overheadP50Ms[key]));
  const width = Math.max(30, ...rows.map((r) => r.name.length + 2));
  const fmt = (v: number) => (Number.isFinite(v) ? v.toFixed(3) : "-").padStart(10);
  console.log(`\ntapmanager before / after, ${rounds} rounds of ${pods} pods each, alternated`);
  console.log(`${"(ms, p50)".padEnd(width)}${"before".padStart(10)}${"after".padStart(10)}`);
  for (const row of rows)
    console.log(`${row.name.padEnd(width)}${fmt(row.before)}${fmt(row.after)}`);
  const mark = (v: number) => (v <= TARGET_OVERHEAD_MS ? "met" : "MISSED");
  const o = {
    before: {
      setUpMs: overhead("before", "setUpMs"),
      tearDownMs: overhead("before", "tearDownMs"),
    },
    after: { setUpMs: overhead("after", "setUpMs"), tearDownMs: overhead("after", "tearDownMs") },
  };
  console.log(
    `\noverhead over raw CNI (median of the rounds' p50 differences), target <= +${TARGET_OVERHEAD_MS} ms:`,
  );
  for (const which of ["before", "after"] as const) {
    console.log(
      `  ${which}: setUp +${o[which].setUpMs.toFixed(1)} ms (${mark(o[which].setUpMs)}), ` +
        `tearDown +${o[which].tearDownMs.toFixed(1)} ms (${mark(o[which].tearDownMs)})`,
    );
  }
  const outDir = path.join(__dirname, "..", "..", "bench", "results");
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(
    path.join(outDir, "tapmanager-compare.json"),
    `${JSON.stringify(
      {
        rounds,
        pods,
        baseline: builds.before,
        rows,
        overheadP50Ms: o,
        target: TARGET_OVERHEAD_MS,
        runs,
        date: new Date().toISOString(),
      },
      null,
      2,
    )}\n`,
  );
  console.log("written: bench/results/tapmanager-compare.json");
}

main();
