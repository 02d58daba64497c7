#!/bin/bash
test_description='network faults between nixoci-fs and the registry (fault proxy)

Each fault is injected by tests/lib/faultproxy.py in front of a real
docker-registry while one mount reads a file it never read before. For every
fault: the daemon stays up and answers, the read returns the right bytes or
fails with EIO within a bound, and once the fault ends the same mount reads
the right bytes (it heals by itself). At the end a fresh mount over the same
cache proves that nothing wrong was cached.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
T=4 # -o timeout=T: the per-request deadline
# A request that gets no byte ends within its deadline; one whose attempts
# keep delivering bytes (reset, truncate, stall after some of the body) gets
# a fresh deadline per attempt that made progress, at most 6 attempts
# (fetch/http.c: NX_MAX_ATTEMPTS) plus the backoff between them.
BOUND_QUIET=$((T + 3))
BOUND_PROGRESS=$((6 * T + 10))
# the registry failures and the verification failures this test causes
MOUNT_LOG_ALLOW='registry 127\.0\.0\.1|digest mismatch|registry unreachable'

# check_file N BOUND: read file fN through the mount: right bytes or EIO
# within BOUND seconds; the daemon is alive afterwards.
check_file() {
	read_expect_ok_or_eio "$MNT/${FDATA##*/}/$1" "$FDATA/$1" "$2" &&
		echo "result $READ_RESULT" &&
		fs_alive "$MNT"
}

# heal_file N: with the proxy in pass mode, the same mount reads fN right
# by itself (after at most one offline probe interval, cache/online.c).
heal_file() {
	fault_set pass &&
		heal_read "$MNT/${FDATA##*/}/$1" "$FDATA/$1" $((T + 5)) &&
		fs_alive "$MNT"
}

test_expect_success 'setup: registry, data, fault proxy, mount through it' '
	start_registry &&
	build_fault_data &&
	nixoci push "$REG/faults" "$FDATA" &&
	for i in 1 2 3 4; do
		echo "meta $i" >meta$i && META[$i]=$(nix-store --add meta$i) &&
		nixoci push "$REG/faults" "${META[$i]}" || return 1
	done &&
	start_faultproxy "$REG" &&
	mount_store "$PROXY/faults" "$MNT" "timeout=$T,readahead=0" &&
	ls "$MNT/${FDATA##*/}" >ls.out &&
	test "$(wc -l <ls.out)" = 16 &&
	grep -q "GET /v2/faults/manifests/" "$PROXY_LOG"
'

test_expect_success 'a short 503 storm on blobs: the read succeeds after retries' '
	fault_set mode=status code=503 match=/blobs/ count=2 &&
	check_file f01 $BOUND_QUIET &&
	test "$READ_RESULT" = ok &&
	test "$(fault_hits status)" -ge 2
'

test_expect_success 'every blob request gets 503: EIO within the deadline, then it heals' '
	fault_set mode=status code=503 match=/blobs/ &&
	check_file f02 $BOUND_QUIET &&
	test "$READ_RESULT" = eio &&
	test "$(fault_hits status)" -ge 3 &&
	heal_file f02
'

test_expect_success 'every 2nd blob request gets 500: reads succeed' '
	fault_set mode=status code=500 match=/blobs/ every=2 &&
	check_file f03 $BOUND_QUIET &&
	test "$READ_RESULT" = ok &&
	fault_set pass
'

test_expect_success '429 with Retry-After: 1 is honoured and the read succeeds' '
	fault_set mode=status code=429 retry_after=1 match=/blobs/ count=1 &&
	check_file f04 $BOUND_QUIET &&
	test "$READ_RESULT" = ok &&
	test "$ELAPSED_MS" -ge 900 &&
	grep -q "429 fault:status" "$PROXY_LOG"
'

test_expect_success '429 with a Retry-After beyond the deadline: EIO at once, then it heals' '
	fault_set mode=status code=429 retry_after=60 match=/blobs/ &&
	check_file f05 $BOUND_QUIET &&
	test "$READ_RESULT" = eio &&
	test "$ELAPSED_MS" -lt 3000 &&
	heal_file f05
'

test_expect_success 'connections reset before any answer: EIO within the deadline, heals' '
	fault_set mode=rst match=/blobs/ &&
	check_file f06 $BOUND_QUIET &&
	test "$READ_RESULT" = eio &&
	test "$(fault_hits rst)" -ge 2 &&
	heal_file f06
'

test_expect_success 'a reset mid-body once: the read resumes and succeeds' '
	fault_set mode=reset after=200000 match=/blobs/ count=1 &&
	check_file f07 $BOUND_QUIET &&
	test "$READ_RESULT" = ok &&
	test "$(fault_hits reset)" = 1
'

test_expect_success 'every blob answer reset after 64 KiB: right bytes or EIO, bounded; heals' '
	fault_set mode=reset after=65536 match=/blobs/ &&
	check_file f08 $BOUND_PROGRESS &&
	test "$(fault_hits reset)" -ge 2 &&
	heal_file f08
'

test_expect_success 'bodies truncated (Content-Length intact): right bytes or EIO; heals' '
	fault_set mode=truncate after=-1 match=/blobs/ &&
	check_file f09 $BOUND_PROGRESS &&
	test "$(fault_hits truncate)" -ge 2 &&
	heal_file f09
'

test_expect_success 'the registry refuses connections: EIO fast, the mount answers; heals' '
	fault_set mode=refuse &&
	test_wait_for 5 grep -q "listening socket closed" "$PROXY_LOG" &&
	check_file f12 $BOUND_QUIET &&
	test "$READ_RESULT" = eio &&
	test "$ELAPSED_MS" -lt 3000 &&
	ls "$MNT/${FDATA##*/}" >/dev/null &&
	heal_file f12 &&
	grep -q "listening again" "$PROXY_LOG"
'

test_expect_success 'corrupted blob bytes: EIO, a log line (identical repeats folded), never wrong bytes' '
	v0=$(stats_field "$MNT" verify_failures) &&
	n0=$(grep -c "digest mismatch" "${MOUNT_LOG[$MNT]}" || true) &&
	fault_set mode=corrupt match=/blobs/ &&
	check_file f13 $BOUND_QUIET &&
	test "$READ_RESULT" = eio &&
	check_file f13 $BOUND_QUIET &&
	test "$READ_RESULT" = eio &&
	v1=$(stats_field "$MNT" verify_failures) &&
	n1=$(grep -c "digest mismatch" "${MOUNT_LOG[$MNT]}") &&
	bad=$(fault_hits corrupt) &&
	echo "verify_failures $v0 -> $v1, mismatch lines $n0 -> $n1, corrupted answers $bad" &&
	test "$v1" -gt "$v0" &&
	test $((n1 - n0)) -ge 1 &&
	test $((n1 - n0)) -le "$bad" &&
	test $((v1 - v0)) = "$bad" &&
	heal_file f13
'

test_expect_success '503 on manifests: a new store path is EIO, then resolves (not remembered)' '
	p=${META[1]##*/} &&
	fault_set mode=status code=503 match=/manifests/ &&
	timed timeout 30 stat "$MNT/$p" >stat.out 2>&1 && { cat stat.out; return 1; }
	cat stat.out &&
	grep -q "Input/output error" stat.out &&
	test "$ELAPSED_MS" -le $((BOUND_QUIET * 1000)) &&
	fs_alive "$MNT" &&
	fault_set pass &&
	test_wait_for $((T + 5)) cat_is "$MNT/$p" "meta 1"
'

test_expect_success 'corrupted TOC on lookup: EIO, then the path resolves once healed' '
	p=${META[2]##*/} &&
	fault_set mode=corrupt match=/blobs/ &&
	timeout 30 stat "$MNT/$p" >stat.out 2>&1 && { cat stat.out; return 1; }
	cat stat.out &&
	grep -q "Input/output error" stat.out &&
	fs_alive "$MNT" &&
	fault_set pass &&
	test_wait_for $((T + 5)) cat_is "$MNT/$p" "meta 2"
'

test_expect_success 'after all faults, every file of the mount reads right (same mount)' '
	fault_set pass &&
	for f in $FDATA_FILES; do
		timeout 30 cmp "$MNT/${FDATA##*/}/$f" "$FDATA/$f" || return 1
	done &&
	test "$(stats_field "$MNT" errors)" -gt 0
'

test_expect_success 'nothing wrong was cached: a fresh mount on the same cache serves all from it' '
	unmount_store "$MNT" &&
	mount_store "$PROXY/faults" "$MNT" "cache=$TRASH/cache-mnt,timeout=$T,readahead=0" &&
	ls "$MNT/${META[1]##*/}" "$MNT/${META[2]##*/}" "$MNT/${FDATA##*/}" >/dev/null &&
	fault_set mode=status code=503 &&
	check_mount_hashes "$MNT" "$FDATA" "${META[1]}" "${META[2]}" &&
	test "$(stats_field "$MNT" frames_fetched)" = 0 &&
	fault_set pass &&
	unmount_store "$MNT"
'

test_done
