#!/bin/bash
test_description='systemd: the unit verifies, and its ExecStart run as systemd would notifies READY=1 only once the store is open, serves, and unmounts on the stop signal'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry bwrap systemd-analyze systemd-escape /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
mkdir -p "$MNT"
BINDIR=$(dirname "$(command -v nixoci-fs)")
INST=$(systemd-escape --path "$MNT")
UNIT=$TRASH/unit/nixoci-fs@$INST.service

test_expect_success 'setup: registry and the small closure' '
	start_registry &&
	REF=$REG/small &&
	build_small_closure &&
	nixoci push "$REF" "$SMALL" >/dev/null 2>&1
'

test_expect_success 'the unit, installed as make install would, passes systemd-analyze verify' '
	mkdir -p "$TRASH/unit" "$TRASH/etc/nixoci" &&
	sed -e "s|@BINDIR@|$BINDIR|g" -e "s|@SYSCONFDIR@|$TRASH/etc|g" \
		"$TEST_SRCDIR/dist/nixoci-fs@.service.in" >"$UNIT" &&
	printf "NIXOCI_REF=%s\nNIXOCI_OPTS=cache=%s\n" "$REF" "$TRASH/cache" \
		>"$TRASH/etc/nixoci/$INST.env" &&
	(cd "$TRASH/unit" && systemd-analyze verify --man=no "$UNIT") >verify.out 2>&1 &&
	cat verify.out &&
	! test -s verify.out
'

test_expect_success 'its ExecStart: READY=1 after the store is open, a program runs, the stop signal unmounts' '
	test_atexit "fusermount3 -uz $MNT 2>/dev/null; true" &&
	/usr/bin/python3 "$TEST_LIB_DIR/sdrun.py" "$UNIT" "$INST" "$TRASH/cache" -- \
		bwrap --ro-bind "$MNT" /nix/store --proc /proc --dev /dev --unshare-all \
		--die-with-parent --clearenv "$SMALL/bin/hello" >sdrun.out 2>&1 ;
	rc=$? &&
	cat sdrun.out && echo "daemon stderr (the journal):" && cat sdrun.log &&
	test $rc = 0 &&
	grep -q "^notify: READY=1 | MAINPID=[0-9]* | STATUS=serving $REF on $MNT" sdrun.out &&
	grep -q "^at READY=1: store open True, mounted True" sdrun.out &&
	grep -q "^notify: STOPPING=1" sdrun.out &&
	! mountpoint -q "$MNT" &&
	! log_errors sdrun.log
'

test_expect_success 'a startup error reaches the journal (stderr) and no READY=1 is sent' '
	printf "NIXOCI_REF=%s\nNIXOCI_OPTS=cache=%s\n" "$REG/no-such-repo" "$TRASH/cache" \
		>"$TRASH/etc/nixoci/$INST.env" &&
	! /usr/bin/python3 "$TEST_LIB_DIR/sdrun.py" "$UNIT" "$INST" "$TRASH/cache" -- true \
		>sdrun.out 2>&1 &&
	cat sdrun.out sdrun.log &&
	grep -q "no READY=1" sdrun.out &&
	grep -q "repository $REG/no-such-repo not found" sdrun.log &&
	! mountpoint -q "$MNT"
'

test_done
