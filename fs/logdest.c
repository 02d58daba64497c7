/*
 * fs/logdest.c: where the daemon's messages go once it runs on its own.
 *
 * - -o log=FILE: appended to FILE, each line with a UTC time stamp and pid;
 * - in the foreground (-f): stderr, as before;
 * - daemonized with stderr not a terminal (systemd, a pipe, a file): that
 *   same stderr, kept across fuse_daemonize() (which points fds 0-2 at
 *   /dev/null), so the journal or the caller's file gets them;
 * - daemonized from a terminal: syslog (the terminal will go away).
 * Startup errors (before the mount) always reach stderr, the user's.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "fs/fs_i.h"

int nx_fs_log_prepare(struct nx_fs_logdest *ld, const char *file, int foreground)
{
	ld->fd = -1;
	ld->syslog = 0;
	if (file) {
		ld->fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
		if (ld->fd < 0) {
			int r = -errno;

			nx_log(NX_LOG_ERR, "log file %s: %s (check the log= option)", file,
			       strerror(errno));
			return r;
		}
		return 0;
	}
	if (foreground)
		return 0;
	if (isatty(STDERR_FILENO)) {
		ld->syslog = 1;
		return 0;
	}
	ld->fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
	if (ld->fd < 0)
		ld->syslog = 1; /* no stderr at all: syslog is all there is */
	return 0;
}

void nx_fs_log_start(struct nx_fs_logdest *ld, int is_file)
{
	if (ld->syslog) {
		nx_log_use_syslog(1);
		return;
	}
	if (ld->fd < 0)
		return;
	/* dup2 clears close-on-exec on fd 2, as a stderr should be */
	if (dup2(ld->fd, STDERR_FILENO) < 0) {
		nx_log_use_syslog(1);
		nx_log(NX_LOG_WARNING, "cannot keep the log on its file: %s; using syslog",
		       strerror(errno));
	} else if (is_file) {
		nx_log_set_stamps(1);
	}
	close(ld->fd);
	ld->fd = -1;
}

void nx_fs_log_release(struct nx_fs_logdest *ld)
{
	if (ld->fd >= 0)
		close(ld->fd);
	ld->fd = -1;
}
