#!/bin/bash
test_description='loading a path loads its references in the background; unmount during that prefetch leaves nothing behind'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

# manifest GETs the proxy has seen begin (delay mode logs each start)
begun() { grep -c "begin GET /v2/store/manifests/" "$PROXY_LOG" 2>/dev/null || true; }

test_expect_success 'setup: registry, slow proxy, the CPython closure pushed' '
	start_registry &&
	build_big_closure &&
	nixoci push --no-pack --jobs 4 "$REG/store" "$BIG" &&
	start_faultproxy "$REG" &&
	NREFS=$(nix-store --query --references "$BIG" | wc -l) &&
	test "$NREFS" -ge 3
'

test_expect_success 'a lookup of the root loads its references without being asked' '
	mount_store "$REG/store" "$TRASH/m1" &&
	test -d "$TRASH/m1/${BIG##*/}" &&
	test_wait_for 30 eval "test \"\$(nixoci stats \"$TRASH/m1\" 2>/dev/null | sed -n \"s/^paths_loaded[: ]*//p\" | head -n1)\" -gt 1" &&
	unmount_store "$TRASH/m1"
'

# The protocol's least for a path nobody has seen: its manifest (by tag),
# then its TOC (whose digest only the manifest names); nothing else.
test_expect_success 'a plain mount loads a path with one manifest GET and one TOC GET' '
	h=${BIG##*/} && h=${h%%-*} &&
	toc=$(curl -fsS -H "Accept: application/vnd.oci.image.manifest.v1+json" \
		"http://$REG/v2/store/manifests/$h" |
		/usr/bin/python3 -c "import json, sys; print(json.load(sys.stdin)[\"layers\"][1][\"digest\"])") &&
	log=$TRASH/registry-reg/log &&
	off=$(wc -l <"$log") &&
	mount_store "$REG/store" "$TRASH/m0" &&
	test -d "$TRASH/m0/${BIG##*/}" &&
	unmount_store "$TRASH/m0" &&
	tail -n +$((off + 1)) "$log" >new.log &&
	test "$(grep -c "\"[A-Z]* /v2/store/manifests/$h " new.log)" = 1 &&
	test "$(grep -c "\"GET /v2/store/manifests/$h " new.log)" = 1 &&
	test "$(grep -c "\"[A-Z]* /v2/store/blobs/$toc " new.log)" = 1
'

test_expect_success 'unmount during reference prefetch: daemon exits 0, no request after it' '
	fault_set "mode=pass delay=400" &&
	mount_store "$PROXY/store" "$TRASH/m2" &&
	test -d "$TRASH/m2/${BIG##*/}" &&
	test_wait_for 30 eval "test \$(begun) -ge 3" &&
	n_mid=$(begun) &&
	unmount_store "$TRASH/m2" &&
	n_end=$(begun) &&
	sleep 1 &&
	test "$(begun)" = "$n_end" &&
	say "manifest requests: $n_mid when unmounting, $n_end at exit (closure: $(echo "$BIG_CLOSURE" | wc -l) paths)" &&
	test "$n_end" -lt "$(echo "$BIG_CLOSURE" | wc -l)"
'

test_done
