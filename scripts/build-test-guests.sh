#!/usr/bin/env bash
# Builds vmlet's test guests from Debian packages, under .cache/guests/ (gitignored):
#   vmlinuz          the Debian cloud kernel (linux-image-cloud-amd64's dependency)
#   initrd.cpio.gz   busybox-static, the virtio-net, virtio-serial, virtio-blk, ISO 9660
#                    and ACPI button modules, qemu-ga with its libraries, Debian's
#                    stock udhcpc script (unchanged), busybox udhcpc6 (built from
#                    Debian's busybox source by build-udhcpc6.sh) and test/guests/{init,
#                    report.script,power-button,udhcpc6.script,report6.script,resolvconf}
#   busybox-udhcpc6  that udhcpc6 (also run by the relay guest's IPv6 tests)
#   disk.qcow2       a FAT disk with syslinux, the same kernel and initramfs: boots from
#                    virtio-blk through SeaBIOS
# Idempotent: each step is skipped when its outputs exist and are newer than its inputs.
# Needs: apt-get, dpkg, cpio, gzip, mtools, dosfstools, syslinux, qemu-utils,
# qemu-guest-agent, and what build-udhcpc6.sh needs (dpkg-dev, gcc, make, libc6-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/.cache/guests
DEBS=$OUT/debs
SRC=$ROOT/test/guests
SELF=$ROOT/scripts/build-test-guests.sh
# The QEMU guest agent, from Debian's qemu-guest-agent as setup.sh installs it here.
QGA=/usr/sbin/qemu-ga
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
  failover net_failover virtio_net
  evdev button # the ACPI power button, as an input device busybox acpid reads
  virtio_console # virtio-serial: the QEMU guest agent's port
  virtio_blk     # the root disk (the container's writable layer) and the seed, as vda, vdb
  cdrom isofs)   # the cloud-init seed's filesystem (isofs needs cdrom)

say() { printf 'build-test-guests: %s\n' "$*"; }
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# fetch PACKAGE: downloads PACKAGE's .deb into $DEBS unless a .deb of it is there; prints its path.
fetch() {
  local pkg=$1 deb
  deb=$(find "$DEBS" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)
  if [ -z "$deb" ]; then
    say "downloading $pkg (apt-get download)" >&2
    (cd "$DEBS" && apt-get download "$pkg" >/dev/null 2>&1) || {
      echo "build-test-guests: apt-get download $pkg failed" >&2
      exit 1
    }
    deb=$(find "$DEBS" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)
  fi
  printf '%s\n' "$deb"
}
# unpack DEB DIR: dpkg -x DEB into DIR unless DIR is newer than DEB.
unpack() {
  local deb=$1 dir=$2
  if up_to_date "$dir/.unpacked" "$deb"; then return; fi
  say "unpacking $(basename "$deb")"
  rm -rf "$dir"
  mkdir -p "$dir"
  dpkg -x "$deb" "$dir"
  touch "$dir/.unpacked"
}

mkdir -p "$OUT" "$DEBS"
chmod 755 "$DEBS" # apt-get download runs as _apt when it can

start=$(date +%s.%N)

# 1. Packages. The kernel package is whatever linux-image-cloud-amd64 depends on.
kernel_package() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
KPKG=$(kernel_package)
if [ -z "$KPKG" ] && [ ! -e "$OUT/vmlinuz" ]; then
  say "apt lists do not know linux-image-cloud-amd64 yet: apt-get update"
  apt-get update -qq
  KPKG=$(kernel_package)
fi
[ -n "$KPKG" ] || {
  echo "build-test-guests: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2
  exit 1
}
KDEB=$(fetch "$KPKG")
BBDEB=$(fetch busybox-static)
UDEB=$(fetch udhcpc)
unpack "$KDEB" "$OUT/pkg/kernel"
unpack "$BBDEB" "$OUT/pkg/busybox-static"
unpack "$UDEB" "$OUT/pkg/udhcpc"
KVER=${KPKG#linux-image-}
scripts/build-udhcpc6.sh

# 2. Kernel.
if ! up_to_date "$OUT/vmlinuz" "$OUT/pkg/kernel/.unpacked"; then
  say "kernel $KVER -> .cache/guests/vmlinuz"
  cp "$OUT/pkg/kernel/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp"
  mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
else
  say "kernel up to date ($KVER)"
fi

# 3. Initramfs.
INITRD_INPUTS=("$OUT/pkg/kernel/.unpacked" "$OUT/pkg/busybox-static/.unpacked"
  "$OUT/pkg/udhcpc/.unpacked" "$SRC/init" "$SRC/report.script" "$SRC/power-button" "$QGA" "$SELF"
  "$OUT/busybox-udhcpc6" "$SRC/udhcpc6.script" "$SRC/report6.script" "$SRC/resolvconf")
if ! up_to_date "$OUT/initrd.cpio.gz" "${INITRD_INPUTS[@]}"; then
  say "initramfs -> .cache/guests/initrd.cpio.gz"
  R=$OUT/initrd-root
  rm -rf "$R"
  mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc/udhcpc,etc/udhcpc6,lib/modules,proc,sys,dev,run,tmp,root}
  cp "$OUT/pkg/busybox-static/bin/busybox" "$R/bin/busybox"
  # One symlink per applet, as busybox --install -s would make at boot.
  "$R/bin/busybox" --list-full | while read -r applet; do
    [ "$applet" = bin/busybox ] && continue
    [ -e "$R/$applet" ] || ln -s /bin/busybox "$R/$applet"
  done
  for m in "${MODULES[@]}"; do
    ko=$(find "$OUT/pkg/kernel/lib/modules/$KVER" -name "$m.ko*" | head -n1)
    [ -n "$ko" ] || {
      echo "build-test-guests: module $m not in $KPKG" >&2
      exit 1
    }
    case "$ko" in
      *.ko) cp "$ko" "$R/lib/modules/$m.ko" ;;
      *.ko.xz) xz -dc "$ko" >"$R/lib/modules/$m.ko" ;; # busybox insmod takes plain .ko
      *.ko.zst) zstd -dc "$ko" >"$R/lib/modules/$m.ko" ;;
      *.ko.gz) gzip -dc "$ko" >"$R/lib/modules/$m.ko" ;;
    esac
  done
  # The guest agent and the shared libraries it links, at the paths ldd finds them.
  [ -x "$QGA" ] || {
    echo "build-test-guests: $QGA missing: apt-get install qemu-guest-agent" >&2
    exit 1
  }
  cp "$QGA" "$R/usr/sbin/qemu-ga"
  ldd "$QGA" | awk '/=> \// { print $3 } /^\t\/[^ ]*ld-linux/ { print $1 }' | while read -r lib; do
    mkdir -p "$R$(dirname "$lib")"
    cp -L "$lib" "$R$lib"
  done
  cp "$OUT/pkg/udhcpc/etc/udhcpc/default.script" "$R/etc/udhcpc/default.script"
  cp "$SRC/report.script" "$R/etc/udhcpc/report.script"
  # udhcpc6 by that name (named busybox*, the binary would take its first argument as the applet)
  cp "$OUT/busybox-udhcpc6" "$R/bin/busybox-udhcpc6"
  ln -s /bin/busybox-udhcpc6 "$R/sbin/udhcpc6"
  cp "$SRC/udhcpc6.script" "$R/etc/udhcpc6/default.script"
  cp "$SRC/report6.script" "$R/etc/udhcpc6/report.script"
  # resolvconf: Debian's stock udhcpc script then keeps its resolver lines beside udhcpc6's
  cp "$SRC/resolvconf" "$R/sbin/resolvconf"
  cp "$SRC/init" "$R/init"
  mkdir -p "$R/etc/acpi/PWRF"
  cp "$SRC/power-button" "$R/etc/acpi/PWRF/00000080"
  chmod 755 "$R/etc/acpi/PWRF/00000080"
  chmod 755 "$R/init" "$R/etc/udhcpc/default.script" "$R/etc/udhcpc/report.script" \
    "$R/etc/udhcpc6/default.script" "$R/etc/udhcpc6/report.script" "$R/sbin/resolvconf"
  echo "root:x:0:0:root:/root:/bin/sh" >"$R/etc/passwd"
  echo "root:x:0:" >"$R/etc/group"
  echo "vmlet-guest" >"$R/etc/hostname"
  : >"$R/etc/resolv.conf"
  (cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --quiet) |
    gzip -9 >"$OUT/initrd.cpio.gz.tmp"
  mv "$OUT/initrd.cpio.gz.tmp" "$OUT/initrd.cpio.gz"
else
  say "initramfs up to date"
fi

# 4. Disk image: FAT + syslinux, no partition table (SeaBIOS boots its boot sector).
if ! up_to_date "$OUT/disk.qcow2" "$OUT/vmlinuz" "$OUT/initrd.cpio.gz" "$SELF"; then
  say "disk image -> .cache/guests/disk.qcow2"
  IMG=$OUT/disk.img
  rm -f "$IMG"
  truncate -s 48M "$IMG"
  mkfs.vfat -n VMLETGUEST "$IMG" >/dev/null
  cat >"$OUT/syslinux.cfg" <<'CFG'
DEFAULT vmlet
PROMPT 0
TIMEOUT 0
LABEL vmlet
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0 quiet panic=-1
CFG
  mcopy -i "$IMG" "$OUT/vmlinuz" ::/vmlinuz
  mcopy -i "$IMG" "$OUT/initrd.cpio.gz" ::/initrd.gz
  mcopy -i "$IMG" "$OUT/syslinux.cfg" ::/syslinux.cfg
  syslinux --install "$IMG"
  qemu-img convert -O qcow2 "$IMG" "$OUT/disk.qcow2.tmp"
  mv "$OUT/disk.qcow2.tmp" "$OUT/disk.qcow2"
  rm -f "$IMG"
else
  say "disk image up to date"
fi

end=$(date +%s.%N)
say "done in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s:"
ls -l "$OUT/vmlinuz" "$OUT/initrd.cpio.gz" "$OUT/disk.qcow2" | awk '{ print "  " $5 "\t" $9 }'
