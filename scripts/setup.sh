#!/usr/bin/env bash
# Installs whatever vmlet needs on a Debian node, idempotently, saying what it does:
# Debian packages, npm packages, the TypeScript build, and (with --test-guests) the
# test guests built from Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup: vmlet manages network namespaces and taps; run as root" >&2
  exit 1
fi

# Runtime needs: CNI plugins, iproute2 for operators, QEMU, DHCP clients for tests,
# and the tools the test guests are built with.
APT_PACKAGES=(
  containernetworking-plugins iproute2 util-linux procps
  qemu-system-x86 qemu-utils qemu-guest-agent
  udhcpc isc-dhcp-client dhcpcd-base iputils-ping dnsmasq-base tcpdump iptables
  cpio mtools dosfstools syslinux syslinux-common genisoimage python3-yaml systemd
  # the non-JS CRI test clients (scripts/build-test-clients.sh): grpc-go 1.33, C-core 1.51
  golang-1.19-go golang-google-grpc-dev golang-goprotobuf-dev protobuf-compiler python3-grpcio python3-protobuf
  # iperf3: the bandwidth test measures a pod's rate limits with it
  iperf3
  strace # test/unit/tapmanager/state-files: sees the state writers fsync their directories
  # moby/spdystream: the CRI streaming test client (scripts/build-stream-client.sh)
  golang-github-docker-spdystream-dev
  # the CRI proxy tests: a real containerd behind vmlet, images from a local registry,
  # built from busybox-static (scripts/build-test-oci.sh)
  containerd runc docker-registry busybox-static
  # ndisc6: rdisc6 sends router solicitations in the IPv6 tests and bench/dhcp6.ts; scapy checks the codecs
  ndisc6 python3-scapy
  # socat: the pod-ipv6 test's DHCPv6 listener in a second pod
  socat
  # busybox udhcpc6, built from Debian's busybox source (scripts/build-udhcpc6.sh)
  dpkg-dev gcc make libc6-dev bzip2 xz-utils
  # the systemd-networkd test guest (scripts/build-networkd-guest.sh): a debootstrapped
  # Debian, its NIC modules decompressed and indexed by depmod
  debootstrap kmod
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi

# The unprivileged user QEMU drops to (-runas) once it has opened its disks, sockets and
# taps; /dev/kvm comes through the kvm group where the node has one (udev makes it).
QEMU_USER=vmlet-qemu
if ! getent passwd "$QEMU_USER" >/dev/null; then
  say "creating system user $QEMU_USER (QEMU runs as it)"
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin --comment "vmlet QEMU" "$QEMU_USER"
fi
if getent group kvm >/dev/null && ! id -nG "$QEMU_USER" | tr ' ' '\n' | grep -qx kvm; then
  say "adding $QEMU_USER to group kvm (/dev/kvm)"
  usermod --append --groups kvm "$QEMU_USER"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # Exactly the lock's versions. (The lock lists every platform's optional biome
  # binaries: npm 11's ci refuses a lock that lists only the platform it was made on.)
  say "installing npm packages (npm ci, versions from package-lock.json)"
  npm ci --no-fund --no-audit
else
  say "npm packages present"
fi

say "building (tsc)"
npx --no-install tsc -p .

if [ "${1:-}" = "--test-guests" ] && [ -x scripts/build-test-guests.sh ]; then
  scripts/build-test-guests.sh
  scripts/build-networkd-guest.sh # after the tiny guest: it boots that guest's kernel
fi
if [ "${1:-}" = "--test-guests" ]; then
  scripts/build-test-oci.sh # the OCI images containerd runs in the CRI proxy tests
fi

# The non-JS clients the tests drive vmlet with: CRI over gRPC (grpc-go, python3-grpcio)
# and the streaming server over SPDY/3.1 (moby/spdystream, as kubelet's client-go uses).
if [ "${1:-}" = "--test-guests" ]; then
  scripts/build-test-clients.sh
  scripts/build-stream-client.sh
fi
