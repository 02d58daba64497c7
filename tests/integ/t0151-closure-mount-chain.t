#!/bin/bash
test_description='a cold closure mount: its serial request chain before it can serve

A -o closure= mount through tests/lib/faultproxy.py (delay set, so each
request'"'"'s start is logged) over an empty cache. Before the mount returns,
the registry sees only the three requests that depend on each other: the
closure index (GET by tag, its digest computed locally), the metadata
manifest and the metadata blob. No API probe (GET /v2/), no tag list, no
HEAD of the tag: a 401 of the first request carries the same challenge,
and a 404 is told apart (repository or tag) only when it happens.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

log_lines() { wc -l <"$PROXY_LOG"; }
# answered requests (not the "begin" lines of the delay) from line N + 1
answered_since() { tail -n +$(($1 + 1)) "$PROXY_LOG" | grep -v " begin "; }

test_expect_success 'setup: registry, the small closure pushed with a tag, proxy in front' '
	start_registry &&
	build_small_closure &&
	nixoci push --tag hello "$REG/store" "$SMALL" &&
	start_faultproxy "$REG" &&
	fault_set "mode=pass delay=5"
'

test_expect_success 'a cold closure mount asks for index, metadata manifest, metadata blob only' '
	n=$(log_lines) &&
	mount_store "$PROXY/store" "$TRASH/m1" closure=hello &&
	answered_since $n >mount.log &&
	cat mount.log &&
	test "$(wc -l <mount.log)" = 3 &&
	sed -n 1p mount.log | grep -q "GET /v2/store/manifests/hello " &&
	sed -n 2p mount.log | grep -qE "GET /v2/store/manifests/sha256:[0-9a-f]{64} " &&
	sed -n 3p mount.log | grep -qE "GET /v2/store/blobs/sha256:[0-9a-f]{64} " &&
	! grep -E "HEAD |/tags/list| /v2/ " mount.log &&
	check_mount_hashes "$TRASH/m1" $SMALL_CLOSURE &&
	unmount_store "$TRASH/m1"
'

test_expect_success 'a closure tag that does not exist: one clear line, no mount' '
	rm -rf "$TRASH/c2" && mkdir -p "$TRASH/m2" &&
	! timeout 20 nixoci-fs -f -o cache=$TRASH/c2,closure=no-such-tag \
		"$PROXY/store" "$TRASH/m2" 2>err &&
	cat err &&
	grep -q "closure no-such-tag not found in $PROXY/store" err &&
	! mountpoint -q "$TRASH/m2"
'

test_expect_success 'a repository that does not exist, closure mount: named as the repository' '
	rm -rf "$TRASH/c3" && mkdir -p "$TRASH/m3" &&
	! timeout 20 nixoci-fs -f -o cache=$TRASH/c3,closure=hello \
		"$PROXY/no-such-repo" "$TRASH/m3" 2>err &&
	cat err &&
	grep -q "repository $PROXY/no-such-repo not found" err &&
	! mountpoint -q "$TRASH/m3"
'

test_expect_success 'an unreachable registry, closure mount: one line naming it, no mount' '
	DEAD_PORT=$(free_port) &&
	rm -rf "$TRASH/c4" && mkdir -p "$TRASH/m4" &&
	! timeout 20 nixoci-fs -f -o cache=$TRASH/c4,closure=hello \
		"127.0.0.1:$DEAD_PORT/store" "$TRASH/m4" 2>err &&
	cat err &&
	test "$(wc -l <err)" = 1 &&
	grep -q "127.0.0.1:$DEAD_PORT" err &&
	! mountpoint -q "$TRASH/m4"
'

test_done
