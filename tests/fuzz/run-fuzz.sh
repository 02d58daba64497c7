#!/bin/bash
# tests/fuzz/run-fuzz.sh TARGET...: build the libFuzzer targets with clang
# (-fsanitize=fuzzer,address,undefined, objects in build-fuzz-san/) and run
# each for $FUZZ_SECONDS seconds (default 60) from its seed corpus
# tests/fuzz/corpus/<t>/. New interesting inputs go to build-fuzz-san/corpus/<t>
# (not committed); crashers to tests/fuzz/crashers/<t>/, which make check
# replays. Exit status: non-zero when any target found a crash.
set -u
cd "$(dirname "$0")/../.." || exit 1
SECS=${FUZZ_SECONDS:-60}
FCC=${FUZZ_CC:-clang}
O=build-fuzz-san
command -v "$FCC" >/dev/null || { echo "run-fuzz: $FCC not found (apt-get install clang)" >&2; exit 1; }

# Everything the targets link, instrumented for coverage (fuzzer-no-link);
# the sanitizers abort on the first report so libFuzzer keeps the input.
objs=()
for t in "$@"; do objs+=("$O/tests/fuzz/fuzz-$t.o"); done
CFLAGS="-O1 -g" make --no-print-directory -s CC="$FCC" O=$O SANITIZE=fuzzer-no-link,address,undefined \
	"$O/libcommon.a" "$O/tests/fuzz/fuzz-common.o" \
	"${objs[@]}" || exit 1
LIBS="$(pkg-config --libs fuse3 libcurl libzstd libcrypto jansson) -llmdb -lpthread"

export NIXOCI_FUZZ_QUIET=1
export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
rc=0
for t in "$@"; do
	bin=$O/fuzz-$t
	fetch=
	if [ "$t" = wwwauth ] || [ "$t" = multipart ]; then
		# only these targets need fetch/ (its private parsers)
		CFLAGS="-O1 -g" make --no-print-directory -s CC="$FCC" O=$O \
			SANITIZE=fuzzer-no-link,address,undefined "$O/libfetch.a" || { rc=1; continue; }
		fetch=$O/libfetch.a
	fi
	if [ "$t" = elf ] || [ "$t" = pyc ]; then
		# cache/'s private parsers (they link the cache library)
		CFLAGS="-O1 -g" make --no-print-directory -s CC="$FCC" O=$O \
			SANITIZE=fuzzer-no-link,address,undefined "$O/libcache.a" || { rc=1; continue; }
		fetch=$O/libcache.a
	fi
	# shellcheck disable=SC2086
	"$FCC" -fsanitize=fuzzer,address,undefined -o "$bin" "$O/tests/fuzz/fuzz-$t.o" \
		"$O/tests/fuzz/fuzz-common.o" $fetch "$O/libcommon.a" $LIBS || exit 1
	mkdir -p "$O/corpus/$t" "tests/fuzz/crashers/$t"
	echo "fuzz $t for ${SECS}s"
	if ! "$bin" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
		-print_final_stats=1 -artifact_prefix="tests/fuzz/crashers/$t/" \
		"$O/corpus/$t" "tests/fuzz/corpus/$t" >"$O/fuzz-$t.log" 2>&1; then
		echo "fuzz $t: FOUND A PROBLEM (input kept in tests/fuzz/crashers/$t/):"
		grep -aE 'ERROR|SUMMARY|runtime error|==[0-9]+==' "$O/fuzz-$t.log" | head -n 10
		rc=1
	fi
	grep -aE '^stat::number_of_executed_units|^stat::new_units_added' "$O/fuzz-$t.log" |
		sed "s/^/  $t /"
	rmdir "tests/fuzz/crashers/$t" 2>/dev/null
done
exit $rc
