#!/usr/bin/env bash
# hack/cluster/build-containerd.sh: containerd, ctr and containerd-shim-runc-v2 for the VM node of
# hack/cluster.sh, built static (CGO_ENABLED=0, -tags no_btrfs) from containerd's Go module.
# Prints the folder with the three binaries as the last line of stdout; cached per version in
# $CARVE_CLUSTER_CACHE/containerd-<version> (default <repo>/.cache/cluster).
#
# Why not Debian's containerd: bookworm ships 1.6.20, years older than kubelet 1.37 (which
# asks the runtime for its cgroup driver through the CRI RuntimeConfig call of containerd 2.x).
# runc comes from Debian (1.1.5, in the VM image): containerd's runc shim only execs it.
# Cold build: about 2 minutes on 2 idle cores.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VERSION=v2.4.2
CACHE="${CARVE_CLUSTER_CACHE:-$ROOT/.cache/cluster}"
OUT="$CACHE/containerd-$VERSION"
NAMES=(containerd ctr containerd-shim-runc-v2)

log() { printf '[containerd-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

complete() {
	local n
	for n in "${NAMES[@]}"; do [[ -x "$OUT/$n" ]] || return 1; done
	[[ -f "$OUT/.done" ]]
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.containerd.lock"
flock 9
if complete; then
	log "cached: $OUT"
	echo "$OUT"
	exit 0
fi
command -v go >/dev/null || { log "FAILED: go is not on PATH"; exit 1; }
TMP="$(mktemp -d "$CACHE/containerd.tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
t0=$SECONDS
log "building containerd $VERSION (go install, static, -tags no_btrfs) into $OUT"
pkgs=()
for n in "${NAMES[@]}"; do pkgs+=("github.com/containerd/containerd/v2/cmd/$n@$VERSION"); done
if ! (cd "$TMP" && GOBIN="$TMP" GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-p=${CARVE_K8S_P:-2}" \
	go install -tags no_btrfs \
	-ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$VERSION" \
	"${pkgs[@]}") >"$TMP/build.log" 2>&1; then
	tail -n 30 "$TMP/build.log" >&2
	log "FAILED: go install of containerd $VERSION (module proxy unreachable or the build broke; log above)"
	exit 1
fi
"$TMP/containerd" --version | grep -q "$VERSION" || { log "FAILED: built containerd does not report $VERSION"; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT"
for n in "${NAMES[@]}"; do mv "$TMP/$n" "$OUT/$n"; done
date -Is >"$OUT/.done"
log "built in $((SECONDS - t0)) s: $(du -sh "$OUT" | cut -f1) in $OUT"
echo "$OUT"
