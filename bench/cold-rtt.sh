#!/bin/bash
# bench/cold-rtt.sh [O]: cold starts of `java -version` and the CPython
# imports over a link with added round-trip time, with and without a
# startup profile (docs/format.md §5.2), against the native store.
#
# The closure is the one `make bench` builds (bench/closure, kept in
# $BENCH_WORK/closure; built here the same way when it is missing). The
# whole closure is pushed under the tag `cold` (1,544 paths: one closure
# index and metadata blob for all of them, which `-o closure=cold` covers)
# and eStargz gets the whole closure too, as the 100-layer image bench/run.sh
# pulls (bench/estargz.sh). BENCH_COLD_CLOSURE=jdk-python pushes only the
# closures of its JDK 17 and CPython paths (63 paths, 63 layers), as before.
# The delay comes from the bench's link, bench/delayproxy (bench/link.sh:
# delay=MS holds every request MS milliseconds before forwarding it: that
# much round-trip time per request, no bandwidth limit, almost no CPU;
# BENCH_PROXY=py uses tests/lib/faultproxy.py instead, as before session 8).
#
# One cold start = page cache dropped, a fresh `-o closure=cold` mount over
# an empty cache (mounting is not timed, as in bench/run.sh), then at once
# the program in bwrap with the mount at /nix/store. "profile" mounts add
# `-o profile=auto`: the profile was recorded once per workload (a mount with
# profile_record=, the program, unmount) and pushed with `nixoci profile
# push`; its prefetch starts at mount, so the timed start overlaps it. Each
# start reports its time, the registry requests made from the start of the
# program to its end (the proxy's log), and the bytes the daemon fetched
# from the mount on (nixoci stats: for a profile mount that includes the
# prefetch). Medians of BENCH_RUNS (3). Output: Markdown tables on stdout,
# every sample on stderr and in $WORK/samples.tsv.
#
# The eStargz columns (bench/estargz.sh, sourced below): containerd and the
# stargz snapshotter pulling the same closures as an eStargz image from the
# same registry through the same proxy, then running the same workload;
# timed from the pull's start to the workload's end. The second table sets
# that against nixoci's mount (launch of nixoci-fs until the mount is up:
# the closure's tag lookup; its metadata blob is fetched while the program
# already waits) plus start.
#
# Knobs: BENCH_RUNS=3, BENCH_DELAYS="0 10 40", BENCH_HANDSHAKE=0 (N: each new
# connection pays N more round trips, as TCP and TLS set-up would),
# BENCH_PROFILE=1 (0: skip the
# profile rows), BENCH_ESTARGZ=1 (0: skip the eStargz columns),
# BENCH_COLD_CLOSURE=full (jdk-python: only the JDK's and CPython's closures),
# BENCH_WORK=/var/tmp/nixoci-bench, BENCH_PLAIN=1 (0: skip the rows without a
# profile), BENCH_PROFILE_OLD=DIR (a build directory of another version, e.g.
# the code before a change: its nixoci-fs runs the same profile starts,
# alternating start by start with this one, as method "profile-old", and a
# second table compares the two). BENCH_PLAIN_OLD=DIR: the same for the
# starts without a profile (method "nixoci-old"), with requests and bytes,
# and a table of the mount time and the CPU-seconds of mount + start of
# nixoci-fs, the registry and the proxy (/proc/PID/stat). BENCH_LINK_OLD=c|py:
# the "nixoci-old" starts go through a second link of that kind (bench/link.sh)
# beside the first (BENCH_PROXY, default c), with BENCH_PLAIN_OLD's nixoci-fs
# or, without it, this build's: old and new proxy compared start by start.
set -euo pipefail
export LC_ALL=C

SRC=$(cd "$(dirname "$0")/.." && pwd)
O=${1:-build}
case $O in /*) ;; *) O=$SRC/$O ;; esac
export PATH=$O/bin:$PATH:/usr/sbin:/sbin
export NIX_CONFIG="extra-experimental-features = nix-command"
RUNS=${BENCH_RUNS:-3}
# round trips of connection set-up the link adds to each new connection
# (bench/delayproxy.c --handshake: 1 TCP, 2 TCP + TLS 1.3); 0 as before
HANDSHAKE=${BENCH_HANDSHAKE:-0}
DELAYS=${BENCH_DELAYS:-0 10 40}
PROFILE=${BENCH_PROFILE:-1}
PLAIN=${BENCH_PLAIN:-1}
OLD_O=${BENCH_PROFILE_OLD:-}
if [ -n "$OLD_O" ]; then
	OLD_O=$(cd "$OLD_O" && pwd) || exit 1
	[ -x "$OLD_O/bin/nixoci-fs" ] || { echo "BENCH_PROFILE_OLD=$OLD_O: no bin/nixoci-fs" >&2; exit 1; }
fi
PLAIN_OLD=${BENCH_PLAIN_OLD:-}
if [ -n "$PLAIN_OLD" ]; then
	PLAIN_OLD=$(cd "$PLAIN_OLD" && pwd) || exit 1
	[ -x "$PLAIN_OLD/bin/nixoci-fs" ] || { echo "BENCH_PLAIN_OLD=$PLAIN_OLD: no bin/nixoci-fs" >&2; exit 1; }
fi
LINK_OLD=${BENCH_LINK_OLD:-}
case $LINK_OLD in '' | c | py) ;; *) echo "BENCH_LINK_OLD=$LINK_OLD: say c or py" >&2; exit 1 ;; esac
OLD_FS=${PLAIN_OLD:+$PLAIN_OLD/bin/nixoci-fs}
OLD_FS=${OLD_FS:-nixoci-fs}
# the labels of the two columns of the BENCH_PLAIN_OLD tables
NEW_LABEL=$O OLD_LABEL=${PLAIN_OLD:-$O}
if [ -n "$LINK_OLD" ]; then
	NEW_LABEL="$O, ${BENCH_PROXY:-c} link" OLD_LABEL="$OLD_LABEL, $LINK_OLD link"
fi
FS_BIN=nixoci-fs
SCOPE=${BENCH_COLD_CLOSURE:-full}
BWORK=${BENCH_WORK:-/var/tmp/nixoci-bench}
WORK=$(mktemp -d /tmp/nixoci-cold-rtt.XXXXXX)
PIDS=()
MNT=$WORK/mnt
FS_PID=
cleanup() {
	! declare -F estargz_stop >/dev/null || estargz_stop
	! declare -F estargz_conv_stop >/dev/null || estargz_conv_stop
	if mountpoint -q "$MNT" 2>/dev/null; then fusermount3 -u "$MNT" || fusermount3 -uz "$MNT"; fi
	[ -z "$FS_PID" ] || wait "$FS_PID" 2>/dev/null || true
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
say() { echo "[cold-rtt] $*" >&2; }
die() { say "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (drop_caches, FUSE, bwrap)"
# Dropped twice, 3 s apart, as in bench/session.sh: on this VM one drop
# right after a read leaves part of a file readable at 2+ GB/s, so a single
# drop made "cold" mean different things for different runs.
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; sleep 3; echo 3 >/proc/sys/vm/drop_caches; }
free_port() {
	/usr/bin/python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
now_ns() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
# shellcheck source=bench/estargz.sh
. "$SRC/bench/estargz.sh"
# shellcheck source=bench/link.sh
. "$SRC/bench/link.sh"

if [ ! -e "$BWORK/closure" ]; then
	say "building bench/closure (as bench/run.sh does; long the first time)"
	mkdir -p "$BWORK"
	/usr/bin/python3 "$SRC/bench/closure/spec.py" >"$WORK/spec.json"
	nix-build "$SRC/bench/closure/closure.nix" --arg spec "$WORK/spec.json" \
		--option substituters "" --option sandbox false --max-jobs 8 \
		--out-link "$BWORK/closure" >&2
fi
ROOT=$(readlink -f "$BWORK/closure")
JAVA=$(readlink "$ROOT/bin/java")
PY=$(readlink "$ROOT/bin/python3")
JPATH=$(echo "$JAVA" | cut -d/ -f1-4)
PPATH=$(echo "$PY" | cut -d/ -f1-4)
case $SCOPE in
full) PUSH_ROOTS=("$ROOT") ;;
jdk-python) PUSH_ROOTS=("$JPATH" "$PPATH") ;;
*) die "BENCH_COLD_CLOSURE=$SCOPE: say full (the default) or jdk-python" ;;
esac
estargz_init
# the image conversion takes minutes for the whole closure: start it now,
# beside the registry and the push (estargz_prepare waits for it)
estargz_convert_bg

port=$(free_port)
mkdir -p "$WORK/reg" "$MNT"
# blob descriptors cached in memory, as in the config.yml Debian ships with
# docker-registry (distribution's default): the same for every method compared
cat >"$WORK/reg/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $WORK/reg/storage
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$WORK/reg/config.yml" >"$WORK/reg/log" 2>&1 &
PIDS+=($!)
REG_PID=$!
REG=127.0.0.1:$port
for _ in $(seq 100); do curl -fsS -o /dev/null "http://$REG/v2/" 2>/dev/null && break; sleep 0.1; done
echo "mode=pass" >"$WORK/ctl"
bench_link --upstream "$REG" --control "$WORK/ctl" \
	--port-file "$WORK/pport" --log "$WORK/plog" >"$WORK/pstderr" 2>&1 &
PIDS+=($!)
PROXY_PID=$!
for _ in $(seq 100); do [ -s "$WORK/pport" ] && break; sleep 0.1; done
PROXY=127.0.0.1:$(cat "$WORK/pport")
# the link the next start goes through
CUR_PROXY=$PROXY CUR_PID=$PROXY_PID CUR_LOG=$WORK/plog
if [ -n "$LINK_OLD" ]; then
	(BENCH_PROXY=$LINK_OLD bench_link --upstream "$REG" --control "$WORK/ctl" \
		--port-file "$WORK/pport2" --log "$WORK/plog2") >"$WORK/pstderr2" 2>&1 &
	PIDS+=($!)
	PROXY2_PID=$!
	for _ in $(seq 100); do [ -s "$WORK/pport2" ] && break; sleep 0.1; done
	PROXY2=127.0.0.1:$(cat "$WORK/pport2")
fi
say "pushing the closure of ${PUSH_ROOTS[*]} ($(nix-store -qR "${PUSH_ROOTS[@]}" | wc -l) paths)"
nixoci push --jobs 4 --tag cold "$REG/store" "${PUSH_ROOTS[@]}" >&2
estargz_prepare

run_workload() { # STORE W
	local s=$1
	case $2 in
	java) bwrap --bind / / --ro-bind "$s" /nix/store --dev /dev --proc /proc \
		--die-with-parent -- "$JAVA" -version ;;
	python) bwrap --bind / / --ro-bind "$s" /nix/store --dev /dev --proc /proc \
		--die-with-parent -- "$PY" -c 'import json, sqlite3, decimal, asyncio' ;;
	esac >/dev/null 2>&1
}
MOUNT_S=0 MOUNT_Q=0
fs_mount() { # EXTRA_OPTS; sets MOUNT_S (seconds) and MOUNT_Q (requests)
	local t0 q0
	rm -rf "$WORK/cache"
	q0=$(requests)
	t0=$(now_ns)
	"$FS_BIN" -f -o "cache=$WORK/cache,closure=cold${1:+,$1}" "$CUR_PROXY/store" "$MNT" \
		>>"$WORK/fs.log" 2>&1 &
	FS_PID=$!
	until mountpoint -q "$MNT"; do
		kill -0 "$FS_PID" 2>/dev/null || { tail "$WORK/fs.log" >&2; die "nixoci-fs exited"; }
		sleep 0.005
	done
	MOUNT_S=$(secs "$t0" "$(now_ns)")
	MOUNT_Q=$(($(requests) - q0))
}
fs_umount() {
	fusermount3 -u "$MNT"
	wait "$FS_PID" || die "nixoci-fs exited with status $?"
	FS_PID=
}
fs_stat() { nixoci stats "$MNT" | awk -v k="$1" '$1 == k { print $2 }'; }
requests() { grep -c -- ' -> ' "$CUR_LOG" 2>/dev/null || true; }

printf 'method\tworkload\tdelay_ms\trun\tseconds\trequests\tbytes\n' >"$WORK/samples.tsv"
: >"$WORK/mount.tsv"
: >"$WORK/cpu.tsv"
# cpu_s PID: user + system CPU-seconds of PID so far
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }
: >"$WORK/esgz.tsv"
# one_start METHOD W DELAY RUN [OPTS]
one_start() {
	local m=$1 w=$2 d=$3 r=$4 t0 t1 q0 q1 b=0 c0 c1
	if [ "$m" = native ]; then
		drop
		t0=$(now_ns)
		run_workload /nix/store "$w" || die "$w failed on the native store"
		t1=$(now_ns)
		q0=0 q1=0
	else
		# dropped before the mount, not after it: the drop takes 6 s,
		# and dropping after the mount let a profile's prefetch (and the
		# closure's metadata) finish before the timed start, so "with
		# profile" measured an already fetched store. A fresh mount has
		# nothing in the page cache either way.
		drop
		c0="$(cpu_s "$REG_PID") $(cpu_s "$CUR_PID")"
		fs_mount "${5:-}"
		q0=$(requests)
		t0=$(now_ns)
		run_workload "$MNT" "$w" || die "$w failed on the mount ($m)"
		t1=$(now_ns)
		q1=$(requests)
		b=$(fs_stat bytes_fetched)
		# CPU-seconds of the mount and the start: daemon (its whole
		# life so far), registry and proxy (since before the mount)
		c1="$(cpu_s "$FS_PID") $(cpu_s "$REG_PID") $(cpu_s "$CUR_PID")"
		fs_umount
		local c
		read -r -a c <<<"$c0 $c1"
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$w" "$d" "$r" "${c[2]}" \
			"$(awk -v a="${c[0]}" -v b="${c[3]}" 'BEGIN { printf "%.2f", b - a }')" \
			"$(awk -v a="${c[1]}" -v b="${c[4]}" 'BEGIN { printf "%.2f", b - a }')" >>"$WORK/cpu.tsv"
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$w" "$d" "$r" "$MOUNT_S" \
			"$MOUNT_Q" "$(awk -v a="$MOUNT_S" -v b="$(secs "$t0" "$t1")" 'BEGIN { printf "%.3f", a + b }')" \
			>>"$WORK/mount.tsv"
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$w" "$d" "$r" "$(secs "$t0" "$t1")" \
		"$((q1 - q0))" "$b" >>"$WORK/samples.tsv"
	say "$m $w ${d}ms run $r: $(secs "$t0" "$t1") s, $((q1 - q0)) requests, $b bytes"
}

if [ "$PROFILE" = 1 ]; then
	for w in java python; do
		say "recording the $w profile"
		fs_mount "profile_record=$WORK/$w.profile"
		run_workload "$MNT" "$w" || die "$w failed while recording"
		fs_umount
		nixoci profile push --name "$w" "$REG/store" cold "$WORK/$w.profile" >&2
	done
fi

for d in $DELAYS; do
	if [ "$d" = 0 ]; then echo "mode=pass" >"$WORK/ctl"; else echo "mode=pass delay=$d handshake=$HANDSHAKE" >"$WORK/ctl"; fi
	for r in $(seq "$RUNS"); do
		for w in java python; do
			[ "$PLAIN" = 1 ] && one_start nixoci "$w" "$d" "$r"
			if [ "$PLAIN" = 1 ] && [ -n "$PLAIN_OLD$LINK_OLD" ]; then
				FS_BIN=$OLD_FS
				[ -z "$LINK_OLD" ] || CUR_PROXY=$PROXY2 CUR_PID=$PROXY2_PID CUR_LOG=$WORK/plog2
				one_start nixoci-old "$w" "$d" "$r"
				FS_BIN=nixoci-fs CUR_PROXY=$PROXY CUR_PID=$PROXY_PID CUR_LOG=$WORK/plog
			fi
			[ "$PROFILE" = 1 ] && one_start profile "$w" "$d" "$r" "profile=$w"
			if [ "$PROFILE" = 1 ] && [ -n "$OLD_O" ]; then
				FS_BIN=$OLD_O/bin/nixoci-fs
				one_start profile-old "$w" "$d" "$r" "profile=$w"
				FS_BIN=nixoci-fs
			fi
			[ "$d" = 0 ] && one_start native "$w" 0 "$r"
			[ "$ESGZ" = 1 ] && estargz_start "$w" "$d" "$r"
		done
	done
done
cat "$WORK/samples.tsv" >&2

col() { # METHOD W DELAY FIELD [FILE]
	awk -F'\t' -v m="$1" -v w="$2" -v d="$3" -v f="$4" \
		'$1 == m && $2 == w && $3 == d { print $f }' "${5:-$WORK/samples.tsv}" | median
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
e1="" e2=""
if [ "$ESGZ" = 1 ]; then
	e1=" eStargz cold (pull + run) | requests | fetched |"
	e2="---|---|---|"
fi
echo "| workload | added RTT | nixoci-fs cold | requests | fetched | with profile | requests | fetched | native cold |$e1"
echo "|---|---|---|---|---|---|---|---|---|$e2"
for w in java python; do
	for d in $DELAYS; do
		p="—| — | —"
		[ "$PROFILE" = 1 ] && p="$(col profile $w $d 5) s | $(col profile $w $d 6) | $(mib "$(col profile $w $d 7)")"
		e=""
		[ "$ESGZ" = 1 ] && e=" $(col estargz $w $d 5) s | $(col estargz $w $d 6) | $(mib "$(col estargz $w $d 7)") |"
		echo "| $w | $d ms | $(col nixoci $w $d 5) s | $(col nixoci $w $d 6) | $(mib "$(col nixoci $w $d 7)") | $p | $(col native $w 0 5) s |$e"
	done
done
if [ "$ESGZ" = 1 ]; then
	# eStargz against nixoci with its mount counted too (esgz.tsv: W D R PULL
	# RUN AGAIN; mount.tsv: METHOD W D R MOUNT MOUNT_REQUESTS MOUNT+START)
	echo
	echo "| workload | added RTT | nixoci-fs mount | mount + start | eStargz pull | run | pull + run | eStargz ÷ nixoci (mount + start) | bytes eStargz ÷ nixoci | eStargz run again (all fetched) |"
	echo "|---|---|---|---|---|---|---|---|---|---|"
	for w in java python; do
		for d in $DELAYS; do
			ms=$(col nixoci $w $d 7 "$WORK/mount.tsv")
			es=$(col estargz $w $d 5)
			echo "| $w | $d ms | $(col nixoci $w $d 5 "$WORK/mount.tsv") s | $ms s |" \
				"$(awk -F'\t' -v w=$w -v d=$d '$1 == w && $2 == d { print $4 }' "$WORK/esgz.tsv" | median) s |" \
				"$(awk -F'\t' -v w=$w -v d=$d '$1 == w && $2 == d { print $5 }' "$WORK/esgz.tsv" | median) s |" \
				"$es s | $(awk -v a="$es" -v b="$ms" 'BEGIN { printf "%.1f×", a / b }') |" \
				"$(awk -v a="$(col estargz $w $d 7)" -v b="$(col nixoci $w $d 7)" 'BEGIN { printf "%.2f", a / b }') |" \
				"$(awk -F'\t' -v w=$w -v d=$d '$1 == w && $2 == d { print $6 }' "$WORK/esgz.tsv" | median) s |"
		done
	done
fi
if [ -n "$OLD_O" ]; then
	echo
	echo "| workload | added RTT | profile, $OLD_O | requests | profile, $O | requests | native cold |"
	echo "|---|---|---|---|---|---|---|"
	for w in java python; do
		for d in $DELAYS; do
			echo "| $w | $d ms | $(col profile-old $w $d 5) s [$(awk -F'\t' -v w=$w -v d=$d '$1 == "profile-old" && $2 == w && $3 == d { printf "%s ", $5 }' "$WORK/samples.tsv")] | $(col profile-old $w $d 6) |" \
				"$(col profile $w $d 5) s [$(awk -F'\t' -v w=$w -v d=$d '$1 == "profile" && $2 == w && $3 == d { printf "%s ", $5 }' "$WORK/samples.tsv")] | $(col profile $w $d 6) | $(col native $w 0 5) s |"
		done
	done
fi
if [ -n "$PLAIN_OLD$LINK_OLD" ]; then
	# mount (launch until mountpoint: the closure's metadata is read by
	# then) and CPU-seconds of mount + start, medians
	echo
	echo "| workload | added RTT | build | mount | CPU-s nixoci-fs | CPU-s registry | CPU-s proxy |"
	echo "|---|---|---|---|---|---|---|"
	for w in java python; do
		for d in $DELAYS; do
			for m in nixoci-old nixoci; do
				echo "| $w | $d ms | $([ $m = nixoci ] && echo "$NEW_LABEL" || echo "$OLD_LABEL") |" \
					"$(col $m $w $d 5 "$WORK/mount.tsv") s | $(col $m $w $d 5 "$WORK/cpu.tsv") |" \
					"$(col $m $w $d 6 "$WORK/cpu.tsv") | $(col $m $w $d 7 "$WORK/cpu.tsv") |"
			done
		done
	done
	echo
	echo "| workload | added RTT | no profile, $OLD_LABEL | requests | fetched | no profile, $NEW_LABEL | requests | fetched | native cold |"
	echo "|---|---|---|---|---|---|---|---|---|"
	for w in java python; do
		for d in $DELAYS; do
			echo "| $w | $d ms | $(col nixoci-old $w $d 5) s [$(awk -F'\t' -v w=$w -v d=$d '$1 == "nixoci-old" && $2 == w && $3 == d { printf "%s ", $5 }' "$WORK/samples.tsv")] | $(col nixoci-old $w $d 6) | $(mib "$(col nixoci-old $w $d 7)") |" \
				"$(col nixoci $w $d 5) s [$(awk -F'\t' -v w=$w -v d=$d '$1 == "nixoci" && $2 == w && $3 == d { printf "%s ", $5 }' "$WORK/samples.tsv")] | $(col nixoci $w $d 6) | $(mib "$(col nixoci $w $d 7)") | $(col native $w 0 5) s |"
		done
	done
fi
echo
echo "closure: $SCOPE ($(nix-store -qR "${PUSH_ROOTS[@]}" | wc -l) paths); medians of $RUNS; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
