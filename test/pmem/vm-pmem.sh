#!/bin/sh
# Runs INSIDE the carve test VM (hack/vm/run.sh): prepares the emulated NVDIMM's region and runs
# carve's PMEM suite (test/pmem, compiled) or the ndctl capture that feeds the pmem unit tests.
#
#   sh vm-pmem.sh [suite|capture]
#   (suite: PARTS="sanity-pmem sanity-lvm rest" selects parts, REST_ARGS adds flags to "rest")
#
# Expects next to itself (the share):
#   suite:   pmem.test      CGO_ENABLED=0 go test -c -o <share>/pmem.test ./test/pmem
#            carve-csi      CGO_ENABLED=0 go build -o <share>/carve-csi ./cmd/carve-csi
#   capture: pmem-unit.test CGO_ENABLED=0 go test -c -o <share>/pmem-unit.test ./pkg/backend/pmem
#            (writes <share>/testdata/*.txt; copy them to pkg/backend/pmem/testdata/)
# Environment: CARVE_PMEM_REGION (default region0). Every namespace in that region is destroyed.
# Prints "pmem suite: N passed, N failed" (top-level tests, the benchmark counted as one) and exits
# non-zero when anything failed. The full log is <share>/pmem-suite.log.
set -u
MODE=${1:-suite}
[ $# -gt 0 ] && shift
HERE=$(cd "$(dirname "$0")" && pwd)
REGION=${CARVE_PMEM_REGION:-region0}
export CARVE_PMEM_REGION="$REGION"
say() { echo "vm-pmem: $*"; }

for c in ndctl lvm wipefs mkfs.ext4 mkfs.xfs mount; do
  command -v "$c" >/dev/null || { say "FAIL: $c missing in the VM"; exit 1; }
done
ndctl list -R -r "$REGION" | grep -q "\"$REGION\"" || { say "FAIL: no $REGION (ndctl list -R: $(ndctl list -R))"; exit 1; }

case "$MODE" in
capture)
  # The capture starts from the NVDIMM as the VM booted it (no labels) and initializes it itself.
  mkdir -p "$HERE/testdata"
  CARVE_PMEM_CAPTURE=1 CARVE_PMEM_CAPTURE_DIR="$HERE/testdata" \
    "$HERE/pmem-unit.test" -test.run '^TestCapture$' -test.v -test.count=1 "$@"
  rc=$?
  say "capture exit $rc; $(ls "$HERE/testdata" | wc -l) files in $HERE/testdata"
  exit $rc
  ;;
suite) ;;
*) say "unknown mode $MODE (suite|capture)"; exit 2 ;;
esac

# A fresh emulated NVDIMM has no namespace labels ("Legacy / label-less namespaces do not support
# sub-dividing a region"): initialize them once, after removing whatever the region holds.
say "preparing $REGION: destroy namespaces, init labels"
ndctl destroy-namespace -f -r "$REGION" all >/dev/null 2>&1
ndctl disable-region "$REGION" >/dev/null 2>&1 && ndctl init-labels -f all >/dev/null 2>&1 &&
  ndctl enable-region "$REGION" >/dev/null 2>&1 || { say "FAIL: could not initialize the labels of $REGION"; exit 1; }
ndctl list -R -r "$REGION"

# The binaries run from the guest's RAM, not from the 9p share: under emulation every page
# fault on the share is a 9p round trip, and carve-csi took 16 s to start from /share against
# 2.3 s from /tmp (measured in the VM rig, 3 starts each); the suite starts it a dozen times.
BIN=$(mktemp -d /tmp/vm-pmem.XXXXXX) || { say "FAIL: mktemp"; exit 1; }
for f in carve-csi pmem.test; do
  [ -x "$HERE/$f" ] || { say "FAIL: $HERE/$f missing"; exit 1; }
  cp "$HERE/$f" "$BIN/$f" || { say "FAIL: cp $HERE/$f $BIN"; exit 1; }
done
export CARVE_BINARY="$BIN/carve-csi"
log="$HERE/pmem-suite.log"
: >"$log"
rc=0
uptime_s() { cut -d' ' -f1 /proc/uptime; }
# Ginkgo runs one suite per process: each csi-sanity run gets a process of its own, then the rest
# and the benchmark. PARTS selects parts; extra arguments go to the "rest" part.
for part in ${PARTS:-sanity-pmem sanity-lvm rest}; do
  start=$(uptime_s)
  case "$part" in
  sanity-pmem) set -- -test.run '^TestSanityPMEM$' ;;
  sanity-lvm) set -- -test.run '^TestSanityLVMOnPMEM$' ;;
  rest) set -- -test.skip '^TestSanity' -test.bench '^BenchmarkPMEM' -test.benchtime 1x ${REST_ARGS:-} ;;
  *) say "unknown part $part"; exit 2 ;;
  esac
  say "part $part: pmem.test $*"
  "$BIN/pmem.test" -test.v -test.count=1 -test.timeout=60m "$@" >"$log.$part" 2>&1
  prc=$?
  cat "$log.$part" >>"$log"
  grep -E '^(--- |=== RUN|csi-sanity|pmem create|Benchmark|ok|FAIL|PASS)|pmem_test.go|sanity_test.go' "$log.$part" | grep -v '^=== RUN' | cut -c1-400
  say "part $part: exit $prc, $(awk -v a="$start" -v b="$(uptime_s)" 'BEGIN{printf "%.1f", b-a}')s"
  [ "$prc" = 0 ] || rc=$prc
done
# Top-level tests only ("--- PASS: TestX", not "    --- PASS: TestX/sub"); the benchmark counts
# as passed when it printed its line.
passed=$(grep -c '^--- PASS' "$log")
failed=$(grep -c '^--- FAIL' "$log")
skipped=$(grep -c '^--- SKIP' "$log")
bench=$(grep -c '^pmem create+delete' "$log")
passed=$((passed + bench))
echo "pmem suite: $passed passed, $failed failed ($skipped skipped)"
[ "$rc" = 0 ] && [ "$failed" = 0 ]
