#!/bin/bash
test_description='machine-readable output: --json on ls, info, verify, stats (parsed with jq); Prometheus metrics (promtool check metrics)'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry jq getfattr
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt

# prom_check FILE: promtool when Debian's prometheus package is there, else
# a parser of the text format (tests/lib/promparse.py); both must pass.
prom_check() {
	if command -v promtool >/dev/null; then
		promtool check metrics <"$1" || return 1
	fi
	/usr/bin/python3 "$TEST_LIB_DIR/promparse.py" "$1"
}

test_expect_success 'setup: registry and the small closure' '
	start_registry &&
	REF=$REG/small &&
	build_small_closure &&
	nixoci push --tag small "$REF" "$SMALL" >/dev/null 2>&1 &&
	DATA=$(echo "$SMALL_CLOSURE" | grep -- -hello-data-)
'

test_expect_success 'ls --json: the repository and its paths' '
	nixoci ls --json "$REF" >ls.json &&
	cat ls.json &&
	test "$(jq -r .repository ls.json)" = "$REF" &&
	jq -r ".paths[]" ls.json >got &&
	echo "$SMALL_CLOSURE" | sort >want &&
	test_cmp want got &&
	nixoci ls --json --closures "$REF" | jq -e ".closures == [\"small\"]"
'

test_expect_success 'info --json: what Nix recorded' '
	nixoci info --json "$REF" "$SMALL" >info.json &&
	cat info.json &&
	test "$(jq -r .path info.json)" = "$SMALL" &&
	test "$(jq -r .narHash info.json)" = "$(nix-store -q --hash "$SMALL")" &&
	test "$(jq .narSize info.json)" = "$(nix-store -q --size "$SMALL")" &&
	jq -r ".references[]" info.json | sort >got &&
	nix-store -q --references "$SMALL" | xargs -n1 basename | sort >want &&
	test_cmp want got &&
	jq -e ".narLayer.digest | startswith(\"sha256:\")" info.json
'

test_expect_success 'verify --json: one result per path, failures included' '
	! nixoci verify --json "$REF" "$SMALL" /nix/store/00000000000000000000000000000000-nothing \
		>verify.json 2>verify.err &&
	cat verify.json verify.err &&
	jq -e "length == 2" verify.json &&
	jq -e ".[0] == {\"path\": \"$SMALL\", \"ok\": true}" verify.json &&
	jq -e ".[1].ok == false and (.[1].error | test(\"not in the repository\"))" verify.json
'

test_expect_success 'mount with -o metrics=FILE; stats --json after reads' '
	mount_store "$REF" "$MNT" "metrics=$TRASH/nixoci.prom" &&
	cat "$MNT/${DATA#/nix/store/}/share/hello/numbers.txt" >/dev/null &&
	nixoci stats --json "$MNT" >stats.json &&
	cat stats.json &&
	jq -e ".frames_fetched > 0 and .requests > 0 and .offline == 0" stats.json &&
	nixoci stats "$MNT" >stats.txt &&
	test "$(jq -r .cache_limit stats.json)" = "$(sed -n "s/^cache_limit //p" stats.txt)"
'

test_expect_success 'stats --prometheus: valid text format, counters and both latency histograms' '
	nixoci stats --prometheus "$MNT" >metrics.txt &&
	head -n 20 metrics.txt &&
	prom_check metrics.txt &&
	grep -q "^nixoci_frames_fetched_total{mountpoint=\"$MNT\"} [1-9]" metrics.txt &&
	grep -q "^nixoci_mount_info{mountpoint=\"$MNT\",repository=\"$REF\",version=\"[0-9.]*\"} 1$" metrics.txt &&
	grep -q "^nixoci_registry_request_duration_seconds_count{mountpoint=\"$MNT\"} [1-9]" metrics.txt &&
	grep -q "^nixoci_fuse_request_duration_seconds_count{mountpoint=\"$MNT\",op=\"read\"} [1-9]" metrics.txt &&
	grep -q "^nixoci_fuse_request_duration_seconds_count{mountpoint=\"$MNT\",op=\"lookup\"} [1-9]" metrics.txt &&
	grep -q "^nixoci_fuse_request_duration_seconds_bucket{mountpoint=\"$MNT\",op=\"read\",le=\"+Inf\"} [1-9]" metrics.txt
'

test_expect_success 'the metrics file (textfile collector): written, valid, final figures at exit' '
	test_wait_for 30 test -s "$TRASH/nixoci.prom" &&
	prom_check "$TRASH/nixoci.prom" &&
	unmount_store "$MNT" &&
	prom_check "$TRASH/nixoci.prom" &&
	grep -q "^nixoci_fuse_request_duration_seconds_count{mountpoint=\"$MNT\",op=\"read\"} [1-9]" \
		"$TRASH/nixoci.prom" &&
	! test -e "$TRASH/nixoci.prom.tmp"
'

test_expect_success '-o metrics= in a directory that cannot be written is refused, exit 2' '
	rc=0 && nixoci-fs -f -o metrics=/no/such/dir/x.prom "$REF" "$MNT" 2>err || rc=$? &&
	cat err && test $rc = 2 && grep -q "metrics=/no/such/dir/x.prom" err
'

test_done
