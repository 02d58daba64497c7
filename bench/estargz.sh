# shellcheck shell=bash
# bench/estargz.sh: the eStargz column of bench/cold-rtt.sh (issue 13, item
# 6), sourced by it. containerd plus the stargz snapshotter, the same
# workloads on the same closures, from the same registry behind the same
# delay proxy.
#
# The image: the closure cold-rtt.sh pushes (PUSH_ROOTS: by default the
# whole bench closure; with BENCH_COLD_CLOSURE=jdk-python the joint closure
# of the JDK 17 and CPython paths), laid out by bench/oci-layered.py (one layer per
# store path, most referenced first, the rest in a last layer if there are
# more than 100 paths: buildLayeredImage's rule; for the whole closure that
# is bench/run.sh's 100-layer image in $BENCH_WORK/oci, reused) and rebuilt
# layer by layer as eStargz by `nixoci-estargz convert` (estargz.Build with
# ctr-remote's defaults: gzip -9, 4 MiB chunks, no prioritized files).
# Conversion takes minutes (the whole closure: tens of minutes on a loaded
# machine), so it starts in the background before the push and its result
# is kept in $BENCH_WORK/estargz/<closure key>/ and reused while the closure
# is the same.
#
# One cold start: fresh containerd and snapshotter state under $WORK/esgz
# (new daemons: containerd with the snapshotter as a proxy plugin, and
# `nixoci-estargz snapshotter`), page cache dropped, then timed:
#   pull  `nixoci-estargz rpull` through the proxy: manifest, config, and for
#         each layer its footer and TOC, then a FUSE mount per layer (what
#         ctr-remote image rpull does; no layer is downloaded whole)
#   run   `ctr run --snapshotter stargz --runtime io.containerd.runc.v2` of
#         the workload, the host's /usr /lib /lib64 /bin /etc bound read-only
#         into the container, as bwrap binds the host's / for the nixoci and
#         native rows (the JDK is Debian's, linked against the host's libc)
# Requests and bytes are the proxy's, from the start of the pull to the end
# of the run (bytes: the response bodies). Then, not counted in the start,
# the same run once more with the page cache dropped ("again": every byte it
# reads is in the snapshotter's cache by then, so what is left is
# containerd's, runc's and FUSE's own cost, which nixoci's bwrap rows do not
# pay). The daemons are stopped after each start (the snapshotter unmounts
# its layers when it stops).
#
# Needs: go, containerd, ctr, containerd-shim-runc-v2, runc, skopeo and the
# stargz-snapshotter sources (golang-github-containerd-stargz-snapshotter-dev);
# without them, estargz_init says which package to install and the column
# is left out.

ESGZ=${BENCH_ESTARGZ:-1}
ESGZ_BIN=$O/bench/nixoci-estargz
ESGZ_DIR=$WORK/esgz
# containerd's runc shim keeps fifos and task state under /run/containerd and
# puts tasks into cgroup "default" (the namespace): what did not exist before
# the bench is removed again when it ends, if empty (never a host's own).
ESGZ_HOST_RUN=()
for _d in /run/containerd /run/containerd/fifo /run/containerd/runc /run/containerd/runc/default \
	/run/containerd/s /sys/fs/cgroup/*/default /sys/fs/cgroup/default; do
	[ -e "$_d" ] && ESGZ_HOST_RUN+=("$_d")
done
unset _d
ESGZ_REF=
ESGZ_IMG=
ESGZ_CONV_PID=
ESGZ_SN_PID=
ESGZ_CTD_PID=

# estargz_init: 0 and ESGZ=1 when the column can be measured; otherwise one
# line saying what to install, and ESGZ=0.
estargz_init() {
	[ "$ESGZ" = 1 ] || return 0
	local miss="" c
	for c in go:golang-go containerd:containerd ctr:containerd \
		containerd-shim-runc-v2:containerd runc:runc skopeo:skopeo; do
		command -v "${c%%:*}" >/dev/null || case " $miss " in
			*" ${c#*:} "*) ;;
			*) miss="$miss ${c#*:}" ;;
			esac
	done
	[ -d /usr/share/gocode/src/github.com/containerd/stargz-snapshotter/estargz ] ||
		miss="$miss golang-github-containerd-stargz-snapshotter-dev"
	if [ -n "$miss" ]; then
		say "eStargz columns skipped: missing packages, apt-get install -y$miss"
		ESGZ=0
		return 0
	fi
	if ! make -s -C "$SRC/bench" O="$O" estargz >&2; then
		say "eStargz columns skipped: bench/estargz did not build (see above)"
		ESGZ=0
	fi
}

# estargz_convert: the converted image into ESGZ_IMG (once per key);
# 0 or 1, the reason in $ESGZ_IMG/convert.log.
estargz_convert() {
	local dir=$ESGZ_IMG src
	[ -e "$dir/done" ] && return 0
	rm -rf "$dir"
	mkdir -p "$dir"
	if [ "${PUSH_ROOTS[*]}" = "$ROOT" ]; then
		# bench/run.sh's image of the whole closure (same call: returns at
		# once when $BWORK/oci already holds it)
		src=$BWORK/oci
		/usr/bin/python3 "$SRC/bench/oci-layered.py" "$ROOT" "$src" >"$dir/convert.log" 2>&1 || return 1
	else
		src=$dir/gz
		/usr/bin/python3 "$SRC/bench/oci-layered.py" --level 1 --jobs 2 \
			"${PUSH_ROOTS[@]}" "$src" >"$dir/convert.log" 2>&1 || return 1
	fi
	"$ESGZ_BIN" convert "$src" "$dir/esgz" >>"$dir/convert.log" 2>&1 || return 1
	rm -rf "$dir/gz"
	touch "$dir/done"
}

# estargz_convert_bg: starts estargz_convert in the background unless the
# image is cached; estargz_prepare waits for it.
estargz_convert_bg() {
	[ "$ESGZ" = 1 ] || return 0
	local key
	# the closure's paths decide the image, and so do the layering and the converter
	key=$( (nix-store -qR "${PUSH_ROOTS[@]}" | sort; cat "$SRC/bench/estargz/convert.go" "$SRC/bench/oci-layered.py") |
		sha256sum | cut -c1-16)
	ESGZ_IMG=$BWORK/estargz/$key
	[ -e "$ESGZ_IMG/done" ] && return 0
	say "eStargz: converting the closure to an eStargz image in $ESGZ_IMG (minutes, once; in the background)"
	estargz_convert &
	ESGZ_CONV_PID=$!
}

# estargz_conv_stop: ends an unfinished background conversion (cleanup).
estargz_conv_stop() {
	[ -n "$ESGZ_CONV_PID" ] || return 0
	pkill -TERM -P "$ESGZ_CONV_PID" 2>/dev/null || true
	kill -TERM "$ESGZ_CONV_PID" 2>/dev/null || true
	wait "$ESGZ_CONV_PID" 2>/dev/null || true
	ESGZ_CONV_PID=
}

# estargz_prepare: waits for the converted image, pushes it as esgz:cold.
estargz_prepare() {
	[ "$ESGZ" = 1 ] || return 0
	local dir=$ESGZ_IMG
	if [ -n "$ESGZ_CONV_PID" ]; then
		say "eStargz: waiting for the conversion (progress in $dir/convert.log)"
		wait "$ESGZ_CONV_PID" || { ESGZ_CONV_PID=; tail "$dir/convert.log" >&2; die "eStargz conversion failed"; }
		ESGZ_CONV_PID=
	fi
	[ -e "$dir/done" ] || die "eStargz: no converted image in $dir"
	say "eStargz: pushing $dir/esgz as esgz:cold"
	skopeo copy --quiet --dest-tls-verify=false "oci:$dir/esgz:latest" "docker://$REG/esgz:cold" >&2
	ESGZ_REF=$PROXY/esgz:cold
}

# estargz_stop: ends this start's container, daemons and mounts (also on
# failure, from cold-rtt.sh's cleanup).
estargz_stop() {
	local f p m
	[ -d "$ESGZ_DIR" ] || return 0
	if [ -n "$ESGZ_CTD_PID" ] && [ -S "$ESGZ_DIR/ctd.sock" ]; then
		ctr -a "$ESGZ_DIR/ctd.sock" tasks kill -s KILL esgz >/dev/null 2>&1 || true
		ctr -a "$ESGZ_DIR/ctd.sock" containers rm esgz >/dev/null 2>&1 || true
	fi
	# a shim outlives containerd; it wrote its pid beside its bundle
	for f in "$ESGZ_DIR"/ctd/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
		[ -e "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null || true
	done
	for p in "$ESGZ_CTD_PID" "$ESGZ_SN_PID"; do
		[ -n "$p" ] || continue
		kill -TERM "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	ESGZ_CTD_PID=''
	ESGZ_SN_PID=''
	# whatever is still mounted under the state dirs (the snapshotter unmounts
	# its layers when it stops; this is for a snapshotter that was killed)
	awk -v d="$ESGZ_DIR/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r |
		while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
	rm -rf "$ESGZ_DIR"
	estargz_tidy_host
}

# estargz_tidy_host: removes the empty runtime dirs and cgroups that the
# bench's containerd left behind and that were not there before it.
estargz_tidy_host() {
	local d k keep
	for d in /sys/fs/cgroup/*/default/esgz /sys/fs/cgroup/default/esgz /run/containerd/runc/default/esgz \
		/run/containerd/runc/default /run/containerd/runc /run/containerd/fifo \
		/run/containerd/s /sys/fs/cgroup/*/default /sys/fs/cgroup/default /run/containerd; do
		[ -d "$d" ] || continue
		keep=0
		for k in "${ESGZ_HOST_RUN[@]}"; do [ "$k" = "$d" ] && keep=1; done
		[ $keep = 1 ] || rmdir "$d" 2>/dev/null || true
	done
}

estargz_daemons() {
	rm -rf "$ESGZ_DIR"
	mkdir -p "$ESGZ_DIR"
	cat >"$ESGZ_DIR/containerd.toml" <<EOF
version = 2
root = "$ESGZ_DIR/ctd/root"
state = "$ESGZ_DIR/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$ESGZ_DIR/ctd.sock"
[proxy_plugins]
  [proxy_plugins.stargz]
    type = "snapshot"
    address = "$ESGZ_DIR/stargz.sock"
EOF
	"$ESGZ_BIN" snapshotter -root "$ESGZ_DIR/stargz" -address "$ESGZ_DIR/stargz.sock" \
		>>"$WORK/esgz-snapshotter.log" 2>&1 &
	ESGZ_SN_PID=$!
	containerd --config "$ESGZ_DIR/containerd.toml" >>"$WORK/esgz-containerd.log" 2>&1 &
	ESGZ_CTD_PID=$!
	for _ in $(seq 300); do
		[ -S "$ESGZ_DIR/ctd.sock" ] && [ -S "$ESGZ_DIR/stargz.sock" ] && return 0
		kill -0 "$ESGZ_SN_PID" 2>/dev/null || { tail "$WORK/esgz-snapshotter.log" >&2; die "the stargz snapshotter exited"; }
		kill -0 "$ESGZ_CTD_PID" 2>/dev/null || { tail "$WORK/esgz-containerd.log" >&2; die "containerd exited"; }
		sleep 0.05
	done
	die "containerd or the snapshotter did not start (logs in $WORK/esgz-*.log)"
}

estargz_run() { # W
	local d args=()
	for d in /usr /lib /lib64 /bin /etc; do
		[ -e "$d" ] && args+=(--mount "type=bind,src=$d,dst=$d,options=rbind:ro")
	done
	case $1 in
	java) set -- "$JAVA" -version ;;
	python) set -- "$PY" -c 'import json, sqlite3, decimal, asyncio' ;;
	esac
	ctr -a "$ESGZ_DIR/ctd.sock" run --rm --snapshotter stargz \
		--runtime io.containerd.runc.v2 "${args[@]}" "$ESGZ_REF" esgz "$@" \
		>>"$WORK/esgz-run.log" 2>&1
}

# estargz_start W DELAY RUN: one cold start, a line in samples.tsv
# (seconds = pull + run) and one in esgz.tsv (pull, run, run again).
estargz_start() {
	local w=$1 d=$2 r=$3 l0 t0 t1 t2 t3 t4 q b
	estargz_daemons
	drop
	l0=$(wc -l <"$WORK/plog")
	t0=$(now_ns)
	"$ESGZ_BIN" rpull -address "$ESGZ_DIR/ctd.sock" "$ESGZ_REF" >>"$WORK/esgz-run.log" 2>&1 ||
		{ tail "$WORK/esgz-run.log" >&2; die "eStargz rpull failed"; }
	t1=$(now_ns)
	estargz_run "$w" || { tail "$WORK/esgz-run.log" >&2; die "$w failed in the eStargz container"; }
	t2=$(now_ns)
	read -r q b < <(tail -n "+$((l0 + 1))" "$WORK/plog" | awk '/ -> / {
		n++; for (i = 1; i <= NF; i++) if ($i ~ /^bytes=/) s += substr($i, 7) }
		END { print n + 0, s + 0 }')
	drop
	t3=$(now_ns)
	estargz_run "$w" || { tail "$WORK/esgz-run.log" >&2; die "$w failed in the eStargz container (again)"; }
	t4=$(now_ns)
	estargz_stop
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' estargz "$w" "$d" "$r" "$(secs "$t0" "$t2")" \
		"$q" "$b" >>"$WORK/samples.tsv"
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$d" "$r" "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")" \
		"$(secs "$t3" "$t4")" >>"$WORK/esgz.tsv"
	say "estargz $w ${d}ms run $r: $(secs "$t0" "$t2") s (pull $(secs "$t0" "$t1") s, run $(secs "$t1" "$t2") s), $q requests, $b bytes; run again $(secs "$t3" "$t4") s"
}
