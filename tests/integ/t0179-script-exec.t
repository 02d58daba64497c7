#!/bin/bash
test_description='predicted programs: what a script runs, fetched before it runs it

The first read of a script (#!) through the mount has its #! interpreter
and the store files on its exec lines resolved through the TOCs in the
background and fetched as a loaded library is (start, loadable segments),
each then predicting its own libraries, or, a script itself, what it runs.
Comments and other commands name nothing that is fetched, a name that
resolves nowhere is skipped, readahead=0 turns it off, and an unmount
while a predicted program is stalled exits 0. Asserted from the
registry'"'"'s side (the proxy log) and the counters.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp head
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt

# gets STOREPATH: NAR blob requests for the path the proxy answered so far
gets() { grep -c "GET /v2/sx/blobs/sha256:$(nar_digest sx "$1")[^ ]* range=.* -> " "$PROXY_LOG" || true; }

test_expect_success 'setup: two scripts, an interpreter, a program, their libraries; pushed, proxy' '
	start_registry &&
	OUTER=$(nix-build "$TEST_LIB_DIR/script.nix" "${NIX_BUILD_OPTS[@]}") &&
	closure=$(nix-store -qR "$OUTER") &&
	INNER=$(echo "$closure" | grep -- "-sx-inner$") &&
	INTERP=$(echo "$closure" | grep -- "-sx-interp$") &&
	BASE=$(echo "$closure" | grep -- "-sx-libbase$") &&
	TARGET=$(echo "$closure" | grep -- "-sx-target$") &&
	TLIB=$(echo "$closure" | grep -- "-sx-libtarget$") &&
	ASIDE=$(echo "$closure" | grep -- "-sx-aside$") &&
	# format 1: each path its own NAR blob, so the log says which was read
	nixoci push --no-pack "$REG/sx" "$OUTER" &&
	start_faultproxy "$REG" &&
	fault_set "mode=pass delay=50"
'

test_expect_success 'the first bytes of a script: the programs it runs and their libraries are fetched' '
	mount_store "$PROXY/sx" "$MNT" "cache=$TRASH/cache-1" &&
	head -c 64 "$MNT/${OUTER##*/}/bin/outer" >out &&
	head -c 64 "$OUTER/bin/outer" >want && cmp out want &&
	# the interpreter, the inner script, the program it execs
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_exec) -ge 3 ]" &&
	test_wait_for 30 eval "[ \$(gets $TLIB) -ge 1 ] && [ \$(gets $BASE) -ge 1 ]" &&
	test "$(gets "$INTERP")" -ge 1 && test "$(gets "$INNER")" -ge 1 &&
	test "$(gets "$TARGET")" -ge 1 &&
	# named in a comment and by an echo only: never fetched
	test "$(gets "$ASIDE")" = 0 &&
	test "$(stats_field "$MNT" predict_exec)" = 3 &&
	test "$(stats_field "$MNT" errors)" = 0
'

test_expect_success 'what was predicted reads from the cache, with the right bytes' '
	n0=$(grep -c "GET /v2/sx/blobs/" "$PROXY_LOG") &&
	cmp "$MNT/${INTERP##*/}/bin/interp" "$INTERP/bin/interp" &&
	cmp "$MNT/${INNER##*/}/bin/inner" "$INNER/bin/inner" &&
	cmp "$MNT/${TARGET##*/}/bin/tprog" "$TARGET/bin/tprog" &&
	cmp "$MNT/${TLIB##*/}/lib/libtarget.so.1" "$TLIB/lib/libtarget.so.1" &&
	cmp "$MNT/${BASE##*/}/lib/libbase.so.1" "$BASE/lib/libbase.so.1" &&
	test "$(grep -c "GET /v2/sx/blobs/" "$PROXY_LOG")" = "$n0" &&
	# each script once per mount: read again, it predicts nothing more
	cat "$MNT/${OUTER##*/}/bin/outer" "$MNT/${INNER##*/}/bin/inner" >/dev/null &&
	test "$(stats_field "$MNT" predict_exec)" = 3 &&
	unmount_store "$MNT" &&
	test "$(gets "$ASIDE")" = 0
'

test_expect_success 'the inner script read first: only what it runs' '
	mount_store "$PROXY/sx" "$MNT" "cache=$TRASH/cache-2" &&
	i0=$(gets "$INTERP") &&
	cat "$MNT/${INNER##*/}/bin/inner" >/dev/null &&
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_exec) -ge 1 ]" &&
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_libs) -ge 2 ]" &&
	test "$(stats_field "$MNT" predict_exec)" = 1 &&
	test "$(gets "$INTERP")" = "$i0" &&
	unmount_store "$MNT"
'

test_expect_success 'readahead=0: nothing predicted' '
	n0=$(gets "$TARGET") &&
	mount_store "$PROXY/sx" "$MNT" "cache=$TRASH/cache-3,readahead=0" &&
	cat "$MNT/${OUTER##*/}/bin/outer" "$MNT/${INNER##*/}/bin/inner" >/dev/null &&
	sleep 1 &&
	test "$(stats_field "$MNT" predict_exec)" = 0 &&
	unmount_store "$MNT" &&
	test "$(gets "$TARGET")" = "$n0"
'

test_expect_success 'unmount while a predicted program is stalled on the link: exit 0' '
	mount_store "$PROXY/sx" "$MNT" "cache=$TRASH/cache-4" &&
	fault_set "mode=stall match=/blobs/sha256:$(nar_digest sx "$TARGET")" &&
	head -c 64 "$MNT/${OUTER##*/}/bin/outer" >/dev/null &&
	test_wait_for 30 eval "grep -q \"fault:stall\" \"\$PROXY_LOG\"" &&
	unmount_store "$MNT" &&
	fault_set "mode=pass"
'

test_done
