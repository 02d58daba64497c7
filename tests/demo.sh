#!/bin/bash
# tests/demo.sh O (make demo): the whole job on an embedded example.
#   1. start Debian's docker-registry on a free loopback port
#   2. build a real closure with Nix: CPython 3.11 and its ~120 store paths
#      (tests/lib/big.nix, no nixpkgs; DEMO_SMALL=1: the 5-path
#      tests/lib/small.nix instead)
#   3. nixoci push it to the registry
#   4. mount the registry with nixoci-fs, run python3 from the mounted
#      store inside a sandbox that sees nothing but that mount as /nix/store
#   5. show what was fetched against what the registry holds (the share
#      that laziness saved), unmount, stop everything
# Run as root on a fresh Debian 12 it first installs what it needs.
set -u
O=${1:-build}
cd "$(dirname "$0")/.." || exit 1
if [ "$(id -u)" = 0 ]; then
	tests/lib/install-deps.sh || exit 1
fi
O=$(cd "$O" && pwd) || { echo "demo: no build directory $1 (run make)" >&2; exit 1; }
PATH="$O/bin:$PATH"

# The test library gives us start_registry, mount_store and an EXIT trap that
# unmounts and stops everything, whatever happens. Its TAP stream (fd 3) is
# simply our stdout here.
. tests/lib/lib.sh
step() { printf '\n==> %s\n' "$*"; }
die() {
	echo "demo: $*" >&2
	exit 1
}

step "starting docker-registry on a free loopback port"
start_registry demo || die "docker-registry did not start"
REF=$REG/demo
echo "registry: http://$REG/v2/  (storage in $REG_STORAGE)"

if [ -n "${DEMO_SMALL:-}" ]; then
	step "building a small closure with Nix (tests/lib/small.nix)"
	build_small_closure 2> >(grep -v "^warning: " >&2) || die "nix-build failed"
	ROOT=$SMALL CLOSURE=$SMALL_CLOSURE RUN=("$SMALL/bin/hello")
else
	step "building CPython 3.11 with Nix (tests/lib/big.nix; the first time takes a while)"
	build_big_closure 2> >(grep -v "^warning: " >&2) || die "nix-build failed"
	ROOT=$BIG CLOSURE=$BIG_CLOSURE
	RUN=("$BIG/bin/python3" -c "import json, sqlite3, sys; print('python', sys.version.split()[0], 'from the lazily mounted store; sqlite', sqlite3.sqlite_version)")
fi
echo "$(echo "$CLOSURE" | wc -l) store paths, $(nix-store -q --size $CLOSURE | awk '{s += $1} END {print s}') bytes of NAR"

step "nixoci push $REF $ROOT"
nixoci push --jobs 4 "$REF" "$ROOT" || die "push failed"

MNT=$TRASH/store
step "nixoci-fs -f -o cache=$TRASH/cache-store $REF $MNT"
mount_store "$REF" "$MNT" || die "mount failed"
grep " $MNT " /proc/self/mounts

step "running ${RUN[0]} from the mounted store"
if command -v bwrap >/dev/null; then
	echo "(bwrap --ro-bind $MNT /nix/store: the program sees only the mount)"
	OUT=$(run_sandboxed "$MNT" "${RUN[@]}" 2>&1)
else
	OUT=$("$MNT/${RUN[0]#/nix/store/}" "${RUN[@]:1}" 2>&1)
fi
RC=$?
echo "$OUT"

step "nixoci stats $MNT  (what was fetched)"
nixoci stats "$MNT"
fetched=$(nixoci stats "$MNT" | awk '/^bytes_fetched /{print $2}')
# what the registry holds for the closure: its blobs (NAR and TOC layers,
# manifests), as stored
held=$(du -sb "$REG_STORAGE/docker/registry/v2/blobs" | cut -f1)
echo "fetched ${fetched:-0} of the $held bytes the registry holds for" \
	"$(echo "$CLOSURE" | wc -l) store paths: $(awk -v f="${fetched:-0}" -v h="$held" \
	'BEGIN { printf "%.1f%%", h ? 100 * f / h : 0 }') (the program read only what it needed)"
echo "it touched $(nixoci stats "$MNT" | awk '/^paths_loaded /{print $2}') of the" \
	"$(echo "$CLOSURE" | wc -l) store paths"

step "unmounting and stopping the registry"
test_run_atexit
if [ ${#test_cleanup_problems[@]} -ne 0 ]; then
	printf 'demo: %s\n' "${test_cleanup_problems[@]}" >&2
	RC=1
fi
mountpoint -q "$MNT" && RC=1
echo "done"

printf '\n==> output of %s, run from the lazily mounted store:\n%s\n' "${RUN[0]}" "$OUT"
exit $RC
