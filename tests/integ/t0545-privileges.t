#!/bin/bash
test_description='the sandbox: what a root daemon gives up after mounting

With -o sandbox=auto (the default) a root nixoci-fs drops every capability
but CAP_SYS_ADMIN kept permitted for passthrough (none with passthrough=off),
sets no_new_privs and, where the kernel has Landlock, cannot write outside
its cache (and a few named places). It unmounts and runs credential helpers
through a small process forked before the sandbox. Checked from
/proc/PID/status, with a test hook that makes the daemon try to create a file
outside the cache, and by reading, unmounting (fusermount3 -u, SIGTERM, with
a file held open), daemon mode, -o sandbox=off and a non-root mount.'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl cmp setpriv
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
PROBE=$TRASH/outside-the-cache

# status_field PID FIELD: a line of /proc/PID/status, value only
status_field() { sed -n "s/^$2:[[:space:]]*//p" "/proc/$1/status"; }

# outside_pid PID: the daemon's outside helper (its child named nixoci-outside)
outside_pid() {
	local c
	for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
		[ "$(cat /proc/$c/comm 2>/dev/null)" = nixoci-outside ] && { echo "$c"; return 0; }
	done
	return 1
}

sandbox_line() { grep -a "nixoci-fs: sandbox:" "$1"; }
# daemon_pid CACHE: the pid the daemon noted in its cache lock
daemon_pid() { sed -n "s/^pid \([0-9]*\),.*/\1/p" "$1/lock"; }

test_expect_success 'setup: registry, the small closure' '
	start_registry &&
	build_small_closure &&
	DATA=$(echo "$SMALL_CLOSURE" | grep -- -hello-data-) &&
	F=share/hello/numbers.txt &&
	nixoci push "$REG/small" "$SMALL" >/dev/null
'

test_expect_success 'a root mount: one sandbox line, reads right' '
	NIXOCI_TEST_SANDBOX_PROBE=$PROBE mount_store "$REG/small" "$MNT" &&
	PID=${MOUNT_PID[$MNT]} && LOG=${MOUNT_LOG[$MNT]} &&
	test_wait_for 10 grep -q "nixoci-fs: sandbox:" "$LOG" &&
	sandbox_line "$LOG" >sb.line && cat sb.line &&
	test "$(wc -l <sb.line)" = 1 &&
	if grep -q "landlock ABI" sb.line; then test_set_prereq LANDLOCK; fi &&
	check_mount_hashes "$MNT" $SMALL_CLOSURE
'

test_expect_success 'capabilities: none effective, only cap_sys_admin permitted and bounding' '
	for f in CapInh CapPrm CapEff CapBnd CapAmb NoNewPrivs Seccomp; do
		echo "$f $(status_field $PID $f)"
	done &&
	test "$(status_field $PID CapEff)" = 0000000000000000 &&
	test "$(status_field $PID CapInh)" = 0000000000000000 &&
	test "$(status_field $PID CapAmb)" = 0000000000000000 &&
	test "$(status_field $PID NoNewPrivs)" = 1 &&
	prm=$(status_field $PID CapPrm) &&
	test "$(status_field $PID CapBnd)" = "$prm" &&
	case $prm in
	0000000000200000) grep -q "cap_sys_admin (permitted, raised only" sb.line ;;
	0000000000000000) grep -q "every capability dropped" sb.line ;;
	*) false ;;
	esac
'

test_expect_success 'every thread of the daemon is in the sandbox' '
	for t in /proc/$PID/task/*; do
		echo "$(cat $t/comm) $(sed -n "s/^CapEff:\t//p" $t/status) $(sed -n "s/^NoNewPrivs:\t//p" $t/status)"
	done >threads &&
	cat threads &&
	test "$(wc -l <threads)" -gt 1 &&
	! grep -v " 0000000000000000 1\$" threads
'

test_expect_success LANDLOCK 'landlock: the daemon cannot create a file outside its cache' '
	grep -a "sandbox probe: creating $PROBE: Permission denied" "$LOG" &&
	! test -e "$PROBE"
'

test_expect_success 'the outside helper: cap_sys_admin only, no_new_privs, only its socket (and /dev/null)' '
	OPID=$(outside_pid $PID) &&
	grep -q "outside helper (pid $OPID)" sb.line &&
	test "$(status_field $OPID CapEff)" = 0000000000200000 &&
	test "$(status_field $OPID CapBnd)" = 0000000000200000 &&
	test "$(status_field $OPID NoNewPrivs)" = 1 &&
	ls -l /proc/$OPID/fd | sed 1d | sed "s/.* -> //" >ofds &&
	cat ofds &&
	grep -v "^/dev/null\$" ofds >ofds.other &&
	test "$(wc -l <ofds.other)" = 1 &&
	grep -q "^socket:" ofds.other
'

test_expect_success 'fusermount3 -u: exit 0, no error line, the outside helper gone' '
	OPID=$(outside_pid $PID || true) &&
	unmount_store "$MNT" &&
	! mountpoint -q "$MNT" &&
	{ test -z "$OPID" || test_wait_for 10 pid_gone "$OPID"; }
'

test_expect_success 'SIGTERM while a file is held open: unmounted, exit 0, no error line' '
	mount_store "$REG/small" "$MNT" &&
	PID=${MOUNT_PID[$MNT]} && LOG=${MOUNT_LOG[$MNT]} &&
	OPID=$(outside_pid $PID || true) &&
	exec 9<"$MNT/${DATA##*/}/$F" &&
	kill -TERM $PID &&
	wait_pid_status $PID 20 st &&
	exec 9<&- &&
	echo "status $st" &&
	test "$st" = 0 &&
	unset "MOUNT_PID[$MNT]" &&
	! grep -q " $MNT fuse" /proc/mounts &&
	! log_errors "$LOG" &&
	{ test -z "$OPID" || test_wait_for 10 pid_gone "$OPID"; }
'

test_expect_success 'takeover: the successor sandboxes itself, the old daemon exits 0' '
	mount_store "$REG/small" "$MNT" &&
	OLD=${MOUNT_PID[$MNT]} &&
	nixoci-fs --takeover "$MNT" 2>takeover.err &&
	test_wait_for 20 pid_gone $OLD &&
	NEW=$(daemon_pid "$TRASH/cache-mnt") &&
	echo "old $OLD new $NEW" &&
	test -n "$NEW" && test "$NEW" != "$OLD" &&
	test_atexit "kill -KILL $NEW 2>/dev/null; true" &&
	test "$(status_field $NEW NoNewPrivs)" = 1 &&
	test "$(status_field $NEW CapEff)" = 0000000000000000 &&
	check_mount_hashes "$MNT" $SMALL_CLOSURE &&
	unmount_store "$MNT" &&
	test_wait_for 20 pid_gone $NEW &&
	cat takeover.err &&
	! log_errors takeover.err
'

test_expect_success LANDLOCK 'metrics= in a directory of root: written through the sandbox, no capability for it' '
	mkdir -p "$TRASH/m-root" &&
	mount_store "$REG/small" "$MNT" "metrics=$TRASH/m-root/nixoci.prom" &&
	PID=${MOUNT_PID[$MNT]} &&
	test "$(status_field $PID CapEff)" = 0000000000000000 &&
	grep -q "the metrics directory" "${MOUNT_LOG[$MNT]}" &&
	unmount_store "$MNT" &&
	grep -q "^nixoci_" "$TRASH/m-root/nixoci.prom"
'

test_expect_success LANDLOCK 'metrics= in a directory of another user: cap_dac_override kept, and said' '
	mkdir -p "$TRASH/m-other" &&
	chown 65534:65534 "$TRASH/m-other" && chmod 0755 "$TRASH/m-other" &&
	mount_store "$REG/small" "$MNT" "metrics=$TRASH/m-other/nixoci.prom" &&
	PID=${MOUNT_PID[$MNT]} &&
	grep "cap_dac_override (the output directory $TRASH/m-other is not writable" \
		"${MOUNT_LOG[$MNT]}" &&
	test "$(status_field $PID CapEff)" = 0000000000000002 &&
	unmount_store "$MNT" &&
	grep -q "^nixoci_" "$TRASH/m-other/nixoci.prom"
'

test_expect_success 'passthrough=off: no capability kept at all' '
	mount_store "$REG/small" "$MNT" "passthrough=off" &&
	PID=${MOUNT_PID[$MNT]} &&
	test "$(status_field $PID CapPrm)" = 0000000000000000 &&
	test "$(status_field $PID CapBnd)" = 0000000000000000 &&
	test "$(status_field $PID NoNewPrivs)" = 1 &&
	check_mount_hashes "$MNT" $SMALL_CLOSURE &&
	unmount_store "$MNT"
'

test_expect_success 'sandbox=off: the daemon is as before' '
	NIXOCI_TEST_SANDBOX_PROBE=$PROBE mount_store "$REG/small" "$MNT" "sandbox=off" &&
	PID=${MOUNT_PID[$MNT]} && LOG=${MOUNT_LOG[$MNT]} &&
	grep -a "nixoci-fs: sandbox: off (-o sandbox=off)" "$LOG" &&
	test "$(status_field $PID CapEff)" = "$(status_field $$ CapEff)" &&
	test "$(status_field $PID NoNewPrivs)" = 0 &&
	grep -a "sandbox probe: creating $PROBE: created" "$LOG" &&
	! test -e "$PROBE" &&
	! outside_pid $PID &&
	check_mount_hashes "$MNT" $SMALL_CLOSURE &&
	unmount_store "$MNT"
'

test_expect_success 'a bad sandbox= value is a usage error' '
	st=0 &&
	nixoci-fs -f -o sandbox=yes "$REG/small" "$MNT" 2>err || st=$? &&
	cat err &&
	test "$st" = 2 &&
	grep "bad option sandbox=yes: expected auto or off" err
'

# As the systemd unit runs it: CapabilityBoundingSet=CAP_SYS_ADMIN and
# NoNewPrivileges=yes (setpriv does what systemd does), so no CAP_SETPCAP:
# the bounding set stays as given, the rest is applied.
test_expect_success 'as the unit runs it (bounding set cap_sys_admin, no_new_privs): sandboxed' '
	mkdir -p "$TRASH/unitbin" &&
	printf "#!/bin/sh\nexec setpriv --bounding-set=-all,+sys_admin --inh-caps=-all --no-new-privs %s \"\$@\"\n" \
		"$(command -v nixoci-fs)" >"$TRASH/unitbin/nixoci-fs" &&
	chmod +x "$TRASH/unitbin/nixoci-fs" &&
	PATH=$TRASH/unitbin:$PATH NIXOCI_TEST_SANDBOX_PROBE=$PROBE \
		mount_store "$REG/small" "$MNT" &&
	PID=${MOUNT_PID[$MNT]} && LOG=${MOUNT_LOG[$MNT]} &&
	sandbox_line "$LOG" &&
	grep -q "(the bounding set as the service manager left it)" "$LOG" &&
	test "$(status_field $PID CapEff)" = 0000000000000000 &&
	test "$(status_field $PID CapPrm)" = 0000000000200000 &&
	test "$(status_field $PID CapBnd)" = 0000000000200000 &&
	if test_have_prereq LANDLOCK; then
		grep -a "sandbox probe: creating $PROBE: Permission denied" "$LOG"
	fi &&
	check_mount_hashes "$MNT" $SMALL_CLOSURE &&
	unmount_store "$MNT"
'

test_expect_success 'daemon mode: sandboxed, unmounted by fusermount3 -u' '
	test_atexit "fusermount3 -uz $TRASH/mnt-d 2>/dev/null; true" &&
	mkdir -p "$TRASH/mnt-d" &&
	nixoci-fs -o "cache=$TRASH/cache-d,log=$TRASH/d.log" "$REG/small" "$TRASH/mnt-d" &&
	DPID=$(daemon_pid "$TRASH/cache-d") &&
	test -n "$DPID" &&
	test "$(status_field $DPID NoNewPrivs)" = 1 &&
	test "$(status_field $DPID CapEff)" = 0000000000000000 &&
	check_mount_hashes "$TRASH/mnt-d" $SMALL_CLOSURE &&
	grep -a "^[-0-9T:.Z]* nixoci-fs\[$DPID\]: sandbox: capabilities dropped.*no_new_privs" "$TRASH/d.log" &&
	fusermount3 -u "$TRASH/mnt-d" &&
	test_wait_for 20 pid_gone "$DPID" &&
	! log_errors "$TRASH/d.log"
'

# A non-root user: nothing to drop, and fusermount3 (setuid) must still
# unmount; the sandbox says why it was not applied.
U=65534
as_user() { setpriv --reuid=$U --regid=$U --clear-groups --inh-caps=-all "$@"; }
if as_user sh -c 'exec 3<>/dev/fuse' 2>/dev/null && command -v fusermount3 >/dev/null; then
	test_set_prereq USERFUSE
fi

test_expect_success USERFUSE 'a non-root mount: not sandboxed, says why, unmounts' '
	mkdir -p "$TRASH/u/mnt" "$TRASH/u/cache" &&
	chown -R $U:$U "$TRASH/u" &&
	test_atexit "fusermount3 -uz $TRASH/u/mnt 2>/dev/null; true" &&
	as_user nixoci-fs -f -o "cache=$TRASH/u/cache" "$REG/small" "$TRASH/u/mnt" \
		>"$TRASH/u.log" 2>&1 &
	UPID=$! &&
	test_wait_for 30 mount_ready "$TRASH/u/mnt" $UPID &&
	mountpoint -q "$TRASH/u/mnt" &&
	cmp "$TRASH/u/mnt/${DATA##*/}/$F" "$DATA/$F" &&
	grep -a "nixoci-fs: sandbox: not applied: uid $U has no capabilities" "$TRASH/u.log" &&
	test "$(status_field $UPID NoNewPrivs)" = 0 &&
	as_user fusermount3 -u "$TRASH/u/mnt" &&
	wait_pid_status $UPID 20 st &&
	test "$st" = 0 &&
	! log_errors "$TRASH/u.log"
'

test_done
