#!/usr/bin/env bash
# Runs every Go fuzz target in the repository for FUZZTIME each (default 30s).
#
#   hack/fuzz.sh                     every target
#   FUZZTIME=5s hack/fuzz.sh         a short pass (make fuzz-short, part of make test)
#   hack/fuzz.sh FuzzParsePool ...   only the named targets
#
# Targets are found with `go test -list '^Fuzz'` in the packages whose tests
# declare a `func Fuzz`. Each runs alone (-fuzz '^Name$') with -parallel
# FUZZPARALLEL workers (default 1: the build machines are shared), under a
# timeout, so a hang fails the run instead of stalling it. Prints one line per
# target and a final
#
#   fuzz: N targets, F failed (FUZZTIME each)
#
# and exits non-zero when any target failed, naming the failing input that Go
# wrote to the package's testdata/fuzz/<Target>/ (commit it: it becomes a
# regression seed that every plain `go test` runs).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-30s}
FUZZPARALLEL=${FUZZPARALLEL:-1}
# Bounds the minimization of each new input (Go's default, 60s, can eat a short run).
FUZZMINIMIZE=${FUZZMINIMIZE:-10s}

# seconds of a -fuzztime value (Ns, Nm, Nh; an exec count Nx gets 10 minutes).
seconds() {
	local v=$1
	case $v in
	*ms) echo 1 ;;
	*s) echo "${v%s}" | cut -d. -f1 ;;
	*m) echo $((${v%m} * 60)) ;;
	*h) echo $((${v%h} * 3600)) ;;
	*x) echo 600 ;;
	*) echo "fuzz: FUZZTIME=$v: want a duration like 30s or 2m" >&2; exit 2 ;;
	esac
}
fuzzsecs=$(seconds "$FUZZTIME") || exit 2
# The test binary's own timeout covers a hung input once fuzzing has started;
# the outer one also covers the (instrumented) build on a busy machine.
testtimeout=$((fuzzsecs + ${FUZZ_HANG_SECONDS:-120}))
outertimeout=$((testtimeout + ${FUZZ_BUILD_SECONDS:-600}))

# Packages whose tests declare fuzz targets, as import paths.
mapfile -t dirs < <(grep -rl --include='*_test.go' -E '^func Fuzz[A-Z0-9_]' cmd pkg test 2>/dev/null | xargs -r -n1 dirname | sort -u)
if [ ${#dirs[@]} -eq 0 ]; then
	echo "fuzz: no fuzz targets found" >&2
	exit 1
fi

# name<TAB>package for every target go test lists.
targets=()
for d in "${dirs[@]}"; do
	if ! out=$("$GO" test -list '^Fuzz' "./$d" 2>&1); then
		echo "$out" >&2
		echo "fuzz: listing the fuzz targets of ./$d failed" >&2
		exit 1
	fi
	while read -r name; do
		[[ $name == Fuzz* ]] && targets+=("$name	./$d")
	done <<<"$out"
done
if [ $# -gt 0 ]; then
	want=" $* "
	sel=()
	for t in "${targets[@]}"; do
		[[ $want == *" ${t%%	*} "* ]] && sel+=("$t")
	done
	targets=("${sel[@]}")
fi

logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT
failed=0
for t in "${targets[@]}"; do
	name=${t%%	*}
	pkg=${t#*	}
	log=$logdir/$name.log
	start=$SECONDS
	note=
	for attempt in 1 2; do
		timeout --kill-after=10s "$outertimeout" \
			"$GO" test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -parallel "$FUZZPARALLEL" -fuzzminimizetime "$FUZZMINIMIZE" \
			-timeout "${testtimeout}s" "$pkg" >"$log" 2>&1
		rc=$?
		# Go <1.27 can fail a target with a bare "context deadline exceeded"
		# at the end of -fuzztime, having found nothing (go.dev/issue/75804,
		# likelier on a loaded machine): run it once more; a second one fails.
		if [ $rc -ne 0 ] && [ $attempt -eq 1 ] && grep -qx '[[:space:]]*context deadline exceeded' "$log" &&
			! grep -q 'Failing input written' "$log" && ! grep -q 'panic:' "$log"; then
			note=" (rerun after go.dev/issue/75804)"
			continue
		fi
		break
	done
	took=$((SECONDS - start))
	execs=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
	if [ "$rc" -eq 0 ]; then
		printf 'ok    %-28s %-28s %4ds %12s execs%s\n' "$name" "$pkg" "$took" "${execs:-0}" "$note"
		continue
	fi
	failed=$((failed + 1))
	why="exit $rc"
	if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then why="timed out after ${took}s (hang?)"; fi
	grep -q 'panic: test timed out' "$log" && why="test binary timed out (hang?)"
	printf 'FAIL  %-28s %-28s %4ds  %s\n' "$name" "$pkg" "$took" "$why"
	sed 's/^/      /' "$log" | grep -v '^      fuzz: elapsed' | tail -40
	input=$(grep -o 'testdata/fuzz/[^ ]*' "$log" | head -1)
	[ -n "$input" ] && echo "      failing input: ${pkg#./}/$input"
done

echo "fuzz: ${#targets[@]} targets, $failed failed ($FUZZTIME each)"
[ "$failed" -eq 0 ] && [ ${#targets[@]} -gt 0 ]
