#!/usr/bin/env bash
# Installs the Debian packages carve's demo and tests use, if any command is
# missing (needs root and apt). A machine that has them all is left alone.
set -euo pipefail
declare -A pkg=(
  [lvm]=lvm2 [thin_check]=thin-provisioning-tools [mkfs.xfs]=xfsprogs [mkfs.ext4]=e2fsprogs
  [losetup]=util-linux [qemu-system-x86_64]=qemu-system-x86 [debootstrap]=debootstrap
  [depmod]=kmod [cpio]=cpio [openssl]=openssl [curl]=curl [git]=git
  [socat]=socat # hack/cluster.sh: QEMU's guestfwd to the host's API server
)
missing=()
for cmd in "${!pkg[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg[$cmd]}")
done
((${#missing[@]})) || exit 0
echo "deps: installing ${missing[*]}"
if [[ $EUID -ne 0 ]]; then echo "deps: run as root to install them"; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" ca-certificates >/dev/null
