#!/bin/bash
# bench/push.sh [O]: pushing a closure, nixoci against skopeo (make bench runs
# it; alone: make bench-push). Same closure as run.sh (bench/closure, its
# nix-build kept in $BENCH_WORK/closure) and the same layered OCI image of
# it (bench/oci-layered.py: gzip layers in $BENCH_WORK/oci, the same layers
# uncompressed in $BENCH_WORK/oci-raw; both made once and reused). For each
# added round trip time (BENCH_PUSH_RTTS, default "0 40" ms), each of
# BENCH_RUNS runs (default 3) and each method of BENCH_PUSH_METHODS (default
# "nixoci skopeo skopeo-raw"):
#
#   nixoci      nixoci push --tag bench of the closure from the local store
#               into an empty registry (fresh storage)
#   repush      (with nixoci) the same push again, unchanged closure:
#               nothing to upload
#   skopeo      skopeo copy of the layered image with its layers gzipped
#               beforehand (oci:$BENCH_WORK/oci) into an empty registry:
#               skopeo compresses nothing while it is timed
#   skopeo-raw  skopeo copy of the same image with uncompressed layers
#               (oci:$BENCH_WORK/oci-raw) into an empty registry: skopeo
#               compresses each layer on the way, which is how Nix users
#               push (dockerTools.streamLayeredImage, buildLayeredImage's
#               layers, nix2container all hand skopeo uncompressed tars);
#               gzip by default, BENCH_PUSH_RAW_FORMAT=zstd for
#               --dest-compress-format zstd. The pushed manifest's layer
#               media types are checked after each push.
#
# BENCH_CLOSURE=PATH pushes that closure (a store path or a link to one, e.g.
# an earlier $BENCH_WORK/closure) instead of nix-building bench/closure:
# spec.py describes the host's Debian packages, so installing packages
# changes the closure that a new nix-build makes. The images follow the
# closure ($BENCH_WORK/oci*/root records which one they hold).
#
# 0 ms talks to the registry directly; other RTTs go through
# the bench's link, bench/delayproxy (bench/link.sh; BENCH_PROXY=py:
# tests/lib/faultproxy.py) with delay=MS, which holds every request that long
# before forwarding it (a link with that much added round-trip time and no
# bandwidth limit). The page cache is warm for every method (the NARs and
# the images fit in RAM; what a push reads is read once before it, as
# another bench's drop_caches would otherwise add up to 8 CPU-s of disk
# reads to the next push): the figures are of the network path.
# The CPU seconds of the pusher and of the registry are recorded with each
# push (on 2 cores the two share the CPU, which bounds the 0 ms figure).
# Every registry keeps blob descriptors in memory
# (storage.cache.blobdescriptor: inmemory), as the config.yml Debian ships
# with docker-registry does (distribution's default config): the blob checks
# of a manifest PUT and blob HEADs are answered from memory. It applies to
# every method alike.
# Samples in bench/results/push.tsv, medians and ratios as Markdown on stdout
# and in bench/results/push.md.
set -euo pipefail
export LC_ALL=C

SRC=$(cd "$(dirname "$0")/.." && pwd)
O=${1:-build}
case $O in /*) ;; *) O=$SRC/$O ;; esac
WORK=${BENCH_WORK:-/var/tmp/nixoci-bench}
RUNS=${BENCH_RUNS:-3}
RTTS=${BENCH_PUSH_RTTS:-0 40}
# nixoci's per-request timeout: a loaded machine makes the Python delay proxy
# (which stores each request whole before forwarding it) and the registry
# answer the PUT of a large blob late; skopeo waits without a limit
TIMEOUT=${BENCH_PUSH_TIMEOUT:-300}
METHODS=${BENCH_PUSH_METHODS:-nixoci skopeo skopeo-raw}
RAW_FORMAT=${BENCH_PUSH_RAW_FORMAT:-gzip}
case $RAW_FORMAT in gzip | zstd) ;; *) echo "BENCH_PUSH_RAW_FORMAT: gzip or zstd, not $RAW_FORMAT" >&2; exit 2 ;; esac
for m in $METHODS; do
	case $m in nixoci | skopeo | skopeo-raw) ;; *) echo "BENCH_PUSH_METHODS: unknown method $m" >&2; exit 2 ;; esac
done
# extra options of both nixoci pushes, e.g. BENCH_PUSH_FLAGS=--no-pack (format 1;
# packs, format 2, are the default since session 10)
read -r -a PUSH_FLAGS <<<"${BENCH_PUSH_FLAGS:-}"
RUN=$WORK/push-run
RESULTS=$SRC/bench/results
export PATH=$O/bin:$PATH:/usr/sbin:/sbin
export NIX_CONFIG="extra-experimental-features = nix-command"
NIXB=(--option substituters "" --option sandbox false --option fsync-metadata false)
# shellcheck source=bench/link.sh
. "$SRC/bench/link.sh"

T_START=$(date +%s)
say() { printf '[bench-push %4ds] %s\n' $(($(date +%s) - T_START)) "$*" >&2; }
die() { say "error: $*"; exit 1; }
for c in nixoci nix-build nix docker-registry skopeo curl /usr/bin/python3; do
	command -v "$c" >/dev/null || die "$c is missing (see tests/lib/deps.txt)"
done

CLEANUP=()
cleanup() {
	local i
	for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[$i]}" || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
rm -rf "$RUN"
mkdir -p "$RUN" "$RESULTS"
[ -n "${BENCH_KEEP:-}" ] || CLEANUP+=("rm -rf '$RUN'")
TSV=$RUN/push.tsv
: >"$TSV"
# sample METHOD RTT RUN SECONDS NOTE [CLIENT-CPU REGISTRY-CPU]
sample() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" "${7:-}" >>"$TSV"; }
# CPU seconds (user + system) so far: of this shell's waited-for children
# (the pusher: timed runs it as a direct child) and of a live process (the
# registry). On 2 cores a push at 0 ms is bound by the CPU of pusher and
# registry together, so the report shows both next to the wall time.
TCK=$(getconf CLK_TCK)
children_cpu() { awk -v t="$TCK" '{ printf "%.2f", ($16 + $17) / t }' "/proc/$$/stat"; }
proc_cpu() { awk -v t="$TCK" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t }' "/proc/$1/stat" 2>/dev/null || echo 0; }
cpu_delta() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
timed() {
	local t0 t1
	t0=$(date +%s%N)
	if ! "$@" >>"$RUN/cmd.log" 2>&1; then
		tail -n 20 "$RUN/cmd.log" >&2
		die "failed: $*"
	fi
	t1=$(date +%s%N)
	SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
}
free_port() {
	/usr/bin/python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
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

# ------------------------------------------------------- closure and image

if [ -n "${BENCH_CLOSURE:-}" ]; then
	ROOT=$(readlink -f "$BENCH_CLOSURE")
	nix-store -q --hash "$ROOT" >/dev/null 2>&1 || die "BENCH_CLOSURE=$BENCH_CLOSURE is not a valid store path"
	say "closure: $ROOT (BENCH_CLOSURE, not built)"
else
	say "closure: nix-build (cached after the first run of make bench)"
	/usr/bin/python3 "$SRC/bench/closure/spec.py" >"$RUN/spec.json" 2>>"$RUN/cmd.log"
	timed nix-build "$SRC/bench/closure/closure.nix" --arg spec "$RUN/spec.json" \
		"${NIXB[@]}" --max-jobs 8 --out-link "$WORK/closure"
	ROOT=$(readlink -f "$WORK/closure")
fi
read -r NPATHS NARBYTES < <(nix path-info --json -r "$ROOT" | /usr/bin/python3 -c '
import json, sys
i = json.load(sys.stdin)
print(len(i), sum(p["narSize"] for p in i))')
say "closure: $ROOT: $NPATHS paths, $(awk -v b="$NARBYTES" 'BEGIN { printf "%.2f GiB", b / 2^30 }') of NAR"
say "image: the layered OCI image of the closure (kept in $WORK/oci)"
timed /usr/bin/python3 "$SRC/bench/oci-layered.py" "$ROOT" "$WORK/oci"
IMGBYTES=$(du -sb "$WORK/oci/blobs" | cut -f1)
RAWBYTES=0
if [[ " $METHODS " = *" skopeo-raw "* ]]; then
	say "image: the same with uncompressed layers (kept in $WORK/oci-raw)"
	timed /usr/bin/python3 "$SRC/bench/oci-layered.py" --uncompressed "$WORK/oci" "$WORK/oci-raw"
	RAWBYTES=$(du -sb "$WORK/oci-raw/blobs" | cut -f1)
fi
mapfile -t CLOSURE_PATHS < <(nix-store -qR "$ROOT")
# warm_cache METHOD: what the push reads, into the page cache
warm_cache() {
	case $1 in
	nixoci) find "${CLOSURE_PATHS[@]}" -type f -print0 | xargs -0 cat >/dev/null ;;
	skopeo) find "$WORK/oci" -type f -print0 | xargs -0 cat >/dev/null ;;
	skopeo-raw) find "$WORK/oci-raw" -type f -print0 | xargs -0 cat >/dev/null ;;
	esac
}
# check_layers REPO WANT: the media type of every layer of REPO:latest as
# pushed ends in +WANT, i.e. skopeo compressed what it was given; prints the
# bytes of the layers as pushed
check_layers() {
	curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
		"http://$DEST/v2/$1/manifests/latest" | /usr/bin/python3 -c '
import json, sys
want = "application/vnd.oci.image.layer.v1.tar+" + sys.argv[1]
layers = json.load(sys.stdin)["layers"]
got = {l["mediaType"] for l in layers}
if got != {want}:
    sys.exit(f"pushed layers are {sorted(got)}, not {want}")
print(sum(l["size"] for l in layers))' "$2"
}

# ------------------------------------------------------ registry and proxy

REG_PID=
PROXY_PID=
stop_registry() {
	if [ -n "$REG_PID" ]; then kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; fi
	REG_PID=
}
stop_proxy() {
	if [ -n "$PROXY_PID" ]; then kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; fi
	PROXY_PID=
}
CLEANUP+=("stop_proxy" "stop_registry")

# fresh_registry RTT: an empty docker-registry, and the proxy in front of it
# when RTT > 0; sets DEST (HOST:PORT the pushes go to)
fresh_registry() {
	local port d=$RUN/registry
	stop_proxy
	stop_registry
	rm -rf "$d"
	mkdir -p "$d/storage"
	port=$(free_port)
	cat >"$d/config.yml" <<-EOF
	version: 0.1
	log:
	  level: warn
	  accesslog:
	    disabled: true
	storage:
	  cache:
	    blobdescriptor: inmemory
	  filesystem:
	    rootdirectory: $d/storage
	http:
	  addr: 127.0.0.1:$port
	EOF
	docker-registry serve "$d/config.yml" >"$d/log" 2>&1 &
	REG_PID=$!
	wait_for 20 curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" || die "docker-registry did not start"
	DEST=127.0.0.1:$port
	[ "$1" -gt 0 ] || return 0
	echo "delay=$1" >"$RUN/proxy.control"
	rm -f "$RUN/proxy.port"
	bench_link --upstream "$DEST" \
		--control "$RUN/proxy.control" --port-file "$RUN/proxy.port" \
		>"$RUN/proxy.stderr" 2>&1 &
	PROXY_PID=$!
	wait_for 10 test -s "$RUN/proxy.port" || die "the delay proxy did not start"
	DEST=127.0.0.1:$(cat "$RUN/proxy.port")
	wait_for 10 curl -fsS -o /dev/null "http://$DEST/v2/" || die "the delay proxy does not answer"
}

# --------------------------------------------------------------- the runs

for rtt in $RTTS; do
	for run in $(seq 1 "$RUNS"); do
		# the order rotates per run, so that load from elsewhere
		# hits every method alike
		read -r -a order <<<"$METHODS"
		k=$(((run - 1) % ${#order[@]}))
		order=("${order[@]:k}" "${order[@]:0:k}")
		for m in "${order[@]}"; do
			fresh_registry "$rtt"
			warm_cache "$m"
			if [ "$m" = nixoci ]; then
				c0=$(children_cpu) r0=$(proc_cpu "$REG_PID")
				timed nixoci push --timeout "$TIMEOUT" ${PUSH_FLAGS[@]+"${PUSH_FLAGS[@]}"} --tag bench "$DEST/bench/store" "$ROOT"
				sample nixoci "$rtt" "$run" "$SECS" "$(grep '^pushed' "$RUN/cmd.log" | tail -n 1)" \
					"$(cpu_delta "$c0" "$(children_cpu)")" "$(cpu_delta "$r0" "$(proc_cpu "$REG_PID")")"
				say "rtt $rtt ms, run $run: nixoci push ${SECS}s: $(grep '^pushed' "$RUN/cmd.log" | tail -n 1)"
				timed nixoci push --timeout "$TIMEOUT" ${PUSH_FLAGS[@]+"${PUSH_FLAGS[@]}"} --tag bench "$DEST/bench/store" "$ROOT"
				grep -q '^pushed .*(0 uploaded.* 0 bytes uploaded' <(grep '^pushed' "$RUN/cmd.log" | tail -n 1) ||
					die "the re-push uploaded something: $(grep '^pushed' "$RUN/cmd.log" | tail -n 1)"
				sample repush "$rtt" "$run" "$SECS" "$(grep '^pushed' "$RUN/cmd.log" | tail -n 1)"
				say "rtt $rtt ms, run $run: re-push ${SECS}s"
			elif [ "$m" = skopeo ]; then
				c0=$(children_cpu) r0=$(proc_cpu "$REG_PID")
				timed skopeo copy --quiet --dest-tls-verify=false "oci:$WORK/oci:latest" \
					"docker://$DEST/bench/layered:latest"
				sample skopeo "$rtt" "$run" "$SECS" "" \
					"$(cpu_delta "$c0" "$(children_cpu)")" "$(cpu_delta "$r0" "$(proc_cpu "$REG_PID")")"
				say "rtt $rtt ms, run $run: skopeo copy ${SECS}s"
			else
				# into the docker transport skopeo compresses every
				# uncompressed layer (gzip unless told otherwise)
				c0=$(children_cpu) r0=$(proc_cpu "$REG_PID")
				timed skopeo copy --quiet --dest-tls-verify=false --dest-compress-format "$RAW_FORMAT" \
					"oci:$WORK/oci-raw:latest" "docker://$DEST/bench/layered-raw:latest"
				c1=$(children_cpu) r1=$(proc_cpu "$REG_PID")
				bytes=$(check_layers bench/layered-raw "$RAW_FORMAT") || die "skopeo-raw did not compress its layers"
				sample skopeo-raw "$rtt" "$run" "$SECS" "$RAW_FORMAT, $bytes bytes of layers" \
					"$(cpu_delta "$c0" "$c1")" "$(cpu_delta "$r0" "$r1")"
				say "rtt $rtt ms, run $run: skopeo copy of uncompressed layers ($RAW_FORMAT, $bytes bytes pushed) ${SECS}s"
			fi
		done
	done
done
stop_proxy
stop_registry

# ----------------------------------------------------------------- report

cp "$TSV" "$RESULTS/push.tsv"
/usr/bin/python3 - "$TSV" "$NPATHS" "$NARBYTES" "$IMGBYTES" "$RAWBYTES" "$RAW_FORMAT" "$RUNS" "$ROOT" <<'EOF' | tee "$RESULTS/push.md"
import statistics, sys, time, os
tsv, npaths, narbytes, imgbytes, rawbytes, rawfmt, runs, root = sys.argv[1:]
s = {}
cpu = {}
rawpushed = set()
for line in open(tsv):
    m, rtt, run, secs, note, ccpu, rcpu = (line.rstrip("\n").split("\t") + ["", ""])[:7]
    s.setdefault((m, int(rtt)), []).append(float(secs))
    if m == "skopeo-raw" and note.endswith(" bytes of layers"):
        rawpushed.add(int(note.split(", ")[1].split()[0]))
    if ccpu and rcpu:
        cpu.setdefault((m, int(rtt)), []).append((float(ccpu), float(rcpu)))
med = {k: statistics.median(v) for k, v in s.items()}
rtts = sorted({k[1] for k in s})
methods = [m for m in ("nixoci", "skopeo", "skopeo-raw") if any(k[0] == m for k in s)]
print(f"Run of {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {runs} runs per "
      f"measurement, medians; load average at the end: "
      f"{' '.join(open('/proc/loadavg').read().split()[:3])} on {os.cpu_count()} CPUs.")
print()
raw = (f"; for skopeo-raw the same layers uncompressed ({int(rawbytes) / 2**20:.1f} MiB "
       f"of tar), which skopeo compresses with {rawfmt} as it pushes (to "
       f"{', '.join(f'{b / 2**20:.1f}' for b in sorted(rawpushed))} MiB)"
       if "skopeo-raw" in methods else "")
print(f"Closure: {npaths} store paths, {int(narbytes) / 2**30:.2f} GiB of NAR "
      f"(`{os.path.basename(root)}`); the layered image: 100 gzip layers, "
      f"{int(imgbytes) / 2**20:.1f} MiB, gzipped beforehand{raw}. Every registry "
      "keeps blob descriptors in memory, as Debian's docker-registry is configured.")
print()
name = {"nixoci": "nixoci push", "repush": "re-push",
        "skopeo": "skopeo copy (gzip layers made beforehand)",
        "skopeo-raw": f"skopeo copy (uncompressed layers, {rawfmt} while pushing)"}
ratios = [k for k in ("skopeo", "skopeo-raw") if "nixoci" in methods and k in methods]
head = [name[m] for m in methods] + [f"ratio to {k} (target ≤ 1.5×)" for k in ratios]
if "nixoci" in methods:
    head.append("re-push, unchanged (target < 1 s at 0 ms, < 2 s at 40 ms)")
print("| added RTT | " + " | ".join(head) + " |")
print("|---" * (len(head) + 1) + "|")
for r in rtts:
    def cell(m, f="{:.1f}"):
        v = s.get((m, r))
        if not v:
            return "-"
        return f"{f.format(med[(m, r)])} s ({', '.join(f.format(x) for x in v)})"
    row = [cell(m) for m in methods]
    n = med.get(("nixoci", r))
    for k in ratios:
        d = med.get((k, r))
        row.append(f"{n / d:.2f}×" if n and d else "-")
    if "nixoci" in methods:
        row.append(cell("repush", "{:.2f}"))
    print(f"| {r} ms | " + " | ".join(row) + " |")
print()
print("CPU seconds (user + system, medians) of each push: the pusher, the registry, and "
      f"their sum over the {os.cpu_count()} CPUs (a wall time no push can go below on this "
      "machine):")
print()
print("| added RTT | method | pusher CPU-s | registry CPU-s | (pusher + registry) / CPUs |")
print("|---|---|---|---|---|")
for r in rtts:
    for m in methods:
        v = cpu.get((m, r))
        if not v:
            continue
        c = statistics.median(x[0] for x in v)
        g = statistics.median(x[1] for x in v)
        print(f"| {r} ms | {name[m]} | {c:.1f} | {g:.1f} | {(c + g) / os.cpu_count():.1f} s |")
EOF
say "done: bench/results/push.tsv, bench/results/push.md"
