#!/bin/bash
test_description='predicted programs: what a script runs, fetched before it runs it

The first read of a script (#!) through the mount has its #! interpreter
and the store files on its exec lines resolved through the TOCs in the
background and fetched as a loaded library is (start, loadable segments),
each then predicting its own libraries, or, a script itself, what it runs.
Comments and other commands name nothing that is fetched, a name that
resolves nowhere is skipped, readahead=0 turns it off, and an unmount
while a predicted program is stalled exits 0. The pusher records each ELF
file'"'"'s dynamic section in its manifest (dev.nixoci.elf), so a predicted
program'"'"'s libraries go out before its own bytes arrive; without the
record they wait for them, and a malformed record is ignored with one log
line. Asserted from the registry'"'"'s side (the proxy log) and the counters.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp head
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt

# gets STOREPATH: NAR blob requests for the path the proxy answered so far
gets() { grep -c "GET /v2/sx/blobs/sha256:$(nar_digest sx "$1")[^ ]* range=.* -> " "$PROXY_LOG" || true; }

test_expect_success 'setup: two scripts, an interpreter, a program, their libraries; pushed, proxy' '
	start_registry &&
	OUTER=$(nix-build "$TEST_LIB_DIR/script.nix" "${NIX_BUILD_OPTS[@]}") &&
	closure=$(nix-store -qR "$OUTER") &&
	INNER=$(echo "$closure" | grep -- "-sx-inner$") &&
	INTERP=$(echo "$closure" | grep -- "-sx-interp$") &&
	BASE=$(echo "$closure" | grep -- "-sx-libbase$") &&
	TARGET=$(echo "$closure" | grep -- "-sx-target$") &&
	TLIB=$(echo "$closure" | grep -- "-sx-libtarget$") &&
	ASIDE=$(echo "$closure" | grep -- "-sx-aside$") &&
	# format 1: each path its own NAR blob, so the log says which was read
	nixoci push --no-pack "$REG/sx" "$OUTER" &&
	start_faultproxy "$REG" &&
	fault_set "mode=pass delay=50"
'

test_expect_success 'the first bytes of a script: the programs it runs and their libraries are fetched' '
	mount_store "$PROXY/sx" "$MNT" "cache=$TRASH/cache-1" &&
	head -c 64 "$MNT/${OUTER##*/}/bin/outer" >out &&
	head -c 64 "$OUTER/bin/outer" >want && cmp out want &&
	# the interpreter, the inner script, the program it execs
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_exec) -ge 3 ]" &&
	test_wait_for 30 eval "[ \$(gets $TLIB) -ge 1 ] && [ \$(gets $BASE) -ge 1 ]" &&
	test "$(gets "$INTERP")" -ge 1 && test "$(gets "$INNER")" -ge 1 &&
	test "$(gets "$TARGET")" -ge 1 &&
	# named in a comment and by an echo only: never fetched
	test "$(gets "$ASIDE")" = 0 &&
	test "$(stats_field "$MNT" predict_exec)" = 3 &&
	test "$(stats_field "$MNT" errors)" = 0
'

test_expect_success 'what was predicted reads from the cache, with the right bytes' '
	n0=$(grep -c "GET /v2/sx/blobs/" "$PROXY_LOG") &&
	cmp "$MNT/${INTERP##*/}/bin/interp" "$INTERP/bin/interp" &&
	cmp "$MNT/${INNER##*/}/bin/inner" "$INNER/bin/inner" &&
	cmp "$MNT/${TARGET##*/}/bin/tprog" "$TARGET/bin/tprog" &&
	cmp "$MNT/${TLIB##*/}/lib/libtarget.so.1" "$TLIB/lib/libtarget.so.1" &&
	cmp "$MNT/${BASE##*/}/lib/libbase.so.1" "$BASE/lib/libbase.so.1" &&
	test "$(grep -c "GET /v2/sx/blobs/" "$PROXY_LOG")" = "$n0" &&
	# each script once per mount: read again, it predicts nothing more
	cat "$MNT/${OUTER##*/}/bin/outer" "$MNT/${INNER##*/}/bin/inner" >/dev/null &&
	test "$(stats_field "$MNT" predict_exec)" = 3 &&
	unmount_store "$MNT" &&
	test "$(gets "$ASIDE")" = 0
'

test_expect_success 'the inner script read first: only what it runs' '
	mount_store "$PROXY/sx" "$MNT" "cache=$TRASH/cache-2" &&
	i0=$(gets "$INTERP") &&
	cat "$MNT/${INNER##*/}/bin/inner" >/dev/null &&
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_exec) -ge 1 ]" &&
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_libs) -ge 2 ]" &&
	test "$(stats_field "$MNT" predict_exec)" = 1 &&
	test "$(gets "$INTERP")" = "$i0" &&
	unmount_store "$MNT"
'

test_expect_success 'readahead=0: nothing predicted' '
	n0=$(gets "$TARGET") &&
	mount_store "$PROXY/sx" "$MNT" "cache=$TRASH/cache-3,readahead=0" &&
	cat "$MNT/${OUTER##*/}/bin/outer" "$MNT/${INNER##*/}/bin/inner" >/dev/null &&
	sleep 1 &&
	test "$(stats_field "$MNT" predict_exec)" = 0 &&
	unmount_store "$MNT" &&
	test "$(gets "$TARGET")" = "$n0"
'

test_expect_success 'unmount while a predicted program is stalled on the link: exit 0' '
	mount_store "$PROXY/sx" "$MNT" "cache=$TRASH/cache-4" &&
	fault_set "mode=stall match=/blobs/sha256:$(nar_digest sx "$TARGET")" &&
	head -c 64 "$MNT/${OUTER##*/}/bin/outer" >/dev/null &&
	test_wait_for 30 eval "grep -q \"fault:stall\" \"\$PROXY_LOG\"" &&
	unmount_store "$MNT" &&
	fault_set "mode=pass"
'

MT=application/vnd.oci.image.manifest.v1+json
# manifest_of STOREPATH: its manifest in repository sx, to stdout
manifest_of() { local h=${1##*/}; curl -fsS -H "Accept: $MT" "http://$REG/v2/sx/manifests/${h%%-*}"; }
# put_elf STOREPATH FILE VALUE: PUT FILE (a manifest) under the path'"'"'s tag
# with dev.nixoci.elf set to VALUE ("-": removed)
put_elf() {
	local h=${1##*/}
	/usr/bin/python3 -c "import json, sys
m = json.load(open(sys.argv[1]))
if sys.argv[2] == \"-\":
    del m[\"annotations\"][\"dev.nixoci.elf\"]
else:
    m[\"annotations\"][\"dev.nixoci.elf\"] = sys.argv[2]
sys.stdout.write(json.dumps(m, separators=(\",\", \":\"), sort_keys=True))" "$2" "$3" >put.json &&
	curl -fsS -X PUT -H "Content-Type: $MT" --data-binary @put.json \
		"http://$REG/v2/sx/manifests/${h%%-*}"
}

test_expect_success 'the pusher records each ELF file'"'"'s dynamic section (dev.nixoci.elf)' '
	manifest_of "$INTERP" >interp.json &&
	manifest_of "$OUTER" >outer.json &&
	/usr/bin/python3 -c "import json, sys
a = json.load(open(sys.argv[1]))[\"annotations\"]
e = json.loads(a[\"dev.nixoci.elf\"])
assert e[\"v\"] == 1, e
assert e[\"search\"] == [sys.argv[2] + \"/lib\"], e
assert len(e[\"files\"]) == 1 and e[\"files\"][0][1:] == [0, 0, \"libbase.so.1\"], e
# a script and a library that names nothing: no record
for f in sys.argv[3:]:
    assert \"dev.nixoci.elf\" not in json.load(open(f))[\"annotations\"], f" \
		interp.json "$BASE" outer.json
'

test_expect_success 'with the record, a predicted program'"'"'s libraries go out before its bytes arrive' '
	mount_store "$PROXY/sx" "$MNT" "cache=$TRASH/cache-5" &&
	b0=$(gets "$BASE") &&
	fault_set "mode=stall match=/blobs/sha256:$(nar_digest sx "$INTERP")" &&
	head -c 64 "$MNT/${OUTER##*/}/bin/outer" >/dev/null &&
	test_wait_for 30 eval "grep -q \"fault:stall\" \"\$PROXY_LOG\"" &&
	test_wait_for 30 eval "[ \$(gets $BASE) -gt $b0 ]" &&
	unmount_store "$MNT" &&
	fault_set "mode=pass"
'

test_expect_success 'without the record, they wait for the program'"'"'s bytes' '
	put_elf "$INTERP" interp.json - &&
	mount_store "$PROXY/sx" "$MNT" "cache=$TRASH/cache-6" &&
	b0=$(gets "$BASE") &&
	fault_set "mode=stall match=/blobs/sha256:$(nar_digest sx "$INTERP")" &&
	s0=$(grep -c "fault:stall" "$PROXY_LOG" || true) &&
	head -c 64 "$MNT/${OUTER##*/}/bin/outer" >/dev/null &&
	test_wait_for 30 eval "[ \$(grep -c fault:stall \"\$PROXY_LOG\") -gt $s0 ]" &&
	sleep 1 &&
	test "$(gets "$BASE")" = "$b0" &&
	unmount_store "$MNT" &&
	fault_set "mode=pass" &&
	# and once its bytes are here, from them
	mount_store "$PROXY/sx" "$MNT" "cache=$TRASH/cache-7" &&
	head -c 64 "$MNT/${OUTER##*/}/bin/outer" >/dev/null &&
	test_wait_for 30 eval "[ \$(gets $BASE) -gt $b0 ]" &&
	unmount_store "$MNT"
'

i=0
for bad in "{\"v\":2}" "[]" "{\"files\":[[2,0,0,\"a/b\"]],\"search\":[\"/x\"],\"v\":1}" \
	"{\"files\":[[99999,-1,0,\"libbase.so.1\"]],\"search\":[],\"v\":1}" \
	"{\"files\":[[1,-1,0,\"libbase.so.1\"]],\"search\":[],\"v\":1}"; do
	i=$((i + 1))
	test_expect_success "a bad record ($bad): one log line, libraries predicted from the bytes" '
		put_elf "$INTERP" interp.json "$bad" &&
		MNT=$TRASH/b$i &&
		MOUNT_LOG_ALLOW="ignoring its dev.nixoci.elf" &&
		mount_store "$PROXY/sx" "$MNT" "cache=$TRASH/cb$i" &&
		b0=$(gets "$BASE") &&
		head -c 64 "$MNT/${OUTER##*/}/bin/outer" >/dev/null &&
		test_wait_for 30 eval "[ \$(gets $BASE) -gt $b0 ]" &&
		cmp "$MNT/${INTERP##*/}/bin/interp" "$INTERP/bin/interp" &&
		unmount_store "$MNT" &&
		test "$(grep -c "ignoring its dev.nixoci.elf" "$TRASH/fs-b$i.log")" = 1
	'
done

test_expect_success 'the original record back: as pushed' '
	put_elf "$INTERP" interp.json "$(/usr/bin/python3 -c "import json, sys
print(json.load(open(sys.argv[1]))[\"annotations\"][\"dev.nixoci.elf\"])" interp.json)" &&
	manifest_of "$INTERP" | cmp - put.json
'

test_done
