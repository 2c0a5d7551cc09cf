#!/usr/bin/env bash
# Builds the carve test VM: a Debian kernel (vmlinuz) and a Debian root filesystem packed as an
# initramfs (root.cpio). Both are cached in CACHE_DIR and rebuilt only when an input changes.
#
#   hack/vm/build.sh [CACHE_DIR]        (default: <repo>/.cache/vm, or $CARVE_VM_CACHE)
#
# Inputs that make up the cache key: this script, hack/vm/init, hack/vm/packages.txt and the
# version of the kernel package that linux-image-amd64 depends on (from the local apt lists).
#
# Exit codes: 0 ok (built or cached), 2 usage, 3 host prerequisites missing (commands, root),
# 4 kernel package could not be resolved or downloaded (apt lists / mirror), 5 debootstrap
# failed (mirror), 6 any other build failure. The last line on stderr of a failure says why.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SUITE="${CARVE_VM_SUITE:-bookworm}"

log() { printf '[vm-build] %s\n' "$*" >&2; }
die() { local code=$1; shift; printf '[vm-build] FAIL: %s\n' "$*" >&2; exit "$code"; }

case "${1:-}" in
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
  -*) die 2 "unknown flag $1 (usage: build.sh [CACHE_DIR])" ;;
esac
[ $# -le 1 ] || die 2 "too many arguments (usage: build.sh [CACHE_DIR])"
CACHE="${1:-${CARVE_VM_CACHE:-$REPO/.cache/vm}}"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"

# Guest kernel modules copied into the root filesystem (paths under lib/modules/<kver>/kernel;
# shell globs allowed). The second half is the Kubernetes node of hack/cluster.sh: virtio_net,
# bridge, veth, netfilter (kube-proxy, CNI ipMasq) and overlayfs (containerd's snapshotter).
MODULE_DIRS=(
  drivers/nvdimm drivers/dax drivers/acpi/nfit drivers/md drivers/virtio drivers/block
  fs/ext4 fs/jbd2 fs/mbcache.ko fs/xfs fs/9p fs/fscache fs/netfs
  net/9p lib crypto arch/x86/crypto
  'drivers/net/virtio_net.ko*' 'drivers/net/net_failover.ko*' 'net/core/failover.ko*' 'drivers/net/veth.ko*'
  net/netfilter net/ipv4/netfilter net/ipv6/netfilter net/bridge net/llc net/802 fs/overlayfs
)

t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# --- host prerequisites -------------------------------------------------------------------
missing_pkgs=()
need() { command -v "$1" >/dev/null 2>&1 || missing_pkgs+=("$2"); }
need debootstrap debootstrap
need depmod kmod
need cpio cpio
need dpkg dpkg
need apt-get apt
need apt-cache apt
need sha256sum coreutils
need timeout coreutils
need flock util-linux
if [ ${#missing_pkgs[@]} -gt 0 ]; then
  die 3 "missing host commands; install with: apt-get install -y $(printf '%s\n' "${missing_pkgs[@]}" | sort -u | tr '\n' ' ')"
fi

# One build at a time per cache dir (two suites may start at once).
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
  log "another build holds $CACHE/.build.lock; waiting (up to 30 min)"
  flock -w 1800 9 || die 6 "timed out waiting for $CACHE/.build.lock"
fi

# --- inputs and cache key -----------------------------------------------------------------
PACKAGES=()
while read -r line; do
  line="${line%%#*}"; line="$(echo "$line" | tr -d '[:space:]')"
  [ -n "$line" ] && PACKAGES+=("$line")
done <"$HERE/packages.txt"
[ ${#PACKAGES[@]} -gt 0 ] || die 6 "$HERE/packages.txt lists no packages"
INCLUDE="$(IFS=,; echo "${PACKAGES[*]}")"

files_hash="$(cat "$HERE/build.sh" "$HERE/init" "$HERE/packages.txt" | sha256sum | cut -d' ' -f1)"

KPKG="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}' || true)"
KVERSION=""
if [ -n "$KPKG" ]; then
  KVERSION="$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | awk '/^Version:/{print $2; exit}' || true)"
fi
if [ -z "$KPKG" ] || [ -z "$KVERSION" ]; then
  if [ -s "$CACHE/vmlinuz" ] && [ -s "$CACHE/root.cpio" ] && [ -f "$CACHE/files.sha256" ] &&
     [ "$(cat "$CACHE/files.sha256")" = "$files_hash" ]; then
    log "WARNING: cannot resolve linux-image-amd64 from the apt lists (run apt-get update);"
    log "         using the cached build of $(cat "$CACHE/kernel-package" 2>/dev/null || echo '?')"
    exit 0
  fi
  die 4 "cannot resolve the kernel package: 'apt-cache depends linux-image-amd64' found no linux-image-<version>-amd64 (run 'apt-get update' first)"
fi

key="$(printf '%s\n%s=%s\n' "$files_hash" "$KPKG" "$KVERSION" | sha256sum | cut -d' ' -f1)"
if [ -s "$CACHE/vmlinuz" ] && [ -s "$CACHE/root.cpio" ] && [ -f "$CACHE/key" ] &&
   [ "$(cat "$CACHE/key")" = "$key" ]; then
  log "cached: $CACHE/{vmlinuz,root.cpio} ($KPKG=$KVERSION, key ${key:0:12}) [$(elapsed)s]"
  exit 0
fi
[ "$(id -u)" = 0 ] || die 3 "building the VM root filesystem needs root (debootstrap, mknod)"

log "building into $CACHE (key ${key:0:12}: $KPKG=$KVERSION, packages: $INCLUDE)"

# The Debian mirror apt on this machine uses (override with CARVE_VM_MIRROR).
find_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822: first stanza whose Suites has the suite itself (not -security/-updates).
    awk -v suite="$SUITE" '
      BEGIN{RS=""; FS="\n"}
      {
        uris=""; ok=0; types=0
        for (i=1;i<=NF;i++) {
          if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uris=u[1] }
          if ($i ~ /^Types:/ && $i ~ /[ \t]deb([ \t]|$)/) types=1
          if ($i ~ /^Suites:/) { n=split($i, s, /[ \t]+/); for (j=2;j<=n;j++) if (s[j]==suite) ok=1 }
        }
        if (ok && types && uris!="") { print uris; exit }
      }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$SUITE" '$1=="deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
      if ($(i+1)==suite) { print $i; exit } }' "$f"
  done
}
MIRROR="${CARVE_VM_MIRROR:-$(find_mirror | head -n1)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
log "mirror: $MIRROR"

WORK="$CACHE/build.tmp"
rm -rf "$WORK"
mkdir -p "$WORK" "$CACHE/debs" "$CACHE/debootstrap-cache"
cleanup() { [ -n "${CARVE_VM_KEEP_WORK:-}" ] && { log "kept $WORK"; return; }; rm -rf "$WORK"; }
trap cleanup EXIT

# --- kernel --------------------------------------------------------------------------------
t=$(date +%s)
deb="$(ls "$CACHE/debs/${KPKG}_$(echo "$KVERSION" | sed 's/^[0-9]*://')_amd64.deb" 2>/dev/null || true)"
if [ -z "$deb" ]; then
  log "downloading $KPKG=$KVERSION"
  rm -f "$CACHE/debs/${KPKG}_"*.deb
  if ! (cd "$CACHE/debs" && timeout 900 apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KVERSION" >&2); then
    die 4 "apt-get download $KPKG=$KVERSION failed (mirror unreachable or stale apt lists: run apt-get update)"
  fi
  deb="$(ls "$CACHE/debs/${KPKG}_"*_amd64.deb | head -n1)"
fi
mkdir -p "$WORK/kernel"
dpkg -x "$deb" "$WORK/kernel" || die 6 "dpkg -x $deb failed"
KVER="$(ls "$WORK/kernel/lib/modules" | head -n1)"
[ -n "$KVER" ] && [ -f "$WORK/kernel/boot/vmlinuz-$KVER" ] || die 6 "$deb has no boot/vmlinuz-<kver> and lib/modules/<kver>"
log "kernel $KVER extracted [$(( $(date +%s) - t ))s]"

# --- root filesystem -----------------------------------------------------------------------
t=$(date +%s)
ROOT="$WORK/rootfs"
log "debootstrap --variant=minbase $SUITE (this takes a while)"
if ! timeout 1500 debootstrap --variant=minbase --include="$INCLUDE" \
      --cache-dir="$CACHE/debootstrap-cache" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
  tail -n 30 "$WORK/debootstrap.log" >&2
  [ -f "$ROOT/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOT/debootstrap/debootstrap.log" >&2
  die 5 "debootstrap $SUITE from $MIRROR failed (mirror unreachable or package list wrong; see above)"
fi
log "debootstrap done [$(( $(date +%s) - t ))s]"

t=$(date +%s)
# Kernel modules: only what the tests need.
KSRC="$WORK/kernel/lib/modules/$KVER"
KDST="$ROOT/lib/modules/$KVER"
mkdir -p "$KDST/kernel"
for pat in "${MODULE_DIRS[@]}"; do
  found=""
  for src in "$KSRC/kernel/"$pat; do
    [ -e "$src" ] || continue
    found=1
    d="${src#"$KSRC/kernel/"}"
    mkdir -p "$KDST/kernel/$(dirname "$d")"
    cp -a "$src" "$KDST/kernel/$d"
  done
  [ -n "$found" ] || log "note: module path $pat not in $KVER"
done
cp -a "$KSRC"/modules.order "$KSRC"/modules.builtin "$KSRC"/modules.builtin.modinfo "$KDST/" 2>/dev/null || true
depmod -b "$ROOT" "$KVER" || die 6 "depmod -b rootfs $KVER failed"
for m in dm_mod dm_thin_pool nd_pmem dax_pmem nfit virtio_blk virtio_pci 9p 9pnet_virtio ext4 xfs loop \
         virtio_net veth bridge br_netfilter overlay nf_conntrack nf_nat nf_tables nft_compat xt_conntrack; do
  # modinfo resolves module names (dm_mod -> dm-mod.ko) and knows built-in ones.
  if ! modinfo -b "$ROOT" -k "$KVER" -n "$m" >/dev/null 2>&1; then
    die 6 "kernel module $m is neither copied nor built in ($KVER); extend MODULE_DIRS in build.sh"
  fi
done

# LVM without udevd: lvm must create device nodes itself and not wait for udev.
LVMCONF="$ROOT/etc/lvm/lvm.conf"
[ -f "$LVMCONF" ] || die 6 "$LVMCONF missing (is lvm2 in packages.txt?)"
sed -i -E \
  -e 's/^([[:space:]]*)#?[[:space:]]*udev_sync = [01]/\1udev_sync = 0/' \
  -e 's/^([[:space:]]*)#?[[:space:]]*udev_rules = [01]/\1udev_rules = 0/' \
  -e 's/^([[:space:]]*)#?[[:space:]]*obtain_device_list_from_udev = [01]/\1obtain_device_list_from_udev = 0/' \
  "$LVMCONF"
for k in udev_sync udev_rules obtain_device_list_from_udev; do
  [ "$(grep -cE "^[[:space:]]*$k[[:space:]]*=" "$LVMCONF")" = 1 ] &&
    grep -qE "^[[:space:]]*$k = 0\$" "$LVMCONF" || die 6 "lvm.conf: could not set $k = 0 (format changed?)"
done

# The guest /init and mount points.
install -m 0755 "$HERE/init" "$ROOT/init"
mkdir -p "$ROOT/share" "$ROOT/run" "$ROOT/tmp" "$ROOT/dev" "$ROOT/proc" "$ROOT/sys"
# The kernel opens /dev/console of the initramfs for init's stdin/stdout/stderr.
[ -c "$ROOT/dev/console" ] || mknod -m 0600 "$ROOT/dev/console" c 5 1
[ -c "$ROOT/dev/null" ] || mknod -m 0666 "$ROOT/dev/null" c 1 3
echo carve-vm >"$ROOT/etc/hostname"
: >"$ROOT/etc/fstab"

# Shrink: docs, man pages, locales, apt caches, debootstrap leftovers.
rm -rf "$ROOT"/usr/share/{doc,man,info,locale,lintian,linda} "$ROOT"/var/cache/apt/* \
       "$ROOT"/var/lib/apt/lists/* "$ROOT"/debootstrap "$ROOT"/var/log/*
mkdir -p "$ROOT/var/cache/apt/archives/partial" "$ROOT/var/lib/apt/lists/partial"
# The initramfs is unpacked at every boot (~1 s per 20 MB under TCG): drop what no test uses.
# python3 (36 MB with its stdlib) only serves xfs_scrub_all; libicu (36 MB) only xfs_scrub
# (online fsck); gconv (8 MB) only iconv charset conversions.
rm -rf "$ROOT"/usr/lib/python3* "$ROOT"/usr/bin/python3* "$ROOT"/usr/bin/py3* "$ROOT"/usr/bin/pydoc3* \
       "$ROOT"/usr/bin/pdb3* "$ROOT"/usr/bin/pygettext3* "$ROOT"/usr/sbin/xfs_scrub* \
       "$ROOT"/usr/lib/x86_64-linux-gnu/libicu* "$ROOT"/usr/share/icu \
       "$ROOT"/usr/lib/x86_64-linux-gnu/gconv
# CNI plugins: the node uses bridge, host-local and loopback (portmap for hostPort); the other
# twenty (about 60 MB) go.
for f in "$ROOT"/usr/lib/cni/*; do
  case "$(basename "$f")" in bridge|host-local|loopback|portmap) ;; *) rm -f "$f" ;; esac
done
# Every remaining program must still find its libraries.
broken="$(chroot "$ROOT" sh -c 'for f in /usr/bin/* /usr/sbin/*; do
  [ -f "$f" ] && [ -x "$f" ] && ldd "$f" 2>/dev/null | grep -q "not found" && echo "$f"; done' || true)"
[ -z "$broken" ] || die 6 "programs with missing libraries after shrinking the rootfs: $(echo $broken)"

# Sanity: the tools the test suites rely on.
for c in sh mount umount blkid mkfs.ext4 resize2fs mkfs.xfs xfs_growfs lvm pvcreate vgcreate lvcreate \
         dmsetup ndctl modprobe losetup findmnt lsblk wipefs sync tee mkfifo dmesg ip \
         runc iptables iptables-restore /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback; do
  chroot "$ROOT" sh -c "command -v $c" >/dev/null 2>&1 || die 6 "guest root lacks '$c' (extend packages.txt)"
done

# Pack: kernel + initramfs (uncompressed newc; decompression under TCG is slower than copying).
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$WORK/root.cpio" ||
  die 6 "cpio failed"
log "root filesystem packed: $(du -sh "$WORK/root.cpio" | cut -f1) [$(( $(date +%s) - t ))s]"

rm -f "$CACHE/key" "$CACHE/files.sha256"
mv -f "$WORK/vmlinuz" "$CACHE/vmlinuz"
mv -f "$WORK/root.cpio" "$CACHE/root.cpio"
echo "$KPKG=$KVERSION ($KVER)" >"$CACHE/kernel-package"
echo "$files_hash" >"$CACHE/files.sha256"
echo "$key" >"$CACHE/key"   # written last: a half-finished build never matches
log "built $CACHE/vmlinuz and $CACHE/root.cpio in $(elapsed)s"
