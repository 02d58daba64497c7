#!/bin/bash
test_description='nixoci register: a Nix database that knows the paths of a mounted store'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl
test_require_nix
test_require_fuse
test_require_binaries

nixcmd() { nix --extra-experimental-features nix-command "$@"; }

test_expect_success 'setup: registry, small closure pushed and signed' '
	start_registry &&
	build_small_closure &&
	nix-store --generate-binary-cache-key cache-1 sk pk &&
	nix-store --generate-binary-cache-key other-1 sk-other pk-other &&
	PK=$(cat pk) && PK_OTHER=$(cat pk-other) &&
	nixoci push --sign-key sk "$REG/s" "$SMALL"
'

test_expect_success 'register prints exactly what nix-store --dump-db prints for the closure' '
	nixoci register "$REG/s" "$SMALL" >ours &&
	# --dump-db prints its arguments in the order given; ours are sorted
	nix-store --dump-db $(echo "$SMALL_CLOSURE" | sort) >nix-db &&
	test_cmp nix-db ours
'

test_expect_success 'a read-only mount as a chroot store'"'"'s /nix/store: Nix 2.8 cannot open it' '
	mkdir -p ro/nix/store &&
	mount_store "$REG/s" "$TRASH/ro/nix/store" &&
	! nixoci register --load --store "$TRASH/ro" "$REG/s" "$SMALL" 2>err &&
	cat err &&
	grep -q "Read-only file system" err &&
	grep -q "nix-store --load-db failed" err &&
	unmount_store "$TRASH/ro/nix/store"
'

test_expect_success 'overlayfs over the mount: --load makes Nix know the closure, Nix can add paths' '
	mkdir -p lower up work root/nix/store &&
	mount_store "$REG/s" "$TRASH/lower" "trusted-public-keys=$PK" &&
	mount -t overlay overlay -o "lowerdir=$TRASH/lower,upperdir=$TRASH/up,workdir=$TRASH/work" \
		"$TRASH/root/nix/store" &&
	test_atexit "! mountpoint -q '$TRASH/root/nix/store' || umount '$TRASH/root/nix/store'" &&
	nixoci register --load --store "$TRASH/root" "$REG/s" "$SMALL" &&
	nix-store --store "$TRASH/root" --query --requisites "$SMALL" | sort >got &&
	echo "$SMALL_CLOSURE" | sort >want &&
	test_cmp want got &&
	# Nix reads every byte through the mount and checks it against NarHash
	nix-store --store "$TRASH/root" --verify-path $SMALL_CLOSURE &&
	echo "new $RANDOM" >f &&
	added=$(nix-store --store "$TRASH/root" --add f) &&
	test -f "$TRASH/up/${added##*/}" &&
	umount "$TRASH/root/nix/store" &&
	unmount_store "$TRASH/lower"
'

test_expect_success 'with --trusted-public-keys: paths not signed by a trusted key are refused' '
	nixoci register --trusted-public-keys "$PK" "$REG/s" "$SMALL" >/dev/null &&
	! nixoci register --trusted-public-keys "$PK_OTHER" "$REG/s" "$SMALL" 2>err &&
	grep -q "no signature by a trusted key" err
'

test_expect_success 'a path not in the repository is an error naming it' '
	! nixoci register "$REG/s" /nix/store/00000000000000000000000000000000-nothing 2>err &&
	grep -q "00000000000000000000000000000000-nothing is not in the repository" err
'

test_done
