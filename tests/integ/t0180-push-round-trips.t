#!/bin/bash
test_description='nixoci push in few round trips

The CPython closure (100+ paths) is pushed through tests/lib/faultproxy.py,
whose log records every request the registry got. A parallel push writes
exactly what a serial one does; a fresh push asks for the tag list once
instead of a manifest per path; a re-push of an unchanged closure stops at
its closure index and uploads nothing; one path whose upload fails gives a
clear error and no closure index; --mount-from mounts blobs from another
repository instead of uploading them; small blobs try a single-request
upload once, and Debian'"'"'s registry (which answers it with 202) then gets
POST + PUT.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3
test_require_nix
test_require_binaries

# manifest_digest REPO REF: the Docker-Content-Digest of a manifest, or
# "missing"
manifest_digest() {
	curl -fsS -I -H "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json" \
		"http://$REG/v2/$1/manifests/$2" 2>/dev/null |
		tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" { print $2 }' |
		grep . || echo missing
}

# digests REPO: one line per store path of the closure and the index:
# "<tag> <manifest digest>"
digests() {
	local p
	for p in $BIG_CLOSURE; do
		p=${p#/nix/store/}
		echo "${p%%-*} $(manifest_digest "$1" "${p%%-*}")"
	done
	echo "index $(manifest_digest "$1" c)"
}

# log_since N: the proxy log from line N + 1 (the requests of one command)
log_since() { tail -n +$(($1 + 1)) "$PROXY_LOG"; }
log_lines() { wc -l <"$PROXY_LOG"; }

test_expect_success 'setup: registry, the CPython closure, proxy in front' '
	start_registry &&
	build_big_closure &&
	NPATHS=$(echo "$BIG_CLOSURE" | wc -l) &&
	test "$NPATHS" -ge 100 &&
	start_faultproxy "$REG"
'

test_expect_success 'a parallel push asks for the tag list, not for each path' '
	n=$(log_lines) &&
	nixoci push --no-pack --jobs 16 --tag c "$PROXY/par" "$BIG" >par.out 2>&1 &&
	cat par.out &&
	test "$(push_summary_field "$(cat par.out)" uploaded)" = "$NPATHS" &&
	log_since $n >par.log &&
	grep -c "GET /v2/par/tags/list" par.log >tags.n &&
	test "$(cat tags.n)" = 1 &&
	! grep -E "GET /v2/par/manifests/[a-z0-9]{32} " par.log &&
	echo "$(wc -l <par.log) requests for $NPATHS paths"
'

test_expect_success 'a serial push (-j1) writes the same manifests and index' '
	nixoci push --no-pack --jobs 1 --tag c "$PROXY/ser" "$BIG" >ser.out 2>&1 &&
	test "$(push_summary_field "$(cat ser.out)" uploaded)" = "$NPATHS" &&
	digests par >par.digests &&
	digests ser >ser.digests &&
	! grep missing par.digests &&
	test "$(wc -l <par.digests)" = $((NPATHS + 1)) &&
	test_cmp par.digests ser.digests
'

test_expect_success 'single-request upload: tried once, then POST + PUT (Debian registry: 202)' '
	grep -c "POST /v2/par/blobs/uploads/?digest=" par.log >single.n &&
	test "$(cat single.n)" = 1 &&
	grep "POST /v2/par/blobs/uploads/?digest=" par.log | grep -q -- "-> 202"
'

test_expect_success 're-push of the unchanged closure: three reads, nothing uploaded' '
	n=$(log_lines) &&
	nixoci push --no-pack --tag c "$PROXY/par" "$BIG" >re.out 2>&1 &&
	cat re.out &&
	grep -q "closure index c unchanged" re.out &&
	test "$(push_summary_field "$(cat re.out)" uploaded)" = 0 &&
	test "$(push_summary_field "$(cat re.out)" bytes)" = 0 &&
	log_since $n >re.log &&
	cat re.log &&
	! grep -E " (POST|PUT|PATCH|DELETE) " re.log &&
	test "$(grep -c " -> " re.log)" -le 4 &&
	test_cmp par.digests <(digests par)
'

test_expect_success 're-push with another root set writes a new index, uploads no blob' '
	n=$(log_lines) &&
	nixoci push --no-pack --tag c "$PROXY/par" "$BIG" "$(echo "$BIG_CLOSURE" | head -n 1)" >re2.out 2>&1 &&
	cat re2.out &&
	! grep -q "unchanged" re2.out &&
	test "$(push_summary_field "$(cat re2.out)" uploaded)" = 0 &&
	test "$(manifest_digest par c)" != "$(awk "\$1 == \"index\" { print \$2 }" par.digests)" &&
	log_since $n >re2.log &&
	cat re2.log &&
	: "every path is in the old index: no manifest or TOC of a path is read again" &&
	! grep -E "GET /v2/par/manifests/[a-z0-9]{32} " re2.log &&
	test "$(grep -c "GET /v2/par/blobs/" re2.log)" -le 1 &&
	test "$(grep -c " -> " re2.log)" -le 16
'

test_expect_success 'one path whose upload fails: a clear error, no closure index' '
	big=$(for p in $BIG_CLOSURE; do echo "$(nix-store -q --size "$p") $p"; done |
		sort -n | tail -n 1 | cut -d" " -f2) &&
	tag=${big#/nix/store/} && tag=${tag%%-*} &&
	layer=$(curl -fsS -H "Accept: application/vnd.oci.image.manifest.v1+json" \
		"http://$REG/v2/par/manifests/$tag" |
		/usr/bin/python3 -c "import json, sys; print(json.load(sys.stdin)[\"layers\"][0][\"digest\"].split(\":\")[1])") &&
	fault_set mode=status code=400 match=$layer &&
	! nixoci push --no-pack --tag c "$PROXY/fail" "$BIG" >fail.out 2>&1 &&
	fault_set pass &&
	cat fail.out &&
	test "$(fault_hits status)" -ge 1 &&
	grep -q "push $big: " fail.out &&
	grep -q "closure index c was not written" fail.out &&
	test "$(manifest_digest fail c)" = missing &&
	test "$(manifest_digest fail "$tag")" = missing
'

test_expect_success 'the failed push, run again, completes (and skips what it wrote)' '
	nixoci push --no-pack --tag c "$PROXY/fail" "$BIG" >fail2.out 2>&1 &&
	cat fail2.out &&
	test "$(push_summary_field "$(cat fail2.out)" skipped)" -ge 1 &&
	test "$(manifest_digest fail c)" = "$(awk "\$1 == \"index\" { print \$2 }" par.digests)"
'

test_expect_success '--mount-from: blobs are mounted from the other repository' '
	n=$(log_lines) &&
	nixoci push --no-pack --mount-from par --tag c "$PROXY/mnt" "$BIG" >mnt.out 2>&1 &&
	cat mnt.out &&
	log_since $n >mnt.log &&
	grep "POST /v2/mnt/blobs/uploads/?mount=sha256" mnt.log | grep -c -- "-> 201" >mounted.n &&
	echo "$(cat mounted.n) mounts" &&
	test "$(cat mounted.n)" -ge "$NPATHS" &&
	grep -q "blobs mounted from par" mnt.out &&
	{ ! grep "PUT /v2/mnt/blobs/uploads/" mnt.log || { grep -v "mount=" mnt.log | grep blobs; false; }; } &&
	grep -q "/v2/mnt/blobs/uploads/?mount=.*&from=par" "$TRASH/registry-reg/log" &&
	test "$(manifest_digest mnt c)" = "$(awk "\$1 == \"index\" { print \$2 }" par.digests)"
'

test_expect_success '--mount-from a repository that lacks the blobs: uploads them' '
	nixoci push --no-pack --mount-from nothere --jobs 4 "$PROXY/mnt2" "$BIG" >mnt2.out 2>&1 &&
	cat mnt2.out &&
	test "$(push_summary_field "$(cat mnt2.out)" uploaded)" = "$NPATHS" &&
	test "$(push_summary_field "$(cat mnt2.out)" bytes)" -gt 0
'

test_expect_success '--mount-from with a bad repository name: a clear error' '
	! nixoci push --no-pack --mount-from "Bad Name" "$PROXY/mnt3" "$BIG" >bad.out 2>&1 &&
	cat bad.out &&
	grep -q "not a repository name" bad.out
'

test_done
