/*
 * fs/daemon.c: going to the background with an exit status that tells the
 * truth, and leaving quickly when asked to.
 *
 * fuse_daemonize() lets the parent exit 0 as soon as the child exists, but
 * the store can only be opened in the child (LMDB environments and curl
 * handles must not cross fork()), so a damaged cache used to exit 0 and
 * leave no mount. Here the parent waits for one byte from the child: 0 once
 * the store is open and the mount serves, or the child's exit status after
 * it has unmounted. A child that dies without a word makes the parent exit
 * 1. Until it reports, the child keeps the caller's stdin, stdout and
 * stderr, so the error that makes it give up reaches the user's terminal;
 * then they point at /dev/null (fs/logdest.c puts the log in place after).
 *
 * Shutdown: SIGTERM, SIGINT and SIGHUP first cancel every transfer of the
 * fetch layer (a worker blocked on a stalled registry would otherwise hold
 * the session loop's exit for up to 2.3 timeouts, past a container
 * runtime's grace period), then do what libfuse's handler does.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "fetch/fetch.h"
#include "fs/fs_i.h"

static int ready_fd = -1;

int nx_fs_daemonize(int foreground)
{
	int p[2];
	pid_t pid;

	if (foreground) {
		/* as fuse_daemonize: the daemon does not hold a directory busy */
		if (chdir("/") < 0)
			nx_log(NX_LOG_WARNING, "chdir /: %s", strerror(errno));
		return 0;
	}
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		int e = errno;

		close(p[0]);
		close(p[1]);
		return -e;
	}
	if (pid > 0) {
		unsigned char st = 1;
		ssize_t n;

		close(p[1]);
		do
			n = read(p[0], &st, 1);
		while (n < 0 && errno == EINTR);
		_exit(n == 1 ? st : 1);
	}
	close(p[0]);
	ready_fd = p[1];
	if (setsid() < 0)
		nx_log(NX_LOG_WARNING, "setsid: %s", strerror(errno));
	if (chdir("/") < 0)
		nx_log(NX_LOG_WARNING, "chdir /: %s", strerror(errno));
	return 0;
}

void nx_fs_daemon_report(int status)
{
	unsigned char b = (unsigned char)(status < 0 || status > 255 ? 1 : status);
	int fd;

	if (ready_fd < 0)
		return;
	while (write(ready_fd, &b, 1) < 0 && errno == EINTR)
		;
	close(ready_fd);
	ready_fd = -1;
	if (status != 0)
		return; /* exiting: keep stderr for the last lines */
	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return;
	/* dup2 clears close-on-exec on the copies, as stdio should be */
	dup2(fd, STDIN_FILENO);
	dup2(fd, STDOUT_FILENO);
	dup2(fd, STDERR_FILENO);
	close(fd);
}

static struct sigaction fuse_handler[3];
static const int exit_signals[3] = { SIGTERM, SIGINT, SIGHUP };

static void on_exit_signal(int sig)
{
	nx_fetch_cancel_all();
	for (int i = 0; i < 3; i++) {
		if (exit_signals[i] != sig)
			continue;
		if (fuse_handler[i].sa_flags & SA_SIGINFO)
			continue; /* libfuse installs a plain handler; nothing else to chain */
		if (fuse_handler[i].sa_handler != SIG_DFL && fuse_handler[i].sa_handler != SIG_IGN)
			fuse_handler[i].sa_handler(sig);
	}
	/* libfuse's handler exited the session; the loop may be asleep */
	nx_session_loop_wake();
}

int nx_fs_cancel_on_exit_signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_exit_signal;
	sigemptyset(&sa.sa_mask);
	for (int i = 0; i < 3; i++) {
		if (sigaction(exit_signals[i], NULL, &fuse_handler[i]) < 0)
			return -errno;
		/* Started with the signal ignored (nohup ignores SIGHUP): libfuse
		 * then leaves it ignored, and so do we, or the signal would cancel
		 * every transfer of a daemon that goes on serving. */
		if (!(fuse_handler[i].sa_flags & SA_SIGINFO) &&
		    fuse_handler[i].sa_handler == SIG_IGN)
			continue;
		if (sigaction(exit_signals[i], &sa, NULL) < 0)
			return -errno;
	}
	return 0;
}
