# nixoci: plain Makefile. Knobs: SANITIZE=address,undefined  DEVELOPER=1 (-Werror)
#                              PREFIX=/usr/local  DESTDIR=  CC=gcc  O=build dir
# make: the tools; make tests: unit tests and fuzz replay drivers too;
# make check: both, then the whole suite; make install / make uninstall.
CC      ?= gcc
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
MANDIR  ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
O       ?= build
PKGS    := fuse3 libcurl libzstd libcrypto jansson
# only the nixoci CLI links these: import decompresses (libbz2 has no .pc),
# serve is an HTTP server
CLI_PKGS := liblzma libmicrohttpd

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) $(CLI_PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -llmdb -lpthread
CLI_LIBS   := $(shell pkg-config --libs $(CLI_PKGS) 2>/dev/null) -lbz2

WARN := -Wall -Wextra -Wformat=2 -Wshadow -Wpointer-arith -Wcast-align \
        -Wwrite-strings -Wstrict-prototypes -Wmissing-prototypes \
        -Wold-style-definition -Wundef -Wvla -Wnull-dereference \
        -Wimplicit-fallthrough -Wno-unused-parameter
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 $(WARN) $(PKG_CFLAGS) -I.
ifdef DEVELOPER
CFLAGS  += -Werror
endif
ifdef SANITIZE
CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SANITIZE)
O       := $(O)-san
endif

COMMON_SRC := $(wildcard common/*.c)
FETCH_SRC  := $(wildcard fetch/*.c)
CACHE_SRC  := $(wildcard cache/*.c)
FS_SRC     := $(wildcard fs/*.c)
TOOLS_SRC  := $(wildcard tools/*.c)
UNIT_SRC   := $(wildcard tests/unit/*.c)

obj = $(patsubst %.c,$(O)/%.o,$(1))
COMMON_A  := $(O)/libcommon.a
FETCH_A   := $(O)/libfetch.a
CACHE_A   := $(O)/libcache.a
# fs/ minus main(): the unit tests of fs/ link it
FS_A      := $(O)/libfs.a
HEADERS   := $(wildcard */*.h)

BINS      := $(O)/bin/nixoci $(O)/bin/nixoci-fs
# the benchmarks' delay link (bench/cold-rtt.sh, tests/integ/t0315-delay-link.t)
DELAYPROXY := $(O)/bench/delayproxy
UNIT_BINS := $(patsubst tests/unit/%.c,$(O)/tests/unit/%,$(UNIT_SRC))
# Fuzz targets (tests/fuzz/fuzz-<t>.c): libFuzzer builds for make fuzz, and
# plain replay drivers that make check runs over the corpus and crashers.
FUZZ_TARGETS := $(filter-out common,$(patsubst tests/fuzz/fuzz-%.c,%,$(wildcard tests/fuzz/fuzz-*.c)))
FUZZ_REPLAY  := $(patsubst %,$(O)/tests/fuzz/replay-%,$(FUZZ_TARGETS))
FUZZ_SECONDS ?= 60
# The tests' LMDB and syscall fault injector (LD_PRELOAD; tests/lib/faultinject.c).
# Built without sanitizers in both trees: it is preloaded into either.
FAULT_SO     := $(O)/tests/lib/faultinject.so

.SECONDARY:
.PHONY: all tests deps check unit integ demo install uninstall clean bench bench-import bench-cold bench-push bench-session bench-walk bench-warm-open fuzz analyze
all: $(BINS) $(DELAYPROXY)
	@ln -sfn $(O)/bin bin

tests: all $(UNIT_BINS) $(FUZZ_REPLAY) $(FAULT_SO)

$(O)/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS) -c -o $@ $<

$(COMMON_A): $(call obj,$(COMMON_SRC))
$(FETCH_A): $(call obj,$(FETCH_SRC))
$(CACHE_A): $(call obj,$(CACHE_SRC))
$(FS_A): $(call obj,$(filter-out fs/main.c,$(FS_SRC)))
$(O)/lib%.a:
	@rm -f $@
	@ar rcs $@ $^

$(FAULT_SO): tests/lib/faultinject.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	@$(CC) -O2 -g -std=gnu11 -D_GNU_SOURCE $(WARN) -fPIC -shared -o $@ $< -ldl

$(DELAYPROXY): bench/delayproxy.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	@$(CC) $(filter-out $(PKG_CFLAGS),$(CFLAGS)) $(LDFLAGS) -o $@ $<

# Link order: dependants first (tools/fs -> cache, fetch -> common).
$(O)/bin/nixoci: $(call obj,$(TOOLS_SRC)) $(CACHE_A) $(FETCH_A) $(COMMON_A)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(CLI_LIBS) $(PKG_LIBS)

$(O)/bin/nixoci-fs: $(O)/fs/main.o $(FS_A) $(CACHE_A) $(FETCH_A) $(COMMON_A)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

# Unit tests: tests/unit/<folder>-<name>.c links that folder's library and
# the ones below it, so a test of common/ builds while cache/ is broken.
# CLI_LIBS: common/decompress.c's liblzma and libbz2 (pulled in only where used).
$(O)/tests/unit/common-%: $(O)/tests/unit/common-%.o $(COMMON_A)
	@$(CC) $(LDFLAGS) -o $@ $^ $(CLI_LIBS) $(PKG_LIBS)
$(O)/tests/unit/fetch-%: $(O)/tests/unit/fetch-%.o $(FETCH_A) $(COMMON_A)
	@$(CC) $(LDFLAGS) -o $@ $^ $(CLI_LIBS) $(PKG_LIBS)
$(O)/tests/unit/cache-%: $(O)/tests/unit/cache-%.o $(CACHE_A) $(FETCH_A) $(COMMON_A)
	@$(CC) $(LDFLAGS) -o $@ $^ $(CLI_LIBS) $(PKG_LIBS)
$(O)/tests/unit/fs-%: $(O)/tests/unit/fs-%.o $(FS_A) $(CACHE_A) $(FETCH_A) $(COMMON_A)
	@$(CC) $(LDFLAGS) -o $@ $^ $(CLI_LIBS) $(PKG_LIBS)

$(O)/tests/fuzz/replay-%: $(O)/tests/fuzz/fuzz-%.o $(O)/tests/fuzz/replay.o \
			  $(O)/tests/fuzz/fuzz-common.o $(COMMON_A)
	@$(CC) $(LDFLAGS) -o $@ $^ $(CLI_LIBS) $(PKG_LIBS)
$(O)/tests/fuzz/replay-wwwauth: $(O)/tests/fuzz/fuzz-wwwauth.o $(O)/tests/fuzz/replay.o \
			  $(O)/tests/fuzz/fuzz-common.o $(FETCH_A) $(COMMON_A)
	@$(CC) $(LDFLAGS) -o $@ $^ $(CLI_LIBS) $(PKG_LIBS)
$(O)/tests/fuzz/replay-elf: $(O)/tests/fuzz/fuzz-elf.o $(O)/tests/fuzz/replay.o \
			  $(O)/tests/fuzz/fuzz-common.o $(CACHE_A) $(COMMON_A)
	@$(CC) $(LDFLAGS) -o $@ $^ $(CLI_LIBS) $(PKG_LIBS)
$(O)/tests/fuzz/replay-pyc: $(O)/tests/fuzz/fuzz-pyc.o $(O)/tests/fuzz/replay.o \
			  $(O)/tests/fuzz/fuzz-common.o $(CACHE_A) $(COMMON_A)
	@$(CC) $(LDFLAGS) -o $@ $^ $(CLI_LIBS) $(PKG_LIBS)
$(O)/tests/fuzz/replay-multipart: $(O)/tests/fuzz/fuzz-multipart.o $(O)/tests/fuzz/replay.o \
			  $(O)/tests/fuzz/fuzz-common.o $(FETCH_A) $(COMMON_A)
	@$(CC) $(LDFLAGS) -o $@ $^ $(CLI_LIBS) $(PKG_LIBS)

# make analyze: gcc's static analyzer (-fanalyzer) over every source that
# ships and the fuzz drivers, every warning an error. One stamp per file, so
# only what changed is analyzed again (make -j2 analyze: about 30 s from
# scratch on 2 cores). A finding that is the analyzer's mistake is explained
# where it is silenced (NX_ANALYZER_ARRAY_STORE_BEGIN in common/common.h).
ANALYZE_CC  ?= gcc
ANALYZE_SRC := $(COMMON_SRC) $(FETCH_SRC) $(CACHE_SRC) $(FS_SRC) $(TOOLS_SRC) \
	       $(wildcard tests/fuzz/*.c) bench/delayproxy.c
ANALYZE_OK  := $(patsubst %.c,$(O)/analyze/%.ok,$(ANALYZE_SRC))
analyze: $(ANALYZE_OK)
	@echo "  ANALYZE ok ($(words $(ANALYZE_SRC)) files)"
$(O)/analyze/%.ok: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	@echo "  ANALYZE $<"
	@$(ANALYZE_CC) $(filter-out -fsanitize=%,$(CFLAGS)) -fanalyzer -Werror -c -o /dev/null $<
	@touch $@

# make fuzz FUZZ_SECONDS=N: each libFuzzer target for N seconds (clang);
# crashers are kept in tests/fuzz/crashers/<target>/.
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run-fuzz.sh $(FUZZ_TARGETS)

# make check / make demo first install what they need (Debian packages, as
# root, only when missing), then build in a sub-make so pkg-config sees the
# freshly installed libraries.
deps:
	@tests/lib/install-deps.sh

# make check: unit tests (TAP) and integration tests (TAP), summarised by prove.
# It also builds the sanitized trees run-all.sh uses for its second pass:
# build-san (address,undefined) and the cache's concurrency test under
# ThreadSanitizer (build-tsan).
check: deps
	@$(MAKE) --no-print-directory tests
	@$(MAKE) --no-print-directory analyze
	@$(MAKE) --no-print-directory SANITIZE=address,undefined tests
	@$(MAKE) --no-print-directory SANITIZE=thread O=build-tsan build-tsan/tests/unit/cache-store
	tests/run-all.sh $(O)

unit: tests
	prove -e '' $(UNIT_BINS)

demo: deps
	@$(MAKE) --no-print-directory all
	tests/demo.sh $(O)

# make bench: issue 6's benchmark (long: ~40 min the first time; not part of
# make check). Results in bench/results/ and docs/benchmarks.md.
bench: all
	bench/run.sh $(O)
	bench/session.sh $(O)
	bench/import.sh $(O)
	bench/cold-rtt.sh $(O) | tee bench/results/cold-rtt.md
	$(MAKE) --no-print-directory bench-walk
	bench/push.sh $(O)
	NIXOCI_LOAD_SECONDS=$${NIXOCI_LOAD_SECONDS:-300} PATH=$(O)/bin:$$PATH \
		bash tests/integ/t0420-load.t -v

# make bench-import: only the Nix interop part (import, push, nix copy, serve)
bench-import: all
	bench/import.sh $(O)

# make bench-warm-open [BEFORE=DIR]: a warm java -version (remounted, page
# cache dropped) with this build, DIR's nixoci-fs (e.g. a build of main) and
# native, alternating run by run (~3 min; BENCH_RUNS, BENCH_WARM_OPTS)
bench-warm-open: all
	bench/warm-open.sh $(O) $(BEFORE)

# make bench-cold: cold java and CPython starts at 0, 10 and 40 ms added RTT,
# with and without a startup profile, and against eStargz (containerd + stargz
# snapshotter; skipped with one line if its packages are missing); the whole
# bench closure, about 11 min after make bench built the closure and its
# OCI image, plus once about 12 min to convert that image to eStargz
bench-cold: all
	bench/cold-rtt.sh $(O) | tee bench/results/cold-rtt.md

# make bench-walk: the walk of the whole bench closure's metadata (1,544
# paths) from an empty cache through a closure= mount (the metadata blob) at
# 0, 10 and 40 ms added RTT (~10 min after make bench built the closure)
BENCH_CLOSURE = $${BENCH_WORK:-/var/tmp/nixoci-bench}/closure
bench-walk: all
	BENCH_WALK_MODES=walk BENCH_DELAYS="0 10 40" \
		bench/meta-walk.sh $(O) $(BENCH_CLOSURE) | tee bench/results/meta-walk.md

# make bench-push: only the push comparison (nixoci push against skopeo, at
# 0 and 40 ms added RTT, and re-push)
bench-push: all
	bench/push.sh $(O)

# make bench-session: only the session layer's part of make bench (~10 min)
bench-session: all
	bench/session.sh $(O)

MAN_PAGES := man/nixoci.1 man/nixoci-fs.8 man/nixoci-format.5
UNIT_IN   := dist/nixoci-fs@.service.in

# Binaries, man pages, the systemd unit template (with its paths filled in)
# and an example instance file.
install: $(BINS)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 \
		$(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/nixoci
	install -m 0755 $(BINS) $(DESTDIR)$(BINDIR)/
	install -m 0644 man/nixoci.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 man/nixoci-format.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 man/nixoci-fs.8 $(DESTDIR)$(MANDIR)/man8/
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' $(UNIT_IN) \
		>$(DESTDIR)$(UNITDIR)/nixoci-fs@.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/nixoci-fs@.service
	sed -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' dist/nixoci-fs.env.example \
		>$(DESTDIR)$(SYSCONFDIR)/nixoci/example.env.sample

# Removes what install put there (instance files in SYSCONFDIR/nixoci are
# the administrator's and stay).
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/nixoci $(DESTDIR)$(BINDIR)/nixoci-fs
	rm -f $(DESTDIR)$(MANDIR)/man1/nixoci.1 $(DESTDIR)$(MANDIR)/man5/nixoci-format.5 \
		$(DESTDIR)$(MANDIR)/man8/nixoci-fs.8
	rm -f $(DESTDIR)$(UNITDIR)/nixoci-fs@.service
	rm -f $(DESTDIR)$(SYSCONFDIR)/nixoci/example.env.sample
	-rmdir $(DESTDIR)$(SYSCONFDIR)/nixoci 2>/dev/null

clean:
	rm -rf build build-san bin build-fuzz-san build-tsan
