#!/bin/bash
test_description='predicted misses: the rest of a library, the small files of one kind in a directory

A read of the start of a file named like a shared library (or executable)
queues the rest of the file in the background, in parallel with the read.
The second small file of one name ending (".cpython-311.pyc", not a
library'"'"'s ".so.1") to miss in a directory queues the frames of that
directory'"'"'s small files with that ending, at most NX_DIR_MAX_BYTES (3 MiB) compressed around the miss; files
of another ending are left alone, and so is a directory with one miss,
unless its ending predicted in another directory of the store path
already: then the first miss predicts.
Predicted frames are claimed like a read'"'"'s, so no frame is fetched twice,
and an unmount during prediction leaves no request behind. Everything is
asserted from the registry'"'"'s side: the requests the proxy saw and the
bytes the daemon fetched. Reads use POSIX_FADV_RANDOM, so the kernel asks
for exactly the bytes read.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt

# read_heads FILE...: the first 4096 bytes of each FILE, one after the other
read_heads() {
	/usr/bin/python3 - "$@" <<-'EOF'
	import os, sys
	for p in sys.argv[1:]:
	    fd = os.open(p, os.O_RDONLY)
	    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
	    sys.stdout.buffer.write(os.pread(fd, 4096, 0))
	    os.close(fd)
	EOF
}
# blob_gets: NAR blob requests the proxy has answered so far
blob_gets() { grep -c "GET /v2/[^ ]*/blobs/sha256:$NAR[^ ]* range=.* -> " "$PROXY_LOG" || true; }
# same_files DIR GLOB: the files of the mount and of the store are equal
same_files() {
	local f
	for f in "$DATA"/$2; do
		cmp "$MNT/${DATA##*/}/$1/${f##*/}" "$f" || return 1
	done
}

test_expect_success 'setup: modules, data files, a library, a wide directory; pushed, proxy' '
	start_registry &&
	src=$TRASH/nixoci-predict-data && mkdir -p "$src/mods" "$src/wide" "$src/one" "$src/libs" "$src/pkga" &&
	/usr/bin/python3 - "$src" <<-EOF &&
	import random, sys
	d = sys.argv[1]
	def put(name, size):
	    open(d + "/" + name, "wb").write(random.Random(name).randbytes(size))
	# random bytes: every frame holds 256 KiB of file data, 16 small files
	for i in range(60):
	    put("mods/m%02d.cpython-311.pyc" % i, 16 * 1024)
	for i in range(40):
	    put("mods/x%02d.dat" % i, 16 * 1024)
	for i in range(320):
	    put("wide/w%03d.pyc" % i, 16 * 1024)
	for i in range(2):
	    put("one/o%d.pyc" % i, 16 * 1024)
	for i in range(40):
	    put("pkga/p%02d.cpython-311.pyc" % i, 16 * 1024)
	for i in range(20):
	    put("pkga/q%02d.dat" % i, 16 * 1024)
	for i in range(40):
	    put("libs/l%02d.so.1" % i, 16 * 1024)
	put("lib.so", 3 * 1024 * 1024)
	EOF
	DATA=$(nix-store --add "$src") &&
	nixoci push --no-pack "$REG/pred" "$DATA" &&
	NAR=$(nar_digest pred "$DATA") &&
	test ${#NAR} = 64 &&
	start_faultproxy "$REG" &&
	# every request held 300 ms: a predicted job is claimed long before
	# the read that queued it has its answer
	fault_set "mode=pass delay=300"
'

test_expect_success 'the start of a library: the rest of the file comes in parallel' '
	mount_store "$PROXY/pred" "$MNT" "cache=$TRASH/cache-1" &&
	n0=$(blob_gets) &&
	r0=$(stats_field "$MNT" readahead_frames) &&
	read_heads "$MNT/${DATA##*/}/lib.so" >out &&
	read_heads "$DATA/lib.so" >want && cmp out want &&
	test_wait_for 30 eval "[ \$(stats_field $MNT readahead_frames) -ge $((r0 + 10)) ]" &&
	n1=$(blob_gets) &&
	cmp "$MNT/${DATA##*/}/lib.so" "$DATA/lib.so" &&
	echo "requests: header read and rest $((n1 - n0)), whole file after $(($(blob_gets) - n1))" &&
	# two requests, or one when the rest'"'"'s job claimed its frames first
	# and the header'"'"'s read joined that request in front (t0176)
	test $((n1 - n0)) -ge 1 && test $((n1 - n0)) -le 2 &&
	test "$(blob_gets)" = "$n1"
'

test_expect_success 'one miss in a directory, then another of a different kind: nothing predicted' '
	r0=$(stats_field "$MNT" readahead_frames) &&
	n0=$(blob_gets) &&
	# (files in frames of their own: a frame holds 16 of them, and the
	# first and last ones of a directory share frames with its neighbours)
	read_heads "$MNT/${DATA##*/}/mods/m20.cpython-311.pyc" "$MNT/${DATA##*/}/mods/x20.dat" \
		"$MNT/${DATA##*/}/one/o0.pyc" >out &&
	read_heads "$DATA/mods/m20.cpython-311.pyc" "$DATA/mods/x20.dat" "$DATA/one/o0.pyc" >want &&
	cmp out want &&
	test $(($(blob_gets) - n0)) = 3 &&
	test "$(stats_field "$MNT" readahead_frames)" = "$r0"
'

test_expect_success 'two libraries of one directory: nothing predicted (a loader names its own)' '
	r0=$(stats_field "$MNT" readahead_frames) &&
	n0=$(blob_gets) &&
	read_heads "$MNT/${DATA##*/}/libs/l20.so.1" "$MNT/${DATA##*/}/libs/l35.so.1" >out &&
	read_heads "$DATA/libs/l20.so.1" "$DATA/libs/l35.so.1" >want && cmp out want &&
	test $(($(blob_gets) - n0)) = 2 &&
	test "$(stats_field "$MNT" readahead_frames)" = "$r0"
'

test_expect_success 'the second module to miss: the directory'"'"'s modules come in the background' '
	r0=$(stats_field "$MNT" readahead_frames) &&
	n0=$(blob_gets) &&
	read_heads "$MNT/${DATA##*/}/mods/m50.cpython-311.pyc" >out &&
	read_heads "$DATA/mods/m50.cpython-311.pyc" >want && cmp out want &&
	test_wait_for 30 eval "[ \$(stats_field $MNT readahead_frames) -gt $r0 ]" &&
	same_files mods "mods/m*.pyc" &&
	n1=$(blob_gets) &&
	echo "requests: the miss and its prediction $((n1 - n0))" &&
	test $((n1 - n0)) -le 3 &&
	# the .dat files were not predicted: reading them all asks for more
	same_files mods "mods/x*.dat" &&
	echo "requests for the data files: $(($(blob_gets) - n1))" &&
	test "$(blob_gets)" -gt "$n1"
'

test_expect_success 'a first miss elsewhere in the path, of an ending that predicted: at once' '
	r0=$(stats_field "$MNT" readahead_frames) &&
	n0=$(blob_gets) &&
	# .dat never predicted: its first miss in pkga stays one miss
	read_heads "$MNT/${DATA##*/}/pkga/q10.dat" >out &&
	read_heads "$DATA/pkga/q10.dat" >want && cmp out want &&
	test "$(stats_field "$MNT" readahead_frames)" = "$r0" &&
	# .cpython-311.pyc predicted in mods/: pkga'"'"'s modules come with its first
	read_heads "$MNT/${DATA##*/}/pkga/p20.cpython-311.pyc" >out &&
	read_heads "$DATA/pkga/p20.cpython-311.pyc" >want && cmp out want &&
	test_wait_for 30 eval "[ \$(stats_field $MNT readahead_frames) -gt $r0 ]" &&
	same_files pkga "pkga/p*.pyc" &&
	n1=$(blob_gets) &&
	echo "requests: two misses and the prediction $((n1 - n0))" &&
	test $((n1 - n0)) -le 4
'

test_expect_success 'a wide directory: at most 3 MiB around the miss, not all of it' '
	b0=$(stats_field "$MNT" bytes_fetched) &&
	r0=$(stats_field "$MNT" readahead_frames) &&
	read_heads "$MNT/${DATA##*/}/wide/w100.pyc" "$MNT/${DATA##*/}/wide/w319.pyc" >out &&
	read_heads "$DATA/wide/w100.pyc" "$DATA/wide/w319.pyc" >want && cmp out want &&
	test_wait_for 30 eval "[ \$(stats_field $MNT readahead_frames) -ge $((r0 + 10)) ]" &&
	n1=$(blob_gets) &&
	b1=$(stats_field "$MNT" bytes_fetched) &&
	echo "fetched $((b1 - b0)) bytes of a 5 MiB directory" &&
	test $((b1 - b0)) -gt $((2 * 1024 * 1024)) &&
	test $((b1 - b0)) -le $((3 * 1024 * 1024 + 3 * 300 * 1024)) &&
	same_files wide "wide/w*.pyc" &&
	test "$(blob_gets)" -gt "$n1" &&
	unmount_store "$MNT"
'

test_expect_success 'readahead=0: no prediction' '
	mount_store "$PROXY/pred" "$MNT" "cache=$TRASH/cache-2,readahead=0" &&
	read_heads "$MNT/${DATA##*/}/mods/m20.cpython-311.pyc" "$MNT/${DATA##*/}/mods/m50.cpython-311.pyc" \
		"$MNT/${DATA##*/}/lib.so" >/dev/null &&
	test "$(stats_field "$MNT" readahead_frames)" = 0 &&
	unmount_store "$MNT"
'

test_expect_success 'unmount while predicted frames are on the link: exit 0, no request after it' '
	fault_set "mode=pass" &&
	mount_store "$PROXY/pred" "$MNT" "cache=$TRASH/cache-3" &&
	read_heads "$MNT/${DATA##*/}/wide/w100.pyc" >/dev/null &&
	# the read of w319 (at most two frames) gets its answer; the prediction
	# around it (about 3 MiB) stalls after 1 MB
	fault_set "mode=stall match=/blobs/ after=1000000" &&
	read_heads "$MNT/${DATA##*/}/wide/w319.pyc" >out &&
	read_heads "$DATA/wide/w319.pyc" >want && cmp out want &&
	test_wait_for 30 eval "grep -q \"fault:stall bytes=1000000 of\" \"\$PROXY_LOG\"" &&
	unmount_store "$MNT" &&
	n_end=$(blob_gets) &&
	sleep 2 &&
	test "$(blob_gets)" = "$n_end" &&
	fault_set "mode=pass"
'

test_done
