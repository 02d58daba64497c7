#!/bin/bash
test_description='hostile artifacts (tests/data/should-fail): refused with a clear error,
nothing cached, the daemon stays up and keeps serving a good path'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 zstd openssl
test_require_fuse
test_require_binaries

SF=$TEST_SRCDIR/tests/data/should-fail
CORPUS=$TRASH/corpus
# The daemons' refusals are the point of this test: their "nixoci-fs: ..."
# lines are expected. Sanitizer reports, crashes and a non-zero exit still
# fail the cleanup check (they do not start with "nixoci-fs:").
MOUNT_LOG_ALLOW='^nixoci-fs: '

test_expect_success 'setup: generate the corpus (>= 30 hostile cases)' '
	/usr/bin/python3 "$SF/gen.py" "$CORPUS" &&
	n=$(grep -vc "^good	" "$CORPUS/cases.tsv") &&
	echo "$n hostile cases" && test "$n" -ge 30
'

test_expect_success 'setup: a registry, the hostile proxy in front, every case uploaded' '
	start_registry &&
	echo "{}" >"$TRASH/overrides.json" &&
	/usr/bin/python3 "$SF/upload.py" "$REG" hostile "$CORPUS" "$REG_STORAGE" \
		"$TRASH/overrides.json" &&
	/usr/bin/python3 "$SF/upload.py" "$REG" hostile "$CORPUS/containment/cases" \
		"$REG_STORAGE" "$TRASH/overrides-containment.json" &&
	PPORT=$(free_port) &&
	{ /usr/bin/python3 "$SF/proxy.py" "$PPORT" "$REG" "$TRASH/overrides.json" \
		>"$TRASH/proxy.log" 2>&1 & } &&
	PROXY_PID=$! &&
	test_atexit "kill $PROXY_PID" &&
	test_wait_for 20 grep -q ready "$TRASH/proxy.log" &&
	PROXY=127.0.0.1:$PPORT &&
	curl -fsS "http://$PROXY/v2/" >/dev/null
'

GOOD=$(awk -F'\t' '$1 == "good" { print $4 }' "$CORPUS/cases.tsv" 2>/dev/null)
good_f() {
	printf 'case good\n'
	for _ in $(seq 300); do printf 'the contents of f\n'; done
}

test_expect_success 'setup: mount twice: plain (lazy) and with trusted keys' '
	LAZY=$TRASH/lazy KEYS=$TRASH/keys &&
	mount_store "$PROXY/hostile" "$LAZY" &&
	mount_store "$PROXY/hostile" "$KEYS" "trusted-public-keys=$(cat "$CORPUS/pubkey")" &&
	good_f >good.expect &&
	cat "$LAZY/$GOOD/f" >good.lazy && test_cmp good.expect good.lazy &&
	cat "$KEYS/$GOOD/f" >good.keys && test_cmp good.expect good.keys &&
	nixoci verify "$PROXY/hostile" "$GOOD" >verify.out &&
	grep -qx "ok /nix/store/$GOOD" verify.out
'

# try_access MNT BASE SUB: read BASE/SUB under MNT (or stat/list the store
# path when SUB is empty); prints the error; fails when it was served.
try_access() {
	local p=$1/$2${3:+/$3}
	if [ -z "$3" ]; then
		ls -la "$p" >access.out 2>access.err && return 1
	elif [ -L "$p" ]; then
		readlink "$p" >access.out 2>access.err && cat "$p" >/dev/null 2>>access.err &&
			return 1
	else
		cat "$p" >access.out 2>access.err && return 1
	fi
	cat access.err
	grep -qE "No such file or directory|Input/output error|Permission denied" access.err
}

# no_cached CACHEDIR DIGEST...: no chunk or blob file named by a digest.
no_cached() {
	local dir=$1 d bad=0
	shift
	for d in "$@"; do
		if [ -n "$(find "$dir" -name "*$d*" 2>/dev/null)" ]; then
			echo "cached in $dir: $d"
			bad=1
		fi
	done
	return $bad
}

# new_log_lines LOG OFFSET: the lines written after byte OFFSET.
new_log_lines() { tail -c +$(($2 + 1)) "$1"; }

still_serving() {
	pid_alive "${MOUNT_PID[$1]}" || { echo "daemon for $1 died"; return 1; }
	cat "$1/$GOOD/f" >good.now && test_cmp good.expect good.now
}

# (test_expect_success has locals "name" and "body": the loop uses c*)
while IFS=$'\t' read -r cname cdetect cserve cbase caccess; do
	[ "$cname" = good ] && continue
	# HOSTILE_ONLY=REGEX runs only the matching cases (by hand, when debugging)
	[[ $cname =~ ${HOSTILE_ONLY:-.} ]] || continue
	cinfo=$CORPUS/$cname/case.json
	cwhat=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["what"])' \
		"$cinfo")
	cframes=$(/usr/bin/python3 -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["frames"]))' "$cinfo")
	chostile=$(/usr/bin/python3 -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["hostile"]))' "$cinfo")
	test_expect_success "hostile $cname ($cdetect): $cwhat" '
		echo "serve: $cserve; access: $cbase/$caccess" &&
		if [ "$cdetect" = lazy ]; then mnts="$LAZY $KEYS"; else mnts=$KEYS; fi &&
		for m in $mnts; do
			dlog=${MOUNT_LOG[$m]} && off=$(stat -c %s "$dlog") &&
			echo "--- $m" &&
			try_access "$m" "$cbase" "$caccess" || { echo "served by $m"; return 1; }
			new_log_lines "$dlog" "$off" >newlog &&
			echo "log:" && cat newlog &&
			test -s newlog || { echo "no log line"; return 1; }
			test "$(sort -u newlog | wc -l)" -le 3 || { echo "too many distinct log lines"; return 1; }
			grep -qF "${cbase%%-*}" newlog || { echo "no log line names the path"; return 1; }
			no_cached "$TRASH/cache-$(basename "$m")" $cframes $chostile || return 1
			still_serving "$m" || return 1
		done &&
		if [ "$cdetect" = keys ]; then
			echo "--- $LAZY (trusts the TOC for structure; may serve it)" &&
			{ try_access "$LAZY" "$cbase" "$caccess" || echo "(served)"; } &&
			still_serving "$LAZY"
		fi &&
		echo "--- nixoci verify" &&
		{ nixoci verify "$PROXY/hostile" "$cbase" >vout 2>verr; rc=$?; } ;
		cat vout verr && test $rc = 1 &&
		grep -q "^nixoci: " verr &&
		! grep -q "^ok " vout
	'
done <"$CORPUS/cases.tsv"

# ---------------------------------------------------------- containment
# Cases that are not one store path each (tests/data/should-fail/gen.py,
# write_containment): each function is one test.

# proxy_serves PATH FILE TYPE: the hostile proxy answers GET PATH with FILE
# (what the real registry refuses to store).
proxy_serves() {
	/usr/bin/python3 - "$TRASH/overrides.json" "$@" <<-'EOF'
	import hashlib, json, os, sys
	ovr, path, body, mt = sys.argv[1:5]
	with open(ovr) as f:
	    ov = json.load(f)
	with open(body, "rb") as f:
	    d = "sha256:" + hashlib.sha256(f.read()).hexdigest()
	ov[path] = {"file": body, "type": mt, "digest": d}
	with open(ovr + ".tmp", "w") as f:
	    json.dump(ov, f)
	os.rename(ovr + ".tmp", ovr)
	EOF
}

# A closure index whose descriptor has the manifest's digest but another
# size: the path is EIO with one line, the daemon (ASan in make check) stays
# up, the index's other path is served.
containment_closure_size() {
	local tag=$1 other mnt=$TRASH/$1
	other=$(sed -n 2p "$CORPUS/containment/closure-size-paths") &&
	proxy_serves "/v2/hostile/manifests/$tag" "$CORPUS/containment/$tag.json" \
		application/vnd.oci.image.index.v1+json &&
	mount_store "$PROXY/hostile" "$mnt" "closure=$tag" &&
	off=$(stat -c %s "${MOUNT_LOG[$mnt]}") &&
	try_access "$mnt" "$other" f &&
	try_access "$mnt" "$other" f &&
	new_log_lines "${MOUNT_LOG[$mnt]}" "$off" >newlog && cat newlog &&
	grep -q "manifest of /nix/store/$other: does not match the closure" newlog &&
	test "$(sort -u newlog | wc -l)" = 1 &&
	still_serving "$mnt" &&
	unmount_store "$mnt"
}

test_expect_success 'containment: closure descriptor with the right digest, size +1' '
	containment_closure_size closure-size-plus
'
test_expect_success 'containment: closure descriptor with the right digest, size -1' '
	containment_closure_size closure-size-minus
'

# A path the trusted keys refuse is refused from its manifest: the TOC blob
# is never asked for (the hostile proxy's request log says so), and the
# refusal is remembered. A plain mount serves the same path.
containment_refused_without_toc() {
	local name=$1 base=$2 toc=$3 off
	off=$(stat -c %s "$TRASH/proxy.log") &&
	try_access "$KEYS" "$base" f && try_access "$KEYS" "$base" "" &&
	grep -q "Permission denied" access.err &&
	grep -q "$base: refused: no signature by a trusted key" "${MOUNT_LOG[$KEYS]}" &&
	new_log_lines "$TRASH/proxy.log" "$off" >proxynew && cat proxynew &&
	grep -q "GET /v2/hostile/manifests/${base%%-*}" proxynew &&
	! grep "blobs/sha256:$toc" proxynew &&
	cat "$LAZY/$base/f" >/dev/null &&
	still_serving "$KEYS"
}

while IFS=$'\t' read -r cname cbase ctoc; do
	test_expect_success "containment: $cname is refused without fetching its TOC" '
		containment_refused_without_toc "$cname" "$cbase" "$ctoc"
	'
done <"$CORPUS/containment/trust-cases.tsv"

# A malformed TOC is refused by its digest: asking again does not fetch it
# (nor inflate it) again.
containment_refusal_remembered() {
	local case=$1 base toc off n
	base=$(awk -F'\t' -v c="$case" '$1 == c { print $4 }' "$CORPUS/cases.tsv") &&
	toc=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["toc_digest"])' \
		"$CORPUS/$case/case.json") &&
	mnt=$TRASH/remember-$case &&
	mount_store "$PROXY/hostile" "$mnt" &&
	off=$(stat -c %s "$TRASH/proxy.log") &&
	for i in 1 2 3; do try_access "$mnt" "$base" "" || return 1; done &&
	new_log_lines "$TRASH/proxy.log" "$off" >proxynew &&
	n=$(grep -c "GET /v2/hostile/blobs/sha256:$toc" proxynew) &&
	echo "TOC fetched $n time(s) for 3 lookups" && test "$n" = 1 &&
	unmount_store "$mnt"
}

test_expect_success 'containment: a TOC refused once (bad magic) is not fetched again' '
	containment_refusal_remembered toc-bad-magic
'
test_expect_success 'containment: a TOC refused once (zstd bomb) is not fetched again' '
	containment_refusal_remembered toc-zstd-bomb
'

# Another path (another tag) whose manifest names a TOC layer refused
# before: EIO with one line naming it, and the layer is not fetched again.
containment_refused_alias() {
	local name=$1 base=$2 orig=$3 toc=$4 obase mnt=$TRASH/alias-$1 off poff n
	obase=$(awk -F'\t' -v c="$orig" '$1 == c { print $4 }' "$CORPUS/cases.tsv") &&
	mount_store "$PROXY/hostile" "$mnt" &&
	poff=$(stat -c %s "$TRASH/proxy.log") &&
	try_access "$mnt" "$obase" "" &&
	off=$(stat -c %s "${MOUNT_LOG[$mnt]}") &&
	try_access "$mnt" "$base" "" &&
	grep -q "Input/output error" access.err &&
	new_log_lines "${MOUNT_LOG[$mnt]}" "$off" >newlog && cat newlog &&
	test "$(sort -u newlog | wc -l)" = 1 &&
	grep -q "toc of /nix/store/$base: sha256:$toc was refused before for another path" newlog &&
	new_log_lines "$TRASH/proxy.log" "$poff" >proxynew &&
	n=$(grep -c "GET /v2/hostile/blobs/sha256:$toc" proxynew) &&
	echo "TOC fetched $n time(s) for the two paths" && test "$n" = 1 &&
	still_serving "$mnt" &&
	unmount_store "$mnt"
}

while IFS=$'\t' read -r cname cbase corig ctoc; do
	test_expect_success "containment: $cname (the layer of $corig under another tag) is refused by its digest" '
		containment_refused_alias "$cname" "$cbase" "$corig" "$ctoc"
	'
done <"$CORPUS/containment/alias-cases.tsv"

# A path whose NAR layer starts with the good path's very frame (same digest,
# same ulen) and whose whole NAR is malformed: full verification refuses it
# and drops the frames it brought in, never the one the good path had
# cached. Checked by reading the good path with the page cache dropped and
# its source gone (a proxy of its own, stopped).
containment_shared_frames() {
	local name=$1 base=$2 shared=$3 own=$4 mnt=$TRASH/shared-$1 port ppid
	port=$(free_port) &&
	{ /usr/bin/python3 "$SF/proxy.py" "$port" "$REG" "$TRASH/overrides.json" \
		>"$TRASH/proxy-$name.log" 2>&1 & } &&
	ppid=$! &&
	test_atexit "kill $ppid 2>/dev/null || :" &&
	test_wait_for 20 grep -q ready "$TRASH/proxy-$name.log" &&
	mount_store "127.0.0.1:$port/hostile" "$mnt" \
		"trusted-public-keys=$(cat "$CORPUS/pubkey")" &&
	cat "$mnt/$GOOD/f" >good.now && test_cmp good.expect good.now &&
	try_access "$mnt" "$base" f &&
	grep -q "Permission denied" access.err &&
	grep "verify /nix/store/$base: .*refusing it" "${MOUNT_LOG[$mnt]}" &&
	no_cached "$TRASH/cache-shared-$name" $own &&
	test -n "$(find "$TRASH/cache-shared-$name" -name "*$shared*")" &&
	kill "$ppid" && { wait "$ppid" 2>/dev/null || :; } &&
	sync && echo 3 >/proc/sys/vm/drop_caches &&
	cat "$mnt/$GOOD/f" >good.now && test_cmp good.expect good.now &&
	unmount_store "$mnt"
}

while IFS=$'\t' read -r cname cbase cshared cown; do
	test_expect_success "containment: $cname refused, the good path it shares a frame with still reads offline" '
		containment_shared_frames "$cname" "$cbase" "$cshared" "$cown"
	'
done <"$CORPUS/containment/shared-cases.tsv"

# Any user of the mount can stat names: 300 random ones, 32 at a time, must
# not become 300 registry requests. The registry (the hostile proxy's request
# log) sees at most the bound: lookup_rate=5 admits two seconds' worth at
# once, then 5 a second, and a lookup waits at most 1 s for its turn.
containment_lookup_flood() {
	local mnt=$TRASH/flood off t0 t1 n bound
	mount_store "$PROXY/hostile" "$mnt" lookup_rate=5 &&
	/usr/bin/python3 -c '
import hashlib
A = "0123456789abcdfghijklmnpqrsvwxyz"
for i in range(300):
    h = hashlib.sha256(b"flood %d" % i).digest()
    print("".join(A[b % 32] for b in h[:32]) + "-flood")' >names &&
	off=$(stat -c %s "$TRASH/proxy.log") &&
	t0=$(date +%s) &&
	{ sed "s|^|$mnt/|" names | xargs -P 32 -n 5 stat >/dev/null 2>flood.err || :; } &&
	t1=$(date +%s) &&
	new_log_lines "$TRASH/proxy.log" "$off" >proxynew &&
	n=$(grep -c "GET /v2/hostile/manifests/" proxynew) &&
	bound=$((5 * (3 + t1 - t0 + 1) + 1)) &&
	echo "$n manifest requests for 300 names in about $((t1 - t0)) s (bound $bound)" &&
	test "$n" -le "$bound" &&
	grep -c "Resource temporarily unavailable" flood.err &&
	grep "registry lookups per second" "${MOUNT_LOG[$mnt]}" &&
	test_wait_for 10 eval "cat \"\$mnt/\$GOOD/f\" >/dev/null 2>&1" &&
	cat "$mnt/$GOOD/f" >good.now && test_cmp good.expect good.now &&
	unmount_store "$mnt"
}

test_expect_success 'containment: 300 random names cost the registry at most the lookup bound' '
	containment_lookup_flood
'

# A registry whose tag list never ends (tests/lib/faultproxy.py rewrites the
# Link header of every page): nixoci ls stops with one line saying the
# registry keeps paging, instead of paging (and growing) forever. "loop"
# cycles between two pages; "endless" sends a new empty page each time.
containment_endless_tags() {
	local mode=$1 saved=$PROXY rc
	start_faultproxy "$REG" "pager-$mode" &&
	PAGER=$PROXY && PROXY=$saved &&
	fault_set "mode=pass link=$mode" &&
	{ timeout 120 nixoci ls "$PAGER/hostile" >ls.out 2>ls.err; rc=$?; } ;
	PROXY=$saved
	cat ls.err && echo "exit $rc" &&
	test "$rc" = 1 &&
	grep -q "^nixoci: registry .*: tag list: the registry keeps paging" ls.err &&
	test "$(wc -l <ls.err)" -le 2 &&
	grep -c "/tags/list" "$PROXY_LOG"
}

test_expect_success 'containment: nixoci ls against a tag list that loops' '
	containment_endless_tags loop
'
test_expect_success 'containment: nixoci ls against a tag list that never ends' '
	containment_endless_tags endless
'

test_expect_success 'after the whole corpus: both daemons up, the good path still verifies' '
	still_serving "$LAZY" && still_serving "$KEYS" &&
	nixoci verify "$PROXY/hostile" "$GOOD"
'

test_done
