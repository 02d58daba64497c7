#!/bin/bash
test_description='lazy reads of a 600 MiB store path: readahead, concurrent readers, warm remount, bounded cache'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/lazy.sh"

test_require_cmd docker-registry curl openssl
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
SMALLMNT=$TRASH/bounded
MIB=1048576

# One store path reused by every test: a (120 MiB, read by 16 readers) and
# b (480 MiB); 600 MiB of incompressible, deterministic bytes.
test_expect_success 'setup: registry, a 600 MiB store path, push' '
	start_registry &&
	REF=$REG/lazy &&
	P=$(make_data_path nixoci-lazy-600m a:120 b:480) &&
	test "$(nix-store -q --size "$P")" -gt $((600 * MIB)) &&
	nixoci push "$REF" "$P" >push.out 2>&1 &&
	cat push.out &&
	B=${P##*/} &&
	FMAX=$(nixoci info "$REF" "$P" | sed -n "s/^Zstd:.*frame-max=\([0-9]*\).*/\1/p") &&
	test "$FMAX" -gt 0 &&
	ASIZE=$(stat -c %s "$P/a") &&
	BSIZE=$(stat -c %s "$P/b") &&
	AFRAMES=$(( (ASIZE + FMAX - 1) / FMAX )) &&
	NFRAMES=$(( AFRAMES + (BSIZE + FMAX - 1) / FMAX )) &&
	echo "frames of $FMAX bytes: a $AFRAMES, a and b $NFRAMES"
'

test_expect_success '16 concurrent readers of an uncached 120 MiB file read the same, correct bytes' '
	mount_store "$REF" "$MNT" "cache_size=2G" &&
	ls "$MNT/$B" >/dev/null &&
	test "$(stat_val "$MNT" frames_fetched)" = 0 &&
	pids= &&
	for i in $(seq 16); do
		{ sha256sum <"$MNT/$B/a" | cut -d" " -f1 >sum.$i; } &
		pids="$pids $!"
	done &&
	fails=0 &&
	for pid in $pids; do wait $pid || fails=$((fails + 1)); done &&
	test $fails = 0 &&
	want=$(sha256sum <"$P/a" | cut -d" " -f1) &&
	for i in $(seq 16); do test "$(cat sum.$i)" = "$want" || { echo "reader $i differs"; false; }; done
'

test_expect_success 'each of its frames was fetched exactly once' '
	nixoci stats "$MNT" | tee stats.1 &&
	test "$(stat_val "$MNT" frames_fetched)" = "$AFRAMES" &&
	test "$(stat_val "$MNT" verify_failures)" = 0 &&
	test "$(stat_val "$MNT" errors)" = 0
'

test_expect_success 'remount over the warm cache: reading a again fetches 0 bytes' '
	unmount_store "$MNT" &&
	mount_store "$REF" "$MNT" "cache=$TRASH/cache-mnt,cache_size=2G" &&
	cmp "$MNT/$B/a" "$P/a" &&
	nixoci stats "$MNT" | tee stats.2 &&
	test "$(stat_val "$MNT" bytes_fetched)" = 0 &&
	test "$(stat_val "$MNT" frames_fetched)" = 0 &&
	# through the daemon from the chunks, or by the kernel from the
	# passthrough copy made after the first mount read all of a
	{ test "$(stat_val "$MNT" cache_hits)" -ge "$AFRAMES" ||
		test "$(stat_val "$MNT" passthrough_opens)" -ge 1; } &&
	unmount_store "$MNT"
'

test_expect_success 'the whole path through cache_size=128M gives Nix NAR hash' '
	mount_store "$REF" "$SMALLMNT" "cache_size=128M" &&
	check_mount_hashes "$SMALLMNT" "$P" &&
	nixoci stats "$SMALLMNT" | tee stats.3 &&
	test "$(stat_val "$SMALLMNT" evictions)" -gt 0 &&
	test "$(stat_val "$SMALLMNT" verify_failures)" = 0 &&
	test "$(stat_val "$SMALLMNT" errors)" = 0
'

# How many frames the background workers fetch before the reader reaches
# them depends on how busy the machine is (an idle run gives all but a few);
# that it engages, and that no frame is fetched twice, does not. The two
# frames of slack are the NAR's own bytes before a and between a and b.
test_expect_success 'that single sequential reader got readahead, without double fetches' '
	ra=$(stat_val "$SMALLMNT" readahead_frames) &&
	nframes=$(stat_val "$SMALLMNT" frames_fetched) &&
	echo "readahead_frames $ra, frames_fetched $nframes of $NFRAMES" &&
	test "$ra" -gt $((NFRAMES / 6)) &&
	test "$nframes" -ge "$NFRAMES" && test "$nframes" -le $((NFRAMES + 2))
'

test_expect_success '... and the cache stayed under the bound' '
	cb=$(stat_val "$SMALLMNT" cache_bytes) &&
	du_b=$(du -sb "$TRASH/cache-bounded/chunks" "$TRASH/cache-bounded/blobs" |
		awk "{ s += \$1 } END { print s }") &&
	du_all=$(du -sb "$TRASH/cache-bounded" | cut -f1) &&
	echo "cache_bytes $cb, du of chunks and blobs $du_b, of the whole cache $du_all" &&
	test "$cb" -le $((128 * MIB)) &&
	test "$du_b" -le $((128 * MIB)) &&
	test "$du_all" -le $((128 * MIB + 4 * MIB)) &&
	unmount_store "$SMALLMNT"
'

test_done
