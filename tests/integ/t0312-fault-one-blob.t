#!/bin/bash
test_description='one failing blob does not fail reads of other paths

Failures are accounted per source (cache/online.c): a blob that answers 503
after every retry, or one that stalls, fails the reads that need it, while
reads of other store paths (other blobs of the same registry) go on being
served, without the store going offline. The fault proxy fails one digest
only (digest=HEX).'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
T=3
MOUNT_LOG_ALLOW='registry 127\.0\.0\.1|registry unreachable|registry answers again'

# nar_digest REPO STOREPATH: the hex digest of the path's NAR layer
nar_digest() {
	local h=${2##*/}
	h=${h%%-*}
	curl -fsS -H "Accept: application/vnd.oci.image.manifest.v1+json" \
		"http://$REG/v2/$1/manifests/$h" |
		/usr/bin/python3 -c 'import json, sys
m = json.load(sys.stdin)
print([l for l in m["layers"] if "nar" in l["mediaType"]][0]["digest"].split(":")[1])'
}

# a loop of readers of the failing file, until the file $TRASH/stop exists
bad_reader_loop() {
	while [ ! -e "$TRASH/stop" ]; do
		timeout 60 cat "$1" >/dev/null 2>&1
		sleep 0.05
	done
}

# read_others FILES...: every file right, one a second (so the reads spread
# over more than one timeout of the failing blob)
read_others() {
	local f
	for f in "$@"; do
		timeout 60 cmp "$MNT/${DATA2##*/}/$f" "$DATA2/$f" || { echo "FAILED: $f"; return 1; }
		sleep 0.7
	done
}

test_expect_success 'setup: registry, two store paths, fault proxy, mount' '
	start_registry &&
	build_fault_data &&
	src=$TRASH/nixoci-other-data && mkdir -p "$src" &&
	/usr/bin/python3 -c "
import random, sys
for i in range(1, 17):
    r = random.Random(9100 + i)
    open(\"%s/g%02d\" % (sys.argv[1], i), \"wb\").write(r.randbytes(640 * 1024))
" "$src" &&
	DATA2=$(nix-store --add "$src") &&
	nixoci push --no-pack "$REG/one" "$FDATA" "$DATA2" &&
	BAD=$(nar_digest one "$FDATA") &&
	test ${#BAD} = 64 &&
	start_faultproxy "$REG" &&
	mount_store "$PROXY/one" "$MNT" "timeout=$T,readahead=0" &&
	ls "$MNT/${FDATA##*/}" "$MNT/${DATA2##*/}" >/dev/null
'

test_expect_success 'the proxy fails that digest only' '
	fault_set mode=status code=503 digest=$BAD &&
	! timeout 60 cat "$MNT/${FDATA##*/}/f01" >/dev/null 2>err &&
	grep -q "Input/output error" err &&
	test "$(fault_hits status)" -ge 1 &&
	! grep "fault:status" "$PROXY_LOG" | grep -v "$BAD" | grep -q .
'

test_expect_success 'one blob answers 503 (a reader keeps asking): other paths read right' '
	rm -f "$TRASH/stop" &&
	{ bad_reader_loop "$MNT/${FDATA##*/}/f02" & } &&
	loop=$! &&
	test_atexit "touch $TRASH/stop" &&
	test_wait_for 20 eval "[ \$(fault_hits status) -ge 3 ]" &&
	read_others g01 g02 g03 g04 g05 g06 &&
	test "$(stats_field "$MNT" offline)" = 0 &&
	touch "$TRASH/stop" && wait $loop
'

test_expect_success 'one blob stalls (a reader keeps asking): other paths read right' '
	rm -f "$TRASH/stop" &&
	n=$(fault_hits stall) &&
	fault_set mode=stall digest=$BAD &&
	{ bad_reader_loop "$MNT/${FDATA##*/}/f03" & } &&
	loop=$! &&
	test_wait_for 20 eval "[ \$(fault_hits stall) -gt $n ]" &&
	read_others g07 g08 g09 g10 g11 g12 g13 g14 &&
	test "$(stats_field "$MNT" offline)" = 0 &&
	touch "$TRASH/stop" && wait $loop
'

test_expect_success 'healed: the failing files read right on the same mount' '
	fault_set pass &&
	heal_read "$MNT/${FDATA##*/}/f02" "$FDATA/f02" $((T + 5)) &&
	heal_read "$MNT/${FDATA##*/}/f03" "$FDATA/f03" $((T + 5)) &&
	fs_alive "$MNT"
'

test_done
