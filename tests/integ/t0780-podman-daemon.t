#!/bin/bash
test_description='nixoci-fs in a privileged container mounts the store on a shared host path (what the Kubernetes DaemonSet of docs/deploy.md does); the host and another container use it; stopping the container unmounts'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry podman /usr/sbin/runc tar ldd findmnt bwrap
test_require_nix
test_require_fuse
test_require_binaries
[ "$(id -u)" = 0 ] || skip_all "podman with runc needs root here"

IMAGE=localhost/nixoci-fs-test:$$-$RANDOM
NAME=nixoci-t0580-$$
SHARED=$TRASH/shared

podman_() { podman --runtime /usr/sbin/runc "$@"; }

# An image holding nixoci-fs and the shared libraries it links (what a real
# image would get from its distribution's packages).
make_image() {
	local bin lib
	bin=$(command -v nixoci-fs) &&
	mkdir -p rootfs/bin rootfs/cache rootfs/shared rootfs/tmp rootfs/etc &&
	cp "$bin" rootfs/bin/nixoci-fs &&
	cp "$(readlink -f "$(command -v busybox)")" rootfs/bin/busybox &&
	# libgcc_s is not linked but dlopen()ed by glibc for pthread_cancel,
	# which libfuse's worker threads use at exit
	for lib in $(ldd "$bin" | grep -o "/[^ ]*") \
		$(ldconfig -p | sed -n "s|.*libgcc_s.so.1 .*=> ||p" | head -n 1); do
		mkdir -p "rootfs$(dirname "$lib")" && cp -L "$lib" "rootfs$lib" || return 1
	done &&
	echo "root:x:0:0:root:/:/bin/busybox" >rootfs/etc/passwd &&
	tar -C rootfs -c . | podman_ import - "$IMAGE" >/dev/null
}

test_atexit 'podman_ rm -f "$NAME" >/dev/null 2>&1; podman_ rmi -f "$IMAGE" >/dev/null 2>&1; true'
make_image >image.log 2>&1 || skip_all "cannot build the test image: $(tail -n 1 image.log)"

test_expect_success 'setup: registry, small closure pushed, a shared host directory' '
	start_registry &&
	REF=$REG/small &&
	build_small_closure &&
	nixoci push "$REF" "$SMALL" >/dev/null 2>&1 &&
	mkdir -p "$SHARED" &&
	mount --bind "$SHARED" "$SHARED" &&
	test_atexit "umount -l $SHARED" &&
	mount --make-rshared "$SHARED" &&
	mkdir -p "$SHARED/store"
'

test_expect_success 'the container mounts; the mount propagates to the host (rshared, Bidirectional in Kubernetes)' '
	test_atexit "umount -l $SHARED/store 2>/dev/null; true" &&
	podman_ run -d --name "$NAME" --privileged --network host \
		-v "$SHARED:/shared:rshared" "$IMAGE" \
		/bin/nixoci-fs -f -o cache=/cache,allow_other "$REF" /shared/store >run.out 2>&1 ;
	rc=$? && cat run.out && test $rc = 0 &&
	test_wait_for 60 eval "findmnt -n \"$SHARED/store\" >/dev/null || ! podman_ container exists $NAME" &&
	podman_ logs "$NAME" &&
	findmnt -n -o SOURCE,FSTYPE "$SHARED/store" >findmnt.out &&
	cat findmnt.out &&
	test "$(cat findmnt.out)" = "$REF fuse.nixoci-fs"
'

test_expect_success 'the host and another container run a program from it' '
	bwrap --ro-bind "$SHARED/store" /nix/store --proc /proc --dev /dev --unshare-all \
		--die-with-parent --clearenv "$SMALL/bin/hello" >host.out 2>&1 &&
	cat host.out && grep -q "Hello from a lazily mounted" host.out &&
	podman_ run --rm --network none -v "$SHARED/store:/nix/store:ro,rslave" "$IMAGE" \
		"$SMALL/bin/hello" >ctr.out 2>&1 ;
	rc=$? && cat ctr.out && test $rc = 0 && grep -q "Hello from a lazily mounted" ctr.out
'

test_expect_success 'podman stop (SIGTERM): the daemon unmounts and exits 0; nothing is left mounted' '
	podman_ stop -t 30 "$NAME" &&
	podman_ logs "$NAME" >ctr.log 2>&1 ; cat ctr.log &&
	st=$(podman_ inspect -f "{{.State.ExitCode}}" "$NAME") &&
	echo "exit code $st" && test "$st" = 0 &&
	! log_errors ctr.log &&
	! findmnt -n "$SHARED/store"
'

test_done
