#!/bin/bash
test_description='the cache directory trust model: who may own and write it

nixoci-fs runs as root and serves every container on a host from its cache
directory: whoever can write that directory could change the bytes served
or steer the daemon'"'"'s file operations. A second local user (created here,
removed at cleanup) prepares cache directories; the daemon refuses each one
with a message that says why and what to do, and a symlinked tmp/ or
chunks/ never makes it touch a file outside the cache.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/lazy.sh"

test_require_cmd docker-registry curl openssl useradd userdel runuser
test_require_nix
test_require_fuse
test_require_binaries
[ "$(id -u)" = 0 ] || skip_all "needs root (creates a user)"

MNT=$TRASH/mnt
U=nxt$$
# refused_with CACHE ERE: nixoci-fs exits non-zero before mounting, its
# message matches ERE (printed for the record).
refused_with() {
	local st=0
	timeout 60 nixoci-fs -f -o "cache=$1" "$REF" "$MNT" >refused.out 2>&1 || st=$?
	cat refused.out
	! mountpoint -q "$MNT" &&
	test "$st" != 0 && test "$st" != 124 &&
	grep -E "$2" refused.out
}
as_user() { runuser -u "$U" -- "$@"; }

test_expect_success 'setup: registry, a store path, a second local user' '
	start_registry &&
	REF=$REG/trust &&
	P=$(make_data_path nixoci-trust a:1) &&
	PB=${P##*/} &&
	nixoci push "$REF" "$P" >push.out 2>&1 &&
	useradd -M -d /nonexistent -s /usr/sbin/nologin "$U" &&
	test_atexit "userdel $U" &&
	UID2=$(id -u "$U") &&
	mkdir -p "$MNT" &&
	chmod 755 "$TRASH"
'

test_expect_success 'a cache directory made by the other user (in a sticky /tmp-like dir) is refused' '
	mkdir -m 1777 "$TRASH/sticky" &&
	as_user mkdir -m 755 "$TRASH/sticky/cache" &&
	refused_with "$TRASH/sticky/cache" \
		"cache directory .*/sticky/cache is owned by another user, who could change the bytes served \(owner uid $UID2, mode 0755; nixoci runs as uid 0\); remove it to have it created again \(mode 0700\)"
'

test_expect_success 'a cache directory below a directory the other user owns is refused' '
	mkdir -m 755 "$TRASH/home2" && chown "$U" "$TRASH/home2" &&
	mkdir -m 700 "$TRASH/home2/cache" &&
	refused_with "$TRASH/home2/cache" \
		"cache directory .*/home2/cache: .*/home2 above it is owned by another user, who could replace the cache; choose a cache= directory whose parents only root or uid 0 can change"
'

test_expect_success 'a cache directory others can write, or below a world-writable non-sticky dir, is refused' '
	mkdir -m 700 "$TRASH/c-open" && chmod 777 "$TRASH/c-open" &&
	refused_with "$TRASH/c-open" "is writable by other users, who could change the bytes served .*mode 0777" &&
	mkdir -m 777 "$TRASH/open" && chmod 777 "$TRASH/open" &&
	mkdir -m 700 "$TRASH/open/cache" &&
	refused_with "$TRASH/open/cache" \
		"open above it is writable by other users \(and not a root-owned sticky directory\)"
'

test_expect_success 'a subdirectory owned by the other user is refused' '
	mkdir -m 700 "$TRASH/c-sub" "$TRASH/c-sub/chunks" &&
	chown "$U" "$TRASH/c-sub/chunks" &&
	refused_with "$TRASH/c-sub" "chunks is owned by another user, who could change the bytes served; remove it"
'

test_expect_success 'a symlinked tmp/ is refused and the file it points at survives' '
	mkdir -m 700 "$TRASH/victim" &&
	echo precious >"$TRASH/victim/999999.abcdef" &&
	mkdir -m 700 "$TRASH/c-tmplink" &&
	ln -s "$TRASH/victim" "$TRASH/c-tmplink/tmp" &&
	refused_with "$TRASH/c-tmplink" "tmp is a symlink or not a directory; remove it" &&
	test "$(cat "$TRASH/victim/999999.abcdef")" = precious &&
	mkdir -m 700 "$TRASH/c-chunklink" &&
	ln -s "$TRASH/victim" "$TRASH/c-chunklink/chunks" &&
	refused_with "$TRASH/c-chunklink" "chunks is a symlink or not a directory" &&
	test "$(cat "$TRASH/victim/999999.abcdef")" = precious
'

test_expect_success 'a cache directory that is itself a symlink to another user'"'"'s dir is refused' '
	ln -s "$TRASH/sticky/cache" "$TRASH/c-link" &&
	refused_with "$TRASH/c-link" "owned by another user"
'

test_expect_success 'a new cache directory is created 0700; in a root-owned sticky dir it is accepted' '
	mount_store "$REF" "$MNT" "cache=$TRASH/sticky/new/cache" &&
	cmp "$MNT/$PB/a" "$P/a" &&
	test "$(stat -c %a "$TRASH/sticky/new/cache")" = 700 &&
	test "$(stat -c %a "$TRASH/sticky/new/cache/chunks")" = 700 &&
	unmount_store "$MNT"
'

test_expect_success 'symlinks planted inside chunks/ are removed, never followed' '
	C=$TRASH/sticky/new/cache &&
	echo precious >"$TRASH/victim/target" &&
	mkdir -p "$C/chunks/ab" &&
	ln -s "$TRASH/victim/target" "$C/chunks/ab/ab$(printf "%062d" 0)" &&
	for f in "$C"/chunks/??/*; do
		case $f in */ab/ab0*) continue ;; esac
		rm -f "$f" && ln -s "$TRASH/victim/target" "$f" && break
	done &&
	mount_store "$REF" "$MNT" "cache=$C" &&
	cmp "$MNT/$PB/a" "$P/a" &&
	unmount_store "$MNT" &&
	test "$(cat "$TRASH/victim/target")" = precious &&
	test -z "$(find "$C/chunks" -type l)"
'

test_done
