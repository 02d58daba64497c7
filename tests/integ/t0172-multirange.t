#!/bin/bash
test_description='multi-range reads: a profile'"'"'s runs of one blob in few requests

A profile whose frames form several runs of one store path is prefetched
with multi-range requests (Range: bytes=a-b,c-d,...; docker-registry answers
206 multipart/byteranges): the proxy sees fewer requests than runs. A server
that does not answer multipart (it sends the whole blob, only the first
range, or 416) gives the same verified bytes and one log line. A corrupted
part is caught by the frame digests: the read that needs the frame fails
with EIO and one log line, and nothing of it is cached. Unmounting during a
multi-range transfer leaves no request and no temporary file behind.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
EVEN="0 2 4 6 8 10 12 14"
# GETs of the NAR blob: all, those with several ranges, those begun
blob_gets() { grep -c "GET /v2/mr/blobs/sha256:$NAR" "$PROXY_LOG" || true; }
multi_gets() { grep -c "GET /v2/mr/blobs/sha256:$NAR range=bytes=[0-9-]*,.* -> " "$PROXY_LOG" || true; }
read_even() { for i in $EVEN; do cmp "$1/f$i" "$2/f$i" || return 1; done; }

test_expect_success 'setup: a path of sixteen 300 KiB files; a profile of every other one' '
	start_registry &&
	src=$TRASH/nixoci-multirange &&
	mkdir -p "$src" &&
	/usr/bin/python3 -c "
import random, sys
for i in range(16):
    r = random.Random(\"mr\" + str(i))
    open(\"%s/f%d\" % (sys.argv[1], i), \"wb\").write(r.randbytes(300 * 1024))
" "$src" &&
	D=$(nix-store --add "$src") &&
	nixoci push --no-pack --tag c1 "$REG/mr" "$D" &&
	NAR=$(nar_digest mr "$D") &&
	test ${#NAR} = 64 &&
	start_faultproxy "$REG" &&
	mount_store "$PROXY/mr" "$MNT" "closure=c1,profile_record=$TRASH/prof,cache=$TRASH/c-rec" &&
	read_even "$MNT/${D##*/}" "$D" &&
	unmount_store "$MNT" &&
	N=$(($(wc -l <"$TRASH/prof") - 1)) &&
	say "profile: $N frames" &&
	test "$N" -ge 8 &&
	nixoci profile push --name even "$REG/mr" c1 "$TRASH/prof"
'

# In NAR order (f0 f1 f10 f11 ... f15 f2 f3 ... f9) every even file lies
# between two odd ones, and a 300 KiB random file has frames of its own:
# the profile is 8 runs of one blob.
test_expect_success 'a prefetch with multi-range: fewer requests than runs, right bytes' '
	n0=$(blob_gets) &&
	mount_store "$PROXY/mr" "$MNT" "closure=c1,profile=even,cache=$TRASH/c-multi" &&
	log=${MOUNT_LOG[$MNT]} &&
	test_wait_for 30 eval "[ \$(stats_field $MNT frames_fetched) -ge $N ]" &&
	reqs=$(($(blob_gets) - n0)) &&
	say "8 runs, $reqs requests, of which with several ranges $(multi_gets)" &&
	test "$reqs" -lt 8 &&
	test "$(multi_gets)" -ge 1 &&
	grep "GET /v2/mr/blobs/sha256:$NAR range=bytes=[0-9-]*,.* -> 206" "$PROXY_LOG" &&
	read_even "$MNT/${D##*/}" "$D" &&
	test "$(($(blob_gets) - n0))" = "$reqs" &&
	! grep -q "multi-range read was answered" "$log" &&
	unmount_store "$MNT"
'

for how in whole first 416; do
	test_expect_success "a proxy without multi-range ($how): same bytes, one log line" '
		fault_set "mode=pass ranges='$how'" &&
		m0=$(grep -c "range=bytes=[0-9-]*,[0-9,-]*:'$how'" "$PROXY_LOG" || true) &&
		mount_store "$PROXY/mr" "$MNT" "closure=c1,profile=even,cache=$TRASH/c-'$how'" &&
		log=${MOUNT_LOG[$MNT]} &&
		test_wait_for 30 eval "[ \$(stats_field $MNT frames_fetched) -ge $N ]" &&
		m1=$(grep -c "range=bytes=[0-9-]*,[0-9,-]*:'$how'" "$PROXY_LOG") &&
		test "$m1" -gt "$m0" &&
		test_wait_for 10 grep -q "multi-range read was answered with" "$log" &&
		grep "multi-range read was answered with" "$log" &&
		test "$(grep -c "multi-range read was answered" "$log")" = 1 &&
		n0=$(blob_gets) &&
		read_even "$MNT/${D##*/}" "$D" &&
		test "$(blob_gets)" = "$n0" &&
		unmount_store "$MNT" &&
		fault_set pass
	'
done

test_expect_success 'a corrupted part: EIO and one log line for the read; nothing cached' '
	MOUNT_LOG_ALLOW="verify frame [0-9]+ of .*: digest mismatch|reading .*/f0" &&
	fault_set "mode=corrupt digest=$NAR at=part" &&
	mount_store "$PROXY/mr" "$MNT" "closure=c1,profile=even,cache=$TRASH/c-bad" &&
	log=${MOUNT_LOG[$MNT]} &&
	test_wait_for 30 eval "grep -q \"corrupt\" \"$PROXY_LOG\"" &&
	test_wait_for 30 eval "[ \$(stats_field $MNT verify_failures) -ge 1 ]" &&
	sleep 1 &&
	! grep "digest mismatch" "$log" &&
	! cat "$MNT/${D##*/}/f0" >/dev/null 2>err &&
	grep -q "Input/output error" err &&
	grep "digest mismatch" "$log" &&
	test "$(grep -c "digest mismatch" "$log")" = 1 &&
	unmount_store "$MNT" &&
	# what the cache kept verified: with the registry still corrupting,
	# f0 still fails on the same cache; healed, it reads right
	mount_store "$PROXY/mr" "$MNT" "cache=$TRASH/c-bad" &&
	! cat "$MNT/${D##*/}/f0" >/dev/null 2>err &&
	fault_set pass &&
	sleep 1 &&
	read_even "$MNT/${D##*/}" "$D" &&
	unmount_store "$MNT" &&
	MOUNT_LOG_ALLOW=
'

test_expect_success 'unmount during a multi-range transfer: exit 0, nothing left behind' '
	fault_set "mode=pass delay=700" &&
	mount_store "$PROXY/mr" "$MNT" "closure=c1,profile=even,cache=$TRASH/c-stop" &&
	test_wait_for 30 eval "grep -q \"begin GET /v2/mr/blobs/sha256:$NAR\" \"$PROXY_LOG\"" &&
	unmount_store "$MNT" &&
	n_end=$(grep -c "begin GET" "$PROXY_LOG") &&
	sleep 1.5 &&
	test "$(grep -c "begin GET" "$PROXY_LOG")" = "$n_end" &&
	fault_set pass &&
	test -z "$(find "$TRASH/c-stop/tmp" -type f 2>/dev/null)"
'

test_done
