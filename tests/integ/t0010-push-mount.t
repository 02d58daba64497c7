#!/bin/bash
test_description='push the small closure, mount it, check Nix store semantics'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl bwrap /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt

test_expect_success 'setup: registry and the small closure' '
	start_registry &&
	REF=$REG/small &&
	build_small_closure &&
	DATA=$(echo "$SMALL_CLOSURE" | grep -- -hello-data-) &&
	NOTE=$(echo "$SMALL_CLOSURE" | grep -- -hello-note.txt) &&
	LINK=$(echo "$SMALL_CLOSURE" | grep -- -hello-share-link) &&
	NPATHS=$(echo "$SMALL_CLOSURE" | wc -l) &&
	test -n "$DATA" && test -n "$NOTE" && test -n "$LINK"
'

test_expect_success 'push the closure; the summary counts every path' '
	nixoci push "$REF" "$SMALL" >push.out 2>&1 &&
	cat push.out &&
	test "$(push_summary_field "$(cat push.out)" paths)" = "$NPATHS" &&
	test "$(push_summary_field "$(cat push.out)" uploaded)" = "$NPATHS"
'

test_expect_success 'nixoci ls lists exactly the closure' '
	nixoci ls "$REF" | sort >ls.out &&
	echo "$SMALL_CLOSURE" | sort >want &&
	test_cmp want ls.out
'

test_expect_success 'nixoci info shows the NarHash and references Nix recorded' '
	nixoci info "$REF" "$SMALL" >info.out &&
	cat info.out &&
	grep -qx "StorePath: $SMALL" info.out &&
	grep -qx "NarHash: $(nix-store -q --hash $SMALL)" info.out &&
	grep -qx "NarSize: $(nix-store -q --size $SMALL)" info.out &&
	refs=$(grep "^References:" info.out | sed "s/^References: *//" | tr " " "\n" | sort) &&
	test "$refs" = "$(nix-store -q --references $SMALL | xargs -n1 basename | sort)"
'

test_expect_success 'nixoci cat reads one file without FUSE' '
	nixoci cat --cache "$TRASH/cat-cache" "$REF" "$DATA/share/hello/numbers.txt" >cat.out &&
	cmp cat.out "$DATA/share/hello/numbers.txt"
'

test_expect_success 'mount it' '
	mount_store "$REF" "$MNT" &&
	grep -q " $MNT fuse.nixoci-fs ro," /proc/self/mounts
'

test_expect_success 'nix-store --dump of every mounted path hashes to Nix NarHash' '
	check_mount_hashes "$MNT" $SMALL_CLOSURE
'

test_expect_success 'file contents are identical' '
	diff -r --no-dereference "$DATA" "$MNT/${DATA##*/}" &&
	cmp "$NOTE" "$MNT/${NOTE##*/}"
'

test_expect_success 'modes, owner and mtime follow the Nix store' '
	m=$MNT/${DATA##*/} &&
	test "$(stat_of $m)" = "555 0 0 1 directory" &&
	test "$(stat_of $m/share/hello/greeting.txt)" = "444 0 0 1 regular file" &&
	test "$(stat_of $m/share/hello/zero-bytes)" = "444 0 0 1 regular empty file" &&
	test "$(stat_of $m/bin/helper)" = "555 0 0 1 regular file" &&
	test "$(stat_of $m/share/hello/empty)" = "555 0 0 1 directory" &&
	test "$(stat_of $m/share/hello/link-relative | cut -d" " -f2-)" = "0 0 1 symbolic link" &&
	test "$(stat_of $MNT/${SMALL##*/}/bin/hello)" = "555 0 0 1 regular file" &&
	test "$(stat_of $MNT/${NOTE##*/})" = "444 0 0 1 regular file" &&
	test "$(stat -c %s $m/share/hello/numbers.txt)" = "$(stat -c %s $DATA/share/hello/numbers.txt)"
'

test_expect_success 'readlink returns the targets' '
	m=$MNT/${DATA##*/}/share/hello &&
	test "$(readlink $m/link-relative)" = greeting.txt &&
	test "$(readlink $m/link-self-absolute)" = "$DATA/share/hello/greeting.txt" &&
	test "$(readlink $m/link-dangling)" = /nonexistent/dangling &&
	test "$(readlink $m/deep/link-up)" = ../../share/hello/deep/a &&
	test "$(readlink $MNT/${LINK##*/})" = "$DATA/share" &&
	test "$(cat $m/link-relative)" = "$(cat $DATA/share/hello/greeting.txt)"
'

test_expect_success 'empty and nested directories' '
	m=$MNT/${DATA##*/}/share/hello &&
	test -d $m/empty &&
	test -z "$(ls -A $m/empty)" &&
	test "$(cat $m/deep/a/b/c/leaf.txt)" = nested &&
	test "$(ls $m/deep/a/b)" = c &&
	test "$(cd $m && ls -A | sort)" = "$(cd $DATA/share/hello && ls -A | sort)"
'

test_expect_success 'the mount is read-only' '
	! touch "$MNT/${DATA##*/}/share/hello/new" 2>err &&
	cat err &&
	! echo x 2>>err >"$MNT/${DATA##*/}/share/hello/greeting.txt" &&
	! mkdir "$MNT/x" 2>>err
'

test_expect_success 'names that are not store paths in the repository: ENOENT, fast' '
	for n in 00000000000000000000000000000000-bogus not-a-store-path \
		"${SMALL##*/}x" "$(echo ${SMALL##*/} | cut -c1-33)other-name" \
		"$(echo ${SMALL##*/} | cut -c1-32)"; do
		out=$(timeout 10 stat "$MNT/$n" 2>&1) && { echo "$n exists"; return 1; }
		echo "$out" | grep -q "No such file or directory" || { echo "$n: $out"; return 1; }
	done
'

test_expect_success 'a program runs from the mount inside a sandbox' '
	run_sandboxed "$MNT" "$SMALL/bin/hello" >sandboxed.out 2>&1 &&
	cat sandboxed.out &&
	"$SMALL/bin/hello" >direct.out &&
	test_cmp direct.out sandboxed.out
'

test_expect_success 'stats: counters over getxattr and nixoci stats' '
	nixoci stats "$MNT" >stats.out &&
	cat stats.out &&
	for k in frames_fetched bytes_fetched cache_hits cache_misses cache_bytes \
		cache_limit evictions verify_failures errors paths_loaded requests; do
		grep -Eq "^$k [0-9]+$" stats.out || { echo "missing $k"; return 1; }
	done &&
	test "$(awk "/^frames_fetched /{print \$2}" stats.out)" -gt 0 &&
	test "$(awk "/^paths_loaded /{print \$2}" stats.out)" -ge "$NPATHS" &&
	test "$(awk "/^verify_failures /{print \$2}" stats.out)" = 0 &&
	/usr/bin/python3 -c "import os, sys; sys.stdout.write(os.getxattr(sys.argv[1], \"user.nixoci.stats\").decode())" \
		"$MNT" | grep -q "^frames_fetched "
'

test_expect_success 'unmount: the daemon exits 0 and logged no errors' '
	unmount_store "$MNT" &&
	! mountpoint -q "$MNT"
'

test_expect_success 'remount on the warm cache: same bytes, nothing fetched' '
	mount_store "$REF" "$MNT" &&
	check_mount_hashes "$MNT" $SMALL_CLOSURE &&
	nixoci stats "$MNT" >stats2.out &&
	cat stats2.out &&
	test "$(awk "/^frames_fetched /{print \$2}" stats2.out)" = 0 &&
	unmount_store "$MNT"
'

test_done
