#!/bin/bash
test_description='offline behaviour (registry stopped or stalled), kill -9 safety, prefetch beside the daemon'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/lazy.sh"

test_require_cmd docker-registry curl openssl timeout
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
MIB=1048576
TMO=5
# what an outage is expected to log
MOUNT_LOG_ALLOW='connection refused|timed out|no progress|registry unreachable|answers again'

# drop_page_cache: make the next reads reach the daemon (root only).
drop_page_cache() {
	sync && echo 3 >/proc/sys/vm/drop_caches
}

test_expect_success 'setup: registry, two store paths of 64 MiB and 1 MiB, push' '
	start_registry &&
	REF=$REG/off &&
	Q=$(make_data_path nixoci-lazy-64m c:24 d:24 e:16) &&
	R=$(make_data_path nixoci-lazy-1m f:1) &&
	nixoci push "$REF" "$Q" "$R" >push.out 2>&1 &&
	QB=${Q##*/} && RB=${R##*/}
'

test_expect_success 'mount with timeout=5 and read c (now cached)' '
	mount_store "$REF" "$MNT" "timeout=$TMO" &&
	cmp "$MNT/$QB/c" "$Q/c" &&
	LOG=${MOUNT_LOG[$MNT]} &&
	FS_PID=${MOUNT_PID[$MNT]}
'

test_expect_success 'registry stopped: the cached file still reads, from the cache' '
	stop_registry $REG_PID_reg &&
	! curl -fsS -o /dev/null --max-time 2 "http://$REG/v2/" &&
	if test -w /proc/sys/vm/drop_caches; then drop_page_cache; fi &&
	h0=$(stat_val "$MNT" cache_hits) &&
	p0=$(stat_val "$MNT" passthrough_opens) &&
	cmp "$MNT/$QB/c" "$Q/c" &&
	if test -w /proc/sys/vm/drop_caches; then
		# from the chunks through the daemon, or from the file copy
		# the kernel reads itself (passthrough)
		test "$(stat_val "$MNT" cache_hits)" -gt "$h0" ||
			test "$(stat_val "$MNT" passthrough_opens)" -gt "$p0"
	fi
'

test_expect_success 'registry stopped: an uncached read fails with EIO, fast, one log line' '
	lines0=$(wc -l <"$LOG") &&
	t0=$(now_ms) &&
	! timeout 60 cat "$MNT/$QB/d" >/dev/null 2>err.d &&
	t1=$(now_ms) &&
	cat err.d &&
	grep -q "Input/output error" err.d &&
	echo "failed after $((t1 - t0)) ms" &&
	test $((t1 - t0)) -le $((TMO * 1000)) &&
	# a burst: eight readers of two uncached files at once
	pids= &&
	for i in 1 2 3 4; do
		{ cat "$MNT/$QB/d" >/dev/null 2>&1; cat "$MNT/$QB/e" >/dev/null 2>&1; } &
		pids="$pids $!"
	done &&
	for p in $pids; do wait $p || true; done &&
	tail -n +$((lines0 + 1)) "$LOG" >burst.log &&
	cat burst.log &&
	n=$(grep -c "refused" burst.log) &&
	test "$n" -ge 1 && test "$n" -le 2 &&
	test "$(stat_val "$MNT" offline)" = 1 &&
	pid_alive $FS_PID
'

test_expect_success 'a lookup that failed on the network is not cached as absent' '
	! stat "$MNT/$RB" 2>err.r &&
	cat err.r &&
	grep -q "Input/output error" err.r
'

test_expect_success 'registry back (same port and storage): the same reads succeed, no remount' '
	restart_registry reg &&
	cmp "$MNT/$QB/d" "$Q/d" &&
	cmp "$MNT/$RB/f" "$R/f" &&
	test "$(stat_val "$MNT" offline)" = 0 &&
	grep -q "registry answers again" "$LOG"
'

test_expect_success 'registry stalled (SIGSTOP): an uncached read fails within the timeout' '
	kill -STOP $REG_PID_reg &&
	test_atexit "kill -CONT $REG_PID_reg" &&
	t0=$(now_ms) &&
	! timeout 60 cat "$MNT/$QB/e" >/dev/null 2>err.e &&
	t1=$(now_ms) &&
	cat err.e &&
	kill -CONT $REG_PID_reg &&
	grep -q "Input/output error" err.e &&
	echo "failed after $((t1 - t0)) ms" &&
	test $((t1 - t0)) -le $(((TMO + 3) * 1000)) &&
	cmp "$MNT/$QB/e" "$Q/e" &&
	pid_alive $FS_PID &&
	unmount_store "$MNT"
'

test_expect_success 'kill -9 during parallel reads, remount the same cache: everything verifies' '
	K=$TRASH/killed &&
	mount_store "$REF" "$K" "cache=$TRASH/cache-k" &&
	pids= &&
	for f in c d e; do cat "$K/$QB/$f" >/dev/null 2>&1 & pids="$pids $!"; done &&
	test_wait_for 30 eval "test \$(stat_val $K frames_fetched) -ge 8" &&
	kill_mount "$K" &&
	for p in $pids; do wait $p; done;
	mount_store "$REF" "$K" "cache=$TRASH/cache-k" &&
	check_mount_hashes "$K" "$Q" &&
	test "$(stat_val "$K" verify_failures)" = 0 &&
	test -z "$(ls "$TRASH/cache-k/tmp")" &&
	unmount_store "$K"
'

test_expect_success 'nixoci prefetch fills the cache a running daemon uses' '
	W=$TRASH/shared &&
	mount_store "$REF" "$W" "cache=$TRASH/cache-w" &&
	{ cat "$W/$QB/c" >/dev/null & } &&
	rpid=$! &&
	nixoci prefetch --cache "$TRASH/cache-w" "$REF" "$Q" >prefetch.out 2>&1 &&
	wait $rpid &&
	cat prefetch.out &&
	f0=$(stat_val "$W" frames_fetched) &&
	cmp "$W/$QB/d" "$Q/d" && cmp "$W/$QB/e" "$Q/e" &&
	test "$(stat_val "$W" frames_fetched)" = "$f0" &&
	check_mount_hashes "$W" "$Q" &&
	nixoci stats "$W" &&
	cb=$(stat_val "$W" cache_bytes) &&
	copies=$(stat_val "$W" cache_copy_bytes) &&
	test $((cb - copies)) -le $((70 * MIB)) &&
	test "$copies" -le $((64 * MIB)) &&
	unmount_store "$W"
'

test_done
