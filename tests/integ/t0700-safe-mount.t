#!/bin/bash
test_description='safe mounting: every option checked before any side effect, refusals'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl findmnt
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
mkdir -p "$MNT"

# refused WANT RC CMD...: CMD exits RC within 20 s with one line on stderr
# containing WANT, and left nothing behind: no mount on MNT, no cache
# directory $TRASH/never.
refused() {
	local want=$1 want_rc=$2 rc=0
	shift 2
	timeout 20 "$@" >out 2>err || rc=$?
	echo "exit $rc; stderr:" && cat err
	test $rc = "$want_rc" || { echo "expected exit $want_rc"; return 1; }
	test "$(wc -l <err)" -eq 1 || { echo "expected one line on stderr"; return 1; }
	grep -qF -- "$want" err || { echo "message does not say '$want'"; return 1; }
	! mountpoint -q "$MNT" || { fusermount3 -u "$MNT"; echo "left a mount"; return 1; }
	! test -e "$TRASH/never" || { echo "created the cache directory"; return 1; }
}

test_expect_success 'setup: registry and the small closure' '
	start_registry &&
	REF=$REG/small &&
	build_small_closure &&
	nixoci push "$REF" "$SMALL" >/dev/null 2>&1
'

test_expect_success 'an unknown option: did you mean, exit 2, before the cache is created' '
	refused "did you mean -o cache?" 2 nixoci-fs -f -o cache=$TRASH/never,cach=/x "$REF" "$MNT" &&
	refused "did you mean -o readahead?" 2 nixoci-fs -f -o cache=$TRASH/never,readahed=1M \
		"$REF" "$MNT" &&
	refused "did you mean --version?" 2 nixoci-fs --verison &&
	refused "unknown option -o frobnicate" 2 nixoci-fs -f -o cache=$TRASH/never,frobnicate \
		"$REF" "$MNT"
'

test_expect_success 'a bad value is refused before the cache is created, exit 2' '
	refused "timeout=0" 2 nixoci-fs -f -o cache=$TRASH/never,timeout=0 "$REF" "$MNT" &&
	refused "cache_size=10XB" 2 nixoci-fs -f -o cache=$TRASH/never,cache_size=10XB "$REF" "$MNT"
'

test_expect_success '-o rw is refused (the store is read-only)' '
	refused "option rw refused" 2 nixoci-fs -f -o cache=$TRASH/never,rw "$REF" "$MNT"
'

test_expect_success 'fsname= and subtype= are ours' '
	refused "option fsname=x refused" 2 nixoci-fs -f -o cache=$TRASH/never,fsname=x "$REF" "$MNT"
'

test_expect_success 'usage errors exit 2 in both binaries' '
	for args in "" "$REF" "--no-such-option $REF $MNT" "$REF $MNT extra"; do
		rc=0
		nixoci-fs $args >/dev/null 2>&1 || rc=$?
		test $rc = 2 || { echo "nixoci-fs $args: exit $rc"; return 1; }
	done &&
	for args in "" no-such-command "--no-such-option ls x/y"; do
		rc=0
		nixoci $args >/dev/null 2>&1 || rc=$?
		test $rc = 2 || { echo "nixoci $args: exit $rc"; return 1; }
	done
'

test_expect_success '--version on both binaries' '
	nixoci --version >v1 && nixoci-fs --version >v2 &&
	grep -qE "^nixoci [0-9]+\.[0-9]+\.[0-9]+$" v1 &&
	grep -qE "^nixoci-fs [0-9]+\.[0-9]+\.[0-9]+$" v2
'

test_expect_success 'a non-empty mountpoint is refused; -o nonempty mounts over it' '
	mkdir -p "$TRASH/full" && echo keep >"$TRASH/full/file" &&
	MNT_SAVE=$MNT && MNT=$TRASH/full &&
	refused "is not empty" 1 nixoci-fs -f -o cache=$TRASH/never "$REF" "$TRASH/full" &&
	MNT=$MNT_SAVE &&
	mount_store "$REF" "$TRASH/full" nonempty &&
	test -d "$TRASH/full/${SMALL#/nix/store/}" &&
	! test -e "$TRASH/full/file" &&
	unmount_store "$TRASH/full" &&
	test "$(cat "$TRASH/full/file")" = keep
'

test_expect_success 'sizes: 10G, 10GB and 10GiB are accepted' '
	for s in 10G 10GB 10GiB 512MB; do
		mount_store "$REF" "$MNT" "cache_size=$s" &&
		unmount_store "$MNT" || return 1
	done
'

test_expect_success 'the source is the repository, the type fuse.nixoci-fs' '
	mount_store "$REF" "$MNT" "cache=$TRASH/cache-held" &&
	findmnt -n -o SOURCE,FSTYPE "$MNT" >findmnt.out &&
	cat findmnt.out &&
	test "$(cat findmnt.out)" = "$REF fuse.nixoci-fs"
'

test_expect_success 'a mountpoint that already carries nixoci-fs is refused' '
	rc=0 &&
	timeout 20 nixoci-fs -f -o cache=$TRASH/other-cache,nonempty "$REF" "$MNT" 2>err || rc=$? &&
	cat err &&
	test $rc = 1 &&
	grep -q "already carries nixoci-fs ($REF)" err &&
	test "$(findmnt -n -o SOURCE "$MNT" | wc -l)" = 1
'

test_expect_success 'a cache directory another daemon holds is refused' '
	mkdir -p "$TRASH/mnt2" &&
	rc=0 &&
	timeout 20 nixoci-fs -f -o cache=$TRASH/cache-held "$REF" "$TRASH/mnt2" 2>err || rc=$? &&
	cat err &&
	test $rc = 1 &&
	grep -q "cache directory $TRASH/cache-held is in use by another nixoci-fs (pid ${MOUNT_PID[$MNT]}, mounted on $MNT)" err &&
	! mountpoint -q "$TRASH/mnt2" &&
	unmount_store "$MNT" &&
	mount_store "$REF" "$TRASH/mnt2" "cache=$TRASH/cache-held" &&
	unmount_store "$TRASH/mnt2"
'

test_expect_success 'the cache directory is created with its parents' '
	mount_store "$REF" "$MNT" "cache=$TRASH/a/b/c/cache" &&
	test -d "$TRASH/a/b/c/cache" &&
	unmount_store "$MNT"
'

test_done
