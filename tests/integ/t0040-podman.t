#!/bin/bash
test_description='two podman containers at once run programs from one allow_other mount'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl podman /usr/sbin/runc tar /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries
[ "$(id -u)" = 0 ] || skip_all "podman with runc needs root here"

MNT=$TRASH/mnt
IMAGE=localhost/nixoci-test-busybox:$$-$RANDOM
BUSYBOX=$(command -v busybox)

# podman_run, make_image, podman_works: tests/lib/lib.sh

test_atexit 'podman rmi -f "$IMAGE" >/dev/null 2>&1; podman rm -f nixoci-t0040-$$-1 nixoci-t0040-$$-2 >/dev/null 2>&1'
make_image >/dev/null 2>&1 || skip_all "podman import does not work here"
podman_works >/dev/null 2>&1 || skip_all "podman cannot run containers here: $(head -c 200 podman.err)"

test_expect_success 'setup: registry, small closure pushed, mounted with allow_other' '
	start_registry &&
	REF=$REG/small &&
	build_small_closure &&
	nixoci push "$REF" "$SMALL" &&
	mount_store "$REF" "$MNT" allow_other &&
	grep " $MNT fuse.nixoci-fs " /proc/self/mounts | grep -q allow_other
'

test_expect_success 'a container runs hello from the mount' '
	podman_run -v "$MNT:/nix/store:ro" "$IMAGE" "$SMALL/bin/hello" >one.out 2>&1 &&
	cat one.out &&
	"$SMALL/bin/hello" >want &&
	test_cmp want one.out
'

# Each container announces itself in a shared directory and waits (bounded)
# until the other one is there too, so they provably run at the same time.
test_expect_success 'two containers at the same time share the one mount' '
	mkdir -p sync &&
	for i in 1 2; do
		podman_run --name nixoci-t0040-$$-$i -v "$MNT:/nix/store:ro" -v "$TRASH/sync:/sync" \
			"$IMAGE" /bin/sh -c "
				touch /sync/up-$i
				n=0
				while ! { test -e /sync/up-1 && test -e /sync/up-2; }; do
					n=\$((n + 1)); test \$n -lt 600 || exit 3; usleep 50000
				done
				$SMALL/bin/hello" >c$i.out 2>&1 &
		eval "cpid$i=\$!"
	done &&
	st1=0 && wait $cpid1 || st1=$?
	st2=0 && wait $cpid2 || st2=$?
	cat c1.out c2.out &&
	test $st1 = 0 && test $st2 = 0 &&
	test_cmp want c1.out && test_cmp want c2.out
'

test_expect_success 'a non-root user in a container reads the mount (allow_other)' '
	podman_run --user 1000:1000 -v "$MNT:/nix/store:ro" "$IMAGE" "$SMALL/bin/hello" >u.out 2>&1 &&
	test_cmp want u.out
'

test_expect_success 'unmount: the daemon exits 0 and logged no errors' '
	unmount_store "$MNT"
'

test_done
