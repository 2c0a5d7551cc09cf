#!/usr/bin/env bash
# Runs test/disks in the carve test VM with six extra virtio disks (hack/vm/run.sh --disks 6):
# builds a static disks.test into a share directory and boots the VM (test/disks/vm.sh).
# Take the shared VM lock around it (one VM at a time): flock /work/wt/vm.lock test/disks/run-vm.sh
#
# usage: test/disks/run-vm.sh [run.sh flags] [-- disks.test flags, e.g. -test.run XXX -test.bench VMWipeCost]
#   CARVE_DISKS_SHARE=DIR  use (and keep) this share directory
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
vmflags=() testflags=()
while [ $# -gt 0 ]; do
  if [ "$1" = -- ]; then shift; testflags=("$@"); break; fi
  vmflags+=("$1"); shift
done
SHARE="${CARVE_DISKS_SHARE:-$(mktemp -d "${TMPDIR:-/tmp}/carve-disks.XXXXXX")}"
mkdir -p "$SHARE"
echo "[disks] share $SHARE"
(cd "$REPO" && CGO_ENABLED=0 go test -c -o "$SHARE/disks.test" ./test/disks) || { echo "[disks] FAIL: build disks.test"; exit 1; }
cp "$HERE/vm.sh" "$SHARE/vm.sh" && chmod +x "$SHARE/vm.sh"
"$REPO/hack/vm/run.sh" --share "$SHARE" --timeout 2400 --disks 6 --disks-size 2G "${vmflags[@]}" -- /share/vm.sh "${testflags[@]}"
rc=$?
echo "[disks] exit $rc; logs: $SHARE/guest.log, $SHARE/serial.log"
exit "$rc"
