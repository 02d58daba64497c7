#!/bin/bash
test_description='larger reads on a miss: small files whole, ELF segments

A read that misses a small regular file (at most 1 MiB) fetches the rest of
the file in the same range request; a read of the start of an ELF file
queues the frames of its loadable segments for background fetching. Every
frame is still verified on its own: a tampered frame that rode along with a
good one fails only the reads that need it, with one log line. Reads here
use POSIX_FADV_RANDOM, so the kernel asks for exactly the bytes read and
the requests the proxy sees are the daemon'"'"'s own.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
LIB=$(ls /usr/lib/x86_64-linux-gnu/libcrypto.so.3 2>/dev/null || true)
[ -z "$LIB" ] || test_set_prereq LIB

# pread_at FILE OFF...: 4096 bytes at each OFF (random access, no kernel
# readahead), written one after the other to stdout
pread_at() {
	/usr/bin/python3 - "$@" <<-'EOF'
	import os, sys
	fd = os.open(sys.argv[1], os.O_RDONLY)
	os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
	for off in sys.argv[2:]:
	    sys.stdout.buffer.write(os.pread(fd, 4096, int(off)))
	EOF
}
# blob_gets: NAR blob requests the proxy has seen so far
blob_gets() { grep -c "GET /v2/[^ ]*/blobs/sha256:$NAR" "$PROXY_LOG" || true; }

test_expect_success 'setup: a path with small files and an ELF library, pushed, proxy' '
	start_registry &&
	src=$TRASH/nixoci-miss-data && mkdir -p "$src" &&
	/usr/bin/python3 -c "
import random, sys
for n in (\"s1\", \"s2\", \"s3\"):
    r = random.Random(n)
    open(sys.argv[1] + \"/\" + n, \"wb\").write(r.randbytes(900 * 1024))
" "$src" &&
	if [ -n "$LIB" ]; then cp "$LIB" "$src/lib.so"; fi &&
	DATA=$(nix-store --add "$src") &&
	nixoci push --no-pack "$REG/miss" "$DATA" &&
	NAR=$(nar_digest miss "$DATA") &&
	test ${#NAR} = 64 &&
	start_faultproxy "$REG"
'

test_expect_success 'without larger reads (readahead=0): one request per frame' '
	mount_store "$PROXY/miss" "$MNT" "readahead=0,cache=$TRASH/cache-1" &&
	n0=$(blob_gets) &&
	pread_at "$MNT/${DATA##*/}/s1" 0 300000 600000 800000 >out &&
	pread_at "$DATA/s1" 0 300000 600000 800000 >want &&
	cmp out want &&
	test $(($(blob_gets) - n0)) = 4 &&
	unmount_store "$MNT"
'

test_expect_success 'a small file: its first miss fetches it whole, in one request' '
	mount_store "$PROXY/miss" "$MNT" "cache=$TRASH/cache-2" &&
	n0=$(blob_gets) &&
	pread_at "$MNT/${DATA##*/}/s1" 0 >out &&
	pread_at "$DATA/s1" 0 >want && cmp out want &&
	test $(($(blob_gets) - n0)) = 1 &&
	pread_at "$MNT/${DATA##*/}/s1" 300000 600000 800000 >out &&
	pread_at "$DATA/s1" 300000 600000 800000 >want && cmp out want &&
	test $(($(blob_gets) - n0)) = 1 &&
	cmp "$MNT/${DATA##*/}/s1" "$DATA/s1" &&
	cmp "$MNT/${DATA##*/}/s2" "$DATA/s2" &&
	test $(($(blob_gets) - n0)) -le 3
'

test_expect_success LIB 'an ELF library: the header read queues its loadable segments' '
	n0=$(blob_gets) &&
	r0=$(stats_field "$MNT" readahead_frames) &&
	pread_at "$MNT/${DATA##*/}/lib.so" 0 >out &&
	pread_at "$DATA/lib.so" 0 >want && cmp out want &&
	test_wait_for 30 eval "[ \$(stats_field $MNT readahead_frames) -gt $((r0 + 8)) ]" &&
	n1=$(blob_gets) &&
	cmp "$MNT/${DATA##*/}/lib.so" "$DATA/lib.so" &&
	echo "requests: header read and segments $((n1 - n0)), whole file after $(($(blob_gets) - n1))" &&
	test $(($(blob_gets) - n1)) -le 2
'

test_expect_success 'a tampered frame riding along: EIO for that frame only, one log line' '
	unmount_store "$MNT" &&
	# the third full frame of s3 (file bytes 512 KiB to 768 KiB), in the
	# registry storage: the seek table says where the frames are
	/usr/bin/python3 - "$(registry_blob_path "$NAR")" "$REG_STORAGE" <<-EOF &&
	import struct, sys
	p = sys.argv[1]
	b = bytearray(open(p, "rb").read())
	n = struct.unpack_from("<I", b, len(b) - 9)[0]
	tab = len(b) - 9 - 8 * n
	fr, off = [], 0
	for i in range(n):
	    c, d = struct.unpack_from("<II", b, tab + 8 * i)
	    fr.append((off, c, d))
	    off += c
	# s3 is the last file (names sort): its frames are the last four,
	# the last one partial; this is the one before it
	o, c, d = fr[-2]
	assert d == 262144, fr[-4:]
	b[o + c // 2] ^= 0xff
	open(p, "wb").write(bytes(b))
	EOF
	MOUNT_LOG_ALLOW="verify frame [0-9]+ of .*/s3|reading .*s3" &&
	mount_store "$PROXY/miss" "$MNT" "cache=$TRASH/cache-3" &&
	n0=$(blob_gets) &&
	pread_at "$MNT/${DATA##*/}/s3" 0 300000 >out &&
	pread_at "$DATA/s3" 0 300000 >want && cmp out want &&
	test $(($(blob_gets) - n0)) = 1 &&
	! pread_at "$MNT/${DATA##*/}/s3" 600000 >out 2>err &&
	grep -q "Input/output error" err &&
	pread_at "$MNT/${DATA##*/}/s3" 800000 >out &&
	pread_at "$DATA/s3" 800000 >want && cmp out want &&
	log=${MOUNT_LOG[$MNT]} &&
	grep "digest mismatch" "$log" &&
	test "$(grep -c "digest mismatch" "$log")" = 1 &&
	unmount_store "$MNT"
'

test_done
