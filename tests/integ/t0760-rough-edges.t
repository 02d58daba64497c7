#!/bin/bash
test_description='rough edges: push <hash>-<name> and .drv, prefetch default cache, df figures, make targets; rootless mount'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry setpriv bwrap jq make
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
# a user that is not root: nobody (no home; HOME is set per test)
U=65534
as_user() { setpriv --reuid=$U --regid=$U --clear-groups --inh-caps=-all "$@"; }
# the trash directory (0700 from mktemp) must be reachable by the user
chmod 0755 "$TRASH"
# Debian's udev makes /dev/fuse 0666; in a container it may be 0600. Then
# the user gets an ACL entry for this test's duration (only that user,
# removed at exit), as a host's default would give it.
if as_user sh -c 'exec 3<>/dev/fuse' 2>/dev/null; then
	test_set_prereq USERFUSE
elif command -v setfacl >/dev/null && setfacl -m u:$U:rw /dev/fuse 2>/dev/null; then
	test_atexit "setfacl -x u:$U /dev/fuse"
	test_set_prereq USERFUSE
fi

test_expect_success 'setup: registry and the small closure' '
	start_registry &&
	REF=$REG/small &&
	build_small_closure &&
	DATA=$(echo "$SMALL_CLOSURE" | grep -- -hello-data-)
'

test_expect_success 'push <hash>-<name> (without /nix/store/) pushes that path' '
	nixoci push "$REF" "${SMALL#/nix/store/}" >push.out 2>&1 &&
	cat push.out &&
	nixoci ls "$REF" | sort >got &&
	echo "$SMALL_CLOSURE" | sort >want &&
	test_cmp want got
'

test_expect_success 'push of a .drv is refused with what to do instead' '
	DRV=$(nix-store -q --deriver "$SMALL") &&
	test -e "$DRV" &&
	rc=0 && nixoci push "$REF" "$DRV" >out 2>err || rc=$? &&
	cat err &&
	test $rc = 1 &&
	test "$(wc -l <err)" = 1 &&
	grep -qF "$DRV is a derivation (a build recipe), not a build output; push its outputs: nixoci push REF \$(nix-store -q --outputs $DRV)" err &&
	rc=0 && nixoci push "$REF" "${DRV#/nix/store/}" 2>err || rc=$? &&
	test $rc = 1 && grep -q "is a derivation" err
'

test_expect_success 'prefetch without --cache fills the default cache ($XDG_CACHE_HOME/nixoci, then ~/.cache/nixoci for a user)' '
	mkdir -p "$TRASH/home" "$TRASH/xdg" && chown $U "$TRASH/home" "$TRASH/xdg" &&
	as_user env HOME="$TRASH/home" XDG_CACHE_HOME="$TRASH/xdg" \
		nixoci prefetch "$REF" "$SMALL" >pf.out 2>&1 &&
	cat pf.out &&
	test -d "$TRASH/xdg/nixoci/index.mdb" &&
	as_user env -u XDG_CACHE_HOME HOME="$TRASH/home" nixoci prefetch "$REF" "$SMALL" \
		>pf.out 2>&1 &&
	cat pf.out &&
	test -d "$TRASH/home/.cache/nixoci/index.mdb" &&
	test "$(stat -c %u "$TRASH/home/.cache/nixoci")" = $U
'

# Root cannot look into a user's FUSE mount without allow_other (the kernel
# refuses): the checks of the mount itself run as the user.
UMNT=$TRASH/umnt
test_expect_success USERFUSE 'rootless: a user mounts (fusermount3) with the default cache, created with its parents, and runs a program' '
	rm -rf "$TRASH/home/.cache" &&
	mkdir -p "$UMNT" && chown $U "$UMNT" &&
	test_atexit "fusermount3 -uz $UMNT 2>/dev/null; true" &&
	{ as_user env -u XDG_CACHE_HOME HOME="$TRASH/home" nixoci-fs "$REF" "$UMNT" 2>user-fs.err;
	  rc=$?; cat user-fs.err; test $rc = 0; } &&
	grep " $UMNT " /proc/self/mounts &&
	grep " $UMNT " /proc/self/mounts | grep -q "user_id=$U" &&
	as_user mountpoint "$UMNT" &&
	test -d "$TRASH/home/.cache/nixoci/index.mdb" &&
	test "$(stat -c %U "$TRASH/home/.cache/nixoci")" = nobody &&
	as_user bwrap --ro-bind "$UMNT" /nix/store --proc /proc --dev /dev --unshare-all \
		--die-with-parent --clearenv "$SMALL/bin/hello" >hello.out 2>&1 ;
	rc=$? && cat hello.out && test $rc = 0 &&
	grep -q "Hello from a lazily mounted" hello.out &&
	as_user fusermount3 -u "$UMNT" &&
	! grep -q " $UMNT " /proc/self/mounts
'

test_expect_success USERFUSE 'rootless: allow_other without user_allow_other in /etc/fuse.conf fails with fusermount3 naming it' '
	if grep -q "^user_allow_other" /etc/fuse.conf 2>/dev/null; then
		echo "user_allow_other is set here: nothing to check"
	else
		! as_user env HOME="$TRASH/home" nixoci-fs -f -o allow_other "$REF" "$UMNT" 2>err &&
		cat err &&
		grep -q "user_allow_other" err &&
		! grep -q " $UMNT " /proc/self/mounts
	fi
'

test_expect_success 'df: the size is the cache limit, the use what the cache holds (not 100% full)' '
	mount_store "$REF" "$MNT" "cache_size=1G" &&
	cat "$MNT/${DATA#/nix/store/}/share/hello/numbers.txt" >/dev/null &&
	df -B1 --output=size,used,avail,pcent "$MNT" | tail -n 1 >df.out &&
	cat df.out &&
	read size used avail pcent <df.out &&
	nixoci stats --json "$MNT" >stats.json &&
	limit=$(jq .cache_limit stats.json) && used_cache=$(jq .cache_bytes stats.json) &&
	echo "cache_limit $limit cache_bytes $used_cache" &&
	test "$size" = $((limit / 4096 * 4096)) &&
	test "$used" -gt 0 &&
	test $((used - used_cache)) -lt 8192 && test $((used_cache - used)) -lt 8192 &&
	test "$pcent" != "100%" &&
	test $((size - used)) -eq "$avail" &&
	unmount_store "$MNT"
'

test_expect_success 'make builds the tools only; make tests adds the unit tests (dry run)' '
	make -n -C "$TEST_SRCDIR" O="$TRASH/b" all >all.n &&
	grep -q "$TRASH/b/bin/nixoci-fs" all.n &&
	! grep -q "tests/unit" all.n &&
	make -n -C "$TEST_SRCDIR" O="$TRASH/b" tests >tests.n &&
	grep -q "$TRASH/b/tests/unit/" tests.n
'

test_done
