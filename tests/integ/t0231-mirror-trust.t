#!/bin/bash
test_description='mirrors are trusted for bytes, never for names; tag resolutions expire

A forged mirror (a second real docker-registry) holds a modified store path
under the real tag. Tags resolve at the registry only, so the mirror cannot
change a served byte, now or after it is removed. Cached tag resolutions
record their origin and expire after tag_ttl: a tag that changed at the
registry is resolved again once its record is older than that.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/authreg.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
MT="application/vnd.oci.image.manifest.v1+json"
MOUNT_LOG_ALLOW='registry 127\.0\.0\.1|registry unreachable'

# forge REG REPO FROM_STOREPATH TO_STOREPATH: in REG, put FROM's manifest,
# relabelled as TO (store-path annotation), under TO's tag: what a forged
# mirror or a re-push of TO with other bytes serves.
forge() {
	local from=${3##*/} to=${4##*/}
	curl -fsS -H "Accept: $MT" "http://$1/v2/$2/manifests/${from%%-*}" |
		/usr/bin/python3 -c 'import json, sys
m = json.load(sys.stdin)
m["annotations"]["dev.nixoci.store-path"] = sys.argv[1]
sys.stdout.write(json.dumps(m, separators=(",", ":"), sort_keys=True))' "$4" >forged.json &&
	curl -fsS -X PUT -H "Content-Type: $MT" --data-binary @forged.json \
		"http://$1/v2/$2/manifests/${to%%-*}" >/dev/null
}

# a store path named nixoci-trust-data with one file, msg
make_path() {
	local d=$TRASH/$1/nixoci-trust-data
	mkdir -p "$d" && printf '%s\n' "$2" >"$d/msg" && nix-store --add "$d"
}

test_expect_success 'setup: the registry, a forged mirror, the genuine and a modified path' '
	start_registry origin && ORIGIN=$REG && ORIGIN_LOG=$TRASH/registry-origin/log &&
	start_registry forged && FORGED=$REG && FORGED_LOG=$TRASH/registry-forged/log &&
	P=$(make_path genuine "genuine bytes") &&
	Q=$(make_path modified "substituted bytes") &&
	test "${P##*-}" = "${Q##*-}" && test "$P" != "$Q" &&
	nixoci push "$ORIGIN/small" "$P" &&
	nixoci push "$FORGED/small" "$P" &&
	nixoci push "$FORGED/small" "$Q" &&
	forge "$FORGED" small "$Q" "$P" &&
	B=${P##*/}
'

test_expect_success 'the forgery works on its own: the forged registry mounted directly substitutes' '
	mount_store "$FORGED/small" "$MNT" "cache=$TRASH/cache-forged" &&
	test "$(cat "$MNT/$B/msg")" = "substituted bytes" &&
	unmount_store "$MNT"
'

test_expect_success 'through the forged mirror: the genuine bytes; the mirror is never asked the tag' '
	t0=$(reg_log_count "$FORGED_LOG" "\"GET /v2/small/manifests/${B%%-*}") &&
	mount_store "$ORIGIN/small" "$MNT" "cache=$TRASH/cache,mirror=$FORGED" &&
	test "$(cat "$MNT/$B/msg")" = "genuine bytes" &&
	unmount_store "$MNT" &&
	test "$(reg_log_count "$FORGED_LOG" "\"GET /v2/small/manifests/${B%%-*}")" = "$t0" &&
	test "$(reg_log_count "$FORGED_LOG" "\"GET /v2/small/blobs/")" -gt 0
'

test_expect_success 'the mirror removed, the same cache: still the genuine bytes' '
	mount_store "$ORIGIN/small" "$MNT" "cache=$TRASH/cache" &&
	test "$(cat "$MNT/$B/msg")" = "genuine bytes" &&
	unmount_store "$MNT"
'

test_expect_success 'a tag changed at the registry: used from the cache within tag_ttl' '
	nixoci push "$ORIGIN/small" "$Q" &&
	forge "$ORIGIN" small "$Q" "$P" &&
	mount_store "$ORIGIN/small" "$MNT" "cache=$TRASH/cache,tag_ttl=3600" &&
	test "$(cat "$MNT/$B/msg")" = "genuine bytes" &&
	unmount_store "$MNT"
'

test_expect_success 'past tag_ttl: the tag is resolved again at the registry' '
	sleep 2 &&
	mount_store "$ORIGIN/small" "$MNT" "cache=$TRASH/cache,tag_ttl=1" &&
	test "$(cat "$MNT/$B/msg")" = "substituted bytes" &&
	unmount_store "$MNT"
'

test_expect_success 'past tag_ttl with the registry unreachable: the last resolution is served' '
	start_faultproxy "$ORIGIN" &&
	mount_store "$PROXY/small" "$MNT" "cache=$TRASH/cache-p" &&
	test "$(cat "$MNT/$B/msg")" = "substituted bytes" &&
	unmount_store "$MNT" &&
	sleep 2 &&
	mount_store "$PROXY/small" "$MNT" "cache=$TRASH/cache-p,tag_ttl=1,timeout=2" &&
	fault_set refuse &&
	test "$(cat "$MNT/$B/msg")" = "substituted bytes" &&
	fault_set pass &&
	unmount_store "$MNT"
'

test_expect_success 'bad tag_ttl values are refused' '
	! nixoci-fs -f -o tag_ttl=-1 "$ORIGIN/small" "$MNT" 2>err1 &&
	grep -q "bad option tag_ttl=-1" err1 &&
	! nixoci-fs -f -o tag_ttl=soon "$ORIGIN/small" "$MNT" 2>err2 &&
	grep -q "bad option tag_ttl=soon" err2
'

test_done
