#!/usr/bin/env bash
# vmlet's main job on a built-in default, in a demo node namespace of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test-guests
exec node dist/src/cli/main.js demo "$@"
