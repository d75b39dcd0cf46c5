// A seeded pseudo-random source for fuzz tests: the same inputs every run, so a failure can
// be replayed from its seed.

/** xorshift32: unsigned 32-bit values from `seed`. */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}
