#!/usr/bin/env bash
# Every benchmark, or those named (sys, cni, ...): each prints a table and writes
# bench/results/NAME.json. Each enters a private namespace of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test-guests
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for f in dist/bench/*.js; do
    n=$(basename "$f" .js)
    case $n in lib | plugin | node | tapmanager-compare) ;; *) names+=("$n") ;; esac # helpers; the compare needs a baseline
  done
fi
for n in "${names[@]}"; do
  echo "bench: $n"
  node "dist/bench/$n.js"
  echo
done
