#!/usr/bin/env bash
# make test-e2e: one boot of the VM rig (hack/vm) runs every suite that needs a
# real kernel: csi-sanity (full, no device skips) against an LVM pool, the
# node-path scenarios (test/e2e), 200 concurrent controller and inline
# node calls (test/concurrency), the PMEM suite (test/pmem) when it is
# built, thin pools (the lvm backend's thin tests and csi-sanity on an
# lvm-thin pool), and issue 15's disk checks (test/disks: pools from disks, striping,
# a removed disk, stale data, wipe costs) on six more virtio disks. Prints a
# summary line per suite and exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH=/usr/local/go/bin:$PATH
start=$(date +%s)
SHARE="${CARVE_E2E_SHARE:-$REPO/_output/e2e}"
rm -rf "$SHARE" && mkdir -p "$SHARE"

echo "[e2e] building static binaries into $SHARE"
export CGO_ENABLED=0
go build -o "$SHARE/carve-csi" ./cmd/carve-csi || { echo "[e2e] FAIL: build carve-csi"; exit 1; }
go test -c -o "$SHARE/sanity.test" ./test/sanity || { echo "[e2e] FAIL: build sanity.test"; exit 1; }
go test -c -o "$SHARE/e2e.test" ./test/e2e || { echo "[e2e] FAIL: build e2e.test"; exit 1; }
go test -c -o "$SHARE/concurrency.test" ./test/concurrency || { echo "[e2e] FAIL: build concurrency.test"; exit 1; }
if ls test/pmem/*_test.go >/dev/null 2>&1; then
  go test -c -o "$SHARE/pmem.test" ./test/pmem || { echo "[e2e] FAIL: build pmem.test"; exit 1; }
  cp test/pmem/vm-pmem.sh "$SHARE/" 2>/dev/null || true
fi
# Issue 14's thin pools: the lvm backend's tests on real thin pools (loop devices in the guest).
go test -c -o "$SHARE/lvm.test" ./pkg/backend/lvm || { echo "[e2e] FAIL: build lvm.test"; exit 1; }
# Issue 15's disk checks (test/disks) share this boot: six more virtio disks (vdb..vdg).
go test -c -o "$SHARE/disks.test" ./test/disks || { echo "[e2e] FAIL: build disks.test"; exit 1; }
cp hack/e2e-guest.sh "$SHARE/e2e-guest.sh"
echo "[e2e] build took $(( $(date +%s) - start ))s"

hack/vm/run.sh --share "$SHARE" --timeout "${CARVE_E2E_TIMEOUT:-3000}" --disks 6 --disks-size 2G --quiet -- /share/e2e-guest.sh
rc=$?
echo "[e2e] ---- summary ----"
grep -a -E '^(csi-sanity|e2e node path|concurrency|pmem suite|disks|thin|leak audit|suite)[: ]' "$SHARE/guest.log" 2>/dev/null | sed 's/^/[e2e] /'
if ! grep -q -a '^suite all:' "$SHARE/guest.log" 2>/dev/null; then
  echo "[e2e] FAIL: the guest did not finish its suites (run.sh exit $rc); last lines of its log:"
  tail -n 40 "$SHARE/guest.log" 2>/dev/null | sed 's/^/    /'
  [ "$rc" != 0 ] || rc=1
fi
echo "[e2e] exit $rc, whole run $(( $(date +%s) - start ))s; logs in $SHARE (guest.log, serial.log, dmesg.log)"
exit "$rc"
