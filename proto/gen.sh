#!/usr/bin/env bash
# Regenerates the TypeScript types of the CRI contract (src/runtime/cri/generated) from
# proto/runtime/v1/api.proto with proto-loader's generator, offline from node_modules.
# The output is committed, so a build needs no codegen. Options match cri/proto.ts.
set -euo pipefail
cd "$(dirname "$0")/.."
out=src/runtime/cri/generated
rm -rf "$out"
npx --no-install proto-loader-gen-types --longs=String --enums=String --defaults --oneofs \
  --grpcLib=@grpc/grpc-js -O "$out" proto/runtime/v1/api.proto
rm "$out/api.ts" # its ProtoGrpcType uses `any`; cri/proto.ts types the package itself
npx --no-install biome check --write --unsafe "$out" >/dev/null 2>&1 || true
# Empty messages come out as `{}`, which the linter bans.
sed -i 's/= {};/= Record<string, never>;/' "$out"/runtime/v1/*.ts
(cd "$out" && ls runtime/v1 | sed 's|\(.*\)\.ts$|export type * from "./runtime/v1/\1";|' > index.ts)
npx --no-install biome check --write "$out"
