#!/bin/bash
test_description='security properties: a read-only, nosuid, nodev mount with the modes and
owners of a real Nix store; EROFS for every write; credentials never in logs, argv or errors;
TLS verification never turned off implicitly'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/authreg.sh"

test_require_cmd docker-registry curl openssl htpasswd base64 /usr/bin/python3
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
export HOME=$TRASH/home
unset REGISTRY_AUTH_FILE XDG_RUNTIME_DIR XDG_CONFIG_HOME DOCKER_CONFIG
mkdir -p "$HOME"
# A password that appears nowhere else, and its base64 forms (the docker
# config's auth field, the Basic header).
PASS=Sekr1t-7b-$$-pw
USER_=carol
B64=$(printf '%s:%s' "$USER_" "$PASS" | base64 -w0)
# The daemon logs at debug level here; only its "nixoci-fs:" lines are
# expected, and none of them may carry a secret (checked below).
MOUNT_LOG_ALLOW='^nixoci-fs: '

test_expect_success 'setup: TLS registry with htpasswd auth, docker config, small closure' '
	CA_DIR=$TRASH/ca &&
	make_ca "$CA_DIR" &&
	make_htpasswd "$TRASH/htpasswd" "$USER_" "$PASS" &&
	start_registry_cfg sec https "http:
  addr: 127.0.0.1:@PORT@
  tls:
    certificate: $CA_DIR/server.crt
    key: $CA_DIR/server.key
auth:
  htpasswd:
    realm: nixoci-test
    path: $TRASH/htpasswd" &&
	REF=https://$REG/small &&
	build_small_closure &&
	docker_config "$HOME/.docker" "$REG" "$USER_" "$PASS" &&
	nixoci -v push --cafile "$CA_DIR/ca.crt" "$REF" "$SMALL" >push.out 2>&1 &&
	grep -q "^pushed " push.out
'

test_expect_success 'mount (debug logging): /proc/mounts says fuse.nixoci-fs, ro, nosuid, nodev' '
	mount_store "$REF" "$MNT" "cafile=$CA_DIR/ca.crt,debug" &&
	line=$(awk -v m="$MNT" "\$2 == m" /proc/mounts) &&
	echo "$line" &&
	test "$(echo "$line" | cut -d" " -f3)" = fuse.nixoci-fs &&
	opts=,$(echo "$line" | cut -d" " -f4), &&
	case $opts in *,ro,*) ;; *) echo "not ro"; false ;; esac &&
	case $opts in *,nosuid,*) ;; *) echo "not nosuid"; false ;; esac &&
	case $opts in *,nodev,*) ;; *) echo "not nodev"; false ;; esac
'

test_expect_success 'write, create, mkdir, unlink, rename, link, setattr: all EROFS' '
	P=$MNT/${SMALL##*/} &&
	ls "$P" >/dev/null &&
	/usr/bin/python3 - "$P" <<-\EOF
	import errno, os, sys
	p = sys.argv[1]
	f = next(os.path.join(d, n) for d, _, ns in os.walk(p) for n in ns
	         if os.path.isfile(os.path.join(d, n)) and not os.path.islink(os.path.join(d, n)))
	ops = {
	    "open for write": lambda: os.open(f, os.O_WRONLY),
	    "open O_TRUNC": lambda: os.open(f, os.O_RDONLY | os.O_TRUNC),
	    "create": lambda: os.open(os.path.join(p, "new"), os.O_CREAT | os.O_WRONLY, 0o644),
	    "mknod": lambda: os.mknod(os.path.join(p, "fifo"), 0o600 | 0o010000),
	    "mkdir": lambda: os.mkdir(os.path.join(p, "d")),
	    "mkdir in root": lambda: os.mkdir(os.path.join(os.path.dirname(p), "x")),
	    "unlink": lambda: os.unlink(f),
	    "rmdir": lambda: os.rmdir(p),
	    "rename": lambda: os.rename(f, f + ".moved"),
	    "symlink": lambda: os.symlink("x", os.path.join(p, "l")),
	    "link": lambda: os.link(f, os.path.join(p, "hard")),
	    "chmod": lambda: os.chmod(f, 0o777),
	    "chown": lambda: os.chown(f, 0, 0),
	    "truncate": lambda: os.truncate(f, 0),
	    "utime": lambda: os.utime(f, (0, 0)),
	    "setxattr": lambda: os.setxattr(f, "user.x", b"1"),
	}
	bad = 0
	for name, op in ops.items():
	    try:
	        op()
	        print("%s: succeeded" % name)
	        bad = 1
	    except OSError as e:
	        ok = e.errno == errno.EROFS
	        print("%s: %s%s" % (name, errno.errorcode[e.errno], "" if ok else "  <- want EROFS"))
	        bad |= not ok
	sys.exit(bad)
	EOF
'

test_expect_success 'modes and owners of a real Nix store: 0444/0555 files, 0555 dirs, 0777 links, 0:0, mtime 1' '
	for p in $SMALL_CLOSURE; do
		find "$MNT/${p##*/}" -printf "%y %m %U %G %T@ %p\n"
	done >modes &&
	wc -l <modes &&
	awk "
		\$3 != 0 || \$4 != 0 { print \"owner:\", \$0; bad = 1 }
		int(\$5) != 1 { print \"mtime:\", \$0; bad = 1 }
		\$1 == \"f\" && \$2 != 444 && \$2 != 555 { print \"file mode:\", \$0; bad = 1 }
		\$1 == \"d\" && \$2 != 555 { print \"dir mode:\", \$0; bad = 1 }
		\$1 == \"l\" && \$2 != 777 { print \"link mode:\", \$0; bad = 1 }
		\$1 !~ /^[fdl]$/ { print \"type:\", \$0; bad = 1 }
		END { exit bad }" modes &&
	grep -q "^f 555 " modes && grep -q "^f 444 " modes && grep -q "^d 555 " modes &&
	stat -c "%a %u %g" "$MNT" >root.mode && cat root.mode &&
	case $(cut -d" " -f1 root.mode) in 555|755) ;; *) false ;; esac
'

# no_secret FILE...: neither the password nor its base64 in any of them
no_secret() {
	! grep -lF -e "$PASS" -e "$B64" "$@"
}

test_expect_success 'credentials: not in the debug log, not in argv, not in the environment' '
	cat "$MNT/${SMALL##*/}/bin/hello" >/dev/null &&
	log=${MOUNT_LOG[$MNT]} &&
	grep -c . "$log" &&
	grep -qi "debug\|GET\|fetch\|manifest" "$log" &&
	no_secret "$log" push.out &&
	pid=${MOUNT_PID[$MNT]} &&
	tr "\0" " " </proc/$pid/cmdline >cmdline && cat cmdline &&
	no_secret cmdline &&
	tr "\0" "\n" </proc/$pid/environ >environ &&
	no_secret environ &&
	ps -eo args >ps.out && no_secret ps.out
'

test_expect_success 'credentials: not in error messages (wrong password, unknown user)' '
	docker_config "$TRASH/wrong" "$REG" "$USER_" "$PASS-wrong" &&
	! DOCKER_CONFIG=$TRASH/wrong nixoci -v ls --cafile "$CA_DIR/ca.crt" "$REF" >out 2>err &&
	cat err && test -s err &&
	no_secret out err &&
	! grep -F "$PASS-wrong" err &&
	! grep -F "$(printf "%s:%s" "$USER_" "$PASS-wrong" | base64 -w0)" err &&
	mkdir -p "$TRASH/mnt-wrong" &&
	! DOCKER_CONFIG=$TRASH/wrong timeout 30 nixoci-fs -f -o "cache=$TRASH/cw,cafile=$CA_DIR/ca.crt,debug" \
		"$REF" "$TRASH/mnt-wrong" >fs.out 2>&1 &&
	cat fs.out && ! mountpoint -q "$TRASH/mnt-wrong" &&
	! grep -F -e "$PASS" -e "$B64" fs.out
'

test_expect_success 'TLS: an untrusted certificate is refused without an explicit insecure flag' '
	! nixoci ls "$REF" >out 2>err && cat err &&
	grep -qi "certificate" err &&
	mkdir -p "$TRASH/mnt-noca" &&
	! timeout 30 nixoci-fs -f -o "cache=$TRASH/cn" "$REF" "$TRASH/mnt-noca" 2>fs.err &&
	cat fs.err && grep -qi "certificate" fs.err &&
	! mountpoint -q "$TRASH/mnt-noca" &&
	echo "no scheme on a loopback address: plain HTTP is tried (the loopback" &&
	echo "convention), never TLS without verification: still refused" &&
	! nixoci ls "$REG/small" >out2 2>err2 && cat err2 &&
	! test -s out2
'

test_expect_success 'TLS: the environment does not turn verification off (curl variables)' '
	! env CURL_CA_BUNDLE=/dev/null SSL_CERT_FILE=/dev/null GIT_SSL_NO_VERIFY=1 \
		NODE_TLS_REJECT_UNAUTHORIZED=0 PYTHONHTTPSVERIFY=0 \
		nixoci ls "$REF" >out 2>err &&
	cat err && grep -qi "certificate" err
'

test_expect_success 'TLS: --insecure / -o insecure is the explicit way, and works' '
	nixoci ls --insecure "$REF" >ls.out 2>err && cat err &&
	test -s ls.out
'

test_expect_success 'TLS: --insecure=HOST applies to that host only' '
	hostport=${REF#https://} && hostport=${hostport%%/*} &&
	nixoci ls --insecure="$hostport" "$REF" >ls2.out 2>err && cat err &&
	test -s ls2.out &&
	! nixoci ls --insecure=other.example:5000 "$REF" >ls3.out 2>err3 && cat err3 &&
	grep -qi "certificate" err3 && ! test -s ls3.out
'

test_done
