#!/usr/bin/env bash
# Proves the VM rig end to end (takes a few minutes under TCG):
#   1. hack/vm/smoke.sh inside the VM passes (device-mapper, LVM, ext4/xfs, NVDIMM + DAX);
#   2. a guest command exiting 3 makes run.sh exit 3 (and its stdin is empty, its args arrive
#      intact, its output lands in guest.log);
#   3. a guest command that powers the VM off itself gives 125, never success;
#   4. a guest command that hangs makes run.sh fail on its --timeout with 124 and the log tail.
# usage: hack/vm/smoke-host.sh        (extra flags, e.g. --cache DIR, are passed to run.sh)
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN="$HERE/run.sh"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/carve-vm-smoke.XXXXXX")"
failures=0
say() { printf '[smoke] %s\n' "$*"; }
check() { # check NAME EXPECTED_RC ACTUAL_RC
  if [ "$2" = "$3" ]; then say "PASS $1 (exit $3)"; else say "FAIL $1: expected exit $2, got $3"; failures=$((failures + 1)); fi
}
must() { # must NAME FILE PATTERN
  if grep -q -- "$3" "$2"; then say "PASS $1"; else say "FAIL $1: '$3' not in $2"; failures=$((failures + 1)); fi
}

# 1. the real smoke test
mkdir -p "$WORK/1" && cp "$HERE/smoke.sh" "$WORK/1/"
s=$(date +%s)
"$RUN" "$@" --share "$WORK/1" --timeout 600 -- /share/smoke.sh
check "smoke.sh in the VM" 0 $?
must "smoke.sh output in guest.log" "$WORK/1/guest.log" "smoke: OK"
say "smoke.sh run took $(( $(date +%s) - s ))s"

# 2. exit code, stdin, argument quoting
mkdir -p "$WORK/2"
T2=$(date +%s)
"$RUN" "$@" --quiet --share "$WORK/2" --timeout 300 -- \
  sh -c 'if read -r x; then echo "stdin had: $x"; else echo "stdin is empty"; fi; printf "<%s>\n" "$@"; exit 3' \
  argv0 "two words" "it's \"quoted\"" '$HOME;`x`'
check "guest exit 3 -> run.sh exit 3" 3 $?
must "stdin is /dev/null" "$WORK/2/guest.log" "stdin is empty"
must "argument with a space" "$WORK/2/guest.log" "<two words>"
must "argument with quotes" "$WORK/2/guest.log" "<it's \"quoted\">"
must "argument with \$ and backquotes" "$WORK/2/guest.log" '<$HOME;`x`>'
must "exit code file" "$WORK/2/.vm-exit" "^3$"

# 3. the VM stops without the command finishing: never success
mkdir -p "$WORK/3"
"$RUN" "$@" --quiet --share "$WORK/3" --timeout 300 -- sh -c 'echo powering off now; echo o >/proc/sysrq-trigger; sleep 60' \
  2>"$WORK/3.err"
check "VM powered off by the command -> 125" 125 $?
cat "$WORK/3.err"
must "reason line" "$WORK/3.err" "run.sh: FAIL: the guest command started but the VM stopped"

# 4. a hanging command hits the timeout. 60 s, or more when this host boots slower than that
#    (under load, TCG boots take 20-110 s): the command must have started before the timeout.
boot=$(( $(date -r "$WORK/2/.vm-started" +%s 2>/dev/null || echo "$T2") - T2 ))
to=$(( boot * 2 + 30 )); [ "$to" -ge 60 ] || to=60
mkdir -p "$WORK/4"
s=$(date +%s)
"$RUN" "$@" --quiet --share "$WORK/4" --timeout "$to" -- sh -c 'echo hanging on purpose; sleep 100000' 2>"$WORK/4.err"
rc=$?
el=$(( $(date +%s) - s ))
check "hanging command -> 124 (--timeout $to)" 124 $rc
cat "$WORK/4.err"
must "timeout reason line" "$WORK/4.err" "run.sh: FAIL: timed out after ${to}s: the guest command started"
sed -n '/last 50 lines of the serial log/,$p' "$WORK/4.err" >"$WORK/4.tail"
must "serial log tail shown" "$WORK/4.tail" "^hanging on purpose"
if [ "$el" -lt $(( to + 40 )) ]; then say "PASS timeout run ended after ${el}s"; else say "FAIL timeout run took ${el}s"; failures=$((failures + 1)); fi

if [ "$failures" = 0 ]; then
  say "ALL PASSED"; rm -rf "$WORK"; exit 0
fi
say "$failures check(s) FAILED; files kept in $WORK"; exit 1
