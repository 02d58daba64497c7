#!/bin/bash
test_description='docker-registry with TLS (a test CA) and htpasswd Basic auth'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/authreg.sh"

test_require_cmd docker-registry curl openssl htpasswd base64
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
# credentials come only from what each test sets up
export HOME=$TRASH/home
unset REGISTRY_AUTH_FILE XDG_RUNTIME_DIR XDG_CONFIG_HOME DOCKER_CONFIG
mkdir -p "$HOME"

test_expect_success 'setup: CA, htpasswd, TLS registry, the small closure' '
	CA_DIR=$TRASH/ca &&
	make_ca "$CA_DIR" &&
	make_htpasswd "$TRASH/htpasswd" alice s3cret &&
	start_registry_cfg tls https "http:
  addr: 127.0.0.1:@PORT@
  tls:
    certificate: $CA_DIR/server.crt
    key: $CA_DIR/server.key
auth:
  htpasswd:
    realm: nixoci-test
    path: $TRASH/htpasswd" &&
	REF=https://$REG/small &&
	build_small_closure
'

test_expect_success 'push with credentials from ~/.docker/config.json and --cafile' '
	docker_config "$HOME/.docker" "$REG" alice s3cret &&
	nixoci push --cafile "$CA_DIR/ca.crt" "$REF" "$SMALL" >push.out 2>&1 &&
	cat push.out &&
	grep -q "^pushed " push.out &&
	nixoci ls --cafile "$CA_DIR/ca.crt" "$REF" | sort >ls.out &&
	echo "$SMALL_CLOSURE" | sort >want &&
	test_cmp want ls.out
'

test_expect_success 'mount with -o cafile: every path hashes to its NarHash' '
	mount_store "$REF" "$MNT" "cafile=$CA_DIR/ca.crt" &&
	check_mount_hashes "$MNT" $SMALL_CLOSURE &&
	unmount_store "$MNT"
'

test_expect_success 'concurrent reads share one HTTP/2 connection' '
	H2=$TRASH/mnt-h2 &&
	mount_store "$REF" "$H2" "cafile=$CA_DIR/ca.crt" &&
	pids= &&
	for p in $SMALL_CLOSURE; do
		{ nar_hash_of "$H2/${p##*/}" >"h2-${p##*/}"; } &
		pids="$pids $!"
	done &&
	for pid in $pids; do wait $pid || return 1; done &&
	for p in $SMALL_CLOSURE; do
		test "$(cat "h2-${p##*/}")" = "$(nix_nar_hash "$p")" || return 1
	done &&
	nixoci stats "$H2" >h2.stats &&
	cat h2.stats &&
	test "$(sed -n "s/^connections //p" h2.stats)" = 1 &&
	test "$(sed -n "s/^h2_requests //p" h2.stats)" -gt 0 &&
	test "$(sed -n "s/^h2_requests //p" h2.stats)" = "$(sed -n "s/^requests //p" h2.stats)" &&
	unmount_store "$H2"
'

test_expect_success 'no CA: refused with a message naming the certificate problem' '
	test_must_fail_quick() { ! "$@"; } &&
	test_must_fail_quick nixoci ls "$REF" >out 2>err &&
	cat err &&
	grep -q "tls certificate verification failed" err &&
	grep -q "unable to get local issuer certificate" err &&
	grep -q "cafile" err &&
	mkdir -p "$TRASH/mnt-noca" &&
	! nixoci-fs -f -o "cache=$TRASH/cache-noca" "$REF" "$TRASH/mnt-noca" 2>fs.err &&
	cat fs.err &&
	grep -q "unable to get local issuer certificate" fs.err &&
	! mountpoint -q "$TRASH/mnt-noca"
'

test_expect_success 'plain http to the TLS port fails clearly' '
	! nixoci ls "$REG/small" 2>err &&
	cat err && test -s err
'

test_expect_success 'a wrong password fails within seconds: credentials rejected' '
	docker_config "$TRASH/wrong" "$REG" alice Badpass9 &&
	start=$(date +%s) &&
	! DOCKER_CONFIG=$TRASH/wrong nixoci ls --cafile "$CA_DIR/ca.crt" "$REF" >out 2>err &&
	end=$(date +%s) &&
	cat err &&
	test $((end - start)) -le 5 &&
	grep -q "credentials rejected for $REG" err &&
	grep -q "docker login $REG" err &&
	! grep -q Badpass9 err &&
	! grep -q "$(printf alice:Badpass9 | base64 -w0)" err
'

test_expect_success 'no credentials at all: credentials missing' '
	! DOCKER_CONFIG=$TRASH/none nixoci ls --cafile "$CA_DIR/ca.crt" "$REF" 2>err &&
	cat err &&
	grep -q "credentials missing for $REG" err
'

test_expect_success 'REGISTRY_AUTH_FILE comes before ~/.docker/config.json' '
	docker_config "$TRASH/raf" "$REG" alice wrong &&
	! REGISTRY_AUTH_FILE=$TRASH/raf/config.json \
		nixoci ls --cafile "$CA_DIR/ca.crt" "$REF" 2>err &&
	grep -q "credentials rejected.*raf/config.json" err &&
	mkdir -p "$TRASH/xdg/containers" &&
	cp "$HOME/.docker/config.json" "$TRASH/xdg/containers/auth.json" &&
	rm -f "$HOME/.docker/config.json" &&
	XDG_RUNTIME_DIR=$TRASH/xdg nixoci ls --cafile "$CA_DIR/ca.crt" "$REF" >ls2.out &&
	test_cmp want <(sort ls2.out) &&
	cp "$TRASH/xdg/containers/auth.json" "$HOME/.docker/config.json"
'

test_expect_success 'credHelpers: docker-credential-NAME get, host on stdin' '
	mkdir -p "$TRASH/bin" "$TRASH/helper" &&
	cat >"$TRASH/bin/docker-credential-nxtest" <<-EOF &&
	#!/bin/sh
	echo "\$*" >>"$TRASH/helper/argv"
	read -r server
	echo "\$server" >>"$TRASH/helper/stdin"
	[ "\$1" = get ] || exit 1
	[ "\$server" = "$REG" ] || { echo "credentials not found in native keychain"; exit 1; }
	printf "{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}\n" "\$server"
	EOF
	chmod +x "$TRASH/bin/docker-credential-nxtest" &&
	mkdir -p "$TRASH/helpercfg" &&
	printf "{\"credHelpers\":{\"%s\":\"nxtest\"}}\n" "$REG" >"$TRASH/helpercfg/config.json" &&
	PATH=$TRASH/bin:$PATH DOCKER_CONFIG=$TRASH/helpercfg \
		nixoci ls --cafile "$CA_DIR/ca.crt" "$REF" | sort >ls3.out &&
	test_cmp want ls3.out &&
	test "$(cat "$TRASH/helper/argv")" = get &&
	test "$(cat "$TRASH/helper/stdin")" = "$REG"
'

test_expect_success 'a credential helper run by the mounted daemon inherits only fds 0-2' '
	cat >"$TRASH/bin/docker-credential-nxfd" <<-EOF &&
	#!/usr/bin/python3 -I
	# Lists its own descriptors in-process: a shell would have to fork a
	# lister, and the pipes and saved descriptors of the shell would show up
	# in the listing (a pipeline "ls | awk" in a shell script raced with the
	# shell closing its end of the pipe and reported fds 3 and 4).
	import json, os, sys
	leaks = []
	for n in sorted(os.listdir("/proc/self/fd"), key=int):
	    if n in ("0", "1", "2"):
	        continue
	    try:
	        target = os.readlink("/proc/self/fd/" + n)
	    except OSError:
	        continue  # the directory descriptor of the listing, closed by now
	    if not target.endswith("/docker-credential-nxfd"):
	        leaks.append(n + " " + target)
	with open("$TRASH/helper/fds", "a") as f:
	    f.writelines(l + "\\n" for l in leaks)
	with open("$TRASH/helper/calls", "a") as f:
	    f.write("call\\n")
	server = sys.stdin.readline().strip()
	print(json.dumps({"ServerURL": server, "Username": "alice", "Secret": "s3cret"}))
	EOF
	chmod +x "$TRASH/bin/docker-credential-nxfd" &&
	mkdir -p "$TRASH/fdcfg" &&
	printf "{\"credHelpers\":{\"%s\":\"nxfd\"}}\n" "$REG" >"$TRASH/fdcfg/config.json" &&
	rm -f "$TRASH/helper/fds" "$TRASH/helper/calls" &&
	PATH=$TRASH/bin:$PATH DOCKER_CONFIG=$TRASH/fdcfg \
		mount_store "$REF" "$TRASH/mnt-fd" "cafile=$CA_DIR/ca.crt,cache=$TRASH/cache-fd" &&
	check_mount_hashes "$TRASH/mnt-fd" $SMALL_CLOSURE &&
	unmount_store "$TRASH/mnt-fd" &&
	test "$(grep -c call "$TRASH/helper/calls")" -ge 2 &&
	{ ! test -s "$TRASH/helper/fds" || { cat "$TRASH/helper/fds"; false; }; }
'

test_expect_success 'credsStore with a helper that is not installed: clear error' '
	mkdir -p "$TRASH/storecfg" &&
	echo "{\"credsStore\":\"nxmissing\"}" >"$TRASH/storecfg/config.json" &&
	! DOCKER_CONFIG=$TRASH/storecfg nixoci ls --cafile "$CA_DIR/ca.crt" "$REF" 2>err &&
	cat err &&
	grep -q "credential helper docker-credential-nxmissing not found in PATH" err
'

test_done
