#!/usr/bin/env bash
# Builds the CRI streaming test client (test/clients/spdy) into .cache/clients/stream-client-go
# from Debian's moby/spdystream (golang-github-docker-spdystream-dev), the SPDY library
# client-go's exec, attach and port-forward use. Offline, GOPATH-style. Idempotent.
# Needs: golang-1.19-go, golang-github-docker-spdystream-dev.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/.cache/clients
SELF=scripts/build-stream-client.sh
GO=/usr/lib/go-1.19/bin/go

say() { printf 'build-stream-client: %s\n' "$*"; }
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

mkdir -p "$OUT"
client=$OUT/stream-client-go
if ! up_to_date "$client" test/clients/spdy/main.go "$SELF"; then
  say "building stream-client-go (moby/spdystream $(dpkg-query -W -f='${Version}' golang-github-docker-spdystream-dev))"
  (cd test/clients/spdy &&
    GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$OUT/gocache" \
      GOFLAGS= CGO_ENABLED=0 "$GO" build -o "$client.tmp" . &&
    mv "$client.tmp" "$client")
fi
say "client ready: $client"
