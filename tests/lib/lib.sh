# tests/lib/lib.sh: the integration tests' library (bash), after git's
# t/test-lib.sh. A test script is:
#
#   #!/bin/bash
#   test_description='what this file checks'
#   . "$(dirname "$0")/../lib/lib.sh"
#   test_require_cmd docker-registry nix-store      # or skip_all "why"
#   test_expect_success 'name' '
#           command && command
#   '
#   test_done
#
# Output is TAP for prove: "ok N - name" / "not ok N - name", the plan "1..N"
# last. Each test body is eval'd in the script's own shell (variables carry
# over to later tests); its output goes to a log that is printed as "#"
# comments when it fails, or to stderr as it runs with -v / TEST_VERBOSE=1.
#
# Cleanup: test_atexit CMD pushes CMD on a stack that runs last-in first-out,
# from test_done or, when a script dies half way, from the EXIT trap. Servers
# (start_registry) and mounts (mount_store) register themselves, so every
# mount is unmounted and every server stopped even when a test fails. The
# trash directory goes last and never across a still-mounted filesystem.
#
# Nothing sleeps a fixed time: every wait polls a condition with a bound
# (test_wait_for).

set -u
export LC_ALL=C

TEST_NAME=$(basename "$0" .t)
TEST_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEST_SRCDIR=$(cd "$TEST_LIB_DIR/../.." && pwd)
TEST_VERBOSE=${TEST_VERBOSE:-}
TEST_KEEP=${TEST_KEEP:-} # keep the trash directory on failure
case " $* " in *" -v "* | *" --verbose "*) TEST_VERBOSE=1 ;; esac

# Find the binaries: run-all.sh puts $O/bin first in PATH; run by hand, use
# the default build directory.
if ! command -v nixoci >/dev/null 2>&1 && [ -x "$TEST_SRCDIR/build/bin/nixoci" ]; then
	PATH=$TEST_SRCDIR/build/bin:$PATH
fi
# fusermount3, mountpoint and friends live in sbin on some systems
PATH=$PATH:/usr/sbin:/sbin
export PATH

# Keep the file descriptors apart: 3 is TAP (the real stdout), 4 the
# verbose stream (the real stderr).
exec 3>&1 4>&2

test_count=0
test_failed=0
test_atexit_cmds=()
test_atexit_done=
test_cleanup_problems=()

TRASH=$(mktemp -d "/tmp/nixoci-test.$TEST_NAME.XXXXXX") || {
	echo "1..0 # SKIP cannot create a trash directory in /tmp"
	exit 0
}
export TRASH
cd "$TRASH" || exit 1

say() { echo "# $*" >&3; }

# ------------------------------------------------------------ cleanup stack

test_atexit_used=
test_atexit() {
	test_atexit_cmds+=("$1")
	test_atexit_used=1
}

# Report a problem found during cleanup (daemon exit status, error lines in
# a log): test_done turns these into a failing test.
test_cleanup_problem() {
	test_cleanup_problems+=("$*")
	echo "cleanup problem: $*" >&2
}

test_run_atexit() {
	local i
	[ -n "$test_atexit_done" ] && return 0
	test_atexit_done=1
	for ((i = ${#test_atexit_cmds[@]} - 1; i >= 0; i--)); do
		eval "${test_atexit_cmds[$i]}" >>"$TRASH/atexit.log" 2>&1 ||
			echo "# atexit: '${test_atexit_cmds[$i]}' failed" >&3
	done
	test_atexit_cmds=()
}

test_remove_trash() {
	[ -d "$TRASH" ] || return 0
	if [ -n "$TEST_KEEP" ] && [ "$test_failed" -gt 0 ]; then
		echo "# keeping $TRASH" >&3
		return 0
	fi
	# A FUSE mount left under the trash (its daemon died before its
	# unmount_store ran, or a test made one by hand) is detached lazily;
	# the test has already failed on the daemon's status or log.
	awk -v t="$TRASH/" 'index($2 "/", t) == 1 && $3 ~ /^fuse/ { print $2 }' /proc/self/mounts |
		sort -r | while read -r m; do
			echo "# detaching $m, left mounted" >&3
			fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		done
	# Never recurse into a mount that would not go away.
	if awk -v t="$TRASH/" 'index($2 "/", t) == 1 { found = 1 } END { exit !found }' \
		/proc/self/mounts; then
		echo "# $TRASH still has mounts; not removing it" >&3
		return 0
	fi
	rm -rf --one-file-system "$TRASH"
}

test_exit_trap() {
	local rc=$?
	test_run_atexit
	test_remove_trash
	exit $rc
}
trap test_exit_trap EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --------------------------------------------------------------------- TAP

# skip_all REASON: nothing here can run; TAP "1..0 # SKIP" and exit 0.
skip_all() {
	echo "1..0 # SKIP $*" >&3
	exit 0
}

# Prerequisites. test_require_* skip the whole file; test_set_prereq and the
# optional first argument of test_expect_success skip single tests.
test_prereqs=" "
test_set_prereq() { test_prereqs="$test_prereqs$1 "; }
test_have_prereq() {
	local p
	for p in ${1//,/ }; do
		case "$test_prereqs" in *" $p "*) ;; *) return 1 ;; esac
	done
}

test_require_cmd() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || skip_all "missing command $c"
	done
}

test_require_fuse() {
	[ -c /dev/fuse ] || skip_all "no /dev/fuse"
	test_require_cmd fusermount3 mountpoint
	[ -r /dev/fuse ] && [ -w /dev/fuse ] || skip_all "/dev/fuse not accessible"
}

test_require_nix() {
	test_require_cmd nix-store nix-build nix-hash
	[ -w /nix/store ] || [ -w /nix/var/nix ] || skip_all "nix store not writable"
}

test_require_binaries() {
	local b
	for b in nixoci nixoci-fs; do
		command -v $b >/dev/null 2>&1 || skip_all "$b not built (run make)"
	done
}

# The body runs inside a function: a loop ends a failing test with
# "|| return 1" (never "exit", which would end the whole script).
test_eval_() {
	eval "$1"
}

# test_expect_success [PREREQS] NAME BODY
test_expect_success() {
	local prereq='' name body rc
	if [ $# -eq 3 ]; then
		prereq=$1
		shift
	fi
	name=$1 body=$2
	test_count=$((test_count + 1))
	if [ -n "$prereq" ] && ! test_have_prereq "$prereq"; then
		echo "ok $test_count # skip $name (missing $prereq)" >&3
		return 0
	fi
	local log="$TRASH/test-$test_count.log"
	if [ -n "$TEST_VERBOSE" ]; then
		echo "expecting success of $test_count '$name'" >&4
		{ test_eval_ "$body"; } </dev/null > >(tee "$log" >&4) 2>&1
		rc=$?
	else
		{ test_eval_ "$body"; } </dev/null >"$log" 2>&1
		rc=$?
	fi
	if [ $rc -eq 0 ]; then
		echo "ok $test_count - $name" >&3
	else
		test_failed=$((test_failed + 1))
		echo "not ok $test_count - $name" >&3
		# On stderr, like Test::More's diag: prove shows it without -v,
		# so a CI log says why.
		{
			echo "$TEST_NAME $test_count '$name': exit status $rc; the test body was:"
			echo "$body"
			echo "its output (last 60 lines):"
			tail -n 60 "$log"
		} | sed 's/^/#   /' >&4
	fi
	return 0
}

# test_expect_failure: a known breakage (TAP TODO).
test_expect_failure() {
	local name=$1 body=$2 rc
	test_count=$((test_count + 1))
	{ test_eval_ "$body"; } </dev/null >"$TRASH/test-$test_count.log" 2>&1
	rc=$?
	if [ $rc -eq 0 ]; then
		echo "ok $test_count - $name # TODO known breakage vanished" >&3
	else
		echo "not ok $test_count - $name # TODO known breakage" >&3
	fi
}

# test_done: run the cleanups (as one last test: every daemon exited 0 and
# its log was clean), print the plan, exit non-zero when anything failed.
test_done() {
	test_run_atexit
	if [ -n "$test_atexit_used" ] && [ "$test_count" -gt 0 ]; then
		test_count=$((test_count + 1))
		if [ ${#test_cleanup_problems[@]} -eq 0 ]; then
			echo "ok $test_count - cleanup: mounts gone, daemons exited 0, logs clean" >&3
		else
			test_failed=$((test_failed + 1))
			echo "not ok $test_count - cleanup: mounts gone, daemons exited 0, logs clean" >&3
			printf '#   %s\n' "${test_cleanup_problems[@]}" >&4
			sed 's/^/#   atexit: /' "$TRASH/atexit.log" 2>/dev/null | tail -n 40 >&4
		fi
	fi
	echo "1..$test_count" >&3
	if [ "$test_failed" -gt 0 ]; then
		echo "# failed $test_failed among $test_count test(s)" >&3
		exit 1
	fi
	exit 0
}

# ------------------------------------------------------------------ helpers

# test_wait_for SECONDS CMD...: poll CMD every 50 ms until it succeeds;
# fails after SECONDS. No fixed sleeps anywhere else.
test_wait_for() {
	local secs=$1 deadline
	shift
	deadline=$(($(date +%s%N) / 1000000 + secs * 1000))
	while ! "$@"; do
		if [ $(($(date +%s%N) / 1000000)) -ge $deadline ]; then
			return 1
		fi
		sleep 0.05
	done
}

pid_alive() { kill -0 "$1" 2>/dev/null; }
pid_gone() { ! kill -0 "$1" 2>/dev/null; }

# wait_pid_status PID SECS VAR: wait for our child PID to exit, at most SECS,
# then store its exit status in VAR (124 when it had to be killed).
wait_pid_status() {
	local pid=$1 secs=$2 __st=0
	if ! test_wait_for "$secs" pid_gone "$pid"; then
		kill -TERM "$pid" 2>/dev/null
		test_wait_for 5 pid_gone "$pid" || kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		printf -v "$3" '%s' 124
		return 0
	fi
	wait "$pid" 2>/dev/null || __st=$?
	printf -v "$3" '%s' "$__st"
}

test_cmp() { diff -u "$@"; }

# free_port: a free loopback TCP port (the kernel picks it; the tiny window
# until the server binds is covered by start_registry's retry).
free_port() {
	/usr/bin/python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- registry

# start_registry [NAME]: Debian's docker-registry on a free loopback port
# with its own storage directory; exports REG=127.0.0.1:PORT (and
# REG_<NAME>, REG_STORAGE, REG_STORAGE_<NAME>) and registers its shutdown.
start_registry() {
	local name=${1:-reg} port dir pid try
	for try in 1 2 3; do
		port=$(free_port) || return 1
		dir=$TRASH/registry-$name
		mkdir -p "$dir/storage"
		cat >"$dir/config.yml" <<-EOF
		version: 0.1
		log:
		  level: info
		  accesslog:
		    disabled: false
		storage:
		  filesystem:
		    rootdirectory: $dir/storage
		  delete:
		    enabled: true
		  maintenance:
		    uploadpurging:
		      enabled: false
		http:
		  addr: 127.0.0.1:$port
		EOF
		docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
		pid=$!
		test_atexit "stop_registry $pid"
		if test_wait_for 20 registry_ready "$port" "$pid"; then
			if pid_alive "$pid"; then
				REG=127.0.0.1:$port
				REG_STORAGE=$dir/storage
				printf -v "REG_$name" '%s' "$REG"
				printf -v "REG_STORAGE_$name" '%s' "$REG_STORAGE"
				printf -v "REG_PID_$name" '%s' "$pid"
				export REG REG_STORAGE "REG_$name" "REG_STORAGE_$name"
				return 0
			fi
		fi
		stop_registry "$pid"
		# lost the port to someone else? try another one
		grep -q "address already in use" "$dir/log" || break
	done
	echo "docker-registry did not start; its log:" >&2
	tail -n 20 "$dir/log" >&2
	return 1
}

registry_ready() {
	pid_alive "$2" || return 0 # died: stop polling, the caller checks
	curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1/v2/" 2>/dev/null
}

stop_registry() {
	local pid=$1 st
	pid_alive "$pid" || { wait "$pid" 2>/dev/null; return 0; }
	kill -TERM "$pid" 2>/dev/null
	wait_pid_status "$pid" 10 st
	return 0
}

# restart_registry [NAME]: start the registry NAME again (after stop_registry)
# with the same port, config and storage; waits until it answers.
restart_registry() {
	local name=${1:-reg} dir port pid
	dir=$TRASH/registry-$name
	port=$(sed -nE 's/^ *addr: 127\.0\.0\.1:([0-9]+)$/\1/p' "$dir/config.yml")
	docker-registry serve "$dir/config.yml" >>"$dir/log" 2>&1 &
	pid=$!
	printf -v "REG_PID_$name" '%s' "$pid"
	test_atexit "stop_registry $pid"
	test_wait_for 20 registry_ready "$port" "$pid" && pid_alive "$pid"
}

# kill_mount MNT: kill -9 the daemon of MNT and clear the dead mount.
kill_mount() {
	local mnt=$1 pid=${MOUNT_PID[$1]:-}
	[ -n "$pid" ] || return 1
	kill -KILL "$pid"
	wait "$pid" 2>/dev/null
	unset "MOUNT_PID[$mnt]"
	fusermount3 -uz "$mnt" 2>/dev/null
	test_wait_for 10 eval "! mountpoint -q '$mnt'"
}

# registry_blob_path DIGEST: where the filesystem driver keeps a blob.
registry_blob_path() {
	local hex=${1#sha256:}
	echo "$REG_STORAGE/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data"
}

# ------------------------------------------------------------------- mounts

# mount_store REF MNT [OPTS]: run nixoci-fs -f in the background, log in
# $TRASH/fs-<mnt>.log, wait (bounded) until MNT is a mountpoint; fail early
# when the daemon exits. The cache is $TRASH/cache-<mnt> unless OPTS has one;
# NIXOCI_TEST_PASSTHROUGH=off|auto adds passthrough= unless OPTS has one.
# Registers the unmount. Set MOUNT_LOG_ALLOW to an ERE of log lines the test
# expects (they then do not count as errors).
declare -A MOUNT_PID MOUNT_LOG
mount_store() {
	local ref=$1 mnt=$2 opts=${3:-} key log pid o
	key=$(basename "$mnt")
	mkdir -p "$mnt"
	log=$TRASH/fs-$key.log
	o=
	case ",$opts," in *,cache=*) ;; *) o="cache=$TRASH/cache-$key" ;; esac
	# NIXOCI_TEST_PASSTHROUGH=off|auto: run a test's mounts that way
	# (t0141 runs read tests both ways) unless the test chose itself
	case ",$opts," in
	*,passthrough=*) ;;
	*) [ -n "${NIXOCI_TEST_PASSTHROUGH:-}" ] &&
		o="$o,passthrough=$NIXOCI_TEST_PASSTHROUGH" ;;
	esac
	[ -n "$opts" ] && o="${o:+$o,}$opts"
	echo "nixoci-fs -f -o $o $ref $mnt" >"$log"
	nixoci-fs -f -o "$o" "$ref" "$mnt" >>"$log" 2>&1 &
	pid=$!
	MOUNT_PID[$mnt]=$pid
	MOUNT_LOG[$mnt]=$log
	test_atexit "unmount_store '$mnt' atexit"
	if ! test_wait_for 30 mount_ready "$mnt" "$pid" || ! mountpoint -q "$mnt"; then
		echo "nixoci-fs did not mount $mnt; its log:" >&2
		cat "$log" >&2
		return 1
	fi
	return 0
}

mount_ready() {
	mountpoint -q "$1" && return 0
	pid_alive "$2" || return 0 # exited: stop polling
	return 1
}

# log_errors LOG: print the lines of a daemon log that look like errors
# (nx_log writes "prog: message" without a level, so this goes by words),
# minus the lines matching $MOUNT_LOG_ALLOW.
log_errors() {
	grep -aiE 'error|fail|mismatch|corrupt|refus|abort|assert|sanitizer|leak|segv|panic' "$1" |
		grep -avE '^nixoci-fs -f -o ' |
		grep -avE "${MOUNT_LOG_ALLOW:-^\$^}"
}

# in_mounts DIR: DIR is a mount point in /proc/self/mounts (dead ones too).
in_mounts() {
	awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/self/mounts
}

# unmount_store MNT: fusermount3 -u (then -uz); the daemon must exit 0 within
# 20 s and its log must have no error lines. Idempotent.
unmount_store() {
	local mnt=$1 ctx=${2:-} pid log st bad=
	pid=${MOUNT_PID[$mnt]:-}
	log=${MOUNT_LOG[$mnt]:-}
	[ -n "$pid" ] || return 0
	unset "MOUNT_PID[$mnt]"
	# a daemon that died leaves a dead mount, which mountpoint(1) cannot
	# stat ("transport endpoint is not connected"): /proc/self/mounts has it
	if mountpoint -q "$mnt" || in_mounts "$mnt"; then
		if ! fusermount3 -u "$mnt" 2>>"$log"; then
			bad="fusermount3 -u $mnt failed (busy?), used -uz"
			fusermount3 -uz "$mnt" 2>>"$log"
		fi
	fi
	wait_pid_status "$pid" 20 st
	[ "$st" = 0 ] || bad="${bad:+$bad; }nixoci-fs for $mnt exited with status $st"
	if [ -n "$log" ] && log_errors "$log" >"$log.errors"; then
		bad="${bad:+$bad; }error lines in $log: $(head -n 3 "$log.errors" | tr '\n' '|')"
	fi
	if [ -n "$bad" ]; then
		if [ -n "$ctx" ]; then
			test_cleanup_problem "$bad"
		else
			echo "$bad" >&2
			cat "$log" >&2
		fi
		return 1
	fi
	return 0
}

# -------------------------------------------------------------- nix, hashes

# nar_hash_of PATH: sha256 (base16) of `nix-store --dump PATH`, PATH being
# a store path or anything else (a path under a mount).
nar_hash_of() {
	(
		set -o pipefail
		nix-store --dump "$1" | sha256sum | cut -d' ' -f1
	)
}

# nix_nar_hash PATH: Nix's recorded NarHash in base16.
nix_nar_hash() {
	local h
	h=$(nix-store --query --hash "$1") || return 1
	nix-hash --type sha256 --to-base16 "${h#sha256:}"
}

# check_mount_hashes MNT PATH...: every store path dumped through the mount
# hashes to Nix's NarHash. Prints each mismatch; fails if any.
check_mount_hashes() {
	local mnt=$1 p want got n=0 bad=0
	shift
	for p in "$@"; do
		want=$(nix_nar_hash "$p") || { echo "no nar hash for $p"; bad=$((bad + 1)); continue; }
		got=$(nar_hash_of "$mnt/${p##*/}") || got="dump failed"
		n=$((n + 1))
		if [ "$got" != "$want" ]; then
			echo "hash mismatch for ${p##*/}: mount $got, nix $want"
			bad=$((bad + 1))
		fi
	done
	echo "checked $n paths, $bad mismatches"
	[ $bad -eq 0 ] && [ $n -gt 0 ]
}

# Offline: never ask a binary cache (there is no network), never sandbox
# (the builders are a static busybox that needs nothing).
NIX_BUILD_OPTS=(--no-out-link --option substituters "" --option sandbox false)

# build_small_closure: sets SMALL (the hello root) and SMALL_CLOSURE (all
# paths, one per line). Nix caches the build across runs.
build_small_closure() {
	SMALL=$(nix-build "$TEST_LIB_DIR/small.nix" "${NIX_BUILD_OPTS[@]}") || return 1
	SMALL_CLOSURE=$(nix-store --query --requisites "$SMALL") || return 1
	export SMALL SMALL_CLOSURE
}

# build_big_closure: the CPython closure (>= 100 paths); sets BIG (the
# python3-env root, run $BIG/bin/python3) and BIG_CLOSURE.
build_big_closure() {
	local spec=$TRASH/python-spec.json
	/usr/bin/python3 "$TEST_LIB_DIR/python-spec.py" >"$spec" || return 1
	BIG=$(nix-build "$TEST_LIB_DIR/big.nix" --arg spec "$spec" "${NIX_BUILD_OPTS[@]}" \
		--max-jobs 4) || return 1
	BIG_CLOSURE=$(nix-store --query --requisites "$BIG") || return 1
	export BIG BIG_CLOSURE
}

# run_sandboxed MNT CMD...: run CMD with the mount as the only /nix/store.
run_sandboxed() {
	local mnt=$1
	shift
	bwrap --ro-bind "$mnt" /nix/store --proc /proc --dev /dev \
		--unshare-all --die-with-parent --clearenv "$@"
}

# push_summary_field OUTPUT FIELD: from nixoci push's summary line
# "pushed N paths (U uploaded, S skipped), B bytes uploaded in T.Ts"
# print N, U, S or B.
push_summary_field() {
	echo "$1" | sed -nE 's/.*pushed ([0-9]+) paths? \(([0-9]+) uploaded, ([0-9]+) skipped\), ([0-9]+) bytes? uploaded.*/\1 \2 \3 \4/p' |
		tail -n 1 | {
		read -r n u s b || exit 1
		case $2 in
		paths) echo "$n" ;; uploaded) echo "$u" ;; skipped) echo "$s" ;; bytes) echo "$b" ;;
		esac
	}
}

# stat_of PATH: "mode uid gid mtime type" of PATH (not following symlinks).
stat_of() { stat -c '%a %u %g %Y %F' "$1"; }

# The registry's data directory leaves nothing behind; a failing test run
# keeps the trash with TEST_KEEP=1.

# ------------------------------------------------------- binary caches

# start_http_dir DIR: python3 -m http.server on a free loopback port serving
# DIR (a Nix binary cache made by `nix copy --to file://DIR`); sets HTTP_URL
# and registers its shutdown.
start_http_dir() {
	local dir=$1 port pid try
	for try in 1 2 3; do
		port=$(free_port) || return 1
		/usr/bin/python3 -m http.server "$port" --bind 127.0.0.1 --directory "$dir" \
			>"$TRASH/http-$port.log" 2>&1 &
		pid=$!
		test_atexit "kill $pid; wait $pid || true"
		if test_wait_for 20 http_ready "$port" "$pid" && pid_alive "$pid"; then
			HTTP_URL=http://127.0.0.1:$port
			return 0
		fi
	done
	return 1
}

http_ready() {
	pid_alive "$2" || return 0
	curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1/" 2>/dev/null
}

# start_serve OUT REF [OPTS...]: nixoci serve on a free loopback port (the
# kernel picks it: --listen 127.0.0.1:0), log in OUT.log; sets SERVE_URL
# and SERVE_PID; registers its stop (SIGTERM, exit status 0 expected).
start_serve() {
	local out=$1 ref=$2
	shift 2
	nixoci serve --listen 127.0.0.1:0 "$@" "$ref" >"$out" 2>"$out.log" &
	SERVE_PID=$!
	test_atexit "stop_serve $SERVE_PID"
	if ! test_wait_for 20 eval "grep -q '^serving ' '$out' || ! kill -0 $SERVE_PID 2>/dev/null"; then
		return 1
	fi
	SERVE_URL=$(sed -n 's/^serving .* at //p' "$out")
	[ -n "$SERVE_URL" ] || { cat "$out.log" >&2; return 1; }
}

stop_serve() {
	local st
	pid_alive "$1" || { wait "$1" 2>/dev/null; return 0; }
	kill -TERM "$1"
	wait_pid_status "$1" 20 st
	[ "$st" = 0 ] || test_cleanup_problem "nixoci serve exited with status $st"
}

# ------------------------------------------------------------- podman
# For tests that run containers ($IMAGE names the test image, $BUSYBOX a
# static busybox).

podman_run() {
	podman --runtime /usr/sbin/runc run --rm --network none "$@"
}

# The tiny rootfs: busybox-static and nothing else; /nix/store comes from
# the mount.
make_image() {
	mkdir -p rootfs/bin rootfs/nix/store rootfs/sync rootfs/tmp &&
	cp "$(readlink -f "$BUSYBOX")" rootfs/bin/busybox &&
	ln -s busybox rootfs/bin/sh &&
	tar -C rootfs -c . | podman import - "$IMAGE" >/dev/null
}

# podman 4.3 with runc cannot set the default rlimits in some sandboxes;
# Debian's packages ship no containers.conf, so write one only if absent.
podman_works() {
	podman_run "$IMAGE" /bin/busybox true 2>podman.err && return 0
	if grep -q "rlimit" podman.err && [ ! -e /etc/containers/containers.conf ]; then
		mkdir -p /etc/containers &&
		printf "[containers]\ndefault_ulimits = []\n" >/etc/containers/containers.conf &&
		podman_run "$IMAGE" /bin/busybox true 2>podman.err && return 0
	fi
	cat podman.err >&2
	return 1
}
