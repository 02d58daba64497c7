#!/bin/bash
test_description='LMDB and disk faults in the cache (LD_PRELOAD fault injector)

tests/lib/faultinject.c makes chosen LMDB calls (mdb_txn_begin, mdb_put,
mdb_txn_commit: MDB_PANIC, MDB_MAP_FULL, MDB_MAP_RESIZED) and system calls
(open, write, fsync, rename: ENOSPC, EIO) fail inside nixoci-fs. In each case
the daemon keeps running, every read returns the right bytes (the fetched,
verified frame is served even when it cannot be cached), the failure is a
clear log line, and a remount without faults over the same cache serves
every path right (NarHash) without a verification failure. Run under ASan
too (tests/run-all.sh SAN_TESTS): a failed write-transaction begin in the
syncer used to abort an uninitialized MDB_txn pointer.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/lazy.sh"

test_require_cmd docker-registry curl openssl
test_require_nix
test_require_fuse
test_require_binaries

FAULT_SO=$(cd "$(dirname "$(command -v nixoci-fs)")/.." && pwd)/tests/lib/faultinject.so
[ -f "$FAULT_SO" ] || skip_all "no $FAULT_SO (run make tests)"
# the shim is preloaded before the ASan runtime in build-san
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}:verify_asan_link_order=0"

# faulty_mount NAME FAULTS: mount with the injector (a fresh cache NAME),
# read every file (each must be right), check the daemon lives.
faulty_mount() {
	local name=$1 faults=$2 f
	M=$TRASH/m-$name
	NIXOCI_FAULT=$faults LD_PRELOAD=$FAULT_SO mount_store "$REF" "$M" "cache=$TRASH/c-$name,readahead=0" &&
	for f in a b c; do cmp "$M/$PB/$f" "$P/$f" || return 1; done &&
	pid_alive "${MOUNT_PID[$M]}" &&
	grep "faultinject:" "${MOUNT_LOG[$M]}" | head -n 3
}

# remount_clean NAME: the same cache without faults serves everything right.
remount_clean() {
	unmount_store "$M" &&
	mount_store "$REF" "$M" "cache=$TRASH/c-$1" &&
	check_mount_hashes "$M" "$P" &&
	test "$(stat_val "$M" verify_failures)" = 0 &&
	unmount_store "$M"
}

test_expect_success 'setup: registry, a path of 3 x 2 MiB (24 frames), push' '
	start_registry &&
	REF=$REG/faults &&
	P=$(make_data_path nixoci-faults a:2 b:2 c:2) &&
	PB=${P##*/} &&
	nixoci push "$REF" "$P" >push.out 2>&1
'

test_expect_success 'every mdb_txn_begin after start-up fails (MDB_PANIC): reads right, syncer survives' '
	MOUNT_LOG_ALLOW="faultinject|cannot record|MDB_PANIC" &&
	faulty_mount bgn "mdb_txn_begin:4-:MDB_PANIC" &&
	grep -E "lmdb: cannot record [0-9]+ chunks: MDB_PANIC" "${MOUNT_LOG[$M]}" &&
	remount_clean bgn
'

test_expect_success 'mdb_txn_begin fails with MDB_MAP_RESIZED once: adopted, retried, recorded' '
	MOUNT_LOG_ALLOW="faultinject" &&
	faulty_mount resized "mdb_txn_begin:4:MDB_MAP_RESIZED" &&
	unmount_store "$M" &&
	mount_store "$REF" "$M" "cache=$TRASH/c-resized" &&
	for f in a b c; do cmp "$M/$PB/$f" "$P/$f" || return 1; done &&
	test "$(stat_val "$M" frames_fetched)" -le 1 &&
	unmount_store "$M"
'

test_expect_success 'mdb_txn_commit fails with MDB_MAP_FULL once: the map grows, the batch is recorded' '
	MOUNT_LOG_ALLOW="faultinject" &&
	faulty_mount mapfull "mdb_txn_commit:3:MDB_MAP_FULL" &&
	grep "lmdb map grown to 2048 MiB" "${MOUNT_LOG[$M]}" &&
	unmount_store "$M" &&
	mount_store "$REF" "$M" "cache=$TRASH/c-mapfull" &&
	for f in a b c; do cmp "$M/$PB/$f" "$P/$f" || return 1; done &&
	test "$(stat_val "$M" frames_fetched)" = 0 &&
	unmount_store "$M"
'

test_expect_success 'mdb_put always MDB_MAP_FULL: the map grows to its bound, then one log line per batch' '
	MOUNT_LOG_ALLOW="faultinject|cannot record|MDB_MAP_FULL" &&
	faulty_mount putfull "mdb_put:1-:MDB_MAP_FULL" &&
	grep "lmdb map grown to 65536 MiB" "${MOUNT_LOG[$M]}" &&
	grep -E "cannot record [0-9]+ chunks: MDB_MAP_FULL" "${MOUNT_LOG[$M]}" &&
	remount_clean putfull
'

test_expect_success 'mdb_txn_commit fails with MDB_PANIC from the 3rd on: reads right' '
	MOUNT_LOG_ALLOW="faultinject|cannot record|MDB_PANIC|lmdb" &&
	faulty_mount cmt "mdb_txn_commit:3-:MDB_PANIC" &&
	remount_clean cmt
'

test_expect_success 'fsync of chunk files fails (EIO): one log line, nothing recorded, reads right' '
	MOUNT_LOG_ALLOW="faultinject|cannot sync chunk files" &&
	faulty_mount fsync "fsync@/chunks/:1-:EIO" &&
	grep "cannot sync chunk files: Input/output error; they stay unrecorded" "${MOUNT_LOG[$M]}" &&
	remount_clean fsync
'

test_expect_success 'tmp files cannot be written (ENOSPC): one log line each, reads right' '
	MOUNT_LOG_ALLOW="faultinject|cannot store" &&
	faulty_mount wfull "write@c-wfull/tmp/:2-:ENOSPC" &&
	grep "cannot store chunks file: No space left on device" "${MOUNT_LOG[$M]}" &&
	remount_clean wfull
'

test_expect_success 'tmp files cannot be created (EIO) and renames fail (EIO): reads right' '
	MOUNT_LOG_ALLOW="faultinject|cannot store" &&
	faulty_mount create "openat@c-create/tmp/:3-:EIO,open@c-create/tmp/:3-:EIO,renameat@/chunks/:2-5:EIO,rename@/chunks/:2-5:EIO" &&
	grep "cannot store chunks file: Input/output error" "${MOUNT_LOG[$M]}" &&
	remount_clean create
'

test_expect_success 'a hit long after its last use is recorded by the syncer thread, not the reader' '
	MOUNT_LOG_ALLOW="faultinject" &&
	M=$TRASH/m-touch &&
	mount_store "$REF" "$M" "cache=$TRASH/c-touch,readahead=0" &&
	for f in a b c; do cmp "$M/$PB/$f" "$P/$f" || return 1; done &&
	unmount_store "$M" &&
	NIXOCI_FAULT_CLOCK=120 NIXOCI_FAULT_TRACE=fdatasync,fsync,msync LD_PRELOAD=$FAULT_SO \
		mount_store "$REF" "$M" "cache=$TRASH/c-touch,readahead=0" &&
	for f in a b c; do cmp "$M/$PB/$f" "$P/$f" || return 1; done &&
	test "$(stat_val "$M" frames_fetched)" = 0 &&
	unmount_store "$M" &&
	grep "faultinject: trace" "${MOUNT_LOG[$M]}" >syncs &&
	cat syncs &&
	grep -q "thread nx-sync$" syncs &&
	! grep -v "thread nx-sync$" syncs
'

test_done
