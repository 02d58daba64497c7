#!/bin/bash
test_description='daemon mode: an exit status that tells the truth, relative paths, a quick SIGTERM

nixoci-fs without -f goes to the background. Its parent exits only once the
store is open (0) or the daemon gave up (its status, with no mount left);
relative cache= and log= paths name what they named where it was started;
SIGTERM ends the daemon within a few seconds even while a registry stalls
every transfer (the transfers are cancelled), and the mount is gone.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt

# daemon_pid CACHE: the pid the daemon noted in its cache lock
daemon_pid() {
	sed -n 's/^pid \([0-9]*\),.*/\1/p' "$1/lock"
}

# the daemon is ours to stop if a test fails half way
stop_daemon() {
	local mnt=$1 cache=$2 pid
	pid=$(daemon_pid "$cache" 2>/dev/null)
	mountpoint -q "$mnt" && { fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt"; }
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
	return 0
}

test_expect_success 'setup: registry, data, fault proxy' '
	start_registry &&
	build_fault_data &&
	nixoci push "$REG/life" "$FDATA" &&
	start_faultproxy "$REG"
'

test_expect_success 'daemon mode with relative cache= and log=: mounts, paths are absolute' '
	mkdir -p "$TRASH/start" "$MNT" &&
	test_atexit "stop_daemon $MNT $TRASH/start/rel-cache" &&
	(cd "$TRASH/start" && nixoci-fs -o cache=rel-cache,log=rel.log,timeout=60,readahead=0 \
		"$PROXY/life" ../mnt) 2>start.err &&
	cat start.err &&
	mountpoint -q "$MNT" &&
	test -f "$TRASH/start/rel-cache/lock" &&
	test -f "$TRASH/start/rel.log" &&
	pid=$(daemon_pid "$TRASH/start/rel-cache") &&
	test -n "$pid" && kill -0 "$pid" &&
	grep -q "mounted on $MNT\$" "$TRASH/start/rel-cache/lock" &&
	test "$(readlink /proc/$pid/cwd)" = / &&
	cmp "$MNT/${FDATA##*/}/f01" "$FDATA/f01" &&
	test -n "$(find "$TRASH/start/rel-cache" -path "*chunks*" -type f | head -n 1)"
'

test_expect_success 'SIGTERM while the registry stalls every transfer: gone within 5 s, no mount' '
	pid=$(daemon_pid "$TRASH/start/rel-cache") &&
	fault_set mode=stall match=/blobs/ &&
	{ timeout 120 cat "$MNT/${FDATA##*/}/f02" >/dev/null 2>reader.err & } &&
	reader=$! &&
	test_wait_for 20 eval "[ \$(fault_hits stall) -ge 1 ]" &&
	sleep 1 &&
	kill -0 "$pid" &&
	timed eval "kill -TERM $pid && test_wait_for 5 pid_gone $pid" &&
	echo "the daemon exited $ELAPSED_MS ms after SIGTERM (timeout=60)" &&
	! mountpoint -q "$MNT" &&
	! grep -q " $MNT " /proc/self/mounts &&
	wait_pid_status $reader 10 st &&
	echo "the stalled reader exited with $st: $(cat reader.err)" &&
	test "$st" != 124 &&
	fault_set pass
'

test_expect_success 'the log file has no error line, and nothing was cached wrong' '
	cat "$TRASH/start/rel.log" &&
	! log_errors "$TRASH/start/rel.log" &&
	mount_store "$REG/life" "$MNT" "cache=$TRASH/start/rel-cache" &&
	check_mount_hashes "$MNT" "$FDATA" &&
	unmount_store "$MNT"
'

test_expect_success 'a damaged store in daemon mode: exit status 1, the error on stderr, no mount' '
	C=$TRASH/start/rel-cache &&
	/usr/bin/python3 -c "import sys; f = open(sys.argv[1], \"r+b\"); f.write(b\"\\xde\\xad\" * 4096)" \
		"$C/index.mdb/data.mdb" &&
	st=0 &&
	timeout 60 nixoci-fs -o "cache=$C" "$REG/life" "$MNT" 2>bad.err || st=$? &&
	cat bad.err &&
	test "$st" = 1 &&
	grep -q "remove the directory to rebuild" bad.err &&
	! mountpoint -q "$MNT" &&
	! grep -q " $MNT " /proc/self/mounts
'

test_expect_success 'a healthy store in daemon mode still exits 0 (and is unmounted by fusermount3)' '
	rm -rf "$TRASH/cache2" &&
	nixoci-fs -o "cache=$TRASH/cache2" "$REG/life" "$MNT" &&
	test_atexit "stop_daemon $MNT $TRASH/cache2" &&
	mountpoint -q "$MNT" &&
	pid=$(daemon_pid "$TRASH/cache2") &&
	cmp "$MNT/${FDATA##*/}/f03" "$FDATA/f03" &&
	fusermount3 -u "$MNT" &&
	test_wait_for 20 pid_gone "$pid"
'

test_done
