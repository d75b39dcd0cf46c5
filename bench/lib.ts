// Shared by the benchmarks: cases timed alternately in one process (so a baseline and the
// thing measured see the same machine), summaries, a printed table and a JSON file.
import fs from "node:fs";
import path from "node:path";
import { performance } from "node:perf_hooks";

export interface Summary {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  mean: number;
}

export function summarize(samples: number[]): Summary {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? Number.NaN;
  const mean = s.reduce((a, b) => a + b, 0) / Math.max(1, s.length);
  return { n: s.length, p50: at(0.5), p90: at(0.9), p99: at(0.99), mean };
}

export type BenchCase = (iteration: number) => Promise<void> | void;

/**
 * Runs every case once per iteration, rotating which goes first so none always runs on
 * a warmer cache; a few untimed warm-up rounds first. Returns milliseconds per case.
 */
export async function alternate(
  iterations: number,
  cases: Record<string, BenchCase>,
  warmup = 3,
): Promise<Record<string, number[]>> {
  const names = Object.keys(cases);
  const samples: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (let i = 0; i < warmup; i++) for (const n of names) await cases[n](-1 - i);
  for (let i = 0; i < iterations; i++) {
    const order = names.map((_, k) => names[(k + i) % names.length]);
    for (const name of order) {
      const t0 = performance.now();
      await cases[name](i);
      samples[name].push(performance.now() - t0);
    }
  }
  return samples;
}

/**
 * Times named steps of a round that does more than one thing: `time(name, record, work)`
 * runs `work` and, when `record` is set (past the warm-up), keeps its milliseconds.
 */
export function stepTimer(names: string[]): {
  samples: Record<string, number[]>;
  time<T>(name: string, record: boolean, work: () => Promise<T>): Promise<T>;
} {
  const samples: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  return {
    samples,
    async time(name, record, work) {
      const t0 = performance.now();
      const result = await work();
      if (record) samples[name].push(performance.now() - t0);
      return result;
    },
  };
}

/**
 * Collects a hook's per-step times (a tapmanager's `steps` option) while `recording` is
 * set, and prints them as a breakdown: p50 and mean per step, in the order first seen.
 */
export function stepBreakdown(): {
  recording: boolean;
  hook(step: string, ms: number): void;
  summaries(): Record<string, Summary>;
  print(title: string): void;
} {
  const samples = new Map<string, number[]>();
  const breakdown = {
    recording: false,
    hook(step: string, ms: number) {
      if (!breakdown.recording) return;
      const list = samples.get(step) ?? [];
      if (list.length === 0) samples.set(step, list);
      list.push(ms);
    },
    summaries() {
      return Object.fromEntries([...samples].map(([step, s]) => [step, summarize(s)]));
    },
    print(title: string) {
      const width = Math.max(28, ...[...samples.keys()].map((n) => n.length + 2));
      console.log(title);
      console.log(
        `${"(ms)".padEnd(width)}${["p50", "p90", "mean"].map((c) => c.padStart(10)).join("")}`,
      );
      for (const [step, s] of Object.entries(breakdown.summaries())) {
        console.log(
          `${step.padEnd(width)}${[s.p50, s.p90, s.mean].map((v) => v.toFixed(3).padStart(10)).join("")}`,
        );
      }
    },
  };
  return breakdown;
}

/** Runs both cases, `a` first in even rounds: neither always runs on a warmer cache. */
export async function inTurn(
  round: number,
  a: () => Promise<void>,
  b: () => Promise<void>,
): Promise<void> {
  for (const run of round % 2 === 0 ? [a, b] : [b, a]) await run();
}

export interface Ratio {
  name: string;
  /** Case measured. */
  of: string;
  /** Baseline case. */
  to: string;
}

/** Prints the table and writes bench/results/<file>.json; returns what was written. */
export function report(
  file: string,
  title: string,
  samples: Record<string, number[]>,
  ratios: Ratio[],
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  const summaries = Object.fromEntries(
    Object.entries(samples).map(([name, s]) => [name, summarize(s)]),
  );
  const width = Math.max(24, ...Object.keys(samples).map((n) => n.length + 2));
  const cols = ["p50", "p90", "p99", "mean"] as const;
  const line = (name: string, values: number[], digits: number) =>
    `${name.padEnd(width)}${values.map((v) => v.toFixed(digits).padStart(10)).join("")}`;
  console.log(title);
  console.log(`${"(ms)".padEnd(width)}${cols.map((c) => c.padStart(10)).join("")}`);
  for (const [name, s] of Object.entries(summaries)) {
    console.log(
      line(
        name,
        cols.map((c) => s[c]),
        3,
      ),
    );
  }
  const ratioValues = ratios.map((r) => {
    const a = summaries[r.of];
    const b = summaries[r.to];
    const value = Object.fromEntries(cols.map((c) => [c, a[c] / b[c]]));
    console.log(
      line(
        r.name,
        cols.map((c) => value[c]),
        3,
      ),
    );
    return { ...r, ...value };
  });
  const result = {
    benchmark: title,
    unit: "ms",
    summaries,
    ratios: ratioValues,
    ...extra,
    date: new Date().toISOString(),
    node: process.version,
  };
  const outDir = path.join(__dirname, "..", "..", "bench", "results");
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, `${file}.json`), `${JSON.stringify(result, null, 2)}\n`);
  console.log(`written: bench/results/${file}.json`);
  return result;
}
