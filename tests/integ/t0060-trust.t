#!/bin/bash
test_description='trusted-public-keys: signed paths are served, unsigned or foreign-signed are refused'
. "$(dirname "$0")/../lib/lib.sh"

test_require_cmd docker-registry curl bwrap /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

nixcmd() { nix --extra-experimental-features nix-command "$@"; }

# expect_refused MNT PATH: the path is refused with EACCES (docs/format.md 6), fast,
# and the daemon logged a line naming it.
expect_refused() {
	local out
	if out=$(timeout 20 stat "$1/${2##*/}" 2>&1); then
		echo "served: $2"
		return 1
	fi
	echo "$out"
	echo "$out" | grep -q "Permission denied" &&
	grep -q "${2##*/}" "${MOUNT_LOG[$1]}"
}

test_expect_success 'setup: registry, small closure, two key pairs' '
	start_registry &&
	build_small_closure &&
	nix-store --generate-binary-cache-key trusted-1 sk-a pk-a &&
	nix-store --generate-binary-cache-key stranger-1 sk-b pk-b &&
	PK_A=$(cat pk-a) && PK_B=$(cat pk-b) &&
	MOUNT_LOG_ALLOW="refus|untrusted|signature|not signed|unsigned|sig"
'

test_expect_success 'push: signed by A, signed by B, unsigned' '
	nixoci push --sign-key sk-a "$REG/signed-a" "$SMALL" &&
	nixoci push --sign-key sk-b "$REG/signed-b" "$SMALL" &&
	nixoci push "$REG/unsigned" "$SMALL" &&
	nixoci info "$REG/signed-a" "$SMALL" >info.out &&
	cat info.out &&
	grep -q "trusted-1:" info.out
'

test_expect_success 'trusting A: the paths signed by A are served, programs run' '
	mount_store "$REG/signed-a" "$TRASH/a" "trusted-public-keys=$PK_A" &&
	check_mount_hashes "$TRASH/a" $SMALL_CLOSURE &&
	run_sandboxed "$TRASH/a" "$SMALL/bin/hello" | grep -q "Hello from" &&
	unmount_store "$TRASH/a"
'

test_expect_success 'trusting A: paths signed only by B are refused' '
	mount_store "$REG/signed-b" "$TRASH/b" "trusted-public-keys=$PK_A" &&
	expect_refused "$TRASH/b" "$SMALL" &&
	unmount_store "$TRASH/b"
'

test_expect_success 'trusting A: unsigned paths are refused' '
	mount_store "$REG/unsigned" "$TRASH/u" "trusted-public-keys=$PK_A" &&
	expect_refused "$TRASH/u" "$SMALL" &&
	unmount_store "$TRASH/u"
'

test_expect_success 'trusting A and B (two keys in one option): B-signed paths are served' '
	mount_store "$REG/signed-b" "$TRASH/ab" "trusted-public-keys=$PK_A $PK_B" &&
	check_mount_hashes "$TRASH/ab" $SMALL_CLOSURE &&
	unmount_store "$TRASH/ab"
'

test_expect_success 'no trusted keys: everything is served (registry trusted)' '
	mount_store "$REG/unsigned" "$TRASH/n" &&
	check_mount_hashes "$TRASH/n" $SMALL_CLOSURE &&
	unmount_store "$TRASH/n"
'

test_expect_success 'a path with only a Nix narinfo signature is served after full verification' '
	mkdir -p nixsig/sub &&
	echo "nix-signed $$ $RANDOM $(date +%s%N)" >nixsig/sub/file &&
	NIXSIG=$(nix-store --add nixsig) &&
	nixcmd store sign --key-file sk-a "$NIXSIG" &&
	nixcmd path-info --sigs "$NIXSIG" | grep -q trusted-1: &&
	nixoci push "$REG/nixsig" "$NIXSIG" &&
	nixoci info "$REG/nixsig" "$NIXSIG" | grep -q "trusted-1:" &&
	mount_store "$REG/nixsig" "$TRASH/ns" "trusted-public-keys=$PK_A" &&
	cmp "$NIXSIG/sub/file" "$TRASH/ns/${NIXSIG##*/}/sub/file" &&
	check_mount_hashes "$TRASH/ns" "$NIXSIG" &&
	unmount_store "$TRASH/ns"
'

test_expect_success 'the same Nix-signed path is refused when only B is trusted' '
	mount_store "$REG/nixsig" "$TRASH/ns2" "trusted-public-keys=$PK_B" &&
	expect_refused "$TRASH/ns2" "$NIXSIG" &&
	unmount_store "$TRASH/ns2"
'

test_expect_success 'nixoci verify --trusted-public-keys: signed passes, unsigned fails' '
	nixoci --trusted-public-keys "$PK_A" verify "$REG/signed-a" $SMALL_CLOSURE &&
	rc=0 && nixoci --trusted-public-keys "$PK_A" verify "$REG/unsigned" "$SMALL" >v.out 2>&1 || rc=$?
	cat v.out &&
	test $rc = 1 &&
	grep -q "^nixoci: verify $SMALL: " v.out
'

test_done
