#!/bin/bash
test_description='make demo: a closure big enough to show laziness, and the share fetched'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry bwrap /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

O=$(cd "$(dirname "$(command -v nixoci-fs)")/.." && pwd)

test_expect_success 'tests/demo.sh runs python3 from the mount and prints the share of the closure fetched' '
	bash "$TEST_SRCDIR/tests/demo.sh" "$O" >demo.out 2>&1 ;
	rc=$? && tail -n 30 demo.out && test $rc = 0 &&
	grep -q "^python 3\.[0-9.]* from the lazily mounted store" demo.out &&
	line=$(grep "^fetched [0-9]* of the [0-9]* bytes the registry holds for [0-9]* store paths: [0-9.]*%" demo.out) &&
	set -- $line && fetched=$2 held=$5 npaths=${11} &&
	echo "fetched $fetched of $held, $npaths paths" &&
	test "$npaths" -ge 100 &&
	test "$fetched" -gt 0 &&
	# lazy: well under half of what the registry holds was fetched
	test $((fetched * 2)) -lt "$held" &&
	grep -q "^it touched [0-9]* of the $npaths store paths" demo.out
'

test_done
