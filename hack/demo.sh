#!/usr/bin/env bash
# make demo: carve on a real Kubernetes control plane built from source (the
# storage capacity story of the Kubernetes 1.19 blog post, test/k8srig, on three
# simulated nodes), then the same story on real pods: carve installed from
# deploy/kubernetes on a kubelet + containerd node in the QEMU VM rig
# (hack/cluster.sh), a 4Gi generic ephemeral volume and an inline volume.
# Cleans up everything it made, also on failure or Ctrl-C. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH=/usr/local/go/bin:$PATH
T0=$(date +%s)
STEPS=14
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

# The demo programs and hack/cluster.sh tear down what they made themselves, also on Ctrl-C.
trap 'exit 130' INT TERM

step 1 "Building carve-csi (static) and the demo programs"
make --no-print-directory build >/dev/null
mkdir -p "$OUT"
go build -o "$OUT/cluster" ./hack/demo/cluster
go build -o "$OUT/realnode" ./hack/demo/realnode
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

step 9 "carve on a real node: kubelet and containerd in the QEMU VM rig, installed with kubectl apply -k (hack/cluster.sh)"
echo "    builds the images once (.cache/images; the sidecars from source, registrar and livenessprobe are"
echo "    carve's stand-ins), boots the node under software emulation, imports the images, installs carve:"
echo "    about 10 minutes; its progress follows"
set +e
hack/cluster.sh -- "$OUT/realnode" --first-step=10 --steps=$STEPS 2> >(grep --line-buffered -E '^\[cluster|FAIL|^-----' | sed -u 's/^/    /' >&2)
rc=$?
set -e
if [ "$rc" != 0 ]; then
  echo "    the real-node part failed (exit $rc); hack/cluster.sh kept its logs in _output/cluster-logs"
  exit "$rc"
fi
echo
echo "demo finished in $(( $(date +%s) - T0 ))s: capacity published, a 4Gi generic ephemeral volume placed, the capacity"
echo "table updated and restored, on three simulated nodes and then on a real kubelet node, where an inline volume"
echo "was created, written and removed too; everything the demo made is gone"
