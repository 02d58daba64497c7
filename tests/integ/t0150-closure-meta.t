#!/bin/bash
test_description='closure metadata in one fetch (format.md 5.1): no per-path metadata request; a tampered, disagreeing or missing blob falls back cleanly; the index names the blob, which a mount fetches beside its manifest, and a hint that disagrees or is malformed is ignored'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl zstd /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

IDX_MT=application/vnd.oci.image.index.v1+json
MAN_MT=application/vnd.oci.image.manifest.v1+json

# json_get URL-PATH ACCEPT PYEXPR: evaluate PYEXPR on the JSON body as x.
json_get() {
	curl -fsS -H "Accept: $2" "http://$REG/v2/store/$1" |
		/usr/bin/python3 -c "import json, sys; x = json.load(sys.stdin); print($3)"
}

meta_digest() {
	json_get "manifests/$1" $IDX_MT \
		'[d["digest"] for d in x["manifests"] if "dev.nixoci.closure-meta" in d.get("annotations", {})][0]'
}

meta_blob() {
	json_get "manifests/$(meta_digest "$1")" $MAN_MT 'x["layers"][0]["digest"]'
}

# reg_requests: requests the registry has logged so far
reg_requests() {
	grep -c '"GET /v2/\|"HEAD /v2/' "$TRASH/registry-reg/log"
}

# walk MNT: every directory entry of every path of the closure, metadata only
walk() {
	local p
	for p in $SMALL_CLOSURE; do
		find "$1/${p##*/}" -printf '%p %s %m %y\n' || return 1
	done >"$TRASH/walk-$(basename "$1").out"
}

test_expect_success 'setup: registry, the small closure pushed with a tag' '
	start_registry &&
	build_small_closure &&
	nixoci push --tag hello "$REG/store" "$SMALL" &&
	NPATHS=$(echo "$SMALL_CLOSURE" | wc -l) &&
	META=$(meta_digest hello) &&
	BLOB=$(meta_blob hello) &&
	test -n "$META" && test -n "$BLOB"
'

test_expect_success 'a closure mount walks every path with no request after mounting' '
	mount_store "$REG/store" "$TRASH/m1" closure=hello &&
	before=$(reg_requests) &&
	walk "$TRASH/m1" &&
	after=$(reg_requests) &&
	say "requests during the walk: $((after - before)) (paths: $NPATHS)" &&
	test "$after" = "$before" &&
	check_mount_hashes "$TRASH/m1" $SMALL_CLOSURE &&
	unmount_store "$TRASH/m1"
'

# root_inodes MNT: "<base> <inode>" of every path of the closure, in the order given
root_inodes() {
	local p
	for p in $2; do
		echo "${p##*/} $(stat -c %i "$1/${p##*/}")" || return 1
	done
}

test_expect_success 'a walk opens no directory through the daemon; ids recorded at mount, stable' '
	# a 4-bit id space: paths collide, and the ids recorded in the one
	# commit at mount must still be distinct and survive a remount that
	# looks the paths up in the other order
	test "$NPATHS" -le 15 &&
	export NIXOCI_TEST_ID_BITS=4 &&
	mount_store "$REG/store" "$TRASH/m-ids" "closure=hello,cache=$TRASH/c-ids" &&
	root_inodes "$TRASH/m-ids" "$SMALL_CLOSURE" >ino1 &&
	walk "$TRASH/m-ids" &&
	walk "$TRASH/m-ids" &&
	test "$(ls "$TRASH/m-ids" | wc -l)" = "$NPATHS" &&
	test "$(ls "$TRASH/m-ids" | wc -l)" = "$NPATHS" &&
	opens=$(nixoci stats "$TRASH/m-ids" | awk "\$1 == \"fuse_opendir\" { print \$2 }") &&
	say "opendir requests for two walks and two listings: $opens" &&
	test "$opens" -le 1 &&
	unmount_store "$TRASH/m-ids" &&
	mount_store "$REG/store" "$TRASH/m-ids" "closure=hello,cache=$TRASH/c-ids" &&
	root_inodes "$TRASH/m-ids" "$(echo "$SMALL_CLOSURE" | tac)" | tac >ino2 &&
	unmount_store "$TRASH/m-ids" &&
	unset NIXOCI_TEST_ID_BITS &&
	test_cmp ino1 ino2 &&
	test "$(awk "{ print int(\$2 / 16777216) }" ino1 | sort -u | wc -l)" = "$NPATHS"
'

test_expect_success 'a remount over the warm cache fetches no metadata at all' '
	n0=$(grep -c "/manifests/sha256:\|/blobs/$BLOB" "$TRASH/registry-reg/log") &&
	mount_store "$REG/store" "$TRASH/m1" closure=hello &&
	walk "$TRASH/m1" &&
	n1=$(grep -c "/manifests/sha256:\|/blobs/$BLOB" "$TRASH/registry-reg/log") &&
	test "$n0" = "$n1" &&
	unmount_store "$TRASH/m1"
'

test_expect_success 'a re-push of the unchanged closure keeps the same index' '
	before=$(json_get manifests/hello $IDX_MT "len(x[\"manifests\"])") &&
	d0=$(curl -fsSI -H "Accept: $IDX_MT" "http://$REG/v2/store/manifests/hello" | grep -i docker-content-digest) &&
	nixoci push --tag hello "$REG/store" "$SMALL" &&
	d1=$(curl -fsSI -H "Accept: $IDX_MT" "http://$REG/v2/store/manifests/hello" | grep -i docker-content-digest) &&
	test "$d0" = "$d1" &&
	test "$before" = "$((NPATHS + 1))"
'

# hint_index TAG DIGEST SIZE: the index "hello" under TAG with the metadata
# blob hint set to DIGEST and SIZE ("-": the hint removed)
hint_index() {
	curl -fsS -H "Accept: $IDX_MT" "http://$REG/v2/store/manifests/hello" >hidx.json &&
	/usr/bin/python3 -c "
import json, sys
x = json.load(open(\"hidx.json\"))
for d in x[\"manifests\"]:
    a = d.get(\"annotations\", {})
    if \"dev.nixoci.closure-meta\" in a:
        if sys.argv[1] == \"-\":
            del a[\"dev.nixoci.closure-meta-blob\"], a[\"dev.nixoci.closure-meta-blob-size\"]
        else:
            a[\"dev.nixoci.closure-meta-blob\"] = sys.argv[1]
            a[\"dev.nixoci.closure-meta-blob-size\"] = sys.argv[2]
open(\"hidx2.json\", \"w\").write(json.dumps(x, separators=(\",\", \":\"), sort_keys=True))
" "$2" "$3" &&
	curl -fsS -X PUT -H "Content-Type: $IDX_MT" --data-binary @hidx2.json \
		"http://$REG/v2/store/manifests/$1"
}

test_expect_success 'the index names the metadata blob its manifest names (a hint)' '
	curl -fsS "http://$REG/v2/store/blobs/$BLOB" | wc -c >blob.size &&
	json_get manifests/hello $IDX_MT "[(d[\"annotations\"][\"dev.nixoci.closure-meta-blob\"], d[\"annotations\"][\"dev.nixoci.closure-meta-blob-size\"]) for d in x[\"manifests\"] if \"dev.nixoci.closure-meta\" in d[\"annotations\"]][0]" >hint.out &&
	test "$(cat hint.out)" = "('"'"'$BLOB'"'"', '"'"'$(cat blob.size)'"'"')"
'

test_expect_success 'a mount fetches the blob beside its manifest, not after it' '
	start_faultproxy "$REG" &&
	fault_set "mode=stall match=/manifests/$META" &&
	# the manifest is answered only 2 s after the mount starts
	{ (sleep 2 && fault_set "mode=pass") & } &&
	release=$! &&
	MOUNT_LOG_ALLOW= &&
	mount_store "$PROXY/store" "$TRASH/m7" "closure=hello,cache=$TRASH/c7" &&
	wait "$release" &&
	walk "$TRASH/m7" &&
	check_mount_hashes "$TRASH/m7" $SMALL_CLOSURE &&
	! grep -q "not using its metadata blob" "${MOUNT_LOG[$TRASH/m7]}" &&
	b=$(grep -n "GET /v2/store/blobs/$BLOB .*-> 20[06] pass" "$PROXY_LOG" | head -n 1 | cut -d: -f1) &&
	m=$(grep -n "GET /v2/store/manifests/$META .*-> 200 pass" "$PROXY_LOG" | head -n 1 | cut -d: -f1) &&
	say "blob answered at proxy log line $b, its manifest at $m" &&
	test -n "$b" && test -n "$m" && test "$b" -lt "$m" &&
	unmount_store "$TRASH/m7"
'

test_expect_success 'a hint that disagrees with the manifest: one log line, the manifest'"'"'s blob' '
	# another valid blob of the registry: the first path'"'"'s TOC
	other=$(json_get "manifests/$(meta_digest hello)" $MAN_MT "x[\"config\"][\"digest\"]") &&
	osize=$(curl -fsS "http://$REG/v2/store/blobs/$other" | wc -c) &&
	hint_index hello-hint "$other" "$osize" &&
	MOUNT_LOG_ALLOW="its index names another metadata blob than its metadata manifest does" &&
	mount_store "$REG/store" "$TRASH/m8" "closure=hello-hint,cache=$TRASH/c8" &&
	walk "$TRASH/m8" &&
	check_mount_hashes "$TRASH/m8" $SMALL_CLOSURE &&
	log=${MOUNT_LOG[$TRASH/m8]} &&
	test "$(grep -c "its index names another metadata blob" "$log")" = 1 &&
	! grep -q "not using its metadata blob" "$log" &&
	unmount_store "$TRASH/m8"
'

for bad in "sha256:xyz 10" "$BLOB 0" "$BLOB 12x" "$BLOB 99999999999999"; do
	test_expect_success "a malformed hint ($bad): one log line, the manifest's blob" '
		hint_index hello-hint $bad &&
		MOUNT_LOG_ALLOW="ignoring its dev.nixoci.closure-meta-blob" &&
		mount_store "$REG/store" "$TRASH/m9" "closure=hello-hint,cache=$TRASH/c9" &&
		walk "$TRASH/m9" &&
		log=${MOUNT_LOG[$TRASH/m9]} &&
		! grep -q "not using its metadata blob" "$log" &&
		test "$(grep -c "ignoring its dev.nixoci.closure-meta-blob" "$log")" -ge 1 &&
		unmount_store "$TRASH/m9" &&
		rm -rf "$TRASH/c9"
	'
done

# publish_meta RAW TAG: RAW (an inflated closure metadata blob) compressed
# and uploaded with its own valid digest, a metadata manifest naming it, and
# a copy of the index "hello" that lists that manifest, under TAG.
publish_meta() {
	local raw=$1 tag=$2 bd bm loc sep
	zstd -q -f "$raw" -o "$raw.zst" &&
	bd=sha256:$(sha256sum <"$raw.zst" | cut -d" " -f1) &&
	loc=$(curl -fsS -X POST -D - -o /dev/null "http://$REG/v2/store/blobs/uploads/" |
		sed -n "s/^[Ll]ocation: *//p" | tr -d "\r") &&
	case $loc in http*) ;; *) loc=http://$REG$loc ;; esac &&
	case $loc in *\?*) sep="&" ;; *) sep="?" ;; esac &&
	curl -fsS -X PUT -H "Content-Type: application/octet-stream" --data-binary @"$raw.zst" \
		"$loc${sep}digest=$bd" &&
	curl -fsS -H "Accept: $MAN_MT" "http://$REG/v2/store/manifests/$META" >meta.json &&
	/usr/bin/python3 -c "
import json, sys
m = json.load(open(\"meta.json\"))
m[\"layers\"][0][\"digest\"] = sys.argv[1]
m[\"layers\"][0][\"size\"] = int(sys.argv[2])
open(\"badmeta.json\", \"w\").write(json.dumps(m, separators=(\",\", \":\"), sort_keys=True))
" "$bd" "$(stat -c %s "$raw.zst")" &&
	bm=sha256:$(sha256sum <badmeta.json | cut -d" " -f1) &&
	curl -fsS -X PUT -H "Content-Type: $MAN_MT" --data-binary @badmeta.json \
		"http://$REG/v2/store/manifests/$bm" &&
	curl -fsS -H "Accept: $IDX_MT" "http://$REG/v2/store/manifests/hello" >idx.json &&
	/usr/bin/python3 -c "
import json, sys
x = json.load(open(\"idx.json\"))
for d in x[\"manifests\"]:
    if \"dev.nixoci.closure-meta\" in d.get(\"annotations\", {}):
        d[\"digest\"] = sys.argv[1]
        d[\"size\"] = int(sys.argv[2])
        # the blob it names, as a writer says it
        d[\"annotations\"][\"dev.nixoci.closure-meta-blob\"] = sys.argv[3]
        d[\"annotations\"][\"dev.nixoci.closure-meta-blob-size\"] = sys.argv[4]
open(\"badidx.json\", \"w\").write(json.dumps(x, separators=(\",\", \":\"), sort_keys=True))
" "$bm" "$(stat -c %s badmeta.json)" "$bd" "$(stat -c %s "$raw.zst")" &&
	curl -fsS -X PUT -H "Content-Type: $IDX_MT" --data-binary @badidx.json \
		"http://$REG/v2/store/manifests/$tag"
}

# A blob with a valid digest whose items disagree with the index: the last
# path's item is dropped, the blob re-uploaded and a new metadata manifest
# and index (tag hello-bad) point at it.
test_expect_success 'a blob that disagrees with the index: fallback, right bytes' '
	curl -fsS "http://$REG/v2/store/blobs/$BLOB" | zstd -dc >meta.raw &&
	/usr/bin/python3 - meta.raw bad.raw <<-\EOF &&
	import struct, sys
	raw = open(sys.argv[1], "rb").read()
	n = struct.unpack_from("<I", raw, 16)[0]
	items = [struct.unpack_from("<QII", raw, 32 + 16 * i) for i in range(n)]
	keep = items[:-1]
	out = bytearray(raw[:16] + struct.pack("<I", n - 1) + raw[20:32])
	off = 32 + 16 * len(keep)
	data = b""
	for o, ml, tl in keep:
	    out += struct.pack("<QII", off + len(data), ml, tl)
	    data += raw[o:o + ml + tl]
	open(sys.argv[2], "wb").write(bytes(out) + data)
	EOF
	publish_meta bad.raw hello-bad &&
	MOUNT_LOG_ALLOW="not using its metadata blob \(the blob disagrees with the closure index\)" &&
	mount_store "$REG/store" "$TRASH/m2" closure=hello-bad &&
	walk "$TRASH/m2" &&
	check_mount_hashes "$TRASH/m2" $SMALL_CLOSURE &&
	grep -q "not using its metadata blob (the blob disagrees with the closure index)" \
		"${MOUNT_LOG[$TRASH/m2]}" &&
	unmount_store "$TRASH/m2"
'

# The TOCs are checked at each path's first load, not at mount: a blob
# (valid digest, the index's manifests) in which one path's TOC is not its
# manifest's is used for every other path; that path's TOC is loaded on its
# own, with one log line, and every byte is right.
test_expect_success 'a blob with a wrong TOC: that path loads on its own, right bytes' '
	/usr/bin/python3 - meta.raw badtoc.raw <<-\EOF &&
	import struct, sys
	raw = bytearray(open(sys.argv[1], "rb").read())
	o, ml, tl = struct.unpack_from("<QII", raw, 32)
	raw[o + ml + tl // 2] ^= 0x55
	open(sys.argv[2], "wb").write(bytes(raw))
	EOF
	publish_meta badtoc.raw hello-badtoc &&
	MOUNT_LOG_ALLOW="the TOC of /nix/store/[^ ]* is not its manifest.s; loading it on its own" &&
	mount_store "$REG/store" "$TRASH/m6" closure=hello-badtoc &&
	before=$(reg_requests) &&
	walk "$TRASH/m6" &&
	after=$(reg_requests) &&
	say "requests during the walk: $((after - before)) (the one TOC)" &&
	test "$((after - before))" = 1 &&
	check_mount_hashes "$TRASH/m6" $SMALL_CLOSURE &&
	log=${MOUNT_LOG[$TRASH/m6]} &&
	! grep -q "not using its metadata blob" "$log" &&
	test "$(grep -c "is not its manifest.s; loading it on its own" "$log")" = 1 &&
	test "$(nixoci stats "$TRASH/m6" | awk "\$1 == \"verify_failures\" { print \$2 }")" = 1 &&
	unmount_store "$TRASH/m6"
'

test_expect_success 'a tampered blob (one byte flipped in the registry): fallback, right bytes' '
	f=$(registry_blob_path "$BLOB") &&
	cp "$f" blob.orig &&
	/usr/bin/python3 -c "
import sys
f = open(sys.argv[1], \"r+b\")
d = f.read()
f.seek(len(d) // 2)
f.write(bytes([d[len(d) // 2] ^ 0x55]))" "$f" &&
	MOUNT_LOG_ALLOW="not using its metadata blob \(the blob does not match its digest\)" &&
	mount_store "$REG/store" "$TRASH/m3" closure=hello &&
	walk "$TRASH/m3" &&
	check_mount_hashes "$TRASH/m3" $SMALL_CLOSURE &&
	grep -q "the blob does not match its digest" "${MOUNT_LOG[$TRASH/m3]}" &&
	unmount_store "$TRASH/m3" &&
	cp blob.orig "$f"
'

test_expect_success 'a missing blob (deleted from the registry): fallback, right bytes' '
	curl -fsS -X DELETE "http://$REG/v2/store/blobs/$BLOB" &&
	! curl -fsS -o /dev/null "http://$REG/v2/store/blobs/$BLOB" &&
	MOUNT_LOG_ALLOW="not using its metadata blob \(the blob is missing\)|blob.*not found|404" &&
	mount_store "$REG/store" "$TRASH/m4" closure=hello &&
	walk "$TRASH/m4" &&
	check_mount_hashes "$TRASH/m4" $SMALL_CLOSURE &&
	grep -q "the blob is missing" "${MOUNT_LOG[$TRASH/m4]}" &&
	unmount_store "$TRASH/m4"
'

test_expect_success 'a closure pushed before the metadata blob existed still mounts' '
	curl -fsS -H "Accept: $IDX_MT" "http://$REG/v2/store/manifests/hello" |
		/usr/bin/python3 -c "
import json, sys
x = json.load(sys.stdin)
x[\"manifests\"] = [d for d in x[\"manifests\"]
                    if \"dev.nixoci.closure-meta\" not in d.get(\"annotations\", {})]
sys.stdout.write(json.dumps(x, separators=(\",\", \":\"), sort_keys=True))" >oldidx.json &&
	curl -fsS -X PUT -H "Content-Type: $IDX_MT" --data-binary @oldidx.json \
		"http://$REG/v2/store/manifests/hello-old" &&
	MOUNT_LOG_ALLOW= &&
	mount_store "$REG/store" "$TRASH/m5" closure=hello-old &&
	walk "$TRASH/m5" &&
	check_mount_hashes "$TRASH/m5" $SMALL_CLOSURE &&
	unmount_store "$TRASH/m5"
'

test_done
