#!/usr/bin/env bash
# make demo: carve on a real Kubernetes node, with real pods. hack/cluster.sh
# builds the images and binaries it needs (cached), starts the control plane
# on this host, boots the VM node (kubelet, containerd), installs carve with
# `kubectl apply -k test/cluster/overlay` (deploy/kubernetes with the local
# images and the VM's volume group), and runs hack/demo/realnode: the
# CSIStorageCapacity table, a pod with a 4Gi generic ephemeral volume writing
# to it, the table after with the change marked, the pod deleted and the
# capacity back, then a pod with a CSI inline volume. hack/cluster.sh tears
# everything down afterwards, also on failure or Ctrl-C.
#
# Then, when three loop devices are free, the placement story the one-node
# cluster cannot show: three simulated nodes on the same control plane
# binaries (test/k8srig), the scheduler placing the 4Gi volume on a node with
# room (hack/demo/cluster). CARVE_DEMO_PLACEMENT=0 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH=/usr/local/go/bin:$PATH
T0=$(date +%s)
OUT=$REPO/_output/demo
STEPS=5
if [[ $EUID -ne 0 ]]; then echo "make demo: run as root (the VM rig, loop devices, lvm2)"; exit 1; fi

echo "==> Building the demo programs"
mkdir -p "$OUT"
CGO_ENABLED=0 go build -o "$OUT/realnode" ./hack/demo/realnode
go build -o "$OUT/cluster" ./hack/demo/cluster

echo
echo "==> carve on a real node: hack/cluster.sh builds (or reuses from .cache/) the images, the control plane,"
echo "    kubelet and containerd, boots the VM node (software emulation: minutes), installs carve from"
echo "    deploy/kubernetes and waits until its pods are Ready; its own lines follow, then the demo's steps"
hack/cluster.sh -- "$OUT/realnode" --first-step=1 --steps=$STEPS
T1=$(date +%s)
echo "    (real-node part: $(( T1 - T0 ))s)"

placement=no
if [[ "${CARVE_DEMO_PLACEMENT:-1}" != 0 ]]; then
	free_loops=$(( $(ls /dev/loop[0-9]* 2>/dev/null | wc -l) - $(losetup -a | wc -l) ))
	bin="${CARVE_K8S_CACHE:-$REPO/.cache/k8s}/bin"
	if (( free_loops < 3 )); then
		echo
		echo "==> skipping the three-node placement part: it needs 3 free loop devices, $free_loops free"
	elif ! hack/k8s/build.sh --check >/dev/null 2>&1; then
		echo
		echo "==> skipping the three-node placement part: the control plane binaries in $bin are not built"
	else
		echo
		echo "==> Placement across three nodes: the same control plane with three simulated nodes (no kubelet;"
		echo "    each a 20Gi loop-device volume group and carve-csi --mode=node), the scheduler choosing by capacity"
		make --no-print-directory build >/dev/null
		"$OUT/cluster" --bin="$bin" --carve="$REPO/_output/carve-csi" --first-step=1 --steps=6
		placement=yes
		echo "    (placement part: $(( $(date +%s) - T1 ))s)"
	fi
fi

echo
echo "demo finished in $(( $(date +%s) - T0 ))s: on a real node, capacity published, a pod with a 4Gi generic"
echo "ephemeral volume running and writing, the capacity table updated and restored, an inline volume carved,"
echo "written and removed$( [[ $placement == yes ]] && echo "; then the 4Gi volume placed among three nodes by capacity" ); everything it made is gone"
