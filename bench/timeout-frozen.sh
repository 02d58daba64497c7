#!/bin/bash
# bench/timeout-frozen.sh [T...]: how long an uncached read takes to fail
# with EIO when the registry is frozen (SIGSTOP: connections are accepted
# by the kernel, nothing is ever answered), for each -o timeout=T (default
# 2 5 10). Three cases per T: the first uncached read of a file (its store
# path's metadata cached, its data not), a second read right after (the
# store is offline by then), and a lookup of a store path never seen.
# Prints one line per case; the numbers are in docs/reliability.md. Not part of
# make check (it measures time).
set -u
SRC=$(cd "$(dirname "$0")/.." && pwd)
PATH=$SRC/build/bin:$PATH
. "$SRC/tests/lib/lib.sh"
. "$SRC/tests/lib/lazy.sh"
exec 3>&1
now_ms() { echo $(($(date +%s%N) / 1000000)); }

start_registry >/dev/null || exit 1
REF=$REG/frozen
P=$(make_data_path frozen-bench a:4 b:4 c:4) || exit 1
Q=$(make_data_path frozen-bench-q x:1) || exit 1
nixoci push "$REF" "$P" "$Q" >/dev/null 2>&1 || exit 1
REGPID=$(pgrep -f "docker-registry serve $TRASH/registry-reg/config.yml" | head -n 1)
for T in ${@:-2 5 10}; do
	MNT=$TRASH/mnt-$T
	mount_store "$REF" "$MNT" "timeout=$T,readahead=0" >/dev/null || exit 1
	ls "$MNT/${P#/nix/store/}" >/dev/null      # metadata cached, data not
	kill -STOP "$REGPID"
	t0=$(now_ms); cat "$MNT/${P#/nix/store/}/a" >/dev/null 2>&1; rc=$?; t1=$(now_ms)
	echo "timeout=$T frozen registry: first uncached read: exit $rc after $((t1 - t0)) ms"
	t0=$(now_ms); cat "$MNT/${P#/nix/store/}/b" >/dev/null 2>&1; rc=$?; t1=$(now_ms)
	echo "timeout=$T frozen registry: next uncached read (offline): exit $rc after $((t1 - t0)) ms"
	kill -CONT "$REGPID"
	unmount_store "$MNT" >/dev/null 2>&1
	MOUNT_LOG_ALLOW=. mount_store "$REF" "$MNT" "timeout=$T,readahead=0" >/dev/null || exit 1
	kill -STOP "$REGPID"
	t0=$(now_ms); stat "$MNT/${Q#/nix/store/}" >/dev/null 2>&1; rc=$?; t1=$(now_ms)
	echo "timeout=$T frozen registry: lookup of a store path not yet loaded: exit $rc after $((t1 - t0)) ms"
	kill -CONT "$REGPID"
	MOUNT_LOG_ALLOW=. unmount_store "$MNT" >/dev/null 2>&1
done
test_run_atexit >/dev/null 2>&1
