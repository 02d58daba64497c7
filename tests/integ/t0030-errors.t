#!/bin/bash
test_description='startup errors: one line naming the problem, non-zero exit, no hang'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl /usr/bin/python3
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
mkdir -p "$MNT"

# expect_error WANT_IN_MESSAGE CMD...: CMD exits non-zero (not by timeout)
# within 20 s with exactly one line on stderr that contains the text.
expect_error() {
	local want=$1 rc=0
	shift
	timeout 20 "$@" >out 2>err || rc=$?
	EXPECT_RC=$rc
	echo "exit $rc; stderr:"
	cat err
	test $rc -ne 0 || { echo "expected failure"; return 1; }
	test $rc -ne 124 || { echo "timed out"; return 1; }
	test "$(wc -l <err)" -eq 1 || { echo "expected one line on stderr"; return 1; }
	grep -qF -- "$want" err || { echo "message does not name '$want'"; return 1; }
	! mountpoint -q "$MNT" || { fusermount3 -u "$MNT"; echo "left a mount"; return 1; }
}

test_expect_success 'setup: a registry, and a port where nothing listens' '
	start_registry &&
	DEAD_PORT=$(free_port) &&
	! curl -fsS --max-time 2 "http://127.0.0.1:$DEAD_PORT/v2/"
'

if command -v nix-build >/dev/null && [ -w /nix/store ]; then
	test_expect_success 'setup: push the small closure' '
		build_small_closure &&
		nixoci push "$REG/small" "$SMALL" &&
		test_set_prereq PUSHED
	'
fi

test_expect_success 'nixoci-fs: registry not running' '
	expect_error "127.0.0.1:$DEAD_PORT" nixoci-fs -f -o cache=$TRASH/c \
		"127.0.0.1:$DEAD_PORT/repo" "$MNT" &&
	test $EXPECT_RC = 1
'

test_expect_success 'nixoci-fs: repository that does not exist' '
	expect_error "no-such-repo" nixoci-fs -f -o cache=$TRASH/c "$REG/no-such-repo" "$MNT" &&
	test $EXPECT_RC = 1
'

test_expect_success 'nixoci-fs: mountpoint that does not exist' '
	expect_error "$TRASH/no-such-dir" nixoci-fs -f -o cache=$TRASH/c \
		"$REG/no-such-repo" "$TRASH/no-such-dir"
'

test_expect_success 'nixoci-fs: mountpoint that is a file' '
	: >"$TRASH/a-file" &&
	expect_error "$TRASH/a-file" nixoci-fs -f -o cache=$TRASH/c \
		"$REG/no-such-repo" "$TRASH/a-file"
'

test_expect_success 'nixoci-fs: an unknown option' '
	expect_error "no-such-option" nixoci-fs -f -o cache=$TRASH/c,no-such-option=1 \
		"$REG/no-such-repo" "$MNT"
'

test_expect_success PUSHED 'nixoci-fs: a closure tag that does not exist' '
	expect_error "no-such-closure" nixoci-fs -f -o cache=$TRASH/c,closure=no-such-closure \
		"$REG/small" "$MNT"
'

test_expect_success 'nixoci-fs without -f: the startup error still reaches stderr' '
	expect_error "127.0.0.1:$DEAD_PORT" nixoci-fs -o cache=$TRASH/c \
		"127.0.0.1:$DEAD_PORT/repo" "$MNT"
'

test_expect_success 'nixoci ls / info / push: registry not running' '
	expect_error "127.0.0.1:$DEAD_PORT" nixoci ls "127.0.0.1:$DEAD_PORT/repo" &&
	expect_error "127.0.0.1:$DEAD_PORT" nixoci info "127.0.0.1:$DEAD_PORT/repo" \
		00000000000000000000000000000000-x &&
	if test_have_prereq PUSHED; then
		expect_error "127.0.0.1:$DEAD_PORT" nixoci push "127.0.0.1:$DEAD_PORT/repo" "$SMALL"
	fi
'

test_expect_success 'nixoci ls: repository that does not exist' '
	expect_error "no-such-repo" nixoci ls "$REG/no-such-repo"
'

test_expect_success PUSHED 'nixoci info: a path that is not in the repository' '
	expect_error "00000000000000000000000000000000" nixoci info "$REG/small" \
		/nix/store/00000000000000000000000000000000-nothing
'

test_expect_success 'nixoci: usage errors exit 2' '
	for args in "" no-such-command push "ls" "--no-such-option ls x/y"; do
		rc=0
		nixoci $args >/dev/null 2>&1 || rc=$?
		test $rc = 2 || { echo "nixoci $args: exit $rc"; return 1; }
	done
'

test_done
