#!/bin/sh
# Runs INSIDE the carve test VM (see smoke-host.sh): checks device-mapper, LVM on /dev/vda,
# ext4 and xfs on logical volumes (including online growth), and the emulated NVDIMM.
set -eu
step() { echo "smoke: $*"; }
fail() { echo "smoke: FAIL: $*"; exit 1; }

step "tools"
for c in mount umount blkid mkfs.ext4 resize2fs mkfs.xfs xfs_growfs lvm dmsetup ndctl wipefs; do
  command -v "$c" >/dev/null || fail "$c missing"
done
read -r _ </dev/stdin 2>/dev/null && fail "stdin is not empty" || true

step "device-mapper"
dmsetup version
[ -b /dev/vda ] || fail "/dev/vda missing"

step "LVM on /dev/vda"
wipefs -a /dev/vda >/dev/null
pvcreate -y /dev/vda
vgcreate smokevg /dev/vda
lvcreate -y -n lv1 -L 256M smokevg
[ -b /dev/smokevg/lv1 ] || fail "/dev/smokevg/lv1 is not a block device"
[ -b /dev/mapper/smokevg-lv1 ] || fail "/dev/mapper/smokevg-lv1 is not a block device"
attr=$(lvs --noheadings -o lv_attr smokevg/lv1 | tr -d ' ')
case "$attr" in ????a*) ;; *) fail "lv1 not active (attr $attr)" ;; esac

step "ext4 on lv1, online grow"
mkfs.ext4 -q /dev/smokevg/lv1
[ "$(blkid -o value -s TYPE /dev/smokevg/lv1)" = ext4 ] || fail "blkid does not see ext4"
mkdir -p /mnt/lv1 && mount /dev/smokevg/lv1 /mnt/lv1
echo hello >/mnt/lv1/f
lvextend -L 512M smokevg/lv1
resize2fs /dev/smokevg/lv1
size=$(df -k --output=size /mnt/lv1 | tail -n1 | tr -d ' ')
[ "$size" -gt 400000 ] || fail "ext4 did not grow (size ${size}K)"
umount /mnt/lv1

step "xfs on lv2, online grow"
lvcreate -y -n lv2 -L 320M smokevg
mkfs.xfs -q /dev/smokevg/lv2
mkdir -p /mnt/lv2 && mount /dev/smokevg/lv2 /mnt/lv2
lvextend -L 640M smokevg/lv2
xfs_growfs /mnt/lv2 >/dev/null
size=$(df -k --output=size /mnt/lv2 | tail -n1 | tr -d ' ')
[ "$size" -gt 500000 ] || fail "xfs did not grow (size ${size}K)"
umount /mnt/lv2
vgremove -f smokevg >/dev/null

step "NVDIMM"
ndctl list -R
ndctl list -R | grep -q '"dev":"region' || fail "ndctl list -R shows no region"
ndctl disable-region all
ndctl init-labels -f all
ndctl enable-region all
ndctl create-namespace -r region0 -m fsdax -s 512M
[ -b /dev/pmem0 ] || fail "/dev/pmem0 missing after create-namespace"
# under 512M mke2fs picks 1K blocks, and DAX needs block size == page size
mkfs.ext4 -q -F -b 4096 /dev/pmem0
mkdir -p /mnt/pmem && mount -o dax /dev/pmem0 /mnt/pmem
grep ' /mnt/pmem ' /proc/mounts | grep -q dax || fail "/mnt/pmem not mounted with dax"
umount /mnt/pmem

step "OK"
