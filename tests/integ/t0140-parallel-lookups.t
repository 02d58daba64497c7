#!/bin/bash
test_description='first lookups of different store paths run in parallel

The registry sits behind tests/lib/faultproxy.py holding every request
150 ms (a link with that much added round-trip time). Eight processes look
up eight store paths the mount has never seen, at once. The session layer
negotiates FUSE_PARALLEL_DIROPS (libfuse 3.14 does not), so the kernel
stops serializing lookups in /nix/store and the registry sees the requests
overlap: asserted from the proxy log (requests on the link at once), never
from a timer. Eight lookups of one new path still make one load: one
manifest request.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
DELAY=150

test_expect_success 'setup: nine store paths, registry behind a slow link, mount' '
	start_registry &&
	for i in 1 2 3 4 5 6 7 8 9; do
		echo "parallel lookup $i $TEST_NAME" >par$i &&
		P[$i]=$(nix-store --add par$i) &&
		nixoci push "$REG/par" "${P[$i]}" >/dev/null || return 1
	done &&
	start_faultproxy "$REG" &&
	fault_set "mode=pass delay=$DELAY" &&
	mount_store "$PROXY/par" "$MNT" "timeout=30"
'

test_expect_success 'one log line says whether passthrough is in use' '
	test_wait_for 10 grep -q "nixoci-fs: passthrough" "${MOUNT_LOG[$MNT]}" &&
	grep "nixoci-fs: passthrough" "${MOUNT_LOG[$MNT]}" >pt.lines &&
	cat pt.lines &&
	test "$(wc -l <pt.lines)" = 1
'

lookup() { stat -c %F "$MNT/${1##*/}" >"lookup.$2" 2>&1; }

test_expect_success '8 concurrent first lookups of 8 paths overlap at the registry' '
	: >"$PROXY_LOG.mark" &&
	start=$(wc -l <"$PROXY_LOG") &&
	pids= &&
	timed_all() {
		for i in 1 2 3 4 5 6 7 8; do
			lookup "${P[$i]}" $i &
			pids="$pids $!"
		done &&
		for p in $pids; do wait $p || return 1; done
	} &&
	timed timed_all &&
	say "8 concurrent first lookups: $ELAPSED_MS ms (link delay $DELAY ms)" &&
	for i in 1 2 3 4 5 6 7 8; do
		test "$(cat lookup.$i)" = "regular file" || return 1
	done &&
	tail -n +$((start + 1)) "$PROXY_LOG" >window.log &&
	max=$(sed -nE "s/.* begin .* inflight=([0-9]+)$/\1/p" window.log | sort -n | tail -n 1) &&
	say "most requests on the link at once: $max" &&
	test "${max:-0}" -ge 4
'

test_expect_success 'one first lookup alone (for the log: its time)' '
	timed lookup "${P[9]}" 9 &&
	say "1 first lookup: $ELAPSED_MS ms" &&
	test "$(cat lookup.9)" = "regular file"
'

test_expect_success 'concurrent lookups of one new path collapse into one load' '
	Q=$(echo "collapse $TEST_NAME" >q && nix-store --add q) &&
	nixoci push "$REG/par" "$Q" >/dev/null &&
	hash=$(basename "$Q" | cut -c1-32) &&
	start=$(wc -l <"$PROXY_LOG") &&
	pids= &&
	for i in 1 2 3 4 5 6 7 8; do
		lookup "$Q" q$i &
		pids="$pids $!"
	done &&
	for p in $pids; do wait $p || return 1; done &&
	for i in 1 2 3 4 5 6 7 8; do
		test "$(cat lookup.q$i)" = "regular file" || return 1
	done &&
	tail -n +$((start + 1)) "$PROXY_LOG" |
		grep -v " begin " | grep -c "GET /v2/par/manifests/$hash" >n &&
	cat n &&
	test "$(cat n)" = 1
'

test_expect_success 'the file contents are right' '
	for i in 1 2 3 4 5 6 7 8 9; do
		cmp "$MNT/${P[$i]##*/}" "${P[$i]}" || return 1
	done
'

test_expect_success 'cleanup: unmount, daemon exits 0, log clean' '
	unmount_store "$MNT"
'

test_done
