#!/bin/sh
# Runs INSIDE the carve test VM (hack/vm/run.sh --disks 6; test/disks/run-vm.sh prepares the
# share): the issue 15 checks of test/disks (pool from /dev/vd[b-e], striping, a removed disk,
# stale data on /dev/vdf, wipe costs on /dev/vdg and the NVDIMM). Arguments go to disks.test.
set -u
cp /share/disks.test /tmp/disks.test || { echo "vm-disks: FAIL: cp /share/disks.test"; exit 2; }
for d in b c d e f g; do
  [ -b "/dev/vd$d" ] || { echo "vm-disks: FAIL: /dev/vd$d is missing (boot with --disks 6)"; exit 2; }
done
CARVE_DISKS_VM=1 /tmp/disks.test -test.v -test.timeout=30m "$@"
rc=$?
echo "vm-disks: disks.test exited with $rc"
exit $rc
