#!/bin/bash
test_description='docker-registry with auth: token and a JWT token server'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/authreg.sh"

test_require_cmd docker-registry curl openssl base64 /usr/bin/python3
/usr/bin/python3 -c 'import jwt, cryptography' 2>/dev/null ||
	skip_all "python3-jwt and python3-cryptography are needed for the token server"
test_require_nix
test_require_fuse
test_require_binaries

export HOME=$TRASH/home
unset REGISTRY_AUTH_FILE XDG_RUNTIME_DIR XDG_CONFIG_HOME DOCKER_CONFIG
mkdir -p "$HOME"

test_expect_success 'setup: token server, registry with auth: token, small closure' '
	start_tokenserver "$TRASH/tok" alice s3cret &&
	start_registry_cfg token http "http:
  addr: 127.0.0.1:@PORT@
auth:
  token:
    realm: $TOKEN_URL
    service: nixoci-registry
    issuer: nixoci-test-issuer
    rootcertbundle: $TRASH/tok/signing.crt" &&
	REF=$REG/small &&
	build_small_closure &&
	NPATHS=$(echo "$SMALL_CLOSURE" | wc -l)
'

test_expect_success 'anonymous push is refused: credentials missing' '
	! nixoci push "$REF" "$SMALL" >out 2>err &&
	cat err &&
	grep -q "credentials missing for $REG" err &&
	grep -q "docker login $REG" err
'

# --no-pack: every path its own two blobs, so the push makes many
# requests (more than 10) on one or two tokens; the packed push that follows
# makes fewer, on as few tokens
test_expect_success 'authenticated push works; its token is cached' '
	docker_config "$TRASH/creds" "$REG" alice s3cret &&
	before=$(token_count alice) &&
	regs_before=$(reg_log_count "$REG_LOG" "HTTP/1.1\" 20") &&
	DOCKER_CONFIG=$TRASH/creds nixoci push --no-pack "$REF" "$SMALL" >push.out 2>&1 &&
	cat push.out &&
	grep -q "^pushed $NPATHS paths" push.out &&
	tokens=$(($(token_count alice) - before)) &&
	reqs=$(($(reg_log_count "$REG_LOG" "HTTP/1.1\" 20") - regs_before)) &&
	echo "push: $tokens token requests for $reqs successful registry requests" &&
	test "$reqs" -gt 10 &&
	test "$tokens" -ge 1 && test "$tokens" -le 2 &&
	grep "^token alice" "$TOKEN_LOG" | grep -q "pull,push" &&
	REQS_V1=$reqs
'

test_expect_success 'a packed push (the default): fewer requests, its token cached' '
	before=$(token_count alice) &&
	regs_before=$(reg_log_count "$REG_LOG" "HTTP/1.1\" 20") &&
	DOCKER_CONFIG=$TRASH/creds nixoci push "$REG/smallp" "$SMALL" >push.out 2>&1 &&
	cat push.out &&
	grep -q "^pushed $NPATHS paths" push.out &&
	tokens=$(($(token_count alice) - before)) &&
	reqs=$(($(reg_log_count "$REG_LOG" "HTTP/1.1\" 20") - regs_before)) &&
	echo "push: $tokens token requests for $reqs successful registry requests" &&
	# at least a manifest per path, fewer requests than blobs of its own
	test "$reqs" -ge "$NPATHS" && test "$reqs" -lt "$REQS_V1" &&
	test "$tokens" -ge 1 && test "$tokens" -le 2 &&
	DOCKER_CONFIG=$TRASH/creds nixoci info "$REG/smallp" "$SMALL" | grep "^Pack: "
'

test_expect_success '--mount-from: the push token covers the source, no mount is refused' '
	before=$(token_count alice) &&
	refused=$(reg_log_count "$REG_LOG" "mount=.*HTTP/1.1\" 401") &&
	DOCKER_CONFIG=$TRASH/creds nixoci push --mount-from smallp "$REG/other" "$SMALL" \
		>mnt.out 2>&1 &&
	cat mnt.out &&
	grep -q "^pushed $NPATHS paths ($NPATHS uploaded" mnt.out &&
	grep -q "([1-9][0-9]* blobs mounted from smallp)" mnt.out &&
	tokens=$(($(token_count alice) - before)) &&
	echo "token requests: $tokens; last: $(grep "^token alice" "$TOKEN_LOG" | tail -n 1)" &&
	test "$tokens" -le 2 &&
	grep "^token alice" "$TOKEN_LOG" | tail -n 1 |
		grep -q "repository:other:pull,push.*smallp:pull" &&
	test "$(reg_log_count "$REG_LOG" "mount=.*HTTP/1.1\" 401")" = "$refused"
'

test_expect_success 'anonymous pull: ls and a mount, tokens cached' '
	before=$(token_count anonymous) &&
	nixoci ls "$REF" | sort >ls.out &&
	echo "$SMALL_CLOSURE" | sort >want &&
	test_cmp want ls.out &&
	test $(($(token_count anonymous) - before)) -eq 1 &&
	mount_store "$REF" "$TRASH/mnt" &&
	check_mount_hashes "$TRASH/mnt" $SMALL_CLOSURE &&
	unmount_store "$TRASH/mnt" &&
	n=$(($(token_count anonymous) - before)) &&
	echo "anonymous token requests: $n" &&
	test "$n" -le 3
'

test_expect_success 'a token is renewed when it expires' '
	echo 3 >"$TOKEN_EXPIRES" &&
	mount_store "$REF" "$TRASH/mnt2" &&
	paths=($SMALL_CLOSURE) &&
	cat "$TRASH/mnt2/${paths[0]##*/}" >/dev/null 2>&1 ||
		ls -lR "$TRASH/mnt2/${paths[0]##*/}" >/dev/null &&
	t0=$(date +%s) &&
	c0=$(token_count anonymous) &&
	test_wait_for 10 elapsed_since "$t0" 4 &&
	check_mount_hashes "$TRASH/mnt2" "${paths[@]:1}" &&
	c1=$(token_count anonymous) &&
	echo "tokens before the expiry: $c0, after: $c1" &&
	test "$c1" -gt "$c0" &&
	test "$c1" -le $((c0 + 2)) &&
	unmount_store "$TRASH/mnt2"
'

test_expect_success 'a closure mount: its first request (no /v2/ probe) answers the challenge' '
	DOCKER_CONFIG=$TRASH/creds nixoci push --tag hello "$REF" "$SMALL" >/dev/null &&
	mount_store "$REF" "$TRASH/mnt3" closure=hello &&
	check_mount_hashes "$TRASH/mnt3" $SMALL_CLOSURE &&
	unmount_store "$TRASH/mnt3"
'

test_expect_success 'a closure mount with a wrong password: one clear line, no mount' '
	docker_config "$TRASH/bad2" "$REG" alice Nope1234 &&
	mkdir -p "$TRASH/mnt4" &&
	! DOCKER_CONFIG=$TRASH/bad2 timeout 20 nixoci-fs -f \
		-o cache=$TRASH/c4,closure=hello "$REF" "$TRASH/mnt4" 2>err &&
	cat err &&
	test "$(wc -l <err)" = 1 &&
	grep -q "credentials rejected by the token server for $REG" err &&
	! mountpoint -q "$TRASH/mnt4"
'

test_expect_success 'wrong password: the token server rejects it, clearly' '
	docker_config "$TRASH/bad" "$REG" alice Nope1234 &&
	! DOCKER_CONFIG=$TRASH/bad nixoci ls "$REF" 2>err &&
	cat err &&
	grep -q "credentials rejected by the token server for $REG" err
'

test_done
