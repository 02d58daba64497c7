#!/bin/bash
test_description='FUSE passthrough for fully cached files, and its fallbacks

Where the kernel offers FUSE_PASSTHROUGH and the daemon runs as root, a
regular file whose frames are all cached gets a copy under cache/files/ and
later opens are answered with FOPEN_PASSTHROUGH: the kernel reads the copy,
no READ reaches the daemon. Checked: the bytes (read and mmap), that reads
really bypass the daemon, a warm remount (no fetch, passthrough at once),
-o passthrough=off, that the copy an open file reads is never evicted
(eviction pressure through a small cache_size while it is open; closed, it
goes), the suite read test t0010 run both ways and its CPython test t0020
with passthrough off (the suite runs it with it on), and a rootless mount
(passthrough refused, one log line, reads still right).'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp unshare fusermount3
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
CACHE=$TRASH/cache-pt

test_expect_success 'setup: registry, the small closure, a mount' '
	start_registry &&
	build_small_closure &&
	DATA=$(echo "$SMALL_CLOSURE" | grep -- -hello-data-) &&
	nixoci push "$REG/small" "$SMALL" >/dev/null &&
	F=share/hello/numbers.txt &&
	G=share/hello/greeting.txt &&
	mount_store "$REG/small" "$MNT" "cache=$CACHE,passthrough=auto"
'

test_expect_success 'one log line says whether passthrough is in use' '
	test_wait_for 10 grep -q "nixoci-fs: passthrough" "${MOUNT_LOG[$MNT]}" &&
	grep "nixoci-fs: passthrough" "${MOUNT_LOG[$MNT]}" >pt.lines &&
	cat pt.lines &&
	test "$(wc -l <pt.lines)" = 1 &&
	if grep -q "passthrough in use" pt.lines; then
		test_set_prereq PASSTHROUGH
	fi
'

copied() { test -n "$(find "$CACHE/files" -type f 2>/dev/null | head -n 1)"; }

test_expect_success 'a first read goes through the daemon and leaves a copy' '
	cmp "$MNT/${DATA##*/}/$F" "$DATA/$F" &&
	cmp "$MNT/${DATA##*/}/$G" "$DATA/$G" &&
	if test_have_prereq PASSTHROUGH; then
		test_wait_for 20 copied &&
		find "$CACHE/files" -type f | wc -l
	fi
'

test_expect_success PASSTHROUGH 'later opens are passthrough: right bytes, no READ reaches the daemon' '
	test_wait_for 20 eval "test \$(find \"$CACHE/files\" -type f | wc -l) -ge 2" &&
	echo 3 >/proc/sys/vm/drop_caches &&
	before=$(stats_field "$MNT" fuse_read) &&
	pt0=$(stats_field "$MNT" passthrough_opens) &&
	cmp "$MNT/${DATA##*/}/$F" "$DATA/$F" &&
	/usr/bin/python3 -c "import mmap,sys
a=open(sys.argv[1],\"rb\"); b=open(sys.argv[2],\"rb\")
m=mmap.mmap(a.fileno(),0,prot=mmap.PROT_READ)
sys.exit(0 if m[:]==b.read() else 1)" "$MNT/${DATA##*/}/$F" "$DATA/$F" &&
	after=$(stats_field "$MNT" fuse_read) &&
	pt1=$(stats_field "$MNT" passthrough_opens) &&
	echo "reads $before -> $after, passthrough opens $pt0 -> $pt1" &&
	test "$after" = "$before" &&
	test "$pt1" -ge $((pt0 + 2))
'

test_expect_success 'every path hashes to Nix NarHash (copies and chunks mixed)' '
	check_mount_hashes "$MNT" $SMALL_CLOSURE
'

test_expect_success 'warm remount over the same cache: nothing fetched, passthrough at once' '
	unmount_store "$MNT" &&
	mount_store "$REG/small" "$MNT" "cache=$CACHE" &&
	cmp "$MNT/${DATA##*/}/$F" "$DATA/$F" &&
	check_mount_hashes "$MNT" $SMALL_CLOSURE &&
	test "$(stats_field "$MNT" frames_fetched)" = 0 &&
	if test_have_prereq PASSTHROUGH; then
		test "$(stats_field "$MNT" passthrough_opens)" -ge 1
	fi
'

test_expect_success 'a damaged copy is dropped, the read stays right' '
	if test_have_prereq PASSTHROUGH; then
		unmount_store "$MNT" &&
		f=$(find "$CACHE/files" -type f -size +100k | head -n 1) &&
		test -n "$f" &&
		chmod u+w "$f" && truncate -s 100 "$f" &&
		mount_store "$REG/small" "$MNT" "cache=$CACHE" &&
		cmp "$MNT/${DATA##*/}/$F" "$DATA/$F" &&
		check_mount_hashes "$MNT" $SMALL_CLOSURE
	fi
'

test_expect_success '-o passthrough=off: no copies used, one log line says so' '
	unmount_store "$MNT" &&
	mount_store "$REG/small" "$MNT" "cache=$CACHE,passthrough=off" &&
	grep "nixoci-fs: passthrough" "${MOUNT_LOG[$MNT]}" >off.lines &&
	test "$(wc -l <off.lines)" = 1 &&
	grep -q "passthrough=off" off.lines &&
	cmp "$MNT/${DATA##*/}/$F" "$DATA/$F" &&
	test "$(stats_field "$MNT" passthrough_opens)" = 0 &&
	unmount_store "$MNT"
'

# An open file pins its copy: LRU eviction (copies go first) must pass it
# by while the kernel reads it, whatever the pressure; closed, it may go.
EVMNT=$TRASH/mnt-evict
EVCACHE=$TRASH/cache-evict

test_expect_success PASSTHROUGH 'an open passthrough file keeps its copy under eviction pressure' '
	build_fault_data &&
	nixoci push "$REG/fault" "$FDATA" >/dev/null &&
	mount_store "$REG/fault" "$EVMNT" "cache=$EVCACHE,cache_size=16M,passthrough=auto" &&
	D=$EVMNT/${FDATA##*/} &&
	cmp "$D/f01" "$FDATA/f01" &&
	test_wait_for 20 eval "test -n \"\$(find \"$EVCACHE/files\" -type f)\"" &&
	copy=$(find "$EVCACHE/files" -type f) &&
	test "$(echo "$copy" | wc -l)" = 1 &&
	pt0=$(stats_field "$EVMNT" passthrough_opens) &&
	exec 9<"$D/f01" &&
	test "$(stats_field "$EVMNT" passthrough_opens)" = $((pt0 + 1)) &&
	ev0=$(stats_field "$EVMNT" evictions) &&
	for f in $FDATA_FILES; do
		test $f = f01 || cmp "$D/$f" "$FDATA/$f" || return 1
	done &&
	ev1=$(stats_field "$EVMNT" evictions) &&
	echo "evictions $ev0 -> $ev1 reading 22.5 MiB through a 16 MiB cache" &&
	test "$ev1" -gt "$ev0" &&
	test -f "$copy" &&
	cmp - "$FDATA/f01" <&9 &&
	exec 9<&- &&
	for f in $FDATA_FILES; do
		test $f = f01 || cmp "$D/$f" "$FDATA/$f" || return 1
	done &&
	echo "evictions $(stats_field "$EVMNT" evictions) after the second pass" &&
	test ! -e "$copy" &&
	cmp "$D/f01" "$FDATA/f01" &&
	unmount_store "$EVMNT"
'
exec 9<&-

# run_suite_test T MODE: the suite's test T with every mount in MODE
run_suite_test() {
	NIXOCI_TEST_PASSTHROUGH=$2 bash "$TEST_SRCDIR/tests/integ/$1.t" >$1-$2.out 2>&1
	rc=$?
	tail -n 3 $1-$2.out
	return $rc
}
run_t0010() { run_suite_test t0010-push-mount "$1"; }

test_expect_success 'the suite read test t0010 with passthrough=auto' '
	run_t0010 auto
'

test_expect_success 'the suite read test t0010 with passthrough=off' '
	run_t0010 off
'

# t0020 runs CPython from the mount (exec, mmap of shared objects); as the
# suite runs it, passthrough is on (the default): here it runs with it off.
test_expect_success 'the suite program test t0020 (CPython closure) with passthrough=off' '
	run_suite_test t0020-big-closure off
'

# A rootless mount: root of a new user namespace (as rootless podman runs),
# so the mount has every capability inside that namespace and none in the
# initial one, which backing files need. Everything runs inside it: the
# mount lives in its own mount namespace.
U=$TRASH/user
cat >rootless.sh <<'SCRIPT'
set -u
U=$1 REF=$2 FILE=$3 WANT=$4
nixoci-fs -f -o "cache=$U/cache" "$REF" "$U/mnt" >"$U/log" 2>&1 &
pid=$!
i=0
until mountpoint -q "$U/mnt"; do
	i=$((i + 1))
	if [ $i -gt 300 ] || ! kill -0 $pid 2>/dev/null; then
		echo "rootless mount did not come up"; kill $pid 2>/dev/null; exit 1
	fi
	sleep 0.1
done
rc=0
cmp "$U/mnt/$FILE" "$WANT" || rc=1
sleep 1 # a copy would be made now, were passthrough in use
cmp "$U/mnt/$FILE" "$WANT" || rc=1
getfattr -n user.nixoci.stats --only-values "$U/mnt" >"$U/stats" 2>/dev/null ||
	nixoci stats "$U/mnt" >"$U/stats" || rc=1
umount "$U/mnt" || { umount -l "$U/mnt"; rc=1; }
wait $pid || rc=1
exit $rc
SCRIPT

test_expect_success 'a rootless mount: passthrough refused, one log line, reads right' '
	mkdir -p "$U/mnt" "$U/cache" &&
	unshare --user --map-root-user --mount \
		bash rootless.sh "$U" "$REG/small" "${DATA##*/}/$F" "$DATA/$F" &&
	cat "$U/log" &&
	grep "nixoci-fs: passthrough" "$U/log" >u.lines &&
	test "$(wc -l <u.lines)" = 1 &&
	grep -q "passthrough not in use: .*CAP_SYS_ADMIN" u.lines &&
	! log_errors "$U/log" &&
	grep -qx "passthrough_opens 0" "$U/stats" &&
	test -z "$(find "$U/cache/files" -type f)"
'

test_done
