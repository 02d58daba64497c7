#!/bin/bash
# bench/run.sh [O]: the benchmark of issue 6 (run by `make bench`).
#
# Builds a ~1700-path, ~2.4 GiB closure from this machine's own files
# (bench/closure), pushes it to a local docker-registry, and starts a JDK and
# CPython from it, walks its metadata and reads its largest file, four ways:
#   nixoci  nixoci-fs: empty cache / warm cache after a remount / page cache hot
#   pull    the closure as a buildLayeredImage-style OCI image (bench/oci-layered.py):
#           skopeo copy + unpacking every layer, then the workload from the tree
#   copy    nix copy from a binary cache served over HTTP on loopback into a
#           fresh chroot store, then the workload from it
#   native  the local /nix/store
# Programs run in bwrap with the host's / and the store under test bound at
# /nix/store. "cold" = page cache dropped (echo 3 > drop_caches) just before.
# Every sample lands in $RUN/samples.tsv, every other figure in facts.tsv;
# bench/report.py turns them into bench/results/latest.json, the chart and
# the generated part of docs/benchmarks.md.
#
# Knobs (environment): BENCH_RUNS=3 (runs per measurement), BENCH_WORK=
# /var/tmp/nixoci-bench (the OCI layout and the binary cache are kept there
# between runs, keyed by the closure), BENCH_KEEP=1 (keep $BENCH_WORK/run).
# Needs root (drop_caches, FUSE, bwrap), Debian 12 with the packages of
# tests/lib/deps.txt; installs gnuplot-nox itself when it is missing.
set -euo pipefail
export LC_ALL=C

SRC=$(cd "$(dirname "$0")/.." && pwd)
O=${1:-build}
case $O in /*) ;; *) O=$SRC/$O ;; esac
BIN=$O/bin
WORK=${BENCH_WORK:-/var/tmp/nixoci-bench}
RUNS=${BENCH_RUNS:-3}
RUN=$WORK/run
RESULTS=$SRC/bench/results
export PATH=$BIN:$PATH:/usr/sbin:/sbin
export NIX_CONFIG="extra-experimental-features = nix-command"
NIXB=(--option substituters "" --option sandbox false --option fsync-metadata false)

T_START=$(date +%s)
say() { printf '[bench %4ds] %s\n' $(($(date +%s) - T_START)) "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ------------------------------------------------------------ prerequisites

[ "$(id -u)" = 0 ] || die "run as root (drop_caches, FUSE mounts, bwrap)"
[ -x "$BIN/nixoci" ] && [ -x "$BIN/nixoci-fs" ] || die "no $BIN/nixoci*: run make first"
for c in nix-build nix-store nix docker-registry skopeo bwrap strace fusermount3 curl; do
	command -v "$c" >/dev/null || die "$c is missing (see tests/lib/deps.txt)"
done
if ! command -v gnuplot >/dev/null; then
	say "installing gnuplot-nox (for the chart)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gnuplot-nox \
		>/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			gnuplot-nox >/dev/null; } || say "no gnuplot: the chart will be missing"
fi
DROP=1
if ! { sync && echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
	DROP=0
	say "warning: cannot drop the page cache here; cold runs are only cache-cold"
fi
# Dropped twice, 3 s apart, as in bench/session.sh: on this VM one drop
# right after a read leaves part of a file readable at 2+ GB/s, so a single
# drop made "cold" mean different things for different runs.
drop() { if [ $DROP = 1 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; sleep 3; echo 3 >/proc/sys/vm/drop_caches; fi; }

make -s -C "$SRC/bench" O="$O" >/dev/null

# Everything below registers its own cleanup.
CLEANUP=()
cleanup() {
	local i
	for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[$i]}" || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if mountpoint -q "$RUN/mnt" 2>/dev/null; then fusermount3 -u "$RUN/mnt" || true; fi
rm -rf "$RUN"
mkdir -p "$RUN" "$RESULTS"
[ -n "${BENCH_KEEP:-}" ] || CLEANUP+=("rm -rf '$RUN'")
SAMPLES=$RUN/samples.tsv
FACTS=$RUN/facts.tsv
: >"$SAMPLES"
: >"$FACTS"
fact() { printf '%s\t%s\n' "$1" "$2" >>"$FACTS"; }
# sample METHOD WORKLOAD PHASE RUN SECONDS [BYTES_FETCHED]
sample() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" >>"$SAMPLES"; }

# timed CMD...: run CMD (output to $RUN/cmd.log), set SECS; fail on failure
timed() {
	local t0 t1
	t0=$(date +%s%N)
	if ! "$@" >>"$RUN/cmd.log" 2>&1; then
		tail -n 20 "$RUN/cmd.log" >&2
		die "failed: $*"
	fi
	t1=$(date +%s%N)
	SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", (b - a) / 1e9 }')
}

free_port() {
	/usr/bin/python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# wait_for SECONDS CMD...: poll CMD every 0.1 s
wait_for() {
	local n=$(($1 * 10))
	shift
	while ! "$@" 2>/dev/null; do
		n=$((n - 1))
		[ $n -gt 0 ] || return 1
		sleep 0.1
	done
}

# ------------------------------------------------------------- the closure

say "closure: describing host files"
/usr/bin/python3 "$SRC/bench/closure/spec.py" >"$RUN/spec.json" 2>>"$RUN/cmd.log"
say "closure: nix-build (cached after the first run; ~15 min the first time on 2 cores)"
timed nix-build "$SRC/bench/closure/closure.nix" --arg spec "$RUN/spec.json" \
	"${NIXB[@]}" --max-jobs 8 \
	--out-link "$WORK/closure"
ROOT=$(readlink -f "$WORK/closure")
fact build_s "$SECS"
fact root "$ROOT"
JAVA=$(readlink "$ROOT/bin/java")
PY=$(readlink "$ROOT/bin/python3")
nix path-info --json -r "$ROOT" >"$RUN/pathinfo.json"
# closure facts: paths, NAR sizes, file count, the largest file
/usr/bin/python3 - "$RUN" <<'EOF' >>"$FACTS"
import json, os, sys
run = sys.argv[1]
info = json.load(open(os.path.join(run, "pathinfo.json")))
refs = sum(len([r for r in p.get("references", []) if r != p["path"]]) for p in info)
files, biggest, size = 0, None, -1
with open(os.path.join(run, "closure.list"), "w") as f:
    for p in sorted(x["path"] for x in info):
        f.write(os.path.basename(p) + "\n")
        for d, dirs, names in os.walk(p):
            for n in names:
                fp = os.path.join(d, n)
                if os.path.islink(fp):
                    continue
                files += 1
                s = os.path.getsize(fp)
                if s > size:
                    biggest, size = fp, s
print(f"paths\t{len(info)}\nnar_bytes\t{sum(p['narSize'] for p in info)}\nreferences\t{refs}")
print(f"files\t{files}\nlargest\t{biggest}\nlargest_bytes\t{size}")
EOF
LARGEST=$(awk -F'\t' '$1 == "largest" { print $2 }' "$FACTS")
LARGEST_BYTES=$(awk -F'\t' '$1 == "largest_bytes" { print $2 }' "$FACTS")
say "closure: $ROOT: $(awk -F'\t' '$1=="paths"{p=$2} $1=="nar_bytes"{b=$2} END {printf "%d paths, %.2f GiB", p, b/2^30}' "$FACTS")"

# ---------------------------------------------------------------- registry

REG_DIR=$RUN/registry
mkdir -p "$REG_DIR/storage"
REG_PORT=$(free_port)
# blob descriptors cached in memory, as in the config.yml Debian ships with
# docker-registry (distribution's default): the same for every method compared
cat >"$REG_DIR/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $REG_DIR/storage
http:
  addr: 127.0.0.1:$REG_PORT
EOF
docker-registry serve "$REG_DIR/config.yml" >"$REG_DIR/log" 2>&1 &
REG_PID=$!
CLEANUP+=("kill $REG_PID; wait $REG_PID")
wait_for 20 curl -fsS -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" || die "docker-registry did not start"
REG=127.0.0.1:$REG_PORT
REF=$REG/bench/store

say "push: nixoci push of the closure"
timed nixoci push --tag bench "$REF" "$ROOT"
fact push_s "$SECS"
fact push_summary "$(grep '^pushed' "$RUN/cmd.log" | tail -n 1)"
say "push: $(grep '^pushed' "$RUN/cmd.log" | tail -n 1)"
timed nixoci push --tag bench "$REF" "$ROOT"
fact repush_s "$SECS"
say "push: re-push of the unchanged closure took ${SECS}s"

say "pull-everything: OCI image in buildLayeredImage's layout (cached in $WORK/oci)"
timed /usr/bin/python3 "$SRC/bench/oci-layered.py" "$ROOT" "$WORK/oci"
IMG=$REG/bench/layered:latest
timed skopeo copy --quiet --dest-tls-verify=false "oci:$WORK/oci:latest" "docker://$IMG"
fact oci_push_s "$SECS"
fact oci_layers "$(jq '.layers | length' "$WORK/oci/blobs/sha256/$(jq -r '.manifests[0].digest' "$WORK/oci/index.json" | cut -d: -f2)")"
fact oci_gzip_bytes "$(jq '[.layers[].size] | add' "$WORK/oci/blobs/sha256/$(jq -r '.manifests[0].digest' "$WORK/oci/index.json" | cut -d: -f2)")"

say "nix copy: binary cache (zstd, cached in $WORK/bincache), served by python3 -m http.server"
if [ "$(cat "$WORK/bincache.root" 2>/dev/null)" != "$ROOT" ]; then
	rm -rf "$WORK/bincache"
	timed nix copy --to "file://$WORK/bincache?compression=zstd" "$ROOT"
	echo "$ROOT" >"$WORK/bincache.root"
fi
fact bincache_bytes "$(du -sb "$WORK/bincache" | cut -f1)"
HTTP_PORT=$(free_port)
/usr/bin/python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$WORK/bincache" \
	>"$RUN/http.log" 2>&1 &
HTTP_PID=$!
CLEANUP+=("kill $HTTP_PID; wait $HTTP_PID")
wait_for 20 curl -fsS -o /dev/null "http://127.0.0.1:$HTTP_PORT/nix-cache-info" ||
	die "http.server did not start"

# --------------------------------------------------------------- workloads

# in_store STORE CMD...: CMD with the host's / and STORE at /nix/store
in_store() {
	local store=$1
	shift
	bwrap --bind / / --ro-bind "$store" /nix/store --dev /dev --proc /proc \
		--die-with-parent -- "$@"
}
WORKLOADS=(java python walk read)
# run_workload STORE W: the workload, output checked where it is cheap
run_workload() {
	case $2 in
	java) in_store "$1" "$JAVA" -version ;;
	python) in_store "$1" "$PY" -c 'import json, sqlite3, decimal, asyncio' ;;
	walk) in_store "$1" /bin/sh -c 'cd /nix/store && find $(cat "$0") -printf "%p %s %m %T@ %l\n" | wc -l' \
		"$RUN/closure.list" >"$RUN/walk.count" &&
		[ "$(cat "$RUN/walk.count")" = "$WALK_COUNT" ] ;;
	read) in_store "$1" dd if="$LARGEST" of=/dev/null bs=1M status=none ;;
	esac
}
# shellcheck disable=SC2046 # one argument per store path
WALK_COUNT=$(cd /nix/store && find $(cat "$RUN/closure.list") | wc -l)
fact walk_entries "$WALK_COUNT"

# ------------------------------------------------ touched paths, NAR sizes

say "touched store paths (strace of the programs on the native store)"
for w in java python; do
	case $w in
	java) strace -f -qq -e trace=%file,execve -o "$RUN/strace-$w.log" "$JAVA" -version ;;
	python) strace -f -qq -e trace=%file,execve -o "$RUN/strace-$w.log" "$PY" -c \
		'import json, sqlite3, decimal, asyncio' ;;
	esac >/dev/null 2>&1
	/usr/bin/python3 - "$RUN" "$w" <<'EOF' >>"$FACTS"
import json, os, re, sys
run, w = sys.argv[1:]
sizes = {p["path"]: p["narSize"] for p in json.load(open(os.path.join(run, "pathinfo.json")))}
touched = set()
seen = set()
def add(p):
    """p and where its symlinks lead; for a script, its #! interpreter too
    (the kernel opens that one itself, so strace shows no call for it)."""
    if p in seen:
        return
    seen.add(p)
    for q in (p, os.path.realpath(p)):
        parts = q.split("/")
        if q.startswith("/nix/store/") and len(parts) > 3:
            touched.add("/nix/store/" + parts[3])
    try:
        with open(p, "rb") as f:
            head = f.read(256)
    except OSError:
        return
    if head.startswith(b"#!"):
        interp = head[2:].split(b"\n")[0].split()
        if interp and interp[0].startswith(b"/nix/store/"):
            add(interp[0].decode())
for m in re.finditer(r'/nix/store/[0-9a-df-np-sv-z]{32}-[^/"]+(?:/[^"]*)?', open(os.path.join(run, f"strace-{w}.log")).read()):
    add(m.group(0))
touched &= set(sizes)
with open(os.path.join(run, f"touched-{w}.list"), "w") as f:
    f.write("".join(t + "\n" for t in sorted(touched)))
print(f"touched_paths_{w}\t{len(touched)}\ntouched_nar_bytes_{w}\t{sum(sizes[t] for t in touched)}")
EOF
done
fact touched_nar_bytes_walk "$(awk -F'\t' '$1 == "nar_bytes" { print $2 }' "$FACTS")"
fact touched_nar_bytes_read "$(/usr/bin/python3 -c '
import json, sys
want = "/".join(sys.argv[2].split("/")[:4])
print([p["narSize"] for p in json.load(open(sys.argv[1])) if p["path"] == want][0])' \
	"$RUN/pathinfo.json" "$LARGEST")"

# ---------------------------------------------------------- FUSE ceiling

MNT=$RUN/mnt
mkdir -p "$MNT"
say "FUSE ceiling: bench/memfs serving $LARGEST_BYTES bytes from memory"
for r in $(seq "$RUNS"); do
	"$O/bench/memfs" "$MNT" "$LARGEST_BYTES" >"$RUN/memfs.log" 2>&1 &
	MEMFS_PID=$!
	wait_for 10 mountpoint -q "$MNT" || die "memfs did not mount"
	drop
	timed dd if="$MNT/data" of=/dev/null bs=1M status=none
	sample memfs read uncached "$r" "$SECS"
	timed dd if="$MNT/data" of=/dev/null bs=1M status=none
	sample memfs read hot "$r" "$SECS"
	fusermount3 -u "$MNT"
	wait "$MEMFS_PID"
done

# -------------------------------------------------------------- nixoci-fs

FS_PID=
fs_mount() { # CACHE [EXTRA_OPTS]
	nixoci-fs -f -o "cache=$1${2:+,$2}" "$REF" "$MNT" >>"$RUN/fs.log" 2>&1 &
	FS_PID=$!
	CLEANUP+=("mountpoint -q '$MNT' && fusermount3 -u '$MNT'")
	wait_for 30 mountpoint -q "$MNT" || { tail "$RUN/fs.log" >&2; die "nixoci-fs did not mount"; }
}
fs_umount() {
	fusermount3 -u "$MNT"
	wait "$FS_PID" || die "nixoci-fs exited with status $?"
	FS_PID=
}
fs_stat() { nixoci stats "$MNT" | awk -v k="$1" '$1 == k { print $2 }'; }

nixoci_run() { # RUN WORKLOAD
	local r=$1 w=$2 cache=$RUN/cache-nixoci t0 b
	rm -rf "$cache"
	t0=$(date +%s%N)
	fs_mount "$cache"
	sample nixoci mount empty "$r" "$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.4f", (b - a) / 1e9 }')"
	drop
	timed run_workload "$MNT" "$w"
	sample nixoci "$w" cold "$r" "$SECS" "$(fs_stat bytes_fetched)"
	[ "$r" = 1 ] && fact "paths_loaded_$w" "$(fs_stat paths_loaded)"
	timed run_workload "$MNT" "$w"
	sample nixoci "$w" hot "$r" "$SECS"
	fs_umount
	fs_mount "$cache"
	drop
	timed run_workload "$MNT" "$w"
	b=$(fs_stat bytes_fetched)
	sample nixoci "$w" warm "$r" "$SECS" "$b"
	[ "$b" = 0 ] || say "warning: remount over a warm cache fetched $b bytes ($w)"
	if [ "$w" = read ]; then
		# the chunk files are in the page cache now; a remount drops only
		# the mount's own pages: this is the cached-read throughput
		fs_umount
		fs_mount "$cache"
		timed run_workload "$MNT" "$w"
		sample nixoci read cached-ram "$r" "$SECS"
	fi
	fs_umount
}

native_run() { # RUN WORKLOAD
	drop
	timed run_workload /nix/store "$2"
	sample native "$2" cold "$1" "$SECS"
	timed run_workload /nix/store "$2"
	sample native "$2" hot "$1" "$SECS"
}

pull_run() { # RUN
	local r=$1 d=$RUN/pull w m l
	rm -rf "$d"
	mkdir -p "$d/rootfs"
	drop
	timed skopeo copy --quiet --src-tls-verify=false "docker://$IMG" "oci:$d/img:latest"
	sample pull fetch all "$r" "$SECS"
	m=$d/img/blobs/sha256/$(jq -r '.manifests[0].digest' "$d/img/index.json" | cut -d: -f2)
	unpack() {
		for l in $(jq -r '.layers[].digest' "$m" | cut -d: -f2); do
			tar -xzf "$d/img/blobs/sha256/$l" -C "$d/rootfs" || return 1
		done
	}
	timed unpack
	sample pull unpack all "$r" "$SECS"
	# what a runtime does next: start the program right away
	for w in "${WORKLOADS[@]}"; do
		timed run_workload "$d/rootfs/nix/store" "$w"
		sample pull "$w" after-fetch "$r" "$SECS"
	done
	# the image already local, page cache dropped
	for w in "${WORKLOADS[@]}"; do
		drop
		timed run_workload "$d/rootfs/nix/store" "$w"
		sample pull "$w" warm "$r" "$SECS"
	done
	rm -rf "$d"
}

copy_run() { # RUN
	local r=$1 d=$RUN/nixcopy w
	rm -rf "$d"
	mkdir -p "$d/xdg"
	drop
	timed env XDG_CACHE_HOME="$d/xdg" nix copy --no-check-sigs \
		--from "http://127.0.0.1:$HTTP_PORT" --to "$d/root" "$ROOT"
	sample copy fetch all "$r" "$SECS"
	for w in "${WORKLOADS[@]}"; do
		timed run_workload "$d/root/nix/store" "$w"
		sample copy "$w" after-fetch "$r" "$SECS"
	done
	for w in "${WORKLOADS[@]}"; do
		drop
		timed run_workload "$d/root/nix/store" "$w"
		sample copy "$w" warm "$r" "$SECS"
	done
	chmod -R u+w "$d" 2>/dev/null || true
	rm -rf "$d"
}

# The methods take turns run by run, so slow drift of the machine (other
# work, thermal) spreads over all of them alike.
for r in $(seq "$RUNS"); do
	say "run $r/$RUNS: native"
	for w in "${WORKLOADS[@]}"; do native_run "$r" "$w"; done
	say "run $r/$RUNS: nixoci-fs (cold, hot, warm after remount)"
	for w in "${WORKLOADS[@]}"; do nixoci_run "$r" "$w"; done
	say "run $r/$RUNS: pull-everything (skopeo copy + unpack $(awk -F'\t' '$1=="oci_layers"{print $2}' "$FACTS") layers)"
	pull_run "$r"
	say "run $r/$RUNS: nix copy from http://127.0.0.1:$HTTP_PORT"
	copy_run "$r"
done

# ---------------------------------------------------- whole closure cached

say "whole closure: nixoci prefetch, then every file read through the mount"
CACHE_FULL=$RUN/cache-full
timed nixoci prefetch --cache "$CACHE_FULL" "$REF" "$ROOT"
fact prefetch_s "$SECS"
fs_mount "$CACHE_FULL"
timed in_store "$MNT" /bin/sh -c 'cd /nix/store && find $(cat "$0") -type f -exec cat {} + | wc -c' \
	"$RUN/closure.list"
fact read_all_s "$SECS"
fact read_all_fetched "$(fs_stat bytes_fetched)"
fact rss_peak_kib "$(awk '/^VmHWM:/ { print $2 }' "/proc/$FS_PID/status")"
fact cache_bytes_full "$(fs_stat cache_bytes)"
fs_umount

# ------------------------------------------------------------------ report

fact date "$(date -u +%Y-%m-%dT%H:%MZ)"
fact nproc "$(nproc)"
fact mem_kib "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
fact kernel "$(uname -r)"
fact os "$(. /etc/os-release && echo "$PRETTY_NAME")"
fact cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
fact nix_version "$(nix --version)"
fact skopeo_version "$(skopeo --version)"
fact registry_version "$(docker-registry --version 2>&1 | head -n 1)"
fact fuse_version "$(fusermount3 -V 2>&1)"
fact nixoci_commit "$(git -C "$SRC" describe --always --dirty 2>/dev/null || echo unknown)"
fact drop_caches "$DROP"
fact runs "$RUNS"
fact loadavg "$(cut -d' ' -f1-3 /proc/loadavg)"
fact total_s "$(($(date +%s) - T_START))"
cp "$SAMPLES" "$RESULTS/samples.tsv"
cp "$FACTS" "$RESULTS/facts.tsv"
/usr/bin/python3 "$SRC/bench/report.py" "$RESULTS" "$SRC/docs/benchmarks.md"
say "done: $RESULTS/latest.json, docs/benchmarks.md"
