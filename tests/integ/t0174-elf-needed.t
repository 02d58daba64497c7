#!/bin/bash
test_description='predicted libraries: what the loader will open, fetched before it asks

The first read of an ELF program through the mount has its dynamic section
parsed in the background; each DT_NEEDED library is resolved as ld.so
resolves it for a Nix binary (RUNPATH directories in order, $ORIGIN,
symlinks inside the store, also into another store path) and its start
fetched, then its own libraries, each file once per mount. A library no
one names is never fetched, a name that resolves nowhere is skipped,
a wrapper script'"'"'s "ld.so --library-path DIRS PROGRAM" has DIRS searched
for PROGRAM, readahead=0 turns it off, malformed ELF files predict nothing and read as
always, and an unmount while predicted transfers are stalled exits 0; in a
packed push (format 2) the libraries'"'"' ranges of the pack are what is
fetched. Asserted from the registry'"'"'s side (the proxy log) and the counters.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp head
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt

# nar_of STOREPATH: the digest (hex) of its NAR layer in repository elf
nar_of() { nar_digest elf "$1"; }
# gets DIGEST: NAR blob requests for DIGEST the proxy answered so far
gets() { grep -c "GET /v2/elf/blobs/sha256:$1[^ ]* range=.* -> " "$PROXY_LOG" || true; }
# first_get DIGEST: line number of the first such request (0: none)
first_get() { grep -n "GET /v2/elf/blobs/sha256:$1[^ ]* range=.* -> " "$PROXY_LOG" | head -n 1 | cut -d: -f1; }

# --no-pack: each path its own NAR blob, so that a request names the one
# path it is for (the packed case below tells paths apart by range)
test_expect_success 'setup: a program and its libraries in five store paths, malformed ELF files; pushed, proxy' '
	start_registry &&
	PROG=$(nix-build "$TEST_LIB_DIR/elf.nix" "${NIX_BUILD_OPTS[@]}") &&
	closure=$(nix-store -qR "$PROG") &&
	LIBA=$(echo "$closure" | grep -- "-elf-liba$") &&
	LIBB=$(echo "$closure" | grep -- "-elf-libb$") &&
	LIBBR=$(echo "$closure" | grep -- "-elf-libb-real$") &&
	BASE=$(echo "$closure" | grep -- "-elf-libbase$") &&
	UNUSED=$(echo "$closure" | grep -- "-elf-libunused$") &&
	WRAP=$(echo "$closure" | grep -- "-elf-wrapped$") &&
	HINT=$(echo "$closure" | grep -- "-elf-libhint$") &&
	/usr/bin/python3 "$TEST_LIB_DIR/mkelf.py" --malformed "$TRASH/nixoci-elf-malformed" &&
	BAD=$(nix-store --add "$TRASH/nixoci-elf-malformed") &&
	nixoci push --no-pack "$REG/elf" "$PROG" "$BAD" &&
	N_PROG=$(nar_of "$PROG") && N_LIBA=$(nar_of "$LIBA") && N_LIBBR=$(nar_of "$LIBBR") &&
	N_BASE=$(nar_of "$BASE") && N_UNUSED=$(nar_of "$UNUSED") && N_HINT=$(nar_of "$HINT") &&
	test ${#N_LIBA} = 64 && test ${#N_UNUSED} = 64 &&
	start_faultproxy "$REG" &&
	fault_set "mode=pass delay=50"
'

test_expect_success 'the first 64 bytes of the program: its libraries, and theirs, are fetched' '
	mount_store "$PROXY/elf" "$MNT" "cache=$TRASH/cache-1" &&
	head -c 64 "$MNT/${PROG##*/}/bin/prog" >out &&
	head -c 64 "$PROG/bin/prog" >want && cmp out want &&
	# liba.so.1 (a symlink), libb.so (into elf-libb-real), libbase.so.1
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_libs) -ge 3 ]" &&
	# the three libraries and the program: their dynamic sections parsed
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_elf_files) -ge 4 ]" &&
	echo "program first fetched at line $(first_get $N_PROG), liba $(first_get $N_LIBA), libb $(first_get $N_LIBBR), libbase $(first_get $N_BASE)" &&
	test "$(gets "$N_LIBA")" -ge 1 && test "$(gets "$N_LIBBR")" -ge 1 &&
	test "$(gets "$N_BASE")" -ge 1 &&
	test "$(first_get "$N_LIBA")" -gt "$(first_get "$N_PROG")" &&
	# libbase (a library of liba and libb) goes out with them, not after:
	# the pusher recorded their dynamic sections (t0179 tests the record)
	test "$(first_get "$N_BASE")" -gt "$(first_get "$N_PROG")" &&
	# in the RUNPATH but named by nothing: never fetched
	test "$(gets "$N_UNUSED")" = 0 &&
	test "$(stats_field "$MNT" predict_libs)" = 3 &&
	test "$(stats_field "$MNT" predict_elf_files)" = 4
'

test_expect_success 'the predicted libraries are cached: reading them costs no request' '
	n0=$(grep -c "GET /v2/elf/blobs/" "$PROXY_LOG") &&
	cmp "$MNT/${LIBA##*/}/lib/liba.so.1" "$LIBA/lib/liba.so.1.0.0" &&
	cmp "$MNT/${LIBB##*/}/lib/libb.so" "$LIBBR/lib/libb.so" &&
	cmp "$MNT/${BASE##*/}/lib/libbase.so.1" "$BASE/lib/libbase.so.1" &&
	test "$(grep -c "GET /v2/elf/blobs/" "$PROXY_LOG")" = "$n0" &&
	# each file once per mount: the program read again predicts nothing
	cat "$MNT/${PROG##*/}/bin/prog" >/dev/null &&
	test "$(stats_field "$MNT" predict_elf_files)" = 4
'

test_expect_success 'a wrapper runs the program with ld.so --library-path: searched there' '
	l0=$(stats_field "$MNT" predict_libs) &&
	test "$(gets "$N_HINT")" = 0 &&
	cat "$MNT/${WRAP##*/}/bin/run" >/dev/null &&
	head -c 64 "$MNT/${WRAP##*/}/bin/wprog" >/dev/null &&
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_libs) -ge $((l0 + 1)) ]" &&
	test "$(gets "$N_HINT")" -ge 1 &&
	cmp "$MNT/${HINT##*/}/lib/libhint.so.1" "$HINT/lib/libhint.so.1"
'

test_expect_success 'malformed ELF files: no prediction, read as always, no error' '
	f0=$(stats_field "$MNT" predict_elf_files) &&
	l0=$(stats_field "$MNT" predict_libs) &&
	for f in "$BAD"/*; do
		cmp "$MNT/${BAD##*/}/${f##*/}" "$f" || return 1
	done &&
	# "no-dynamic" is a well-formed ELF file that names no library (a
	# static program): looked at, nothing predicted
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_elf_files) -ge $((f0 + 1)) ]" &&
	test "$(stats_field "$MNT" predict_libs)" = "$l0" &&
	test "$(stats_field "$MNT" errors)" = 0 &&
	unmount_store "$MNT" &&
	test "$(gets "$N_UNUSED")" = 0
'

test_expect_success 'readahead=0: no library predicted' '
	n0=$(gets "$N_LIBA") &&
	mount_store "$PROXY/elf" "$MNT" "cache=$TRASH/cache-2,readahead=0" &&
	head -c 64 "$MNT/${PROG##*/}/bin/prog" >/dev/null &&
	test "$(stats_field "$MNT" predict_elf_files)" = 0 &&
	unmount_store "$MNT" &&
	test "$(gets "$N_LIBA")" = "$n0"
'

# in repository elfp: pgets NAME: the answered requests for path NAME's
# range of its pack; pfirst NAME: the line of the first (0: none)
pgets() { range_gets elfp ${R[$1]} | wc -l; }
pfirst() { local l; l=$(range_gets elfp ${R[$1]} | head -n 1); echo "${l:-0}"; }
declare -A R

test_expect_success 'packed (format 2): the libraries'"'"' ranges of the pack are fetched, the unused one'"'"'s never' '
	fault_set "mode=pass delay=50" &&
	nixoci push --pack "$REG/elfp" "$PROG" &&
	for n in PROG LIBA LIBBR BASE UNUSED; do
		R[$n]=$(nar_range elfp "${!n}") || return 1
		echo "$n: ${R[$n]}"
	done &&
	# the libraries are small: they share the program'"'"'s pack
	test "${R[LIBA]%% *}" = "${R[PROG]%% *}" &&
	test "${R[BASE]%% *}" = "${R[PROG]%% *}" &&
	nixoci info "$REG/elfp" "$LIBA" | grep -q "^Pack: " &&
	mount_store "$PROXY/elfp" "$MNT" "cache=$TRASH/cache-p" &&
	head -c 64 "$MNT/${PROG##*/}/bin/prog" >out &&
	head -c 64 "$PROG/bin/prog" >want && cmp out want &&
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_libs) -ge 3 ]" &&
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_elf_files) -ge 4 ]" &&
	echo "program first fetched at line $(pfirst PROG), liba $(pfirst LIBA), libb $(pfirst LIBBR), libbase $(pfirst BASE)" &&
	test "$(pgets LIBA)" -ge 1 && test "$(pgets LIBBR)" -ge 1 && test "$(pgets BASE)" -ge 1 &&
	test "$(pfirst LIBA)" -gt "$(pfirst PROG)" &&
	# with them, from the pusher'"'"'s record, as in format 1
	test "$(pfirst BASE)" -gt "$(pfirst PROG)" &&
	test "$(pgets UNUSED)" = 0 &&
	test "$(stats_field "$MNT" predict_libs)" = 3 &&
	test "$(stats_field "$MNT" predict_elf_files)" = 4 &&
	cmp "$MNT/${LIBA##*/}/lib/liba.so.1" "$LIBA/lib/liba.so.1.0.0" &&
	test "$(stats_field "$MNT" errors)" = 0 &&
	unmount_store "$MNT" &&
	test "$(pgets UNUSED)" = 0
'

test_expect_success 'unmount while a predicted library is stalled on the link: exit 0' '
	mount_store "$PROXY/elf" "$MNT" "cache=$TRASH/cache-3" &&
	fault_set "mode=stall match=/blobs/sha256:$N_LIBA" &&
	head -c 64 "$MNT/${PROG##*/}/bin/prog" >/dev/null &&
	test_wait_for 30 eval "grep -q \"fault:stall\" \"\$PROXY_LOG\"" &&
	unmount_store "$MNT" &&
	fault_set "mode=pass"
'

test_done
