#!/usr/bin/env bash
# hack/k8s/smoke.sh [DIR]: build the rig (or reuse the cache), bring a control plane up in DIR
# (default: a new temporary folder, removed on success), create a fake Node + CSINode, a CSIDriver
# and a WaitForFirstConsumer StorageClass, check readiness, a ServiceAccount's token and RBAC,
# that the scheduler places a pod on the fake node, and bring it down again.
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
on_exit() {
	local rc=$?
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

# The sidecars run.
"$BIN/csi-provisioner" --version >&2
"$BIN/csi-resizer" --version >&2

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
