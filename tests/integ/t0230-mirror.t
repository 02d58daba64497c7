#!/bin/bash
test_description='pull-through mirrors: tried in order, falling through to the origin'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/authreg.sh"

test_require_cmd docker-registry curl
test_require_nix
test_require_fuse
test_require_binaries

blob_gets() {
	reg_log_count "$1" "\"GET /v2/small/blobs/sha256:"
}

test_expect_success 'setup: origin, a full mirror, a partial mirror, a dead port' '
	build_small_closure &&
	DATA=$(echo "$SMALL_CLOSURE" | grep -- -hello-data-) &&
	test -n "$DATA" &&
	start_registry origin && ORIGIN=$REG && ORIGIN_LOG=$TRASH/registry-origin/log &&
	start_registry full && FULL=$REG && FULL_LOG=$TRASH/registry-full/log &&
	start_registry partial && PARTIAL=$REG && PARTIAL_LOG=$TRASH/registry-partial/log &&
	DOWN=127.0.0.1:$(free_port) &&
	# the dead mirror is announced once per source (a warning), as it should be
	MOUNT_LOG_ALLOW="mirror $DOWN: .*Connection refused; skipping this mirror" &&
	nixoci push "$ORIGIN/small" "$SMALL" >push.out 2>&1 &&
	nixoci push "$FULL/small" "$SMALL" >>push.out 2>&1 &&
	nixoci push "$PARTIAL/small" "$DATA" >>push.out 2>&1 &&
	cat push.out &&
	test "$(nixoci ls "$PARTIAL/small" | wc -l)" -lt "$(echo "$SMALL_CLOSURE" | wc -l)"
'

test_expect_success 'a mirror that is down and one that lacks blobs fall through to the origin' '
	o0=$(blob_gets "$ORIGIN_LOG") && p0=$(blob_gets "$PARTIAL_LOG") &&
	mount_store "$ORIGIN/small" "$TRASH/mnt1" "mirror=$DOWN,mirror=$PARTIAL" &&
	check_mount_hashes "$TRASH/mnt1" $SMALL_CLOSURE &&
	unmount_store "$TRASH/mnt1" &&
	o1=$(blob_gets "$ORIGIN_LOG") && p1=$(blob_gets "$PARTIAL_LOG") &&
	echo "blob GETs: partial mirror $((p1 - p0)), origin $((o1 - o0))" &&
	test $((p1 - p0)) -gt 0 &&
	test $((o1 - o0)) -gt 0 &&
	grep -q "mirror $DOWN" "$TRASH/fs-mnt1.log"
'

test_expect_success 'a working mirror serves every blob: the origin sees none' '
	o0=$(blob_gets "$ORIGIN_LOG") && f0=$(blob_gets "$FULL_LOG") &&
	mount_store "$ORIGIN/small" "$TRASH/mnt2" "mirror=$DOWN,mirror=$FULL" &&
	check_mount_hashes "$TRASH/mnt2" $SMALL_CLOSURE &&
	unmount_store "$TRASH/mnt2" &&
	o1=$(blob_gets "$ORIGIN_LOG") && f1=$(blob_gets "$FULL_LOG") &&
	echo "blob GETs: full mirror $((f1 - f0)), origin $((o1 - o0))" &&
	test $((f1 - f0)) -gt 0 &&
	test $((o1 - o0)) -eq 0
'

test_expect_success 'nixoci --mirror: ls and cat through the mirrors' '
	o0=$(blob_gets "$ORIGIN_LOG") &&
	nixoci ls --mirror "$DOWN" --mirror "$FULL" "$ORIGIN/small" | sort >ls.out &&
	echo "$SMALL_CLOSURE" | sort >want &&
	test_cmp want ls.out &&
	nixoci cat --mirror "$FULL" --cache "$TRASH/cat-cache" "$ORIGIN/small" \
		"$DATA/share/hello/numbers.txt" >cat.out &&
	cmp cat.out "$DATA/share/hello/numbers.txt" &&
	test "$(blob_gets "$ORIGIN_LOG")" -eq "$o0"
'

test_expect_success 'pushes go to the origin only' '
	f0=$(reg_log_count "$FULL_LOG" "\"PUT \|\"POST \|\"HEAD ") &&
	nixoci push --mirror "$FULL" "$ORIGIN/small" "$SMALL" >push2.out 2>&1 &&
	cat push2.out &&
	test "$(reg_log_count "$FULL_LOG" "\"PUT \|\"POST \|\"HEAD ")" -eq "$f0"
'

test_expect_success 'a bad mirror option is refused' '
	! nixoci ls --mirror "$FULL/some/path" "$ORIGIN/small" 2>err &&
	cat err && grep -q "want HOST\[:PORT\]" err
'

test_done
