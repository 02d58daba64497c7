# bench/link.sh: the network link of the benchmarks (sourced; needs SRC and O).
#
#   bench_link --upstream HOST:PORT --control FILE --port-file FILE [--log FILE] &
#
# runs the delay proxy in place of the caller's subshell (exec), so $! is
# the proxy itself (the bench reads its CPU time from /proc/$!/stat).
# BENCH_PROXY picks it:
#   c   bench/delayproxy (the default): a C TCP proxy that holds each byte
#       from the client DELAY ms (the control file's delay=MS) and passes
#       answers on at once; no bandwidth limit, almost no CPU
#   py  tests/lib/faultproxy.py, the tests' fault proxy, as the bench used
#       until session 8 (it stores each request and answer whole and costs
#       0.1-0.2 CPU-seconds per cold start), for comparison
# Both take the same arguments, read the same control file ("mode=pass
# delay=MS") and write the same request log ("<time> <method> <path>
# range=<r> -> <status> pass bytes=<n>", "<time> begin ... inflight=<n>").
bench_link() {
	case ${BENCH_PROXY:-c} in
	c)
		local bin=$O/bench/delayproxy
		# built here when the build directory predates it
		if [ ! -x "$bin" ] || [ "$SRC/bench/delayproxy.c" -nt "$bin" ]; then
			mkdir -p "$O/bench" &&
				cc -O2 -g -std=gnu11 -D_GNU_SOURCE -o "$bin" "$SRC/bench/delayproxy.c" ||
				{ echo "bench_link: cannot build bench/delayproxy.c" >&2; exit 1; }
		fi
		exec "$bin" "$@" ;;
	py) exec /usr/bin/python3 "$SRC/tests/lib/faultproxy.py" "$@" ;;
	*) echo "BENCH_PROXY=$BENCH_PROXY: say c (bench/delayproxy, the default) or py (tests/lib/faultproxy.py)" >&2
		exit 1 ;;
	esac
}
