#!/bin/bash
test_description='a TOC costs the daemon its decoded tables, not its layer too

The TOC layer streams from the registry (or the cache file) through zstd
into the tables (common/toc.c, nx_toc_reader): the compressed layer and the
inflated TOC are never held whole. Measured as the daemon'"'"'s VmHWM (peak
RSS), over the VmHWM it had after reading a small path:
- a path whose TOC is valid by every TOC rule and holds 4M entries
  (tests/data/should-fail/gen.py --big: about 187 MiB decoded, a 23 MB
  layer), fetched, then from the cache after a remount (the registry is not
  asked for the layer again): the growth stays under the decoded tables
  plus a margin (below);
- zstd bombs (a few KiB declaring 200 MiB with a header of a few hundred
  bytes, 300 MiB over the cap, the TOC followed by 256 frames of 1 MiB):
  EIO with one log line each, growth under the margin.
The margin, 16 MiB plus one byte per entry, covers the decoder'"'"'s depth
array (a byte per entry, freed at the end), zstd'"'"'s window (at most 2^24
bytes; level 3 uses far less) and allocator slack. Holding the compressed
layer beside the tables, as the daemon did before, costs 23 MB more and
fails it. Under a sanitizer the peak RSS means something else: the bounds
are then skipped (the sanitized pass runs the hostile corpus instead).'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl /usr/bin/python3 zstd
test_require_fuse
test_require_binaries

SF=$TEST_SRCDIR/tests/data/should-fail
G=$TRASH/big
N=${NIXOCI_BIG_TOC_ENTRIES:-4000000}
# the decoded tables: entries, frames (one), names (9 bytes each, and f)
DECODED=$((40 * N + 56 + 9 * (N - 2) + 1))
MARGIN=$((16 * 1024 * 1024 + N))
# the bombs' refusals are expected
MOUNT_LOG_ALLOW='^nixoci-fs: toc of /nix/store/[a-z0-9]+-hostile-toc-bomb-'

base_of() { awk -F'\t' -v c="$1" '$1 == c { print $2 }' "$G/cases.tsv"; }
toc_of() { awk -F'\t' -v c="$1" '$1 == c { print $3 }' "$G/cases.tsv"; }
hwm() { awk '/^VmHWM:/ { print $2 * 1024 }' "/proc/${MOUNT_PID[$1]}/status"; }
sanitized() { ldd "$(command -v nixoci-fs)" 2>/dev/null | grep -q libasan; }
mib() { echo "$(($1 / 1048576)) MiB"; }

# within MNT BASE WHAT BOUND: the growth of MNT's VmHWM over $BASE_HWM is at
# most BOUND bytes (not checked under a sanitizer).
within() {
	local now grow
	now=$(hwm "$1") && grow=$((now - BASE_HWM)) &&
	echo "$2: VmHWM $(mib "$now"), grew $(mib "$grow") (bound $(mib "$3"))" &&
	if sanitized; then echo "(sanitized build: not checked)"; else test "$grow" -le "$3"; fi
}

good_f() {
	printf 'case good\n'
	for _ in $(seq 300); do printf 'the contents of f\n'; done
}
big_f() {
	printf 'case big-toc\n'
	for _ in $(seq 450); do printf 'the contents of f\n'; done
}

test_expect_success "setup: generate a TOC of $N entries and the bombs, a registry, upload" '
	/usr/bin/python3 "$SF/gen.py" --big "$G" "$N" &&
	ls -l "$G/big-toc/blobs" &&
	start_registry &&
	echo "{}" >ovr.json &&
	/usr/bin/python3 "$SF/upload.py" "$REG" big "$G" "$REG_STORAGE" ovr.json &&
	REGLOG=$TRASH/registry-reg/log && test -f "$REGLOG" &&
	GOOD=$(base_of good) && BIG=$(base_of big-toc) && BIGTOC=$(toc_of big-toc) &&
	good_f >good.expect && big_f >big.expect
'

test_expect_success 'zstd bombs in the TOC layer: EIO, one line each, VmHWM bounded' '
	M=$TRASH/m1 &&
	mount_store "$REG/big" "$M" "cache=$TRASH/cache" &&
	cat "$M/$GOOD/f" >good.got && test_cmp good.expect good.got &&
	BASE_HWM=$(hwm "$M") && echo "after a small path: VmHWM $(mib "$BASE_HWM")" &&
	for c in toc-bomb-declared-mismatch toc-bomb-over-cap toc-bomb-many-frames; do
		off=$(stat -c %s "${MOUNT_LOG[$M]}") &&
		{ ! ls "$M/$(base_of $c)" 2>err; } && grep -q "Input/output error" err &&
		tail -c +$((off + 1)) "${MOUNT_LOG[$M]}" >newlog && cat newlog &&
		test "$(wc -l <newlog)" = 1 && grep -q "hostile-$c: malformed" newlog &&
		within "$M" "$c" "$MARGIN" || return 1
	done
'

test_expect_success "a valid TOC of $N entries, fetched: VmHWM under its tables plus the margin" '
	cat "$M/$BIG/f" >big.got && test_cmp big.expect big.got &&
	test "$(ls -f "$M/$BIG" | wc -l)" = "$((N + 1))" &&
	within "$M" "big-toc (fetched, $(mib $DECODED) decoded)" $((DECODED + MARGIN)) &&
	test -n "$(find "$TRASH/cache/blobs" -name "$BIGTOC")" &&
	cat "$M/$GOOD/f" >good.got && test_cmp good.expect good.got
'

test_expect_success "the same TOC from the cache after a remount: not fetched, VmHWM bounded" '
	unmount_store "$TRASH/m1" &&
	M=$TRASH/m2 &&
	n0=$(grep -c "GET /v2/big/blobs/sha256:$BIGTOC" "$REGLOG") &&
	mount_store "$REG/big" "$M" "cache=$TRASH/cache" &&
	cat "$M/$GOOD/f" >good.got && test_cmp good.expect good.got &&
	BASE_HWM=$(hwm "$M") &&
	cat "$M/$BIG/f" >big.got && test_cmp big.expect big.got &&
	within "$M" "big-toc (from the cache)" $((DECODED + MARGIN)) &&
	n1=$(grep -c "GET /v2/big/blobs/sha256:$BIGTOC" "$REGLOG") &&
	echo "the registry was asked for the layer $n0 time(s) before, $n1 after" &&
	test "$n0" = "$n1" &&
	unmount_store "$M"
'

test_done
