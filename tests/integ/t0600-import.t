#!/bin/bash
test_description='nixoci import: binary caches made by nix copy (xz, zstd), signatures kept, bad inputs refused'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

# tag_absent REPO TAG: the registry has no manifest under TAG
tag_absent() {
	test "$(curl -s -o /dev/null -w '%{http_code}' \
		-H 'Accept: application/vnd.oci.image.index.v1+json' \
		"http://$REG/v2/$1/manifests/$2")" = 404
}

test_expect_success 'setup: registry, small closure, two keys, xz and zstd caches' '
	start_registry &&
	build_small_closure &&
	nix-store --generate-binary-cache-key cache-1 sk pk &&
	nix-store --generate-binary-cache-key other-1 sk-other pk-other &&
	PK=$(cat pk) && PK_OTHER=$(cat pk-other) &&
	nix --extra-experimental-features nix-command copy \
		--to "file://$TRASH/cache-xz?secret-key=$TRASH/sk" $SMALL &&
	nix --extra-experimental-features nix-command copy \
		--to "file://$TRASH/cache-zstd?compression=zstd&secret-key=$TRASH/sk" $SMALL &&
	ls cache-xz/nar | grep -q "\.nar\.xz$" &&
	ls cache-zstd/nar | grep -q "\.nar\.zst$" &&
	grep -q "^Sig: cache-1:" cache-xz/*.narinfo &&
	start_http_dir "$TRASH/cache-xz" && XZ_URL=$HTTP_URL &&
	start_http_dir "$TRASH/cache-zstd" && ZSTD_URL=$HTTP_URL
'

test_expect_success 'import from the xz cache over HTTP, with the key trusted' '
	nixoci import --trusted-public-keys "$PK" --tag small "$XZ_URL" "$REG/xz" "$SMALL" >out &&
	cat out &&
	n=$(echo "$SMALL_CLOSURE" | wc -l) &&
	grep -q "^imported $n paths ($n uploaded, 0 skipped)" out
'

test_expect_success 'manifests carry the narinfo: Sig, References, Deriver' '
	nixoci info "$REG/xz" "$SMALL" >info &&
	cat info &&
	grep -q "cache-1:" info &&
	grep -q "^Deriver: .*\.drv" info &&
	for p in $SMALL_CLOSURE; do
		nixoci info "$REG/xz" "$p" >i1 || return 1
		want=$(nix-store --query --references "$p" | xargs -rn1 basename | sort | tr "\n" " " | sed "s/ \$//")
		got=$(sed -n "s/^References: //p" i1)
		test "$got" = "$want" || { echo "refs of $p: $got != $want"; return 1; }
	done
'

test_expect_success 'a mount trusting the cache key serves every path; bytes equal nix-store --dump' '
	mount_store "$REG/xz" "$TRASH/m-xz" "trusted-public-keys=$PK" &&
	check_mount_hashes "$TRASH/m-xz" $SMALL_CLOSURE &&
	for p in $SMALL_CLOSURE; do
		cmp <(nix-store --dump "$p") <(nix-store --dump "$TRASH/m-xz/${p##*/}") || return 1
	done &&
	unmount_store "$TRASH/m-xz"
'

test_expect_success 'import again: everything skipped, nothing uploaded' '
	nixoci import --tag small "$XZ_URL" "$REG/xz" "$SMALL" >out2 &&
	cat out2 &&
	grep -q "(0 uploaded, $(echo "$SMALL_CLOSURE" | wc -l) skipped), 0 bytes" out2
'

test_expect_success 'import from the zstd cache over file://, mount by closure, compare' '
	nixoci import --tag small "file://$TRASH/cache-zstd" "$REG/zstd" "$SMALL" &&
	mount_store "$REG/zstd" "$TRASH/m-zstd" "trusted-public-keys=$PK,closure=small" &&
	for p in $SMALL_CLOSURE; do
		cmp <(nix-store --dump "$p") <(nix-store --dump "$TRASH/m-zstd/${p##*/}") || return 1
	done &&
	unmount_store "$TRASH/m-zstd"
'

# bad inputs: a copy of the xz cache, broken one way each
broken_cache() {
	rm -rf "$TRASH/bad" && cp -r "$TRASH/cache-xz" "$TRASH/bad"
}
ROOT_HASH() { basename "$SMALL" | cut -c1-32; }

test_expect_success 'a narinfo with a wrong NarHash: error naming the path, no tag' '
	broken_cache &&
	ni=bad/$(ROOT_HASH).narinfo &&
	other=$(nix-store --query --hash "$(echo "$SMALL_CLOSURE" | grep -v "$SMALL" | head -n 1)") &&
	sed -i "s|^NarHash: .*|NarHash: $other|" "$ni" &&
	! nixoci import --tag t "file://$TRASH/bad" "$REG/bad1" "$SMALL" 2>err &&
	cat err &&
	grep -q "$SMALL: NAR hash mismatch" err &&
	tag_absent bad1 t
'

test_expect_success 'a truncated .nar.xz: error naming the path, no tag' '
	broken_cache &&
	nar=bad/$(sed -n "s/^URL: //p" bad/$(ROOT_HASH).narinfo) &&
	size=$(stat -c %s "$nar") &&
	truncate -s $((size / 2)) "$nar" &&
	! nixoci import --tag t "file://$TRASH/bad" "$REG/bad2" "$SMALL" 2>err &&
	cat err &&
	grep -q "truncated" err &&
	grep -q "$SMALL: .*not a valid xz-compressed NAR" err &&
	tag_absent bad2 t
'

test_expect_success 'a narinfo whose references are missing from the cache: error, nothing written' '
	broken_cache &&
	dep=$(nix-store --query --references "$SMALL" | grep -v "$SMALL" | head -n 1) &&
	dh=$(basename "$dep" | cut -c1-32) &&
	rm bad/$dh.narinfo &&
	! nixoci import --tag t "file://$TRASH/bad" "$REG/bad3" "$SMALL" 2>err &&
	cat err &&
	grep -q "$SMALL: the cache has no narinfo for $dh, a reference of it" err &&
	tag_absent bad3 t &&
	tag_absent bad3 "$(ROOT_HASH)"
'

test_expect_success 'signatures by an untrusted key only: refused, nothing written' '
	! nixoci import --trusted-public-keys "$PK_OTHER" --tag t "$XZ_URL" "$REG/bad4" "$SMALL" 2>err &&
	cat err &&
	grep -q "no signature by a trusted key" err &&
	tag_absent bad4 t &&
	tag_absent bad4 "$(ROOT_HASH)"
'

test_expect_success 'imported without key checking, a mount trusting only another key refuses it' '
	MOUNT_LOG_ALLOW="refus|untrusted|signature|not signed|unsigned|sig" &&
	mount_store "$REG/xz" "$TRASH/m-other" "trusted-public-keys=$PK_OTHER" &&
	! stat "$TRASH/m-other/${SMALL##*/}" 2>err &&
	grep -q "Permission denied" err &&
	unmount_store "$TRASH/m-other"
'

test_expect_success 'bad arguments: usage errors name them' '
	test_expect_code() { want=$1; shift; "$@"; test $? = $want; } &&
	test_expect_code 2 nixoci import "ftp://x" "$REG/x" "$SMALL" 2>err && grep -q "bad CACHE" err &&
	test_expect_code 2 nixoci import "$XZ_URL" "$REG/x" "not-a-path" 2>err && grep -q "bad PATH" err &&
	test_expect_code 1 nixoci import "$TRASH" "$REG/x" "$SMALL" 2>err && grep -q "nix-cache-info" err
'

test_done
