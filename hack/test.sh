#!/usr/bin/env bash
# make test: runs each test layer (a make target) in order, stops at the first that fails, and
# prints how long each took, so that a CI log shows where the time went (the 60-minute aim).
#
#   hack/test.sh TARGET...
set -uo pipefail
cd "$(dirname "$0")/.."
MAKE="${MAKE:-make}"
start=$(date +%s)
times=()
rc=0
for target in "$@"; do
	t0=$(date +%s)
	echo "[test] ---- make $target ($(date +%H:%M:%S), $(( t0 - start ))s in) ----"
	"$MAKE" --no-print-directory "$target"
	rc=$?
	times+=("$(printf '%-18s %5ss  %s' "$target" "$(( $(date +%s) - t0 ))" "$([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)")")")
	[ "$rc" = 0 ] || break
done
echo "[test] ---- time per layer ----"
printf '[test] %s\n' "${times[@]}"
echo "[test] total $(( $(date +%s) - start ))s: $([ "$rc" = 0 ] && echo passed || echo FAILED)"
exit "$rc"
