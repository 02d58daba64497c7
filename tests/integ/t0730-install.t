#!/bin/bash
test_description='make install / uninstall: binaries, man pages (render without warnings), the systemd unit'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd make man systemd-analyze
test_require_binaries

# the build directory the binaries on PATH come from
O=$(cd "$(dirname "$(command -v nixoci-fs)")/.." && pwd)
ROOT=$TRASH/root

test_expect_success 'each man page renders without warnings at 80 columns' '
	for p in nixoci.1 nixoci-fs.8 nixoci-format.5; do
		MANWIDTH=80 man --warnings -l "$TEST_SRCDIR/man/$p" >"$p.txt" 2>"$p.err" &&
		cat "$p.err" &&
		! test -s "$p.err" &&
		grep -q "^NAME" "$p.txt" || { echo "$p"; return 1; }
	done
'

test_expect_success 'make install DESTDIR=... PREFIX=/usr puts everything in place' '
	make -s -C "$TEST_SRCDIR" O="$O" DESTDIR="$ROOT" PREFIX=/usr install >install.out 2>&1 ;
	rc=$? && cat install.out && test $rc = 0 &&
	(cd "$ROOT" && find . -type f | sort) >files &&
	cat files &&
	cat >want <<-\EOF &&
	./etc/nixoci/example.env.sample
	./usr/bin/nixoci
	./usr/bin/nixoci-fs
	./usr/lib/systemd/system/nixoci-fs@.service
	./usr/share/man/man1/nixoci.1
	./usr/share/man/man5/nixoci-format.5
	./usr/share/man/man8/nixoci-fs.8
	EOF
	test_cmp want files &&
	"$ROOT/usr/bin/nixoci" --version &&
	"$ROOT/usr/bin/nixoci-fs" --version &&
	grep -qx "ExecStart=/usr/bin/nixoci-fs --supervise -o ro,\${NIXOCI_OPTS} \${NIXOCI_REF} %f" \
		"$ROOT/usr/lib/systemd/system/nixoci-fs@.service" &&
	grep -qx "ExecReload=/bin/kill -HUP \$MAINPID" "$ROOT/usr/lib/systemd/system/nixoci-fs@.service" &&
	grep -qx "EnvironmentFile=/etc/nixoci/%i.env" "$ROOT/usr/lib/systemd/system/nixoci-fs@.service" &&
	MANWIDTH=80 man --warnings -l "$ROOT/usr/share/man/man8/nixoci-fs.8" >/dev/null 2>err &&
	! test -s err
'

test_expect_success 'make uninstall removes all of it' '
	make -s -C "$TEST_SRCDIR" O="$O" DESTDIR="$ROOT" PREFIX=/usr uninstall >uninstall.out 2>&1 ;
	rc=$? && cat uninstall.out && test $rc = 0 &&
	(cd "$ROOT" && find . -type f) >left &&
	cat left &&
	! test -s left
'

test_done
