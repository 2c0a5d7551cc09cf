#!/bin/sh
# Runs INSIDE the VM rig (see hack/e2e.sh): every suite in one boot.
set -u
say() { echo "e2e-guest: $*"; }
fail=0
for f in carve-csi sanity.test e2e.test; do
  cp "/share/$f" "/tmp/$f" || { say "FAIL: /share/$f missing"; echo "suite all: FAILED (missing $f)"; exit 2; }
done
export CARVE_BINARY=/tmp/carve-csi

wipefs -a /dev/vda >/dev/null && pvcreate -y /dev/vda >/dev/null && vgcreate carve /dev/vda >/dev/null ||
  { say "FAIL: volume group on /dev/vda"; echo "suite all: FAILED (no volume group)"; exit 2; }
say "volume group: $(vgs --noheadings --units m -o vg_name,vg_size,vg_extent_size carve | tr -s ' ')"

run() { # name, command...
  name=$1; shift
  t0=$(cut -d' ' -f1 /proc/uptime)
  "$@"; rc=$?
  t1=$(cut -d' ' -f1 /proc/uptime)
  echo "suite $name: exit $rc after $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", b-a}')s"
  [ "$rc" = 0 ] || fail=1
}

run csi-sanity-lvm env CARVE_SANITY_VG=carve /tmp/sanity.test -test.run 'TestSanity$' -test.v -test.timeout 20m
run node-path env CARVE_E2E_VG=carve CARVE_E2E_REQUIRE=1 /tmp/e2e.test -test.v -test.timeout 30m
# 200 goroutines of creates, deletes and inline publishes/unpublishes (mkfs, mount) at once.
if cp /share/concurrency.test /tmp/concurrency.test 2>/dev/null; then
  run concurrency-lvm env CARVE_CONCURRENCY_VG=carve /tmp/concurrency.test -test.run 'TestConcurrentNodeAndController$' -test.v -test.timeout 30m
else
  say "FAIL: /share/concurrency.test missing"; fail=1
fi
# Issue 14: thin pools. The backend's tests make their own VGs on loop devices; csi-sanity runs on
# an lvm-thin pool that carve-csi creates in VG carve (a third of it), removed afterwards. Before
# the PMEM suite, which takes /dev/vda (and with it VG carve) for its non-DAX volume group.
if cp /share/lvm.test /tmp/lvm.test 2>/dev/null; then
  run thin-backend env CARVE_THIN_VM=1 /tmp/lvm.test -test.run 'TestThinReal' -test.v -test.timeout 30m
else
  say "FAIL: /share/lvm.test missing"; fail=1
fi
run csi-sanity-thin env CARVE_SANITY_VG=carve CARVE_SANITY_POOL=default=lvm-thin:carve/carvethin:size=33%:overprovision=2 \
  /tmp/sanity.test -test.run 'TestSanity$' -test.v -test.timeout 20m
lvremove -f carve/carvethin >/dev/null 2>&1 || { say "FAIL: removing thin pool carve/carvethin"; fail=1; }

# Leak audit of VG carve, before the PMEM suite wipes /dev/vda: no carve LV and no mount of one
# may survive the LVM suites above.
left=$(lvs --noheadings -o lv_name,lv_tags carve 2>/dev/null | grep -c 'carve.owner=')
vg=$(vgs --noheadings -o vg_name carve 2>/dev/null | tr -d ' ')
mounts=$(grep -c -E '/dev/mapper/carve-' /proc/self/mounts)
echo "leak audit (lvm): $left carve LVs left in VG ${vg:-MISSING}, $mounts carve LV mounts left"
[ "$vg" = carve ] && [ "$left" = 0 ] && [ "$mounts" = 0 ] || fail=1

if [ -x /share/pmem.test ] && [ -f /share/vm-pmem.sh ]; then
  # The benchmark as a smoke test here (make bench-nodepath measures it at 1 GiB, 30 rounds):
  # every new namespace is zeroed whole, 8 s/GiB under emulation.
  run pmem env CARVE_PMEM_BENCH_SIZE=$((62 << 20)) CARVE_PMEM_BENCH_SAMPLES=5 sh /share/vm-pmem.sh suite
fi
# Issue 15 on the six extra disks (vdb..vdg) and the NVDIMM region (the PMEM suite is done with it).
if cp /share/disks.test /tmp/disks.test 2>/dev/null; then
  run disks env CARVE_DISKS_VM=1 /tmp/disks.test -test.v -test.timeout 30m
else
  say "FAIL: /share/disks.test missing"; fail=1
fi

# Leak audit at the end: no mount of a carve device may survive the suites (VG carve went with the
# PMEM suite's /dev/vda; its LVs were audited above; the PMEM and disk suites audit their own).
left=$(lvs --noheadings -o lv_name,lv_tags carve 2>/dev/null | grep -c 'carve.owner=' )
mounts=$(grep -c -E '/dev/mapper/carve-|/dev/pmem' /proc/self/mounts)
echo "leak audit: $left carve LVs left, $mounts carve mounts left"
[ "$left" = 0 ] && [ "$mounts" = 0 ] || fail=1
if [ "$fail" = 0 ]; then echo "suite all: passed"; else echo "suite all: FAILED"; fi
exit "$fail"
