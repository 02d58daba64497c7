#!/bin/bash
test_description='stalled registry answers: bounded, clean failures and self-healing

A stall is the fault that can hang a reader forever. The fault proxy sends
the headers of a blob answer (and sometimes part of the body) and then
nothing. The read must end - right bytes or EIO - within a bound derived
from -o timeout, the daemon must keep answering, and the same mount must
read right once the registry answers again.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
T=2 # -o timeout=T; the stall detector is "under 1 KiB/s for T seconds"
MOUNT_LOG_ALLOW='registry 127\.0\.0\.1|registry unreachable'

check_file() {
	read_expect_ok_or_eio "$MNT/${FDATA##*/}/$1" "$FDATA/$1" "$2" &&
		echo "result $READ_RESULT" &&
		fs_alive "$MNT"
}

test_stall_seen() { [ "$(fault_hits stall)" -ge "$1" ]; }

heal_file() {
	fault_set pass &&
		heal_read "$MNT/${FDATA##*/}/$1" "$FDATA/$1" $((T + 5)) &&
		fs_alive "$MNT"
}

test_expect_success 'setup: registry, data, fault proxy, mount through it' '
	start_registry &&
	build_fault_data &&
	nixoci push "$REG/stall" "$FDATA" &&
	start_faultproxy "$REG" &&
	mount_store "$PROXY/stall" "$MNT" "timeout=$T,readahead=0" &&
	test "$(ls "$MNT/${FDATA##*/}" | wc -l)" = 16
'

test_expect_success 'headers, then silence: EIO within the deadline, the mount answers' '
	fault_set mode=stall match=/blobs/ &&
	check_file f01 $((2 * T + 3)) &&
	test "$READ_RESULT" = eio &&
	test "$ELAPSED_MS" -ge $(((T - 1) * 1000)) &&
	test "$(fault_hits stall)" -ge 1 &&
	ls "$MNT/${FDATA##*/}" >/dev/null
'

test_expect_success 'while a read stalls, the daemon answers other requests at once' '
	heal_file f02 &&
	n=$(fault_hits stall) &&
	fault_set mode=stall match=/blobs/ &&
	{ timeout 60 cat "$MNT/${FDATA##*/}/f03" >/dev/null 2>&1 & } &&
	reader=$! &&
	test_wait_for 10 test_stall_seen $((n + 1)) &&
	timed timeout 10 nixoci stats "$MNT" >stats.out &&
	echo "stats took $ELAPSED_MS ms during a stall" &&
	test "$ELAPSED_MS" -lt 2000 &&
	wait_pid_status $reader 30 st &&
	echo "the stalled reader exited with $st" &&
	test "$st" != 124
'

test_expect_success 'healed: the same mount reads the stalled file right' '
	heal_file f01 &&
	heal_file f03
'

test_expect_success 'two stalls after part of the body: the read resumes and succeeds' '
	n=$(fault_hits stall) &&
	fault_set mode=stall after=4096 match=/blobs/ count=2 &&
	check_file f04 $((2 * (3 * T + 8))) &&
	test "$READ_RESULT" = ok &&
	test "$(fault_hits stall)" = $((n + 2))
'

# A registry that trickles and stalls on every attempt: each attempt is
# given up after T/3 (at least 1 s) without progress, and no retry starts
# after 2*T (fetch/http.c), so the read fails within about 2.3*T.
test_expect_success 'a body that always stalls after 4 KiB: EIO within 2*T + 3 s' '
	fault_set mode=stall after=4096 match=/blobs/ &&
	check_file f05 $((2 * T + 3)) &&
	test "$READ_RESULT" = eio
'

test_expect_success 'after the trickling stall, the daemon is up and the same mount heals' '
	fs_alive "$MNT" &&
	heal_file f05
'

test_expect_success 'all files read right on the same mount' '
	fault_set pass &&
	for f in $FDATA_FILES; do
		timeout 30 cmp "$MNT/${FDATA##*/}/$f" "$FDATA/$f" || return 1
	done
'

test_done
