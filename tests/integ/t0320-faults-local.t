#!/bin/bash
test_description='faults outside the network: registry killed, daemon killed, disk full, cache damaged

The registry is killed (SIGKILL) during reads and restarted on the same port
and storage; nixoci-fs is killed during parallel reads and remounted on the
same cache; the cache lives on a full disk; the cache directory is deleted
under a running daemon; the LMDB index is damaged before a mount. In each
case the daemon answers with the right bytes or EIO, and nothing wrong is
ever served afterwards (dumps hash to Nix NarHash).'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp
test_require_nix
test_require_fuse
test_require_binaries

T=4
MNT=$TRASH/mnt
# the network and disk failures this test causes on purpose
MOUNT_LOG_ALLOW='registry 127\.0\.0\.1|registry unreachable|cannot store|No space left|cache .*: cannot'

# files_ok_or_eio MNT: every data file reads right or fails with EIO;
# FILES_EIO counts the EIOs.
files_ok_or_eio() {
	local f bad=0
	FILES_EIO=0
	for f in $FDATA_FILES; do
		if timeout 60 cat "$1/${FDATA##*/}/$f" >got 2>err; then
			cmp got "$FDATA/$f" || { echo "WRONG BYTES $f"; bad=1; }
		else
			grep -q "Input/output error" err || { echo "$f: $(cat err)"; bad=1; }
			FILES_EIO=$((FILES_EIO + 1))
		fi
	done
	echo "$FILES_EIO of $(echo $FDATA_FILES | wc -w) files failed with EIO"
	return $bad
}

if mkdir -p "$TRASH/probe" && mount -t tmpfs -o size=1m tmpfs "$TRASH/probe" 2>/dev/null; then
	umount "$TRASH/probe"
	test_set_prereq TMPFS
fi

test_expect_success 'setup: registry and 24 MiB of data' '
	start_registry &&
	build_fault_data &&
	nixoci push "$REG/local" "$FDATA"
'

test_expect_success 'registry killed (SIGKILL) mid-read and restarted: reads right or EIO, heals' '
	mount_store "$REG/local" "$MNT" "timeout=$T,readahead=0" &&
	ls "$MNT/${FDATA##*/}" >/dev/null &&
	pids= &&
	for f in $FDATA_FILES; do
		{ timeout 60 cat "$MNT/${FDATA##*/}/$f" >"par-$f" 2>"par-$f.err"; echo $? >"par-$f.rc"; } &
		pids="$pids $!"
	done &&
	test_wait_for 30 eval "test \$(stats_field $MNT frames_fetched) -ge 2" &&
	registry_kill9 &&
	for p in $pids; do wait_pid_status $p 60 st || return 1; done &&
	nok=0 neio=0 &&
	for f in $FDATA_FILES; do
		if [ "$(cat par-$f.rc)" = 0 ]; then
			cmp "par-$f" "$FDATA/$f" || return 1; nok=$((nok + 1))
		else
			grep -q "Input/output error" "par-$f.err" || { cat "par-$f.err"; return 1; }
			neio=$((neio + 1))
		fi
	done &&
	echo "during the kill: $nok right, $neio EIO" &&
	fs_alive "$MNT" &&
	restart_registry &&
	for f in $FDATA_FILES; do
		heal_read "$MNT/${FDATA##*/}/$f" "$FDATA/$f" $((T + 5)) || return 1
	done &&
	unmount_store "$MNT"
'

test_expect_success 'nixoci-fs killed (SIGKILL) in parallel reads; the remount verifies (NarHash)' '
	K=$TRASH/killed &&
	mount_store "$REG/local" "$K" "cache=$TRASH/cache-k" &&
	pids= &&
	for f in $FDATA_FILES; do
		{ cat "$K/${FDATA##*/}/$f" >/dev/null 2>&1; } & pids="$pids $!"
	done &&
	test_wait_for 30 eval "test \$(stats_field $K frames_fetched) -ge 4" &&
	kill_mount "$K" &&
	for p in $pids; do wait_pid_status $p 30 st || return 1; done &&
	mount_store "$REG/local" "$K" "cache=$TRASH/cache-k" &&
	check_mount_hashes "$K" "$FDATA" &&
	test "$(stats_field "$K" verify_failures)" = 0 &&
	test "$(stats_field "$K" cache_hits)" -gt 0 &&
	unmount_store "$K" &&
	mount_store "$REG/local" "$K" "cache=$TRASH/cache-k" &&
	check_mount_hashes "$K" "$FDATA" &&
	test "$(stats_field "$K" frames_fetched)" = 0 &&
	unmount_store "$K"
'

test_expect_success TMPFS 'cache on a full 8 MiB disk (no eviction limit): reads still right, daemon up' '
	D=$TRASH/small-disk && mkdir -p "$D" &&
	mount -t tmpfs -o size=8m tmpfs "$D" &&
	test_atexit "umount -l $D" &&
	F=$TRASH/full &&
	mount_store "$REG/local" "$F" "cache=$D/cache,timeout=$T" &&
	files_ok_or_eio "$F" &&
	test "$FILES_EIO" = 0 &&
	fs_alive "$F" &&
	df -k "$D" &&
	grep -c "cannot store" "${MOUNT_LOG[$F]}" &&
	unmount_store "$F" &&
	mount_store "$REG/local" "$F" "cache=$D/cache,timeout=$T" &&
	files_ok_or_eio "$F" &&
	nixoci stats "$F" &&
	test "$(stats_field "$F" verify_failures)" = 0 &&
	unmount_store "$F" &&
	umount "$D"
'

test_expect_success TMPFS 'cache on an 8 MiB disk with cache_size=4M: everything reads right' '
	D=$TRASH/small-disk2 && mkdir -p "$D" &&
	mount -t tmpfs -o size=8m tmpfs "$D" &&
	test_atexit "umount -l $D" &&
	F=$TRASH/evicting &&
	mount_store "$REG/local" "$F" "cache=$D/cache,cache_size=4M,timeout=$T" &&
	check_mount_hashes "$F" "$FDATA" &&
	nixoci stats "$F" >st.out && cat st.out &&
	test "$(stats_field "$F" evictions)" -gt 0 &&
	test "$(stats_field "$F" cache_bytes)" -le $((4 << 20)) &&
	unmount_store "$F" &&
	umount "$D"
'

test_expect_success 'cache directory deleted under a running daemon: right bytes or EIO; remount rebuilds' '
	C=$TRASH/cache-del && R=$TRASH/deleted &&
	mount_store "$REG/local" "$R" "cache=$C,timeout=$T,readahead=0" &&
	cmp "$R/${FDATA##*/}/f01" "$FDATA/f01" &&
	rm -rf "$C" &&
	files_ok_or_eio "$R" &&
	fs_alive "$R" &&
	unmount_store "$R" &&
	mount_store "$REG/local" "$R" "cache=$C,timeout=$T" &&
	check_mount_hashes "$R" "$FDATA" &&
	unmount_store "$R"
'

test_expect_success 'damaged LMDB index before mount: documented outcome (see docs/reliability.md)' '
	C=$TRASH/cache-bad && B=$TRASH/bad &&
	mount_store "$REG/local" "$B" "cache=$C" &&
	cmp "$B/${FDATA##*/}/f02" "$FDATA/f02" &&
	unmount_store "$B" &&
	/usr/bin/python3 -c "import sys; f = open(sys.argv[1], \"r+b\"); f.write(b\"\\xde\\xad\" * 4096)" \
		"$C/index.mdb/data.mdb" &&
	mkdir -p "$B" &&
	{ nixoci-fs -f -o "cache=$C" "$REG/local" "$B" >bad.log 2>&1 & } &&
	bpid=$! &&
	test_wait_for 20 eval "mountpoint -q $B || ! kill -0 $bpid 2>/dev/null" &&
	cat bad.log &&
	if mountpoint -q "$B"; then
		echo "mounted: the damaged cache was rebuilt" &&
		MOUNT_PID[$B]=$bpid && MOUNT_LOG[$B]=$TRASH/bad.log &&
		test_atexit "unmount_store $B atexit" &&
		check_mount_hashes "$B" "$FDATA" &&
		unmount_store "$B"
	else
		wait_pid_status $bpid 5 st &&
		test "$st" = 1 &&
		test "$(grep -c . bad.log)" -le 2 &&
		grep -q "cache $C.*remove the directory to rebuild" bad.log
	fi
'

test_done
