#!/bin/bash
# bench/mount-rtt.sh BEFORE_BIN AFTER_BIN: a cold closure mount over a link
# with added round-trip time, two builds alternating (docs/benchmarks.md,
# "Round trips of a cold start without a profile").
#
# The CPython closure of the tests (tests/lib: build_big_closure) is pushed
# under the tag `c` to a fresh registry behind the bench's delay link
# (bench/delayproxy of AFTER's build; BENCH_PROXY=py: tests/lib/faultproxy.py)
# with delay=BENCH_DELAY (40) ms. Each run: an empty cache, `nixoci-fs -o
# closure=c` in daemon mode (it returns when the store is open), then the
# first stat of a store path; prints both times and the requests the proxy
# logged. BENCH_RUNS (5) runs per build, the builds taking turns.
set -u
BEFORE=$(cd "${1:?usage: bench/mount-rtt.sh BEFORE_BIN AFTER_BIN}" && pwd)
AFTER=$(cd "${2:?usage: bench/mount-rtt.sh BEFORE_BIN AFTER_BIN}" && pwd)
. "$(dirname "$0")/../tests/lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"
export PATH=$AFTER:$PATH

test_expect_success 'cold closure mounts, builds alternating' '
	start_registry && build_big_closure &&
	nixoci push --tag c "$REG/store" "$BIG" >/dev/null 2>&1 &&
	if [ "${BENCH_PROXY:-c}" = py ]; then start_faultproxy "$REG"; else start_delayproxy "$REG"; fi &&
	fault_set "mode=pass delay=${BENCH_DELAY:-40}" &&
	first=$(echo "$BIG_CLOSURE" | head -1) && first=${first#/nix/store/} &&
	mkdir -p "$TRASH/m" &&
	for i in $(seq "${BENCH_RUNS:-5}"); do
		for b in BEFORE AFTER; do
			bin=${!b} &&
			rm -rf "$TRASH/c" &&
			n=$(wc -l <"$PROXY_LOG") &&
			t0=$(date +%s%N) &&
			"$bin/nixoci-fs" -o "cache=$TRASH/c,closure=c" "$PROXY/store" "$TRASH/m" &&
			t1=$(date +%s%N) &&
			stat "$TRASH/m/$first" >/dev/null &&
			t2=$(date +%s%N) &&
			req=$(tail -n +$((n + 1)) "$PROXY_LOG" | grep -vEc " (begin|connect) ") &&
			say "$b run $i: mounted $(((t1 - t0) / 1000000)) ms, first stat $(((t2 - t0) / 1000000)) ms, requests $req" &&
			fusermount3 -u "$TRASH/m" && sleep 0.5 || return 1
		done
	done
'
test_done
