#!/usr/bin/env bash
# make demo: carve on a real Kubernetes control plane built from source (the
# storage capacity story of the Kubernetes 1.19 blog post, test/k8srig), then
# a CSI inline ephemeral volume through carve's node service on a kernel with
# device-mapper (this host's, or the QEMU VM rig's when the host has none).
# Cleans up everything it made, also on failure or Ctrl-C. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH=/usr/local/go/bin:$PATH
T0=$(date +%s)
STEPS=9
OUT=$REPO/_output/demo
step_t=0
step() { # step N TITLE
  [ "$step_t" = 0 ] || echo "    ($(( $(date +%s) - step_t ))s)"
  step_t=$(date +%s)
  printf '\n==> [%s/%s] %s\n' "$1" "$STEPS" "$2"
}
if [[ $EUID -ne 0 ]]; then echo "make demo: run as root (loop devices, lvm2, mounts)"; exit 1; fi
for c in lvm losetup openssl curl; do
  command -v "$c" >/dev/null || { echo "make demo: $c is missing (make demo runs hack/deps.sh first)"; exit 1; }
done
# The control plane needs three loop devices; say so plainly if they are not there.
free_loops=$(( $(ls /dev/loop[0-9]* 2>/dev/null | wc -l) - $(losetup -a | wc -l) ))
if (( free_loops < 3 )); then
  echo "make demo: needs 3 free loop devices for the three nodes' volume groups; only $free_loops free. In use:"
  losetup -a | sed 's/^/    /'
  exit 1
fi

LOOP="" VMSHARE=""
cleanup() {
  rc=$?
  [ -z "$LOOP" ] || losetup -d "$LOOP" 2>/dev/null || true
  [ -z "$VMSHARE" ] || rm -rf "$VMSHARE"
  rm -rf "$OUT/tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step 1 "Building carve-csi (static) and the demo programs"
make --no-print-directory build >/dev/null
mkdir -p "$OUT"
go build -o "$OUT/cluster" ./hack/demo/cluster
CGO_ENABLED=0 go build -o "$OUT/inline" ./hack/demo/inline
echo "    $(_output/carve-csi version 2>/dev/null || echo carve-csi) in _output/, the demo programs in _output/demo/"

step 2 "Kubernetes control plane from source (hack/k8s/build.sh: cached in .cache/k8s; the first build takes 15-20 min)"
if hack/k8s/build.sh --check >/dev/null 2>&1; then
  echo "    cached: $(tr '\n' ' ' < .cache/k8s/bin/VERSIONS 2>/dev/null | cut -c1-150)"
else
  echo "    not built yet (or stale): building etcd, kube-apiserver, kube-controller-manager, kube-scheduler,"
  echo "    kubectl, external-provisioner, external-resizer now (once; later runs reuse .cache/k8s/bin)"
  hack/k8s/build.sh 2>&1 | sed -u 's/^/    /' || { echo "    hack/k8s/build.sh failed (above)"; exit 1; }
fi
echo "    ($(( $(date +%s) - step_t ))s)"; step_t=0

# Steps 3-8: the control plane story; the program prints its own steps and
# tears down what it made, also on failure or Ctrl-C.
"$OUT/cluster" --bin="$REPO/.cache/k8s/bin" --carve="$REPO/_output/carve-csi" --first-step=3 --steps=$STEPS

if [ -e /sys/class/misc/device-mapper ] && dmsetup version >/dev/null 2>&1; then
  step 9 "A CSI inline ephemeral volume through carve's node service (on this host: it has device-mapper)"
  mkdir -p "$OUT/tmp"
  truncate -s 4G "$OUT/tmp/inline.img"
  LOOP=$(losetup -f --show "$OUT/tmp/inline.img") || { echo "    no free loop device for the inline part"; exit 1; }
  "$OUT/inline" --carve="$REPO/_output/carve-csi" --device="$LOOP" | sed -u 's/^/    /'
  losetup -d "$LOOP"; LOOP=""
else
  step 9 "A CSI inline ephemeral volume through carve's node service"
  echo "    this kernel has no device-mapper, so the inline-volume part runs inside the VM rig (QEMU, hack/vm);"
  echo "    booting it under software emulation takes 30-120 s (the first run also builds the VM image into .cache/vm,"
  echo "    about 2 min); the guest's output follows when it is done"
  VMSHARE=$OUT/vm
  rm -rf "$VMSHARE" && mkdir -p "$VMSHARE"
  cp _output/carve-csi "$OUT/inline" hack/demo/vm-guest.sh "$VMSHARE/"
  set +e
  hack/vm/run.sh --share "$VMSHARE" --timeout 900 --disk-size 4G --quiet -- /share/vm-guest.sh 2> "$OUT/vm-run.err"
  rc=$?
  set -e
  sed 's/^/    [vm] /' "$VMSHARE/guest.log" 2>/dev/null || true
  grep -a '^\[vm\] timing' "$OUT/vm-run.err" | sed 's/^/    /' || true
  if [ "$rc" != 0 ]; then
    echo "    the VM rig exited $rc:"; sed 's/^/    /' "$OUT/vm-run.err" | tail -n 30
    exit "$rc"
  fi
  rm -f "$OUT/vm-run.err"
fi
echo "    ($(( $(date +%s) - step_t ))s)"

echo
echo "demo finished in $(( $(date +%s) - T0 ))s: capacity published, a 4Gi generic ephemeral volume placed, the capacity"
echo "table updated and restored, an inline volume created, written and removed; everything the demo made is gone"
