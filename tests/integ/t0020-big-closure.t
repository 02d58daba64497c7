#!/bin/bash
test_description='a closure of 100+ store paths with CPython: push, mount, run'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl bwrap /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt

test_expect_success 'setup: registry and the CPython closure (>= 100 paths)' '
	start_registry &&
	REF=$REG/python &&
	build_big_closure &&
	NPATHS=$(echo "$BIG_CLOSURE" | wc -l) &&
	echo "$NPATHS paths" &&
	test "$NPATHS" -ge 100
'

test_expect_success 'push with --jobs 4; every path uploaded' '
	nixoci push --jobs 4 "$REF" "$BIG" >push.out 2>&1 &&
	tail -n 3 push.out &&
	test "$(push_summary_field "$(cat push.out)" paths)" = "$NPATHS" &&
	test "$(push_summary_field "$(cat push.out)" uploaded)" = "$NPATHS" &&
	test "$(push_summary_field "$(cat push.out)" bytes)" -gt 0
'

test_expect_success 're-pushing the unchanged closure uploads 0 blobs' '
	nixoci push --jobs 4 "$REF" "$BIG" >push2.out 2>&1 &&
	tail -n 3 push2.out &&
	test "$(push_summary_field "$(cat push2.out)" paths)" = "$NPATHS" &&
	test "$(push_summary_field "$(cat push2.out)" uploaded)" = 0 &&
	test "$(push_summary_field "$(cat push2.out)" skipped)" = "$NPATHS" &&
	test "$(push_summary_field "$(cat push2.out)" bytes)" = 0
'

test_expect_success 'pushing through ./result-style symlinks works too' '
	ln -s "$BIG" result &&
	nixoci push "$REF" ./result >push3.out 2>&1 &&
	test "$(push_summary_field "$(cat push3.out)" uploaded)" = 0
'

test_expect_success 'nixoci ls lists the whole closure' '
	nixoci ls "$REF" | sort >ls.out &&
	echo "$BIG_CLOSURE" | sort >want &&
	test_cmp want ls.out
'

test_expect_success 'mount it' '
	mount_store "$REF" "$MNT"
'

test_expect_success 'python runs from the mount with only it as /nix/store' '
	run_sandboxed "$MNT" "$BIG/bin/python3" -c "import json, sqlite3, decimal; print(\"ok\")" >py.out 2>&1 &&
	cat py.out &&
	test "$(cat py.out)" = ok
'

test_expect_success 'python does real work from the mount' '
	run_sandboxed "$MNT" "$BIG/bin/python3" -c "
import json, sqlite3, decimal, hashlib, zlib, email.mime.text, asyncio
db = sqlite3.connect(\":memory:\")
db.execute(\"create table t (x)\")
db.executemany(\"insert into t values (?)\", [(i,) for i in range(1000)])
s = db.execute(\"select sum(x) from t\").fetchone()[0]
d = decimal.Decimal(1) / decimal.Decimal(7)
print(json.dumps({\"sum\": s, \"d\": str(d)[:8], \"sha\": hashlib.sha256(b\"x\").hexdigest()[:8],
                  \"z\": len(zlib.compress(b\"a\" * 1000))}, sort_keys=True))
" >work.out 2>&1 &&
	cat work.out &&
	test "$(cat work.out)" = "{\"d\": \"0.142857\", \"sha\": \"2d711642\", \"sum\": 499500, \"z\": 17}"
'

test_expect_success 'nix-store --dump of every path through the mount hashes to Nix NarHash' '
	check_mount_hashes "$MNT" $BIG_CLOSURE
'

test_expect_success 'parallel readers see the same bytes' '
	pids= &&
	i=0 &&
	for p in $(echo "$BIG_CLOSURE" | head -n 40); do
		i=$((i + 1))
		( test "$(nar_hash_of $MNT/${p##*/})" = "$(nix_nar_hash $p)" ) >par.$i.out 2>&1 &
		pids="$pids $!"
	done &&
	fail=0 &&
	for pid in $pids; do wait $pid || fail=$((fail + 1)); done &&
	echo "$fail failures" &&
	test $fail = 0
'

test_expect_success 'unmount: the daemon exits 0 and logged no errors' '
	nixoci stats "$MNT" &&
	unmount_store "$MNT"
'

test_expect_success 'a cold mount runs python without reading everything' '
	mount_store "$REF" "$TRASH/cold" cache=$TRASH/cold-cache &&
	run_sandboxed "$TRASH/cold" "$BIG/bin/python3" -c "print(1)" &&
	nixoci stats "$TRASH/cold" >cold.out &&
	cat cold.out &&
	fetched=$(awk "/^bytes_fetched /{print \$2}" cold.out) &&
	total=$(du -sb "$REG_STORAGE" | cut -f1) &&
	echo "fetched $fetched of $total registry bytes" &&
	test "$fetched" -gt 0 && test "$fetched" -lt "$total" &&
	unmount_store "$TRASH/cold"
'

test_done
