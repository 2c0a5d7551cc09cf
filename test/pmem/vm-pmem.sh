#!/bin/sh
# Runs INSIDE the carve test VM (hack/vm/run.sh): prepares the emulated NVDIMM's region and runs
# carve's PMEM suite (test/pmem, compiled) or the ndctl capture that feeds the pmem unit tests.
#
#   sh vm-pmem.sh [suite|capture] [extra test flags...]
#
# Expects next to itself (the share):
#   suite:   pmem.test      CGO_ENABLED=0 go test -c -o <share>/pmem.test ./test/pmem
#            carve-csi      CGO_ENABLED=0 go build -o <share>/carve-csi ./cmd/carve-csi
#   capture: pmem-unit.test CGO_ENABLED=0 go test -c -o <share>/pmem-unit.test ./pkg/backend/pmem
#            (writes <share>/testdata/*.txt; copy them to pkg/backend/pmem/testdata/)
# Environment: CARVE_PMEM_REGION (default region0). Every namespace in that region is destroyed.
# Prints "pmem suite: N passed, N failed" and exits non-zero when anything failed.
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

export CARVE_BINARY="$HERE/carve-csi"
[ -x "$CARVE_BINARY" ] || { say "FAIL: $CARVE_BINARY missing"; exit 1; }
log="$HERE/pmem-suite.log"
start=$(cut -d' ' -f1 /proc/uptime)
"$HERE/pmem.test" -test.v -test.count=1 -test.timeout=60m "$@" 2>&1 | tee "$log"
rc=$?
end=$(cut -d' ' -f1 /proc/uptime)
# Top-level tests only ("--- PASS: TestX", not "    --- PASS: TestX/sub").
passed=$(grep -c '^--- PASS' "$log")
failed=$(grep -c '^--- FAIL' "$log")
skipped=$(grep -c '^--- SKIP' "$log")
grep -h '^csi-sanity\|^pmem \|^benchmark' "$log"
say "timing: suite $(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}')s"
echo "pmem suite: $passed passed, $failed failed ($skipped skipped)"
[ "$rc" = 0 ] && [ "$failed" = 0 ]
