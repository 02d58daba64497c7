#!/bin/bash
test_description='daemon logs: stderr when it is not a terminal, -o log=FILE with time stamps'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
mkdir -p "$MNT"

test_expect_success 'setup: registry and the small closure' '
	start_registry &&
	REF=$REG/small &&
	build_small_closure &&
	nixoci push "$REF" "$SMALL" >/dev/null 2>&1
'

# daemon_mount ERRFILE OPTS: nixoci-fs without -f, stderr to ERRFILE (not
# a terminal); returns once mounted (the parent exits after the mount).
daemon_mount() {
	test_atexit "fusermount3 -uz $MNT 2>/dev/null; true" &&
	timeout 60 nixoci-fs -o "cache=$TRASH/cache,$2" "$REF" "$MNT" 2>"$1" &&
	mountpoint -q "$MNT"
}

# daemon_unmount: the daemon (found by its mount) exits after the unmount
daemon_unmount() {
	pid=$(pgrep -f "^nixoci-fs -o cache=$TRASH/cache," | head -n 1) &&
	fusermount3 -u "$MNT" &&
	test_wait_for 20 pid_gone "$pid"
}

test_expect_success 'daemonized with stderr a file: messages after the fork still reach it' '
	daemon_mount daemon.err debug &&
	cat "$MNT/${SMALL#/nix/store/}/bin/hello" >/dev/null &&
	daemon_unmount &&
	cat daemon.err &&
	grep -q "^nixoci-fs: mounted $REF on $MNT" daemon.err &&
	grep -q "^nixoci-fs: unmounted $MNT" daemon.err
'

test_expect_success '-o log=FILE: the lines go to FILE, time-stamped, with the pid' '
	daemon_mount daemon2.err "debug,log=$TRASH/fs.log" &&
	daemon_unmount &&
	cat fs.log &&
	grep -qE "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z nixoci-fs\[[0-9]+\]: mounted $REF on $MNT" fs.log &&
	! grep -q "mounted $REF" daemon2.err
'

test_expect_success '-o log=FILE that cannot be opened: refused before mounting' '
	! timeout 60 nixoci-fs -f -o "cache=$TRASH/cache,log=$TRASH/no/such/dir/log" "$REF" "$MNT" \
		2>err &&
	cat err &&
	grep -q "log file $TRASH/no/such/dir/log" err &&
	! mountpoint -q "$MNT"
'

test_expect_success 'the one line of a failed read names the cause, the store path and the file being read' '
	DATA=$(echo "$SMALL_CLOSURE" | grep -- -hello-data-) &&
	MOUNT_LOG_ALLOW="." mount_store "$REF" "$TRASH/mnt-r" "timeout=2,readahead=0" &&
	ls "$TRASH/mnt-r/${DATA#/nix/store/}/share/hello" &&
	stop_registry "$REG_PID_reg" &&
	! cat "$TRASH/mnt-r/${DATA#/nix/store/}/share/hello/numbers.txt" >/dev/null 2>err &&
	cat err && grep -q "Input/output error" err &&
	cat "${MOUNT_LOG[$TRASH/mnt-r]}" &&
	grep -q "^nixoci-fs: registry $REG: connection refused: is the registry running? (reading $DATA/share/hello/numbers.txt)$" \
		"${MOUNT_LOG[$TRASH/mnt-r]}" &&
	MOUNT_LOG_ALLOW="." unmount_store "$TRASH/mnt-r"
'

test_done
