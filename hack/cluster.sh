#!/usr/bin/env bash
# hack/cluster.sh: carve on a real Kubernetes node, then a command against it.
#
#   hack/cluster.sh [--keep] -- CMD [ARG...]
#
# Builds what it needs (images: hack/image/build.sh; control plane, kubelet, kube-proxy:
# hack/k8s/build.sh; containerd: hack/cluster/build-containerd.sh; the VM image: hack/vm/build.sh),
# starts the control plane on the host (hack/k8s/cluster.sh, 127.0.0.1) with the snapshot CRDs
# (external-snapshotter's client module at the tag components/snapshots pins, from the Go module
# cache) and snapshot-controller (from .cache/k8s/bin, run on the host beside
# kube-controller-manager), boots the VM node (hack/cluster/guest.sh: containerd + runc, CNI
# bridge, kubelet, kube-proxy; volume group carve on /dev/vda and, for the lvm-thin pool `thin`
# that test/cluster/overlay gives carve-node, volume group carvethin on a second disk /dev/vdb;
# the guest reaches the API server only through a QEMU guestfwd at 10.0.2.100), imports the
# images, installs carve with `kubectl apply -k test/cluster/overlay` and waits until carve is up
# (both pods with every container Ready, CSINode lists carve.csi.dev, CSIStorageCapacity
# published). Then runs CMD on the host with KUBECONFIG, CARVE_GUEST_EXEC, CARVE_NODE_NAME,
# CARVE_VG, CARVE_THIN_VG, CARVE_STORAGECLASS, CARVE_THIN_STORAGECLASS, CARVE_SNAPSHOTCLASS,
# CARVE_WORKLOAD_IMAGE, CARVE_NAMESPACE, CARVE_RIG_LOGS and CARVE_CLUSTER=1 set, collects logs if
# CMD failed, tears everything down and exits with CMD's exit code.
#
#   --keep   leave the run folder (control-plane data, share, logs) in place afterwards
#            (processes are stopped either way)
#
# Exit codes: CMD's own, or (the rig failed before CMD ran; one line "cluster: FAIL: ..." says
# which part) 90 build, 91 control plane, 92 VM/containerd/images, 93 kubelet or node not Ready,
# 94 carve install/not Ready, 2 usage.
#
# Environment: CARVE_K8S_CACHE, CARVE_VM_CACHE (shared caches), CARVE_CLUSTER_CACHE (containerd,
# default <repo>/.cache/cluster), CARVE_RIG_LOGS (where logs are collected; default
# RUN/logs), CARVE_CLUSTER_TIMEOUT (seconds the VM may live, default 4800: the suite itself stops at 55 min, and CI hosts boot slowly), CARVE_CLUSTER_WAIT
# (seconds for each wait: node Ready, carve Ready; default 600), CARVE_CLUSTER_MEM (guest RAM,
# default 4G), CARVE_CLUSTER_DISK (the VG's disk, default 16G), CARVE_CLUSTER_THIN_DISK (the thin
# pool's VG's disk, default 4G), CARVE_CLUSTER_IMAGES (a folder of
# OCI archives to import instead of running hack/image/build.sh; for testing the rig),
# CARVE_CLUSTER_NO_CARVE=1 (boot the node only; for testing the rig).
#
# Measured 2026-11-29 on a quiet 2-core host (make test-cluster, 11 scenarios passed): images
# cached 19 s; control plane 6 s; boot to node Ready 181 s (root copied into a tmpfs ~20 s, the
# seven images imported in parallel 121 s: carve-csi 49 MB with zstd layers); carve's two pods
# Ready, CSINode and CSIStorageCapacity 104 s; scenarios 1504 s with -test.parallel=2.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
NODE_NAME=carve-vm
VG=carve
# The lvm-thin pool `thin` (test/cluster/overlay: --pool=thin=lvm-thin:carvethin/pool:...) needs
# a volume group of its own: a second disk.
THIN_VG=carvethin
THIN_DEVICE=/dev/vdb
NAMESPACE=carve-system
STORAGECLASS=carve-lvm
THIN_STORAGECLASS=carve-thin
SNAPSHOTCLASS=carve-thin
WORKLOAD_IMAGE=carve.local/busybox:1.35.0
APISERVER_IP=10.0.2.100
POD_CIDR=10.244.0.0/24
WAIT="${CARVE_CLUSTER_WAIT:-600}"
IMAGES=(carve-csi csi-provisioner csi-resizer csi-snapshotter csi-node-driver-registrar livenessprobe pause busybox)

E_BUILD=90 E_CP=91 E_VM=92 E_NODE=93 E_CARVE=94 E_USAGE=2

T0=$(date +%s)
log() { printf '[cluster %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - T0))" "$*" >&2; }
usage() { sed -n '2,32p' "$0" >&2; exit $E_USAGE; }

KEEP=""
while [[ $# -gt 0 ]]; do
	case "$1" in
	--keep) KEEP=1; shift ;;
	--) shift; break ;;
	-h | --help) usage ;;
	*) echo "cluster: unknown argument '$1' (the command goes after --)" >&2; usage ;;
	esac
done
[[ $# -gt 0 ]] || { echo "cluster: no command given after --" >&2; usage; }

RUN="$(mktemp -d /tmp/carve-cluster.XXXXXX)"
SHARE="$RUN/share"
CP="$RUN/cp"
LOGS="${CARVE_RIG_LOGS:-$RUN/logs}"
mkdir -p "$SHARE"/{bin,images,conf,state,logs,exec} "$LOGS"
LOGS="$(cd "$LOGS" && pwd)"
VMPID="" CP_UP="" SNAPPID="" RC="" PHASE=build
declare -A TIMING=()
TIMES=()
mark() { TIMING[$1]=$(($(date +%s) - ${2:-$T0})); TIMES+=("$1"); }

# ---------------------------------------------------------------------------------------------
# Logs, teardown, failure.

guest_exec() { "$SHARE/guest-exec" "$@"; }

collect_logs() {
	log "collecting logs into $LOGS"
	cp -f "$SHARE"/logs/*.log "$LOGS/" 2>/dev/null
	cp -f "$SHARE/state/progress" "$LOGS/guest-progress.log" 2>/dev/null
	cp -f "$RUN/serial.log" "$LOGS/serial.log" 2>/dev/null
	for c in etcd kube-apiserver kube-controller-manager kube-scheduler snapshot-controller; do
		cp -f "$CP/$c.log" "$LOGS/$c.log" 2>/dev/null
	done
	if [[ -f "$SHARE/state/started" && -n "$VMPID" ]] && kill -0 "$VMPID" 2>/dev/null; then
		# Container logs (carve and its sidecars) as the kubelet wrote them in the guest.
		CARVE_GUEST_EXEC_TIMEOUT=120 guest_exec "mkdir -p /share/logs/pods && cp -rL /var/log/pods/. /share/logs/pods/ 2>&1 | tail -n 3" >/dev/null 2>&1
		cp -rf "$SHARE/logs/pods" "$LOGS/" 2>/dev/null
	fi
	if [[ -n "$CP_UP" ]]; then
		{
			kubectl get nodes -o wide
			kubectl get pods -A -o wide
			kubectl describe pods -n "$NAMESPACE"
			kubectl get events -A --sort-by=.lastTimestamp
		} >"$LOGS/cluster-state.txt" 2>&1
	fi
}

print_logs() {
	local f
	for f in containerd kubelet kube-proxy; do
		[[ -s "$LOGS/$f.log" ]] || continue
		echo "----- $f (guest), last 25 lines of $LOGS/$f.log -----" >&2
		tail -n 25 "$LOGS/$f.log" >&2
	done
	for f in "$LOGS"/pods/"$NAMESPACE"_*/*/*.log; do
		[[ -s "$f" ]] || continue
		echo "----- ${f#"$LOGS"/pods/}, last 10 lines -----" >&2
		tail -n 10 "$f" >&2
	done
	if [[ -n "$CP_UP" ]]; then
		echo "----- pods and events in $NAMESPACE -----" >&2
		kubectl -n "$NAMESPACE" get pods -o wide >&2 2>&1
		kubectl -n "$NAMESPACE" get events --sort-by=.lastTimestamp 2>&1 | tail -n 20 >&2
	fi
	echo "----- all logs: $LOGS -----" >&2
}

teardown() {
	if [[ -n "$VMPID" ]] && kill -0 "$VMPID" 2>/dev/null; then
		log "stopping the VM node"
		touch "$SHARE/stop"
		local i
		for ((i = 0; i < 60; i++)); do
			kill -0 "$VMPID" 2>/dev/null || break
			sleep 1
		done
		if kill -0 "$VMPID" 2>/dev/null; then
			log "the VM did not power off within 60 s; stopping qemu"
			kill -TERM "$VMPID" 2>/dev/null
			wait "$VMPID" 2>/dev/null
		fi
	fi
	[[ -n "$VMPID" ]] && wait "$VMPID" 2>/dev/null
	VMPID=""
	if [[ -n "$SNAPPID" ]] && kill -0 "$SNAPPID" 2>/dev/null; then
		kill -TERM "$SNAPPID" 2>/dev/null
		wait "$SNAPPID" 2>/dev/null
	fi
	SNAPPID=""
	if [[ -n "$CP_UP" ]]; then
		"$ROOT/hack/k8s/cluster.sh" down "$CP" >/dev/null 2>&1 || log "WARNING: stopping the control plane failed"
		CP_UP=""
	fi
}

finish() {
	local rc=$?
	[[ -n "$RC" ]] && rc=$RC
	trap - EXIT INT TERM
	teardown
	local line="" k
	for k in "${TIMES[@]}"; do line+="${line:+, }$k ${TIMING[$k]}s"; done
	log "timing: ${line:-none} (total $(($(date +%s) - T0))s)"
	if [[ -z "$KEEP" ]]; then
		# The logs survive when they were asked for or when something failed.
		if [[ -z "${CARVE_RIG_LOGS:-}" && $rc -ne 0 ]]; then
			local keep="$ROOT/_output/cluster-logs"
			rm -rf "$keep" && mkdir -p "$(dirname "$keep")" && cp -r "$LOGS" "$keep" && log "logs kept in $keep"
		fi
		rm -rf "$RUN"
	else
		log "kept $RUN"
	fi
	exit "$rc"
}
trap finish EXIT
trap 'log "interrupted"; RC=130; exit 130' INT TERM

die() { # die CODE REASON: the rig failed before CMD ran
	local code=$1
	shift
	echo "cluster: FAIL: $*" >&2
	collect_logs
	print_logs
	echo "cluster: FAIL: $*" >&2
	RC=$code
	exit "$code"
}

# ---------------------------------------------------------------------------------------------
# Build.

for c in openssl curl socat qemu-system-x86_64; do
	command -v "$c" >/dev/null || die $E_BUILD "host command $c is missing (hack/deps.sh installs it)"
done

IMGDIR="${CARVE_CLUSTER_IMAGES:-$ROOT/_output/images}"
if [[ -z "${CARVE_CLUSTER_IMAGES:-}" ]]; then
	[[ -x "$ROOT/hack/image/build.sh" ]] || die $E_BUILD "hack/image/build.sh is missing (images are built by it)"
	log "building images: hack/image/build.sh ${IMAGES[*]}"
	CARVE_IMAGE_TAG=local "$ROOT/hack/image/build.sh" "${IMAGES[@]}" >&2 || die $E_BUILD "image build failed (hack/image/build.sh; its output above says why)"
fi
n=0
want=("$IMGDIR"/*.tar)
if [[ -z "${CARVE_CLUSTER_IMAGES:-}" ]]; then
	# Only the images the install and the scenarios use (importing is slow under emulation).
	want=()
	for i in "${IMAGES[@]}"; do
		[[ -f "$IMGDIR/$i.tar" ]] || die $E_BUILD "hack/image/build.sh made no $IMGDIR/$i.tar"
		want+=("$IMGDIR/$i.tar")
	done
fi
for f in "${want[@]}"; do
	[[ -e "$f" ]] || continue
	ln -f "$f" "$SHARE/images/" 2>/dev/null || cp "$f" "$SHARE/images/"
	n=$((n + 1))
done
((n > 0)) || die $E_BUILD "no image archives in $IMGDIR"
log "images: $n archives, $(du -shL "$SHARE/images" | cut -f1)"
mark "image build"

T=$(date +%s)
K8SBIN="$("$ROOT/hack/k8s/build.sh" | tail -n1)" && [[ -x "$K8SBIN/kubelet" && -x "$K8SBIN/snapshot-controller" ]] ||
	die $E_BUILD "building the Kubernetes programs failed (hack/k8s/build.sh)"
CTRBIN="$("$HERE/cluster/build-containerd.sh" | tail -n1)" && [[ -x "$CTRBIN/containerd" ]] ||
	die $E_BUILD "building containerd failed (hack/cluster/build-containerd.sh)"
timeout 1800 "$ROOT/hack/vm/build.sh" >&2 || die $E_BUILD "building the VM image failed (hack/vm/build.sh)"
for b in kubelet kube-proxy; do ln -f "$K8SBIN/$b" "$SHARE/bin/" 2>/dev/null || cp "$K8SBIN/$b" "$SHARE/bin/"; done
for b in containerd ctr containerd-shim-runc-v2; do ln -f "$CTRBIN/$b" "$SHARE/bin/" 2>/dev/null || cp "$CTRBIN/$b" "$SHARE/bin/"; done
cp "$HERE/cluster/guest.sh" "$SHARE/guest.sh"
mark "programs build" "$T"
export PATH="$K8SBIN:$PATH"

# ---------------------------------------------------------------------------------------------
# Control plane on the host. The API server advertises 10.0.2.100 (the guestfwd address), so the
# `kubernetes` Service's endpoint is the address the guest reaches; the ServiceAccount admission
# plugin stays on (pods get their tokens), TaintNodesByCondition stays off (no node-lifecycle
# controller here removes the not-ready taint).
PHASE=controlplane
T=$(date +%s)
export KUBECONFIG="$CP/admin.kubeconfig"
# The API server reaches the kubelet (logs, exec) as a real one does, at the node's Hostname
# address and kubelet port: the control plane runs in its own mount namespace whose /etc/hosts
# names the node 127.0.0.1, and QEMU forwards 127.0.0.1:KUBELET_PORT to the guest's kubelet.
KUBELET_PORT=""
for ((i = 0; i < 100; i++)); do
	p=$((20000 + RANDOM % 12000))
	if ! awk 'FNR > 1 { split($2, a, ":"); print a[2] }' /proc/net/tcp /proc/net/tcp6 | grep -qi "^$(printf %04X "$p")\$"; then
		KUBELET_PORT=$p
		break
	fi
done
[[ -n $KUBELET_PORT ]] || die $E_CP "no free port for the kubelet"
printf '127.0.0.1 localhost %s\n::1 localhost ip6-localhost\n' "$NODE_NAME" >"$RUN/hosts"
CARVE_K8S_BIN="$K8SBIN" CARVE_K8S_DISABLE_ADMISSION=TaintNodesByCondition \
	CARVE_K8S_APISERVER_ARGS="--advertise-address=$APISERVER_IP --endpoint-reconciler-type=lease --kubelet-preferred-address-types=Hostname --kubelet-client-certificate=$CP/pki/admin.crt --kubelet-client-key=$CP/pki/admin.key" \
	unshare -m --propagation private sh -c 'mount --bind "$1" /etc/hosts && shift && exec "$@"' sh "$RUN/hosts" \
	"$ROOT/hack/k8s/cluster.sh" up "$CP" >"$RUN/cp-up.log" 2>&1 || {
	cat "$RUN/cp-up.log" >&2
	die $E_CP "the control plane did not come up (hack/k8s/cluster.sh up)"
}
CP_UP=1
# shellcheck disable=SC1091
APISERVER_PORT="$(sed -n 's/^CARVE_K8S_APISERVER_PORT=//p' "$CP/env")"
PKI="$CP/pki"
log "control plane up: https://127.0.0.1:$APISERVER_PORT (guest: https://$APISERVER_IP:$APISERVER_PORT)"

# The snapshot API as a cluster that takes VolumeSnapshots has it (README: Snapshots): the CRDs of
# the external-snapshotter release whose csi-snapshotter components/snapshots runs, from the Go
# module (fetched through the module proxy where the cache lacks it; not copied into the
# repository; test/manifests does the same), and snapshot-controller, run here on the host next
# to kube-controller-manager as a controller of the control plane (leader election off, as theirs).
SNAP_VERSION="$(awk '$1 == "newTag:" { print $2; exit }' "$ROOT/deploy/kubernetes/components/snapshots/kustomization.yaml")"
[[ -n "$SNAP_VERSION" ]] || die $E_CP "no csi-snapshotter tag in deploy/kubernetes/components/snapshots/kustomization.yaml"
SNAP_MOD="github.com/kubernetes-csi/external-snapshotter/client/v8@$SNAP_VERSION"
SNAP_DIR="$(cd "$ROOT" && go mod download -json "$SNAP_MOD" 2>"$RUN/gomod.err" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
[[ -n "$SNAP_DIR" && -d "$SNAP_DIR/config/crd" ]] ||
	die $E_CP "go mod download $SNAP_MOD failed (the snapshot CRDs come from it): $(tail -n 3 "$RUN/gomod.err")"
snap_crds=()
for k in volumesnapshotclasses volumesnapshotcontents volumesnapshots; do
	[[ -f "$SNAP_DIR/config/crd/snapshot.storage.k8s.io_$k.yaml" ]] || die $E_CP "$SNAP_MOD has no config/crd/snapshot.storage.k8s.io_$k.yaml"
	snap_crds+=(-f "$SNAP_DIR/config/crd/snapshot.storage.k8s.io_$k.yaml")
done
kubectl apply --server-side --field-manager=carve-cluster "${snap_crds[@]}" >"$RUN/snapshot-crds.log" 2>&1 &&
	kubectl wait --for=condition=Established --timeout=60s crd/volumesnapshotclasses.snapshot.storage.k8s.io \
		crd/volumesnapshotcontents.snapshot.storage.k8s.io crd/volumesnapshots.snapshot.storage.k8s.io >>"$RUN/snapshot-crds.log" 2>&1 || {
	cat "$RUN/snapshot-crds.log" >&2
	die $E_CP "installing the snapshot CRDs ($SNAP_MOD) failed"
}
"$K8SBIN/snapshot-controller" --kubeconfig="$KUBECONFIG" --leader-election=false --v=2 >"$CP/snapshot-controller.log" 2>&1 &
SNAPPID=$!
log "snapshot CRDs of $SNAP_MOD established; snapshot-controller $SNAP_VERSION running on the host (log: $CP/snapshot-controller.log)"

# The node's credentials: kubelet as system:node:NAME (Node authorizer), kube-proxy as
# system:kube-proxy (bound to system:node-proxier by default RBAC).
client_cert() { # NAME SUBJECT
	openssl req -x509 -new -subj "$2" -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$RUN/$1.key" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -days 30 -sha256 \
		-addext basicConstraints=CA:FALSE -addext keyUsage=critical,digitalSignature \
		-addext extendedKeyUsage=clientAuth -out "$RUN/$1.crt" 2>"$RUN/openssl.err" ||
		die $E_CP "openssl: $(cat "$RUN/openssl.err")"
	# The serving cert names kubernetes (and 127.0.0.1, 10.0.0.1), not 10.0.2.100: check that name.
	cat >"$SHARE/conf/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: carve
  cluster:
    server: https://$APISERVER_IP:$APISERVER_PORT
    tls-server-name: kubernetes
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 <"$RUN/$1.crt")
    client-key-data: $(base64 -w0 <"$RUN/$1.key")
contexts:
- name: carve
  context: {cluster: carve, user: $1}
current-context: carve
KC
}
client_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
client_cert kube-proxy "/CN=system:kube-proxy"
cp "$PKI/ca.crt" "$SHARE/conf/ca.crt"
cat >"$SHARE/conf/env" <<ENV
NODE_NAME=$NODE_NAME
APISERVER_IP=$APISERVER_IP
APISERVER_PORT=$APISERVER_PORT
VG=$VG
VG_DEVICE=/dev/vda
THIN_VG=$THIN_VG
THIN_DEVICE=$THIN_DEVICE
POD_CIDR=$POD_CIDR
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
KUBELET_PORT=$KUBELET_PORT
ENV

# The exec channel's host end.
cat >"$SHARE/guest-exec" <<'GE'
#!/usr/bin/env bash
# "$CARVE_GUEST_EXEC" 'shell command': runs it with sh in the VM node as root, prints its
# stdout+stderr, exits with its code (124: no answer within CARVE_GUEST_EXEC_TIMEOUT, default
# 300 s; 125: the VM node is gone). Written by hack/cluster.sh.
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
id="$$.$RANDOM.$(date +%s%N)"
printf '%s\n' "$*" >"$dir/exec/$id.tmp" && mv "$dir/exec/$id.tmp" "$dir/exec/$id.cmd" || exit 125
deadline=$(( $(date +%s) + ${CARVE_GUEST_EXEC_TIMEOUT:-300} ))
while [[ ! -f "$dir/exec/$id.rc" ]]; do
	if [[ -e "$dir/stop" || -e "$dir/.vm-exit" ]]; then echo "guest-exec: the VM node is gone" >&2; exit 125; fi
	if (( $(date +%s) >= deadline )); then
		echo "guest-exec: no answer from the VM node within ${CARVE_GUEST_EXEC_TIMEOUT:-300} s: $*" >&2
		exit 124
	fi
	sleep 0.2
done
cat "$dir/exec/$id.out"
rc="$(cat "$dir/exec/$id.rc")"
rm -f "$dir/exec/$id".*
exit "${rc:-125}"
GE
chmod +x "$SHARE/guest-exec"
mark "control plane" "$T"

# ---------------------------------------------------------------------------------------------
# The VM node.
PHASE=boot
T=$(date +%s)
log "booting the VM node (log: $RUN/serial.log; guest progress: $SHARE/state/progress)"
CARVE_VM_APPEND="carve.tmpfsroot ${CARVE_VM_APPEND:-}" "$ROOT/hack/vm/run.sh" --share "$SHARE" --quiet --log "$RUN/serial.log" \
	--timeout "${CARVE_CLUSTER_TIMEOUT:-4800}" --mem "${CARVE_CLUSTER_MEM:-4G}" \
	--disk-size "${CARVE_CLUSTER_DISK:-16G}" --disks 1 --disks-size "${CARVE_CLUSTER_THIN_DISK:-4G}" --guestfwd "$APISERVER_IP:$APISERVER_PORT=$APISERVER_PORT" \
	--hostfwd "$KUBELET_PORT=$KUBELET_PORT" \
	-- sh /share/guest.sh >"$RUN/vm.out" 2>&1 &
VMPID=$!

last_progress=""
show_progress() {
	local p
	p="$(tail -n1 "$SHARE/state/progress" 2>/dev/null)"
	[[ -n "$p" && "$p" != "$last_progress" ]] && { log "guest: $p"; last_progress="$p"; }
}
# vm_check CODE: fail when the guest reported a failed step or the VM is gone.
vm_check() {
	if [[ -f "$SHARE/state/failed" ]]; then
		die "$1" "the VM node failed: $(cat "$SHARE/state/failed")"
	fi
	if ! kill -0 "$VMPID" 2>/dev/null; then
		wait "$VMPID"
		local vrc=$?
		VMPID=""
		tail -n 20 "$RUN/vm.out" >&2
		die "$1" "the VM stopped (hack/vm/run.sh exit $vrc) during $PHASE; last guest step: $(tail -n1 "$SHARE/state/progress" 2>/dev/null || echo none)"
	fi
	local d
	for d in "$SHARE"/state/died-*; do
		[[ -e "$d" ]] && die "$1" "$(cat "$d")"
	done
}
# wait_until CODE SECONDS WHAT CMD...: poll CMD (every 2 s) until it succeeds; print what we wait for.
wait_until() {
	local code=$1 secs=$2 what=$3 t=$(date +%s)
	shift 3
	log "waiting for $what (up to ${secs}s)"
	until "$@" >/dev/null 2>&1; do
		show_progress
		vm_check "$code"
		[[ -f "$RUN/carve-bad" ]] && die "$code" "carve did not come up: $(cat "$RUN/carve-bad")"
		(($(date +%s) - t < secs)) || die "$code" "timed out after ${secs}s waiting for $what"
		sleep 2
	done
	show_progress
	log "$what after $(($(date +%s) - t))s"
}

wait_until $E_VM "$WAIT" "containerd in the guest" test -f "$SHARE/state/containerd"
wait_until $E_VM "$WAIT" "the images imported into containerd" test -f "$SHARE/state/images-imported"
wait_until $E_NODE "$WAIT" "kubelet to start" test -f "$SHARE/state/started"
node_ready() {
	[[ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}
wait_until $E_NODE "$WAIT" "node $NODE_NAME Ready" node_ready
mark boot "$T"

# ---------------------------------------------------------------------------------------------
# carve, installed as a user would.
PHASE=install
T=$(date +%s)
if [[ -z "${CARVE_CLUSTER_NO_CARVE:-}" ]]; then
	log "installing carve: kubectl apply -k test/cluster/overlay"
	kubectl apply -k "$ROOT/test/cluster/overlay" >"$RUN/apply.log" 2>&1 || {
		cat "$RUN/apply.log" >&2
		die $E_CARVE "kubectl apply -k test/cluster/overlay failed"
	}
	# carve_pods_ready: both pods exist and every container is Ready. A container that is
	# crash-looping or cannot start writes the reason and its last log line to RUN/carve-bad,
	# which ends the wait at once (wait_until checks it).
	carve_pods_ready() {
		local out bad pod c reason last
		out="$(kubectl -n "$NAMESPACE" get pods -o jsonpath='{range .items[*]}{.metadata.name}{" "}{range .status.containerStatuses[*]}{.name}{"="}{.ready}{"/"}{.state.waiting.reason}{" "}{end}{"\n"}{end}' 2>/dev/null)" || return 1
		# RunContainerError and CreateContainerError are not final: kubelet retries, and under
		# emulation a first start can fail on a timeout (seen: the shim's stdout fifo "could not
		# be statted"); one that keeps failing ends in CrashLoopBackOff.
		bad="$(grep -oE '[a-z-]+=false/(CrashLoopBackOff|ErrImageNeverPull|ErrImagePull|ImagePullBackOff|CreateContainerConfigError|InvalidImageName)' <<<"$out" | head -n1)"
		if [[ -n "$bad" ]]; then
			pod="$(grep -F -- "$bad" <<<"$out" | head -n1 | cut -d' ' -f1)"
			c="${bad%%=*}"
			reason="${bad#*/}"
			last="$(CARVE_GUEST_EXEC_TIMEOUT=60 guest_exec "f=\$(ls -t /var/log/pods/${NAMESPACE}_${pod}_*/$c/*.log 2>/dev/null | head -n1); [ -n \"\$f\" ] && tail -n 1 \"\$f\" | cut -d' ' -f4-" 2>/dev/null)"
			echo "pod $pod container $c: $reason; last log line: ${last:-<none>}" >"$RUN/carve-bad"
			return 1
		fi
		grep -q '^carve-node-' <<<"$out" && grep -q '^carve-controller-' <<<"$out" || return 1
		# Every pod lists its containers, none of them not ready.
		awk 'NF < 2 { bad = 1 } /=false\// { bad = 1 } END { exit bad }' <<<"$out"
	}
	wait_until $E_CARVE "$WAIT" "carve-node and carve-controller pods, every container Ready" carve_pods_ready
	csinode_ok() {
		kubectl get csinode "$NODE_NAME" -o jsonpath='{range .spec.drivers[?(@.name=="carve.csi.dev")]}{.topologyKeys}{end}' | grep -q 'carve.csi.dev/node'
	}
	wait_until $E_CARVE 120 "CSINode $NODE_NAME to list carve.csi.dev with topology key carve.csi.dev/node" csinode_ok
	capacity_ok() { [[ -n "$(kubectl -n "$NAMESPACE" get csistoragecapacities -o name)" ]]; }
	wait_until $E_CARVE 180 "CSIStorageCapacity objects from the in-cluster external-provisioner" capacity_ok
	kubectl -n "$NAMESPACE" get csistoragecapacities \
		-o custom-columns=NAME:.metadata.name,CLASS:.storageClassName,CAPACITY:.capacity,TOPOLOGY:.nodeTopology.matchLabels >&2
fi
mark "cluster ready" "$T"

# ---------------------------------------------------------------------------------------------
# The command.
PHASE=cmd
T=$(date +%s)
kill -0 "$SNAPPID" 2>/dev/null || die $E_CP "snapshot-controller exited: $(tail -n 3 "$CP/snapshot-controller.log")"
log "running: $*"
export CARVE_CLUSTER=1 CARVE_GUEST_EXEC="$SHARE/guest-exec" CARVE_NODE_NAME="$NODE_NAME" CARVE_VG="$VG" \
	CARVE_THIN_VG="$THIN_VG" CARVE_THIN_STORAGECLASS="$THIN_STORAGECLASS" CARVE_SNAPSHOTCLASS="$SNAPSHOTCLASS" \
	CARVE_STORAGECLASS="$STORAGECLASS" CARVE_WORKLOAD_IMAGE="$WORKLOAD_IMAGE" CARVE_NAMESPACE="$NAMESPACE" \
	CARVE_RIG_LOGS="$LOGS"
"$@"
RC=$?
mark command "$T"
if ((RC != 0)); then
	log "the command failed (exit $RC)"
	collect_logs
	print_logs
fi
exit "$RC"
