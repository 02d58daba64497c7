#!/bin/bash
test_description='100 kill -9 during reads: the cache stays within cache_size and serves every path

A loop mounts a store over one cache (cache_size=64M, 144 MiB of data in
three paths, so eviction runs all the time), starts parallel readers, waits
for a varying number of frames to be fetched and kills the daemon with
SIGKILL. A crash between a chunk file'"'"'s rename and its LMDB record leaves an
orphan; the next start sweeps them (it has the cache to itself). After every
kill the cache directory must stay within cache_size plus 5% by du (apparent
bytes, -sb, and blocks), and at the end a clean mount serves every path
right (NarHash) with no verification failure.

NIXOCI_CRASH_KILLS=N changes the number of kills (default 100).'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/lazy.sh"

test_require_cmd docker-registry curl openssl du
test_require_nix
test_require_fuse
test_require_binaries

KILLS=${NIXOCI_CRASH_KILLS:-100}
LIMIT=$((64 << 20))
BOUND=$((LIMIT + LIMIT / 20))
C=$TRASH/cache
MNT=$TRASH/mnt

# du_ok: the cache directory is within cache_size + 5% (apparent and blocks);
# remembers the largest seen in DU_MAX.
DU_MAX=0
du_ok() {
	local a b
	a=$(du -sb "$C" | cut -f1) && b=$(du -sB1 "$C" | cut -f1) || return 1
	[ "$a" -gt "$DU_MAX" ] && DU_MAX=$a
	[ "$b" -gt "$DU_MAX" ] && DU_MAX=$b
	if [ "$a" -gt "$BOUND" ] || [ "$b" -gt "$BOUND" ]; then
		echo "du of the cache: $a bytes (-sb), $b (blocks): over $BOUND"
		return 1
	fi
}

# fetched_or_done N PID...: the daemon fetched N frames, or every reader is
# done (their files were cached).
fetched_or_done() {
	local want=$1 p
	shift
	[ "$(stat_val "$MNT" frames_fetched 2>/dev/null || echo 0)" -ge "$want" ] && return 0
	for p in "$@"; do pid_alive "$p" && return 1; done
	return 0
}

test_expect_success 'setup: registry, three paths of 48 MiB (8 files of 6 MiB), push' '
	start_registry &&
	REF=$REG/crash &&
	P1=$(make_data_path nixoci-crash-1 a:6 b:6 c:6 d:6 e:6 f:6 g:6 h:6) &&
	P2=$(make_data_path nixoci-crash-2 a:6 b:6 c:6 d:6 e:6 f:6 g:6 h:6) &&
	P3=$(make_data_path nixoci-crash-3 a:6 b:6 c:6 d:6 e:6 f:6 g:6 h:6) &&
	nixoci push "$REF" "$P1" "$P2" "$P3" >push.out 2>&1 &&
	FILES= &&
	for p in "$P1" "$P2" "$P3"; do
		for f in a b c d e f g h; do FILES="$FILES ${p##*/}/$f"; done
	done &&
	ALL=($FILES) && NFILES=${#ALL[@]}
'

test_expect_success "$KILLS x: mount, parallel reads, kill -9 after a few frames; du within cache_size + 5%" '
	RANDOM=42 &&
	orphans=0 &&
	for i in $(seq 1 $KILLS); do
		mount_store "$REF" "$MNT" "cache=$C,cache_size=$LIMIT" || return 1
		pids= &&
		for r in 1 2 3 4; do
			cat "$MNT/${ALL[RANDOM % NFILES]}" >/dev/null 2>&1 & pids="$pids $!"
		done
		want=$((RANDOM % 24 + 1))
		test_wait_for 60 fetched_or_done "$want" $pids ||
			{ echo "iteration $i: no progress"; return 1; }
		kill_mount "$MNT" || return 1
		for p in $pids; do wait $p 2>/dev/null; done
		du_ok || { echo "after kill $i"; return 1; }
		n=$(grep -c "orphaned files" "${MOUNT_LOG[$MNT]}" 2>/dev/null)
		orphans=$((orphans + ${n:-0}))
	done &&
	echo "largest du after a kill: $DU_MAX bytes (bound $BOUND); starts that swept orphans: $orphans"
'

test_expect_success 'a clean mount over that cache: sweeps, every path right, du within bound' '
	mount_store "$REF" "$MNT" "cache=$C,cache_size=$LIMIT" &&
	du_ok &&
	check_mount_hashes "$MNT" "$P1" "$P2" "$P3" &&
	test "$(stat_val "$MNT" verify_failures)" = 0 &&
	unmount_store "$MNT" &&
	du_ok &&
	echo "largest du seen: $DU_MAX bytes (bound $BOUND)"
'

test_done
