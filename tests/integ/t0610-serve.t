#!/bin/bash
test_description='nixoci serve: Nix copies and substitutes from a registry, signatures checked, tampered blobs fail'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl /usr/bin/python3
test_require_nix
test_require_binaries

nixcmd() { nix --extra-experimental-features nix-command "$@"; }
# A fresh Nix client state per call: no narinfo cache shared across tests.
nix_fresh() { XDG_CACHE_HOME=$TRASH/xdg-$RANDOM$RANDOM "$@"; }

# same_dumps ROOT: every path of the small closure in the chroot store ROOT
# dumps to the bytes of the original
same_dumps() {
	local p
	for p in $SMALL_CLOSURE; do
		cmp <(nix-store --dump "$p") <(nix-store --dump "$1/nix/store/${p##*/}") ||
			{ echo "differs: $p"; return 1; }
	done
}

# s: packed (format 2, the default); s1: --no-pack, every path its own NAR
# blob, which is what --redirect sends Nix to
test_expect_success 'setup: registry, small closure pushed and signed, serve' '
	start_registry &&
	build_small_closure &&
	nix-store --generate-binary-cache-key cache-1 sk pk &&
	nix-store --generate-binary-cache-key other-1 sk-other pk-other &&
	PK=$(cat pk) && PK_OTHER=$(cat pk-other) &&
	nixoci push --sign-key sk "$REG/s" "$SMALL" &&
	nixoci info "$REG/s" "$SMALL" | grep "^Pack: " &&
	nixoci push --no-pack --sign-key sk "$REG/s1" "$SMALL" &&
	start_serve serve.out "$REG/s" &&
	S_URL=$SERVE_URL &&
	curl -fsS "$SERVE_URL/nix-cache-info" | grep -q "^StoreDir: /nix/store$"
'

test_expect_success 'narinfo: the manifest as Nix writes it; unknown paths are 404' '
	h=$(basename "$SMALL" | cut -c1-32) &&
	curl -fsS "$SERVE_URL/$h.narinfo" >ni &&
	cat ni &&
	grep -q "^StorePath: $SMALL$" ni &&
	grep -q "^Compression: zstd$" ni &&
	grep -q "^NarHash: $(nix-store --query --hash "$SMALL")$" ni &&
	grep -q "^Sig: cache-1:" ni &&
	test "$(curl -s -o /dev/null -w "%{http_code}" "$SERVE_URL/00000000000000000000000000000000.narinfo")" = 404 &&
	test "$(curl -s -o /dev/null -w "%{http_code}" -X PUT "$SERVE_URL/$h.narinfo")" = 405
'

test_expect_success 'nix copy --from the facade, signatures checked with the key trusted' '
	nix_fresh nixcmd copy --from "$SERVE_URL" --to "$TRASH/root1" \
		--option trusted-public-keys "$PK" --option require-sigs true "$SMALL" &&
	same_dumps "$TRASH/root1" &&
	nix-store --store "$TRASH/root1" --verify-path $SMALL_CLOSURE
'

test_expect_success 'nix copy trusting another key only: refused by Nix' '
	! nix_fresh nixcmd copy --from "$SERVE_URL" --to "$TRASH/root2" \
		--option trusted-public-keys "$PK_OTHER" --option require-sigs true "$SMALL" 2>err &&
	cat err &&
	grep -q "lacks a valid signature" err &&
	! nix-store --store "$TRASH/root2" --verify-path "$SMALL" 2>/dev/null
'

test_expect_success 'nix-store --realise with the facade as the only substituter' '
	nix_fresh nix-store --store "$TRASH/root3" --realise "$SMALL" \
		--option substituters "$SERVE_URL" --option trusted-public-keys "$PK" \
		--option require-sigs true >out &&
	cat out &&
	grep -q "^$SMALL$" out &&
	same_dumps "$TRASH/root3"
'

test_expect_success 'serve --redirect: Nix fetches the blob from the registry (seek table and all)' '
	start_serve serve-r.out "$REG/s1" --redirect &&
	nix_fresh nixcmd copy --from "$SERVE_URL" --to "$TRASH/root4" \
		--option trusted-public-keys "$PK" "$SMALL" &&
	same_dumps "$TRASH/root4" &&
	grep -q "GET /v2/s1/blobs/sha256:.*Nix/" "$TRASH/registry-reg/log"
'

test_expect_success 'serve --redirect, packed paths: served, never redirected to their pack' '
	start_serve serve-rp.out "$REG/s" --redirect &&
	nix_fresh nixcmd copy --from "$SERVE_URL" --to "$TRASH/root4p" \
		--option trusted-public-keys "$PK" "$SMALL" &&
	same_dumps "$TRASH/root4p" &&
	! grep "GET /v2/s/blobs/sha256:.*Nix/" "$TRASH/registry-reg/log"
'

# tamper BLOB OFFSET: flip the byte at OFFSET of the registry'"'"'s copy of
# blob BLOB (sha256:HEX), its length unchanged
tamper() {
	local blob size
	blob=$(registry_blob_path "$1") &&
	size=$(stat -c %s "$blob") &&
	/usr/bin/python3 -c "import sys
p = sys.argv[1]; b = bytearray(open(p, \"rb\").read()); b[int(sys.argv[2])] ^= 0xff
open(p, \"wb\").write(b)" "$blob" "$2" &&
	test "$(stat -c %s "$blob")" = "$size"
}

test_expect_success 'a tampered NAR blob in the registry: Nix copy fails, nothing wrong lands' '
	start_serve serve1.out "$REG/s1" &&
	data=$(echo "$SMALL_CLOSURE" | grep hello-data) &&
	read -r d size < <(nixoci info "$REG/s1" "$data" | sed -n "s/^NarLayer: \(sha256:[0-9a-f]*\) \([0-9]*\)$/\1 \2/p") &&
	# one byte changed in the middle of the frames
	tamper "$d" $((size / 3)) &&
	! nix_fresh nixcmd copy --from "$SERVE_URL" --to "$TRASH/root5" \
		--option download-attempts 1 \
		--option trusted-public-keys "$PK" "$SMALL" 2>err &&
	tail -n 5 err &&
	! nix-store --store "$TRASH/root5" --verify-path "$data" 2>/dev/null &&
	grep -q "${data}: frame .* does not match its TOC digest" serve1.out.log
'

test_expect_success 'a tampered NAR range of a pack: Nix copy fails, nothing wrong lands' '
	data=$(echo "$SMALL_CLOSURE" | grep hello-data) &&
	nixoci info "$REG/s" "$data" | grep "^Pack: " &&
	read -r d off len < <(nixoci info "$REG/s" "$data" |
		sed -n "s/^Pack: \(sha256:[0-9a-f]*\) [0-9]* nar \([0-9]*\)+\([0-9]*\) .*/\1 \2 \3/p") &&
	# one byte changed in the middle of the path'"'"'s frames in the pack
	tamper "$d" $((off + len / 3)) &&
	! nix_fresh nixcmd copy --from "$S_URL" --to "$TRASH/root6" \
		--option download-attempts 1 \
		--option trusted-public-keys "$PK" "$SMALL" 2>err &&
	tail -n 5 err &&
	! nix-store --store "$TRASH/root6" --verify-path "$data" 2>/dev/null &&
	grep -q "${data}: frame .* does not match its TOC digest" serve.out.log
'

test_expect_success 'bad arguments' '
	rc=0 && nixoci serve --listen nowhere "$REG/s" 2>err || rc=$? &&
	test $rc = 2 && grep -q "bad --listen" err &&
	rc=0 && nixoci serve 2>err || rc=$? &&
	test $rc = 2 && grep -q "missing REGISTRY/REPO" err
'

test_done
