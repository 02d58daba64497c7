#!/bin/bash
test_description='load: 64 concurrent readers over 10,000 files; zero errors, every byte
right, bounded daemon memory (VmRSS). NIXOCI_LOAD_SECONDS=300 for the long form (make bench)'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

SECS=${NIXOCI_LOAD_SECONDS:-30}
THREADS=${NIXOCI_LOAD_THREADS:-64}
NFILES=${NIXOCI_LOAD_FILES:-10000}
# A cache smaller than the data (about 46 MiB), so eviction runs under load too
CACHE_SIZE=${NIXOCI_LOAD_CACHE_SIZE:-24M}
# daemon memory bound (KiB); an AddressSanitizer build keeps a 256 MiB
# quarantine of freed memory plus shadow memory, so it gets a looser one
RSS_MAX_KB=${NIXOCI_LOAD_RSS_MAX_KB:-262144}
if ldd "$(command -v nixoci-fs)" 2>/dev/null | grep -q libasan; then
	RSS_MAX_KB=${NIXOCI_LOAD_RSS_MAX_KB:-1048576}
fi
MNT=$TRASH/mnt

test_expect_success "setup: a store path of $NFILES files, pushed" '
	/usr/bin/python3 "$TEST_LIB_DIR/loadgen.py" tree "$TRASH/load-files" "$NFILES" &&
	P=$(nix-store --add "$TRASH/load-files") &&
	echo "$P" &&
	start_registry &&
	nixoci push "$REG/load" "$P" >push.out 2>&1 && cat push.out
'

test_expect_success "mount (cache_size=$CACHE_SIZE)" '
	mount_store "$REG/load" "$MNT" "cache_size=$CACHE_SIZE"
'

test_expect_success "$THREADS readers for ${SECS}s: zero errors, all bytes right, bounded RSS" '
	/usr/bin/python3 "$TEST_LIB_DIR/loadgen.py" read "$MNT/${P##*/}" "$TRASH/sums" \
		"$THREADS" "$SECS" "${MOUNT_PID[$MNT]}" >load.out &&
	cat load.out &&
	set -- $(tail -n 1 load.out) &&
	test "$1" = reads && test "$2" -gt 0 &&
	test "$6" = 0 && test "$8" = 0 &&
	echo "daemon VmRSS max ${10} KiB (start ${12} KiB, bound $RSS_MAX_KB KiB)" &&
	test "${10}" -gt 0 && test "${10}" -le "$RSS_MAX_KB" &&
	pid_alive "${MOUNT_PID[$MNT]}" &&
	say "load: $(tail -n 1 load.out)" &&
	nixoci stats "$MNT" | tee stats.out &&
	say "load stats: $(tr "\n" " " <stats.out)"
'

# The pool runs at most 8 transfers (fetch/http.c); connections must be
# kept and reused, not opened per request, or a TLS registry pays a
# handshake for every frame.
test_expect_success 'the load reused connections: at most 16 for all its requests' '
	req=$(awk "/^requests /{print \$2}" stats.out) &&
	conn=$(awk "/^connections /{print \$2}" stats.out) &&
	echo "requests $req, connections $conn" &&
	test "$req" -gt 100 &&
	test "$conn" -ge 1 && test "$conn" -le 16
'

test_expect_success 'after the load: the whole tree still dumps to its NarHash' '
	check_mount_hashes "$MNT" "$P"
'

test_done
