#!/usr/bin/env bash
# Runs the node-path e2e scenarios (test/e2e) in the carve test VM (hack/vm/run.sh): builds a
# static carve-csi and a static e2e.test into a share directory, boots the VM, makes a volume
# group on its blank disk and runs the tests there (test/e2e/vm-node.sh).
#
# usage: test/e2e/run-vm.sh [run.sh flags, e.g. --cache DIR] [-- e2e.test flags, e.g. -test.run 'TestNodePath/2-']
#   CARVE_E2E_SHARE=DIR  use (and keep) this share directory instead of a fresh temporary one
#   CARVE_BINARY=FILE    test this static carve-csi instead of building ./cmd/carve-csi
#
# Exits with the test binary's exit code (0: every scenario passed), or run.sh's code for a rig
# failure; a run whose summary line ("e2e node path: N passed, N failed") is missing fails.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

vmflags=() testflags=()
while [ $# -gt 0 ]; do
  if [ "$1" = -- ]; then shift; testflags=("$@"); break; fi
  vmflags+=("$1"); shift
done

SHARE="${CARVE_E2E_SHARE:-$(mktemp -d "${TMPDIR:-/tmp}/carve-e2e.XXXXXX")}"
mkdir -p "$SHARE"
echo "[e2e] share $SHARE"
if [ -n "${CARVE_BINARY:-}" ]; then
  cp "$CARVE_BINARY" "$SHARE/carve-csi" || { echo "[e2e] FAIL: cp $CARVE_BINARY"; exit 1; }
  echo "[e2e] carve-csi: $CARVE_BINARY"
else
  (cd "$REPO" && CGO_ENABLED=0 go build -o "$SHARE/carve-csi" ./cmd/carve-csi) || { echo "[e2e] FAIL: build carve-csi"; exit 1; }
fi
(cd "$REPO" && CGO_ENABLED=0 go test -c -o "$SHARE/e2e.test" ./test/e2e) || { echo "[e2e] FAIL: build e2e.test"; exit 1; }
cp "$HERE/vm-node.sh" "$SHARE/vm-node.sh" && chmod +x "$SHARE/vm-node.sh"

start=$(date +%s)
"$REPO/hack/vm/run.sh" --share "$SHARE" --timeout 2700 "${vmflags[@]}" -- /share/vm-node.sh "${testflags[@]}"
rc=$?
summary="$(grep -a '^e2e node path:' "$SHARE/guest.log" 2>/dev/null | tail -n1)"
echo "[e2e] ${summary:-no summary line in $SHARE/guest.log} (exit $rc, $(( $(date +%s) - start ))s)"
[ -n "$summary" ] || { [ "$rc" != 0 ] || rc=1; }
echo "[e2e] logs: $SHARE/guest.log (test output), $SHARE/serial.log, $SHARE/dmesg.log"
exit "$rc"
