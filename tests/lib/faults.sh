# tests/lib/faults.sh: helpers for the fault tests (tests/integ/t03*.t).
# Source it after lib.sh:
#
#   . "$(dirname "$0")/../lib/lib.sh"
#   . "$TEST_LIB_DIR/faults.sh"
#
# start_faultproxy UPSTREAM       fault proxy in front of UPSTREAM (HOST:PORT);
#                                 exports PROXY (HOST:PORT), PROXY_CTL, PROXY_LOG
# start_delayproxy UPSTREAM       the benchmarks' delay link (bench/delayproxy.c) in
#                                 its place: same PROXY, PROXY_CTL, PROXY_LOG (only
#                                 delay=MS works); needs the build's bench/delayproxy
# nar_digest REPO STOREPATH      hex digest of the path's own NAR blob (format 1)
# nar_range REPO STOREPATH       "DIGEST OFFSET LENGTH" of its NAR layer, either format
# range_gets REPO DIGEST OFF LEN  proxy log lines of GETs asking for bytes of that range
# fault_set 'mode=... [k=v ...]'  change the fault now (atomic); fault_set pass heals
# fault_hits MODE                 how many requests got fault MODE so far
# timed CMD...                    run CMD, ELAPSED_MS = its wall time, keeps its status
# fs_alive MNT                    the daemon of MNT runs and stat(MNT) answers in 5 s
# stats_field MNT KEY             one counter of `nixoci stats MNT`
# build_fault_data                a store path of deterministic incompressible files,
#                                 FDATA (path), FDATA_FILES (names, one frame set each)
# read_expect_ok_or_eio F WANT SECS
#                                 read F through the mount: its bytes equal WANT, or
#                                 it fails with EIO; either way within SECS

# start_proxy_with LABEL UPSTREAM NAME CMD...: runs CMD (a proxy taking
# faultproxy's --upstream/--control/--port-file/--log) in front of UPSTREAM,
# its files in $TRASH/NAME, and exports PROXY, PROXY_CTL, PROXY_LOG, PROXY_PID
start_proxy_with() {
	local label=$1 up=$2 name=$3 dir pid
	shift 3
	dir=$TRASH/$name
	mkdir -p "$dir"
	echo "mode=pass" >"$dir/control"
	rm -f "$dir/port"
	"$@" --upstream "$up" --control "$dir/control" --port-file "$dir/port" \
		--log "$dir/log" >"$dir/stderr" 2>&1 &
	pid=$!
	test_atexit "stop_faultproxy $pid"
	if ! test_wait_for 10 test -s "$dir/port" || ! pid_alive "$pid"; then
		echo "$label did not start:" >&2
		cat "$dir/stderr" "$dir/log" >&2 2>/dev/null
		return 1
	fi
	PROXY=127.0.0.1:$(cat "$dir/port")
	PROXY_CTL=$dir/control
	PROXY_LOG=$dir/log
	PROXY_PID=$pid
	export PROXY PROXY_CTL PROXY_LOG PROXY_PID
	test_wait_for 10 curl -fsS -o /dev/null --max-time 2 "http://$PROXY/v2/"
}

# start_faultproxy UPSTREAM [NAME]
start_faultproxy() {
	start_proxy_with "fault proxy" "$1" "${2:-proxy}" \
		/usr/bin/python3 "$TEST_LIB_DIR/faultproxy.py"
}

# start_delayproxy UPSTREAM [NAME]: bench/delayproxy from the build that
# holds nixoci-fs on PATH
start_delayproxy() {
	local bin
	bin=$(cd "$(dirname "$(command -v nixoci-fs)")/.." && pwd)/bench/delayproxy
	[ -x "$bin" ] || { echo "no $bin (run make)" >&2; return 1; }
	start_proxy_with "delay proxy" "$1" "${2:-proxy}" "$bin"
}

# nar_digest REPO STOREPATH: the digest (hex) of the path's own NAR layer in
# repository REPO of $REG. A packed path (format 2) has none: it fails, so a
# test that needs one says --no-pack (or uses nar_range).
nar_digest() {
	local h=${2##*/}
	h=${h%%-*}
	curl -fsS -H "Accept: application/vnd.oci.image.manifest.v1+json" \
		"http://$REG/v2/$1/manifests/$h" | /usr/bin/python3 -c "import json, sys
m = json.load(sys.stdin)
l = [l for l in m[\"layers\"] if \"nar\" in l[\"mediaType\"]]
if not l:
    sys.exit(\"nar_digest: %s is packed (format 2): no NAR blob of its own\" % sys.argv[1])
print(l[0][\"digest\"].split(\":\")[1])" "$2"
}

# nar_range REPO STOREPATH: where the bytes of the path's NAR layer are in
# repository REPO of $REG: "DIGEST OFFSET LENGTH" (DIGEST hex). Format 1:
# its own NAR blob, 0 and the blob's size; format 2: its pack and the
# nar-offset and nar-length annotations (docs/format.md 2.1).
nar_range() {
	local h=${2##*/}
	h=${h%%-*}
	curl -fsS -H "Accept: application/vnd.oci.image.manifest.v1+json" \
		"http://$REG/v2/$1/manifests/$h" | /usr/bin/python3 -c "import json, sys
m = json.load(sys.stdin)
l = m[\"layers\"]
p = [x for x in l if x[\"mediaType\"] == \"application/vnd.nixoci.pack.v1\"]
if p:
    a = p[0][\"annotations\"]
    print(p[0][\"digest\"].split(\":\")[1], a[\"dev.nixoci.nar-offset\"], a[\"dev.nixoci.nar-length\"])
else:
    n = [x for x in l if \"nar\" in x[\"mediaType\"]][0]
    print(n[\"digest\"].split(\":\")[1], 0, n[\"size\"])"
}

# range_gets REPO DIGEST OFFSET LENGTH: line numbers in $PROXY_LOG of the
# answered GETs of blob DIGEST in REPO whose Range asks for any byte of
# [OFFSET, OFFSET + LENGTH) (a GET without Range asks for all of them):
# the requests for one path's NAR layer, in its own blob or in a pack
range_gets() {
	awk -v pat="GET /v2/$1/blobs/sha256:$2" -v lo="$3" -v hi="$(($3 + $4))" '
	index($0, pat) && / -> / {
		r = $0
		if (!match(r, / range=[^ ]* -> /))
			next
		r = substr(r, RSTART + 7, RLENGTH - 11)
		sub(/:.*/, "", r)
		if (r == "-") { print NR; next }
		sub(/^bytes=/, "", r)
		n = split(r, rs, ",")
		for (i = 1; i <= n; i++) {
			split(rs[i], ab, "-")
			# "a-b", "a-" (to the end); a suffix "-n" is not sent
			a = ab[1] + 0
			b = ab[2] == "" ? hi : ab[2] + 0
			if (a < hi && b >= lo) { print NR; next }
		}
	}' "$PROXY_LOG"
}

stop_faultproxy() {
	local st
	pid_alive "$1" || { wait "$1" 2>/dev/null; return 0; }
	kill -TERM "$1" 2>/dev/null
	wait_pid_status "$1" 10 st
	return 0
}

# fault_set 'mode=reset after=1000 match=/blobs/': replace the control file
# atomically (the proxy reads it at every request).
fault_set() {
	local w
	case $1 in mode=*) w=$* ;; *) w="mode=$*" ;; esac
	echo "$w" >"$PROXY_CTL.tmp" && mv -f "$PROXY_CTL.tmp" "$PROXY_CTL" &&
		echo "fault: $w"
}

fault_hits() {
	grep -c "fault:$1\b" "$PROXY_LOG" 2>/dev/null || true
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# timed CMD...: ELAPSED_MS is the wall time of CMD; returns CMD's status.
timed() {
	local t0 rc=0
	t0=$(now_ms)
	"$@" || rc=$?
	ELAPSED_MS=$(($(now_ms) - t0))
	return $rc
}

fs_alive() {
	local pid=${MOUNT_PID[$1]:-}
	[ -n "$pid" ] && pid_alive "$pid" || { echo "nixoci-fs for $1 is gone"; return 1; }
	timeout 5 stat "$1" >/dev/null || { echo "stat $1 did not answer"; return 1; }
	mountpoint -q "$1"
}

stats_field() {
	nixoci stats "$1" | awk -v k="$2" '$1 == k { print $2 }'
}

# build_fault_data: a store path "nixoci-fault-data" with files f01..f16 of
# 1.5 MiB each (deterministic pseudo-random bytes, so the path is the same on
# every run and nix keeps it). Each file is larger than one frame and starts a
# frame of its own, so every file is a set of frames no other file shares:
# one fault scenario per file, none served from an earlier one's cache.
build_fault_data() {
	local src=$TRASH/nixoci-fault-data
	mkdir -p "$src"
	/usr/bin/python3 - "$src" <<-'EOF' || return 1
	import random, sys
	for i in range(1, 17):
	    r = random.Random(7000 + i)
	    with open("%s/f%02d" % (sys.argv[1], i), "wb") as f:
	        f.write(r.randbytes(1536 * 1024))
	EOF
	FDATA=$(nix-store --add "$src") || return 1
	FDATA_FILES=$(cd "$src" && ls)
	export FDATA FDATA_FILES
}

# read_expect_ok_or_eio FILE WANT SECS: read FILE (through the mount); pass
# when its bytes equal WANT, or when the read fails with EIO ("Input/output
# error"); fail on wrong bytes, any other error, or taking longer than SECS.
# READ_RESULT is "ok" or "eio", ELAPSED_MS the time it took.
read_expect_ok_or_eio() {
	local f=$1 want=$2 secs=$3 out=$TRASH/read.out err=$TRASH/read.err rc=0
	timed timeout $((secs + 30)) cat "$f" >"$out" 2>"$err" || rc=$?
	echo "read ${f##*/}: status $rc in ${ELAPSED_MS} ms: $(head -c 200 "$err")"
	if [ $rc -eq 0 ]; then
		cmp "$out" "$want" || { echo "WRONG BYTES from ${f##*/}"; return 1; }
		READ_RESULT=ok
	elif grep -q "Input/output error" "$err"; then
		READ_RESULT=eio
	else
		echo "unexpected failure"
		return 1
	fi
	[ "$ELAPSED_MS" -le $((secs * 1000)) ] || {
		echo "took ${ELAPSED_MS} ms, over the bound of ${secs} s"
		return 1
	}
}

# heal_read FILE WANT SECS: poll reading FILE until it succeeds (at most SECS);
# a read that succeeds must give WANT's bytes, at once (wrong bytes fail
# the test immediately, EIO in between is the fault still healing).
heal_read() {
	local f=$1 want=$2 secs=$3 deadline
	deadline=$(($(now_ms) + secs * 1000))
	while :; do
		if timeout 60 cat "$f" >"$TRASH/heal.out" 2>"$TRASH/heal.err"; then
			cmp "$TRASH/heal.out" "$want" || { echo "WRONG BYTES from $f"; return 1; }
			return 0
		fi
		grep -q "Input/output error" "$TRASH/heal.err" || {
			echo "heal_read $f: $(cat "$TRASH/heal.err")"
			return 1
		}
		[ "$(now_ms)" -lt $deadline ] || { echo "$f still fails after $secs s"; return 1; }
		sleep 0.1
	done
}

# cat_is FILE TEXT: FILE's contents are TEXT (for test_wait_for).
cat_is() { [ "$(cat "$1" 2>/dev/null)" = "$2" ]; }

# registry_kill9 [NAME]: SIGKILL the registry NAME started by start_registry.
registry_kill9() {
	local v=REG_PID_${1:-reg}
	kill -KILL "${!v}" && wait "${!v}" 2>/dev/null
	return 0
}

