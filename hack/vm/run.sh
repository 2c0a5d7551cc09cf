#!/usr/bin/env bash
# Runs one command inside the carve test VM (QEMU/TCG, Debian bookworm, device-mapper, an
# emulated NVDIMM, a fresh virtio disk, the host dir --share at /share) and exits with its code.
#
# usage: hack/vm/run.sh [flags] -- COMMAND [ARG...]
#   --share DIR         host dir mounted read-write at /share in the guest (default: a temp dir)
#   --timeout SECONDS   limit for boot + command + power-off (default 900)
#   --disk-size SIZE    sparse raw disk, fresh each boot, /dev/vda (default 16G)
#   --nvdimm-size SIZE  sparse NVDIMM backing file, fresh each boot (default 4G)
#   --disks N           N more sparse raw virtio disks, fresh each boot: /dev/vdb, /dev/vdc, ...
#                       (default 0; at most 20), each --disks-size (default 1G)
#   --mem SIZE          guest RAM (default 2G)
#   --smp N             guest CPUs (default 2)
#   --log FILE          serial console log (default DIR/serial.log)
#   --cache DIR         image cache (default <repo>/.cache/vm or $CARVE_VM_CACHE)
#   --quiet             do not stream the serial console to stdout
#   --guestfwd IP:PORT=HOSTPORT
#                       give the guest a virtio NIC on QEMU user networking with restrict=on (no
#                       route anywhere) where TCP to IP:PORT reaches 127.0.0.1:HOSTPORT on the host
#                       (one socat per connection); repeatable. The guest sees eth0 in 10.0.2.0/24
#                       (address 10.0.2.15, gateway 10.0.2.2; no DHCP client: configure it). Without
#                       this flag the guest has no NIC.
#   --hostfwd HOSTPORT=GUESTPORT
#                       on that NIC, 127.0.0.1:HOSTPORT on the host reaches the guest's GUESTPORT
#                       (TCP); repeatable; needs --guestfwd (the NIC).
# COMMAND runs as root via `sh /share/.vm-cmd` with cwd /share, stdin from /dev/null, and its
# output on the console and in DIR/guest.log. The guest's dmesg is saved in DIR/dmesg.log.
#
# Exit codes: the guest command's exit code, or a rig failure (one line on stderr starting with
# "run.sh: FAIL:" plus the last 50 lines of the serial log):
#   124 timeout   125 VM stopped without the command's exit code (boot/init failure, panic)
#   122 building the VM image failed (kernel package, mirror, debootstrap)
#   123 host prerequisites missing (qemu, debootstrap, ...)   2 usage error   130 interrupted
# (126/127 are left to the guest shell: "not executable" / "command not found".)
# Environment: CARVE_VM_CACHE (image cache), CARVE_VM_APPEND (extra kernel command line),
# CARVE_VM_BUILD_TIMEOUT (seconds for build.sh, default 1800).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

E_TIMEOUT=124 E_NOEXIT=125 E_BUILD=122 E_HOST=123 E_USAGE=2 E_INT=130

SHARE="" TIMEOUT=900 DISK_SIZE=16G NVDIMM_SIZE=4G MEM=2G SMP=2 LOG="" QUIET="" DISKS=0 DISKS_SIZE=1G
GUESTFWD=() HOSTFWD=()
CACHE="${CARVE_VM_CACHE:-$REPO/.cache/vm}"
T0=$(date +%s.%N)

say() { printf '[vm] %s\n' "$*" >&2; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$HERE/run.sh" >&2; }
usage_err() { printf 'run.sh: FAIL: %s\n' "$*" >&2; usage; exit "$E_USAGE"; }
# Serial output without CRs and the firmware's terminal escapes.
clean() { sed -u -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\x1bc//g' -e 's/\r$//'; }
since() { awk -v a="$1" -v b="${2:-$(date +%s.%N)}" 'BEGIN{printf "%.1f", b-a}'; }

tail_log() {
  [ -n "${BOOTED:-}" ] || return 0
  if [ -n "$LOG" ] && [ -s "$LOG" ]; then
    printf -- '----- last 50 lines of the serial log %s -----\n' "$LOG" >&2
    tail -n 50 "$LOG" | clean >&2
    printf -- '----- end of serial log -----\n' >&2
  else
    printf -- '(serial log %s is empty or missing)\n' "${LOG:-<none>}" >&2
  fi
}
fail() { # fail CODE REASON...
  local code=$1; shift
  printf 'run.sh: FAIL: %s\n' "$*" >&2
  tail_log
  exit "$code"
}

# Sizes like 512M, 4G, 1T (binary units) -> MiB.
to_mib() {
  [[ "$1" =~ ^([0-9]+)([kKmMgGtT]?)(i?[bB])?$ ]] || return 1
  local n=$((10#${BASH_REMATCH[1]})) v
  case "${BASH_REMATCH[2]}" in
    k|K) v=$(( n / 1024 )) ;;
    m|M) v=$n ;;
    g|G) v=$(( n * 1024 )) ;;
    t|T) v=$(( n * 1024 * 1024 )) ;;
    *) v=$(( n / 1024 / 1024 )) ;;
  esac
  [ "$v" -gt 0 ] || return 1
  echo "$v"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    --quiet) QUIET=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --share=*|--timeout=*|--disk-size=*|--nvdimm-size=*|--mem=*|--smp=*|--log=*|--cache=*|--guestfwd=*|--hostfwd=*|--disks=*|--disks-size=*)
      k="${1%%=*}"; v="${1#*=}"; shift; set -- "$k" "$v" "$@" ;;
    --share|--timeout|--disk-size|--nvdimm-size|--mem|--smp|--log|--cache|--guestfwd|--hostfwd|--disks|--disks-size)
      [ $# -ge 2 ] || usage_err "$1 needs a value"
      case "$1" in
        --share) SHARE="$2" ;; --timeout) TIMEOUT="$2" ;; --disk-size) DISK_SIZE="$2" ;;
        --nvdimm-size) NVDIMM_SIZE="$2" ;; --mem) MEM="$2" ;; --smp) SMP="$2" ;;
        --log) LOG="$2" ;; --cache) CACHE="$2" ;; --disks) DISKS="$2" ;; --disks-size) DISKS_SIZE="$2" ;;
        --guestfwd)
          [[ "$2" =~ ^([0-9.]+):([0-9]+)=([0-9]+)$ ]] || usage_err "--guestfwd wants IP:PORT=HOSTPORT, got '$2'"
          GUESTFWD+=("guestfwd=tcp:${BASH_REMATCH[1]}:${BASH_REMATCH[2]}-cmd:socat - TCP:127.0.0.1:${BASH_REMATCH[3]}") ;;
        --hostfwd)
          [[ "$2" =~ ^([0-9]+)=([0-9]+)$ ]] || usage_err "--hostfwd wants HOSTPORT=GUESTPORT, got '$2'"
          HOSTFWD+=("hostfwd=tcp:127.0.0.1:${BASH_REMATCH[1]}-:${BASH_REMATCH[2]}") ;;
      esac
      shift 2 ;;
    *) usage_err "unknown argument '$1' (the guest command goes after --)" ;;
  esac
done
[ $# -gt 0 ] || usage_err "no guest command given after --"
[ ${#HOSTFWD[@]} = 0 ] || [ ${#GUESTFWD[@]} -gt 0 ] || usage_err "--hostfwd needs --guestfwd (the NIC)"
case "$TIMEOUT" in ''|*[!0-9]*) usage_err "--timeout wants whole seconds, got '$TIMEOUT'" ;; esac
case "$SMP" in ''|*[!0-9]*) usage_err "--smp wants a number, got '$SMP'" ;; esac
case "$DISKS" in ''|*[!0-9]*) usage_err "--disks wants a number, got '$DISKS'" ;; esac
[ "$DISKS" -le 20 ] || usage_err "--disks wants at most 20 (vdb..vdu), got $DISKS"
DISKS_MIB=$(to_mib "$DISKS_SIZE") || usage_err "bad --disks-size '$DISKS_SIZE'"
DISK_MIB=$(to_mib "$DISK_SIZE") || usage_err "bad --disk-size '$DISK_SIZE'"
NVDIMM_MIB=$(to_mib "$NVDIMM_SIZE") || usage_err "bad --nvdimm-size '$NVDIMM_SIZE'"
MEM_MIB=$(to_mib "$MEM") || usage_err "bad --mem '$MEM'"
[ $(( NVDIMM_MIB % 2 )) = 0 ] || usage_err "--nvdimm-size must be a multiple of 2M"

# --- host prerequisites -------------------------------------------------------------------
missing=()
need_cmds="qemu-system-x86_64:qemu-system-x86 timeout:coreutils truncate:coreutils flock:util-linux awk:gawk"
[ ${#GUESTFWD[@]} = 0 ] || need_cmds="$need_cmds socat:socat"
for c in $need_cmds; do
  command -v "${c%%:*}" >/dev/null 2>&1 || missing+=("${c#*:}")
done
[ ${#missing[@]} = 0 ] ||
  fail $E_HOST "missing host commands; install with: apt-get install -y ${missing[*]}"

# --- share, log, lock ---------------------------------------------------------------------
TMPSHARE=""
if [ -z "$SHARE" ]; then
  SHARE="$(mktemp -d "${TMPDIR:-/tmp}/carve-vm-share.XXXXXX")" || fail $E_HOST "mktemp failed"
  TMPSHARE=1
fi
[ -d "$SHARE" ] || usage_err "--share $SHARE is not a directory"
SHARE="$(cd "$SHARE" && pwd)"
LOG="${LOG:-$SHARE/serial.log}"
mkdir -p "$(dirname "$LOG")" && : >"$LOG" || usage_err "cannot write the serial log $LOG"
LOG="$(cd "$(dirname "$LOG")" && pwd)/$(basename "$LOG")"

exec 8>"$SHARE/.vm-lock"
flock -n 8 || usage_err "another VM is using the share $SHARE (lock $SHARE/.vm-lock)"

# --- image --------------------------------------------------------------------------------
say "image: $HERE/build.sh $CACHE"
timeout --kill-after=30 "${CARVE_VM_BUILD_TIMEOUT:-1800}" "$HERE/build.sh" "$CACHE"
brc=$?
case $brc in
  0) ;;
  3) fail $E_HOST "host prerequisites for building the VM image are missing (see build.sh output above)" ;;
  124|137) fail $E_BUILD "building the VM image took longer than ${CARVE_VM_BUILD_TIMEOUT:-1800}s" ;;
  *) fail $E_BUILD "building the VM image failed (build.sh exit $brc; its last line above says why)" ;;
esac
CACHE="$(cd "$CACHE" && pwd)"
T_BUILT=$(date +%s.%N)

# --- per-boot scratch: disk and NVDIMM backing file ---------------------------------------
RUNDIR="$(mktemp -d "$CACHE/run.XXXXXX")" || fail $E_HOST "mktemp in $CACHE failed"
QPID="" STREAMPID=""
cleanup() {
  [ -n "$QPID" ] && kill "$QPID" 2>/dev/null
  [ -n "$STREAMPID" ] && kill "$STREAMPID" 2>/dev/null
  rm -rf "$RUNDIR"
  rm -f "$SHARE/.vm-lock"
  [ -n "$TMPSHARE" ] && [ "${RC:-1}" = 0 ] && rm -rf "$SHARE"
}
trap cleanup EXIT
trap 'trap - INT TERM; printf "run.sh: FAIL: interrupted\n" >&2; RC=$E_INT; exit $E_INT' INT TERM
truncate -s "${DISK_MIB}M" "$RUNDIR/disk.img" && truncate -s "${NVDIMM_MIB}M" "$RUNDIR/nvdimm.img" ||
  fail $E_HOST "cannot create the disk images in $RUNDIR"
for ((i = 1; i <= DISKS; i++)); do
  truncate -s "${DISKS_MIB}M" "$RUNDIR/disk$i.img" || fail $E_HOST "cannot create the disk images in $RUNDIR"
done

# --- the command --------------------------------------------------------------------------
rm -f "$SHARE/.vm-exit" "$SHARE/.vm-exit.tmp" "$SHARE/.vm-started" "$SHARE/guest.log" "$SHARE/dmesg.log"
{
  printf '# written by hack/vm/run.sh; run by the guest /init as: sh /share/.vm-cmd\nexec'
  for a in "$@"; do printf " '%s'" "${a//\'/\'\\\'\'}"; done
  printf '\n'
} >"$SHARE/.vm-cmd"

MAXMEM_MIB=$(( MEM_MIB + NVDIMM_MIB + 1024 ))
QEMU=(qemu-system-x86_64 -accel tcg -cpu max -smp "$SMP"
  -machine pc,nvdimm=on -m "${MEM_MIB}M,slots=2,maxmem=${MAXMEM_MIB}M"
  -object "memory-backend-file,id=mem1,share=on,mem-path=$RUNDIR/nvdimm.img,size=${NVDIMM_MIB}M"
  -device nvdimm,id=nvdimm1,memdev=mem1,label-size=128K
  -drive "file=$RUNDIR/disk.img,format=raw,if=virtio,cache=unsafe"
  -virtfs "local,path=$SHARE,mount_tag=share,security_model=none,id=share"
  -kernel "$CACHE/vmlinuz" -initrd "$CACHE/root.cpio"
  -append "console=ttyS0 rdinit=/init panic=-1 quiet ${CARVE_VM_APPEND:-}"
  -nographic -no-reboot)
# Extra disks after vda, in order: vdb, vdc, ... Each has a serial (carve-disk-N), which
# udev would turn into /dev/disk/by-id/virtio-carve-disk-N (the guest runs no udev). The guest
# names virtio disks in PCI slot order and -device takes slots before if=virtio drives, so with
# extra disks the first one is a -device too, ahead of them, to stay /dev/vda.
if [ "$DISKS" -gt 0 ]; then
  for ((i = 0; i < ${#QEMU[@]}; i++)); do
    if [ "${QEMU[$i]}" = "file=$RUNDIR/disk.img,format=raw,if=virtio,cache=unsafe" ]; then
      QEMU[$i]="file=$RUNDIR/disk.img,format=raw,if=none,id=disk0,cache=unsafe"
      QEMU=("${QEMU[@]:0:$((i + 1))}" -device virtio-blk-pci,drive=disk0 "${QEMU[@]:$((i + 1))}")
      break
    fi
  done
fi
for ((i = 1; i <= DISKS; i++)); do
  QEMU+=(-drive "file=$RUNDIR/disk$i.img,format=raw,if=none,id=disk$i,cache=unsafe"
    -device "virtio-blk-pci,drive=disk$i,serial=carve-disk-$i")
done
if [ ${#GUESTFWD[@]} = 0 ]; then
  QEMU+=(-nic none)
else
  netdev="user,id=n0,restrict=on"
  for f in "${GUESTFWD[@]}" "${HOSTFWD[@]}"; do netdev="$netdev,$f"; done
  QEMU+=(-netdev "$netdev" -device virtio-net-pci,netdev=n0)
fi

say "boot: mem ${MEM_MIB}M, disk ${DISK_MIB}M, $DISKS more disks of ${DISKS_MIB}M, nvdimm ${NVDIMM_MIB}M, share $SHARE, timeout ${TIMEOUT}s, log $LOG"
say "command: $*"
T_BOOT=$(date +%s.%N)
BOOTED=1
timeout --kill-after=10 "$TIMEOUT" "${QEMU[@]}" </dev/null >>"$LOG" 2>&1 &
QPID=$!
if [ -z "$QUIET" ]; then
  tail -n +1 -f --pid="$QPID" "$LOG" 2>/dev/null | clean &
  STREAMPID=$!
fi
wait "$QPID"
qrc=$?
QPID=""
T_END=$(date +%s.%N)
[ -n "$STREAMPID" ] && { wait "$STREAMPID" 2>/dev/null; STREAMPID=""; }

# --- result -------------------------------------------------------------------------------
timing="image $(since "$T0" "$T_BUILT")s"
started=""
if [ -f "$SHARE/.vm-started" ]; then
  started=1
  TS=$(date -r "$SHARE/.vm-started" +%s.%N)
  timing="$timing, command started at $(since "$T0" "$TS")s (boot $(since "$T_BOOT" "$TS")s, guest uptime $(tr -d '\n' <"$SHARE/.vm-started")s)"
  if [ -f "$SHARE/.vm-exit" ]; then
    timing="$timing, command ran $(since "$TS" "$(date -r "$SHARE/.vm-exit" +%s.%N)")s"
  fi
else
  timing="$timing, command never started"
fi
timing="$timing, VM $(since "$T_BOOT" "$T_END")s, total $(since "$T0" "$T_END")s"
say "timing: $timing"

if [ -f "$SHARE/.vm-exit" ]; then
  RC="$(tr -d '[:space:]' <"$SHARE/.vm-exit")"
  case "$RC" in
    ''|*[!0-9]*) RC=""; fail $E_NOEXIT "the guest wrote a malformed exit code to $SHARE/.vm-exit" ;;
  esac
  [ "$qrc" = 0 ] || say "warning: the command finished but the VM did not stop cleanly (qemu/timeout exit $qrc)"
  say "guest command exited with $RC (output: $SHARE/guest.log)"
  exit "$RC"
fi

case $qrc in
  124|137)
    if [ -n "$started" ]; then
      fail $E_TIMEOUT "timed out after ${TIMEOUT}s: the guest command started but did not finish"
    else
      fail $E_TIMEOUT "timed out after ${TIMEOUT}s before the guest command started (boot hung)"
    fi ;;
esac
why="$(tr -d '\r' <"$LOG" | grep -m1 'carve-vm: FATAL' || true)"
if [ -n "$why" ]; then
  fail $E_NOEXIT "the VM stopped without running the command: ${why#*FATAL: }"
elif [ -n "$started" ]; then
  fail $E_NOEXIT "the guest command started but the VM stopped before it finished (qemu exit $qrc; panic or power-off?)"
elif [ "$qrc" != 0 ]; then
  fail $E_NOEXIT "qemu failed (exit $qrc) before the guest command started"
else
  fail $E_NOEXIT "the VM stopped before the guest command started (no exit code written)"
fi
