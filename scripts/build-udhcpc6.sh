#!/usr/bin/env bash
# Builds busybox udhcpc6 from Debian's own busybox source package (bookworm), statically,
# with test/guests/busybox-udhcpc6.config over allnoconfig, into
#   .cache/guests/busybox-udhcpc6          the udhcpc6 applet alone: run it as
#                                          `udhcpc6 ARGS` (a link) or `busybox-udhcpc6 udhcpc6 ARGS`
#                                          (named busybox*, it drops its first argument, as busybox does)
#   .cache/guests/busybox-udhcpc6.version  the Debian source version it was built from
# Debian 12's busybox and busybox-static are built without udhcpc6; the IPv6 tests run
# this one in the relay guest and in the tiny VM. The source comes through apt with a
# private configuration under .cache/busybox-src (a deb-src line of its own, its own
# lists): the machine's apt configuration is not touched.
# Idempotent: skipped when the binary is newer than the config and this script.
# Needs: apt-get, dpkg-dev (dpkg-source), gcc, make, libc6-dev, bzip2, xz-utils.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/.cache/guests
WORK=$ROOT/.cache/busybox-src
CONFIG=$ROOT/test/guests/busybox-udhcpc6.config
SELF=$ROOT/scripts/build-udhcpc6.sh
BIN=$OUT/busybox-udhcpc6
SUITE=bookworm

say() { printf 'build-udhcpc6: %s\n' "$*"; }
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

if up_to_date "$BIN" "$CONFIG" "$SELF"; then
  say "udhcpc6 up to date ($(cat "$BIN.version" 2>/dev/null))"
  exit 0
fi
start=$(date +%s.%N)
mkdir -p "$OUT" "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial"

# 1. The source package, through a private apt configuration.
APT=(-o "Dir::Etc::SourceList=$WORK/apt/sources.list" -o "Dir::Etc::SourceParts=-"
  -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache=$WORK/apt/cache"
  -o "APT::Sandbox::User=root")
echo "deb-src http://deb.debian.org/debian $SUITE main" >"$WORK/apt/sources.list"
dsc=$(find "$WORK" -maxdepth 1 -name 'busybox_*.dsc' | head -n1)
if [ -z "$dsc" ]; then
  say "fetching Debian's busybox source ($SUITE, apt-get source with a private deb-src list)"
  apt-get "${APT[@]}" -qq update
  (cd "$WORK" && apt-get "${APT[@]}" -qq source --download-only busybox >/dev/null) || {
    echo "build-udhcpc6: apt-get source busybox failed" >&2
    exit 1
  }
  dsc=$(find "$WORK" -maxdepth 1 -name 'busybox_*.dsc' | head -n1)
fi
version=$(sed -n 's/^Version: //p' "$dsc")
SRC=$WORK/src
if ! up_to_date "$SRC/.unpacked" "$dsc"; then
  say "unpacking $(basename "$dsc") with Debian's patches (dpkg-source -x)"
  rm -rf "$SRC"
  # apt checked the pieces against the archive's signed Sources index; dpkg-source checks
  # them against the .dsc (it cannot check the uploader's signature: no debian-keyring).
  dpkg-source -x "$dsc" "$SRC" >"$WORK/unpack.log" 2>&1 || {
    cat "$WORK/unpack.log" >&2
    echo "build-udhcpc6: dpkg-source -x $dsc failed" >&2
    exit 1
  }
  touch "$SRC/.unpacked"
fi

# 2. Configure: allnoconfig, then the fragment's settings replace allnoconfig's.
OBJ=$WORK/obj
rm -rf "$OBJ"
mkdir -p "$OBJ"
make -s -C "$SRC" O="$OBJ" allnoconfig >/dev/null
keys=$(sed -nE 's/^(# )?(CONFIG_[A-Z0-9_]+)[= ].*/\2/p' "$CONFIG" | paste -sd'|')
{
  grep -vE "^(# )?($keys)[= ]" "$OBJ/.config"
  grep -E '^(# )?CONFIG_' "$CONFIG"
} >"$OBJ/.config.new"
mv "$OBJ/.config.new" "$OBJ/.config"
(yes "" || true) | make -s -C "$OBJ" oldconfig >/dev/null # new options: their defaults
for want in CONFIG_UDHCPC6=y CONFIG_STATIC=y CONFIG_FEATURE_UDHCPC6_RFC3646=y; do
  grep -qx "$want" "$OBJ/.config" || {
    echo "build-udhcpc6: $want did not survive oldconfig" >&2
    exit 1
  }
done

# 3. Build.
say "building udhcpc6 from busybox $version (static)"
make -s -C "$OBJ" -j"$(nproc)" >"$OBJ/build.log" 2>&1 || {
  tail -n 30 "$OBJ/build.log" >&2
  echo "build-udhcpc6: make failed (log: $OBJ/build.log)" >&2
  exit 1
}
# -h is no option of udhcpc6's: it prints its usage and exits (and starts no client).
usage=$("$OBJ/busybox" udhcpc6 -h 2>&1 || true)
grep -q 'Usage: udhcpc6' <<<"$usage" || {
  echo "build-udhcpc6: the binary does not say it is udhcpc6" >&2
  exit 1
}
cp "$OBJ/busybox" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "busybox $version (Debian source, $SUITE)" >"$BIN.version"
end=$(date +%s.%N)
say "done in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s: $BIN ($(stat -c %s "$BIN") bytes)"
