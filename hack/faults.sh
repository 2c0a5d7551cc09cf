#!/usr/bin/env bash
# make test-faults (issue #7): one boot of the VM rig (hack/vm) runs the
# crash-consistency trials (test/faults) on real device-mapper: carve-csi is
# SIGKILLed at a step boundary, restarted, the call retried, the node audited.
# Prints "faults: N trials, L leaked, M lost" and exits non-zero on failure.
# CARVE_FAULTS_TRIALS (100; "all": each boundary once) / CARVE_FAULTS_SEED / CARVE_FAULTS_MODES (before,after
# by default; "during" also kills the running tool) pass through to the guest,
# and CARVE_FAULTS_POOLS ("lvm thin pmem" by default: all in one boot, the LVM
# volume group's CARVE_FAULTS_TRIALS, then CARVE_FAULTS_THIN_TRIALS=17 snapshot
# and clone trials on a thin pool in that volume group, then
# CARVE_FAULTS_PMEM_TRIALS=40 on the emulated NVDIMM's region; "lvm", "thin" or
# "pmem" runs one).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH=/usr/local/go/bin:$PATH
start=$(date +%s)
SHARE="${CARVE_FAULTS_SHARE:-$REPO/_output/faults}"
rm -rf "$SHARE" && mkdir -p "$SHARE"

echo "[faults] building static binaries into $SHARE"
export CGO_ENABLED=0
go build -o "$SHARE/carve-csi" ./cmd/carve-csi || { echo "[faults] FAIL: build carve-csi"; exit 1; }
go build -o "$SHARE/faultshim" ./test/faults/faultshim || { echo "[faults] FAIL: build faultshim"; exit 1; }
go test -c -o "$SHARE/faults.test" ./test/faults || { echo "[faults] FAIL: build faults.test"; exit 1; }
cp hack/faults-guest.sh "$SHARE/faults-guest.sh"
# The guest gets the settings through the share (run.sh passes no environment).
{
  echo "CARVE_FAULTS_TRIALS=${CARVE_FAULTS_TRIALS:-100}"
  echo "CARVE_FAULTS_THIN_TRIALS=${CARVE_FAULTS_THIN_TRIALS:-17}"
  echo "CARVE_FAULTS_PMEM_TRIALS=${CARVE_FAULTS_PMEM_TRIALS:-40}"
  echo "CARVE_FAULTS_POOLS='${CARVE_FAULTS_POOLS:-lvm thin pmem}'"
  [ -z "${CARVE_FAULTS_SEED:-}" ] || echo "CARVE_FAULTS_SEED=$CARVE_FAULTS_SEED"
  [ -z "${CARVE_FAULTS_MODES:-}" ] || echo "CARVE_FAULTS_MODES=$CARVE_FAULTS_MODES"
} >"$SHARE/faults.env"
echo "[faults] build took $(( $(date +%s) - start ))s"

hack/vm/run.sh --share "$SHARE" --timeout "${CARVE_FAULTS_TIMEOUT:-2400}" --quiet -- /share/faults-guest.sh
rc=$?
echo "[faults] ---- summary ----"
grep -a -E '^(faults: |leak audit|suite )' "$SHARE/guest.log" 2>/dev/null | sed 's/^/[faults] /'
if ! grep -q -a '^suite faults:' "$SHARE/guest.log" 2>/dev/null; then
  echo "[faults] FAIL: the guest did not finish the trials (run.sh exit $rc); last lines of its log:"
  tail -n 40 "$SHARE/guest.log" 2>/dev/null | sed 's/^/    /'
  [ "$rc" != 0 ] || rc=1
fi
echo "[faults] exit $rc, whole run $(( $(date +%s) - start ))s; logs in $SHARE (guest.log, serial.log, dmesg.log)"
exit "$rc"
