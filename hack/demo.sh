#!/usr/bin/env bash
# make demo: carve's node driver on real parts (lvm2 on a loop device).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
if [[ $EUID -ne 0 ]]; then echo "make demo: run as root (loop devices, lvm2)"; exit 1; fi
missing=()
for c in lvm losetup mkfs.ext4; do command -v "$c" >/dev/null || missing+=("$c"); done
if ((${#missing[@]})); then
  echo "make demo: installing lvm2 e2fsprogs xfsprogs (missing: ${missing[*]})"
  apt-get install -y -qq lvm2 e2fsprogs xfsprogs >/dev/null
fi
make --no-print-directory build
CARVE_BINARY=$PWD/_output/carve-csi go run ./hack/demo
