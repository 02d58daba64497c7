#!/bin/bash
test_description='live restart: 16 readers (open files, mmaps, walks, programs, a podman container) see no error while the supervised daemon is restarted 10 times (5 takeovers, 5 kill -9), then again with the registry down'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/lazy.sh"

test_require_cmd docker-registry curl openssl bwrap pgrep /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries
[ "$(id -u)" = 0 ] || skip_all "the restart test needs root (podman with runc, allow_other)"

MNT=$TRASH/mnt
SUPLOG=$TRASH/supervisor.log
# the supervisor runs a copy of the binary, which restart 3 replaces
BIN=$TRASH/bin/nixoci-fs
READER=$TEST_LIB_DIR/restart-reader.py
IMAGE=localhost/nixoci-test-restart:$$-$RANDOM
CNAME=nixoci-t0700-$$
BUSYBOX=$(command -v busybox)
# what a registry outage is expected to log (phase 2)
MOUNT_LOG_ALLOW='connection refused|timed out|no progress|registry unreachable|answers again'

# podman_run, make_image, podman_works: tests/lib/lib.sh

PODMAN=
if command -v podman >/dev/null && [ -x /usr/sbin/runc ]; then
	test_atexit 'podman rm -f "$CNAME" >/dev/null 2>&1; podman rmi -f "$IMAGE" >/dev/null 2>&1'
	if make_image >/dev/null 2>&1 && podman_works >/dev/null 2>&1; then
		PODMAN=1
	else
		say "podman cannot run containers here: the container reader is left out"
	fi
fi

# The supervised mount: nixoci-fs --supervise runs the daemon as its child.
start_supervised() {
	mkdir -p "$MNT" &&
	echo "nixoci-fs --supervise -o $1 $REF $MNT" >>"$SUPLOG" &&
	{ "$BIN" --supervise -o "$1" "$REF" "$MNT" >>"$SUPLOG" 2>&1 & } &&
	SUP=$! &&
	test_atexit "stop_supervised atexit" &&
	test_wait_for 30 mountpoint -q "$MNT"
}

stop_supervised() {
	local st bad=
	[ -n "${SUP:-}" ] || return 0
	if grep -q " $MNT fuse.nixoci-fs " /proc/self/mounts; then
		fusermount3 -u "$MNT" 2>>"$SUPLOG" || {
			bad="fusermount3 -u $MNT failed (busy?), used -uz"
			fusermount3 -uz "$MNT" 2>>"$SUPLOG"
		}
	fi
	wait_pid_status "$SUP" 30 st
	SUP=
	[ "$st" = 0 ] || bad="${bad:+$bad; }the supervisor exited with status $st"
	if log_errors "$SUPLOG" >"$SUPLOG.errors"; then
		bad="${bad:+$bad; }error lines in $SUPLOG: $(head -n 3 "$SUPLOG.errors" | tr '\n' '|')"
	fi
	if [ -n "$bad" ]; then
		if [ "${1:-}" = atexit ]; then test_cleanup_problem "$bad"; else echo "$bad" >&2; fi
		return 1
	fi
}

# the daemon that serves now: the supervisor's newest child
daemon_pid() { pgrep -n -P "$SUP"; }
takeovers() { grep -c "took over " "$SUPLOG"; }
takeovers_reach() { [ "$(takeovers)" -ge "$1" ]; }
mounted() { grep -q " $MNT fuse.nixoci-fs " /proc/self/mounts; }

# Restarts the daemon $1 times, alternating a graceful takeover (SIGHUP to
# the supervisor after replacing the binary on disk, or nixoci-fs --takeover,
# which asks the supervisor) and kill -9, each once the previous successor
# serves; $2 seconds apart so the readers run through all of them.
restart_daemon() {
	local n=$1 gap=$2 i want pid
	for i in $(seq 1 "$n"); do
		sleep "$gap"
		want=$(($(takeovers) + 1))
		pid=$(daemon_pid) || { echo "no daemon before restart $i"; return 1; }
		case $((i % 4)) in
		1) echo "restart $i: nixoci-fs --takeover (pid $pid)"
		   nixoci-fs --takeover "$MNT" || return 1 ;;
		2 | 0) echo "restart $i: kill -9 $pid"
		   kill -9 "$pid" || return 1 ;;
		3) echo "restart $i: binary replaced on disk, SIGHUP to the supervisor (pid $pid)"
		   cp "$BIN" "$BIN.new" && mv -f "$BIN.new" "$BIN" &&
		   kill -HUP "$SUP" || return 1 ;;
		esac
		test_wait_for 120 takeovers_reach "$want" || {
			echo "restart $i: no successor serves"; return 1; }
		mounted || { echo "restart $i: the mount is gone"; return 1; }
		# an upgrade in place: what serves is the file now on disk
		[ "$(stat -L -c %i "/proc/$(daemon_pid)/exe")" = "$(stat -c %i "$BIN")" ] || {
			echo "restart $i: the daemon does not run $BIN as it is on disk"; return 1; }
	done
}

# walker RESULT PATH...: nix-store --dump of each path against Nix's NarHash
walker() {
	local res=$1 p n=0 e=0 got
	shift
	while [ ! -e stop ]; do
		for p in "$@"; do
			got=$(nar_hash_of "$MNT/${p##*/}" 2>>"$res.err") || got=failed
			if [ "$got" = "$(cat "want.${p##*/}")" ]; then
				n=$((n + 1))
			else
				e=$((e + 1))
				echo "walk $p: $got" >>"$res.err"
			fi
		done
	done
	echo "$n $e" >"$res"
}

# runner RESULT HOW: runs hello from the mount (directly, or in bwrap with
# the mount as /nix/store) and compares its output
runner() {
	local res=$1 how=$2 n=0 e=0
	while [ ! -e stop ]; do
		if { if [ "$how" = bwrap ]; then run_sandboxed "$MNT" "$SMALL/bin/hello"
		     else "$MNT/${SMALL##*/}/bin/hello"; fi; } >"$res.out" 2>&1 &&
			cmp -s "$res.out" want.hello; then
			n=$((n + 1))
		else
			e=$((e + 1))
			cat "$res.out" >>"$res.err"
		fi
	done
	echo "$n $e" >"$res"
}

# watcher: the mount must be in the mount table at every look
watcher() {
	while [ ! -e stop ]; do
		mounted || echo "gone at $(date +%T.%N)" >>mount.gone
		sleep 0.05
	done
}

# start_readers TAG: the 16 readers (15 without podman)
start_readers() {
	local t=$1 f
	rm -f stop
	READER_PIDS=
	for f in "$P1/a" "$P2/c"; do
		/usr/bin/python3 "$READER" open "$MNT/${f#/nix/store/}" "$(sha256sum <"$f" | cut -c1-64)" \
			stop "res.$t.open.${f##*/}" 2>>"res.$t.open.${f##*/}.err" &
		READER_PIDS="$READER_PIDS $!"
		/usr/bin/python3 "$READER" mmap "$MNT/${f#/nix/store/}" "$(sha256sum <"$f" | cut -c1-64)" \
			stop "res.$t.mmap.${f##*/}" 2>>"res.$t.mmap.${f##*/}.err" &
		READER_PIDS="$READER_PIDS $!"
	done
	for f in "$P1/b" "$P2/d" "$P1/a"; do
		/usr/bin/python3 "$READER" reopen "$MNT/${f#/nix/store/}" "$(sha256sum <"$f" | cut -c1-64)" \
			stop "res.$t.reopen.${f##*/}" 2>>"res.$t.reopen.${f##*/}.err" &
		READER_PIDS="$READER_PIDS $!"
	done
	walker "res.$t.walk1" $SMALL_CLOSURE & READER_PIDS="$READER_PIDS $!"
	walker "res.$t.walk2" "$P1" "$P2" & READER_PIDS="$READER_PIDS $!"
	walker "res.$t.walk3" "$P2" $SMALL_CLOSURE & READER_PIDS="$READER_PIDS $!"
	runner "res.$t.run1" direct & READER_PIDS="$READER_PIDS $!"
	runner "res.$t.run2" direct & READER_PIDS="$READER_PIDS $!"
	runner "res.$t.run3" bwrap & READER_PIDS="$READER_PIDS $!"
	runner "res.$t.run4" bwrap & READER_PIDS="$READER_PIDS $!"
	if [ -n "$PODMAN" ]; then
		mkdir -p sync && rm -f sync/stop sync/res && cp want.hello sync/want &&
		{ podman_run --name "$CNAME" -v "$MNT:/nix/store:ro" -v "$TRASH/sync:/sync" \
			"$IMAGE" /bin/sh -c "
				n=0; e=0
				while [ ! -e /sync/stop ]; do
					if $SMALL/bin/hello >/tmp/out 2>&1 && cmp -s /tmp/out /sync/want; then
						n=\$((n + 1))
					else
						e=\$((e + 1)); cat /tmp/out >>/sync/err
					fi
				done
				echo \"\$n \$e\" >/sync/res" >"podman.$t.out" 2>&1 & } &&
		PODMAN_PID=$! &&
		test_wait_for 60 podman inspect -f '{{.State.Running}}' "$CNAME" >/dev/null 2>&1 &&
		PODMAN_STARTED=$(podman inspect -f '{{.State.StartedAt}} {{.State.Pid}}' "$CNAME")
	fi
	watcher & READER_PIDS="$READER_PIDS $!"
}

# stop_readers TAG: stops them and checks every result: passes, no error
stop_readers() {
	local t=$1 r bad=0 p n e
	if [ -n "$PODMAN" ]; then
		now=$(podman inspect -f '{{.State.StartedAt}} {{.State.Pid}}' "$CNAME") &&
		echo "container: started $PODMAN_STARTED, now $now" &&
		test "$now" = "$PODMAN_STARTED" || bad=1
		touch sync/stop
		wait "$PODMAN_PID" || { echo "the container exited with $?"; bad=1; }
	fi
	touch stop
	for p in $READER_PIDS; do wait "$p" || bad=1; done
	for r in res.$t.* ${PODMAN:+sync/res}; do
		case $r in *.err | *.out) continue ;; esac
		read -r n e <"$r" || { echo "$r: no result"; bad=1; continue; }
		echo "$r: $n passes, $e errors"
		[ "$e" = 0 ] && [ "$n" -gt 0 ] || bad=1
	done
	for r in res.$t.*.err sync/err; do
		[ -s "$r" ] && { echo "$r:"; head -5 "$r"; bad=1; }
	done
	[ -e mount.gone ] && { echo "the mount disappeared:"; head -3 mount.gone; bad=1; }
	return $bad
}

test_expect_success 'setup: registry, the small closure and two 32 MiB paths pushed' '
	mkdir -p "$TRASH/bin" && cp "$(command -v nixoci-fs)" "$BIN" &&
	start_registry &&
	REF=$REG/restart &&
	build_small_closure &&
	P1=$(make_data_path nixoci-restart-1 a:16 b:16) &&
	P2=$(make_data_path nixoci-restart-2 c:16 d:16) &&
	P3=$(make_data_path nixoci-restart-3 e:4) &&
	nixoci push "$REF" "$SMALL" "$P1" "$P2" "$P3" >push.out 2>&1 &&
	for p in $SMALL_CLOSURE "$P1" "$P2" "$P3"; do
		nix_nar_hash "$p" >"want.${p##*/}" || return 1
	done &&
	"$SMALL/bin/hello" >want.hello
'

test_expect_success 'mount under the supervisor; the daemon says what a restart promises' '
	start_supervised "cache=$TRASH/cache,allow_other" &&
	test_wait_for 10 grep -q "restart: " "$SUPLOG" &&
	grep "restart: " "$SUPLOG" &&
	if grep -q "cannot resend" "$SUPLOG"; then
		skip_all "this kernel has no FUSE_NOTIFY_RESEND: kill -9 cannot be survived"
	fi
'

test_expect_success '16 readers over a cold cache, 10 restarts (5 takeovers, 5 kill -9): no error, no byte differs' '
	start_readers up &&
	t0=$(date +%s) &&
	restart_daemon 10 6 &&
	sleep 3 &&
	echo "readers ran $(($(date +%s) - t0)) s" &&
	test $(($(date +%s) - t0)) -ge 60 &&
	stop_readers up
'

test_expect_success 'after the restarts: every path dumps to Nix NarHash; nothing failed verification' '
	mounted &&
	check_mount_hashes "$MNT" $SMALL_CLOSURE "$P1" "$P2" &&
	test "$(stat_val "$MNT" verify_failures)" = 0 &&
	ls "$MNT/${P3##*/}" >/dev/null
'

test_expect_success 'registry down: cached reads go on through 4 more restarts' '
	stop_registry $REG_PID_reg &&
	! curl -fsS -o /dev/null --max-time 2 "http://$REG/v2/" &&
	! cat "$MNT/${P3##*/}/e" >/dev/null 2>uncached.before &&
	cat uncached.before &&
	base=$(takeovers) &&
	start_readers down &&
	restart_daemon 4 4 &&
	sleep 2 &&
	stop_readers down
'

test_expect_success 'registry down: an uncached read fails after the restarts as before them' '
	! cat "$MNT/${P3##*/}/e" >/dev/null 2>uncached.after &&
	cat uncached.after &&
	test_cmp uncached.before uncached.after
'

test_expect_success 'the cache is consistent: a fresh mount of it gives Nix bytes, fetching nothing' '
	stop_supervised &&
	! mounted &&
	restart_registry &&
	mount_store "$REF" "$TRASH/again" "cache=$TRASH/cache" &&
	check_mount_hashes "$TRASH/again" $SMALL_CLOSURE "$P1" "$P2" &&
	nixoci stats "$TRASH/again" &&
	test "$(stat_val "$TRASH/again" verify_failures)" = 0 &&
	test "$(stat_val "$TRASH/again" frames_fetched)" = 0
'

test_done
