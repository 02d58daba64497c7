#!/bin/bash
# bench/warm-open.sh [O [BEFORE]]: a warm `java -version` (cache on disk
# from an earlier run, daemon remounted, page cache dropped) with this
# build's nixoci-fs against BEFORE's (a build dir of another version, e.g.
# main's) and the native /nix/store, alternating run by run so that load
# from elsewhere hits all alike. The workload and the drop are
# bench/session.sh's (its "warm" part measures one build only).
#
# Each build fills its own cache with two cold runs first and waits until
# its background work (completions, copies) settles, as a user's second
# start comes after the first finished.
#
# Per sample: the wall time, and from the mount's metrics the daemon's
# total time in READ requests and the warm_* counters (cache/warm.c).
# Samples: bench/results/warm-open.tsv; medians: bench/results/warm-open.md.
# Knobs: BENCH_RUNS=7; BENCH_WARM_OPTS (extra mount options, e.g.
# passthrough=off). Needs root (drop_caches, FUSE, bwrap), ~3 min.
set -euo pipefail
export LC_ALL=C

SRC=$(cd "$(dirname "$0")/.." && pwd)
O=${1:-build}
BEFORE=${2:-}
case $O in /*) ;; *) O=$SRC/$O ;; esac
case $BEFORE in '' | /*) ;; *) BEFORE=$SRC/$BEFORE ;; esac
RUNS=${BENCH_RUNS:-7}
RESULTS=$SRC/bench/results
export PATH=$O/bin:$PATH:/usr/sbin:/sbin
say() { echo "[warm-open] $*" >&2; }
die() { say "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
[ -x "$O/bin/nixoci-fs" ] || die "no $O/bin/nixoci-fs (make first)"
[ -z "$BEFORE" ] || [ -x "$BEFORE/bin/nixoci-fs" ] || die "no $BEFORE/bin/nixoci-fs"
# as bench/session.sh: twice, 3 s apart (one drop right after a read leaves
# part of it cached on this VM)
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; sleep 3; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", (b - a) / 1e9 }'; }

W=$(mktemp -d /var/tmp/nixoci-warm-open.XXXXXX)
CLEANUP=("rm -rf '$W'")
cleanup() {
	local i
	for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[$i]}" || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
TSV=$W/warm-open.tsv
: >"$TSV"
sample() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$TSV"; }

say "the JDK 17 closure (bench/closure; cached by Nix after the first build)"
/usr/bin/python3 "$SRC/bench/closure/spec.py" >"$W/cspec.json" 2>>"$W/build.log"
CROOT=$(nix-build "$SRC/bench/closure/closure.nix" --arg spec "$W/cspec.json" --no-out-link \
	--option substituters "" --option sandbox false --max-jobs 4 2>>"$W/build.log")
JAVA=$(readlink "$CROOT/bin/java")

mkdir -p "$W/reg/storage"
port=$(/usr/bin/python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# blob descriptors cached in memory, as in the config.yml Debian ships with
# docker-registry (distribution's default): the same for every method compared
cat >"$W/reg/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $W/reg/storage
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$W/reg/config.yml" >"$W/reg/log" 2>&1 &
CLEANUP+=("kill $!; wait $! 2>/dev/null")
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null && break; sleep 0.1; done
REF=127.0.0.1:$port/s
say "push the JDK's closure"
nixoci push "$REF" "$(echo "$JAVA" | cut -d/ -f1-4)" >"$W/push.log" 2>&1

MNT=$W/mnt
mkdir -p "$MNT"
CLEANUP+=("mountpoint -q '$MNT' && fusermount3 -uz '$MNT'")
MPID=
mount_fs() { # BUILD CACHE
	"$1/bin/nixoci-fs" -f -o "cache=$2${BENCH_WARM_OPTS:+,$BENCH_WARM_OPTS}" "$REF" "$MNT" \
		>>"$W/fs.log" 2>&1 &
	MPID=$!
	for _ in $(seq 300); do mountpoint -q "$MNT" && return 0; sleep 0.1; done
	die "mount failed: $(tail -n 5 "$W/fs.log")"
}
umount_fs() {
	fusermount3 -u "$MNT" || fusermount3 -uz "$MNT"
	wait "$MPID" 2>/dev/null || true
}
java_in() {
	bwrap --bind / / --ro-bind "$1" /nix/store --dev /dev --proc /proc --die-with-parent -- \
		"$JAVA" -version 2>/dev/null
}
stat_of() { getfattr -n user.nixoci.stats --only-values "$MNT" 2>/dev/null | awk -v k="$1" '$1 == k { print $2 }'; }
op_secs() { # OP: the daemon's total time in requests of kind OP
	getfattr -n user.nixoci.metrics --only-values "$MNT" 2>/dev/null |
		awk -v op="op=\"$1\"" '/^nixoci_fuse_request_duration_seconds_sum/ && index($0, op) { print $2 }'
}
read_secs() { op_secs read; }

# cold_fill BUILD CACHE: cold runs fill the cache, each build its own (what
# a build leaves in the cache, e.g. completed files, is part of what it
# gives the warm run): twice, so passthrough copies are made; then, as a
# user's next start comes after the first finished, wait until background
# work (completions, cache/complete.c; the copies) has settled (at most
# 60 s, then 5 s more)
cold_fill() {
	local last= cur
	mount_fs "$1" "$2"
	java_in "$MNT"
	java_in "$MNT"
	for _ in $(seq 60); do
		cur="$(stat_of complete_files) $(stat_of cache_copy_bytes) $(stat_of bytes_fetched)"
		[ "$cur" = "$last" ] && break
		last=$cur
		sleep 1
	done
	sleep 5
	say "after the cold runs of $1: complete_files $(stat_of complete_files)," \
		"complete_bytes $(stat_of complete_bytes), bytes_fetched $(stat_of bytes_fetched)," \
		"copies $(stat_of cache_copy_bytes) bytes"
	umount_fs
}
say "cold runs fill each build's cache"
cold_fill "$O" "$W/cache"
builds=this
[ -n "$BEFORE" ] && { cold_fill "$BEFORE" "$W/cache-before"; builds="this before"; }

for r in $(seq "$RUNS"); do
	order="$builds native"
	[ $((r % 2)) = 0 ] && order="native $(echo "$builds" | awk '{ for (i = NF; i; i--) printf "%s ", $i }')"
	for b in $order; do
		case $b in
		native)
			drop
			t0=$(now)
			java_in /nix/store
			sample native time "$(secs "$t0" "$(now)")"
			continue
			;;
		this) mount_fs "$O" "$W/cache" ;;
		before) mount_fs "$BEFORE" "$W/cache-before" ;;
		esac
		drop
		t0=$(now)
		java_in "$MNT"
		sample "$b" time "$(secs "$t0" "$(now)")"
		sample "$b" read_secs "$(read_secs)"
		sample "$b" fuse_read "$(stat_of fuse_read)"
		for op in lookup open getattr readlink; do sample "$b" "${op}_secs" "$(op_secs $op)"; done
		sample "$b" fuse_lookup "$(stat_of fuse_lookup)"
		sample "$b" warm_frames "$(stat_of warm_frames)"
		sample "$b" warm_bytes "$(stat_of warm_bytes)"
		sample "$b" bytes_fetched "$(stat_of bytes_fetched)"
		umount_fs
	done
	sample load loadavg1 "$(cut -d' ' -f1 /proc/loadavg)"
done

mkdir -p "$RESULTS"
cp "$TSV" "$RESULTS/warm-open.tsv"
/usr/bin/python3 - "$TSV" >"$RESULTS/warm-open.md" <<'EOF'
import collections, statistics, sys
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    b, k, v = line.rstrip("\n").split("\t")
    d[(b, k)].append(float(v) if v else float("nan"))
med = lambda b, k: statistics.median(d[(b, k)]) if d.get((b, k)) else float("nan")
nat = med("native", "time")
print("| warm java -version, page cache dropped | wall (median) | ratio to native | daemon time in READs | READs | chunk bytes read ahead at open | bytes fetched |")
print("|---|---|---|---|---|---|---|")
print(f"| native | {nat:.3f} s | 1.00x | | | | |")
for b in ("before", "this"):
    if not d.get((b, "time")): continue
    t, wb = med(b, "time"), med(b, "warm_bytes")
    wb = "–" if wb != wb else f"{wb / 2**20:.1f} MiB" # NaN: a build without warm.c
    print(f"| {b} | {t:.3f} s | {t / nat:.2f}x | {med(b, 'read_secs') * 1000:.0f} ms | "
          f"{med(b, 'fuse_read'):.0f} | {wb} | {max(d[(b, 'bytes_fetched')]):.0f} |")
print()
print("Samples per row:", len(d[("native", "time")]), "; load average (1 min) per run:",
      ", ".join(f"{v:.2f}" for v in d[("load", "loadavg1")]))
for b in ("native", "before", "this"):
    if d.get((b, "time")): print(f"{b}: " + " ".join(f"{v:.3f}" for v in d[(b, "time")]))
EOF
cat "$RESULTS/warm-open.md"
