#!/bin/bash
test_description='metadata budget: 20 valid paths with large TOCs (together about 1.4 GiB
decoded) are served correctly under the default meta_budget (256 MiB), with the
daemon peak RSS (VmHWM) bounded by the budget; unloaded paths come back by name
and by inode; inode ids stay the same across restarts in another load order,
also when ids collide'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl zstd /usr/bin/python3
test_require_fuse
test_require_binaries

SF=$TEST_SRCDIR/tests/data/should-fail
N=20
# 17000 symlinks with 4000-byte targets and 100000 empty files per path:
# 73.5 MB of decoded TOC tables each (tests/lib/bigtoc.py says how)
LINKS=17000
FILES=100000
BUDGET=$((256 << 20))
# What the daemon takes besides the metadata budget: measured (VmRSS once
# mounted, before any path is loaded) plus one load in flight beyond the
# TOC tables themselves (the zstd window, at most 16 MiB, its buffers and
# the compressed TOC) and malloc's slack: docs/reliability.md.
INFLIGHT=$((48 << 20))

# Under AddressSanitizer freed memory sits in its quarantine (256 MiB) and
# every allocation has redzones: RSS says nothing about the budget there, so
# the sanitized pass checks everything but the VmHWM bound.
if grep -q __asan_init "$(command -v nixoci-fs)" 2>/dev/null; then
	test_set_prereq ASAN
fi
# hwm_ok PID: VmHWM within the baseline, the budget and one load in flight
hwm_ok() {
	local hwm
	hwm=$(field VmHWM "$1")
	say "VmHWM $hwm (budget $BUDGET, baseline VmRSS $BASE_RSS)"
	test_have_prereq ASAN && return 0
	test "$hwm" -le $((BASE_RSS + BUDGET + INFLIGHT))
}

field() { awk -v k="$1:" '$1 == k { print $2 * 1024 }' "/proc/$2/status"; }
stat_of_mount() { nixoci stats "$1" | awk -v k="$2" '$1 == k { print $2 }'; }

test_expect_success 'setup: 20 paths with large TOCs in a registry' '
	/usr/bin/python3 "$TEST_SRCDIR/tests/lib/bigtoc.py" "$TRASH/big" $N $LINKS $FILES \
		>paths.tsv &&
	test $(wc -l <paths.tsv) -eq $N &&
	total=$(awk "{ s += \$3 } END { print s }" paths.tsv) &&
	say "decoded TOC tables: $total bytes in $N paths" &&
	test "$total" -gt $((5 * (1 << 30) / 4)) &&
	start_registry &&
	echo "{}" >overrides.json &&
	/usr/bin/python3 "$SF/upload.py" "$REG" big "$TRASH/big" "$REG_STORAGE" overrides.json \
		>upload.out
'

test_expect_success 'mount with the default budget; baseline RSS' '
	MNT=$TRASH/mnt &&
	mount_store "$REG/big" "$MNT" &&
	PID=${MOUNT_PID[$MNT]} &&
	BASE_RSS=$(field VmRSS $PID) &&
	say "baseline VmRSS $BASE_RSS" &&
	test "$(stat_of_mount "$MNT" meta_budget)" -eq $BUDGET
'

test_expect_success 'open g of the first path, keep it open' '
	first=$(awk "NR == 1 { print \$2 }" paths.tsv) &&
	exec 7<"$MNT/$first/g" &&
	ino_g=$(stat -c %i "$MNT/$first/g")
'

test_expect_success 'read f of every path: right bytes' '
	while read -r nm base _; do
		cmp "$TRASH/big/$nm/f.expect" "$MNT/$base/f" || return 1
	done <paths.tsv
'

test_expect_success 'paths were unloaded to keep the budget; VmHWM bounded' '
	unloaded=$(stat_of_mount "$MNT" paths_unloaded) &&
	inmem=$(stat_of_mount "$MNT" paths_in_memory) &&
	meta=$(stat_of_mount "$MNT" meta_bytes) &&
	say "unloaded $unloaded, in memory $inmem, meta_bytes $meta" &&
	test "$unloaded" -ge $((N - 4)) &&
	test "$inmem" -le 4 &&
	test "$meta" -le $BUDGET &&
	hwm_ok $PID
'

test_expect_success 'an unloaded path comes back by inode (open, readlink, readdir) and by name' '
	second=$(awk "NR == 2 { print \$2 }" paths.tsv) &&
	name2=$(awk "NR == 2 { print \$1 }" paths.tsv) &&
	before=$(stat_of_mount "$MNT" paths_reloaded) &&
	cmp "$TRASH/big/$name2/g.expect" "$MNT/$second/g" &&
	test "$(readlink "$MNT/$second/links/l016999" | wc -c)" -eq 4001 &&
	test "$(ls "$MNT/$second/files" | wc -l)" -eq $FILES &&
	after=$(stat_of_mount "$MNT" paths_reloaded) &&
	say "reloads: $before before, $after after" &&
	test "$after" -gt "$before"
'

test_expect_success 'the file kept open reads right; VmHWM still bounded' '
	name1=$(awk "NR == 1 { print \$1 }" paths.tsv) &&
	cat <&7 >g.out &&
	exec 7<&- &&
	cmp "$TRASH/big/$name1/g.expect" g.out &&
	test "$(stat -c %i "$MNT/$first/g")" = "$ino_g" &&
	hwm_ok $PID
'

test_expect_success 'unmount' '
	unmount_store "$MNT"
'

# inodes of f of the first $1 paths, in the order of the paths file
inodes() {
	head -n "$2" paths.tsv | while read -r _ base _; do
		stat -c "$base %i" "$1/$base/f" || return 1
	done | sort
}

test_expect_success 'ids collide in a 3-bit id space; the same after a restart in another order' '
	export NIXOCI_TEST_ID_BITS=3 &&
	M2=$TRASH/ids &&
	mount_store "$REG/big" "$M2" meta_budget=1M &&
	inodes "$M2" 7 >ino1 &&
	unmount_store "$M2" &&
	head -n 7 paths.tsv | tac >paths.rev &&
	mount_store "$REG/big" "$M2" meta_budget=1M &&
	while read -r _ base _; do stat "$M2/$base/f" >/dev/null || return 1; done <paths.rev &&
	inodes "$M2" 7 >ino2 &&
	unmount_store "$M2" &&
	unset NIXOCI_TEST_ID_BITS &&
	test_cmp ino1 ino2 &&
	test $(awk "{ print int(\$2 / 16777216) }" ino1 | sort -u | wc -l) -eq 7 &&
	cat ino1 >&3
'

test_done
