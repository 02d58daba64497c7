#!/bin/bash
test_description='adjacent runs claimed at once by two walkers go out as one request

When the first read of a program predicts its library, two walkers claim
frames of the library'"'"'s NAR blob at the same moment: the library'"'"'s start
(the prediction job reading its header) and its rest (a readahead job).
Each would send a request of its own; a walk that no reader waits on holds
its claimed run a moment as a request that an adjacent run joins, so both
go out as one Range request (NIXOCI_TEST_SEND_HOLD_MS makes the moment long
enough that the test never depends on timing). Every frame is still
verified on its own: a corrupted shared answer caches nothing wrong, fails
the walker that needed the frame with one log line, and heals; an unmount
while the shared request is stalled exits 0. In a packed push (format 2) the
library'"'"'s range of the pack goes out the same way. Asserted from the
registry'"'"'s side (the proxy log) and the counters.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
export NIXOCI_TEST_SEND_HOLD_MS=2000

# gets: requests for the library's NAR blob the proxy answered so far
gets() { grep -c "GET /v2/coal/blobs/sha256:$N_BIG[^ ]* range=.* -> " "$PROXY_LOG" || true; }
# same_dump: the library's path through the mount is the original, byte for byte
same_dump() {
	nix-store --dump "$MNT/${BIG##*/}" >"$TRASH/dump.mnt" &&
	nix-store --dump "$BIG" >"$TRASH/dump.want" &&
	cmp "$TRASH/dump.mnt" "$TRASH/dump.want"
}

# --no-pack: the library its own NAR blob, so that every request for that
# blob (and every fault the proxy puts on it) is the library's; the packed
# case tells its requests apart by range
test_expect_success 'setup: a program and a large library, pushed, proxy' '
	start_registry &&
	PROG=$(nix-build "$TEST_LIB_DIR/coalesce.nix" "${NIX_BUILD_OPTS[@]}") &&
	BIG=$(nix-store -qR "$PROG" | grep -- "-coal-libbig$") &&
	nixoci push --no-pack "$REG/coal" "$PROG" &&
	N_BIG=$(nar_digest coal "$BIG") &&
	test ${#N_BIG} = 64 &&
	start_faultproxy "$REG"
'

test_expect_success 'the library'"'"'s start and rest: two runs, one request, right bytes' '
	mount_store "$PROXY/coal" "$MNT" "cache=$TRASH/c1" &&
	n0=$(gets) &&
	head -c 64 "$MNT/${PROG##*/}/bin/prog" >/dev/null &&
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_libs) -ge 1 ]" &&
	test_wait_for 30 eval "[ \$(stats_field $MNT runs_shared) -ge 1 ]" &&
	test_wait_for 30 eval "[ \$(gets) -gt $n0 ]" &&
	runs=$(($(gets) - n0 + $(stats_field "$MNT" runs_shared))) &&
	say "runs $runs, requests $(($(gets) - n0))" &&
	test "$(($(gets) - n0))" = 1 &&
	test "$runs" = 2 &&
	same_dump &&
	# everything came in that one request, verified frame by frame
	test "$(($(gets) - n0))" = 1 &&
	test "$(stats_field "$MNT" verify_failures)" = 0 &&
	test "$(stats_field "$MNT" errors)" = 0 &&
	unmount_store "$MNT"
'

# pgets: requests for the library's range of its pack in repository coalp
pgets() { range_gets coalp $R_BIG | wc -l; }

test_expect_success 'packed (format 2): the library'"'"'s range of the pack, two runs, one request' '
	nixoci push --pack "$REG/coalp" "$PROG" &&
	R_BIG=$(nar_range coalp "$BIG") && R_PROG=$(nar_range coalp "$PROG") &&
	say "library: $R_BIG, program: $R_PROG" &&
	test "${R_BIG%% *}" = "${R_PROG%% *}" &&
	mount_store "$PROXY/coalp" "$MNT" "cache=$TRASH/cp" &&
	n0=$(pgets) &&
	head -c 64 "$MNT/${PROG##*/}/bin/prog" >/dev/null &&
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_libs) -ge 1 ]" &&
	test_wait_for 30 eval "[ \$(stats_field $MNT runs_shared) -ge 1 ]" &&
	test_wait_for 30 eval "[ \$(pgets) -gt $n0 ]" &&
	runs=$(($(pgets) - n0 + $(stats_field "$MNT" runs_shared))) &&
	say "runs $runs, requests $(($(pgets) - n0))" &&
	test "$(($(pgets) - n0))" = 1 &&
	test "$runs" = 2 &&
	same_dump &&
	test "$(($(pgets) - n0))" = 1 &&
	test "$(stats_field "$MNT" verify_failures)" = 0 &&
	test "$(stats_field "$MNT" errors)" = 0 &&
	unmount_store "$MNT"
'

test_expect_success 'a corrupted shared answer: one log line, nothing wrong cached, heals' '
	MOUNT_LOG_ALLOW="verify frame [0-9]+ of .*-coal-libbig: digest mismatch" &&
	fault_set "mode=corrupt digest=$N_BIG at=100" &&
	mount_store "$PROXY/coal" "$MNT" "cache=$TRASH/c2" &&
	log=${MOUNT_LOG[$MNT]} &&
	head -c 64 "$MNT/${PROG##*/}/bin/prog" >/dev/null &&
	test_wait_for 30 eval "[ \$(stats_field $MNT runs_shared) -ge 1 ]" &&
	test_wait_for 30 grep -q "digest mismatch" "$log" &&
	test_wait_for 30 eval "[ \$(stats_field $MNT verify_failures) -ge 1 ]" &&
	sleep 1 &&
	grep "digest mismatch" "$log" &&
	test "$(grep -c "digest mismatch" "$log")" = 1 &&
	unmount_store "$MNT" &&
	# what the cache kept verified: healed, the same cache reads right
	fault_set pass &&
	mount_store "$PROXY/coal" "$MNT" "cache=$TRASH/c2" &&
	same_dump &&
	test "$(stats_field "$MNT" verify_failures)" = 0 &&
	unmount_store "$MNT" &&
	MOUNT_LOG_ALLOW=
'

test_expect_success 'unmount while the shared request is stalled: exit 0' '
	fault_set "mode=stall match=/blobs/sha256:$N_BIG" &&
	mount_store "$PROXY/coal" "$MNT" "cache=$TRASH/c3" &&
	head -c 64 "$MNT/${PROG##*/}/bin/prog" >/dev/null &&
	test_wait_for 30 eval "[ \$(stats_field $MNT runs_shared) -ge 1 ]" &&
	test_wait_for 30 eval "grep -q \"fault:stall\" \"\$PROXY_LOG\"" &&
	unmount_store "$MNT" &&
	! grep "short answer" "${MOUNT_LOG[$MNT]}" &&
	fault_set pass
'

test_done
