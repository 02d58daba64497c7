/*
 * tests/lib/faultinject.c: an LD_PRELOAD shim that makes chosen LMDB and
 * system calls fail, so tests run the error paths that a disk error, a full
 * disk or a damaged LMDB environment would (built as
 * $O/tests/lib/faultinject.so; see tests/lib/faultinject.sh).
 *
 *   NIXOCI_FAULT=SPEC[,SPEC...]
 *   SPEC = CALL[@SUBSTR]:WHICH:ERROR
 *     CALL    mdb_txn_begin mdb_txn_commit mdb_put mdb_del mdb_get
 *             mdb_cursor_open, or open openat write pwrite fsync fdatasync
 *             rename renameat unlinkat mkdirat
 *     SUBSTR  only calls whose path (for fd calls: the fd's path from
 *             /proc/self/fd) contains SUBSTR count and fail
 *     WHICH   N (the Nth counted call), N- (the Nth and every later one),
 *             N-M (the Nth to the Mth)
 *     ERROR   an errno name (EIO ENOSPC EACCES ENOMEM EDQUOT EROFS) or an
 *             LMDB code (MDB_MAP_FULL MDB_PANIC MDB_MAP_RESIZED
 *             MDB_READERS_FULL MDB_TXN_FULL MDB_CORRUPTED)
 *   NIXOCI_FAULT_PROG  only a process of this name is affected (default
 *             nixoci-fs), so the test's own tools run normally
 *   NIXOCI_FAULT_TRACE=CALL[,CALL...]  log every call of these (same
 *             names) with the name of the calling thread:
 *             "faultinject: trace CALL thread NAME"
 *   NIXOCI_FAULT_CLOCK=SECONDS  CLOCK_REALTIME runs SECONDS ahead (a wall
 *             clock jump, or a daemon started long after the last one)
 *
 * Each injected fault writes one line "faultinject: CALL #N fails with
 * ERROR" to stderr. An injected mdb_txn_commit failure aborts the
 * transaction first, as a failing commit does. An injected mdb_txn_begin
 * failure stores a poison pointer in *txn: LMDB leaves it untouched, so a
 * caller that uses it anyway uses whatever its uninitialized variable held;
 * the poison makes that crash every time instead of by chance.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <time.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_SPECS 16

struct spec {
	char call[32];
	char sub[128];
	unsigned long from, to; /* occurrences, 1-based, inclusive */
	int err;                /* errno (> 0) or MDB code (< 0) */
	char errname[32];
	unsigned long count;    /* counted calls so far */
};

static int active(void);
static struct spec specs[MAX_SPECS];
static int nspecs = -1; /* -1: not parsed yet */

static const struct {
	const char *name;
	int code;
} codes[] = {
	{ "EIO", EIO },
	{ "ENOSPC", ENOSPC },
	{ "EACCES", EACCES },
	{ "ENOMEM", ENOMEM },
	{ "EDQUOT", EDQUOT },
	{ "EROFS", EROFS },
	{ "EPERM", EPERM },
	{ "MDB_MAP_FULL", MDB_MAP_FULL },
	{ "MDB_PANIC", MDB_PANIC },
	{ "MDB_MAP_RESIZED", MDB_MAP_RESIZED },
	{ "MDB_READERS_FULL", MDB_READERS_FULL },
	{ "MDB_TXN_FULL", MDB_TXN_FULL },
	{ "MDB_CORRUPTED", MDB_CORRUPTED },
};

static void parse(void)
{
	const char *env = getenv("NIXOCI_FAULT");
	char buf[1024], *save = NULL, *tok;

	nspecs = 0;
	if (!env || !*env || !active())
		return;
	snprintf(buf, sizeof(buf), "%s", env);
	for (tok = strtok_r(buf, ",", &save); tok && nspecs < MAX_SPECS;
	     tok = strtok_r(NULL, ",", &save)) {
		struct spec *s = &specs[nspecs];
		char *c1 = strchr(tok, ':'), *c2, *at, *end;
		size_t i;

		if (!c1 || !(c2 = strchr(c1 + 1, ':')))
			goto bad;
		*c1 = *c2 = '\0';
		at = strchr(tok, '@');
		if (at) {
			*at = '\0';
			snprintf(s->sub, sizeof(s->sub), "%s", at + 1);
		}
		snprintf(s->call, sizeof(s->call), "%s", tok);
		s->from = strtoul(c1 + 1, &end, 10);
		s->to = s->from;
		if (*end == '-')
			s->to = end[1] ? strtoul(end + 1, &end, 10) : (unsigned long)-1;
		else if (*end)
			goto bad;
		for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
			if (strcmp(codes[i].name, c2 + 1) == 0)
				break;
		if (i == sizeof(codes) / sizeof(codes[0]) || s->from == 0)
			goto bad;
		s->err = codes[i].code;
		snprintf(s->errname, sizeof(s->errname), "%s", codes[i].name);
		nspecs++;
		continue;
bad:
		fprintf(stderr, "faultinject: bad NIXOCI_FAULT entry (CALL[@SUBSTR]:N[-[M]]:ERROR)\n");
		abort();
	}
}

static int fd_path(int fd, char *out, size_t cap)
{
	char link[64];
	ssize_t n;

	if (fd == AT_FDCWD) {
		if (!getcwd(out, cap))
			return -1;
		return 0;
	}
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, out, cap - 1);
	if (n < 0)
		return -1;
	out[n] = '\0';
	return 0;
}

static int active(void)
{
	const char *prog = getenv("NIXOCI_FAULT_PROG");
	extern char *program_invocation_short_name;

	return strcmp(program_invocation_short_name, prog && *prog ? prog : "nixoci-fs") == 0;
}

static void trace(const char *call)
{
	const char *t = getenv("NIXOCI_FAULT_TRACE");
	size_t n = strlen(call);
	char name[32] = "?";

	if (!t || !active())
		return;
	for (const char *p = strstr(t, call); p; p = strstr(p + 1, call)) {
		if ((p == t || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) {
			pthread_getname_np(pthread_self(), name, sizeof(name));
			fprintf(stderr, "faultinject: trace %s thread %s\n", call, name);
			return;
		}
	}
}

/* 0: go ahead; else the error to fail with. */
static int should_fail(const char *call, int dirfd, const char *path)
{
	char full[8192];
	int have_full = 0;

	trace(call);
	if (nspecs < 0)
		parse();
	for (int i = 0; i < nspecs; i++) {
		struct spec *s = &specs[i];
		unsigned long n;

		if (strcmp(s->call, call) != 0)
			continue;
		if (s->sub[0]) {
			if (!have_full) {
				full[0] = '\0';
				if (path && path[0] == '/') {
					snprintf(full, sizeof(full), "%s", path);
				} else {
					char d[4096] = "";

					fd_path(dirfd, d, sizeof(d));
					snprintf(full, sizeof(full), "%s%s%s", d, path ? "/" : "",
						 path ? path : "");
				}
				have_full = 1;
			}
			if (!strstr(full, s->sub))
				continue;
		}
		n = __atomic_add_fetch(&s->count, 1, __ATOMIC_RELAXED);
		if (n >= s->from && n <= s->to) {
			fprintf(stderr, "faultinject: %s #%lu fails with %s\n", call, n, s->errname);
			return s->err;
		}
	}
	return 0;
}

#define REAL(name, type) \
	static __typeof__(type) real_##name; \
	if (!real_##name) \
		real_##name = (type)dlsym(RTLD_NEXT, #name)

/* ---------------------------------------------------------------- LMDB */

int mdb_txn_begin(MDB_env *env, MDB_txn *parent, unsigned int flags, MDB_txn **txn)
{
	REAL(mdb_txn_begin, int (*)(MDB_env *, MDB_txn *, unsigned int, MDB_txn **));
	int e = should_fail("mdb_txn_begin", AT_FDCWD, NULL);

	if (e) {
		*txn = (MDB_txn *)(uintptr_t)0xdeadbeef0badULL;
		return e;
	}
	return real_mdb_txn_begin(env, parent, flags, txn);
}

int mdb_txn_commit(MDB_txn *txn)
{
	REAL(mdb_txn_commit, int (*)(MDB_txn *));
	REAL(mdb_txn_abort, void (*)(MDB_txn *));
	int e = should_fail("mdb_txn_commit", AT_FDCWD, NULL);

	if (e) {
		real_mdb_txn_abort(txn);
		return e;
	}
	return real_mdb_txn_commit(txn);
}

int mdb_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data, unsigned int flags)
{
	REAL(mdb_put, int (*)(MDB_txn *, MDB_dbi, MDB_val *, MDB_val *, unsigned int));
	int e = should_fail("mdb_put", AT_FDCWD, NULL);

	if (e)
		return e;
	return real_mdb_put(txn, dbi, key, data, flags);
}

int mdb_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
{
	REAL(mdb_del, int (*)(MDB_txn *, MDB_dbi, MDB_val *, MDB_val *));
	int e = should_fail("mdb_del", AT_FDCWD, NULL);

	if (e)
		return e;
	return real_mdb_del(txn, dbi, key, data);
}

int mdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
{
	REAL(mdb_get, int (*)(MDB_txn *, MDB_dbi, MDB_val *, MDB_val *));
	int e = should_fail("mdb_get", AT_FDCWD, NULL);

	if (e)
		return e;
	return real_mdb_get(txn, dbi, key, data);
}

int mdb_cursor_open(MDB_txn *txn, MDB_dbi dbi, MDB_cursor **cursor)
{
	REAL(mdb_cursor_open, int (*)(MDB_txn *, MDB_dbi, MDB_cursor **));
	int e = should_fail("mdb_cursor_open", AT_FDCWD, NULL);

	if (e)
		return e;
	return real_mdb_cursor_open(txn, dbi, cursor);
}

/* ------------------------------------------------------------ syscalls */

#define FAIL_ERRNO(e) \
	do { \
		errno = (e) > 0 ? (e) : EIO; \
		return -1; \
	} while (0)

/* The mode argument of open(2) and openat(2), present only with O_CREAT or
 * O_TMPFILE; expanded inside the variadic wrapper (va_start needs it). */
#define OPEN_MODE(flags, mode) \
	do { \
		if ((flags) & (O_CREAT | O_TMPFILE)) { \
			va_list ap; \
			va_start(ap, flags); \
			(mode) = va_arg(ap, mode_t); \
			va_end(ap); \
		} \
	} while (0)

int open(const char *path, int flags, ...)
{
	REAL(open, int (*)(const char *, int, ...));
	mode_t mode = 0;
	int e;

	OPEN_MODE(flags, mode);
	e = should_fail("open", AT_FDCWD, path);
	if (e)
		FAIL_ERRNO(e);
	return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	REAL(open64, int (*)(const char *, int, ...));
	mode_t mode = 0;
	int e;

	OPEN_MODE(flags, mode);
	e = should_fail("open", AT_FDCWD, path);
	if (e)
		FAIL_ERRNO(e);
	return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	REAL(openat, int (*)(int, const char *, int, ...));
	mode_t mode = 0;
	int e;

	OPEN_MODE(flags, mode);
	e = should_fail("openat", dirfd, path);
	if (e)
		FAIL_ERRNO(e);
	return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	REAL(openat64, int (*)(int, const char *, int, ...));
	mode_t mode = 0;
	int e;

	OPEN_MODE(flags, mode);
	e = should_fail("openat", dirfd, path);
	if (e)
		FAIL_ERRNO(e);
	return real_openat64(dirfd, path, flags, mode);
}

ssize_t write(int fd, const void *buf, size_t n)
{
	REAL(write, ssize_t (*)(int, const void *, size_t));
	int e = fd > 2 ? should_fail("write", fd, NULL) : 0;

	if (e)
		FAIL_ERRNO(e);
	return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
	REAL(pwrite, ssize_t (*)(int, const void *, size_t, off_t));
	int e = should_fail("pwrite", fd, NULL);

	if (e)
		FAIL_ERRNO(e);
	return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
	REAL(pwrite64, ssize_t (*)(int, const void *, size_t, off_t));
	int e = should_fail("pwrite", fd, NULL);

	if (e)
		FAIL_ERRNO(e);
	return real_pwrite64(fd, buf, n, off);
}

int fsync(int fd)
{
	REAL(fsync, int (*)(int));
	int e = should_fail("fsync", fd, NULL);

	if (e)
		FAIL_ERRNO(e);
	return real_fsync(fd);
}

int fdatasync(int fd)
{
	REAL(fdatasync, int (*)(int));
	int e = should_fail("fdatasync", fd, NULL);

	if (e)
		FAIL_ERRNO(e);
	return real_fdatasync(fd);
}

int rename(const char *a, const char *b)
{
	REAL(rename, int (*)(const char *, const char *));
	int e = should_fail("rename", AT_FDCWD, b);

	if (e)
		FAIL_ERRNO(e);
	return real_rename(a, b);
}

int renameat(int da, const char *a, int db, const char *b)
{
	REAL(renameat, int (*)(int, const char *, int, const char *));
	int e = should_fail("renameat", db, b);

	if (e)
		FAIL_ERRNO(e);
	return real_renameat(da, a, db, b);
}

int renameat2(int da, const char *a, int db, const char *b, unsigned int flags)
{
	REAL(renameat2, int (*)(int, const char *, int, const char *, unsigned int));
	int e = should_fail("renameat", db, b);

	if (e)
		FAIL_ERRNO(e);
	return real_renameat2(da, a, db, b, flags);
}

int unlinkat(int dirfd, const char *path, int flags)
{
	REAL(unlinkat, int (*)(int, const char *, int));
	int e = should_fail("unlinkat", dirfd, path);

	if (e)
		FAIL_ERRNO(e);
	return real_unlinkat(dirfd, path, flags);
}

int mkdirat(int dirfd, const char *path, mode_t mode)
{
	REAL(mkdirat, int (*)(int, const char *, mode_t));
	int e = should_fail("mkdirat", dirfd, path);

	if (e)
		FAIL_ERRNO(e);
	return real_mkdirat(dirfd, path, mode);
}

/* --------------------------------------------------------------- clock */

int clock_gettime(clockid_t clk, struct timespec *ts)
{
	REAL(clock_gettime, int (*)(clockid_t, struct timespec *));
	static long shift = -1;
	int rc = real_clock_gettime(clk, ts);

	if (shift < 0) {
		const char *e = getenv("NIXOCI_FAULT_CLOCK");

		shift = e && active() ? strtol(e, NULL, 10) : 0;
	}
	if (rc == 0 && shift > 0 && clk == CLOCK_REALTIME)
		ts->tv_sec += shift;
	return rc;
}
