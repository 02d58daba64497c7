#!/bin/bash
test_description='predicted misses: a mapped file read at a jump, the kernel'"'"'s read-around past an ELF'"'"'s segments, a large library'"'"'s start

A read that jumps away from the one before in a file of more than 1 MiB and
at most 4 MiB compressed (a mapped file'"'"'s page faults: a JVM'"'"'s class
data archive) queues the rest of the file in the background, once per open.
Sequential reads, a first read anywhere, and larger files predict nothing.
The loadable segments an ELF header names are fetched with 1 MiB past
their end (a page fault near the end of the last segment has the kernel
read around it). Asserted from the registry'"'"'s side (the requests the
proxy saw) and the daemon'"'"'s counters; every byte read is compared with
the store. A library of up to 8 MiB compressed gets its rest with the
read of its header. A read of at least 512 KiB right where the last one
ended (the kernel'"'"'s own readahead window) starts the sequential
readahead at once. Reads use POSIX_FADV_RANDOM, so the kernel asks for exactly the
bytes read.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt

# read_at FILE OFF...: 4096 bytes of FILE at each OFF, through one open
read_at() {
	/usr/bin/python3 - "$@" <<-'EOF'
	import os, sys
	fd = os.open(sys.argv[1], os.O_RDONLY)
	os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
	for off in sys.argv[2:]:
	    sys.stdout.buffer.write(os.pread(fd, 4096, int(off)))
	os.close(fd)
	EOF
}
# read_len FILE OFF:LEN...: LEN bytes of FILE at each OFF, through one open
read_len() {
	/usr/bin/python3 - "$@" <<-'EOF'
	import os, sys
	fd = os.open(sys.argv[1], os.O_RDONLY)
	os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
	for a in sys.argv[2:]:
	    off, n = a.split(":")
	    sys.stdout.buffer.write(os.pread(fd, int(n), int(off)))
	os.close(fd)
	EOF
}
# same FILE OFF...: the mount's bytes at OFF... are the store's
same() {
	local f=$1
	shift
	read_at "$MNT/${DATA##*/}/$f" "$@" >out && read_at "$DATA/$f" "$@" >want && cmp out want
}
# blob_gets: NAR blob requests the proxy has answered so far
blob_gets() { grep -c "GET /v2/[^ ]*/blobs/sha256:$NAR[^ ]* range=.* -> " "$PROXY_LOG" || true; }
MiB=1048576

test_expect_success 'setup: data files of 3 and 5 MiB, an ELF file with one short segment; pushed, proxy' '
	start_registry &&
	src=$TRASH/nixoci-jump-data && mkdir -p "$src" &&
	/usr/bin/python3 - "$src" <<-EOF &&
	import random, struct, sys
	d = sys.argv[1]
	def data(name, size):
	    return random.Random(name).randbytes(size)
	# random bytes: incompressible, one frame per 256 KiB of file
	for name, size in (("a.jsa", 3), ("b.jsa", 3), ("c.jsa", 3), ("big.dat", 5), ("lib6.so", 6),
	                   ("seq.dat", 6)):
	    open(d + "/" + name, "wb").write(data(name, size << 20))
	# a 64-bit ELF header with one PT_LOAD over the first MiB of 9 MiB
	# (too large for the whole-file rule of a library start)
	ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack("<HHIQQQIHHHHHH",
	    3, 62, 1, 0, 64, 0, 0, 64, 56, 1, 64, 0, 0)
	phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, 1 << 20, 1 << 20, 4096)
	body = data("seg.so", 9 << 20)
	open(d + "/seg.so", "wb").write(ehdr + phdr + body[len(ehdr) + len(phdr):])
	EOF
	DATA=$(nix-store --add "$src") &&
	nixoci push --no-pack "$REG/jump" "$DATA" &&
	NAR=$(nar_digest jump "$DATA") &&
	test ${#NAR} = 64 &&
	start_faultproxy "$REG" &&
	mount_store "$PROXY/jump" "$MNT" "cache=$TRASH/cache-1"
'

test_expect_success 'a read that jumps: the rest of the file comes, nothing after' '
	n0=$(blob_gets) &&
	r0=$(stats_field "$MNT" readahead_frames) &&
	same a.jsa 0 $((2 * MiB)) &&
	test_wait_for 30 eval "[ \$(stats_field $MNT readahead_frames) -ge $((r0 + 10)) ]" &&
	test "$(stats_field "$MNT" predict_whole)" = 1 &&
	n1=$(blob_gets) &&
	echo "requests: two reads and the rest $((n1 - n0))" &&
	test $((n1 - n0)) -le 6 &&
	cmp "$MNT/${DATA##*/}/a.jsa" "$DATA/a.jsa" &&
	test "$(blob_gets)" = "$n1"
'

test_expect_success 'sequential reads, or one read far in: nothing predicted' '
	n0=$(blob_gets) &&
	r0=$(stats_field "$MNT" readahead_frames) &&
	same b.jsa 0 4096 8192 $((256 * 1024)) &&
	same c.jsa $((2 * MiB)) &&
	test "$(stats_field "$MNT" predict_whole)" = 1 &&
	test "$(stats_field "$MNT" readahead_frames)" = "$r0" &&
	test $(($(blob_gets) - n0)) -le 3
'

test_expect_success 'a file over 4 MiB compressed: a jump predicts nothing' '
	n0=$(blob_gets) &&
	r0=$(stats_field "$MNT" readahead_frames) &&
	same big.dat 0 $((3 * MiB)) &&
	test "$(stats_field "$MNT" predict_whole)" = 1 &&
	test "$(stats_field "$MNT" readahead_frames)" = "$r0" &&
	test $(($(blob_gets) - n0)) -le 2
'

test_expect_success 'an ELF header: its segment and 1 MiB past it come, not more' '
	r0=$(stats_field "$MNT" readahead_frames) &&
	same seg.so 0 &&
	# frames 1-7: the segment (the first MiB) and the MiB after it
	test_wait_for 30 eval "[ \$(stats_field $MNT readahead_frames) -ge $((r0 + 7)) ]" &&
	n1=$(blob_gets) &&
	same seg.so $((MiB + 4096)) $((2 * MiB - 4096)) &&
	test "$(blob_gets)" = "$n1" &&
	same seg.so $((3 * MiB)) &&
	test "$(blob_gets)" = $((n1 + 1)) &&
	unmount_store "$MNT"
'

test_expect_success 'a large read right after the last one: readahead at once' '
	mount_store "$PROXY/jump" "$MNT" "cache=$TRASH/cache-3" &&
	r0=$(stats_field "$MNT" readahead_frames) &&
	# 4 KiB, then 768 KiB where it ended: 772 KiB read, below the 2 MiB
	# a run needs otherwise, and no frame of it was asked for twice
	read_len "$MNT/${DATA##*/}/seq.dat" 0:4096 4096:786432 >out &&
	read_len "$DATA/seq.dat" 0:4096 4096:786432 >want && cmp out want &&
	test_wait_for 30 eval "[ \$(stats_field $MNT readahead_frames) -ge $((r0 + 4)) ]" &&
	n1=$(blob_gets) &&
	# the window: the next 4 frames (1 MiB of file), fetched already
	read_len "$MNT/${DATA##*/}/seq.dat" 1048576:786432 >out &&
	read_len "$DATA/seq.dat" 1048576:786432 >want && cmp out want &&
	test "$(blob_gets)" = "$n1" &&
	unmount_store "$MNT"
'

test_expect_success 'the start of a 6 MiB library: the rest comes with it, nothing after' '
	mount_store "$PROXY/jump" "$MNT" "cache=$TRASH/cache-2" &&
	n0=$(blob_gets) &&
	same lib6.so 0 &&
	test_wait_for 30 eval "[ \$(stats_field $MNT readahead_frames) -ge 22 ]" &&
	n1=$(blob_gets) &&
	echo "requests: the header and the rest $((n1 - n0))" &&
	test $((n1 - n0)) -le 3 &&
	cmp "$MNT/${DATA##*/}/lib6.so" "$DATA/lib6.so" &&
	test "$(blob_gets)" = "$n1" &&
	unmount_store "$MNT"
'

test_done
