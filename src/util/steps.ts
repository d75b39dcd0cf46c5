// Optional timing of setUp's and tearDown's steps, for the benchmarks' breakdown. With no
// hook set, a step is just its work: no clock is read.
import { performance } from "node:perf_hooks";

/** Called once per step that finished, with its wall time in milliseconds. */
export type StepHook = (step: string, ms: number) => void;

export async function timeStep<T>(
  hook: StepHook | undefined,
  step: string,
  work: () => Promise<T> | T,
): Promise<T> {
  if (!hook) return work();
  const t0 = performance.now();
  const result = await work();
  hook(step, performance.now() - t0);
  return result;
}
