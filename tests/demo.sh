#!/bin/bash
# tests/demo.sh O (make demo): the whole job on an embedded example.
#   1. start Debian's docker-registry on a free loopback port
#   2. build a small real closure with Nix (tests/lib/small.nix, no nixpkgs)
#   3. nixoci push it to the registry
#   4. mount the registry with nixoci-fs, run hello from the mounted store
#      inside a sandbox that sees nothing but that mount as /nix/store
#   5. show what was fetched (nixoci stats), unmount, stop everything
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

step "building a small closure with Nix (tests/lib/small.nix)"
build_small_closure 2> >(grep -v "^warning: " >&2) || die "nix-build failed"
echo "$SMALL_CLOSURE"

step "nixoci push $REF $SMALL"
nixoci push "$REF" "$SMALL" || die "push failed"

MNT=$TRASH/store
step "nixoci-fs -f -o cache=$TRASH/cache-store $REF $MNT"
mount_store "$REF" "$MNT" || die "mount failed"
grep " $MNT " /proc/self/mounts

step "running $SMALL/bin/hello from the mounted store"
if command -v bwrap >/dev/null; then
	echo "(bwrap --ro-bind $MNT /nix/store: the program sees only the mount)"
	OUT=$(run_sandboxed "$MNT" "$SMALL/bin/hello" 2>&1)
else
	OUT=$("$MNT/${SMALL##*/}/bin/hello" 2>&1)
fi
RC=$?
echo "$OUT"

step "nixoci stats $MNT  (what was fetched)"
nixoci stats "$MNT"
fetched=$(nixoci stats "$MNT" | awk '/^bytes_fetched /{print $2}')
echo "fetched ${fetched:-?} bytes; the registry holds $(du -sb "$REG_STORAGE" | cut -f1) bytes for" \
	"$(echo "$SMALL_CLOSURE" | wc -l) store paths"

step "unmounting and stopping the registry"
test_run_atexit
if [ ${#test_cleanup_problems[@]} -ne 0 ]; then
	printf 'demo: %s\n' "${test_cleanup_problems[@]}" >&2
	RC=1
fi
mountpoint -q "$MNT" && RC=1
echo "done"

printf '\n==> output of %s/bin/hello, run from the lazily mounted store:\n%s\n' "$SMALL" "$OUT"
exit $RC
