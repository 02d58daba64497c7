#!/bin/bash
# bench/meta-walk.sh [O] [NIXFILE]: the walk of a whole closure's metadata
# from an empty cache, through a `-o closure=` mount, with the closure
# metadata blob (docs/format.md 5.1, one fetch) and without it (the index
# as written before it existed: each path loads on its own, manifest then
# TOC), and through a plain mount (no closure=: lookups by tag), at 0 ms
# and at 40 ms added per request.
#
# The delay comes from the bench's link, bench/delayproxy (bench/link.sh;
# BENCH_PROXY=py: tests/lib/faultproxy.py): delay=MS holds every request
# MS milliseconds before forwarding it: a link with that much round-trip
# time per request, no bandwidth limit. The closure is the CPython one of
# tests/lib/big.nix (118 paths) unless NIXFILE names another expression
# (build it first; bench/closure/closure.nix is the 1,544-path one, built
# with bench/closure/spec.py's spec; a directory, such as the out link
# /var/tmp/nixoci-bench/closure that make bench leaves, is used as built).
#
# One run = mount (nixoci-fs -f, fresh cache), `find` over every store path
# of the closure (stat of every entry, no file read), unmount; timed from
# the daemon's start to the end of the walk. Medians of 3 are printed as a
# Markdown table; every sample goes to stderr.
#
# Knobs: BENCH_RUNS (3), BENCH_DELAYS ("0 40"), BENCH_WALK_MODES ("walk
# walk-per-path plain": blob, per-path, plain), BENCH_COMPARE=DIR (a second
# build, e.g. of an older commit: each sample also runs DIR/bin/nixoci-fs,
# alternating with O's, and every mode gets a column for it).
set -euo pipefail
export LC_ALL=C

SRC=$(cd "$(dirname "$0")/.." && pwd)
O=${1:-build}
case $O in /*) ;; *) O=$SRC/$O ;; esac
NIXFILE=${2:-}
export PATH=$O/bin:$PATH:/usr/sbin:/sbin
RUNS=${BENCH_RUNS:-3}
DELAYS=${BENCH_DELAYS:-0 40}
MODES=${BENCH_WALK_MODES:-walk walk-per-path plain}
COMPARE=${BENCH_COMPARE:-}
WORK=$(mktemp -d /tmp/nixoci-meta-walk.XXXXXX)
PIDS=()
cleanup() {
	for m in "$WORK"/mnt-*; do
		mountpoint -q "$m" 2>/dev/null && fusermount3 -uz "$m"
	done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "[meta-walk] $*" >&2; }
free_port() {
	/usr/bin/python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

NIXB=(--no-out-link --option substituters "" --option sandbox false)
if [ -n "$NIXFILE" ] && [ -d "$NIXFILE" ]; then
	ROOT=$(readlink -f "$NIXFILE") # built already: a store path or an out link
elif [ "$(basename "$NIXFILE")" = closure.nix ]; then
	/usr/bin/python3 "$SRC/bench/closure/spec.py" >"$WORK/spec.json"
	ROOT=$(nix-build "$NIXFILE" --arg spec "$WORK/spec.json" "${NIXB[@]}")
elif [ -n "$NIXFILE" ]; then
	ROOT=$(nix-build "$NIXFILE" "${NIXB[@]}")
else
	/usr/bin/python3 "$SRC/tests/lib/python-spec.py" >"$WORK/spec.json"
	ROOT=$(nix-build "$SRC/tests/lib/big.nix" --arg spec "$WORK/spec.json" "${NIXB[@]}")
fi
CLOSURE=$(nix-store --query --requisites "$ROOT")
NPATHS=$(echo "$CLOSURE" | wc -l)
say "closure of $ROOT: $NPATHS paths"

port=$(free_port)
mkdir -p "$WORK/reg"
# blob descriptors cached in memory, as in the config.yml Debian ships with
# docker-registry (distribution's default): the same for every method compared
cat >"$WORK/reg/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $WORK/reg/storage
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$WORK/reg/config.yml" >"$WORK/reg/log" 2>&1 &
PIDS+=($!)
REG=127.0.0.1:$port
for _ in $(seq 100); do curl -fsS -o /dev/null "http://$REG/v2/" 2>/dev/null && break; sleep 0.1; done

echo "mode=pass" >"$WORK/ctl"
. "$SRC/bench/link.sh"
bench_link --upstream "$REG" --control "$WORK/ctl" \
	--port-file "$WORK/pport" --log "$WORK/plog" >"$WORK/pstderr" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/pport" ] && break; sleep 0.1; done
PROXY=127.0.0.1:$(cat "$WORK/pport")

say "pushing"
nixoci push --jobs 4 --tag walk "$REG/store" "$ROOT" >&2
# the same closure as an index without the metadata descriptor
IDX_MT=application/vnd.oci.image.index.v1+json
curl -fsS -H "Accept: $IDX_MT" "http://$REG/v2/store/manifests/walk" | /usr/bin/python3 -c '
import json, sys
x = json.load(sys.stdin)
x["manifests"] = [d for d in x["manifests"]
                  if "dev.nixoci.closure-meta" not in d.get("annotations", {})]
sys.stdout.write(json.dumps(x, separators=(",", ":"), sort_keys=True))' >"$WORK/old.json"
curl -fsS -X PUT -H "Content-Type: $IDX_MT" --data-binary @"$WORK/old.json" \
	"http://$REG/v2/store/manifests/walk-per-path" >/dev/null
BASES=$(echo "$CLOSURE" | xargs -n1 basename)

now_ms() { echo $(($(date +%s%N) / 1000000)); }
# one_walk TAG [FS]: prints the milliseconds of mount + walk
one_walk() {
	local tag=$1 fs=${2:-nixoci-fs} m=$WORK/mnt-$RANDOM t0 t1 pid
	mkdir -p "$m"
	t0=$(now_ms)
	local o="cache=$m.cache"
	[ "$tag" = plain ] || o="$o,closure=$tag"
	"$fs" -f -o "$o" "$PROXY/store" "$m" 2>>"$WORK/fs.log" &
	pid=$!
	until mountpoint -q "$m"; do
		kill -0 "$pid" 2>/dev/null || { say "nixoci-fs exited"; cat "$WORK/fs.log" >&2; exit 1; }
		sleep 0.005
	done
	(cd "$m" && echo "$BASES" | xargs find >/dev/null)
	t1=$(now_ms)
	fusermount3 -u "$m"
	wait "$pid"
	rm -rf "$m" "$m.cache"
	echo $((t1 - t0))
}
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

declare -A TITLE=([walk]="closure metadata blob (one fetch)"
	[walk-per-path]="per-path loading (index without it)" [plain]="plain mount (no closure=)")
hdr="| added RTT |" sep="|---|"
for tag in $MODES; do
	hdr="$hdr ${TITLE[$tag]} |" sep="$sep---|"
	[ -z "$COMPARE" ] || hdr="$hdr same, $COMPARE |" sep="$sep---|"
done
echo "$hdr"
echo "$sep"
for d in $DELAYS; do
	if [ "$d" = 0 ]; then echo "mode=pass" >"$WORK/ctl"; else echo "mode=pass delay=$d" >"$WORK/ctl"; fi
	row="| $d ms |"
	for tag in $MODES; do
		s=() c=()
		for _ in $(seq "$RUNS"); do
			[ -z "$COMPARE" ] || c+=("$(one_walk $tag "$COMPARE/bin/nixoci-fs")")
			s+=("$(one_walk $tag)")
		done
		say "delay $d ms, $tag: ${s[*]} ms${COMPARE:+; $COMPARE: ${c[*]} ms}; $(uptime)"
		row="$row $(printf '%s\n' "${s[@]}" | median) ms |"
		[ -z "$COMPARE" ] || row="$row $(printf '%s\n' "${c[@]}" | median) ms |"
	done
	echo "$row"
done
echo
echo "$NPATHS store paths; medians of $RUNS; mount + find over every path, fresh cache each run."
