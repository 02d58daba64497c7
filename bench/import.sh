#!/bin/bash
# bench/import.sh [O]: the Nix interop benchmark (make bench runs it after
# bench/run.sh; alone: make bench-import). Same closure as run.sh
# (bench/closure, ~1700 paths, ~2.4 GiB, its nix-build kept in
# $BENCH_WORK/closure) and the same zstd binary cache ($BENCH_WORK/bincache,
# made by nix copy --to file://…?compression=zstd), served on loopback by
# python3 -m http.server. Each measured once, page cache dropped before:
#
#   import       nixoci import --jobs 4 from the cache into an empty repository
#   reimport     the same again: every path already there, nothing uploaded
#   push         nixoci push --jobs 4 of the closure from the local store, empty repository
#   copy         nix copy from the cache into a fresh chroot store (a local store)
#   serve-copy   nix copy through nixoci serve (over the imported repository)
#                into a fresh chroot store
#
# Bytes: what each read from its source and wrote to its destination. The
# results go to bench/results/import.tsv and, as a Markdown table, to stdout.
set -euo pipefail
export LC_ALL=C

SRC=$(cd "$(dirname "$0")/.." && pwd)
O=${1:-build}
case $O in /*) ;; *) O=$SRC/$O ;; esac
WORK=${BENCH_WORK:-/var/tmp/nixoci-bench}
RUN=$WORK/import-run
export PATH=$O/bin:$PATH:/usr/sbin:/sbin
export NIX_CONFIG="extra-experimental-features = nix-command"
NIXB=(--option substituters "" --option sandbox false --option fsync-metadata false)
JOBS=${BENCH_IMPORT_JOBS:-4}

T_START=$(date +%s)
say() { printf '[bench-import %4ds] %s\n' $(($(date +%s) - T_START)) "$*" >&2; }
die() { say "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (drop_caches, chroot stores)"
for c in nixoci nix-build nix docker-registry curl; do
	command -v "$c" >/dev/null || die "$c is missing"
done
DROP=1
{ sync && echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null || DROP=0
# Dropped twice, 3 s apart, as in bench/session.sh: on this VM one drop
# right after a read leaves part of a file readable at 2+ GB/s, so a single
# drop made "cold" mean different things for different runs.
drop() { if [ $DROP = 1 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; sleep 3; echo 3 >/proc/sys/vm/drop_caches; fi; }

CLEANUP=()
cleanup() {
	local i
	for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[$i]}" || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
chmod -R u+w "$RUN" 2>/dev/null || true
rm -rf "$RUN"
mkdir -p "$RUN"
[ -n "${BENCH_KEEP:-}" ] || CLEANUP+=("chmod -R u+w '$RUN' 2>/dev/null; rm -rf '$RUN'")
TSV=$RUN/import.tsv
: >"$TSV"
# row METHOD SECONDS READ_BYTES WRITTEN_BYTES NOTE
row() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$TSV"; }
timed() {
	local t0 t1
	t0=$(date +%s%N)
	if ! "$@" >>"$RUN/cmd.log" 2>&1; then
		tail -n 20 "$RUN/cmd.log" >&2
		die "failed: $*"
	fi
	t1=$(date +%s%N)
	SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
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
du_b() { du -sb "$1" | cut -f1; }

say "closure: nix-build (cached in $WORK/closure)"
/usr/bin/python3 "$SRC/bench/closure/spec.py" >"$RUN/spec.json" 2>>"$RUN/cmd.log"
timed nix-build "$SRC/bench/closure/closure.nix" --arg spec "$RUN/spec.json" "${NIXB[@]}" \
	--max-jobs 8 --out-link "$WORK/closure"
ROOT=$(readlink -f "$WORK/closure")
NPATHS=$(nix-store --query --requisites "$ROOT" | wc -l)
NARBYTES=$(nix path-info --json -r "$ROOT" | /usr/bin/python3 -c 'import json, sys
print(sum(p["narSize"] for p in json.load(sys.stdin)))')
say "closure: $NPATHS paths, $NARBYTES NAR bytes"

if [ "$(cat "$WORK/bincache.root" 2>/dev/null)" != "$ROOT" ]; then
	say "binary cache: nix copy --to file://$WORK/bincache?compression=zstd (kept)"
	rm -rf "$WORK/bincache"
	timed nix copy --to "file://$WORK/bincache?compression=zstd" "$ROOT"
	echo "$ROOT" >"$WORK/bincache.root"
fi
CACHE_BYTES=$(du_b "$WORK/bincache")
HTTP_PORT=$(free_port)
/usr/bin/python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$WORK/bincache" \
	>"$RUN/http.log" 2>&1 &
CLEANUP+=("kill $!; wait $!")
wait_for 20 curl -fsS -o /dev/null "http://127.0.0.1:$HTTP_PORT/nix-cache-info" ||
	die "http.server did not start"
CACHE=http://127.0.0.1:$HTTP_PORT

REG_DIR=$RUN/registry
mkdir -p "$REG_DIR/storage"
REG_PORT=$(free_port)
# blob descriptors cached in memory, as in the config.yml Debian ships with
# docker-registry (distribution's default): the same for every method compared
cat >"$REG_DIR/config.yml" <<EOT
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
EOT
docker-registry serve "$REG_DIR/config.yml" >"$REG_DIR/log" 2>&1 &
CLEANUP+=("kill $!; wait $!")
wait_for 20 curl -fsS -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" || die "docker-registry did not start"
REG=127.0.0.1:$REG_PORT
summary_bytes() { sed -nE 's/.*, ([0-9]+) bytes uploaded.*/\1/p' "$RUN/cmd.log" | tail -n 1; }

say "import: nixoci import --jobs $JOBS from $CACHE"
drop
timed nixoci import --jobs "$JOBS" --tag bench "$CACHE" "$REG/imported" "$ROOT"
row import "$SECS" "$CACHE_BYTES" "$(summary_bytes)" "$(grep '^imported' "$RUN/cmd.log" | tail -n 1)"
say "import: ${SECS}s"
drop
timed nixoci import --jobs "$JOBS" --tag bench "$CACHE" "$REG/imported" "$ROOT"
row reimport "$SECS" 0 "$(summary_bytes)" "$(grep '^imported' "$RUN/cmd.log" | tail -n 1)"

say "push: nixoci push --jobs $JOBS from the local store"
drop
timed nixoci push --jobs "$JOBS" --tag bench "$REG/pushed" "$ROOT"
row push "$SECS" "$NARBYTES" "$(summary_bytes)" "$(grep '^pushed' "$RUN/cmd.log" | tail -n 1)"

say "copy: nix copy from $CACHE into a fresh chroot store"
drop
timed env XDG_CACHE_HOME="$RUN/xdg1" nix copy --no-check-sigs --from "$CACHE" \
	--to "$RUN/root1" "$ROOT"
row copy "$SECS" "$CACHE_BYTES" "$(du_b "$RUN/root1")" "nix copy --from http (zstd cache) --to chroot store"
chmod -R u+w "$RUN/root1" && rm -rf "$RUN/root1"

say "serve-copy: nix copy through nixoci serve"
nixoci serve --listen 127.0.0.1:0 "$REG/imported" >"$RUN/serve.out" 2>"$RUN/serve.log" &
SPID=$!
CLEANUP+=("kill $SPID; wait $SPID")
wait_for 20 grep -q '^serving ' "$RUN/serve.out" || die "nixoci serve did not start"
SURL=$(sed -n 's/^serving .* at //p' "$RUN/serve.out")
REGBYTES=$(du_b "$REG_DIR/storage")
drop
timed env XDG_CACHE_HOME="$RUN/xdg2" nix copy --no-check-sigs --from "$SURL" \
	--to "$RUN/root2" "$ROOT"
row serve-copy "$SECS" "-" "$(du_b "$RUN/root2")" "nix copy --from nixoci serve --to chroot store"
chmod -R u+w "$RUN/root2" && rm -rf "$RUN/root2"

mkdir -p "$SRC/bench/results"
{
	printf 'date\t%s\n' "$(date -u +%Y-%m-%dT%H:%MZ)"
	printf 'paths\t%s\nnar_bytes\t%s\ncache_bytes\t%s\nregistry_bytes_both_repos\t%s\n' \
		"$NPATHS" "$NARBYTES" "$CACHE_BYTES" "$REGBYTES"
	printf 'jobs\t%s\nnproc\t%s\nloadavg\t%s\ndrop_caches\t%s\n' "$JOBS" "$(nproc)" \
		"$(cut -d' ' -f1-3 /proc/loadavg)" "$DROP"
	printf '#method\tseconds\tread_bytes\twritten_bytes\tnote\n'
	cat "$TSV"
} >"$SRC/bench/results/import.tsv"
echo "| method | seconds | bytes read | bytes written | |"
echo "|---|---:|---:|---:|---|"
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }' "$TSV"
say "done: bench/results/import.tsv"
