#!/bin/bash
test_description='a file read almost whole is completed in the background and then passthrough

A regular file of more than 1 MiB of which at least 3/4 is cached and at
most 2 MiB (compressed) is missing gets its missing frames fetched in the
background when a reader releases it (cache/complete.c); it is then
complete, files.c copies it, and its next open is passthrough. Checked:
reading 5 of the 6 frames of a file leads to the sixth being fetched (and
verified: the bytes equal the store'"'"'s and nix-store --dump'"'"'s), the next
open is passthrough with no READ reaching the daemon, and a warm remount
fetches nothing; a file read to 1/3 is not completed; readahead=0 and
passthrough=off turn it off; a cache near its cache_size bound is not made
to evict for it; an unmount while a completion is stalled on the link
exits 0 with nothing half written, and a remount reads the file right.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
CACHE=$TRASH/cache-cpl
K=1024

# read_part F BYTES...: open F once, read its first BYTES (for each F) in
# 128 KiB pieces from the end down (no readahead by the kernel or the
# daemon: POSIX_FADV_RANDOM, and a backwards reader is never sequential),
# check them against the store'"'"'s file; every file stays open until all
# are read, then all are closed (one release each)
read_part() {
	/usr/bin/python3 - "$FDATA" "$@" <<-'EOF'
	import os, sys
	src, args = sys.argv[1], sys.argv[2:]
	fds = []
	for f, n in zip(args[0::2], args[1::2]):
	    n = int(n)
	    fd = os.open(f, os.O_RDONLY)
	    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
	    want = open(os.path.join(src, os.path.basename(f)), "rb").read(n)
	    off = n
	    while off > 0:
	        step = min(128 * 1024, off)
	        off -= step
	        got = os.pread(fd, step, off)
	        if got != want[off:off + step]:
	            sys.exit("%s: bytes at %d differ" % (f, off))
	    fds.append(fd)
	for fd in fds:
	    os.close(fd)
	EOF
}
copies() { find "$1/files" -type f 2>/dev/null | wc -l; }
complete_at_least() { test "$(stats_field "$MNT" complete_files)" -ge "$1"; }
copies_at_least() { test "$(copies "$1")" -ge "$2"; }

test_expect_success 'setup: registry behind a fault proxy, 16 files of 6 frames' '
	start_registry &&
	start_faultproxy "$REG" &&
	build_fault_data &&
	nixoci push "$REG/cpl" "$FDATA" >/dev/null &&
	D=${FDATA##*/} &&
	mount_store "$PROXY/cpl" "$MNT" "cache=$CACHE,debug" &&
	if grep -q "passthrough in use" "${MOUNT_LOG[$MNT]}"; then
		test_set_prereq PASSTHROUGH
	else
		echo "passthrough not in use here: completion is off with it"
	fi
'

test_expect_success PASSTHROUGH '5 of 6 frames read: the sixth is fetched, the next open is passthrough' '
	b0=$(stats_field "$MNT" bytes_fetched) &&
	read_part "$MNT/$D/f04" $((1280 * K)) &&
	test_wait_for 30 complete_at_least 1 &&
	test_wait_for 30 copies_at_least "$CACHE" 1 &&
	nixoci stats "$MNT" | grep -E "^(complete_|bytes_fetched|fuse_read |passthrough)" &&
	grep "complete: " "${MOUNT_LOG[$MNT]}" &&
	grep -q "complete: .* entry 4: complete" "${MOUNT_LOG[$MNT]}" &&
	cb=$(stats_field "$MNT" complete_bytes) &&
	test "$cb" -gt $((200 * K)) && test "$cb" -le $((600 * K)) &&
	test $(($(stats_field "$MNT" bytes_fetched) - b0)) -le $((1536 * K + 400 * K)) &&
	r0=$(stats_field "$MNT" fuse_read) &&
	p0=$(stats_field "$MNT" passthrough_opens) &&
	cmp "$MNT/$D/f04" "$FDATA/f04" &&
	test "$(stats_field "$MNT" passthrough_opens)" = $((p0 + 1)) &&
	test "$(stats_field "$MNT" fuse_read)" = "$r0" &&
	nix-store --dump "$MNT/$D/f04" >mnt.nar &&
	nix-store --dump "$FDATA/f04" >want.nar &&
	cmp mnt.nar want.nar
'

test_expect_success PASSTHROUGH 'a file read to a third is not completed' '
	read_part "$MNT/$D/f05" $((512 * K)) &&
	test_wait_for 30 grep -q "complete: .* entry 5: not mostly cached" "${MOUNT_LOG[$MNT]}" &&
	test "$(stats_field "$MNT" complete_files)" = 1 &&
	test "$(copies "$CACHE")" = 1
'

test_expect_success PASSTHROUGH 'a warm remount fetches nothing and opens the completed file passthrough' '
	unmount_store "$MNT" &&
	test -z "$(ls -A "$CACHE/tmp")" &&
	mount_store "$PROXY/cpl" "$MNT" "cache=$CACHE,debug" &&
	cmp "$MNT/$D/f04" "$FDATA/f04" &&
	test "$(stats_field "$MNT" passthrough_opens)" = 1 &&
	test "$(stats_field "$MNT" fuse_read)" = 0 &&
	test "$(stats_field "$MNT" bytes_fetched)" = 0 &&
	unmount_store "$MNT"
'

test_expect_success PASSTHROUGH 'readahead=0 turns it off' '
	mount_store "$PROXY/cpl" "$MNT" "cache=$CACHE,debug,readahead=0" &&
	read_part "$MNT/$D/f06" $((1280 * K)) &&
	sleep 2 &&
	test "$(stats_field "$MNT" complete_files)" = 0 &&
	! grep -q "complete: " "${MOUNT_LOG[$MNT]}" &&
	test "$(copies "$CACHE")" = 1 &&
	unmount_store "$MNT"
'

test_expect_success 'passthrough=off turns it off' '
	mount_store "$PROXY/cpl" "$MNT" "cache=$CACHE,debug,passthrough=off" &&
	read_part "$MNT/$D/f07" $((1280 * K)) &&
	sleep 2 &&
	test "$(stats_field "$MNT" complete_files)" = 0 &&
	! grep -q "complete: " "${MOUNT_LOG[$MNT]}" &&
	unmount_store "$MNT"
'

# 14 MiB: a file of 1.5 MiB may be copied (at most an eighth), and after
# 9 x 5 frames (11.25 MiB) the file and its missing frame would take the
# cache over 90% of its bound (12.6 MiB), without evicting anything yet
test_expect_success PASSTHROUGH 'a cache near its cache_size bound does not complete' '
	mount_store "$PROXY/cpl" "$MNT" "cache=$TRASH/cache-small,cache_size=14M,debug" &&
	set -- &&
	for f in f08 f09 f10 f11 f12 f13 f14 f15 f16; do
		set -- "$@" "$MNT/$D/$f" $((1280 * K))
	done &&
	read_part "$@" &&
	test_wait_for 30 eval "test \$(grep -c \"complete: .*: cache near its bound\" \"${MOUNT_LOG[$MNT]}\") -ge 9" &&
	nixoci stats "$MNT" | grep -E "^(complete_|cache_bytes|cache_limit|evictions)" &&
	test "$(stats_field "$MNT" complete_files)" = 0 &&
	test "$(stats_field "$MNT" evictions)" = 0 &&
	test "$(copies "$TRASH/cache-small")" = 0 &&
	unmount_store "$MNT"
'

test_expect_success PASSTHROUGH 'unmount while a completion stalls on the link: exit 0, nothing half written' '
	SC=$TRASH/cache-stall &&
	mount_store "$PROXY/cpl" "$MNT" "cache=$SC,debug" &&
	exec 9<"$MNT/$D/f03" &&
	read_part "$MNT/$D/f03" $((1280 * K)) &&
	: the release comes with the last close, once the blobs stall &&
	fault_set "mode=stall match=/blobs/ after=1000" &&
	exec 9<&- &&
	test_wait_for 30 grep -q "complete: .* entry 3: fetching" "${MOUNT_LOG[$MNT]}" &&
	test_wait_for 30 eval "grep -q \"fault:stall\" \"\$PROXY_LOG\"" &&
	unmount_store "$MNT" &&
	fault_set "mode=pass" &&
	test -z "$(ls -A "$SC/tmp")" &&
	test "$(copies "$SC")" = 0 &&
	mount_store "$PROXY/cpl" "$MNT" "cache=$SC,debug" &&
	cmp "$MNT/$D/f03" "$FDATA/f03" &&
	unmount_store "$MNT"
'
exec 9<&-
fault_set "mode=pass" 2>/dev/null

test_done
