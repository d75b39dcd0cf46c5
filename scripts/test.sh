#!/usr/bin/env bash
# The whole test suite: installs what is missing, lints, then runs every test inside a
# private network, mount and PID namespace. Extra arguments narrow it to matching files.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test-guests
echo "test: lint (biome)"
npx --no-install biome check src test bench
echo "test: layers (no upward imports in src/)"
node scripts/check-layers.mjs
echo "test: node --test inside a private namespace"
exec node dist/test/run.js "$@"
