#!/bin/bash
# tests/run-all.sh O: the whole suite (make check). Unit tests are the TAP
# binaries in $O/tests/unit/, integration tests tests/integ/*.t; prove runs
# them all and ends with its summary ("All tests successful." / "Result:").
# Exit status is prove's: non-zero when any test failed.
# TEST_JOBS=N runs N test files at once (default 1; the integration tests
# each start their own registry and mounts, so they may run in parallel).
set -u
O=${1:-build}
cd "$(dirname "$0")/.." || exit 1
O=$(cd "$O" && pwd) || { echo "run-all: no build directory $1 (run make)" >&2; exit 1; }
export PATH="$O/bin:$PATH:/usr/sbin:/sbin"

tests=()
for t in "$O"/tests/unit/*; do
	[ -f "$t" ] && [ -x "$t" ] && tests+=("$t")
done
for t in tests/integ/*.t; do
	[ -f "$t" ] && tests+=("$t")
done
[ ${#tests[@]} -gt 0 ] || { echo "run-all: no tests found" >&2; exit 1; }

exec prove --exec '' --timer -j "${TEST_JOBS:-1}" "${tests[@]}"
