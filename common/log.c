/*
 * common/log.c: the one logging entry point.
 *
 * Each call formats the whole line into a local buffer and hands it to the
 * kernel with a single write(2), so lines from concurrent threads never
 * interleave (stderr writes below PIPE_BUF are atomic on pipes, and a single
 * write is never split by another writer's write on a terminal or file).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "common/common.h"

/* Longer messages are truncated; the tail of a 2 KiB line is not useful. */
#define NX_LOG_LINE_MAX 2048

/* An error or warning identical to the previous line within this many
 * seconds is counted, not written: an outage must not log once per request
 * and thread. */
#define NX_LOG_REPEAT_NS (UINT64_C(10) * 1000000000)

static atomic_int log_level = NX_LOG_NOTICE;
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_last[NX_LOG_LINE_MAX];
static uint64_t log_last_ns;
static unsigned long log_repeats;
static atomic_int log_syslog;
static atomic_int log_stamps;
static __thread void (*log_ctx_fn)(void *arg, char *buf, size_t cap);
static __thread void *log_ctx_arg;
static _Atomic(const char *) log_prog = "nixoci";

void nx_log_set_level(int level)
{
	atomic_store(&log_level, level);
}

int nx_log_get_level(void)
{
	return atomic_load(&log_level);
}

void nx_log_set_prog(const char *prog)
{
	atomic_store(&log_prog, prog ? prog : "nixoci");
}

void nx_log_use_syslog(int on)
{
	const char *prog = atomic_load(&log_prog);

	if (on && !atomic_load(&log_syslog))
		openlog(prog, LOG_PID | LOG_NDELAY, LOG_DAEMON);
	else if (!on && atomic_load(&log_syslog))
		closelog();
	atomic_store(&log_syslog, on ? 1 : 0);
}

void nx_log_set_context(void (*fn)(void *arg, char *buf, size_t cap), void *arg)
{
	log_ctx_fn = fn;
	log_ctx_arg = arg;
}

void nx_log_set_stamps(int on)
{
	atomic_store(&log_stamps, on ? 1 : 0);
}

static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, buf, len);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return; /* nowhere left to report it */
		}
		buf += w;
		len -= (size_t)w;
	}
}

/* Writes @msg (already prefixed on stderr) as one line. */
static void emit(int level, const char *msg)
{
	char line[NX_LOG_LINE_MAX];
	size_t n = strlen(msg);

	if (atomic_load(&log_syslog)) {
		syslog(level, "%s", msg);
		return;
	}
	if (n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	memcpy(line, msg, n);
	line[n++] = '\n';
	write_all(STDERR_FILENO, line, n);
}

/* "last message repeated N times", prefixed like the other lines. */
static void emit_repeats(int level, unsigned long rep)
{
	char line[128];

	snprintf(line, sizeof(line), "%s%slast message repeated %lu times",
		 atomic_load(&log_syslog) ? "" : atomic_load(&log_prog),
		 atomic_load(&log_syslog) ? "" : ": ", rep);
	emit(level, line);
}

/* Length of the well-formed UTF-8 sequence at @s (at most @n bytes) that is
 * not a C1 control (U+0080..U+009F), or 0. */
static size_t utf8_ok(const unsigned char *s, size_t n)
{
	size_t len, i;
	uint32_t cp;

	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2, cp = s[0] & 0x1f;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3, cp = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4, cp = s[0] & 0x07;
	else
		return 0;
	if (len > n)
		return 0;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp <= 0x9f))
		return 0;
	return len;
}

/*
 * Copies @src into @dst (@cap bytes, NUL-terminated, truncated) so that
 * nothing in it can act on a terminal or a log reader: control characters
 * (newlines, ESC, DEL), C1 controls and bytes that are not UTF-8 become
 * \xNN. Messages carry strings from registries and manifests (names,
 * errors, annotations): one escape here covers every call site. Returns
 * the length written.
 */
static size_t escape_line(char *dst, size_t cap, const char *src)
{
	const unsigned char *s = (const unsigned char *)src;
	size_t n = strlen(src), i = 0, j = 0, k;

	while (i < n && j + 1 < cap) {
		if (s[i] >= 0x20 && s[i] < 0x7f) {
			dst[j++] = (char)s[i++];
		} else if (s[i] >= 0x80 && (k = utf8_ok(s + i, n - i)) > 0) {
			if (j + k >= cap)
				break;
			memcpy(dst + j, s + i, k);
			i += k;
			j += k;
		} else {
			if (j + 4 >= cap)
				break;
			snprintf(dst + j, cap - j, "\\x%02x", s[i++]);
			j += 4;
		}
	}
	dst[j] = '\0';
	return j;
}

/* the attribute lets the compiler check vsnprintf below (the header lacks it) */
NX_PRINTF(2, 0) void nx_vlog(int level, const char *fmt, va_list ap)
{
	char line[NX_LOG_LINE_MAX], msg[NX_LOG_LINE_MAX];
	int saved = errno; /* callers often log and then look at errno */
	size_t n = 0;
	int r;

	if (level > atomic_load(&log_level))
		return;

	if (!atomic_load(&log_syslog) && atomic_load(&log_stamps)) {
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		r = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%ld]: ",
			     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			     tm.tm_sec, ts.tv_nsec / 1000000, atomic_load(&log_prog),
			     (long)getpid());
		if (r > 0)
			n = (size_t)r < sizeof(line) ? (size_t)r : sizeof(line) - 1;
	} else if (!atomic_load(&log_syslog)) {
		r = snprintf(line, sizeof(line), "%s: ", atomic_load(&log_prog));
		if (r > 0)
			n = (size_t)r < sizeof(line) ? (size_t)r : sizeof(line) - 1;
	}
	r = vsnprintf(msg, sizeof(msg), fmt, ap);
	if (r < 0)
		msg[0] = '\0';
	/* the callers' own line ends are dropped, not escaped */
	for (size_t m = strlen(msg); m > 0 && msg[m - 1] == '\n'; m--)
		msg[m - 1] = '\0';
	/* One line per call: a message must not smuggle extra lines in, nor
	 * terminal escapes out of a registry's strings. */
	n += escape_line(line + n, sizeof(line) - n, msg);

	if (n >= sizeof(line) - 1)
		n = sizeof(line) - 2;
	line[n] = '\0';
	/* what this thread was doing for whom, on errors and warnings */
	if (log_ctx_fn && level <= NX_LOG_WARNING && n + 16 < sizeof(line)) {
		char ctx[1024];

		ctx[0] = '\0';
		log_ctx_fn(log_ctx_arg, ctx, sizeof(ctx));
		if (ctx[0]) {
			r = snprintf(line + n, sizeof(line) - n, " (%s)", ctx);
			if (r > 0)
				n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
			line[n] = '\0';
		}
	}

	pthread_mutex_lock(&log_mu);
	{
		uint64_t now = nx_now_ns();
		unsigned long rep = 0;
		int same = strcmp(line, log_last) == 0;

		if (same && level <= NX_LOG_WARNING && now - log_last_ns < NX_LOG_REPEAT_NS) {
			log_repeats++;
			pthread_mutex_unlock(&log_mu);
			errno = saved;
			return;
		}
		rep = log_repeats;
		log_repeats = 0;
		memcpy(log_last, line, n + 1);
		log_last_ns = now;
		if (rep)
			emit_repeats(NX_LOG_NOTICE, rep);
		emit(level, line);
	}
	pthread_mutex_unlock(&log_mu);
	errno = saved;
}

void nx_log(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	nx_vlog(level, fmt, ap);
	va_end(ap);
}
