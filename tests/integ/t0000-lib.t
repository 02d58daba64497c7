#!/bin/bash
test_description='the test library itself: registry, closures, NAR hashes'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl /usr/bin/python3
test_require_nix

test_expect_success 'start_registry serves /v2/ on a loopback port' '
	start_registry &&
	case $REG in 127.0.0.1:[0-9]*) ;; *) false ;; esac &&
	curl -fsS "http://$REG/v2/" &&
	curl -fsS "http://$REG/v2/_catalog"
'

test_expect_success 'a second registry gets its own port and storage' '
	start_registry other &&
	test "$REG_other" != "$REG_reg" &&
	test "$REG_STORAGE_other" != "$REG_STORAGE_reg" &&
	curl -fsS "http://$REG_other/v2/"
'

test_expect_success 'stop_registry stops it' '
	stop_registry $REG_PID_other &&
	! curl -fsS --max-time 2 "http://$REG_other/v2/"
'

test_expect_success 'the small closure builds and runs with only /nix/store' '
	build_small_closure &&
	test $(echo "$SMALL_CLOSURE" | wc -l) -ge 4 &&
	out=$(bwrap --ro-bind /nix/store /nix/store --proc /proc --dev /dev \
		--unshare-all --die-with-parent --clearenv $SMALL/bin/hello) &&
	echo "$out" | grep -q "Hello from a lazily mounted /nix/store!"
'

test_expect_success 'nar_hash_of a store path equals Nix NarHash' '
	for p in $SMALL_CLOSURE; do
		test "$(nar_hash_of $p)" = "$(nix_nar_hash $p)" || return 1
	done
'

test_expect_success 'the big closure has >= 100 paths and python runs sandboxed' '
	build_big_closure &&
	n=$(echo "$BIG_CLOSURE" | wc -l) &&
	echo "$n paths" &&
	test $n -ge 100 &&
	out=$(run_sandboxed /nix/store $BIG/bin/python3 -c "import json, sqlite3, decimal; print(\"ok\")") &&
	test "$out" = ok
'

test_expect_success 'push_summary_field parses the summary line' '
	line="pushed 118 paths (3 uploaded, 115 skipped), 12345 bytes uploaded in 1.5s" &&
	test "$(push_summary_field "$line" paths)" = 118 &&
	test "$(push_summary_field "$line" uploaded)" = 3 &&
	test "$(push_summary_field "$line" skipped)" = 115 &&
	test "$(push_summary_field "$line" bytes)" = 12345
'

test_done
