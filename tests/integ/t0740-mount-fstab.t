#!/bin/bash
test_description='mount(8) and fstab: mount -t fuse.nixoci-fs and an fstab line (mount -a -T) work; findmnt shows the repository'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry unshare findmnt mount.fuse3 bwrap
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
mkdir -p "$MNT"
# mount(8) runs mount.fuse3, which runs "nixoci-fs" from a fixed PATH
# (/usr/local/sbin:...:/bin). Each test runs in a mount namespace of its
# own where $TRASH/sbin, holding nixoci-fs, is bind-mounted on
# /usr/local/sbin: the host's directories are untouched.
mkdir -p "$TRASH/sbin"
ln -s "$(command -v nixoci-fs)" "$TRASH/sbin/nixoci-fs"

# in_ns SCRIPT: run SCRIPT (bash) in a private mount namespace with the
# helper PATH in place; the daemon it starts is killed at exit if left.
in_ns() {
	unshare -m --propagation private bash -euc "mount --bind '$TRASH/sbin' /usr/local/sbin; $1"
}
test_atexit 'pkill -KILL -f "cache=$TRASH/cache-ns" 2>/dev/null; true'

test_expect_success 'setup: registry and the small closure' '
	start_registry &&
	REF=$REG/small &&
	build_small_closure &&
	nixoci push "$REF" "$SMALL" >/dev/null 2>&1
'

test_expect_success 'mount -t fuse.nixoci-fs REF MNT -o ro,...: mounted, findmnt shows the repository, a program runs, umount ends the daemon' '
	in_ns "
		mount -t fuse.nixoci-fs $REF $MNT -o ro,allow_other,_netdev,cache=$TRASH/cache-ns
		findmnt -n -o SOURCE,FSTYPE,OPTIONS $MNT
		bwrap --ro-bind $MNT /nix/store --proc /proc --dev /dev --unshare-all \
			--die-with-parent --clearenv $SMALL/bin/hello
		umount $MNT
		! findmnt $MNT
	" >ns.out 2>&1 ;
	rc=$? && cat ns.out && test $rc = 0 &&
	grep -q "^$REF fuse.nixoci-fs  *ro,nosuid,nodev" ns.out &&
	grep -q "Hello from a lazily mounted" ns.out &&
	test_wait_for 20 eval "! pgrep -f \"cache=$TRASH/cache-ns\" >/dev/null"
'

test_expect_success 'mount without ro: refused with the reason (mount(8) passes rw)' '
	! in_ns "mount -t fuse.nixoci-fs $REF $MNT -o cache=$TRASH/cache-ns" >ns.out 2>&1 &&
	cat ns.out &&
	grep -q "option rw refused" ns.out
'

test_expect_success 'an fstab line with _netdev, nofail and x-systemd options: mount -a -T FILE' '
	echo "$REF $MNT fuse.nixoci-fs ro,_netdev,nofail,x-systemd.automount,x-systemd.mount-timeout=30,allow_other,cache=$TRASH/cache-ns 0 0" >fstab &&
	cat fstab &&
	in_ns "
		mount -a -T $TRASH/fstab
		findmnt -n -o SOURCE,FSTYPE $MNT
		findmnt -n -o SOURCE -T $MNT/${SMALL#/nix/store/}
		bwrap --ro-bind $MNT /nix/store --proc /proc --dev /dev --unshare-all \
			--die-with-parent --clearenv $SMALL/bin/hello
		umount $MNT
	" >ns.out 2>&1 ;
	rc=$? && cat ns.out && test $rc = 0 &&
	grep -q "^$REF fuse.nixoci-fs$" ns.out &&
	grep -q "Hello from a lazily mounted" ns.out &&
	test_wait_for 20 eval "! pgrep -f \"cache=$TRASH/cache-ns\" >/dev/null"
'

test_done
