#!/usr/bin/env bash
# Builds another commit of vmlet (default: main) beside this one, for the before/after
# benchmarks (bench/tapmanager-compare.ts), and prints the dist/ it made. Idempotent: a
# commit built once is reused. Kept under .cache/baseline/<commit>.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:-main}
commit=$(git rev-parse --verify "$ref^{commit}")
dir=.cache/baseline/$commit
if [ ! -f "$dir/dist/bench/tapmanager.js" ]; then
  rm -rf "$dir"
  mkdir -p "$dir"
  git archive "$commit" | tar -x -C "$dir"
  ln -s "$(pwd)/node_modules" "$dir/node_modules"
  (cd "$dir" && npx tsc -p . >&2)
fi
echo "$(cd "$dir" && pwd)/dist"
