#!/bin/bash
test_description='packed push (manifest format 2, docs/format.md 2.1): small paths share a
pack blob; mounts, closure mounts, verify, re-push and serve read them; a tampered pack,
offsets outside the pack and a missing pack are refused cleanly; format 1 still mounts;
packs are what push and import write unless --no-pack'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl zstd /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

MT=application/vnd.oci.image.manifest.v1+json

# manifest REPO STOREPATH: the manifest under the path's tag
manifest() {
	local h=${2##*/}
	curl -fsS -H "Accept: $MT" "http://$REG/v2/$1/manifests/${h%%-*}"
}

# pack_field REPO STOREPATH EXPR: EXPR of the manifest m (python)
pack_field() {
	manifest "$1" "$2" | /usr/bin/python3 -c "import json, sys
m = json.load(sys.stdin)
l = m[\"layers\"][0]
a = l.get(\"annotations\", {})
print($3)"
}

# posts: upload starts in the registry's access log so far
posts() { grep -c '"POST /v2/[^ ]*/blobs/uploads/' "$TRASH/registry-reg/log" || true; }

# flip_at FILE OFFSET: change the byte at OFFSET
flip_at() {
	/usr/bin/python3 -c "
import sys
f = open(sys.argv[1], \"r+b\")
f.seek(int(sys.argv[2]))
b = f.read(1)
f.seek(int(sys.argv[2]))
f.write(bytes([b[0] ^ 0x55]))" "$1" "$2"
}

test_expect_success 'setup: registry, the small closure and a data path' '
	start_registry &&
	build_small_closure &&
	NPATHS=$(echo "$SMALL_CLOSURE" | wc -l) &&
	test "$NPATHS" -ge 3 &&
	DATA=$(echo "$SMALL_CLOSURE" | grep -- -hello-data-) &&
	test -n "$DATA"
'

test_expect_success 'push --pack: every path written, in one pack' '
	before=$(posts) &&
	nixoci push --pack --tag hello "$REG/packed" "$SMALL" >push.out 2>&1 &&
	cat push.out &&
	test "$(push_summary_field "$(cat push.out)" uploaded)" = "$NPATHS" &&
	after=$(posts) &&
	echo "upload starts: $((after - before))" &&
	for p in $SMALL_CLOSURE; do
		pack_field packed "$p" "m[\"artifactType\"], l[\"mediaType\"], l[\"digest\"]" ||
			return 1
	done >layers &&
	cat layers &&
	test "$(sort -u layers | wc -l)" = 1 &&
	grep -q "^application/vnd.nixoci.store-path.v2 application/vnd.nixoci.pack.v1 " layers &&
	# the empty config, the pack, the closure metadata blob: 3 uploads
	# where format 1 takes two per path
	test $((after - before)) -le 3
'

test_expect_success 'the pack holds each path NAR layer and TOC where its manifest says' '
	for p in $SMALL_CLOSURE; do
		pack_field packed "$p" "l[\"digest\"], a[\"dev.nixoci.nar-offset\"], \
a[\"dev.nixoci.nar-length\"], a[\"dev.nixoci.toc-offset\"], a[\"dev.nixoci.toc-length\"], \
a[\"dev.nixoci.toc-digest\"]" >f &&
		read -r d no nl to tl td <f &&
		blob=$(registry_blob_path "$d") &&
		dd if="$blob" bs=1 skip="$no" count="$nl" status=none | zstd -d -q |
			sha256sum | cut -d" " -f1 >got &&
		nix_nar_hash "$p" >want &&
		test_cmp want got &&
		test "sha256:$(dd if="$blob" bs=1 skip="$to" count="$tl" status=none |
			sha256sum | cut -d" " -f1)" = "$td" || return 1
	done
'

test_expect_success 'info shows the pack; verify passes on every path' '
	nixoci info "$REG/packed" "$DATA" >info.out &&
	grep -q "^Pack: sha256:" info.out &&
	nixoci verify "$REG/packed" $SMALL_CLOSURE >verify.out 2>&1 &&
	cat verify.out &&
	test "$(grep -c "^ok /nix/store/" verify.out)" = "$NPATHS"
'

test_expect_success 'a plain mount serves every path as nix-store --dump does' '
	mount_store "$REG/packed" "$TRASH/plain" &&
	check_mount_hashes "$TRASH/plain" $SMALL_CLOSURE &&
	unmount_store "$TRASH/plain"
'

test_expect_success 'a closure mount (metadata in one blob) serves them too' '
	mount_store "$REG/packed" "$TRASH/closure" closure=hello &&
	check_mount_hashes "$TRASH/closure" $SMALL_CLOSURE &&
	unmount_store "$TRASH/closure"
'

test_expect_success 're-push --pack of the unchanged closure uploads nothing' '
	before=$(posts) &&
	nixoci push --pack --tag hello "$REG/packed" "$SMALL" >repush.out 2>&1 &&
	cat repush.out &&
	test "$(push_summary_field "$(cat repush.out)" uploaded)" = 0 &&
	test "$(posts)" = "$before"
'

test_expect_success '--mount-from a repository with the same packs mounts the pack' '
	nixoci push --pack --mount-from packed "$REG/copy" "$SMALL" >mf.out 2>&1 &&
	cat mf.out &&
	grep -q "blobs mounted from packed" mf.out &&
	test "$(pack_field copy "$DATA" "l[\"digest\"]")" = \
		"$(pack_field packed "$DATA" "l[\"digest\"]")" &&
	nixoci verify "$REG/copy" $SMALL_CLOSURE >/dev/null
'

test_expect_success 'partial re-push: the paths not there yet share a pack' '
	NOTE=$(echo "$SMALL_CLOSURE" | grep -- -hello-note.txt) &&
	test "$(nix-store -q --requisites "$NOTE" | wc -l)" = 1 &&
	nixoci push --pack "$REG/partial" "$NOTE" &&
	# a pack of one path would save nothing: format 1
	pack_field partial "$NOTE" "m[\"artifactType\"]" >one &&
	grep -qx "application/vnd.nixoci.store-path.v1" one &&
	nixoci push --pack --tag hello "$REG/partial" "$SMALL" >partial.out 2>&1 &&
	cat partial.out &&
	test "$(push_summary_field "$(cat partial.out)" uploaded)" = $((NPATHS - 1)) &&
	for p in $SMALL_CLOSURE; do
		[ "$p" = "$NOTE" ] || pack_field partial "$p" "l[\"digest\"]" || return 1
	done | sort -u | wc -l >npacks &&
	test "$(cat npacks)" = 1 &&
	mount_store "$REG/partial" "$TRASH/partial" closure=hello &&
	check_mount_hashes "$TRASH/partial" $SMALL_CLOSURE &&
	unmount_store "$TRASH/partial"
'

test_expect_success 'signed packed push: a mount with the key trusted serves it' '
	nix-store --generate-binary-cache-key pack-test-1 "$TRASH/sk" "$TRASH/pk" &&
	nixoci push --pack --sign-key "$TRASH/sk" "$REG/signed" "$SMALL" &&
	pack_field signed "$DATA" "a[\"dev.nixoci.toc-digest\"], \
m[\"annotations\"][\"dev.nixoci.toc-sigs\"]" | grep -q " pack-test-1:" &&
	mount_store "$REG/signed" "$TRASH/signed" "trusted-public-keys=$(cat "$TRASH/pk")" &&
	check_mount_hashes "$TRASH/signed" $SMALL_CLOSURE &&
	unmount_store "$TRASH/signed"
'

test_expect_success 'import --pack from a binary cache: one pack, the closure mounts' '
	nix --extra-experimental-features nix-command copy \
		--to "file://$TRASH/bincache?compression=zstd" $SMALL &&
	nixoci import --pack --tag small "file://$TRASH/bincache" "$REG/imported" "$SMALL" &&
	for p in $SMALL_CLOSURE; do
		pack_field imported "$p" "l[\"mediaType\"], l[\"digest\"]" || return 1
	done | sort -u >ilayers &&
	cat ilayers &&
	test "$(wc -l <ilayers)" = 1 &&
	grep -q "^application/vnd.nixoci.pack.v1 " ilayers &&
	mount_store "$REG/imported" "$TRASH/imported" closure=small &&
	check_mount_hashes "$TRASH/imported" $SMALL_CLOSURE &&
	unmount_store "$TRASH/imported"
'

test_expect_success 'nixoci serve streams a packed path as a binary cache NAR' '
	start_serve serve.out "$REG/packed" &&
	h=${DATA##*/} && h=${h%%-*} &&
	url=$(curl -fsS "$SERVE_URL/$h.narinfo" | sed -n "s/^URL: //p") &&
	curl -fsS "$SERVE_URL/$url" | zstd -d -q | sha256sum | cut -d" " -f1 >got &&
	nix_nar_hash "$DATA" >want &&
	test_cmp want got
'

test_expect_success 'format 1 (--no-pack, which overrides an earlier --pack) into another repository still mounts' '
	nixoci push --pack --no-pack "$REG/plain1" "$SMALL" &&
	pack_field plain1 "$DATA" "m[\"artifactType\"], len(m[\"layers\"])" >f1 &&
	grep -qx "application/vnd.nixoci.store-path.v1 2" f1 &&
	mount_store "$REG/plain1" "$TRASH/v1" &&
	check_mount_hashes "$TRASH/v1" $SMALL_CLOSURE &&
	unmount_store "$TRASH/v1"
'

test_expect_success 'the default: push and import without --pack write packs; --no-pack --pack packs (the last counts)' '
	nixoci push "$REG/dflt" "$SMALL" &&
	nixoci push --no-pack --pack "$REG/last" "$SMALL" &&
	nixoci import "file://$TRASH/bincache" "$REG/dflt-import" "$SMALL" &&
	nixoci import --no-pack "file://$TRASH/bincache" "$REG/plain-import" "$SMALL" &&
	for r in dflt last dflt-import; do
		for p in $SMALL_CLOSURE; do
			pack_field $r "$p" "m[\"artifactType\"], l[\"mediaType\"], l[\"digest\"]" ||
				return 1
		done | sort -u >dl &&
		cat dl &&
		test "$(wc -l <dl)" = 1 &&
		grep -q "^application/vnd.nixoci.store-path.v2 application/vnd.nixoci.pack.v1 " dl ||
			return 1
	done &&
	for p in $SMALL_CLOSURE; do
		pack_field plain-import "$p" "m[\"artifactType\"], len(m[\"layers\"])" || return 1
	done | sort -u >pl &&
	grep -qx "application/vnd.nixoci.store-path.v1 2" pl &&
	test "$(wc -l <pl)" = 1 &&
	nixoci info "$REG/dflt" "$DATA" | grep "^Pack: " &&
	nixoci info "$REG/plain-import" "$DATA" | grep "^NarLayer: "
'

test_expect_success 'a profile prefetch of a path inside a pack (runs at its offset)' '
	for k in 1 2; do
		src=$TRASH/nixoci-pack-mr$k && mkdir -p "$src" &&
		/usr/bin/python3 -c "
import random, sys
for i in range(16):
    r = random.Random(\"pk\" + sys.argv[2] + str(i))
    open(\"%s/f%d\" % (sys.argv[1], i), \"wb\").write(r.randbytes(300 * 1024))
" "$src" $k || return 1
	done &&
	D1=$(nix-store --add "$TRASH/nixoci-pack-mr1") &&
	D2=$(nix-store --add "$TRASH/nixoci-pack-mr2") &&
	nixoci push --pack --tag c1 "$REG/mr" "$D1" "$D2" &&
	# the member that does not start the pack
	if [ "$(pack_field mr "$D1" "a[\"dev.nixoci.nar-offset\"]")" = 0 ]; then D=$D2; else D=$D1; fi &&
	test "$(pack_field mr "$D" "a[\"dev.nixoci.nar-offset\"]")" -gt 0 &&
	mount_store "$REG/mr" "$TRASH/rec" "closure=c1,profile_record=$TRASH/prof" &&
	for i in 0 2 4 6 8 10 12 14; do cmp "$TRASH/rec/${D##*/}/f$i" "$D/f$i" || return 1; done &&
	unmount_store "$TRASH/rec" &&
	N=$(($(wc -l <"$TRASH/prof") - 1)) &&
	test "$N" -ge 8 &&
	nixoci profile push --name even "$REG/mr" c1 "$TRASH/prof" &&
	mount_store "$REG/mr" "$TRASH/prof-mnt" "closure=c1,profile=even" &&
	test_wait_for 30 eval "[ \$(stats_field $TRASH/prof-mnt frames_fetched) -ge $N ]" &&
	for i in 0 2 4 6 8 10 12 14; do
		cmp "$TRASH/prof-mnt/${D##*/}/f$i" "$D/f$i" || return 1
	done &&
	check_mount_hashes "$TRASH/prof-mnt" "$D1" "$D2" &&
	unmount_store "$TRASH/prof-mnt"
'

test_expect_success 'a tampered pack: EIO and one log line; nothing of it cached' '
	nixoci push --pack "$REG/tamper" "$SMALL" &&
	pack_field tamper "$DATA" "l[\"digest\"], a[\"dev.nixoci.nar-offset\"], \
a[\"dev.nixoci.nar-length\"]" >f &&
	read -r d no nl <f &&
	blob=$(registry_blob_path "$d") &&
	MOUNT_LOG_ALLOW="digest mismatch|frame .* does not match|fetch /nix/store" &&
	mount_store "$REG/tamper" "$TRASH/tamper" &&
	# a byte of its first frame: a dump of the path reads every frame
	flip_at "$blob" $((no + 100)) &&
	! nix-store --dump "$TRASH/tamper/${DATA##*/}" >/dev/null 2>err &&
	cat err &&
	grep -q "Input/output error" err &&
	cat "$TRASH/fs-tamper.log" &&
	test "$(grep -c "${DATA##*/}" "$TRASH/fs-tamper.log")" = 1 &&
	flip_at "$blob" $((no + 100)) &&
	check_mount_hashes "$TRASH/tamper" "$DATA" &&
	unmount_store "$TRASH/tamper"
'

test_expect_success 'offsets outside the pack: the path is refused, others served' '
	nixoci push --pack "$REG/evil" "$SMALL" &&
	h=${DATA##*/} && h=${h%%-*} &&
	manifest evil "$DATA" | /usr/bin/python3 -c "
import json, sys
m = json.load(sys.stdin)
l = m[\"layers\"][0]
l[\"annotations\"][\"dev.nixoci.toc-offset\"] = str(l[\"size\"])
sys.stdout.write(json.dumps(m, sort_keys=True, separators=(\",\", \":\")))" >evil.json &&
	curl -fsS -X PUT -H "Content-Type: $MT" --data-binary @evil.json \
		"http://$REG/v2/evil/manifests/$h" &&
	MOUNT_LOG_ALLOW="do not lie apart|malformed" &&
	mount_store "$REG/evil" "$TRASH/evil" &&
	! ls "$TRASH/evil/${DATA##*/}" >/dev/null 2>err &&
	grep -q "Input/output error" err &&
	grep -q "do not lie apart inside the pack" "$TRASH/fs-evil.log" &&
	NOTE=$(echo "$SMALL_CLOSURE" | grep -- -hello-note.txt) &&
	cmp "$TRASH/evil/${NOTE##*/}" "$NOTE" &&
	unmount_store "$TRASH/evil" &&
	! nixoci info "$REG/evil" "$DATA" >/dev/null 2>info.err &&
	grep -q "do not lie apart" info.err
'

test_expect_success 'a missing pack: lookups fail with EIO, one log line, nothing cached' '
	nixoci push --pack "$REG/gone" "$SMALL" &&
	d=$(pack_field gone "$DATA" "l[\"digest\"]") &&
	curl -fsS -X DELETE "http://$REG/v2/gone/blobs/$d" &&
	MOUNT_LOG_ALLOW="no such blob" &&
	mount_store "$REG/gone" "$TRASH/gone" &&
	! ls "$TRASH/gone/${DATA##*/}" >/dev/null 2>err &&
	grep -q "Input/output error" err &&
	cat "$TRASH/fs-gone.log" &&
	test "$(grep -c "${d#sha256:}" "$TRASH/fs-gone.log")" = 1 &&
	# the pack back (mounted from the first repository): the path is
	# served, so nothing of the failure stayed in the cache
	curl -fsS -X POST -o /dev/null \
		"http://$REG/v2/gone/blobs/uploads/?mount=$d&from=packed" &&
	check_mount_hashes "$TRASH/gone" "$DATA" &&
	unmount_store "$TRASH/gone"
'

test_done
