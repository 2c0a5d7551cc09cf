#!/bin/sh
# Runs INSIDE the carve test VM (hack/vm/run.sh; test/e2e/run-vm.sh prepares the share):
# makes the volume group "carve" on the blank disk /dev/vda and runs the node-path scenarios
# against carve-csi. Arguments are passed to the test binary (e.g. -test.run 'TestNodePath/2-').
# Expects /share/e2e.test and /share/carve-csi (static builds). Both are copied to /tmp (tmpfs)
# first: executing them from the 9p share pages them in over 9p, which is slow under TCG.
set -u
say() { echo "vm-node: $*"; }
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }

for f in e2e.test carve-csi; do
  [ -x "/share/$f" ] || { say "FAIL: /share/$f is missing or not executable"; exit 2; }
  cp "/share/$f" "/tmp/$f" || { say "FAIL: cp /share/$f /tmp"; exit 2; }
done
wipefs -a /dev/vda >/dev/null || { say "FAIL: wipefs /dev/vda"; exit 2; }
pvcreate -y /dev/vda >/dev/null || { say "FAIL: pvcreate /dev/vda"; exit 2; }
vgcreate carve /dev/vda >/dev/null || { say "FAIL: vgcreate carve /dev/vda"; exit 2; }
say "volume group: $(vgs --noheadings --units m -o vg_name,vg_size,vg_extent_size carve | tr -s ' ')"
# How fast this VM is right now (the host may be busy): one lvm report, one process start.
t=$(now); lvm vgs carve >/dev/null; say "lvm vgs took $(since "$t")s"
t=$(now); /tmp/carve-csi version >/dev/null; say "carve-csi version took $(since "$t")s"

start=$(now)
CARVE_E2E_VG=carve CARVE_E2E_REQUIRE=1 CARVE_BINARY=/tmp/carve-csi \
  /tmp/e2e.test -test.v -test.timeout=40m "$@"
rc=$?
say "e2e.test exited with $rc after $(since "$start")s"
say "LVs left in carve: [$(lvs --noheadings -o lv_name carve | tr -s ' \n' ' ')]"
exit $rc
