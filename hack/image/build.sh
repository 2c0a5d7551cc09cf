#!/usr/bin/env bash
# hack/image/build.sh: build carve's container images as OCI archives, offline, without a
# Docker engine.
#
#   hack/image/build.sh [NAME...]     (no NAME: every image)
#
# NAMEs and the reference each archive carries (what `ctr -n k8s.io images import` registers):
#   carve-csi                  ghcr.io/carve-csi/carve-csi:$CARVE_IMAGE_TAG
#                              (debootstrap bookworm minbase + deploy/image/packages.txt, a static
#                              carve-csi and deploy/image/lvm.conf; ENTRYPOINT as the Dockerfile)
#   csi-provisioner, csi-resizer, csi-attacher, csi-snapshotter
#                              registry.k8s.io/sig-storage/NAME:<tag>, built from source at that
#                              tag by hack/k8s/build.sh
#   csi-node-driver-registrar, livenessprobe
#                              registry.k8s.io/sig-storage/NAME:<tag>: carve's STAND-INS
#                              (test/standins), not the real sidecars (not served here)
#   pause                      registry.k8s.io/pause:3.10.1 (test/standins/pause)
#   busybox                    carve.local/busybox:<version> (Debian's busybox-static + applet links)
# Sidecar tags come from deploy/kubernetes/base/kustomization.yaml (csi-attacher's, absent there,
# from hack/k8s/build.sh; csi-snapshotter's from deploy/kubernetes/components/snapshots). Archives go to _output/images/NAME.tar, and _output/images/images.txt
# lists `NAME REF FILE SIZE_BYTES` per image. Every archive is read back (go-containerregistry:
# digests, config, files; plus `skopeo inspect` when skopeo is installed) before it is used.
#
# Cache: .cache/images/NAME/ holds each archive with the key of its inputs (program bytes, package
# list, lvm.conf, busybox-static version, this script, hack/image/*): an image is rebuilt only when
# its key changes. The debootstrap root filesystem is cached on its own (key: packages.txt, suite,
# BASE_RECIPE), so a new carve-csi binary costs a small layer, not a debootstrap.
#
# Environment:
#   CARVE_IMAGE_TAG     carve-csi's tag (default: git describe --tags --always --dirty)
#   CARVE_IMAGE_CACHE   cache folder (default <repo>/.cache/images)
#   CARVE_IMAGE_MIRROR  Debian mirror for debootstrap (default: the one apt on this machine uses)
#   CARVE_K8S_CACHE     passed on to hack/k8s/build.sh (sidecar binaries)
# Needs: go, tar, gzip, sha256sum, flock; for carve-csi also root and debootstrap; for busybox
# apt-get (download only). Exits non-zero with the reason on the last line.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${CARVE_IMAGE_CACHE:-$ROOT/.cache/images}"
OUT="$ROOT/_output/images"
SUITE=bookworm
# Bump when the root filesystem recipe (debootstrap flags, what is removed) changes.
BASE_RECIPE=1
PAUSE_REF=registry.k8s.io/pause:3.10.1
PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ALL=(carve-csi csi-provisioner csi-resizer csi-attacher csi-snapshotter csi-node-driver-registrar livenessprobe pause busybox)

log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

case "${1:-}" in
-h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
esac
NAMES=("$@")
[[ ${#NAMES[@]} -gt 0 ]] || NAMES=("${ALL[@]}")
for n in "${NAMES[@]}"; do
	[[ " ${ALL[*]} " == *" $n "* ]] || die "unknown image '$n' (known: ${ALL[*]})"
done
for c in go tar gzip sha256sum flock; do
	command -v "$c" >/dev/null || die "'$c' is not on PATH"
done

mkdir -p "$CACHE" "$OUT"
CACHE="$(cd "$CACHE" && pwd)"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
	log "another build holds $CACHE/.lock; waiting"
	flock 9
fi
WORK="$(mktemp -d "$CACHE/work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export GOTOOLCHAIN=local CGO_ENABLED=0

# tag_of IMAGE [KUSTOMIZATION]: the newTag a kustomization (default deploy/kubernetes/base's)
# pins for IMAGE.
tag_of() {
	awk -v img="$1" '$1 == "-" && $2 == "name:" { cur = $3; next }
		$1 == "newTag:" && cur == img { print $2; exit }' "${2:-$ROOT/deploy/kubernetes/base/kustomization.yaml}"
}
sidecar_ref() {
	local tag
	tag="$(tag_of "registry.k8s.io/sig-storage/$1")"
	if [[ -z "$tag" && "$1" == csi-attacher ]]; then
		tag="$(sed -n 's/^ATTACHER_VERSION=//p' "$ROOT/hack/k8s/build.sh")"
	fi
	if [[ -z "$tag" && "$1" == csi-snapshotter ]]; then
		tag="$(tag_of "registry.k8s.io/sig-storage/$1" "$ROOT/deploy/kubernetes/components/snapshots/kustomization.yaml")"
	fi
	[[ -n "$tag" ]] || die "no tag for registry.k8s.io/sig-storage/$1 in deploy/kubernetes/base/kustomization.yaml"
	echo "registry.k8s.io/sig-storage/$1:$tag"
}

# mklayer DIR OUT.tar: one layer from a staged tree, reproducibly (sorted names, owned by root
# unless KEEP_OWNER=1, mtimes 0 unless KEEP_MTIME=1), uncompressed: imagetool compresses it with
# zstd (decompressing gzip was 3/4 of `ctr images import` on the emulated node).
mklayer() {
	local dir="$1" out="$2" opts=(--sort=name --numeric-owner)
	[[ "${KEEP_OWNER:-0}" == 1 ]] || opts+=(--owner=0 --group=0)
	[[ "${KEEP_MTIME:-0}" == 1 ]] || opts+=(--mtime=@0)
	(cd "$dir" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
		tar -c -f - "${opts[@]}" --no-recursion -T -) >"$out.tmp"
	mv "$out.tmp" "$out"
}

# The image tool (go-containerregistry), built from its own module.
IMAGETOOL="$WORK/imagetool"
(cd "$HERE" && go build -mod=readonly -buildvcs=false -o "$IMAGETOOL" .) ||
	die "building hack/image (imagetool) failed"
TOOL_SUM="$(cat "$HERE/build.sh" "$HERE/main.go" "$HERE/go.mod" "$HERE/go.sum" | sha256sum | cut -c1-64)"

# gobuild OUT PKG [LDFLAGS]: a static, reproducible program from carve's module.
gobuild() {
	(cd "$ROOT" && go build -mod=readonly -buildvcs=false -ldflags "-s -w ${3:-}" -o "$1" "$2") ||
		die "go build $2 failed"
}

# --- the debootstrap base of carve-csi --------------------------------------------------------
find_mirror() {
	# Same lookup as hack/vm/build.sh: the first deb source of $SUITE in apt's configuration.
	local f
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -f "$f" ]] || continue
		awk -v suite="$SUITE" 'BEGIN{RS=""; FS="\n"}
			{ uris=""; ok=0; types=0
			  for (i=1;i<=NF;i++) {
			    if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uris=u[1] }
			    if ($i ~ /^Types:/ && $i ~ /[ \t]deb([ \t]|$)/) types=1
			    if ($i ~ /^Suites:/) { n=split($i, s, /[ \t]+/); for (j=2;j<=n;j++) if (s[j]==suite) ok=1 } }
			  if (ok && types && uris!="") { print uris; exit } }' "$f"
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -f "$f" ]] || continue
		awk -v suite="$SUITE" '$1=="deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
			if ($(i+1)==suite) { print $i; exit } }' "$f"
	done
}

# The programs carve-csi runs (pkg/exec callers, k8s.io/mount-utils), the ones lvm runs for it
# (thin_check, when it activates a thin pool) and the ones its manifests use (nsenter). check_libraries ROOT: each is in ROOT and finds every shared library it links,
# so that a pruning step that removes too much fails here, not on a node.
RUNTIME_PROGRAMS="lvm thin_check ndctl mkfs.ext4 mkfs.ext3 mkfs.xfs resize2fs xfs_growfs e2fsck fsck fsck.ext4 fsck.xfs
	blkid blkdiscard lsblk wipefs mount umount nsenter sh cat"
check_libraries() {
	local r="$1" p path missing
	for p in $RUNTIME_PROGRAMS; do
		path="$(chroot "$r" /bin/sh -c "command -v $p" 2>/dev/null)" ||
			die "the carve-csi root filesystem has no $p (deploy/image/packages.txt, deploy/image/prune.sh)"
		missing="$(chroot "$r" ldd "$path" 2>&1 | grep 'not found' | awk '{print $1}' | paste -sd' ')" || true
		[[ -z "$missing" ]] || die "$p ($path) in the carve-csi root filesystem misses $missing (deploy/image/prune.sh removed too much?)"
	done
}

# base_layer: prints the cached root filesystem layer, building it when its inputs changed.
base_layer() {
	local pkgs key layer rootfs mirror t0=$SECONDS
	pkgs="$(sed 's/#.*//' "$ROOT/deploy/image/packages.txt" | tr -s ' \t\n' '\n' | sed '/^$/d' | paste -sd, -)"
	[[ -n "$pkgs" ]] || die "deploy/image/packages.txt lists no packages"
	key="$(printf 'suite=%s recipe=%s packages=%s prune=%s\n' "$SUITE" "$BASE_RECIPE" "$pkgs" \
		"$(sha256sum <"$ROOT/deploy/image/prune.sh" | cut -c1-64)" | sha256sum | cut -c1-16)"
	layer="$CACHE/base/rootfs-$key.tar"
	if [[ -s "$layer" ]]; then
		echo "$layer"
		return
	fi
	[[ "$(id -u)" == 0 ]] || die "the carve-csi root filesystem needs root (debootstrap); run as root"
	command -v debootstrap >/dev/null || PATH="$PATH:/usr/sbin:/sbin" command -v debootstrap >/dev/null ||
		die "debootstrap is missing (apt-get install debootstrap)"
	mirror="${CARVE_IMAGE_MIRROR:-$(find_mirror | head -n1)}"
	mirror="${mirror:-http://deb.debian.org/debian}"
	rootfs="$WORK/rootfs"
	mkdir -p "$CACHE/base" "$CACHE/debootstrap-cache"
	log "debootstrap --variant=minbase $SUITE from $mirror with $pkgs"
	if ! PATH="$PATH:/usr/sbin:/sbin" timeout 1500 debootstrap --variant=minbase --include="$pkgs" \
		--cache-dir="$CACHE/debootstrap-cache" "$SUITE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1; then
		tail -n 20 "$WORK/debootstrap.log" >&2
		die "debootstrap $SUITE from $mirror failed (mirror unreachable or a package in deploy/image/packages.txt unknown)"
	fi
	# What carve never runs (deploy/image/prune.sh, shared with the Dockerfile), and what the
	# container runtime provides (device nodes, the host's resolv.conf and hostname).
	sh "$ROOT/deploy/image/prune.sh" "$rootfs" || die "deploy/image/prune.sh failed"
	rm -rf "$rootfs"/debootstrap "$rootfs"/dev/* "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname
	check_libraries "$rootfs"
	KEEP_OWNER=1 KEEP_MTIME=1 mklayer "$rootfs" "$layer.part"
	mv "$layer.part" "$layer"
	rm -f $(ls "$CACHE"/base/rootfs-*.tar | grep -v "$key") 2>/dev/null || true
	log "root filesystem layer built in $((SECONDS - t0)) s: $(du -h "$layer" | cut -f1) uncompressed"
	echo "$layer"
}

# --- one image ---------------------------------------------------------------------------------
# verify_archive NAME REF ARCHIVE VERIFY_ARGS...: read a new archive back as a user's tool would.
verify_archive() {
	local name="$1" ref="$2" archive="$3"
	shift 3
	local d="$WORK/verify-$name"
	mkdir -p "$d"
	tar -x -m -f "$archive" -C "$d" || die "$name: the archive does not unpack"
	"$IMAGETOOL" verify --layout "$d" --ref "$ref" "$@" >&2 || die "$name: the archive does not read back as built"
	rm -rf "$d"
	if command -v skopeo >/dev/null; then
		skopeo inspect "oci-archive:$archive" >/dev/null 2>"$WORK/skopeo.log" ||
			die "$name: skopeo inspect oci-archive:$archive failed: $(tail -n1 "$WORK/skopeo.log")"
	fi
}

declare -A REFS=() BUILT=()
# build_image NAME REF KEYTEXT -- PACK_ARGS... -- VERIFY_ARGS...: reuse the cached archive when
# its key matches, else run stage_NAME to prepare layers and pack.
build_image() {
	local name="$1" ref="$2" keytext="$3" t0=$SECONDS
	shift 3
	local key dir="$CACHE/$name"
	key="$(printf '%s\nref=%s\ntool=%s\n' "$keytext" "$ref" "$TOOL_SUM" | sha256sum | cut -c1-64)"
	mkdir -p "$dir"
	if [[ -s "$dir/$name.tar" && "$(cat "$dir/key" 2>/dev/null)" == "$key" ]]; then
		BUILT[$name]="cached"
	else
		rm -f "$dir/key"
		local pack=() verify=() seen=0 a
		for a in "$@"; do
			if [[ "$a" == -- ]]; then seen=1; continue; fi
			if [[ $seen == 0 ]]; then pack+=("$a"); else verify+=("$a"); fi
		done
		"stage_${name//-/_}" "$WORK/$name"
		local layers=() l
		for l in "$WORK/$name".layer*.tar; do layers+=(--layer "$l"); done
		[[ -n "${BASE_LAYER:-}" && "$name" == carve-csi ]] && layers=(--layer "$BASE_LAYER" "${layers[@]}")
		"$IMAGETOOL" pack --out "$WORK/$name.tar" --ref "$ref" --env "$PATH_ENV" "${layers[@]}" "${pack[@]}" ||
			die "$name: packing the OCI archive failed"
		verify_archive "$name" "$ref" "$WORK/$name.tar" "${verify[@]}"
		mv "$WORK/$name.tar" "$dir/$name.tar"
		echo "$ref" >"$dir/ref"
		echo "$key" >"$dir/key" # last: a half-finished build never matches
		BUILT[$name]="built in $((SECONDS - t0)) s"
	fi
	ln -f "$dir/$name.tar" "$OUT/$name.tar" 2>/dev/null || cp -f "$dir/$name.tar" "$OUT/$name.tar"
	REFS[$name]="$ref"
}

# stage_single DIR.layer1 BIN NAME: a one-program image: /NAME and an empty /tmp.
stage_single() {
	local root="$1.root"
	mkdir -p "$root/tmp"
	chmod 1777 "$root/tmp"
	install -m 0755 "$2" "$root/$3"
	mklayer "$root" "$1.layer1.tar"
}

sum() { sha256sum "$1" | cut -c1-64; }

# --- the images ----------------------------------------------------------------------------------
# carve-csi
build_carve() {
	local tag="${CARVE_IMAGE_TAG:-$(cd "$ROOT" && git describe --tags --always --dirty 2>/dev/null || echo dev)}"
	BASE_LAYER="$(base_layer)"
	gobuild "$WORK/carve-csi.bin" ./cmd/carve-csi "-X main.version=$tag"
	build_image carve-csi "ghcr.io/carve-csi/carve-csi:$tag" \
		"base=$(basename "$BASE_LAYER") bin=$(sum "$WORK/carve-csi.bin") lvmconf=$(sum "$ROOT/deploy/image/lvm.conf")" \
		--entrypoint /usr/local/bin/carve-csi \
		-- --entrypoint /usr/local/bin/carve-csi --file /etc/lvm/lvm.conf --file /sbin/lvm \
		--file /usr/bin/ndctl --file /sbin/mkfs.ext4 --file /sbin/mkfs.xfs --file /usr/bin/nsenter \
		--file /bin/mount --file /sbin/blkid
}
stage_carve_csi() {
	local root="$1.root"
	mkdir -p "$root/usr/local/bin" "$root/etc/lvm"
	install -m 0755 "$WORK/carve-csi.bin" "$root/usr/local/bin/carve-csi"
	install -m 0644 "$ROOT/deploy/image/lvm.conf" "$root/etc/lvm/lvm.conf"
	mklayer "$root" "$1.layer1.tar"
}

# The sidecars built from source (hack/k8s/build.sh); the binary must report the tag it gets.
K8S_BIN=""
build_sidecar() {
	local name="$1" ref bin
	ref="$(sidecar_ref "$name")"
	if [[ -z "$K8S_BIN" ]]; then
		K8S_BIN="$("$ROOT/hack/k8s/build.sh" | tail -n1)" || die "hack/k8s/build.sh failed (sidecar binaries)"
	fi
	bin="$K8S_BIN/$name"
	[[ -x "$bin" ]] || die "$bin missing after hack/k8s/build.sh"
	"$bin" --version 2>&1 | grep -qF "${ref##*:}" ||
		die "$bin reports '$("$bin" --version 2>&1 | head -n1)', not ${ref##*:}"
	cp "$bin" "$WORK/$name.bin"
	build_image "$name" "$ref" "bin=$(sum "$bin")" --entrypoint "/$name" -- --entrypoint "/$name"
}
stage_csi_provisioner() { stage_single "$1" "$WORK/csi-provisioner.bin" csi-provisioner; }
stage_csi_resizer() { stage_single "$1" "$WORK/csi-resizer.bin" csi-resizer; }
stage_csi_attacher() { stage_single "$1" "$WORK/csi-attacher.bin" csi-attacher; }
stage_csi_snapshotter() { stage_single "$1" "$WORK/csi-snapshotter.bin" csi-snapshotter; }

# carve's stand-ins, tagged with the real sidecars' names so the manifests stay as shipped.
build_standin() {
	local name="$1" pkg="$2" ref
	ref="$(sidecar_ref "$name")"
	gobuild "$WORK/$name.bin" "$pkg"
	build_image "$name" "$ref" "bin=$(sum "$WORK/$name.bin")" --entrypoint "/$name" \
		--label "org.opencontainers.image.description=carve's STAND-IN for $name ($pkg), not the real kubernetes-csi sidecar" \
		-- --entrypoint "/$name"
}
stage_csi_node_driver_registrar() { stage_single "$1" "$WORK/csi-node-driver-registrar.bin" csi-node-driver-registrar; }
stage_livenessprobe() { stage_single "$1" "$WORK/livenessprobe.bin" livenessprobe; }

build_pause() {
	gobuild "$WORK/pause.bin" ./test/standins/pause
	build_image pause "$PAUSE_REF" "bin=$(sum "$WORK/pause.bin")" --entrypoint /pause \
		--label "org.opencontainers.image.description=carve's own pause (test/standins/pause)" -- --entrypoint /pause
}
stage_pause() { stage_single "$1" "$WORK/pause.bin" pause; }

# busybox: Debian's busybox-static with a link per applet, /etc/passwd and /etc/group for id.
BUSYBOX_DEB=""
build_busybox() {
	local version deb
	version="$(apt-cache policy busybox-static 2>/dev/null | awk '/Candidate:/ { print $2 }')"
	[[ -n "$version" && "$version" != "(none)" ]] ||
		die "busybox-static is unknown to apt (run apt-get update)"
	local upstream="${version#*:}"
	upstream="${upstream%%-*}"
	mkdir -p "$CACHE/debs"
	deb="$(ls "$CACHE/debs/busybox-static_${version#*:}_amd64.deb" 2>/dev/null || true)"
	if [[ -z "$deb" ]]; then
		log "downloading busybox-static=$version"
		rm -f "$CACHE"/debs/busybox-static_*.deb
		(cd "$CACHE/debs" && timeout 600 apt-get download -q -o APT::Sandbox::User=root "busybox-static=$version" >&2) ||
			die "apt-get download busybox-static=$version failed (mirror unreachable or stale apt lists)"
		deb="$(ls "$CACHE"/debs/busybox-static_*_amd64.deb | head -n1)"
	fi
	BUSYBOX_DEB="$deb"
	build_image busybox "carve.local/busybox:$upstream" "deb=$(sum "$deb")" --cmd sh \
		-- --cmd sh --file /bin/sh --file /bin/df --file /bin/dd --file /bin/sleep --file /bin/cat \
		--file /usr/bin/id --file /bin/mount --file /bin/ls --file /etc/passwd
}
stage_busybox() {
	local root="$1.root" x="$1.deb" a
	mkdir -p "$x" "$root/bin" "$root/etc" "$root/tmp" "$root/root"
	chmod 1777 "$root/tmp"
	dpkg-deb -x "$BUSYBOX_DEB" "$x" || die "dpkg-deb -x $BUSYBOX_DEB failed"
	install -m 0755 "$x/bin/busybox" "$root/bin/busybox"
	# The applet list from the binary itself (paths like usr/bin/id), each a link to /bin/busybox.
	for a in $("$root/bin/busybox" --list-full); do
		[[ "$a" == bin/busybox ]] && continue
		mkdir -p "$root/$(dirname "$a")"
		ln -sf /bin/busybox "$root/$a"
	done
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
	mklayer "$root" "$1.layer1.tar"
}

T0=$SECONDS
for n in "${NAMES[@]}"; do
	case "$n" in
	carve-csi) build_carve ;;
	csi-provisioner | csi-resizer | csi-attacher | csi-snapshotter) build_sidecar "$n" ;;
	csi-node-driver-registrar) build_standin "$n" ./test/standins/registrar ;;
	livenessprobe) build_standin "$n" ./test/standins/livenessprobe ;;
	pause) build_pause ;;
	busybox) build_busybox ;;
	esac
done

# images.txt: this run's images replace their lines; others stay while their archive exists.
LIST="$OUT/images.txt"
{
	for n in "${ALL[@]}"; do
		if [[ -n "${REFS[$n]:-}" ]]; then
			echo "$n ${REFS[$n]} $OUT/$n.tar $(stat -c %s "$OUT/$n.tar")"
		elif [[ -f "$LIST" && -f "$OUT/$n.tar" ]]; then
			awk -v n="$n" '$1 == n' "$LIST"
		fi
	done
} >"$LIST.tmp"
mv "$LIST.tmp" "$LIST"
for n in "${NAMES[@]}"; do
	printf '[image] %-26s %-64s %7s  (%s)\n' "$n" "${REFS[$n]}" "$(du -h --apparent-size "$OUT/$n.tar" | cut -f1)" "${BUILT[$n]}"
done
log "done in $((SECONDS - T0)) s; list: $LIST"
