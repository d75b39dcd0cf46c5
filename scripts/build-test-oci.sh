#!/usr/bin/env bash
# Builds the OCI images the containerd tests run, from Debian's busybox-static, as an OCI
# image layout under .cache/oci/ (gitignored), written with tar + sha256sum:
#   busybox  a root of /bin/busybox and its applets as symlinks, Cmd ["sh"]
#   pause    the same layer, Entrypoint sleeping forever: containerd's sandbox image
# The test harness (test/harness/containerd.ts) pushes both into a local docker-registry.
# Idempotent and reproducible: sorted tar, zero mtimes, gzip -n; skipped when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/.cache/oci
SELF=$ROOT/scripts/build-test-oci.sh
BUSYBOX=/bin/busybox
say() { printf 'build-test-oci: %s\n' "$*"; }
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

if up_to_date "$OUT/index.json" "$BUSYBOX" "$SELF"; then
  say "OCI images present ($OUT)"
  exit 0
fi
dpkg-query -S "$BUSYBOX" 2>/dev/null | grep -q '^busybox-static:' || {
  echo "build-test-oci: $BUSYBOX is not busybox-static (apt-get install busybox-static)" >&2
  exit 1
}
say "building busybox and pause OCI images into $OUT"
rm -rf "$OUT"
BLOBS=$OUT/blobs/sha256
mkdir -p "$BLOBS"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rootfs=$work/rootfs
mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
cp "$BUSYBOX" "$rootfs/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/:/bin/sh' >"$rootfs/etc/passwd"
echo 'root:x:0:' >"$rootfs/etc/group"

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -9 -c "$work/layer.tar" >"$work/layer.tar.gz"
layer=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar.gz")
mv "$work/layer.tar.gz" "$BLOBS/$layer"

# blob FILE: moves FILE into the blobs by its digest; prints "DIGEST SIZE".
blob() {
  local digest size
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$BLOBS/$digest"
  echo "$digest $size"
}

# image NAME CONFIG_JSON: writes the image config and manifest; prints the manifest's descriptor.
image() {
  local name=$1 config=$2 c m
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$config" "$diff_id" >"$work/config.json"
  read -r -a c < <(blob "$work/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "${c[0]}" "${c[1]}" "$layer" "$layer_size" >"$work/manifest.json"
  read -r -a m < <(blob "$work/manifest.json")
  printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}' \
    "${m[0]}" "${m[1]}" "$name"
}

busybox=$(image busybox '{"Env":["PATH=/bin"],"Cmd":["sh"]}')
# The sandbox's one process only holds the pod's namespaces; containerd stops it with SIGKILL.
pause=$(image pause '{"Env":["PATH=/bin"],"Entrypoint":["/bin/sleep","2147483647"]}')
echo '{"imageLayoutVersion":"1.0.0"}' >"$OUT/oci-layout"
printf '{"schemaVersion":2,"manifests":[%s,%s]}\n' "$busybox" "$pause" >"$OUT/index.json.tmp"
mv "$OUT/index.json.tmp" "$OUT/index.json"
say "done: busybox and pause (layer sha256:$layer, $layer_size bytes)"
