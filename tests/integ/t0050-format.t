#!/bin/bash
test_description='format v1 (docs/format.md) as seen by stock tools; verify; closures'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl zstd bwrap /usr/bin/python3
test_require_nix
test_require_binaries

command -v skopeo >/dev/null && test_set_prereq SKOPEO
[ -c /dev/fuse ] && command -v fusermount3 >/dev/null && test_set_prereq FUSE

CHECK="/usr/bin/python3 $TEST_LIB_DIR/check-format.py"
path_info() { nix --extra-experimental-features nix-command path-info --json -r "$@"; }

# manifest_layer REF-REPO HASHPART N: digest of layer N (0 NAR, 1 TOC).
manifest_layer() {
	curl -fsS -H "Accept: application/vnd.oci.image.manifest.v1+json" \
		"http://$REG/v2/$1/manifests/$2" |
		/usr/bin/python3 -c "import json, sys; print(json.load(sys.stdin)[\"layers\"][$3][\"digest\"])"
}

# flip_byte FILE: change one byte in the middle of FILE
flip_byte() {
	/usr/bin/python3 -c "
import sys
f = open(sys.argv[1], \"r+b\")
data = f.read()
i = len(data) // 2
f.seek(i)
f.write(bytes([data[i] ^ 0x55]))" "$1"
}

test_expect_success 'setup: registry, the CPython closure and the small one' '
	start_registry &&
	build_big_closure &&
	build_small_closure &&
	path_info "$BIG" >big.json &&
	path_info "$SMALL" >small.json &&
	NPATHS=$(echo "$BIG_CLOSURE" | wc -l) &&
	test "$NPATHS" -ge 100
'

test_expect_success 'push both, each with a closure tag' '
	nixoci push --no-pack --jobs 4 --tag python-env "$REG/store" "$BIG" &&
	nixoci push --no-pack --tag hello "$REG/store" "$SMALL"
'

test_expect_success 'every path: OCI 1.1 artifact tagged by hash part, seek table, TOC, stock restore' '
	$CHECK paths "$REG" store "$TRASH" <big.json >check.out 2>&1
	rc=$?
	grep -v "^ok " check.out
	test $rc = 0 &&
	test "$(grep -c "^ok /nix/store/" check.out)" = "$NPATHS"
'

test_expect_success 'the small closure passes the same checks' '
	$CHECK paths "$REG" store "$TRASH" <small.json
'

test_expect_success 'closure indexes list every path by digest and name the roots' '
	$CHECK index "$REG" store python-env "$TRASH" "$BIG" <big.json &&
	$CHECK index "$REG" store hello "$TRASH" "$SMALL" <small.json
'

test_expect_success 'nixoci verify passes on the intact closure' '
	nixoci verify "$REG/store" $BIG_CLOSURE >verify.out 2>&1 &&
	test "$(grep -c "^ok /nix/store/" verify.out)" = "$NPATHS"
'

test_expect_success 'verify accepts base names too' '
	nixoci verify "$REG/store" "${SMALL##*/}" >v.out 2>&1 &&
	grep -qx "ok $SMALL" v.out
'

test_expect_success SKOPEO,FUSE 'skopeo copy --all of a closure tag; -o closure= mounts the copy' '
	start_registry copy &&
	skopeo copy --all --src-tls-verify=false --dest-tls-verify=false \
		"docker://$REG_reg/store:hello" "docker://$REG_copy/mirror:hello" &&
	mount_store "$REG_copy/mirror" "$TRASH/copy" closure=hello &&
	ls "$TRASH/copy" | sort >root.ls &&
	echo "$SMALL_CLOSURE" | xargs -n1 basename | sort >want.ls &&
	test_cmp want.ls root.ls &&
	check_mount_hashes "$TRASH/copy" $SMALL_CLOSURE &&
	run_sandboxed "$TRASH/copy" "$SMALL/bin/hello" >hello.out &&
	grep -q "Hello from a lazily mounted" hello.out &&
	unmount_store "$TRASH/copy"
'

test_expect_success FUSE 'a closure mount hides paths outside the closure' '
	mount_store "$REG_reg/store" "$TRASH/closure" closure=hello &&
	test -d "$TRASH/closure/${SMALL##*/}" &&
	! stat "$TRASH/closure/${BIG##*/}" &&
	unmount_store "$TRASH/closure"
'

test_expect_success 'corrupt one byte of a NAR blob: verify fails naming the path' '
	REG=$REG_reg REG_STORAGE=$REG_STORAGE_reg &&
	VICTIM=$(echo "$BIG_CLOSURE" | grep -- "-bin$" | head -n 1) &&
	h=${VICTIM##*/} &&
	nar=$(manifest_layer store ${h:0:32} 0) &&
	flip_byte "$(registry_blob_path $nar)" &&
	rc=0 && nixoci verify "$REG/store" "$VICTIM" >bad.out 2>&1 || rc=$?
	cat bad.out &&
	test $rc = 1 &&
	grep -q "^nixoci: verify $VICTIM: " bad.out
'

test_expect_success 'verify of the whole closure fails and names only that path' '
	rc=0 && nixoci verify "$REG/store" $BIG_CLOSURE >bad-all.out 2>&1 || rc=$?
	grep -v "^ok " bad-all.out
	test $rc = 1 &&
	test "$(grep -c "^nixoci: verify " bad-all.out)" = 1 &&
	grep -q "^nixoci: verify $VICTIM: " bad-all.out &&
	test "$(grep -c "^ok /nix/store/" bad-all.out)" = "$((NPATHS - 1))"
'

test_expect_success 'corrupt the TOC blob of another path: verify fails naming it' '
	VICTIM2=$(echo "$SMALL_CLOSURE" | grep -- -hello-data-) &&
	h=${VICTIM2##*/} &&
	toc=$(manifest_layer store ${h:0:32} 1) &&
	flip_byte "$(registry_blob_path $toc)" &&
	rc=0 && nixoci verify "$REG/store" "$VICTIM2" >bad2.out 2>&1 || rc=$?
	cat bad2.out &&
	test $rc = 1 &&
	grep -q "^nixoci: verify $VICTIM2: " bad2.out
'

test_expect_success FUSE 'the daemon never serves the corrupted bytes' '
	MOUNT_LOG_ALLOW="${VICTIM##*/}|${VICTIM2##*/}|sha256:|digest|verif" &&
	mount_store "$REG/store" "$TRASH/bad" &&
	! nix-store --dump "$TRASH/bad/${VICTIM##*/}" >/dev/null &&
	! cat "$TRASH/bad/${VICTIM2##*/}/share/hello/greeting.txt" &&
	nixoci stats "$TRASH/bad" >bad.stats &&
	cat bad.stats &&
	test "$(awk "/^verify_failures /{print \$2}" bad.stats)" -gt 0 &&
	check_mount_hashes "$TRASH/bad" "$BIG" &&
	unmount_store "$TRASH/bad"
'

test_done
