#!/bin/bash
test_description='a fresh build prints no warnings; make install PREFIX=DIR works'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd make gcc pkg-config
# Builds into the trash (O=...), so the checked-out tree's build/ is untouched;
# "install" builds only the two programs and does not touch the bin link.

test_expect_success 'make install PREFIX=DIR from scratch, no warnings' '
	timeout 900 make -C "$TEST_SRCDIR" -j2 O="$TRASH/build" PREFIX="$TRASH/prefix" install >make.out 2>&1
	rc=$?
	cat make.out &&
	test $rc = 0 &&
	! grep -iE "warning|error" make.out | grep -v "^install "
'

test_expect_success 'the installed programs run' '
	test -x "$TRASH/prefix/bin/nixoci" &&
	test -x "$TRASH/prefix/bin/nixoci-fs" &&
	"$TRASH/prefix/bin/nixoci" --help >help.out &&
	grep -q push help.out &&
	"$TRASH/prefix/bin/nixoci-fs" --help >fshelp.out 2>&1 &&
	grep -q cache= fshelp.out
'

test_expect_success 'DESTDIR is honoured' '
	make -C "$TEST_SRCDIR" O="$TRASH/build" PREFIX=/usr/local DESTDIR="$TRASH/dest" install &&
	test -x "$TRASH/dest/usr/local/bin/nixoci" &&
	test -x "$TRASH/dest/usr/local/bin/nixoci-fs"
'

test_done
