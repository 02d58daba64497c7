#!/bin/bash
# tests/run-all.sh O: the whole suite (make check). Unit tests are the TAP
# binaries in $O/tests/unit/, the fuzz replay drivers $O/tests/fuzz/replay-*
# (over their corpus and crashers, see tests/lib/run-test), integration tests
# tests/integ/*.t; prove runs them all and ends with its summary
# ("All tests successful." / "Result:").
# Exit status is prove's: non-zero when any test failed.
#
# Unit tests that talk to a real registry get one: a docker-registry on a
# free loopback port, in NIXOCI_TEST_REGISTRY=HOST:PORT/REPO, stopped at the
# end. TEST_JOBS=N runs N test files at once (default 1; each integration
# test starts its own registry and mounts, so they may run in parallel).
set -u
O=${1:-build}
SRC=$(cd "$(dirname "$0")/.." && pwd) || exit 1
cd "$SRC" || exit 1
O=$(cd "$O" 2>/dev/null && pwd) || { echo "run-all: no build directory ${1:-build} (run make)" >&2; exit 1; }
export PATH="$O/bin:$PATH:/usr/sbin:/sbin"

tests=()
for t in "$O"/tests/unit/*; do
	case $t in *.o) continue ;; esac
	[ -f "$t" ] && [ -x "$t" ] && tests+=("$t")
done
for t in "$O"/tests/fuzz/replay-*; do
	[ -f "$t" ] && [ -x "$t" ] && tests+=("$t")
done
for t in "$SRC"/tests/integ/*.t; do
	[ -f "$t" ] && tests+=("$t")
done
[ ${#tests[@]} -gt 0 ] || { echo "run-all: no tests found" >&2; exit 1; }

# The library's start_registry and EXIT trap (it also moves us to a trash
# directory, removed at exit).
. "$SRC/tests/lib/lib.sh"
if [ -z "${NIXOCI_TEST_REGISTRY:-}" ] && command -v docker-registry >/dev/null &&
	start_registry unit 2>/dev/null; then
	export NIXOCI_TEST_REGISTRY=$REG/unit-test
fi

# pass NAME CMD...: runs one prove pass, its output also kept, so that a
# failure is recapped at the very end: a CI that shows only the last lines
# of the log still shows which test failed and how.
RECAP=$TRASH/recap
: >"$RECAP"
: >"$RECAP.files"
pass() {
	local name=$1 log=$TRASH/pass-$1.log st
	shift
	"$@" 2>&1 | tee "$log"
	st=${PIPESTATUS[0]}
	[ "$st" = 0 ] && return 0
	# each failed case: its first line, then the last lines it printed
	awk -v pass="$name" '
		/^#   [A-Za-z0-9_.-]+ [0-9]+ .*: exit status [0-9]+; the test body was:$/ {
			if (head) flush(); head = $0; sub(/; the test body was:$/, "", head)
			out = 0; n = 0; next }
		head && /^#   its output \(last [0-9]+ lines\):$/ { out = 1; next }
		head && out && /^#   / { buf[n++ % 6] = $0; next }
		head && out { flush() }
		function flush(  i, k) {
			print "# " pass ": " substr(head, 5)
			k = n < 6 ? n : 6
			for (i = n - k; i < n; i++) print "#     " substr(buf[i % 6], 5)
			head = ""; out = 0; n = 0 }
		END { if (head) flush() }' "$log" | tail -n 40 >>"$RECAP"
	# each failing file and its test numbers, as prove summed them up:
	# printed last, so that they are in the tail whatever came before
	sed -n '/^Test Summary Report/,/^Files=/p' "$log" |
		grep -vE '^(Files=|-+$|Test Summary Report)' | sed "s/^/# $name: /" >>"$RECAP.files"
	return "$st"
}

rc=0
pass plain prove --exec "$SRC/tests/lib/run-test" --timer -j "${TEST_JOBS:-1}" "${tests[@]}" || rc=$?

# Second pass: the unit tests, the fuzz replays and a subset of the
# integration tests against the SANITIZE=address,undefined build (build-san,
# made by make check), then the cache's concurrency test under
# ThreadSanitizer (build-tsan). A sanitizer report aborts the process: the
# unit test fails, a daemon exits non-zero with the report in its log (lib.sh's
# cleanup check fails on both). NIXOCI_NO_SAN=1 skips this pass;
# NIXOCI_SAN_TESTS lists the integration tests (names without .t) to run.
SAN_TESTS=${NIXOCI_SAN_TESTS:-t0010-push-mount t0030-errors t0050-format t0060-trust
	t0150-closure-meta t0151-closure-mount-chain t0160-ref-prefetch t0170-miss-reads t0171-profile t0172-multirange t0173-miss-predict t0174-elf-needed t0175-miss-jump t0176-shared-requests t0177-pyc-imports t0178-pyc-graph t0179-script-exec t0180-push-round-trips t0190-pack
	t0142-session-loop t0143-warm-open t0144-complete t0400-hostile t0430-security t0540-meta-budget t0500-cache-faults t0545-privileges t0700-safe-mount
	t0750-json-metrics t0600-import t0610-serve t0620-register}
if [ -z "${NIXOCI_NO_SAN:-}" ] && [ -x "$SRC/build-san/bin/nixoci-fs" ]; then
	echo "# sanitized pass (build-san: address,undefined)"
	san=()
	for t in "$SRC"/build-san/tests/unit/* "$SRC"/build-san/tests/fuzz/replay-*; do
		case $t in *.o) continue ;; esac
		[ -f "$t" ] && [ -x "$t" ] && san+=("$t")
	done
	for t in $SAN_TESTS; do
		[ -f "$SRC/tests/integ/$t.t" ] && san+=("$SRC/tests/integ/$t.t")
	done
	# use_sigaltstack=0: a thread cancelled while it waits (the takeover
	# listener in accept(), fs/takeover.c) unwinds with stack redzones still
	# poisoned, and ASan's sigaltstack teardown at its exit then reports a
	# stack-buffer-underflow in its own interceptor (a false report; memory
	# checking is unchanged). The FUSE workers are no longer cancelled: the
	# daemon's own loop (fs/session.c) wakes and joins them.
	ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:use_sigaltstack=0} \
	UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
	LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$SRC/tests/lib/lsan.supp} \
	PATH="$SRC/build-san/bin:$PATH" \
		pass sanitized prove --exec "$SRC/tests/lib/run-test" --timer -j "${TEST_JOBS:-1}" "${san[@]}" ||
		rc=$?
fi
if [ -z "${NIXOCI_NO_SAN:-}" ] && [ -x "$SRC/build-tsan/tests/unit/cache-store" ]; then
	echo "# ThreadSanitizer pass (build-tsan: the cache's concurrency test)"
	TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1} \
		pass tsan prove --exec '' --timer "$SRC/build-tsan/tests/unit/cache-store" || rc=$?
fi
if [ -s "$RECAP" ]; then
	echo "# ---- recap: what failed (details above) ----"
	cat "$RECAP" "$RECAP.files"
fi
exit $rc
