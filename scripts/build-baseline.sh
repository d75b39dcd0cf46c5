#!/usr/bin/env bash
# Builds another commit of vmlet (default: main) beside this one, for the before/after
# benchmarks (bench/tapmanager-compare.ts), and prints the dist/ it made. Its bench/ is
# this checkout's, so both sides are measured by the same code. Kept under
# .cache/baseline/<commit>; the sources are unpacked once, the build is redone each time.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:-main}
commit=$(git rev-parse --verify "$ref^{commit}")
dir=.cache/baseline/$commit
if [ ! -f "$dir/package.json" ]; then
  rm -rf "$dir"
  mkdir -p "$dir"
  git archive "$commit" | tar -x -C "$dir"
  ln -s "$(pwd)/node_modules" "$dir/node_modules"
fi
rm -rf "$dir/bench" "$dir/dist"
cp -r bench "$dir/bench"
rm -rf "$dir/bench/results"
(cd "$dir" && npx tsc -p . >&2)
echo "$(cd "$dir" && pwd)/dist"
