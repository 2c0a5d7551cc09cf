#!/usr/bin/env bash
# make bench-nodepath: one boot of the VM rig (hack/vm, TCG) runs the node-path benchmarks against
# the bare tools (README, "Scale"): an inline volume's publish + unpublish, ext4 and xfs
# (test/e2e BenchmarkInlineNodePath, on the VM's disk), then PMEM CreateVolume + DeleteVolume
# (test/pmem BenchmarkPMEMCreateDelete, on the emulated NVDIMM's region). Prints the ratio lines
# and the bare steps' medians; exits non-zero when a benchmark failed or did not print its line.
#   CARVE_E2E_SHARE=DIR   share folder (default _output/bench-vm), kept with the logs
#   CARVE_BENCH_ROUNDS=N  rounds of the inline benchmark (default 30)
#   CARVE_BENCH_PARTS     "inline pmem" (default): which benchmarks run
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
SHARE="${CARVE_E2E_SHARE:-$PWD/_output/bench-vm}"
PARTS="${CARVE_BENCH_PARTS:-inline pmem}"
rm -rf "$SHARE" && mkdir -p "$SHARE"
export CGO_ENABLED=0
go build -o "$SHARE/carve-csi" ./cmd/carve-csi || { echo "[bench-vm] FAIL: build carve-csi"; exit 1; }
go test -c -o "$SHARE/e2e.test" ./test/e2e || { echo "[bench-vm] FAIL: build e2e.test"; exit 1; }
go test -c -o "$SHARE/pmem.test" ./test/pmem || { echo "[bench-vm] FAIL: build pmem.test"; exit 1; }
cp test/e2e/vm-node.sh test/pmem/vm-pmem.sh "$SHARE/" && chmod +x "$SHARE/vm-node.sh" "$SHARE/vm-pmem.sh"
cat >"$SHARE/bench-guest.sh" <<GUEST
#!/bin/sh
# In the VM: the inline benchmark (vm-node.sh makes the VG), then the PMEM one (vm-pmem.sh
# prepares the region; part "rest" with no tests runs only the benchmark). The benchmarks copy
# carve's logs to the share (carve-inline.log, carve-pmem.log).
export CARVE_BENCH_LOG_DIR=/share
rc=0
case " ${PARTS} " in *" inline "*)
  CARVE_BENCH_ROUNDS=${CARVE_BENCH_ROUNDS:-30} /share/vm-node.sh -test.run XXX -test.bench InlineNodePath -test.benchtime 1x || rc=1 ;;
esac
case " ${PARTS} " in *" pmem "*)
  # From /tmp (tmpfs) as vm-node.sh does: binaries run from the 9p share page in over 9p.
  mkdir -p /tmp/pmem && cp /share/vm-pmem.sh /share/pmem.test /share/carve-csi /tmp/pmem/ || exit 2
  PARTS=rest REST_ARGS='-test.run ^\$' /tmp/pmem/vm-pmem.sh suite || rc=1
  cp /tmp/pmem/pmem-suite.log /share/ 2>/dev/null ;;
esac
exit \$rc
GUEST
chmod +x "$SHARE/bench-guest.sh"
echo "[bench-vm] build took $(( $(date +%s) - start ))s"
hack/vm/run.sh --share "$SHARE" --timeout "${CARVE_BENCH_TIMEOUT:-3600}" --quiet -- /share/bench-guest.sh
rc=$?
lines=$(grep -a -h -E '^(inline (ext4|xfs) |pmem (create\+delete|bare steps|CSI arm))' "$SHARE/guest.log" "$SHARE/pmem-suite.log" 2>/dev/null | sort -u)
echo "$lines" | sed 's/^/[bench-vm] /'
wants=()
case " $PARTS " in *" inline "*) wants+=('inline ext4 256 MiB' 'inline xfs 300 MiB') ;; esac
case " $PARTS " in *" pmem "*) wants+=('pmem create\+delete') ;; esac
for want in "${wants[@]}"; do
  echo "$lines" | grep -q -E "^$want" || { echo "[bench-vm] FAIL: no '$want' line; see $SHARE/guest.log"; [ "$rc" != 0 ] || rc=1; }
done
echo "[bench-vm] exit $rc, $(( $(date +%s) - start ))s; logs in $SHARE (guest.log, pmem-suite.log, serial.log, carve-inline.log, carve-pmem.log)"
exit "$rc"
