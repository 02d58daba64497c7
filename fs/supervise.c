/*
 * fs/supervise.c: nixoci-fs --supervise [OPTIONS] REF MOUNTPOINT.
 *
 * A small parent that keeps the mount alive across a crash of the daemon.
 * It runs the daemon (this same binary, by its path on disk, so an upgraded
 * binary is what runs next) in the foreground as its child, with one end of
 * a socketpair. Once the kernel's INIT is answered, the daemon registers:
 * it sends its negotiated state and a copy of the /dev/fuse descriptor
 * (takeover.c, NX_HO_STATE). The supervisor keeps both, and that copy is
 * what keeps the kernel's connection, and so the mount, alive when the
 * daemon dies.
 *
 *  - The daemon dies (a signal, or a non-zero exit after it registered): a
 *    new child starts with NIXOCI_RESTART=resume; the supervisor sends it
 *    the registered state and descriptor; it replays INIT to its libfuse,
 *    loads the store paths the kernel knows and asks the kernel to resend
 *    the requests the dead one had read (FUSE_NOTIFY_RESEND).
 *  - SIGHUP (systemctl reload, or nixoci-fs --takeover MOUNTPOINT, which is
 *    redirected here): a new child starts with NIXOCI_RESTART=takeover and
 *    takes the connection from the running one, which finishes its requests
 *    and exits 0.
 *  - The daemon exits 0 on its own (unmounted, or SIGTERM): so does the
 *    supervisor. SIGTERM/SIGINT to the supervisor are passed to the daemon.
 *
 * Why a process of our own and not only systemd's descriptor store: see
 * docs/architecture.md ("Live restart"). In short, it works the same with or
 * without systemd (this project's CI has no systemd PID 1), and the state
 * that must travel with the descriptor (the INIT exchange, the handle
 * generation) is ours to define; the unit runs the supervisor as its main
 * process.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fs/fs_i.h"

/* Resumes in a row that die before they register: then the supervisor
 * gives up (the next start would fail the same way). */
#define MAX_FAILED_RESUMES 5

struct child {
	pid_t pid;
	int sock; /* our end of its socketpair, -1 */
};

static char foreground[] = "-f";
static volatile sig_atomic_t got_hup, got_term, got_chld;
static int sig_pipe[2] = { -1, -1 };

static void on_signal(int sig)
{
	int e = errno;
	char c = (char)sig;

	if (sig == SIGHUP)
		got_hup = 1;
	else if (sig == SIGCHLD)
		got_chld = 1;
	else
		got_term = sig;
	if (write(sig_pipe[1], &c, 1) < 0) {
		/* full pipe: a wakeup is already pending */
	}
	errno = e;
}

struct sup {
	char exe[PATH_MAX];
	char **argv;            /* exe -f OPTIONS... REF MOUNTPOINT */
	struct nx_ho_msg *state; /* what the last daemon registered */
	int fuse_fd;            /* ...and its connection; -1 */
	unsigned gen;           /* generation of the next child */
	struct child cur, next;
};

static int spawn(struct sup *S, struct child *c, const char *how)
{
	int sv[2];
	pid_t pid;
	char fdbuf[16], genbuf[16];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	snprintf(fdbuf, sizeof(fdbuf), "%d", sv[1]);
	snprintf(genbuf, sizeof(genbuf), "%u", S->gen++);
	pid = fork();
	if (pid < 0) {
		int e = errno;

		close(sv[0]);
		close(sv[1]);
		return -e;
	}
	if (pid == 0) {
		sigset_t none;

		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGHUP, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGCHLD, SIG_DFL);
		close(sv[0]);
		/* a fixed number, free of CLOEXEC */
		if (sv[1] == 3 ? fcntl(3, F_SETFD, 0) < 0 : dup2(sv[1], 3) < 0)
			_exit(127);
		setenv("NIXOCI_KEEPER_FD", "3", 1);
		setenv("NIXOCI_RESTART", how, 1);
		setenv("NIXOCI_GEN", genbuf, 1);
		execv(S->exe, S->argv);
		_exit(127);
	}
	close(sv[1]);
	c->pid = pid;
	c->sock = sv[0];
	if (strcmp(how, "resume") == 0) {
		int r = nx_ho_send(c->sock, S->state, S->fuse_fd);

		if (r < 0)
			nx_log(NX_LOG_ERR, "supervisor: cannot hand the connection to pid %d: %s",
			       (int)pid, strerror(-r));
	}
	nx_log(NX_LOG_INFO, "supervisor: started daemon pid %d (%s)", (int)pid, how);
	return 0;
}

static void child_close(struct child *c)
{
	if (c->sock >= 0)
		close(c->sock);
	c->sock = -1;
	c->pid = 0;
}

/* A child registered (or re-registered) its connection. */
static int take_state(struct sup *S, struct child *c)
{
	struct nx_ho_msg *m = malloc(sizeof(*m));
	int fd = -1, r;

	if (!m)
		return -ENOMEM;
	r = nx_ho_recv(c->sock, m, &fd);
	if (r < 0 || m->kind != NX_HO_STATE || fd < 0) {
		if (fd >= 0)
			close(fd);
		free(m);
		if (c->sock >= 0) {
			close(c->sock); /* end of stream or garbage: nothing more from it */
			c->sock = -1;
		}
		return r < 0 ? r : -EPROTO;
	}
	if (S->fuse_fd >= 0)
		close(S->fuse_fd);
	free(S->state);
	S->state = m;
	S->fuse_fd = fd;
	return 0;
}

static const char *how_it_ended(int st, char *buf, size_t cap)
{
	if (WIFSIGNALED(st))
		snprintf(buf, cap, "was killed by signal %d", WTERMSIG(st));
	else
		snprintf(buf, cap, "exited with status %d", WEXITSTATUS(st));
	return buf;
}

int nx_supervise_main(int argc, char **argv)
{
	struct sup S;
	struct sigaction sa;
	ssize_t n;
	int failed = 0, ret = 1, i, registered = 0;

	memset(&S, 0, sizeof(S));
	S.fuse_fd = -1;
	S.gen = 1;
	S.cur.sock = S.next.sock = -1;
	if (argc < 4) {
		fprintf(stderr, "usage: nixoci-fs --supervise [OPTIONS] REF MOUNTPOINT\n");
		return 2;
	}
	/* The binary on disk, by path: an upgrade in place is what runs next. */
	n = readlink("/proc/self/exe", S.exe, sizeof(S.exe) - 1);
	if (n <= 0) {
		nx_log(NX_LOG_ERR, "supervisor: cannot find its own executable");
		return 1;
	}
	S.exe[n] = '\0';
	if (n > 10 && strcmp(S.exe + n - 10, " (deleted)") == 0)
		S.exe[n - 10] = '\0';
	S.argv = calloc((size_t)argc + 2, sizeof(*S.argv));
	if (!S.argv)
		return 1;
	S.argv[0] = argv[0];
	S.argv[1] = foreground;
	for (i = 2; i < argc; i++)
		S.argv[i] = argv[i];

	if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
		return 1;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGCHLD, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (spawn(&S, &S.cur, "mount") < 0)
		return 1;
	for (;;) {
		struct pollfd p[3];
		int np = 0;
		char buf[64];

		p[np].fd = sig_pipe[0];
		p[np++].events = POLLIN;
		p[np].fd = S.cur.sock;
		p[np++].events = POLLIN;
		p[np].fd = S.next.sock;
		p[np++].events = POLLIN;
		if (poll(p, (nfds_t)np, -1) < 0 && errno != EINTR)
			break;
		while (read(sig_pipe[0], buf, sizeof(buf)) > 0)
			;
		if (S.cur.sock >= 0 && (p[1].revents & (POLLIN | POLLHUP)))
			if (take_state(&S, &S.cur) == 0) {
				registered = 1;
				failed = 0;
			}
		if (S.next.sock >= 0 && (p[2].revents & (POLLIN | POLLHUP)))
			if (take_state(&S, &S.next) == 0)
				failed = 0;
		if (got_term) {
			int sig = got_term;

			got_term = 0;
			if (S.cur.pid)
				kill(S.cur.pid, SIGTERM);
			if (S.next.pid)
				kill(S.next.pid, SIGTERM);
			nx_log(NX_LOG_INFO, "supervisor: signal %d, stopping the daemon", sig);
		}
		if (got_hup) {
			got_hup = 0;
			if (S.next.pid)
				nx_log(NX_LOG_NOTICE, "supervisor: a takeover is already running");
			else if (!registered || !S.cur.pid)
				nx_log(NX_LOG_NOTICE, "supervisor: no daemon to take over from yet");
			else
				spawn(&S, &S.next, "takeover");
		}
		if (got_chld) {
			pid_t pid;
			int st;

			got_chld = 0;
			while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
				char why[64];

				how_it_ended(st, why, sizeof(why));
				if (pid == S.next.pid) {
					/* a takeover that failed: the old one serves on */
					nx_log(NX_LOG_WARNING, "supervisor: takeover daemon %d %s",
					       (int)pid, why);
					child_close(&S.next);
					continue;
				}
				if (pid != S.cur.pid)
					continue;
				child_close(&S.cur);
				if (S.next.pid) {
					/* handed over (or died while doing so: then the
					 * successor finds no DONE and resends) */
					nx_log(NX_LOG_INFO, "supervisor: daemon %d %s; %d serves now",
					       (int)pid, why, (int)S.next.pid);
					S.cur = S.next;
					S.next.pid = 0;
					S.next.sock = -1;
					continue;
				}
				if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
					nx_log(NX_LOG_INFO, "supervisor: daemon %d unmounted; exiting",
					       (int)pid);
					ret = 0;
					goto out;
				}
				if (S.fuse_fd < 0) {
					nx_log(NX_LOG_ERR, "supervisor: daemon %d %s before it mounted; "
					       "exiting", (int)pid, why);
					goto out;
				}
				if (++failed > MAX_FAILED_RESUMES) {
					nx_log(NX_LOG_ERR, "supervisor: %d daemons in a row died before "
					       "serving; giving up the mount", MAX_FAILED_RESUMES);
					goto out;
				}
				nx_log(NX_LOG_WARNING, "supervisor: daemon %d %s; resuming the mount "
				       "with a new one", (int)pid, why);
				if (spawn(&S, &S.cur, "resume") < 0)
					goto out;
			}
		}
	}
out:
	if (S.fuse_fd >= 0)
		close(S.fuse_fd);
	free(S.state);
	free(S.argv);
	child_close(&S.cur);
	child_close(&S.next);
	return ret;
}
