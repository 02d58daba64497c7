/*
 * fs/privs.c: what the daemon gives up once the mount is up (-o sandbox=,
 * docs/reliability.md "Privileges").
 *
 * nixoci-fs runs as root, parses what a registry sends and serves every
 * container on the host; uid 0 alone can write every root-owned file
 * (/etc, /usr, /root), so dropping capabilities is not enough: the
 * sandbox is three layers, applied once, right after the mount is up and
 * before the store opens, while the process has exactly one thread
 * (capabilities, no_new_privs and a Landlock domain belong to a thread;
 * every thread started afterwards inherits them, so none escapes):
 *
 *  - capabilities: every one leaves the bounding, permitted, effective,
 *    inheritable and ambient sets, except CAP_SYS_ADMIN kept permitted
 *    (never effective) when passthrough may be used: the kernel registers
 *    a backing file only for a caller with CAP_SYS_ADMIN in the initial
 *    user namespace, so the thread that registers one raises it around the
 *    ioctl and lowers it after (nx_fs_privs_raise/lower). CAP_DAC_OVERRIDE
 *    stays only when -o metrics= or profile_record= names a directory uid 0
 *    cannot write by its mode (a textfile collector's own directory).
 *    SECBIT_NOROOT (locked): a program run as uid 0 gains no capability.
 *  - no_new_privs: nothing run afterwards gains privileges by exec.
 *  - Landlock (where the kernel has it, ABI >= 2 for the cache's renames
 *    across directories): writing, creating, removing, renaming and
 *    truncating files only in the cache directory, the takeover socket's
 *    directory, the directories of the metrics= and profile_record= files,
 *    /dev/null and the bdi readahead files in sysfs; no TCP port can be
 *    bound (ABI >= 4);
 *    no signal reaches a process outside the sandbox (ABI >= 6). Reading
 *    and executing stay open: CA files, auth files, resolv.conf and the
 *    store's own data are read, and denying them brings nothing once
 *    writes are closed.
 *
 * Two things a sandboxed daemon cannot do itself: unmount (a Landlock
 * domain forbids umount, whatever the capabilities) and let a credential
 * helper (docker-credential-NAME) write its own state (ecr-login's cache,
 * gcloud's files under $HOME): a helper would inherit the domain. A small
 * process is forked before the sandbox for both, "the outside helper": it
 * keeps only CAP_SYS_ADMIN (for umount2), no_new_privs, closes every
 * descriptor but its socket, ignores the terminal's signals, and does only
 * this: unmount the one mountpoint it was given at fork (lazily, and only
 * when asked), and run docker-credential-NAME get (NAME checked as
 * fetch/auth.c checks it, no capability: SECBIT_NOROOT) with the
 * descriptors the daemon sends. It exits when the daemon's end of the
 * socket closes (a crash included: a supervised mount must survive that).
 *
 * A non-root daemon has no capability to drop, and no_new_privs would stop
 * the setuid fusermount3 from unmounting: it is left as it is, and says so.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/landlock.h>
#include <linux/securebits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fs/fs_i.h"

/* ---- Landlock ABI newer than Debian 12's <linux/landlock.h> (ABI 2), from
 * the kernel's include/uapi/linux/landlock.h: TRUNCATE (ABI 3, Linux 6.2),
 * handled_access_net and BIND_TCP (ABI 4, Linux 6.7), scoped and
 * SCOPE_SIGNAL (ABI 6, Linux 6.12). The ruleset attribute grows by one
 * 64-bit word per addition; the kernel takes the size we pass. */
#ifndef LANDLOCK_ACCESS_FS_REFER
#define LANDLOCK_ACCESS_FS_REFER (1ULL << 13)
#endif
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)
#endif
#define NX_LL_NET_BIND_TCP (1ULL << 0)  /* LANDLOCK_ACCESS_NET_BIND_TCP */
#define NX_LL_SCOPE_SIGNAL (1ULL << 1)  /* LANDLOCK_SCOPE_SIGNAL */
struct nx_ll_ruleset_attr {
	uint64_t handled_access_fs;
	uint64_t handled_access_net; /* ABI 4 */
	uint64_t scoped;             /* ABI 6 */
};

#define LL_WRITES                                                                           \
	(LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_REMOVE_DIR |                     \
	 LANDLOCK_ACCESS_FS_REMOVE_FILE | LANDLOCK_ACCESS_FS_MAKE_CHAR |                     \
	 LANDLOCK_ACCESS_FS_MAKE_DIR | LANDLOCK_ACCESS_FS_MAKE_REG |                         \
	 LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_MAKE_FIFO |                       \
	 LANDLOCK_ACCESS_FS_MAKE_BLOCK | LANDLOCK_ACCESS_FS_MAKE_SYM |                       \
	 LANDLOCK_ACCESS_FS_REFER | LANDLOCK_ACCESS_FS_TRUNCATE)

#define CAPBIT(c) (1ULL << (c))

/* The outside helper's requests (SOCK_SEQPACKET, one per message). */
enum { OUT_UNMOUNT = 1, OUT_HELPER = 2 };
struct out_req {
	uint32_t op;
	char prog[128]; /* OUT_HELPER: docker-credential-NAME */
};

static struct {
	int active;          /* sandboxed: unmount through the outside helper */
	int sock;            /* to the outside helper, -1 */
	pid_t pid;           /* the outside helper */
	uint64_t kept;       /* capabilities kept permitted */
	char summary[768];
} P = { .sock = -1, .pid = -1 };

/* ------------------------------------------------------- capabilities */

static int caps_get(struct __user_cap_data_struct d[2])
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };

	return syscall(SYS_capget, &h, d) < 0 ? -errno : 0;
}

/* This thread's sets: @prm permitted, @eff effective, nothing inheritable. */
static int caps_set(uint64_t prm, uint64_t eff)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];

	memset(d, 0, sizeof(d));
	d[0].permitted = (uint32_t)prm;
	d[1].permitted = (uint32_t)(prm >> 32);
	d[0].effective = (uint32_t)eff;
	d[1].effective = (uint32_t)(eff >> 32);
	return syscall(SYS_capset, &h, d) < 0 ? -errno : 0;
}

static uint64_t caps_effective(void)
{
	struct __user_cap_data_struct d[2];

	if (caps_get(d) < 0)
		return 0;
	return d[0].effective | (uint64_t)d[1].effective << 32;
}

/* Everything but @keep leaves the bounding set; needs CAP_SETPCAP. */
static int bounding_keep(uint64_t keep)
{
	for (int c = 0; c < 64; c++) {
		if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) < 0)
			break; /* past the kernel's last capability */
		if (!(keep & CAPBIT(c)) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0)
			return -errno;
	}
	return 0;
}

/* The sets of this thread reduced to @keep (permitted), @eff (effective);
 * the bounding set too when @bounding (that needs CAP_SETPCAP). */
static int caps_reduce(uint64_t keep, uint64_t eff, int bounding)
{
	int r = bounding ? bounding_keep(keep) : 0;

	if (r < 0)
		return r;
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
		return -errno;
	return caps_set(keep, eff & keep);
}

void nx_fs_privs_raise(void)
{
	struct __user_cap_data_struct d[2];

	if (!(P.kept & CAPBIT(CAP_SYS_ADMIN)) || caps_get(d) < 0)
		return;
	caps_set(d[0].permitted | (uint64_t)d[1].permitted << 32,
		 (d[0].effective | (uint64_t)d[1].effective << 32) | CAPBIT(CAP_SYS_ADMIN));
}

void nx_fs_privs_lower(void)
{
	struct __user_cap_data_struct d[2];

	if (!(P.kept & CAPBIT(CAP_SYS_ADMIN)) || caps_get(d) < 0)
		return;
	caps_set(d[0].permitted | (uint64_t)d[1].permitted << 32,
		 (d[0].effective | (uint64_t)d[1].effective << 32) & ~CAPBIT(CAP_SYS_ADMIN));
}

/* ---------------------------------------------------- the outside helper */

/* As fetch/auth.c checks the name a config file gives. */
static int helper_name_ok(const char *prog)
{
	const char *name = prog + strlen("docker-credential-");
	size_t n;

	if (strncmp(prog, "docker-credential-", strlen("docker-credential-")) != 0)
		return 0;
	n = strlen(name);
	return n > 0 && n <= 64 &&
	       strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") ==
		       n;
}

/* In a process of its own: runs @prog get on @fd0/@fd1, reports on @reply
 * first 0 or the errno of the exec, then the wait status; a byte (or the
 * end) from @reply kills it. Never returns. */
static void run_helper(const char *prog, int fd0, int fd1, int reply)
{
	int ep[2], e = 0, st = 0, killed = 0;
	int32_t msg;
	pid_t pid;

	signal(SIGCHLD, SIG_DFL);
	caps_set(0, 0); /* the helper needs none, nor does this process now */
	if (pipe2(ep, O_CLOEXEC) < 0)
		_exit(1);
	pid = fork();
	if (pid == 0) {
		char *argv[] = { (char *)prog, (char *)"get", NULL };
		sigset_t none;
		int n = open("/dev/null", O_WRONLY);

		/* fd0, fd1 > 2 (outside_main); dup2 clears close-on-exec */
		if (fd0 < 3 || fd1 < 3 || dup2(fd0, 0) < 0 || dup2(fd1, 1) < 0 || n < 0 ||
		    dup2(n, 2) < 0)
			_exit(127);
		/* only stdin, stdout, stderr and the exec-error pipe (CLOEXEC) */
		if (ep[1] > 3)
			syscall(SYS_close_range, 3, ep[1] - 1, 0);
		syscall(SYS_close_range, ep[1] + 1, ~0U, 0);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGHUP, SIG_DFL);
		signal(SIGPIPE, SIG_DFL);
		execvp(prog, argv);
		e = errno;
		if (write(ep[1], &e, sizeof(e)) < 0)
			_exit(127);
		_exit(127);
	}
	close(ep[1]);
	close(fd0);
	close(fd1);
	if (pid < 0)
		e = errno;
	else if (read(ep[0], &e, sizeof(e)) != (ssize_t)sizeof(e))
		e = 0; /* the end of the pipe: exec worked */
	close(ep[0]);
	msg = e;
	send(reply, &msg, sizeof(msg), MSG_NOSIGNAL);
	if (pid < 0)
		_exit(0);
	for (;;) {
		struct pollfd pf = { reply, POLLIN, 0 };
		pid_t w = waitpid(pid, &st, killed ? 0 : WNOHANG);

		if (w == pid || (w < 0 && errno != EINTR))
			break;
		if (!killed && poll(&pf, 1, 100) == 1) {
			kill(pid, SIGKILL); /* asked to, or the daemon is gone */
			killed = 1;
		}
	}
	msg = st;
	send(reply, &msg, sizeof(msg), MSG_NOSIGNAL);
	_exit(0);
}

/* MNT_DETACH, as libfuse's own unmount: readers of open files do not
 * hold the daemon's exit. */
static int32_t outside_unmount(const char *mp)
{
	return umount2(mp, MNT_DETACH) == 0 ? 0 : -errno;
}

static void outside_main(int sock, const char *mp)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	/* the daemon decides when this process ends (the end of the socket);
	 * a terminal's ^C or a unit's SIGTERM to the whole group must not make
	 * the daemon's unmount impossible */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGPIPE, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGCHLD, &sa, NULL); /* each helper's waiter is reaped at once */
	prctl(PR_SET_NAME, "nixoci-outside", 0, 0, 0);
	/* only the socket: not the fuse connection (a crash must not be kept
	 * alive here), the cache lock, the log, the takeover socket */
	if (sock > 0)
		syscall(SYS_close_range, 0, sock - 1, 0);
	syscall(SYS_close_range, sock + 1, ~0U, 0);
	/* 0-2 on /dev/null: received descriptors then never take those
	 * numbers, which a helper's dup2 onto 0 and 1 relies on */
	for (int fd = open("/dev/null", O_RDWR); fd >= 0 && fd < 2; fd = dup(fd))
		;
	if (caps_reduce(CAPBIT(CAP_SYS_ADMIN), CAPBIT(CAP_SYS_ADMIN),
			!!(caps_effective() & CAPBIT(CAP_SETPCAP))) < 0 ||
	    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		_exit(1);
	for (;;) {
		char cbuf[CMSG_SPACE(3 * sizeof(int))];
		struct out_req q;
		struct iovec iov = { &q, sizeof(q) };
		struct msghdr mh;
		struct cmsghdr *c;
		int fds[3], nfd = 0;
		ssize_t n;

		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof(cbuf);
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			_exit(0);
		for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
			if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
				continue;
			for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
				int fd;

				memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
				if (nfd < 3)
					fds[nfd++] = fd;
				else
					close(fd);
			}
		}
		if ((size_t)n == sizeof(q) && q.op == OUT_UNMOUNT) {
			int32_t r = outside_unmount(mp);

			send(sock, &r, sizeof(r), MSG_NOSIGNAL);
		} else if ((size_t)n == sizeof(q) && q.op == OUT_HELPER && nfd == 3 &&
			   memchr(q.prog, '\0', sizeof(q.prog)) && helper_name_ok(q.prog)) {
			pid_t w = fork();

			if (w == 0) {
				close(sock);
				run_helper(q.prog, fds[0], fds[1], fds[2]);
			}
			if (w < 0) {
				int32_t e = errno;

				send(fds[2], &e, sizeof(e), MSG_NOSIGNAL);
			}
		}
		for (int i = 0; i < nfd; i++)
			close(fds[i]);
	}
}

static int outside_start(const char *mp)
{
	int sv[2];
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		int e = errno;

		close(sv[0]);
		close(sv[1]);
		return -e;
	}
	if (pid == 0) {
		close(sv[0]);
		outside_main(sv[1], mp);
		_exit(0);
	}
	close(sv[1]);
	P.sock = sv[0];
	P.pid = pid;
	return 0;
}

/* fetch/'s helper runner: the helper starts in the outside helper. The
 * handle is our end of the request's reply socket. */
static int out_helper_start(const char *prog, int fd0, int fd1, long *handle)
{
	char cbuf[CMSG_SPACE(3 * sizeof(int))];
	struct out_req q;
	struct iovec iov = { &q, sizeof(q) };
	struct msghdr mh;
	struct cmsghdr *c;
	int rs[2], fds[3];
	int32_t e;
	ssize_t n;

	memset(&q, 0, sizeof(q));
	q.op = OUT_HELPER;
	if (strlen(prog) >= sizeof(q.prog))
		return ENAMETOOLONG;
	memcpy(q.prog, prog, strlen(prog) + 1);
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, rs) < 0)
		return errno;
	fds[0] = fd0;
	fds[1] = fd1;
	fds[2] = rs[1];
	memset(&mh, 0, sizeof(mh));
	memset(cbuf, 0, sizeof(cbuf));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cbuf;
	mh.msg_controllen = sizeof(cbuf);
	c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(c), fds, sizeof(fds));
	do
		n = sendmsg(P.sock, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	close(rs[1]);
	if (n < 0) {
		e = errno;
		close(rs[0]);
		return e;
	}
	do
		n = recv(rs[0], &e, sizeof(e), 0);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof(e) || e != 0) {
		close(rs[0]);
		return n == (ssize_t)sizeof(e) ? e : EIO;
	}
	*handle = rs[0];
	return 0;
}

static int out_helper_finish(long handle, int kill_it, int *status)
{
	int fd = (int)handle;
	int32_t st;
	ssize_t n;

	if (kill_it)
		send(fd, "k", 1, MSG_NOSIGNAL);
	do
		n = recv(fd, &st, sizeof(st), 0);
	while (n < 0 && errno == EINTR);
	close(fd);
	if (n != (ssize_t)sizeof(st))
		return -EIO;
	*status = st;
	return 0;
}

static const struct nx_helper_runner out_runner = { out_helper_start, out_helper_finish };

int nx_fs_privs_active(void)
{
	return P.active;
}

int nx_fs_privs_unmount(void)
{
	struct out_req q;
	int32_t r;
	ssize_t n;

	if (P.sock < 0)
		return -ENOTCONN;
	memset(&q, 0, sizeof(q));
	q.op = OUT_UNMOUNT;
	if (send(P.sock, &q, sizeof(q), MSG_NOSIGNAL) < 0)
		return -errno;
	do
		n = recv(P.sock, &r, sizeof(r), 0);
	while (n < 0 && errno == EINTR);
	return n == (ssize_t)sizeof(r) ? r : -ENOTCONN;
}

void nx_fs_privs_session_unmount(struct fuse_session *se)
{
	struct pollfd pf = { fuse_session_fd(se), 0, 0 };
	int r, saved, null;

	if (!P.active) {
		fuse_session_unmount(se);
		return;
	}
	/* as libfuse: a connection the kernel ended (fusermount3 -u) is not
	 * unmounted again, whatever is mounted there now */
	if (pf.fd < 0 || (poll(&pf, 1, 0) == 1 && (pf.revents & (POLLERR | POLLNVAL)))) {
		fuse_session_unmount(se); /* closes the fd, nothing else */
		return;
	}
	r = nx_fs_privs_unmount();
	if (r < 0) {
		nx_log(NX_LOG_ERR, "cannot unmount %s through the outside helper: %s",
		       nx_fs_privs_mountpoint(), strerror(-r));
		fuse_session_unmount(se);
		return;
	}
	/* Detached. libfuse's own umount2 (a readers' open file kept the
	 * connection, so it tries) can only find it gone and say so on stderr:
	 * it still closes the fd and frees what it holds, so it is called,
	 * with that line sent to /dev/null. */
	saved = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
	null = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (saved >= 0 && null >= 0)
		dup2(null, STDERR_FILENO);
	fuse_session_unmount(se);
	if (saved >= 0 && null >= 0)
		dup2(saved, STDERR_FILENO);
	if (saved >= 0)
		close(saved);
	if (null >= 0)
		close(null);
}

static char out_mp[4096];

const char *nx_fs_privs_mountpoint(void)
{
	return out_mp;
}

void nx_fs_privs_release(void)
{
	if (P.sock >= 0) {
		nx_cred_helper_set_runner(NULL);
		close(P.sock); /* the outside helper's end of stream: it exits */
		P.sock = -1;
	}
	if (P.pid > 0) {
		while (waitpid(P.pid, NULL, 0) < 0 && errno == EINTR)
			;
		P.pid = -1;
	}
}

/* ------------------------------------------------------------ Landlock */

static int ll_abi(void)
{
	long v = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);

	return v < 0 ? -errno : (int)v;
}

/* Adds "@allowed beneath @path"; a path that does not exist is skipped. */
static int ll_allow(int rs, const char *path, uint64_t allowed, uint64_t handled)
{
	struct landlock_path_beneath_attr pb;
	int fd = open(path, O_PATH | O_CLOEXEC), r = 0;
	struct stat st;

	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	if (fstat(fd, &st) == 0 && !S_ISDIR(st.st_mode))
		allowed &= LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_TRUNCATE |
			   LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_EXECUTE;
	pb.allowed_access = allowed & handled;
	pb.parent_fd = fd;
	if (syscall(SYS_landlock_add_rule, rs, LANDLOCK_RULE_PATH_BENEATH, &pb, 0) < 0)
		r = -errno;
	close(fd);
	return r;
}

/* The directory part of @file into @dir. */
static void dir_of(const char *file, char *dir, size_t cap)
{
	const char *slash = strrchr(file, '/');

	if (!slash)
		snprintf(dir, cap, ".");
	else if (slash == file)
		snprintf(dir, cap, "/");
	else
		snprintf(dir, cap, "%.*s", (int)(slash - file), file);
}

/* Builds the ruleset (not yet enforced): its fd, or -errno with *why. */
static int ll_build(const struct nx_privs_conf *c, int abi, const char **why)
{
	struct nx_ll_ruleset_attr a;
	size_t asz;
	char dir[PATH_MAX];
	uint64_t fs;
	int rs, r;

	memset(&a, 0, sizeof(a));
	fs = LL_WRITES;
	if (abi < 3)
		fs &= ~LANDLOCK_ACCESS_FS_TRUNCATE;
	a.handled_access_fs = fs;
	asz = sizeof(a.handled_access_fs);
	if (abi >= 4) {
		a.handled_access_net = NX_LL_NET_BIND_TCP; /* and no rule: no bind */
		asz += sizeof(a.handled_access_net);
	}
	if (abi >= 6) {
		a.scoped = NX_LL_SCOPE_SIGNAL;
		asz += sizeof(a.scoped);
	}
	rs = (int)syscall(SYS_landlock_create_ruleset, &a, asz, 0);
	if (rs < 0) {
		*why = "the kernel did not accept the ruleset";
		return -errno;
	}
	r = ll_allow(rs, c->cache_dir, fs, fs);
	if (r == 0 && nx_restart_sock_dir(dir, sizeof(dir)) == 0)
		r = ll_allow(rs, dir, LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_REMOVE_FILE,
			     fs);
	/* files written as tmp + rename in their directory */
	for (int i = 0; i < 2 && r == 0; i++) {
		const char *f = i == 0 ? c->metrics : c->profile_record;

		if (!f)
			continue;
		dir_of(f, dir, sizeof(dir));
		r = ll_allow(rs, dir, LANDLOCK_ACCESS_FS_MAKE_REG | LANDLOCK_ACCESS_FS_WRITE_FILE |
			     LANDLOCK_ACCESS_FS_REMOVE_FILE | LANDLOCK_ACCESS_FS_TRUNCATE, fs);
	}
	/* /dev/null: stdio after daemonizing; the bdi: the mount's readahead,
	 * set after INIT. Not /dev/fuse: the session loop reads and writes the
	 * one descriptor opened before the mount, and a takeover successor is
	 * handed that descriptor, so nothing opens the device afterwards. */
	if (r == 0)
		r = ll_allow(rs, "/dev/null", LANDLOCK_ACCESS_FS_WRITE_FILE |
			     LANDLOCK_ACCESS_FS_TRUNCATE, fs);
	if (r == 0)
		r = ll_allow(rs, "/sys/devices/virtual/bdi", LANDLOCK_ACCESS_FS_WRITE_FILE |
			     LANDLOCK_ACCESS_FS_TRUNCATE, fs);
	if (r < 0) {
		close(rs);
		*why = "a rule could not be added";
		return r;
	}
	return rs;
}

/* ------------------------------------------------------------ applying */

static int thread_count(void)
{
	char line[128];
	int n = -1;
	FILE *f = fopen("/proc/self/status", "re");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Threads: %d", &n) == 1)
			break;
	fclose(f);
	return n;
}

/* Whether uid 0 needs CAP_DAC_OVERRIDE to create files in @dir. */
static int needs_dac_override(const char *dir)
{
	struct stat st;

	if (stat(dir, &st) < 0)
		return 0;
	return !((st.st_uid == 0 && (st.st_mode & S_IWUSR) && (st.st_mode & S_IXUSR)) ||
		 (st.st_gid == 0 && (st.st_mode & S_IWGRP) && (st.st_mode & S_IXGRP)) ||
		 ((st.st_mode & S_IWOTH) && (st.st_mode & S_IXOTH)));
}

/* The test hook: NIXOCI_TEST_SANDBOX_PROBE=FILE makes the daemon try to
 * create FILE once sandboxed, and log what happened (tests only). */
static void test_probe(void)
{
	const char *p = getenv("NIXOCI_TEST_SANDBOX_PROBE");
	int fd;

	if (!p || !*p)
		return;
	fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd >= 0) {
		close(fd);
		unlink(p);
	}
	nx_log(NX_LOG_NOTICE, "sandbox probe: creating %s: %s", p,
	       fd >= 0 ? "created" : strerror(errno));
}

#define SAY(...)                                                                            \
	do {                                                                                 \
		size_t l_ = strlen(P.summary);                                               \
		snprintf(P.summary + l_, sizeof(P.summary) - l_, __VA_ARGS__);               \
	} while (0)

static int apply(const struct nx_privs_conf *c);

int nx_fs_privs_apply(const struct nx_privs_conf *c)
{
	int r = apply(c);

	test_probe();
	return r;
}

static int apply(const struct nx_privs_conf *c)
{
	uint64_t keep = 0, eff = 0;
	const char *why = NULL;
	char dir[PATH_MAX];
	int abi, nthreads, setpcap, rs = -1, r;

	P.summary[0] = '\0';
	snprintf(out_mp, sizeof(out_mp), "%s", c->mountpoint ? c->mountpoint : "");
	if (c->mode == NX_SANDBOX_OFF) {
		SAY("sandbox: off (-o sandbox=off): the daemon keeps every privilege it was "
		    "started with");
		return 0;
	}
	if (geteuid() != 0) {
		SAY("sandbox: not applied: uid %u has no capabilities to drop, and "
		    "no_new_privs or landlock would keep fusermount3 from unmounting",
		    (unsigned)geteuid());
		return 0;
	}
	nthreads = thread_count();
	if (nthreads != 1) {
		SAY("sandbox: not applied: %d threads already run (capabilities and landlock "
		    "belong to a thread)", nthreads);
		return 0;
	}
	/* A service manager may have bounded the capabilities already
	 * (CapabilityBoundingSet= without CAP_SETPCAP): then the bounding set
	 * and the securebits stay as it left them, the rest is done. */
	setpcap = !!(caps_effective() & CAPBIT(CAP_SETPCAP));
	if (c->keep_sys_admin)
		keep |= CAPBIT(CAP_SYS_ADMIN);
	for (int i = 0; i < 2; i++) {
		const char *f = i == 0 ? c->metrics : c->profile_record;

		if (!f || (keep & CAPBIT(CAP_DAC_OVERRIDE)))
			continue;
		dir_of(f, dir, sizeof(dir));
		if (needs_dac_override(dir))
			keep |= eff |= CAPBIT(CAP_DAC_OVERRIDE);
	}

	/* the children of this process (the outside helper's, so credential
	 * helpers) never gain a capability from running as uid 0 */
	if (setpcap &&
	    prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED |
		  SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED, 0, 0, 0) < 0) {
		SAY("sandbox: not applied: securebits: %s", strerror(errno));
		return 0;
	}
	/* Unmounting needs CAP_SYS_ADMIN effective and no Landlock domain:
	 * from here on it is the outside helper's, or nothing is dropped. */
	r = outside_start(c->mountpoint);
	if (r < 0) {
		SAY("sandbox: not applied: the outside helper (which unmounts) could not "
		    "start: %s", strerror(-r));
		return 0;
	}
	P.active = 1;
	nx_cred_helper_set_runner(&out_runner);
	abi = ll_abi();
	if (abi >= 2) {
		rs = ll_build(c, abi, &why);
		if (rs < 0)
			abi = rs;
	} else {
		why = abi == 1 ? "the kernel's landlock ABI 1 cannot allow the cache's renames" :
		      abi == -EOPNOTSUPP ? "landlock is disabled in this kernel" :
					   "the kernel has no landlock";
	}
	r = caps_reduce(keep, eff, setpcap);
	if (r < 0) {
		SAY("sandbox: capabilities kept (%s); ", strerror(-r));
	} else if (!keep) {
		SAY("sandbox: every capability dropped%s; ",
		    setpcap ? "" : " (the bounding set as the service manager left it)");
	} else {
		SAY("sandbox: capabilities dropped but");
		if (keep & CAPBIT(CAP_SYS_ADMIN))
			SAY(" cap_sys_admin (permitted, raised only to register passthrough "
			    "backing files)");
		if (keep & CAPBIT(CAP_DAC_OVERRIDE))
			SAY("%s cap_dac_override (the output directory %.200s is not writable "
			    "by root's mode bits)", keep & CAPBIT(CAP_SYS_ADMIN) ? "," : "", dir);
		SAY("%s; ", setpcap ? "" : " (the bounding set as the service manager left it)");
	}
	P.kept = r < 0 ? 0 : keep;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		SAY("no_new_privs not set (%s); ", strerror(errno));
		if (rs >= 0)
			close(rs);
		rs = -1;
		why = "no_new_privs could not be set";
	} else {
		SAY("no_new_privs; ");
	}
	if (rs >= 0 && syscall(SYS_landlock_restrict_self, rs, 0) < 0) {
		SAY("landlock not applied (%s)", strerror(errno));
		close(rs);
		rs = -1;
	} else if (rs >= 0) {
		close(rs);
		SAY("landlock ABI %d: writes only in the cache, the takeover socket directory%s%s, "
		    "/dev/null and the bdi readahead%s%s; ", abi,
		    c->metrics ? ", the metrics directory" : "",
		    c->profile_record ? ", the profile_record directory" : "",
		    abi >= 4 ? "; no TCP port bound" : "",
		    abi >= 6 ? "; no signal outside the sandbox" : "");
	} else {
		SAY("landlock not applied: %s; ", why ? why : "unknown reason");
	}
	SAY("unmount and credential helpers through the outside helper (pid %ld)", (long)P.pid);
	return 0;
}

const char *nx_fs_privs_summary(void)
{
	return P.summary;
}
