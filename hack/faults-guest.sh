#!/bin/sh
# Runs INSIDE the VM rig (see hack/faults.sh): the fault-injection trials.
set -u
say() { echo "faults-guest: $*"; }
for f in carve-csi faultshim faults.test; do
  cp "/share/$f" "/tmp/$f" || { say "FAIL: /share/$f missing"; echo "suite faults: FAILED (missing $f)"; exit 2; }
done
set -a; . /share/faults.env; set +a
export CARVE_BINARY=/tmp/carve-csi CARVE_FAULTS_SHIM=/tmp/faultshim CARVE_FAULTS_VG=carve CARVE_FAULTS_REQUIRE=1

wipefs -a /dev/vda >/dev/null && pvcreate -y /dev/vda >/dev/null && vgcreate carve /dev/vda >/dev/null ||
  { say "FAIL: volume group on /dev/vda"; echo "suite faults: FAILED (no volume group)"; exit 2; }
say "volume group: $(vgs --noheadings --units m -o vg_name,vg_size,vg_extent_size carve | tr -s ' ')"

# What one lvm command costs here (under emulation it dominates a trial).
ms() { awk -v a="$1" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN{printf "%.0f", (b-a)*1000}'; }
p0=$(cut -d' ' -f1 /proc/uptime); lvm lvs carve >/dev/null; lvs_ms=$(ms "$p0")
p0=$(cut -d' ' -f1 /proc/uptime); lvm lvcreate -q -y -L 16m -n faultsprobe carve >/dev/null && lvm lvremove -q -f carve/faultsprobe >/dev/null
cr_ms=$(ms "$p0")
say "cost: lvs ${lvs_ms}ms, lvcreate+lvremove ${cr_ms}ms"

t0=$(cut -d' ' -f1 /proc/uptime)
/tmp/faults.test -test.run '^TestFaults$' -test.v -test.timeout 60m
rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)

# The same audit as hack/e2e-guest.sh: nothing of carve's may survive.
left=$(lvs --noheadings -o lv_name,lv_tags carve 2>/dev/null | grep -c 'carve.owner=')
mounts=$(grep -c '/dev/mapper/carve-' /proc/self/mounts)
echo "leak audit: $left carve LVs left, $mounts carve mounts left"
[ "$left" = 0 ] && [ "$mounts" = 0 ] || rc=1
echo "suite faults: exit $rc after $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", b-a}')s"
exit "$rc"
