#!/bin/bash
# bench/session.sh [O]: the benchmark of the session layer (run by
# `make bench` after bench/run.sh, or alone: `make bench-session`, ~10 min).
#
# Uses the tests' CPython closure (tests/lib/big.nix, ~118 paths; cached by
# Nix after the first build) and one deterministic 139 MiB file, pushed to a
# local docker-registry, and measures:
#   warm    cache warm, page cache dropped: java -version (the JDK 17 of
#           bench/closure), python start, walk of the CPython closure,
#           read of the 139 MiB file; nixoci with passthrough=auto and =off,
#           and the native /nix/store, page cache dropped too
#   seqread the same read as MB/s
#   pagecache  what reading the file once leaves in the page cache, per
#           file (fincore, util-linux): the file as seen through the mount
#           plus the cache's objects behind it (the passthrough copy under
#           files/, the chunk files under chunks/), against the file's size;
#           natively the store file alone. Machine-wide Cached growth
#           (/proc/meminfo) as a second, noisier figure
#   fleet   16 bwrap containers started at once on an empty cache, each
#           importing a different module (a different store path), against
#           one alone
#   lookups 8 concurrent first lookups of 8 store paths against the same 8
#           one at a time (each on a fresh mount), with the registry behind
#           a 150 ms delay link (bench/delayproxy via bench/link.sh;
#           BENCH_PROXY=py: tests/lib/faultproxy.py)
#   requests FUSE requests the kernel sent (the stats xattr) for a cold and
#           a warm python start and an `ls -l` of the largest directory
# Samples: bench/results/session.tsv; medians and ratios:
# bench/results/session.md (pasted into docs/benchmarks.md).
# Knobs: BENCH_RUNS=3; BENCH_SESSION_SKIP="warm java fleet lookups" leaves
# parts out (warm: the requests, warm, seqread and pagecache parts; java:
# only java); BENCH_SESSION_BEFORE=DIR (a build dir of another version, e.g.
# main's) runs the lookups part with its nixoci-fs too, alternating with
# this one's run by run, so a before/after comparison sees the same load.
# Needs root (drop_caches, FUSE, bwrap).
set -euo pipefail
export LC_ALL=C

SRC=$(cd "$(dirname "$0")/.." && pwd)
O=${1:-build}
case $O in /*) ;; *) O=$SRC/$O ;; esac
RUNS=${BENCH_RUNS:-3}
RESULTS=$SRC/bench/results
export PATH=$O/bin:$PATH:/usr/sbin:/sbin
T_START=$(date +%s)
say() { printf '[session %4ds] %s\n' $(($(date +%s) - T_START)) "$*" >&2; }
die() { say "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
# Dropped twice, 3 s apart: on this VM one drop right after a read leaves
# part of the file readable at 2+ GB/s (0.06 s for 139 MiB natively), the
# second one not (0.32 s, natively and through passthrough alike), so a
# single drop made "cold" mean different things for different runs.
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; sleep 3; echo 3 >/proc/sys/vm/drop_caches; }

W=$(mktemp -d /var/tmp/nixoci-session.XXXXXX)
CLEANUP=("rm -rf '$W'")
cleanup() {
	local i
	for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[$i]}" || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
TSV=$W/session.tsv
: >"$TSV"
# sample GROUP NAME RUN VALUE
sample() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$TSV"; }
now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", (b - a) / 1e9 }'; }
free_port() {
	/usr/bin/python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for() {
	local n=$(($1 * 10))
	shift
	while ! "$@" 2>/dev/null; do
		n=$((n - 1))
		[ $n -gt 0 ] || return 1
		sleep 0.1
	done
}

# ------------------------------------------------------------ the data
say "CPython closure (tests/lib/big.nix)"
/usr/bin/python3 "$SRC/tests/lib/python-spec.py" >"$W/spec.json"
PYENV=$(nix-build "$SRC/tests/lib/big.nix" --arg spec "$W/spec.json" --no-out-link \
	--option substituters "" --option sandbox false --max-jobs 4 2>>"$W/build.log")
PY=$PYENV/bin/python3
nix-store -qR "$PYENV" >"$W/closure.paths"
sed 's|.*/||' "$W/closure.paths" >"$W/closure.list"
say "a deterministic 139 MiB file"
/usr/bin/python3 -c 'import random, sys
r = random.Random(139)
with open(sys.argv[1], "wb") as f:
    for _ in range(139):
        f.write(r.randbytes(1 << 20))' "$W/big139.bin"
BIG=$(nix-store --add "$W/big139.bin")
rm -f "$W/big139.bin"
BIGSIZE=$(stat -c %s "$BIG")

REGD=$W/registry
mkdir -p "$REGD/storage"
port=$(free_port)
# blob descriptors cached in memory, as in the config.yml Debian ships with
# docker-registry (distribution's default): the same for every method compared
cat >"$REGD/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $REGD/storage
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$REGD/config.yml" >"$REGD/log" 2>&1 &
CLEANUP+=("kill $!; wait $! 2>/dev/null")
wait_for 20 curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" || die "registry did not start"
REG=127.0.0.1:$port
say "push"
nixoci push "$REG/s" "$PYENV" >"$W/push.log" 2>&1
nixoci push "$REG/s" "$BIG" >>"$W/push.log" 2>&1
# java -version from the JDK 17 of make bench's closure (bench/closure: the
# host's JDK as Nix store paths; its nix-build is cached after the first,
# ~15 min, run). BENCH_SESSION_SKIP=java leaves it out.
WORKLOADS="python walk read"
case " ${BENCH_SESSION_SKIP:-} " in *" java "* | *" warm "*) ;; *)
	say "the JDK 17 closure (bench/closure; cached after the first build)"
	/usr/bin/python3 "$SRC/bench/closure/spec.py" >"$W/cspec.json" 2>>"$W/build.log"
	CROOT=$(nix-build "$SRC/bench/closure/closure.nix" --arg spec "$W/cspec.json" --no-out-link \
		--option substituters "" --option sandbox false --max-jobs 4 2>>"$W/build.log")
	JAVA=$(readlink "$CROOT/bin/java")
	nixoci push "$REG/s" "$(echo "$JAVA" | cut -d/ -f1-4)" >>"$W/push.log" 2>&1
	WORKLOADS="java $WORKLOADS"
	;;
esac

MNT=$W/mnt
mkdir -p "$MNT"
MPID=
FS=nixoci-fs # the daemon mount_fs starts (the lookups part may alternate)
mount_fs() { # REF CACHE [OPTS]
	"$FS" -f -o "cache=$2${3:+,$3}" "$1" "$MNT" >>"$W/fs.log" 2>&1 &
	MPID=$!
	wait_for 30 mountpoint -q "$MNT" || die "mount failed: $(tail -n 5 "$W/fs.log")"
}
umount_fs() {
	fusermount3 -u "$MNT" || fusermount3 -uz "$MNT"
	wait "$MPID" 2>/dev/null || true
}
CLEANUP+=("mountpoint -q '$MNT' && fusermount3 -uz '$MNT'")
stat_of() { getfattr -n user.nixoci.stats --only-values "$MNT" 2>/dev/null | awk -v k="$1" '$1 == k { print $2 }'; }
in_store() {
	local store=$1
	shift
	bwrap --bind / / --ro-bind "$store" /nix/store --dev /dev --proc /proc --die-with-parent -- "$@"
}
WALK_PATHS=$(tr '\n' ' ' <"$W/closure.list")
run_w() { # STORE WORKLOAD
	case $2 in
	java) in_store "$1" "$JAVA" -version 2>/dev/null ;;
	python) in_store "$1" "$PY" -c 'import json, sqlite3, decimal, asyncio' ;;
	walk) in_store "$1" /bin/sh -c "cd /nix/store && find $WALK_PATHS -printf '%p %s %m %l\n' | wc -l" >/dev/null ;;
	read) in_store "$1" dd if="$BIG" of=/dev/null bs=1M status=none ;;
	esac
}

# resident BYTES of the page cache of every file under the given paths
resident() {
	find "$@" -type f -print0 2>/dev/null | xargs -0 -r fincore -b -n -o RES 2>/dev/null |
		awk '{ s += $1 } END { printf "%d", s }'
}
# pagecache_sample MODE FILE [MOUNTPOINT CACHE]: page cache dropped, FILE
# read once; the bytes it left resident, per object. Caches are dropped
# first, and nothing else reads these files, so what is resident in the
# cache's files/ and chunks/ afterwards is this read's. Through a
# passthrough open, the mount's view of the file (mmap, so fincore) is the
# backing copy's pages: counted once.
pagecache_sample() {
	local mode=$1 f=$2 m=${3:-} c=${4:-} c0 c1 o0 o1 via copy chunks
	drop
	[ -z "$m" ] || o0=$(getfattr -n user.nixoci.stats --only-values "$m" | awk '$1 == "passthrough_opens" { print $2 }')
	c0=$(awk '$1 == "Cached:" { print $2 }' /proc/meminfo)
	cat "$f" >/dev/null
	c1=$(awk '$1 == "Cached:" { print $2 }' /proc/meminfo)
	sample pagecache "$mode" "$r" "$(((c1 - c0) * 1024))"
	via=$(resident "$f")
	if [ -z "$m" ]; then
		sample pc_total "$mode" "$r" "$via"
		return
	fi
	o1=$(getfattr -n user.nixoci.stats --only-values "$m" | awk '$1 == "passthrough_opens" { print $2 }')
	copy=$(resident "$c/files")
	chunks=$(resident "$c/chunks")
	sample pc_copy "$mode" "$r" "$copy"
	sample pc_chunks "$mode" "$r" "$chunks"
	if [ "${o1:-0}" != "${o0:-0}" ]; then
		sample pc_mount "$mode" "$r" 0 # the copy's pages, counted there
		sample pc_total "$mode" "$r" "$((copy + chunks))"
	else
		sample pc_mount "$mode" "$r" "$via"
		sample pc_total "$mode" "$r" "$((via + copy + chunks))"
	fi
}

skip() { case " ${BENCH_SESSION_SKIP:-} " in *" $1 "*) return 0 ;; esac; return 1; }
: >"$W/requests.tsv"
# ------------------------------------------------------------ requests
CACHE=$W/cache
if ! skip warm; then
say "requests: cold python start, warm python start, ls -l of the largest directory"
mount_fs "$REG/s" "$CACHE"
req_snapshot() { getfattr -n user.nixoci.stats --only-values "$MNT" | grep "^fuse_" | sort >"$W/req.$1"; }
req_delta() { # NAME A B
	join "$W/req.$2" "$W/req.$3" | awk -v n="$1" '{ d = $3 - $2; if (d) printf "%s\t%s\t%d\n", n, $1, d }' >>"$W/requests.tsv"
}
BIGDIR=$(for p in $(cat "$W/closure.paths"); do find "$p" -type d; done 2>/dev/null |
	while read -r d; do echo "$(ls -A "$d" | wc -l) $d"; done | sort -n | tail -n 1 | cut -d' ' -f2)
req_snapshot a
run_w "$MNT" python
req_snapshot b
req_delta python_cold a b
ls -l "$MNT/${BIGDIR#/nix/store/}" >/dev/null
req_snapshot c
req_delta "ls_l_cold($(ls -A "$BIGDIR" | wc -l) entries)" b c
umount_fs
mount_fs "$REG/s" "$CACHE"
drop
req_snapshot d
run_w "$MNT" python
req_snapshot e
req_delta python_warm d e
drop
ls -l "$MNT/${BIGDIR#/nix/store/}" >/dev/null
req_snapshot f
req_delta "ls_l_warm" e f
# java's start, cold (first on this mount) and warm (remount, dropped)
case " $WORKLOADS " in *" java "*)
	req_snapshot g
	run_w "$MNT" java
	req_snapshot h
	req_delta java_cold g h
	umount_fs
	mount_fs "$REG/s" "$CACHE"
	drop
	req_snapshot i
	run_w "$MNT" java
	req_snapshot j
	req_delta java_warm i j
	;;
esac

# ------------------------------------------------------- warm vs native
say "warm: first reads, then wait for the passthrough copies"
for w in $WORKLOADS; do run_w "$MNT" $w; run_w "$MNT" $w; done
settle() {
	local a b
	a=$(stat_of cache_copy_bytes)
	sleep 3
	b=$(stat_of cache_copy_bytes)
	[ "$a" = "$b" ]
}
wait_for 120 settle || true
sample info copy_bytes 0 "$(stat_of cache_copy_bytes)"
umount_fs
# Both modes side by side over two copies of the same cache, samples
# interleaved (the order alternates per run), so load from elsewhere on the
# machine hits both alike.
cp -a "$CACHE" "$CACHE-off"
MNT_AUTO=$MNT
MNT_OFF=$W/mnt-off
mkdir -p "$MNT_OFF"
mount_fs "$REG/s" "$CACHE" "passthrough=auto"
PID_AUTO=$MPID
MNT=$MNT_OFF
mount_fs "$REG/s" "$CACHE-off" "passthrough=off"
PID_OFF=$MPID
CLEANUP+=("mountpoint -q '$MNT_OFF' && fusermount3 -uz '$MNT_OFF'")
for r in $(seq "$RUNS"); do
	modes="auto off"
	[ $((r % 2)) = 0 ] && modes="off auto"
	for w in $WORKLOADS; do
		for mode in $modes; do
			[ $mode = auto ] && m=$MNT_AUTO || m=$MNT_OFF
			drop
			t0=$(now)
			run_w "$m" $w
			sample "warm_$mode" $w "$r" "$(secs "$t0" "$(now)")"
		done
	done
	# what reading the file once leaves in the page cache
	for mode in $modes; do
		[ $mode = auto ] && m=$MNT_AUTO c=$CACHE || m=$MNT_OFF c=$CACHE-off
		pagecache_sample $mode "$m/${BIG#/nix/store/}" "$m" "$c"
	done
done
for mode in auto off; do
	[ $mode = auto ] && MNT=$MNT_AUTO MPID=$PID_AUTO || MNT=$MNT_OFF MPID=$PID_OFF
	sample info "fetched_$mode" 0 "$(stat_of bytes_fetched)"
	sample info "passthrough_opens_$mode" 0 "$(stat_of passthrough_opens)"
	umount_fs
done
MNT=$MNT_AUTO
say "native, page cache dropped"
for r in $(seq "$RUNS"); do
	for w in $WORKLOADS; do
		drop
		t0=$(now)
		run_w /nix/store $w
		sample native $w "$r" "$(secs "$t0" "$(now)")"
	done
	pagecache_sample native "$BIG"
done
fi

# ------------------------------------------------------------- fleet
if ! skip fleet; then
MODS="sqlite3 curses decimal json asyncio xml.dom.minidom email.mime.text http.client unittest multiprocessing csv logging.handlers ctypes hashlib zipfile lzma"
say "fleet: 16 containers at once on an empty cache, against one alone"
for r in $(seq "$RUNS"); do
	rm -rf "$W/cache-fleet"
	mount_fs "$REG/s" "$W/cache-fleet"
	drop
	t0=$(now)
	pids=()
	i=0
	for m in $MODS; do
		i=$((i + 1))
		in_store "$MNT" "$PY" -c "import $m" >"$W/fleet.$i.out" 2>&1 &
		pids+=($!)
	done
	ok=0
	for p in "${pids[@]}"; do wait "$p" && ok=$((ok + 1)); done
	sample fleet sixteen "$r" "$(secs "$t0" "$(now)")"
	sample fleet sixteen_ok "$r" "$ok"
	umount_fs
	rm -rf "$W/cache-fleet"
	mount_fs "$REG/s" "$W/cache-fleet"
	drop
	t0=$(now)
	in_store "$MNT" "$PY" -c "import sqlite3"
	sample fleet one "$r" "$(secs "$t0" "$(now)")"
	umount_fs
done

fi
# ----------------------------------------------------------- lookups
# The same 8 paths twice, each time on a fresh mount and an empty cache:
# all 8 at once, then one at a time. "One" is the mean of the single
# lookups, so the ratio compares like with like (the closure's paths differ
# a lot in TOC size; a different ninth path would not). The proxy logs each
# request's start, so the spread of the registry-side starts is reported too.
if ! skip lookups; then
say "lookups: 8 concurrent first lookups vs the same 8 one at a time, 150 ms added per request"
PX=$W/proxy
mkdir -p "$PX"
echo "mode=pass delay=150" >"$PX/control"
. "$SRC/bench/link.sh"
bench_link --upstream "$REG" --control "$PX/control" \
	--port-file "$PX/port" --log "$PX/log" >"$PX/err" 2>&1 &
CLEANUP+=("kill $!; wait $! 2>/dev/null")
wait_for 10 test -s "$PX/port" || die "proxy did not start"
PREF=127.0.0.1:$(cat "$PX/port")/s
# bench/pstat.c: threads started first and released by one barrier, so
# the time is the lookups' (8 Python threads spread their stat calls over
# up to a second on a loaded machine: start-up and the interpreter lock).
cc -O2 -pthread -o "$W/pstat" "$SRC/bench/pstat.c" || die "cannot build bench/pstat.c"
# the spread of the manifest requests' starts at the proxy, in seconds
spread() {
	sed -n "$1,\$p" "$PX/log" | sed -nE 's/^([0-9.]+) begin GET .*\/manifests\/.*/\1/p' |
		sort -n | awk 'NR == 1 { a = $1 } { b = $1 } END { printf "%.4f", b - a }'
}
BEFORE=${BENCH_SESSION_BEFORE:-}
case $BEFORE in '' | /*) ;; *) BEFORE=$SRC/$BEFORE ;; esac
[ -z "$BEFORE" ] || [ -x "$BEFORE/bin/nixoci-fs" ] || die "no $BEFORE/bin/nixoci-fs"
for r in $(seq "$RUNS"); do
	set -- $(sed -n "$((r * 8 + 1)),$((r * 8 + 8))p" "$W/closure.list")
	builds=this
	[ -n "$BEFORE" ] && { [ $((r % 2)) = 1 ] && builds="this before" || builds="before this"; }
	for b in $builds; do
		[ $b = this ] && FS=$O/bin/nixoci-fs g=lookups || FS=$BEFORE/bin/nixoci-fs g=lookups_before
		rm -rf "$W/cache-lk"
		mount_fs "$PREF" "$W/cache-lk" "timeout=30"
		l0=$(($(wc -l <"$PX/log") + 1))
		sample $g eight "$r" "$("$W/pstat" all $(printf "$MNT/%s " "$@"))"
		sample $g spread "$r" "$(spread $l0)"
		umount_fs
		rm -rf "$W/cache-lk"
		mount_fs "$PREF" "$W/cache-lk" "timeout=30"
		t=$("$W/pstat" seq $(printf "$MNT/%s " "$@"))
		sample $g one "$r" "$(awk -v t="$t" 'BEGIN { printf "%.4f", t / 8 }')"
		umount_fs
	done
	sample load loadavg1 "$r" "$(cut -d' ' -f1 /proc/loadavg)"
done
FS=nixoci-fs
sample lookups max_inflight 0 "$(sed -nE 's/.* inflight=([0-9]+)$/\1/p' "$PX/log" | sort -n | tail -n 1)"
fi

# ------------------------------------------------------------ report
mkdir -p "$RESULTS"
cp "$TSV" "$RESULTS/session.tsv"
cp "$W/requests.tsv" "$RESULTS/session-requests.tsv"
/usr/bin/python3 - "$TSV" "$W/requests.tsv" "$BIGSIZE" >"$RESULTS/session.md" <<'EOF'
import collections, statistics, sys
tsv, req, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = collections.defaultdict(list)
for line in open(tsv):
    g, n, r, v = line.rstrip("\n").split("\t")
    d[(g, n)].append(float(v))
med = lambda g, n: statistics.median(d[(g, n)]) if d.get((g, n)) else float("nan")
print("| workload (page cache dropped) | native | passthrough=auto | ratio | passthrough=off | ratio |")
print("|---|---|---|---|---|---|")
for w in ("java", "python", "walk", "read"):
    if not d.get(("native", w)): continue
    nat, a, o = med("native", w), med("warm_auto", w), med("warm_off", w)
    print(f"| {w} | {nat:.3f} s | {a:.3f} s | {a / nat:.2f}x | {o:.3f} s | {o / nat:.2f}x |")
print()
mb = size / 1e6
nat, a, o = med("native", "read"), med("warm_auto", "read"), med("warm_off", "read")
print(f"Sequential read of the {size / 2**20:.0f} MiB file, page cache dropped: native "
      f"{mb / nat:.0f} MB/s, passthrough=auto {mb / a:.0f} MB/s ({nat / a * 100:.0f}% of native), "
      f"passthrough=off {mb / o:.0f} MB/s ({nat / o * 100:.0f}%).")
print()
pc = lambda g, n: med(g, n) / size
if d.get(("pc_total", "native")):
    print("| page cache after reading the file once (fincore, in file sizes) | native | passthrough=auto | passthrough=off |")
    print("|---|---|---|---|")
    print(f"| resident, all objects of the file | {pc('pc_total', 'native'):.2f} | {pc('pc_total', 'auto'):.2f} | {pc('pc_total', 'off'):.2f} |")
    print(f"| … the file through the mount (its own pages) | {pc('pc_total', 'native'):.2f} | {pc('pc_mount', 'auto'):.2f} | {pc('pc_mount', 'off'):.2f} |")
    print(f"| … the passthrough copy (files/) | | {pc('pc_copy', 'auto'):.2f} | {pc('pc_copy', 'off'):.2f} |")
    print(f"| … the chunk files (chunks/) | | {pc('pc_chunks', 'auto'):.2f} | {pc('pc_chunks', 'off'):.2f} |")
    print(f"| Cached growth (/proc/meminfo, machine-wide) | {pc('pagecache', 'native'):.2f} | {pc('pagecache', 'auto'):.2f} | {pc('pagecache', 'off'):.2f} |")
    print()
if d.get(("fleet", "sixteen")): print(f"Fleet: 16 containers at once on an empty cache {med('fleet', 'sixteen'):.2f} s "
      f"(all succeeded: {min(d[('fleet', 'sixteen_ok')]):.0f}/16 in every run), one alone "
      f"{med('fleet', 'one'):.2f} s: {med('fleet', 'sixteen') / med('fleet', 'one'):.2f}x.")
print()
if d.get(("lookups", "eight")): print(f"First lookups behind 150 ms per request: 8 concurrent {med('lookups', 'eight'):.3f} s, "
      f"one (mean of the same 8 one at a time) {med('lookups', 'one'):.3f} s: "
      f"{med('lookups', 'eight') / med('lookups', 'one'):.2f}x; the 8 manifest requests reached "
      f"the proxy within {med('lookups', 'spread') * 1000:.0f} ms; "
      f"most requests on the link at once: {max(d[('lookups', 'max_inflight')]):.0f}.")
if d.get(("lookups_before", "eight")): print(f"The same with BENCH_SESSION_BEFORE's nixoci-fs, alternating run by run: "
      f"8 concurrent {med('lookups_before', 'eight'):.3f} s, one {med('lookups_before', 'one'):.3f} s: "
      f"{med('lookups_before', 'eight') / med('lookups_before', 'one'):.2f}x; manifest requests within "
      f"{med('lookups_before', 'spread') * 1000:.0f} ms. Load average (1 min) during the runs: "
      f"{', '.join(f'{v:.2f}' for v in d[('load', 'loadavg1')])}.")
print()
if d.get(("info", "copy_bytes")): print(f"Passthrough copies made: {max(d[('info', 'copy_bytes')]) / 2**20:.0f} MiB; bytes fetched "
      f"by the warm mounts: auto {max(d[('info', 'fetched_auto')]):.0f}, off "
      f"{max(d[('info', 'fetched_off')]):.0f}; passthrough opens: auto "
      f"{max(d[('info', 'passthrough_opens_auto')]):.0f}, off {max(d[('info', 'passthrough_opens_off')]):.0f}.")
print()
print("| FUSE requests | kind | count |")
print("|---|---|---|")
for line in open(req):
    n, k, c = line.rstrip("\n").split("\t")
    print(f"| {n} | {k[5:]} | {c} |")
EOF
cat "$RESULTS/session.md"
say "done"
