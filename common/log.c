/*
 * common/log.c: the one logging entry point.
 *
 * Each call formats the whole line into a local buffer and hands it to the
 * kernel with a single write(2), so lines from concurrent threads never
 * interleave (stderr writes below PIPE_BUF are atomic on pipes, and a single
 * write is never split by another writer's write on a terminal or file).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "common/common.h"

/* Longer messages are truncated; the tail of a 2 KiB line is not useful. */
#define NX_LOG_LINE_MAX 2048

static atomic_int log_level = NX_LOG_NOTICE;
static atomic_int log_syslog;
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

/* the attribute lets the compiler check vsnprintf below (the header lacks it) */
NX_PRINTF(2, 0) void nx_vlog(int level, const char *fmt, va_list ap)
{
	char line[NX_LOG_LINE_MAX];
	int saved = errno; /* callers often log and then look at errno */
	size_t n = 0;
	int r;

	if (level > atomic_load(&log_level))
		return;

	if (!atomic_load(&log_syslog)) {
		r = snprintf(line, sizeof(line), "%s: ", atomic_load(&log_prog));
		if (r > 0)
			n = (size_t)r < sizeof(line) ? (size_t)r : sizeof(line) - 1;
	}
	r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
	if (r > 0)
		n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
	/* One line per call: a message must not smuggle extra lines in. */
	while (n > 0 && line[n - 1] == '\n')
		n--;

	if (atomic_load(&log_syslog)) {
		line[n] = '\0';
		syslog(level, "%s", line);
	} else {
		if (n >= sizeof(line) - 1)
			n = sizeof(line) - 2;
		line[n++] = '\n';
		write_all(STDERR_FILENO, line, n);
	}
	errno = saved;
}

void nx_log(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	nx_vlog(level, fmt, ap);
	va_end(ap);
}
