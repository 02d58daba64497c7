#!/bin/bash
test_description='blob GETs redirected (307) to a storage host: no Authorization leaks'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/authreg.sh"

test_require_cmd docker-registry curl htpasswd base64 /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

export HOME=$TRASH/home
unset REGISTRY_AUTH_FILE XDG_RUNTIME_DIR XDG_CONFIG_HOME DOCKER_CONFIG
mkdir -p "$HOME"

test_expect_success 'setup: registry with Basic auth, the redirecting front, a push' '
	make_htpasswd "$TRASH/htpasswd" alice s3cret &&
	start_registry_cfg basic http "http:
  addr: 127.0.0.1:@PORT@
auth:
  htpasswd:
    realm: nixoci-test
    path: $TRASH/htpasswd" &&
	ORIGIN=$REG &&
	start_redirect_front "$ORIGIN" "$REG_STORAGE" &&
	printf "{\"auths\":{\"%s\":{\"auth\":\"%s\"},\"%s\":{\"auth\":\"%s\"}}}\n" \
		"$ORIGIN" "$(printf alice:s3cret | base64 -w0)" \
		"$FRONT" "$(printf alice:s3cret | base64 -w0)" >"$TRASH/config.json" &&
	export REGISTRY_AUTH_FILE=$TRASH/config.json &&
	build_small_closure &&
	nixoci push "$ORIGIN/small" "$SMALL" >push.out 2>&1 &&
	cat push.out
'

test_expect_success 'mount through the front: the content arrives from the storage host' '
	mount_store "$FRONT/small" "$TRASH/mnt" &&
	check_mount_hashes "$TRASH/mnt" $SMALL_CLOSURE &&
	unmount_store "$TRASH/mnt" &&
	cat "$REDIRECT_LOG" &&
	grep -q "^front blob GET .* auth=yes head=200" "$REDIRECT_LOG" &&
	grep -q "^storage GET sha256:.*status=20[06]" "$REDIRECT_LOG"
'

test_expect_success 'the storage host never saw an Authorization header' '
	grep "^storage " "$REDIRECT_LOG" >storage.log &&
	test -s storage.log &&
	! grep -q "authorization=yes" storage.log
'

test_expect_success 'an expired signed URL (403) was asked again from the registry' '
	grep -q "sig=1 .*status=403" storage.log &&
	grep -q "sig=2 .*status=20[06]" storage.log
'

test_expect_success 'nixoci cat through the front works too' '
	DATA=$(echo "$SMALL_CLOSURE" | grep -- -hello-data-) &&
	nixoci cat --cache "$TRASH/cat-cache" "$FRONT/small" \
		"$DATA/share/hello/numbers.txt" >cat.out &&
	cmp cat.out "$DATA/share/hello/numbers.txt"
'

test_done
