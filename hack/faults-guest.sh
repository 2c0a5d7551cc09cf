#!/bin/sh
# Runs INSIDE the VM rig (see hack/faults.sh): the fault-injection trials, on
# each pool kind in CARVE_FAULTS_POOLS (hack/faults.sh passes "lvm thin pmem"
# by default: all in this one boot): lvm on a volume group on /dev/vda (CARVE_FAULTS_TRIALS),
# thin on a thin pool (zeroing on) in that volume group, made here and removed after
# (CARVE_FAULTS_THIN_TRIALS, default 17: snapshots and clones), pmem on the emulated
# NVDIMM's region0 (CARVE_FAULTS_PMEM_TRIALS, default 40). A trial count of "all" plans each boundary once.
set -u
say() { echo "faults-guest: $*"; }
for f in carve-csi faultshim faults.test; do
  cp "/share/$f" "/tmp/$f" || { say "FAIL: /share/$f missing"; echo "suite faults: FAILED (missing $f)"; exit 2; }
done
set -a; . /share/faults.env; set +a
export CARVE_BINARY=/tmp/carve-csi CARVE_FAULTS_SHIM=/tmp/faultshim CARVE_FAULTS_REQUIRE=1
POOLS=${CARVE_FAULTS_POOLS:-lvm}
TRIALS=${CARVE_FAULTS_TRIALS:-100}
REGION=region0
ms() { awk -v a="$1" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN{printf "%.0f", (b-a)*1000}'; }
secs() { awk -v a="$1" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN{printf "%.0f", b-a}'; }

# VG carve on /dev/vda (run_lvm makes it afresh; run_thin takes it as it is).
THINPOOL=faultsthin
run_thin() {
  if ! vgs carve >/dev/null 2>&1; then
    wipefs -a /dev/vda >/dev/null && pvcreate -y /dev/vda >/dev/null && vgcreate carve /dev/vda >/dev/null ||
      { say "FAIL: volume group on /dev/vda"; return 2; }
  fi
  # Zeroing on (-Z y): carve refuses a thin pool that hands out unzeroed blocks.
  lvm lvcreate -q -y --type thin-pool -L 512m -Z y -n "$THINPOOL" carve >/dev/null ||
    { say "FAIL: thin pool carve/$THINPOOL"; return 2; }
  say "thin pool: $(lvs --noheadings --units m -o lv_name,lv_size,chunk_size,zero carve/$THINPOOL | tr -s ' ')"
  # What one lvm command costs here (a thin trial is mostly lvm calls; 1.1 s on a quiet host).
  p0=$(cut -d' ' -f1 /proc/uptime); lvm lvs carve >/dev/null; lvs_ms=$(ms "$p0")
  p0=$(cut -d' ' -f1 /proc/uptime); lvm lvcreate -q -y -V 16m --thinpool "$THINPOOL" -n faultsprobe carve >/dev/null &&
    lvm lvremove -q -f carve/faultsprobe >/dev/null
  say "cost: lvs ${lvs_ms}ms, thin lvcreate+lvremove $(ms "$p0")ms"
  CARVE_FAULTS_POOL=thin CARVE_FAULTS_VG=carve CARVE_FAULTS_THINPOOL=$THINPOOL CARVE_FAULTS_TRIALS=${CARVE_FAULTS_THIN_TRIALS:-17} \
    /tmp/faults.test -test.run '^TestFaults$' -test.v -test.timeout 60m
  r=$?
  # Volumes and snapshots alike carry carve's owner tag.
  left=$(lvs --noheadings -o lv_name,lv_tags carve 2>/dev/null | grep -c 'carve.owner=')
  snaps=$(lvs --noheadings -o lv_name carve 2>/dev/null | grep -c 'carvesnap-')
  echo "leak audit (thin): $left carve LVs left ($snaps of them snapshots)"
  [ "$left" = 0 ] && [ "$snaps" = 0 ] || r=1
  lvm lvremove -q -f "carve/$THINPOOL" >/dev/null || { say "FAIL: removing thin pool carve/$THINPOOL"; r=1; }
  return $r
}

run_lvm() {
  wipefs -a /dev/vda >/dev/null && pvcreate -y /dev/vda >/dev/null && vgcreate carve /dev/vda >/dev/null ||
    { say "FAIL: volume group on /dev/vda"; return 2; }
  say "volume group: $(vgs --noheadings --units m -o vg_name,vg_size,vg_extent_size carve | tr -s ' ')"
  # What one lvm command costs here (under emulation it dominates a trial).
  p0=$(cut -d' ' -f1 /proc/uptime); lvm lvs carve >/dev/null; lvs_ms=$(ms "$p0")
  p0=$(cut -d' ' -f1 /proc/uptime); lvm lvcreate -q -y -L 16m -n faultsprobe carve >/dev/null && lvm lvremove -q -f carve/faultsprobe >/dev/null
  say "cost: lvs ${lvs_ms}ms, lvcreate+lvremove $(ms "$p0")ms"
  CARVE_FAULTS_POOL=lvm CARVE_FAULTS_VG=carve CARVE_FAULTS_TRIALS=$TRIALS \
    /tmp/faults.test -test.run '^TestFaults$' -test.v -test.timeout 60m
  r=$?
  # The same audit as hack/e2e-guest.sh: nothing of carve's may survive.
  left=$(lvs --noheadings -o lv_name,lv_tags carve 2>/dev/null | grep -c 'carve.owner=')
  mounts=$(grep -c '/dev/mapper/carve-' /proc/self/mounts)
  echo "leak audit (lvm): $left carve LVs left, $mounts carve mounts left"
  [ "$left" = 0 ] && [ "$mounts" = 0 ] || r=1
  return $r
}

run_pmem() {
  # A fresh emulated NVDIMM has no namespace labels: initialize them (as test/pmem/vm-pmem.sh).
  ndctl destroy-namespace -f -r "$REGION" all >/dev/null 2>&1
  ndctl disable-region "$REGION" >/dev/null 2>&1 && ndctl init-labels -f all >/dev/null 2>&1 &&
    ndctl enable-region "$REGION" >/dev/null 2>&1 || { say "FAIL: could not initialize the labels of $REGION"; return 2; }
  say "region: $(ndctl list -R -r "$REGION" | tr -d ' \n')"
  p0=$(cut -d' ' -f1 /proc/uptime); ndctl list -N -r "$REGION" >/dev/null
  say "cost: ndctl list $(ms "$p0")ms"
  CARVE_FAULTS_POOL=pmem CARVE_FAULTS_REGION=$REGION CARVE_FAULTS_TRIALS=${CARVE_FAULTS_PMEM_TRIALS:-40} \
    /tmp/faults.test -test.run '^TestFaults$' -test.v -test.timeout 60m
  r=$?
  left=$(ndctl list -N -r "$REGION" 2>/dev/null | grep -c '"name":"carve-')
  mounts=$(grep -c '^/dev/pmem' /proc/self/mounts)
  echo "leak audit (pmem): $left carve namespaces left, $mounts pmem mounts left"
  [ "$left" = 0 ] && [ "$mounts" = 0 ] || r=1
  return $r
}

rc=0
t0=$(cut -d' ' -f1 /proc/uptime)
for pool in $POOLS; do
  p0=$(cut -d' ' -f1 /proc/uptime)
  case "$pool" in
  lvm) run_lvm ;;
  thin) run_thin ;;
  pmem) run_pmem ;;
  *) say "unknown pool kind $pool (lvm, thin, pmem)"; false ;;
  esac
  r=$?
  echo "suite faults-$pool: exit $r after $(secs "$p0")s"
  [ "$r" = 0 ] || rc=$r
done
echo "suite faults: exit $rc after $(secs "$t0")s"
exit "$rc"
