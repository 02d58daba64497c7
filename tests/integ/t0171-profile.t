#!/bin/bash
test_description='startup profiles: recorded, pushed, prefetched at mount; a hint only

A mount with profile_record=FILE writes the frames read, in order; `nixoci
profile push` publishes it for a closure (on docker-registry, which has no
referrers API, under the tag fallback sha256-<hex>); a mount with
profile=NAME fetches those frames as soon as it mounts, so the workload
then makes no request. A profile that is missing, or whose frames belong to
another closure, does nothing but log one line. Unmounting during the
prefetch ends it: the daemon exits 0 and no request follows.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
blob_gets() { grep -c "GET /v2/pr/blobs/sha256:$NAR" "$PROXY_LOG" || true; }
blob_begun() { grep -c "begin GET /v2/pr/blobs/sha256:$NAR" "$PROXY_LOG" || true; }

# make_data NAME SEED: a store path of eight 300 KiB files
make_data() {
	local src=$TRASH/$1
	mkdir -p "$src"
	/usr/bin/python3 -c "
import random, sys
for i in range(8):
    r = random.Random(sys.argv[2] + str(i))
    open('%s/f%d' % (sys.argv[1], i), 'wb').write(r.randbytes(300 * 1024))
" "$src" "$2" && nix-store --add "$src"
}
read_all() { for i in 0 1 2 3 4 5 6 7; do cmp "$1/f$i" "$2/f$i" || return 1; done; }

test_expect_success 'setup: two closures, pushed; proxy' '
	start_registry &&
	D1=$(make_data nixoci-profile-one one) &&
	D2=$(make_data nixoci-profile-two two) &&
	nixoci push --no-pack --tag c1 "$REG/pr" "$D1" &&
	nixoci push --no-pack --tag c2 "$REG/pr" "$D2" &&
	NAR=$(nar_digest pr "$D1") &&
	test ${#NAR} = 64 &&
	start_faultproxy "$REG"
'

test_expect_success 'record: the frames a workload reads, in order, written at unmount' '
	mount_store "$PROXY/pr" "$MNT" "closure=c1,profile_record=$TRASH/p1,cache=$TRASH/c-rec" &&
	read_all "$MNT/${D1##*/}" "$D1" &&
	unmount_store "$MNT" &&
	head -n 1 "$TRASH/p1" | grep -qx "nixoci-profile 1" &&
	N=$(($(wc -l <"$TRASH/p1") - 1)) &&
	say "profile: $N frames" &&
	test "$N" -ge 8 &&
	! grep -v "^nixoci-profile 1$" "$TRASH/p1" | grep -v "^${D1##*/} sha256:[0-9a-f]\{64\}$"
'

test_expect_success 'push: an artifact with the closure index as subject, under the tag fallback' '
	nixoci profile push --name w "$REG/pr" c1 "$TRASH/p1" >out &&
	cat out &&
	grep -q "listed under tag sha256-" out &&
	idx=$(curl -fsS -o /dev/null -w "%header{docker-content-digest}" \
		-H "Accept: application/vnd.oci.image.index.v1+json" "http://$REG/v2/pr/manifests/c1") &&
	curl -fsS -H "Accept: application/vnd.oci.image.index.v1+json" \
		"http://$REG/v2/pr/manifests/sha256-${idx#sha256:}" >refs.json &&
	grep -q "application/vnd.nixoci.profile.v1" refs.json &&
	grep -q "\"dev.nixoci.profile.name\":\"w\"" refs.json &&
	# the layer is announced with the name, so a reader asks for the
	# manifest and the layer at once
	PMAN=$(/usr/bin/python3 -c "import json, sys
print(json.load(open(sys.argv[1]))[\"manifests\"][-1][\"digest\"].split(\":\")[1])" refs.json) &&
	PLAYER=$(/usr/bin/python3 -c "import json, sys
d = json.load(open(sys.argv[1]))[\"manifests\"][-1]
print(d[\"annotations\"][\"dev.nixoci.profile.blob\"].split(\":\")[1])" refs.json) &&
	curl -fsS -H "Accept: application/vnd.oci.image.manifest.v1+json" \
		"http://$REG/v2/pr/manifests/sha256:$PMAN" | grep -q "\"digest\":\"sha256:$PLAYER\"" &&
	nixoci profile push --name w "$REG/pr" c1 "$TRASH/p1" &&
	curl -fsS -H "Accept: application/vnd.oci.image.index.v1+json" \
		"http://$REG/v2/pr/manifests/sha256-${idx#sha256:}" >refs2.json &&
	test "$(grep -o "dev.nixoci.profile.name" refs2.json | wc -l)" = 1 &&
	! nixoci profile push --name w "$REG/pr" c1 /etc/hostname 2>err &&
	grep "not a nixoci profile" err
'

test_expect_success 'apply: the frames come at mount, the workload then makes no request' '
	mount_store "$PROXY/pr" "$MNT" "closure=c1,profile=w,cache=$TRASH/c-apply" &&
	test_wait_for 30 eval "[ \$(stats_field $MNT frames_fetched) -ge $N ]" &&
	n0=$(blob_gets) &&
	test "$n0" -ge 1 &&
	read_all "$MNT/${D1##*/}" "$D1" &&
	test "$(blob_gets)" = "$n0" &&
	unmount_store "$MNT"
'

# The profile costs two round trips in series, not four: the referrers API
# and the tag fallback are asked at once, then the manifest and its layer.
# Each is shown by holding one request (stall) and seeing the other arrive.
test_expect_success 'the referrers API and the tag fallback are asked at once' '
	n0=$(grep -c "GET /v2/pr/manifests/sha256-" "$PROXY_LOG") &&
	fault_set "mode=stall match=/referrers/" &&
	mount_store "$PROXY/pr" "$MNT" "closure=c1,profile=w,cache=$TRASH/c-par1" &&
	test_wait_for 30 eval "[ \$(grep -c \"GET /v2/pr/manifests/sha256-\" \"$PROXY_LOG\") -gt $n0 ]" &&
	grep -q "GET /v2/pr/referrers/.*fault:stall" "$PROXY_LOG" &&
	fault_set pass &&
	test_wait_for 30 eval "[ \$(stats_field $MNT frames_fetched) -ge $N ]" &&
	unmount_store "$MNT"
'

test_expect_success 'the profile manifest and its layer are fetched at once' '
	n0=$(grep -c "GET /v2/pr/blobs/sha256:$PLAYER" "$PROXY_LOG") &&
	fault_set "mode=stall digest=$PMAN" &&
	mount_store "$PROXY/pr" "$MNT" "closure=c1,profile=w,cache=$TRASH/c-par2" &&
	test_wait_for 30 eval "[ \$(grep -c \"GET /v2/pr/blobs/sha256:$PLAYER\" \"$PROXY_LOG\") -gt $n0 ]" &&
	grep -q "GET /v2/pr/manifests/sha256:$PMAN.*fault:stall" "$PROXY_LOG" &&
	fault_set pass &&
	test_wait_for 30 eval "[ \$(stats_field $MNT frames_fetched) -ge $N ]" &&
	unmount_store "$MNT"
'

test_expect_success 'profile=auto takes the newest profile of the closure' '
	mount_store "$PROXY/pr" "$MNT" "closure=c1,profile=auto,cache=$TRASH/c-auto" &&
	test_wait_for 30 eval "[ \$(stats_field $MNT frames_fetched) -ge $N ]" &&
	unmount_store "$MNT"
'

test_expect_success 'a profile with frames of another closure is ignored, with one log line' '
	mount_store "$PROXY/pr" "$MNT" "closure=c2,profile_record=$TRASH/p2,cache=$TRASH/c-rec2" &&
	read_all "$MNT/${D2##*/}" "$D2" &&
	unmount_store "$MNT" &&
	nixoci profile push --name other "$REG/pr" c1 "$TRASH/p2" &&
	# and one that names this closure'"'"'s path with the other'"'"'s frames
	sed "s|^${D2##*/} |${D1##*/} |" "$TRASH/p2" >"$TRASH/p3" &&
	nixoci profile push --name stale "$REG/pr" c1 "$TRASH/p3" &&
	for p in other stale; do
		mount_store "$PROXY/pr" "$MNT" "closure=c1,profile=$p,cache=$TRASH/c-$p" &&
		log=${MOUNT_LOG[$MNT]} &&
		test_wait_for 30 grep -q "profile $p: none of its" "$log" &&
		test "$(grep -c "profile $p" "$log")" = 1 &&
		test "$(stats_field "$MNT" frames_fetched)" = 0 &&
		read_all "$MNT/${D1##*/}" "$D1" &&
		unmount_store "$MNT" || return 1
	done
'

test_expect_success 'a missing profile is ignored, with one log line' '
	mount_store "$PROXY/pr" "$MNT" "closure=c1,profile=nosuch,cache=$TRASH/c-none" &&
	log=${MOUNT_LOG[$MNT]} &&
	test_wait_for 30 grep -q "profile nosuch: none found for closure" "$log" &&
	test "$(grep -c "profile nosuch" "$log")" = 1 &&
	read_all "$MNT/${D1##*/}" "$D1" &&
	unmount_store "$MNT" &&
	! nixoci-fs -f -o profile=w,cache=$TRASH/c-x "$PROXY/pr" "$MNT" 2>err &&
	grep "give closure=NAME too" err
'

test_expect_success 'a referrers index that announces another layer: the manifest'"'"'s is used' '
	# the tag fallback is the registry'"'"'s word, the manifest is pinned by
	# digest: an announcement that disagrees with it only costs a request
	idx=$(curl -fsS -o /dev/null -w "%header{docker-content-digest}" \
		-H "Accept: application/vnd.oci.image.index.v1+json" "http://$REG/v2/pr/manifests/c1") &&
	tag=sha256-${idx#sha256:} &&
	curl -fsS -H "Accept: application/vnd.oci.image.index.v1+json" \
		"http://$REG/v2/pr/manifests/$tag" >refs-orig.json &&
	/usr/bin/python3 -c "import json, sys
x = json.load(open(sys.argv[1]))
ds = x[\"manifests\"]
w = [d for d in ds if d[\"annotations\"][\"dev.nixoci.profile.name\"] == \"w\"][0]
o = [d for d in ds if d[\"annotations\"][\"dev.nixoci.profile.name\"] == \"other\"][0]
for k in (\"dev.nixoci.profile.blob\", \"dev.nixoci.profile.blob-size\"):
    w[\"annotations\"][k] = o[\"annotations\"][k]
sys.stdout.write(json.dumps(x, separators=(\",\", \":\"), sort_keys=True))" refs-orig.json >refs-bad.json &&
	! cmp -s refs-orig.json refs-bad.json &&
	curl -fsS -X PUT -H "Content-Type: application/vnd.oci.image.index.v1+json" \
		--data-binary @refs-bad.json "http://$REG/v2/pr/manifests/$tag" &&
	OLAYER=$(/usr/bin/python3 -c "import json, sys
d = json.load(open(sys.argv[1]))[\"manifests\"]
print([x for x in d if x[\"annotations\"][\"dev.nixoci.profile.name\"] == \"other\"][0][\"annotations\"][\"dev.nixoci.profile.blob\"].split(\":\")[1])" refs-orig.json) &&
	test "$OLAYER" != "$PLAYER" &&
	o0=$(grep -c "GET /v2/pr/blobs/sha256:$OLAYER" "$PROXY_LOG") &&
	p0=$(grep -c "GET /v2/pr/blobs/sha256:$PLAYER" "$PROXY_LOG") &&
	mount_store "$PROXY/pr" "$MNT" "closure=c1,profile=w,cache=$TRASH/c-badhint" &&
	test_wait_for 30 eval "[ \$(stats_field $MNT frames_fetched) -ge $N ]" &&
	n0=$(blob_gets) &&
	read_all "$MNT/${D1##*/}" "$D1" &&
	test "$(blob_gets)" = "$n0" &&
	test "$(grep -c "GET /v2/pr/blobs/sha256:$OLAYER" "$PROXY_LOG")" -gt "$o0" &&
	test "$(grep -c "GET /v2/pr/blobs/sha256:$PLAYER" "$PROXY_LOG")" -gt "$p0" &&
	! grep -q "profile w.*ignored" "${MOUNT_LOG[$MNT]}" &&
	unmount_store "$MNT" &&
	curl -fsS -X PUT -H "Content-Type: application/vnd.oci.image.index.v1+json" \
		--data-binary @refs-orig.json "http://$REG/v2/pr/manifests/$tag"
'

test_expect_success 'unmount during the prefetch: the daemon exits 0, no request follows' '
	fault_set "mode=pass delay=500" &&
	mount_store "$PROXY/pr" "$MNT" "closure=c1,profile=w,cache=$TRASH/c-stop" &&
	test_wait_for 30 eval "[ \$(blob_begun) -ge 1 ]" &&
	unmount_store "$MNT" &&
	n_end=$(grep -c "begin GET" "$PROXY_LOG") &&
	sleep 1 &&
	test "$(grep -c "begin GET" "$PROXY_LOG")" = "$n_end" &&
	fault_set pass
'

test_done
