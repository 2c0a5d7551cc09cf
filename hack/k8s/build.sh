#!/usr/bin/env bash
# hack/k8s/build.sh: build the integration rig's programs from the Go module proxy.
#
#   hack/k8s/build.sh            build (or reuse) into $CARVE_K8S_CACHE/bin and print the bin dir
#                                as the last line of stdout
#   hack/k8s/build.sh --check    exit 0 if the cached binaries are complete and current, else 1
#   hack/k8s/build.sh --force    rebuild even if the cache is current
#
# Binaries (in .cache/k8s/bin of the repository unless CARVE_K8S_CACHE is set):
#   etcd (v3.7.3), kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, and for the
#   VM node of hack/cluster.sh kubelet and kube-proxy (v1.37.2, one go build shares the compile),
#   csi-provisioner (external-provisioner v6.3.0), csi-resizer (external-resizer v2.3.0),
#   csi-attacher (external-attacher v4.13.0), csi-snapshotter and snapshot-controller
#   (external-snapshotter v8.7.0).
#
# Programs are built from small build modules under hack/k8s/tools/<name>/ (tools.go + go.mod +
# go.sum), kept out of carve's module: etcd alone, csi-provisioner alone (it does not compile
# against client-go v0.37, see tools/all/tools.go), everything else from tools/all in ONE go
# build, so the libraries the Kubernetes programs and the other sidecars share (k8s.io/api,
# client-go, gRPC, ...) compile once (those sidecars are built against the control plane's
# k8s.io/* release; each is checked to report its own version). The cache is keyed on those files and on this
# build recipe: when the key matches and every binary exists, nothing is built. A build goes into
# a fresh temporary folder that replaces bin/ only when everything built and the key file was
# written; bin/ is never left half-populated with a valid key.
#
# Environment:
#   CARVE_K8S_CACHE   cache folder (default <repo>/.cache/k8s)
#   CARVE_K8S_P       go build -p (default 2; the machines have 2 cores shared with other work)
# Cold build: was 9-15 min on 2 cores with the sidecars in separate modules; one go build now compiles 3653
# distinct packages where the separate builds compiled 5117 (not re-timed cold on a quiet machine) (2.7 GB peak memory, ~6.5 GB module + build cache);
# warm (build cache present, key changed or bin removed): about 75 s.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TOOLS="$HERE/tools"
CACHE="${CARVE_K8S_CACHE:-$ROOT/.cache/k8s}"
BIN="$CACHE/bin"
P="${CARVE_K8S_P:-2}"

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
PROVISIONER_VERSION=v6.3.0
RESIZER_VERSION=v2.3.0
ATTACHER_VERSION=v4.13.0
SNAPSHOTTER_VERSION=v8.7.0

K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=37 -X $pkg.gitTreeState=clean"
done

BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy csi-provisioner csi-resizer csi-attacher csi-snapshotter snapshot-controller)

# Bump when the recipe below changes in a way the key files do not show.
RECIPE="recipe=4 k8s=$K8S_VERSION etcd=$ETCD_VERSION provisioner=$PROVISIONER_VERSION resizer=$RESIZER_VERSION attacher=$ATTACHER_VERSION snapshotter=$SNAPSHOTTER_VERSION ldflags=$K8S_LDFLAGS cgo=0"

log() { printf '[k8s-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

compute_key() {
	{
		echo "$RECIPE"
		for d in etcd all provisioner; do
			for f in go.mod go.sum tools.go; do
				echo "== $d/$f"
				cat "$TOOLS/$d/$f"
			done
		done
	} | sha256sum | cut -d' ' -f1
}

cache_ok() {
	local key="$1"
	[[ -f "$BIN/.key" ]] || return 1
	[[ "$(cat "$BIN/.key")" == "$key" ]] || return 1
	local b
	for b in "${BINARIES[@]}"; do
		[[ -x "$BIN/$b" ]] || return 1
	done
}

MODE=build
case "${1:-}" in
"") ;;
--check) MODE=check ;;
--force) MODE=force ;;
-h | --help)
	sed -n '2,25p' "$0"
	exit 0
	;;
*) die "unknown argument '$1' (use --check, --force or nothing)" ;;
esac

command -v go >/dev/null || die "go is not on PATH"
KEY="$(compute_key)"

# --check never waits and never builds.
if [[ "$MODE" == check ]]; then
	if cache_ok "$KEY"; then
		log "cache is current ($BIN, key ${KEY:0:12})"
		echo "$BIN"
		exit 0
	fi
	log "cache is missing or stale ($BIN)"
	exit 1
fi

# One build at a time per cache (parallel test packages may all call this): wait for the lock,
# then look at the cache again (the build we waited for may have made it current).
mkdir -p "$CACHE"
if command -v flock >/dev/null; then
	exec 9>"$CACHE/.lock"
	if ! flock -n 9; then
		log "another build.sh holds $CACHE/.lock; waiting"
		flock 9
	fi
fi
if [[ "$MODE" != force ]] && cache_ok "$KEY"; then
	log "cache is current ($BIN, key ${KEY:0:12}); nothing to build"
	echo "$BIN"
	exit 0
fi

TMP="$(mktemp -d "$CACHE/bin.tmp.XXXXXX")"
chmod 755 "$TMP"
LOGDIR="$CACHE/logs"
mkdir -p "$LOGDIR"
cleanup() { rm -rf "$TMP"; }
trap cleanup EXIT

export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=readonly -p=$P"

# explain LOGFILE: print a one-line reason for a failed go command, then the log's tail.
explain() {
	local f="$1" reason="'go $2' failed"
	if grep -qE '(403|404|410) (Forbidden|Not Found|Gone)|not available|not found: |unknown revision|no matching versions|invalid version' "$f"; then
		reason="a module is not served by the module proxy (or the proxy is unreachable)"
	elif grep -qE 'dial tcp|i/o timeout|connection refused|no such host|TLS handshake' "$f"; then
		reason="the module proxy could not be reached"
	elif grep -qE 'missing go.sum entry|updates to go.mod needed|go: updates to go.sum needed' "$f"; then
		reason="the build module's go.mod/go.sum is incomplete (run 'go mod tidy' in its folder)"
	elif grep -qE 'requires go >= |toolchain not available|go: downloading go1' "$f"; then
		reason="a module needs a newer Go toolchain than $(go env GOVERSION)"
	elif grep -qE 'signal: killed|cannot allocate memory|out of memory' "$f"; then
		reason="the compiler or linker ran out of memory"
	elif grep -qE 'no space left on device' "$f"; then
		reason="the disk is full"
	fi
	log "FAILED: $reason; log: $f"
	tail -n 30 "$f" | sed 's/^/    /' >&2
}

# step NAME DIR ARGS...: run 'go ARGS' in tools/DIR, timing it and logging to $LOGDIR/NAME.log.
step() {
	local name="$1" dir="$2"
	shift 2
	local f="$LOGDIR/$name.log" t0=$SECONDS
	log "building $name (go $*)"
	if ! (cd "$TOOLS/$dir" && go "$@") >"$f" 2>&1; then
		explain "$f" "$1"
		exit 1
	fi
	log "built $name in $((SECONDS - t0)) s"
}

T0=$SECONDS
log "building into $TMP (key ${KEY:0:12}, go $(go env GOVERSION), -p=$P)"
for d in etcd all provisioner; do
	step "modules-$d" "$d" mod download
done
step etcd etcd build -ldflags "-s -w" -o "$TMP/etcd" go.etcd.io/etcd/server/v3
# One go build for the rest. -ldflags without a pattern applies to every listed package; a
# sidecar's pattern replaces it for that main package (the last match wins), so each sidecar
# gets its own main.version and no Kubernetes version stamps.
sidecar() { echo "-ldflags=$1=-s -w -X main.version=$2"; }
CSI=github.com/kubernetes-csi
step all all build -ldflags "$K8S_LDFLAGS" \
	"$(sidecar $CSI/external-resizer/v2/cmd/csi-resizer "$RESIZER_VERSION")" \
	"$(sidecar $CSI/external-attacher/v4/cmd/csi-attacher "$ATTACHER_VERSION")" \
	"$(sidecar $CSI/external-snapshotter/v8/cmd/csi-snapshotter "$SNAPSHOTTER_VERSION")" \
	"$(sidecar $CSI/external-snapshotter/v8/cmd/snapshot-controller "$SNAPSHOTTER_VERSION")" \
	-o "$TMP/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kubectl \
	k8s.io/kubernetes/cmd/kubelet \
	k8s.io/kubernetes/cmd/kube-proxy \
	$CSI/external-resizer/v2/cmd/csi-resizer \
	$CSI/external-attacher/v4/cmd/csi-attacher \
	$CSI/external-snapshotter/v8/cmd/csi-snapshotter \
	$CSI/external-snapshotter/v8/cmd/snapshot-controller
step csi-provisioner provisioner build -ldflags "-s -w -X main.version=$PROVISIONER_VERSION" \
	-o "$TMP/csi-provisioner" $CSI/external-provisioner/v6/cmd/csi-provisioner

for b in "${BINARIES[@]}"; do
	[[ -x "$TMP/$b" ]] || die "go build reported success but $b is missing"
done

# Record what was built, checking that every program runs and reports the expected version.
{
	"$TMP/etcd" --version | head -n1
	"$TMP/kube-apiserver" --version
	"$TMP/kube-controller-manager" --version
	"$TMP/kube-scheduler" --version
	"$TMP/kubectl" version --client 2>/dev/null | head -n1
	"$TMP/kubelet" --version
	"$TMP/kube-proxy" --version
	"$TMP/csi-provisioner" --version | sed 's|^.*/||'
	"$TMP/csi-resizer" --version | sed 's|^.*/||'
	"$TMP/csi-attacher" --version | sed 's|^.*/||'
	"$TMP/csi-snapshotter" --version | sed 's|^.*/||'
	"$TMP/snapshot-controller" --version | sed 's|^.*/||'
} >"$TMP/VERSIONS" 2>&1 || die "a built program does not run: $(cat "$TMP/VERSIONS")"
grep -q "${ETCD_VERSION#v}" "$TMP/VERSIONS" || die "etcd does not report $ETCD_VERSION: $(cat "$TMP/VERSIONS")"
[[ "$(grep -c "$K8S_VERSION" "$TMP/VERSIONS")" -ge 6 ]] || die "Kubernetes programs do not report $K8S_VERSION: $(cat "$TMP/VERSIONS")"
for pv in "csi-provisioner $PROVISIONER_VERSION" "csi-resizer $RESIZER_VERSION" "csi-attacher $ATTACHER_VERSION" \
	"csi-snapshotter $SNAPSHOTTER_VERSION" "snapshot-controller $SNAPSHOTTER_VERSION"; do
	set -- $pv
	v="$("$TMP/$1" --version 2>&1)"
	[[ "$v" == *"$2"* ]] || die "$1 reports '$v', not $2"
done

echo "$KEY" >"$TMP/.key"
# Swap in atomically enough: the old bin goes away first, so a crash in between leaves no bin
# (rebuilt next time), never a mixed one.
rm -rf "$BIN"
mv "$TMP" "$BIN"
trap - EXIT
log "done in $((SECONDS - T0)) s:"
sed 's/^/    /' "$BIN/VERSIONS" >&2
echo "$BIN"
