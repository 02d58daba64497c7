#!/bin/bash
test_description='cache records checked by what the cache knows; du bounded whatever the frame sizes

Artifacts from tests/data/should-fail/gen.py --cache:
- cachekey: a good path, and paths whose TOC lists the good path'"'"'s very
  frames (same digests) with a wrong ulen (one byte more or less, first or
  last frame) or a wrong clen. Reading them fails with EIO and one log line;
  the good path'"'"'s chunks stay cached: it still reads with the registry
  stopped and the page cache dropped.
- reframed: one kind of path framed at 4096 (the floor), 4097 and 6000
  bytes (two blocks a frame), 20000, 65536 and 262144 bytes, read through a
  cache_size=8M mount: du -sb and du in blocks of the cache directory stay
  within cache_size plus 5%. A path framed at 2048 bytes (below the floor)
  is refused with one log line.'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl /usr/bin/python3 zstd du
test_require_fuse
test_require_binaries

SF=$TEST_SRCDIR/tests/data/should-fail
G=$TRASH/gen
LIMIT=$((8 << 20))
BOUND=$((LIMIT + LIMIT / 20))
# (the passthrough copier also fails on the lying paths: one warning each)
MOUNT_LOG_ALLOW='cannot copy out .* for passthrough|^nixoci-fs: toc of .*: frame [0-9]+ (is [0-9]+ bytes, not|holds [0-9]+ bytes, below the 4096-byte floor)|registry unreachable|connection refused|^nixoci-fs: verify frame|^nixoci-fs: .*source'

base_of() { awk -F'\t' -v c="$2" '$1 == c { print $2 }' "$G/$1/cases.tsv"; }

test_expect_success 'setup: generate, a registry, upload' '
	/usr/bin/python3 "$SF/gen.py" --cache "$G" &&
	start_registry &&
	echo "{}" >ovr.json &&
	/usr/bin/python3 "$SF/upload.py" "$REG" frames "$G/cachekey/cases" "$REG_STORAGE" ovr.json &&
	/usr/bin/python3 "$SF/upload.py" "$REG" frames "$G/reframed/cases" "$REG_STORAGE" ovr.json &&
	REF=$REG/frames &&
	GOOD=$(base_of cachekey ck-good) && test -n "$GOOD"
'

test_expect_success 'a TOC that lies about a cached frame gets EIO; the good chunks stay' '
	M=$TRASH/ck &&
	mount_store "$REF" "$M" "readahead=0" &&
	cmp "$M/$GOOD/f" "$G/cachekey/expect/ck-good" &&
	cached0=$(find "$TRASH/cache-ck/chunks" -type f | wc -l) &&
	for c in ck-ulen-plus-last ck-ulen-minus-last ck-ulen-plus-first ck-clen-plus-first; do
		b=$(base_of cachekey $c) &&
		if cat "$M/$b/f" >got 2>err; then
			# the clen lie on a cached frame: served by digest, the right bytes
			test $c = ck-clen-plus-first && cmp got "$G/cachekey/expect/ck-good" || return 1
			echo "$c: served the digest'"'"'s bytes"
		else
			grep -q "Input/output error" err || return 1
			echo "$c: EIO"
		fi
	done &&
	grep -E "toc of /nix/store/[a-z0-9]+-hostile-ck-ulen-plus-last: frame 5 is [0-9]+ bytes, not [0-9]+" \
		"${MOUNT_LOG[$M]}" &&
	grep -E "hostile-ck-ulen-minus-last: (frame 5 is [0-9]+ bytes, not [0-9]+|malformed)" "${MOUNT_LOG[$M]}" &&
	grep -E "hostile-ck-ulen-plus-first: frame 0 is 65536 bytes, not 65537" "${MOUNT_LOG[$M]}" &&
	test "$(find "$TRASH/cache-ck/chunks" -type f | wc -l)" = "$cached0" &&
	stop_registry $REG_PID_reg &&
	if test -w /proc/sys/vm/drop_caches; then sync; echo 3 >/proc/sys/vm/drop_caches; fi &&
	cmp "$M/$GOOD/f" "$G/cachekey/expect/ck-good" &&
	restart_registry &&
	unmount_store "$M"
'

test_expect_success 'a lying TOC read first (nothing cached): EIO, and the good path reads after' '
	M=$TRASH/ck2 &&
	mount_store "$REF" "$M" "readahead=0" &&
	b=$(base_of cachekey ck-ulen-plus-first) &&
	! cat "$M/$b/f" >/dev/null 2>err && grep -q "Input/output error" err &&
	cmp "$M/$GOOD/f" "$G/cachekey/expect/ck-good" &&
	unmount_store "$M"
'

test_expect_success 'frames of 4096 to 262144 bytes through cache_size=8M: du within cache_size + 5%' '
	M=$TRASH/rf &&
	mount_store "$REF" "$M" "cache_size=$LIMIT" &&
	for c in rf-4096 rf-4097 rf-6000 rf-20000 rf-65536 rf-262144; do
		cmp "$M/$(base_of reframed $c)/f" "$G/reframed/expect/$c" || return 1
		a=$(du -sb "$TRASH/cache-rf" | cut -f1) && b=$(du -sB1 "$TRASH/cache-rf" | cut -f1) &&
		echo "after $c: du -sb $a, du blocks $b, cache_bytes $(nixoci stats "$M" | awk "\$1 == \"cache_bytes\" { print \$2 }"), bound $BOUND" &&
		test "$a" -le "$BOUND" && test "$b" -le "$BOUND" || return 1
	done &&
	test "$b" -ge $((LIMIT / 2)) &&
	unmount_store "$M" &&
	a=$(du -sb "$TRASH/cache-rf" | cut -f1) && b=$(du -sB1 "$TRASH/cache-rf" | cut -f1) &&
	echo "unmounted: du -sb $a, blocks $b" &&
	test "$a" -le "$BOUND" && test "$b" -le "$BOUND"
'

test_expect_success 'frames of 2048 bytes (below the floor): the path is refused, one log line' '
	M=$TRASH/rf2 &&
	mount_store "$REF" "$M" &&
	b=$(base_of reframed rf-2048) &&
	! cat "$M/$b/f" >/dev/null 2>err &&
	cat err &&
	grep -E "toc of /nix/store/$b: frame 0 holds 2048 bytes, below the 4096-byte floor \([0-9]+ frames for [0-9]+ bytes\); refusing the path: push it again with nixoci push" \
		"${MOUNT_LOG[$M]}" &&
	test "$(grep -c "below the 4096-byte floor" "${MOUNT_LOG[$M]}")" = 1 &&
	unmount_store "$M"
'

test_done
