#!/bin/bash
test_description='the session loop: a fixed pool of workers and every way it ends

nixoci-fs serves /dev/fuse with its own pool of workers, all started before
the first request (-o max_threads=N, -s for one). More concurrent requests
than workers queue and are all answered; SIGTERM, SIGINT and an unmount each
end the daemon with status 0, the mount gone and a clean log; -o clone_fd
and -o max_idle_threads= are accepted (clone_fd says once that it has no
effect); max_threads=0 is refused before anything is mounted; a daemon
started with SIGHUP ignored (nohup) keeps ignoring it.'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt

test_expect_success 'setup: eight store paths in a registry' '
	start_registry &&
	for i in 1 2 3 4 5 6 7 8; do
		echo "session loop $i $TEST_NAME" >f$i &&
		P[$i]=$(nix-store --add f$i) &&
		nixoci push "$REG/loop" "${P[$i]}" >/dev/null || return 1
	done
'

# read_all MNT: eight readers at once, each its own path; all must match
read_all() {
	local pids= i p
	for i in 1 2 3 4 5 6 7 8; do
		cat "$1/${P[$i]##*/}" >out.$i 2>&1 &
		pids="$pids $!"
	done
	for p in $pids; do wait $p || return 1; done
	for i in 1 2 3 4 5 6 7 8; do cmp out.$i f$i || return 1; done
}

test_expect_success 'max_threads=0 is refused, naming the option, nothing mounted' '
	mkdir -p "$MNT" &&
	rc=0 &&
	nixoci-fs -f -o cache=$TRASH/c0,max_threads=0 "$REG/loop" "$MNT" 2>err || rc=$? &&
	cat err &&
	test $rc = 2 &&
	grep -q "max_threads=0" err &&
	! mountpoint -q "$MNT"
'

test_expect_success 'three workers answer eight concurrent readers; clone_fd said once' '
	mount_store "$REG/loop" "$MNT" "max_threads=3,max_idle_threads=1,clone_fd,debug" &&
	read_all "$MNT" &&
	grep "serving with" "${MOUNT_LOG[$MNT]}" &&
	grep -q "serving with 3 fuse worker threads" "${MOUNT_LOG[$MNT]}" &&
	test "$(grep -c "clone_fd has no effect" "${MOUNT_LOG[$MNT]}")" = 1
'

test_expect_success 'an unmount ends it: status 0, clean log' '
	unmount_store "$MNT" &&
	! mountpoint -q "$MNT"
'

# serve_until SIGNAL ARGS...: a daemon started by hand (mount_store knows
# no -s), eight readers, then SIGNAL: it exits 0 and unmounts
serve_until() {
	local sig=$1 pid st log=$TRASH/fs-$1.log
	shift
	# a shell starts background jobs with SIGINT ignored, and the suite
	# may run under nohup (SIGHUP ignored): undo both
	env --default-signal=INT,HUP nixoci-fs -f "$@" -o cache=$TRASH/cache-$sig "$REG/loop" "$MNT" \
		>"$log" 2>&1 &
	pid=$!
	test_atexit "kill -KILL $pid 2>/dev/null; fusermount3 -uz $MNT 2>/dev/null; true"
	test_wait_for 30 mount_ready "$MNT" "$pid" && mountpoint -q "$MNT" &&
	read_all "$MNT" &&
	kill -$sig $pid &&
	wait_pid_status $pid 20 st &&
	cat "$log" &&
	test "$st" = 0 &&
	! mountpoint -q "$MNT" &&
	! log_errors "$log"
}

test_expect_success '-s (one worker): SIGTERM ends it, status 0, unmounted' '
	serve_until TERM -s
'

test_expect_success 'the default pool: SIGINT ends it, status 0, unmounted' '
	serve_until INT
'

test_expect_success 'the default pool: SIGHUP ends it, status 0, unmounted' '
	serve_until HUP
'

# nohup: started with SIGHUP ignored, the daemon keeps ignoring it (as
# libfuse does), and the signal cancels nothing: reads still work after it
test_expect_success 'started with SIGHUP ignored (nohup): a HUP changes nothing; SIGTERM ends it' '
	log=$TRASH/fs-nohup.log
	env --ignore-signal=HUP nixoci-fs -f -o cache=$TRASH/cache-nohup "$REG/loop" "$MNT" \
		>"$log" 2>&1 &
	pid=$! &&
	test_atexit "kill -KILL $pid 2>/dev/null; fusermount3 -uz $MNT 2>/dev/null; true" &&
	test_wait_for 30 mount_ready "$MNT" "$pid" && mountpoint -q "$MNT" &&
	grep SigIgn /proc/$pid/status &&
	kill -HUP $pid && sleep 1 &&
	kill -0 $pid && mountpoint -q "$MNT" &&
	read_all "$MNT" &&
	kill -TERM $pid &&
	wait_pid_status $pid 20 st &&
	cat "$log" &&
	test "$st" = 0 &&
	! mountpoint -q "$MNT" &&
	! log_errors "$log"
'

test_done
