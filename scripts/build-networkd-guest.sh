#!/usr/bin/env bash
# Builds the systemd-networkd test guest, under .cache/networkd-guest/ (gitignored):
#   rootfs-base/     debootstrap --variant=minbase bookworm with systemd, udev, dbus,
#                    iproute2 and iputils-ping (Debian's packages, unchanged)
#   initrd.cpio      that rootfs, trimmed (no docs, man pages, locales, apt lists, iconv
#                    modules), with the cloud kernel's virtio-net modules, one .network
#                    file (DHCP=yes and nothing else: what a distribution image ships) and
#                    the report unit from test/guests/networkd/. /init is systemd: the
#                    kernel unpacks the whole system into its rootfs and runs it there.
# It boots with the tiny guest's kernel (.cache/guests/vmlinuz; build-test-guests.sh
# first): -kernel vmlinuz -initrd initrd.cpio. Uncompressed, because that boots fastest
# under TCG: to network-online in 14.1 s (median of 4 alternated boots) against 15.5 s for
# the same cpio with zstd (the guest decompresses 118 MB in emulation) and 13.6 s for an
# ext4 disk behind a busybox initramfs (within the noise of the first, with a second
# stage and a second image); see test/guests/README.md.
# Idempotent: each step is skipped when its outputs exist and are newer than its inputs.
# Needs: debootstrap, cpio, kmod (depmod), xz-utils, and network access to deb.debian.org.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/.cache/networkd-guest
GUESTS=$ROOT/.cache/guests
SRC=$ROOT/test/guests/networkd
SELF=$ROOT/scripts/build-networkd-guest.sh
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
# What the guest needs beyond minbase. udev: networkd waits for udev to initialise a
# link when /sys is writable (a VM), and udev loads virtio-net. dbus: networkctl's
# renew/reconfigure talk to networkd over the system bus.
PACKAGES=systemd,systemd-sysv,udev,dbus,iproute2,iputils-ping
# The virtio NIC and what it depends on; udev loads them by modalias.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
  failover net_failover virtio_net)

say() { printf 'build-networkd-guest: %s\n' "$*"; }
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

[ "$(id -u)" = 0 ] || {
  echo "build-networkd-guest: debootstrap needs root" >&2
  exit 1
}
[ -e "$GUESTS/vmlinuz" ] && [ -e "$GUESTS/pkg/kernel/.unpacked" ] || {
  echo "build-networkd-guest: the cloud kernel is missing: run scripts/build-test-guests.sh" >&2
  exit 1
}
mkdir -p "$OUT"
start=$(date +%s.%N)

# 1. The Debian system, as debootstrap makes it. Its stamp records the package list, so
# changing the list rebuilds it.
BASE=$OUT/rootfs-base
STAMP=$BASE/.debootstrapped
if [ ! -e "$STAMP" ] || [ "$(cat "$STAMP")" != "$SUITE $PACKAGES" ]; then
  say "debootstrap --variant=minbase $SUITE ($PACKAGES) -> .cache/networkd-guest/rootfs-base"
  rm -rf "$BASE" "$BASE.tmp"
  t0=$(date +%s.%N)
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$BASE.tmp" "$MIRROR" \
    >"$OUT/debootstrap.log" 2>&1 || {
    echo "build-networkd-guest: debootstrap failed; the end of $OUT/debootstrap.log:" >&2
    tail -n 20 "$OUT/debootstrap.log" >&2
    exit 1
  }
  t1=$(date +%s.%N)
  mv "$BASE.tmp" "$BASE"
  echo "$SUITE $PACKAGES" >"$STAMP"
  say "debootstrap took $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }') s"
else
  say "debootstrap rootfs up to date"
fi

# 2. The initramfs: a trimmed copy of the rootfs plus the guest's own files.
KDIR=$GUESTS/pkg/kernel
KVER=$(basename "$(find "$KDIR/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)")
INPUTS=("$STAMP" "$KDIR/.unpacked" "$SELF" "$SRC"/*)
IMG=$OUT/initrd.cpio
if ! up_to_date "$IMG" "${INPUTS[@]}"; then
  say "initramfs -> .cache/networkd-guest/initrd.cpio"
  R=$OUT/initrd-root
  rm -rf "$R"
  cp -a "$BASE" "$R"
  rm -f "$R/.debootstrapped"
  # What a running guest never reads: docs, man pages, locales, apt's lists and caches.
  rm -rf "$R"/usr/share/{doc,man,info,locale,lintian,linda,bash-completion,zsh} \
    "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/* "$R"/var/cache/debconf/*-old \
    "$R"/var/log/* "$R"/usr/share/common-licenses "$R"/usr/lib/x86_64-linux-gnu/gconv
  # Modules: only the NIC's, decompressed (the cloud kernel's are .ko.xz), with depmod's
  # tables so that udev's modalias lookup finds them.
  MD=$R/lib/modules/$KVER
  mkdir -p "$MD/kernel"
  cp "$KDIR/lib/modules/$KVER"/modules.{builtin,builtin.modinfo,order} "$MD/"
  for m in "${MODULES[@]}"; do
    ko=$(find "$KDIR/lib/modules/$KVER" -name "$m.ko*" | head -n1)
    [ -n "$ko" ] || {
      echo "build-networkd-guest: module $m not in the cloud kernel" >&2
      exit 1
    }
    case "$ko" in
      *.ko) cp "$ko" "$MD/kernel/$m.ko" ;;
      *.ko.xz) xz -dc "$ko" >"$MD/kernel/$m.ko" ;;
      *.ko.zst) zstd -qdc "$ko" >"$MD/kernel/$m.ko" ;;
      *.ko.gz) gzip -dc "$ko" >"$MD/kernel/$m.ko" ;;
    esac
  done
  depmod -b "$R" "$KVER"
  # The kernel runs /init from the initramfs; the system runs from there (no switch_root).
  ln -sf /lib/systemd/systemd "$R/init"
  # A distribution image's first boot: an empty machine-id, generated at boot. Its
  # interactive first-boot wizard would wait on the console, so it is masked.
  : >"$R/etc/machine-id"
  ln -sf /dev/null "$R/etc/systemd/system/systemd-firstboot.service"
  echo "networkd-guest" >"$R/etc/hostname"
  # networkd with its defaults: one .network file matching the NIC, DHCP=yes only.
  install -m 644 "$SRC/eth.network" "$R/etc/systemd/network/50-eth.network"
  install -m 755 "$SRC/report" "$R/usr/local/sbin/vmlet-report"
  install -m 644 "$SRC/vmlet-report.service" "$R/etc/systemd/system/vmlet-report.service"
  systemctl --root="$R" enable systemd-networkd.service vmlet-report.service >/dev/null 2>&1
  # After enable: systemctl --root refuses (ECHRNG) to enable a unit that has a drop-in dir.
  mkdir -p "$R/etc/systemd/system/systemd-networkd.service.d"
  install -m 644 "$SRC/networkd-debug.conf" "$R/etc/systemd/system/systemd-networkd.service.d/debug.conf"
  # Nothing in the guest logs in: no getty on the console the reports go to.
  systemctl --root="$R" mask serial-getty@ttyS0.service getty@tty1.service >/dev/null 2>&1
  # Faster under TCG: no journal on disk, nothing to flush to it.
  mkdir -p "$R/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\nForwardToConsole=no\n' \
    >"$R/etc/systemd/journald.conf.d/volatile.conf"
  (cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --quiet) \
    >"$IMG.tmp"
  mv "$IMG.tmp" "$IMG"
  say "initramfs $(du -h --apparent-size "$IMG" | cut -f1) ($(find "$R" -type f | wc -l) files)"
else
  say "initramfs up to date"
fi

end=$(date +%s.%N)
say "done in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s"
