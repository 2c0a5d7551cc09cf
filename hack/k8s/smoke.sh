#!/usr/bin/env bash
# hack/k8s/smoke.sh [DIR]: build the rig (or reuse the cache), bring a control plane up in DIR
# (default: a new temporary folder, removed on success), create a fake Node + CSINode, a CSIDriver
# and a WaitForFirstConsumer StorageClass, check readiness, a ServiceAccount's token and RBAC,
# that the scheduler places a pod on the fake node and the PV controller binds a static PV; then
# run external-provisioner (--enable-capacity) and external-resizer as their own ServiceAccounts
# (upstream RBAC) against tools/stubcsi (an in-memory CSI controller, 10 GiB per node) and check
# CSIStorageCapacity, WaitForFirstConsumer provisioning of generic ephemeral volumes, a pod that
# fits nowhere, expansion and deletion; bring it all down again.
# Exits 0 only when every step worked; prints the timings of each phase.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${1:-}"
KEEP=1
if [[ -z $DIR ]]; then
	DIR="$(mktemp -d /tmp/carve-k8s-smoke.XXXXXX)"
	KEEP=0
fi

now_ms() { date +%s%3N; }
say() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() {
	say "FAILED: $*"
	exit 1
}

UP=0
SIDECARS=()
# stop_sidecars: stop what this script started, before the control plane (the apiserver drains
# its clients' connections on SIGTERM and takes 15 s or more while they keep reconnecting).
stop_sidecars() {
	local pid
	for pid in "${SIDECARS[@]}"; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	SIDECARS=()
	return 0
}
on_exit() {
	local rc=$?
	set +e
	stop_sidecars
	if ((UP)); then
		"$HERE/cluster.sh" down "$DIR" || rc=1
	fi
	if ((rc == 0 && KEEP == 0)); then
		rm -rf "$DIR"
	else
		say "state and logs kept in $DIR"
	fi
	exit $rc
}
trap on_exit EXIT

t=$(now_ms)
BIN="$("$HERE/build.sh" | tail -n1)" || fail "build"
T_BUILD=$(($(now_ms) - t))

t=$(now_ms)
UP=1
"$HERE/cluster.sh" up "$DIR" || fail "cluster.sh up"
T_UP=$(($(now_ms) - t))

set -a
# shellcheck disable=SC1091
source "$DIR/env"
set +a
k() { "$CARVE_K8S_KUBECTL" "$@"; }

[[ "$(k get --raw /readyz)" == ok ]] || fail "/readyz is not ok"
k version -o json | grep -q '"gitVersion": "v1.37.2"' || fail "server/client are not v1.37.2: $(k version 2>&1)"

"$HERE/cluster.sh" add-node "$DIR" node-1
k apply -f - <<'EOF'
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata:
  name: carve.csi.dev
spec:
  attachRequired: false
  podInfoOnMount: true
  storageCapacity: true
  volumeLifecycleModes: [Persistent, Ephemeral]
  fsGroupPolicy: File
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: carve-lvm
provisioner: carve.csi.dev
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
parameters:
  pool: default
EOF

# The fake node is Ready, untainted, and its CSINode carries the topology key.
[[ "$(k get node node-1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]] ||
	fail "node-1 is not Ready"
[[ -z "$(k get node node-1 -o jsonpath='{.spec.taints}')" ]] ||
	fail "node-1 has taints: $(k get node node-1 -o jsonpath='{.spec.taints}')"
[[ "$(k get csinode node-1 -o jsonpath='{.spec.drivers[0].topologyKeys[0]}')" == carve.csi.dev/node ]] ||
	fail "CSINode node-1 lacks the topology key"
[[ "$(k get csidriver carve.csi.dev -o jsonpath='{.spec.storageCapacity}')" == true ]] ||
	fail "CSIDriver lacks storageCapacity"

# A ServiceAccount with its own token: who am I, and what may it do (nothing yet but discovery).
SA_KUBECONFIG="$("$HERE/cluster.sh" sa-kubeconfig "$DIR" default test)"
[[ "$(k --kubeconfig "$SA_KUBECONFIG" auth whoami -o jsonpath='{.status.userInfo.username}')" == \
	system:serviceaccount:default:test ]] || fail "the ServiceAccount token does not authenticate"
k auth can-i --list --as=system:serviceaccount:default:test >"$DIR/can-i.txt" || fail "auth can-i --list"
cat "$DIR/can-i.txt" >&2
[[ "$(k --kubeconfig "$SA_KUBECONFIG" auth can-i list nodes || true)" == no ]] ||
	fail "the test ServiceAccount may list nodes"
k create clusterrole smoke-node-reader --verb=get,list,watch --resource=nodes >/dev/null
k create clusterrolebinding smoke-node-reader --clusterrole=smoke-node-reader \
	--serviceaccount=default:test >/dev/null
[[ "$(k --kubeconfig "$SA_KUBECONFIG" auth can-i list nodes)" == yes ]] ||
	fail "RBAC binding did not take effect"
k --kubeconfig "$SA_KUBECONFIG" get nodes >/dev/null || fail "the ServiceAccount cannot list nodes"

# The scheduler places a pod on the fake node (it never starts: there is no kubelet).
k apply -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: smoke
  namespace: default
spec:
  containers:
  - name: c
    image: registry.invalid/none
EOF
t=$(now_ms)
for ((i = 0; i < 100; i++)); do
	NODE="$(k -n default get pod smoke -o jsonpath='{.spec.nodeName}')"
	[[ -n $NODE ]] && break
	sleep 0.1
done
[[ ${NODE:-} == node-1 ]] || fail "pod smoke was not scheduled to node-1: $(k -n default describe pod smoke)"
say "pod scheduled to $NODE in $(($(now_ms) - t)) ms"
k -n default delete pod smoke --grace-period=0 --force --wait=true >/dev/null 2>&1
k -n default get pod smoke >/dev/null 2>&1 && fail "pod smoke was not deleted"

# The controller-manager's PersistentVolume controller binds a static PV to a PVC.
k apply -f - <<'EOF2'
apiVersion: v1
kind: PersistentVolume
metadata:
  name: smoke-pv
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  hostPath: {path: /nonexistent}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: smoke-pvc
  namespace: default
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  resources: {requests: {storage: 1Gi}}
EOF2
t=$(now_ms)
for ((i = 0; i < 300; i++)); do
	PHASE="$(k -n default get pvc smoke-pvc -o jsonpath='{.status.phase}')"
	[[ $PHASE == Bound ]] && break
	sleep 0.1
done
[[ ${PHASE:-} == Bound ]] || fail "PVC smoke-pvc is not Bound (${PHASE:-no phase}): $(k -n default describe pvc smoke-pvc)"
say "static PV bound in $(($(now_ms) - t)) ms"

# The sidecars against the stub CSI driver, each as its own ServiceAccount (namespace default)
# with the RBAC that ships in their modules.
t=$(now_ms)
(cd "$HERE/tools/stubcsi" && GOTOOLCHAIN=local CGO_ENABLED=0 go build -o "$DIR/stubcsi" .) || fail "building stubcsi"
say "stubcsi built in $(($(now_ms) - t)) ms"
moddir() { (cd "$HERE/tools/$1" && GOTOOLCHAIN=local go mod download -json "$2" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'); }
PROV_DIR="$(moddir provisioner github.com/kubernetes-csi/external-provisioner/v6)"
RESIZER_DIR="$(moddir resizer github.com/kubernetes-csi/external-resizer/v2)"
k apply -f "$PROV_DIR/deploy/kubernetes/rbac.yaml" -f "$RESIZER_DIR/deploy/kubernetes/rbac.yaml" >/dev/null ||
	fail "applying the sidecars' RBAC"
PROV_KUBECONFIG="$("$HERE/cluster.sh" sa-kubeconfig "$DIR" default csi-provisioner)"
RESIZER_KUBECONFIG="$("$HERE/cluster.sh" sa-kubeconfig "$DIR" default csi-resizer)"
"$HERE/cluster.sh" add-node "$DIR" node-2
"$DIR/stubcsi" --endpoint="$DIR/csi.sock" --capacity=$((10 << 30)) </dev/null >"$DIR/stubcsi.log" 2>&1 &
SIDECARS+=($!)
env -u KUBECONFIG NAMESPACE=default "$BIN/csi-provisioner" --csi-address="$DIR/csi.sock" \
	--kubeconfig="$PROV_KUBECONFIG" --enable-capacity --capacity-ownerref-level=-1 \
	--capacity-poll-interval=1s --feature-gates=Topology=true --strict-topology \
	--immediate-topology=false --extra-create-metadata --timeout=30s --v=3 \
	</dev/null >"$DIR/csi-provisioner.log" 2>&1 &
SIDECARS+=($!)
env -u KUBECONFIG "$BIN/csi-resizer" --csi-address="$DIR/csi.sock" --kubeconfig="$RESIZER_KUBECONFIG" \
	--timeout=30s --v=3 </dev/null >"$DIR/csi-resizer.log" 2>&1 &
SIDECARS+=($!)

# wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND (a function here) succeeds.
wait_for() {
	local secs="$1" what="$2" t0
	shift 2
	t0=$(now_ms)
	until "$@" >/dev/null 2>&1; do
		(($(now_ms) - t0 < secs * 1000)) || fail "$what: not within $secs s (logs in $DIR)"
		sleep 0.2
	done
	say "$what after $(($(now_ms) - t0)) ms"
}
# capacities: "NODE=CAPACITY" lines of StorageClass carve-lvm's CSIStorageCapacity objects.
capacities() {
	k -n default get csistoragecapacities -o jsonpath='{range .items[?(@.storageClassName=="carve-lvm")]}{.nodeTopology.matchLabels.carve\.csi\.dev/node}={.capacity}{"\n"}{end}' |
		sort | tr '\n' ' '
}
capacities_are() { [[ "$(capacities)" == "$1" ]]; }
pvc_bound() { [[ "$(k -n default get pvc "$1" -o jsonpath='{.status.phase}')" == Bound ]]; }
# pods_bound POD...: each POD is scheduled and its generic ephemeral volume's PVC is Bound (the
# scheduler binds the pod only after the volume is provisioned and bound).
pods_bound() {
	local p
	for p in "$@"; do
		pvc_bound "$p-scratch" || return 1
		[[ -n "$(k -n default get pod "$p" -o jsonpath='{.spec.nodeName}')" ]] || return 1
	done
}
pv_size_is() {
	[[ "$(k get pv "$(k -n default get pvc "$1" -o jsonpath='{.spec.volumeName}')" \
		-o jsonpath='{.spec.capacity.storage}')" == "$2" ]]
}
pv_count_is() { [[ "$(k get pv -o name | wc -l)" == "$1" ]]; }

wait_for 30 "CSIStorageCapacity 10Gi on node-1 and node-2" capacities_are "node-1=10Gi node-2=10Gi "

for p in scratch-1 scratch-2 scratch-3; do
	k apply -f - >/dev/null <<EOF2
apiVersion: v1
kind: Pod
metadata: {name: $p, namespace: default}
spec:
  containers: [{name: c, image: registry.invalid/none}]
  volumes:
  - name: scratch
    ephemeral:
      volumeClaimTemplate:
        spec:
          accessModes: [ReadWriteOnce]
          storageClassName: carve-lvm
          resources: {requests: {storage: 8Gi}}
EOF2
done
wait_for 60 "two 8Gi generic ephemeral volumes provisioned and bound" pods_bound scratch-1 scratch-2
[[ "$(k -n default get pod scratch-1 -o jsonpath='{.spec.nodeName}')" != \
	"$(k -n default get pod scratch-2 -o jsonpath='{.spec.nodeName}')" ]] || fail "both 8Gi pods went to one 10Gi node"
wait_for 30 "capacity down to 2Gi on both nodes" capacities_are "node-1=2Gi node-2=2Gi "
no_storage_event() {
	k -n default get events --field-selector involvedObject.name=scratch-3 -o jsonpath='{.items[*].message}' |
		grep -q 'did not have enough free storage'
}
wait_for 30 "scratch-3 Pending: did not have enough free storage" no_storage_event
[[ -z "$(k -n default get pod scratch-3 -o jsonpath='{.spec.nodeName}')" ]] ||
	fail "pod scratch-3 was scheduled although no node has 8Gi left"

k -n default patch pvc scratch-1-scratch --type=merge -p '{"spec":{"resources":{"requests":{"storage":"9Gi"}}}}' >/dev/null
wait_for 30 "external-resizer expanded scratch-1-scratch to 9Gi" pv_size_is scratch-1-scratch 9Gi

k -n default delete pod scratch-1 --grace-period=0 --force >/dev/null 2>&1
wait_for 60 "scratch-1's volume deleted and scratch-3 provisioned in its place" pods_bound scratch-3
k -n default get pvc scratch-1-scratch >/dev/null 2>&1 && fail "scratch-1-scratch still exists"
k -n default delete pod scratch-2 scratch-3 --grace-period=0 --force >/dev/null 2>&1
wait_for 60 "every dynamic PV deleted" pv_count_is 1
wait_for 30 "capacity back to 10Gi on both nodes" capacities_are "node-1=10Gi node-2=10Gi "

stop_sidecars
t=$(now_ms)
UP=0
"$HERE/cluster.sh" down "$DIR" || fail "cluster.sh down"
T_DOWN=$(($(now_ms) - t))
"$HERE/cluster.sh" status "$DIR" >/dev/null && fail "components still run after down"
for v in CARVE_K8S_ETCD_PID CARVE_K8S_APISERVER_PID CARVE_K8S_KCM_PID CARVE_K8S_SCHEDULER_PID; do
	if [[ -d /proc/${!v} ]] && [[ "$(awk '{print $3}' "/proc/${!v}/stat" 2>/dev/null)" != Z ]]; then
		fail "process ${!v} ($v) is still alive after down"
	fi
done

say "timings: build ${T_BUILD} ms, up ${T_UP} ms, down ${T_DOWN} ms"
echo "smoke: 1 passed, 0 failed"
