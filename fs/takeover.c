/*
 * fs/takeover.c: live restart. A running nixoci-fs hands its /dev/fuse
 * connection to a successor, so the mount never goes away (docs/reliability.md).
 *
 * What is handed over, and why it is enough
 * -----------------------------------------
 *  - The /dev/fuse descriptor, as SCM_RIGHTS over a unix socket. The kernel
 *    keeps the mount while any process holds that open file; a dup held by
 *    the supervisor (supervise.c) keeps it across kill -9.
 *  - What the kernel negotiated: the raw FUSE_INIT request and our raw reply
 *    (struct nx_session). The successor's libfuse session never sees an
 *    INIT (the kernel sends it once per connection) and would answer every
 *    request with EIO. So the successor's read callback first returns a
 *    synthetic FUSE_INIT built from the kernel's original request; libfuse
 *    runs do_init exactly as it did for the predecessor (same protocol minor,
 *    same offered flags, same max_readahead), and the reply it builds is
 *    swallowed by our writev instead of reaching the kernel, which would not
 *    know its unique. The two replies are compared: any difference (a newer
 *    version that would want other settings) is logged, because the kernel
 *    keeps what it agreed to at mount.
 *  - The store paths the kernel may hold inode numbers of. Inode numbers are
 *    (path id << 24) | TOC entry, the id a pure function of the path's hash
 *    part, so the successor gives the same numbers, but it can only decode
 *    ids of paths it has loaded. Every path looked up through the root is
 *    appended to <cache>/mounted-paths before its entry reaches the kernel;
 *    a successor loads them all (from the cache: no registry needed) before
 *    it serves. A fresh mount truncates the file.
 *  - A generation number. fi->fh of an open file or root directory is a
 *    pointer into the daemon that opened it; RELEASE, READ or READDIR of
 *    such a handle reaching a successor must not be dereferenced. Handles
 *    carry the generation in their top 16 bits (user pointers on x86-64 and
 *    arm64 use 48 bits); a foreign generation means "opened by a
 *    predecessor": reads go on without readahead state, releases free
 *    nothing, root listings are taken again.
 *
 * Stopping the predecessor without losing a request
 * -------------------------------------------------
 * libfuse drops a request it read after the session was told to exit, so the
 * old daemon must stop *reading* before it stops. The fd is non-blocking and
 * every reader polls it together with an eventfd; a reader counts itself
 * busy before it reads and stays busy until it comes back for the next
 * request (libfuse processes a request in the thread that read it; a thread
 * that exits while busy is uncounted by a thread-specific destructor). To
 * stop: set "stopping", wake everyone, wait until nobody is busy (every
 * request read has been answered), then let the parked readers return
 * ENODEV, which ends the session loop like an unmount. The old daemon then
 * closes its store and cache lock, tells the successor, and exits without
 * unmounting.
 *
 * After a crash (supervised), the requests the dead daemon had read but not
 * answered are still on the kernel's processing list: FUSE_NOTIFY_RESEND
 * (Linux >= 6.9) puts them back on the pending list, with the high bit of
 * their unique set, and the successor answers them. Without it they would
 * wait forever; the daemon says so at startup.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fuse.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs_i.h"

/* From the kernel's include/uapi/linux/fuse.h (protocol 7.40, Linux 6.9);
 * Debian 12's <linux/fuse.h> (7.38) has neither. */
#ifndef FUSE_HAS_RESEND
#define FUSE_HAS_RESEND (1ULL << 39) /* INIT flags: the kernel can resend */
#endif
#define NX_FUSE_NOTIFY_RESEND 7 /* enum fuse_notify_code: FUSE_NOTIFY_RESEND */

#define HO_MAGIC "NXOCIHO1"
#define PATHS_FILE "mounted-paths"
#define SYNTH_UNIQUE 2 /* never reaches the kernel */

/* ---------------------------------------------------------- the state */

static struct {
	int mode;            /* NX_START_* */
	int fuse_fd;         /* the adopted connection, -1 */
	int conn;            /* takeover: the socket to the predecessor; old: to the successor */
	int keeper;          /* the supervisor's socket, -1 */
	unsigned gen;        /* 1..65535: this daemon's handle tag */
	struct nx_ho_msg *got; /* what the predecessor (or keeper) sent */
	int synth_pending;   /* the synthetic INIT is still to be read */
	int stop_efd;        /* eventfd: readers wake up and look at stopping */
	int stopping, released, handed_over;
	long busy;           /* readers holding a request not yet answered */
	pthread_key_t busy_key;
	int listen_fd;
	pthread_t listener;
	int listening;
	char sock_path[108];
	char *mountpoint;
	struct nx_session *sess;
	char **argv;         /* this daemon's command line, for a successor */
	int argc;
	/* the open-modes journal */
	int modes_fd;
	/* the paths journal */
	int paths_fd;
	pthread_mutex_t paths_lock;
	uint64_t *noted;     /* open addressing set of ids, 0 = empty */
	size_t noted_cap, noted_n;
} R = { .fuse_fd = -1, .conn = -1, .keeper = -1, .gen = 1, .stop_efd = -1,
	.listen_fd = -1, .paths_fd = -1, .modes_fd = -1, .paths_lock = PTHREAD_MUTEX_INITIALIZER };

int nx_restart_mode(void)
{
	return R.mode;
}

long nx_restart_main_pid(void)
{
	return R.keeper >= 0 ? (long)getppid() : (long)getpid();
}

/* ------------------------------------------------------- the messages */

void nx_ho_msg_init(struct nx_ho_msg *m, uint32_t kind)
{
	memset(m, 0, sizeof(*m));
	memcpy(m->magic, HO_MAGIC, sizeof(m->magic));
	m->version = NX_HO_VERSION;
	m->kind = kind;
}

int nx_ho_msg_check(const struct nx_ho_msg *m, size_t len)
{
	if (len < offsetof(struct nx_ho_msg, argv) || memcmp(m->magic, HO_MAGIC, sizeof(m->magic)))
		return -EPROTO;
	if (m->version != NX_HO_VERSION)
		return -EPROTONOSUPPORT;
	if (m->init_in_len > sizeof(m->init_in) || m->init_out_len > sizeof(m->init_out) ||
	    m->argv_len > sizeof(m->argv) || m->argc > NX_HO_MAX_ARGS ||
	    len < offsetof(struct nx_ho_msg, argv) + m->argv_len)
		return -EPROTO;
	if (m->argv_len && m->argv[m->argv_len - 1] != '\0')
		return -EPROTO;
	return 0;
}

/* Sends @m (trimmed to its used argv) with @fd attached when >= 0. */
int nx_ho_send(int sock, const struct nx_ho_msg *m, int fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { (void *)m, offsetof(struct nx_ho_msg, argv) + m->argv_len };
	struct msghdr mh;
	ssize_t n;

	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	if (fd >= 0) {
		struct cmsghdr *c;

		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof(cbuf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	do
		n = sendmsg(sock, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return (size_t)n == iov.iov_len ? 0 : -EIO;
}

/* Receives one message into @m; *fd gets an attached descriptor or -1.
 * -ECONNRESET on end of stream. */
int nx_ho_recv(int sock, struct nx_ho_msg *m, int *fd)
{
	char cbuf[CMSG_SPACE(sizeof(int) * 4)];
	struct iovec iov = { m, sizeof(*m) };
	struct msghdr mh;
	struct cmsghdr *c;
	ssize_t n;
	int r;

	*fd = -1;
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cbuf;
	mh.msg_controllen = sizeof(cbuf);
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (n == 0)
		return -ECONNRESET;
	for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			int f;

			memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (*fd < 0)
				*fd = f;
			else
				close(f); /* more than we asked for */
		}
	}
	r = (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ? -EPROTO : nx_ho_msg_check(m, (size_t)n);
	if (r < 0 && *fd >= 0) {
		close(*fd);
		*fd = -1;
	}
	return r;
}

/* The state message of this daemon: INIT as negotiated, generation, argv. */
static int state_msg(struct nx_ho_msg *m, uint32_t kind)
{
	struct nx_session *s = R.sess;
	size_t off = 0;
	int i;

	nx_ho_msg_init(m, kind);
	m->gen = R.gen;
	m->init_in_len = s->init_in_len;
	memcpy(m->init_in, s->init_in, s->init_in_len);
	m->init_out_len = s->init_out_len;
	memcpy(m->init_out, s->init_out, s->init_out_len);
	m->supervisor = R.keeper >= 0 ? (int32_t)getppid() : 0;
	for (i = 0; i < R.argc && i < NX_HO_MAX_ARGS; i++) {
		size_t l = strlen(R.argv[i]) + 1;

		if (off + l > sizeof(m->argv))
			return -E2BIG;
		memcpy(m->argv + off, R.argv[i], l);
		off += l;
	}
	m->argc = (uint32_t)i;
	m->argv_len = (uint32_t)off;
	return 0;
}

/* ------------------------------------------------- where the socket is */

/* The socket's directory: /run/nixoci for root, else the user's runtime
 * directory; created 0700 and refused unless it is ours and private. */
int nx_restart_sock_dir(char *out, size_t cap)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	struct stat st;

	if (getuid() == 0)
		snprintf(out, cap, "/run/nixoci");
	else if (xdg && *xdg == '/')
		snprintf(out, cap, "%s/nixoci", xdg);
	else
		snprintf(out, cap, "/tmp/nixoci-%u", (unsigned)getuid());
	if (getuid() == 0)
		mkdir("/run", 0755);
	if (mkdir(out, 0700) < 0 && errno != EEXIST)
		return -errno;
	if (lstat(out, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 077)) {
		nx_log(NX_LOG_ERR, "%s must be a directory owned by uid %u with mode 0700; "
		       "remove it and try again", out, (unsigned)getuid());
		return -EPERM;
	}
	return 0;
}

/* The canonical mountpoint (its parent resolved, the last component as
 * given: stat'ing the mountpoint itself would ask the daemon). */
char *nx_restart_canon_mountpoint(const char *mp)
{
	char buf[PATH_MAX], *dup, *slash, *par, *res;
	const char *base;
	size_t n;

	n = strlen(mp);
	if (n == 0 || n >= sizeof(buf))
		return NULL;
	memcpy(buf, mp, n + 1);
	while (n > 1 && buf[n - 1] == '/')
		buf[--n] = '\0';
	slash = strrchr(buf, '/');
	if (!slash) {
		par = realpath(".", NULL);
		base = buf;
	} else if (slash == buf) {
		par = strdup("/");
		base = buf[1] ? buf + 1 : NULL;
	} else {
		*slash = '\0';
		par = realpath(buf, NULL);
		base = slash + 1;
	}
	if (!par)
		return NULL;
	if (!base) {
		return par;
	}
	n = strlen(par) + strlen(base) + 2;
	res = malloc(n);
	if (res)
		snprintf(res, n, "%s%s%s", par, strcmp(par, "/") ? "/" : "", base);
	free(par);
	dup = res;
	return dup;
}

/* <dir>/<16 hex of SHA-256(canonical mountpoint)>.sock */
static int sock_path(const char *mp, char *out, size_t cap)
{
	uint8_t h[NX_SHA256_LEN];
	char dir[80], hex[2 * NX_SHA256_LEN + 1];
	int r = nx_restart_sock_dir(dir, sizeof(dir));

	if (r < 0)
		return r;
	nx_sha256(mp, strlen(mp), h);
	nx_hex(h, 8, hex);
	if ((size_t)snprintf(out, cap, "%s/%s.sock", dir, hex) >= cap)
		return -ENAMETOOLONG;
	return 0;
}

/* --------------------------------------------- the successor's start */

static int connect_to(const char *path)
{
	struct sockaddr_un sa;
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	if (s < 0)
		return -errno;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;

		close(s);
		return -e;
	}
	return s;
}

static int peer_is_us(int sock)
{
	struct ucred uc;
	socklen_t l = sizeof(uc);

	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &uc, &l) < 0)
		return 0;
	return uc.uid == getuid() || uc.uid == 0;
}

/* Asks the daemon on @mp for its connection. 0 (R.got, R.fuse_fd, R.conn
 * set), 1 when the daemon is supervised and the supervisor was asked
 * instead, or -errno (logged). */
static int take_from(const char *mp, int from_supervisor)
{
	struct nx_ho_msg *m;
	char *canon;
	int s = -1, fd = -1, r;

	canon = nx_restart_canon_mountpoint(mp);
	if (!canon) {
		nx_log(NX_LOG_ERR, "takeover: cannot resolve the mountpoint %s", mp);
		return -ENOENT;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		free(canon);
		return -ENOMEM;
	}
	r = sock_path(canon, R.sock_path, sizeof(R.sock_path));
	if (r < 0)
		goto fail;
	s = connect_to(R.sock_path);
	if (s < 0) {
		r = s;
		s = -1;
		nx_log(NX_LOG_ERR, "takeover: no nixoci-fs answers for %s (%s: %s); is it mounted, "
		       "by a nixoci-fs that can hand over (>= this version)?", canon,
		       R.sock_path, strerror(-r));
		goto fail;
	}
	if (!peer_is_us(s)) {
		r = -EPERM;
		nx_log(NX_LOG_ERR, "takeover: %s belongs to another user", R.sock_path);
		goto fail;
	}
	nx_ho_msg_init(m, NX_HO_TAKE);
	m->supervisor = from_supervisor;
	r = nx_ho_send(s, m, -1);
	if (r == 0)
		r = nx_ho_recv(s, m, &fd);
	if (r < 0) {
		nx_log(NX_LOG_ERR, "takeover: the daemon on %s did not answer: %s", canon,
		       strerror(-r));
		goto fail;
	}
	if (m->kind == NX_HO_REFUSED && m->supervisor > 0) {
		/* The supervisor starts the successor, so it keeps supervising. */
		if (kill((pid_t)m->supervisor, SIGHUP) < 0) {
			r = -errno;
			nx_log(NX_LOG_ERR, "takeover: cannot signal the supervisor (pid %d): %s",
			       (int)m->supervisor, strerror(-r));
			goto fail;
		}
		nx_log(NX_LOG_NOTICE, "the daemon on %s is supervised: asked its supervisor "
		       "(pid %d) to restart it", canon, (int)m->supervisor);
		r = 1;
		goto fail;
	}
	if (m->kind != NX_HO_STATE || fd < 0) {
		r = -EPROTO;
		nx_log(NX_LOG_ERR, "takeover: the daemon on %s refused (%s)", canon,
		       m->kind == NX_HO_REFUSED ? "it has not finished mounting" : "bad answer");
		goto fail;
	}
	R.got = m;
	R.fuse_fd = fd;
	R.conn = s;
	R.gen = m->gen % 65535 + 1;
	free(canon);
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	if (s >= 0)
		close(s);
	free(canon);
	free(m);
	return r;
}

/* Replaces the command line by the predecessor's, keeping -f only if the
 * takeover command itself has it (the successor of a foreground daemon
 * started from a shell should still daemonize). */
static char opt_f[] = "-f";

static int adopt_argv(int *argc, char ***argv, int foreground)
{
	const char *p = R.got->argv;
	char **v = calloc(R.got->argc + 2, sizeof(*v));
	uint32_t i;
	int n = 0;

	if (!v)
		return -ENOMEM;
	v[n++] = (*argv)[0];
	if (foreground)
		v[n++] = opt_f;
	for (i = 0; i < R.got->argc; i++) {
		size_t l = strlen(p);

		if (i > 0 && strcmp(p, "-f") != 0)
			v[n++] = (char *)p;
		p += l + 1;
	}
	v[n] = NULL;
	*argc = n;
	*argv = v; /* lives as long as the process: R.got is never freed */
	return 0;
}

static int env_fd(const char *name)
{
	const char *v = getenv(name);
	char *end;
	long l;

	if (!v)
		return -1;
	l = strtol(v, &end, 10);
	unsetenv(name);
	if (*end || l < 3 || l > INT_MAX)
		return -1;
	fcntl((int)l, F_SETFD, FD_CLOEXEC);
	return (int)l;
}

int nx_restart_prepare(int *argc, char ***argv)
{
	const char *how = getenv("NIXOCI_RESTART");
	const char *gen = getenv("NIXOCI_GEN");
	int r;

	R.keeper = env_fd("NIXOCI_KEEPER_FD");
	if (gen)
		R.gen = (unsigned)strtoul(gen, NULL, 10) % 65535 + 1;
	unsetenv("NIXOCI_GEN");
	unsetenv("NIXOCI_RESTART");

	if (*argc >= 2 && strcmp((*argv)[1], "--takeover") == 0) {
		int fg = 0, i;
		const char *mp = NULL;

		for (i = 2; i < *argc; i++) {
			if (strcmp((*argv)[i], "-f") == 0)
				fg = 1;
			else if (!mp && (*argv)[i][0] != '-')
				mp = (*argv)[i];
			else {
				nx_log(NX_LOG_ERR, "usage: nixoci-fs --takeover [-f] MOUNTPOINT");
				return -EINVAL;
			}
		}
		if (!mp) {
			nx_log(NX_LOG_ERR, "usage: nixoci-fs --takeover [-f] MOUNTPOINT");
			return -EINVAL;
		}
		r = take_from(mp, 0);
		if (r != 0)
			return r < 0 ? r : NX_START_DONE;
		r = adopt_argv(argc, argv, fg);
		if (r < 0)
			return r;
		R.mode = NX_START_TAKEOVER;
		nx_log(NX_LOG_INFO, "took the fuse connection of %s (protocol 7.%u) from its "
		       "daemon; waiting for it to finish its requests", mp,
		       ((const struct fuse_init_in *)R.got->init_in)->minor);
		return R.mode;
	}
	if (!how || R.keeper < 0)
		return R.mode = NX_START_MOUNT;
	if (strcmp(how, "resume") == 0) {
		/* The supervisor sends what its last daemon registered. */
		struct nx_ho_msg *m = calloc(1, sizeof(*m));
		int fd = -1;

		if (!m)
			return -ENOMEM;
		r = nx_ho_recv(R.keeper, m, &fd);
		if (r == 0 && (m->kind != NX_HO_STATE || fd < 0))
			r = -EPROTO;
		if (r < 0) {
			nx_log(NX_LOG_ERR, "resume: no connection from the supervisor: %s",
			       strerror(-r));
			if (fd >= 0)
				close(fd);
			free(m);
			return r;
		}
		R.got = m;
		R.fuse_fd = fd;
		return R.mode = NX_START_RESUME;
	}
	if (strcmp(how, "takeover") == 0) {
		/* argv is ours already; the mountpoint is its last argument */
		r = take_from((*argv)[*argc - 1], 1);
		if (r != 0)
			return r < 0 ? r : -EPROTO;
		R.gen = (unsigned)strtoul(gen ? gen : "0", NULL, 10) % 65535 + 1;
		return R.mode = NX_START_TAKEOVER;
	}
	return R.mode = NX_START_MOUNT;
}

int nx_restart_wait_old(void)
{
	struct nx_ho_msg m;
	int fd = -1, r;

	if (R.mode != NX_START_TAKEOVER)
		return 0;
	r = nx_ho_recv(R.conn, &m, &fd);
	if (fd >= 0)
		close(fd);
	close(R.conn);
	R.conn = -1;
	if (r == 0 && m.kind != NX_HO_DONE)
		r = -EPROTO;
	if (r < 0) {
		/* It exited without saying DONE: crashed while finishing. Its
		 * lock is gone with it; what it had read is resent below. */
		nx_log(NX_LOG_WARNING, "takeover: the old daemon ended without finishing "
		       "cleanly (%s); its unanswered requests will be resent", strerror(-r));
	}
	return 0;
}

/* --------------------------------------------------- session i/o hooks */

static void busy_gone(void *v)
{
	if (v)
		__atomic_fetch_sub(&R.busy, 1, __ATOMIC_SEQ_CST);
}

static pthread_once_t busy_once = PTHREAD_ONCE_INIT;
static int busy_key_ok;

/*
 * Each reader waits in an epoll set of its own, holding the connection
 * with EPOLLEXCLUSIVE: a request wakes one idle reader, not all of them. With
 * poll(), every request woke every idle worker (libfuse keeps up to
 * max_threads) and all but one went back to sleep with EAGAIN: ten context
 * switches per request on a host whose cores are busy with the containers
 * the mount serves. The stop eventfd is in every set without the flag, so
 * stopping still wakes every reader. A thread that cannot make its set polls.
 */
static pthread_key_t ep_key;
static int ep_key_ok;
static __thread int ep_fd = -1, ep_for = -1;

static void ep_gone(void *v)
{
	if (v)
		close((int)(intptr_t)v - 1);
}

static void busy_key_init(void)
{
	busy_key_ok = pthread_key_create(&R.busy_key, busy_gone) == 0;
	ep_key_ok = pthread_key_create(&ep_key, ep_gone) == 0;
}

/* This thread's epoll set over @fd and the stop eventfd; -1: poll instead. */
static int reader_epoll(int fd)
{
	struct epoll_event ev;
	int ep;

	if (ep_fd >= 0 && ep_for == fd)
		return ep_fd;
	if (!ep_key_ok || ep_fd >= 0 || R.stop_efd < 0)
		return -1; /* one set per thread; a second fd polls */
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		return -1;
	memset(&ev, 0, sizeof(ev));
	ev.events = EPOLLIN | EPOLLEXCLUSIVE;
	ev.data.fd = fd;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		goto fail;
	ev.events = EPOLLIN;
	ev.data.fd = R.stop_efd;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, R.stop_efd, &ev) < 0)
		goto fail;
	if (pthread_setspecific(ep_key, (void *)(intptr_t)(ep + 1)) != 0)
		goto fail;
	ep_fd = ep;
	ep_for = fd;
	return ep;
fail:
	close(ep);
	return -1;
}

int nx_restart_io_init(struct nx_session *s)
{
	int fl;

	R.sess = s;
	pthread_once(&busy_once, busy_key_init);
	if (!busy_key_ok)
		return -ENOMEM;
	R.stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (R.stop_efd < 0)
		return -errno;
	/* Readers poll, so a reader that lost the race for a request must not
	 * block in read() (see "Stopping the predecessor" above). The flag is
	 * on the open file, shared with successors, which poll too. */
	fl = fcntl(s->fd, F_GETFL);
	if (fl < 0 || fcntl(s->fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

void nx_restart_wake_readers(struct nx_session *s)
{
	uint64_t one = 1;

	__atomic_store_n(&s->exiting, 1, __ATOMIC_SEQ_CST);
	/* the eventfd is in every reader's set without EPOLLEXCLUSIVE: all wake */
	if (R.stop_efd >= 0 && write(R.stop_efd, &one, sizeof(one)) < 0) {
		/* an eventfd write of 1 cannot fail; readers also check exiting */
	}
}

static ssize_t parked(void)
{
	while (!__atomic_load_n(&R.released, __ATOMIC_SEQ_CST))
		usleep(2000); /* a cancellation point, unlike a held mutex */
	errno = ENODEV;   /* what an unmount looks like: libfuse ends the loop */
	return -1;
}

static size_t synth_init(struct nx_session *s, void *buf, size_t len)
{
	struct fuse_in_header *h = buf;
	size_t n = sizeof(*h) + R.got->init_in_len;

	if (len < n)
		return 0;
	memset(h, 0, sizeof(*h));
	h->len = (uint32_t)n;
	h->opcode = FUSE_INIT;
	h->unique = SYNTH_UNIQUE;
	memcpy((uint8_t *)buf + sizeof(*h), R.got->init_in, R.got->init_in_len);
	return n;
}

ssize_t nx_restart_read(struct nx_session *s, int fd, void *buf, size_t len)
{
	struct pollfd pfd[2];
	struct epoll_event ev;
	ssize_t n;
	int e, ep;

	if (busy_key_ok && pthread_getspecific(R.busy_key)) {
		/* back for more: the previous request has been answered */
		pthread_setspecific(R.busy_key, NULL);
		__atomic_fetch_sub(&R.busy, 1, __ATOMIC_SEQ_CST);
	}
	if (R.got && __atomic_exchange_n(&R.synth_pending, 0, __ATOMIC_SEQ_CST))
		return (ssize_t)synth_init(s, buf, len);
	/* No real request before libfuse has taken the synthetic INIT: it
	 * would answer EIO. */
	while (R.got && !__atomic_load_n(&s->init_done, __ATOMIC_ACQUIRE) &&
	       !__atomic_load_n(&s->exiting, __ATOMIC_SEQ_CST))
		usleep(1000);
	for (;;) {
		/* The session is ending (session.c's loop): leave without
		 * reading; libfuse sees its session exited and ends the worker. */
		if (__atomic_load_n(&s->exiting, __ATOMIC_SEQ_CST)) {
			errno = EINTR;
			return -1;
		}
		if (__atomic_load_n(&R.stopping, __ATOMIC_SEQ_CST))
			return parked();
		ep = reader_epoll(fd);
		if (ep >= 0) {
			if (epoll_wait(ep, &ev, 1, -1) < 0 && errno != EINTR)
				return -1;
		} else {
			pfd[0].fd = fd;
			pfd[0].events = POLLIN;
			pfd[1].fd = R.stop_efd;
			pfd[1].events = POLLIN;
			if (poll(pfd, R.stop_efd >= 0 ? 2 : 1, -1) < 0 && errno != EINTR)
				return -1;
		}
		__atomic_fetch_add(&R.busy, 1, __ATOMIC_SEQ_CST);
		if (__atomic_load_n(&R.stopping, __ATOMIC_SEQ_CST)) {
			__atomic_fetch_sub(&R.busy, 1, __ATOMIC_SEQ_CST);
			return parked();
		}
		n = read(fd, buf, len);
		if (n > 0) {
			if (busy_key_ok)
				pthread_setspecific(R.busy_key, (void *)1);
			else
				__atomic_fetch_sub(&R.busy, 1, __ATOMIC_SEQ_CST);
			return n;
		}
		e = errno;
		__atomic_fetch_sub(&R.busy, 1, __ATOMIC_SEQ_CST);
		if (n < 0 && (e == EAGAIN || e == EINTR))
			continue;
		errno = e;
		return n;
	}
}

static const char *init_field_diff(const uint8_t *a, const uint8_t *b, size_t n)
{
	static const struct {
		size_t off, len;
		const char *name;
	} f[] = {
		{ offsetof(struct fuse_init_out, minor), 4, "protocol minor" },
		{ offsetof(struct fuse_init_out, max_readahead), 4, "max_readahead" },
		{ offsetof(struct fuse_init_out, flags), 4, "flags" },
		{ offsetof(struct fuse_init_out, max_background), 2, "max_background" },
		{ offsetof(struct fuse_init_out, congestion_threshold), 2, "congestion_threshold" },
		{ offsetof(struct fuse_init_out, max_write), 4, "max_write" },
		{ offsetof(struct fuse_init_out, time_gran), 4, "time_gran" },
		{ offsetof(struct fuse_init_out, max_pages), 2, "max_pages" },
		{ offsetof(struct fuse_init_out, flags2), 4, "flags2" },
	};
	size_t i;

	for (i = 0; i < sizeof(f) / sizeof(f[0]); i++)
		if (f[i].off + f[i].len <= n && memcmp(a + f[i].off, b + f[i].off, f[i].len))
			return f[i].name;
	return memcmp(a, b, n) ? "another field" : NULL;
}

int nx_restart_swallow(struct nx_session *s, const struct iovec *iov, int count)
{
	const struct fuse_out_header *h;
	const char *diff;
	uint64_t old_flags;
	const uint8_t *o;

	if (!R.got || count < 1 || iov[0].iov_len < sizeof(*h))
		return 0;
	h = iov[0].iov_base;
	if (h->unique != SYNTH_UNIQUE || s->init_unique != SYNTH_UNIQUE)
		return 0;
	/* Our replayed INIT: the kernel agreed to the predecessor's reply. */
	o = R.got->init_out;
	if (h->error != 0) {
		nx_log(NX_LOG_ERR, "takeover: libfuse refused the replayed INIT (%d)", h->error);
	} else {
		diff = s->init_out_len != R.got->init_out_len ? "its size" :
		       init_field_diff(s->init_out, o, s->init_out_len);
		if (diff)
			nx_log(NX_LOG_WARNING, "takeover: this version would negotiate another "
			       "%s than the mount did; the kernel keeps the mount's", diff);
	}
	old_flags = 0;
	if (R.got->init_out_len >= offsetof(struct fuse_init_out, flags) + 4) {
		uint32_t lo, hi = 0;

		memcpy(&lo, o + offsetof(struct fuse_init_out, flags), 4);
		if (R.got->init_out_len >= offsetof(struct fuse_init_out, flags2) + 4)
			memcpy(&hi, o + offsetof(struct fuse_init_out, flags2), 4);
		old_flags = lo | ((uint64_t)hi << 32);
	}
	/* What the kernel really does is what the mount negotiated. */
	s->flags_out = old_flags;
	s->parallel_dirops = !!(old_flags & FUSE_PARALLEL_DIROPS);
	if (!(old_flags & (1ULL << 37))) /* FUSE_PASSTHROUGH, see session.c */
		s->pt_negotiated = 0;
	if (!s->pt_negotiated && !s->pt_why)
		s->pt_why = "the mount did not negotiate it";
	memcpy(s->init_out, o, R.got->init_out_len);
	s->init_out_len = R.got->init_out_len;
	return 1;
}

void nx_restart_after_init(struct nx_session *s)
{
	struct nx_ho_msg *m;
	int resend = (s->kflags & FUSE_HAS_RESEND) != 0;

	/* What a restart can promise on this kernel and setup, said once. */
	if (R.keeper >= 0 && resend)
		nx_log(NX_LOG_NOTICE, "restart: supervised; a crashed daemon is replaced and the "
		       "kernel resends its unanswered requests: readers only wait");
	else if (R.keeper >= 0)
		nx_log(NX_LOG_NOTICE, "restart: supervised, but this kernel cannot resend "
		       "requests (needs Linux 6.9): after a crash the mount stays, but reads in "
		       "flight at that moment hang; a graceful takeover loses nothing");
	else
		nx_log(NX_LOG_NOTICE, "restart: nixoci-fs --takeover %s hands this mount to a new "
		       "daemon, readers only wait; a crash loses the mount (run it under "
		       "nixoci-fs --supervise to survive one)", R.mountpoint ? R.mountpoint : "MOUNTPOINT");
	if (R.keeper < 0)
		return;
	/* Register with the supervisor: from now on it can resume us. */
	m = malloc(sizeof(*m));
	if (!m || state_msg(m, NX_HO_STATE) < 0 || nx_ho_send(R.keeper, m, s->fd) < 0)
		nx_log(NX_LOG_WARNING, "cannot register the fuse connection with the supervisor: "
		       "a crash would lose the mount");
	free(m);
}

/* ------------------------------------------------- adopting the fd */

int nx_restart_adopt(struct nx_session *s, struct fuse_session *se, const char *probe_dir,
		     const char *mountpoint)
{
	if (R.fuse_fd < 0)
		return -EBADF;
	if (R.got->init_in_len < offsetof(struct fuse_init_in, flags) + 4 ||
	    R.got->init_out_len < offsetof(struct fuse_init_out, flags) + 4) {
		nx_log(NX_LOG_ERR, "takeover: the predecessor sent no negotiated INIT");
		return -EPROTO;
	}
	R.synth_pending = 1;
	return nx_session_adopt(s, se, R.fuse_fd, probe_dir, mountpoint);
}

void nx_restart_resend(struct nx_session *s)
{
	struct fuse_out_header h;
	const struct fuse_init_in *in;
	uint64_t offered;

	if (!R.got)
		return;
	in = (const struct fuse_init_in *)R.got->init_in;
	offered = in->flags;
	if (in->minor >= 36 && (in->flags & FUSE_INIT_EXT) &&
	    R.got->init_in_len >= offsetof(struct fuse_init_in, flags2) + 4)
		offered |= (uint64_t)in->flags2 << 32;
	memset(&h, 0, sizeof(h));
	h.len = sizeof(h);
	h.error = NX_FUSE_NOTIFY_RESEND;
	h.unique = 0; /* a notification */
	if (!(offered & FUSE_HAS_RESEND) || write(s->fd, &h, sizeof(h)) < 0) {
		if (R.mode == NX_START_RESUME)
			nx_log(NX_LOG_WARNING, "this kernel cannot resend requests "
			       "(FUSE_NOTIFY_RESEND, Linux >= 6.9): reads that were in flight "
			       "when the previous daemon died will not complete");
		else
			nx_log(NX_LOG_INFO, "this kernel cannot resend requests: a takeover is "
			       "safe only because the old daemon answered all of its own");
		return;
	}
	nx_log(NX_LOG_INFO, "asked the kernel to resend the requests in flight "
	       "(FUSE_NOTIFY_RESEND)");
}

/* --------------------------------------------------- the paths journal */

static int noted_add(uint64_t id)
{
	size_t i;

	if (R.noted_n * 2 >= R.noted_cap) {
		size_t cap = R.noted_cap ? R.noted_cap * 2 : 1024, j;
		uint64_t *t = calloc(cap, sizeof(*t));

		if (!t)
			return -ENOMEM;
		for (j = 0; j < R.noted_cap; j++) {
			if (!R.noted[j])
				continue;
			for (i = R.noted[j] % cap; t[i]; i = (i + 1) % cap)
				;
			t[i] = R.noted[j];
		}
		free(R.noted);
		R.noted = t;
		R.noted_cap = cap;
	}
	for (i = id % R.noted_cap; R.noted[i]; i = (i + 1) % R.noted_cap)
		if (R.noted[i] == id)
			return 0;
	R.noted[i] = id;
	R.noted_n++;
	return 1;
}

void nx_restart_note_path(const struct nx_spath *p)
{
	uint64_t id = nx_spath_id(p);
	const char *base = nx_spath_base(p);
	char line[NX_BASE_MAX + 2];
	size_t l = strlen(base);

	if (R.paths_fd < 0 || id == 0 || l + 2 > sizeof(line))
		return;
	pthread_mutex_lock(&R.paths_lock);
	if (noted_add(id) == 1) {
		memcpy(line, base, l);
		line[l] = '\n';
		/* one write of a short line to an O_APPEND file: whole or not at all */
		if (write(R.paths_fd, line, l + 1) != (ssize_t)(l + 1))
			nx_log(NX_LOG_WARNING, "cannot record %s in %s/" PATHS_FILE ": a "
			       "restarted daemon may answer ESTALE for it", base, "the cache");
	}
	pthread_mutex_unlock(&R.paths_lock);
}

int nx_restart_paths_open(const char *cache_dir, struct nx_store *st)
{
	char path[PATH_MAX], line[NX_BASE_MAX + 2];
	int adopted = R.mode != NX_START_MOUNT;
	size_t loaded = 0, failed = 0;
	struct timespec t0, t1;
	FILE *f;

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", cache_dir, PATHS_FILE) >= sizeof(path))
		return -ENAMETOOLONG;
	R.paths_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | (adopted ? 0 : O_TRUNC),
			  0600);
	if (R.paths_fd < 0) {
		int e = errno;

		nx_log(NX_LOG_WARNING, "cannot open %s: %s; the daemon cannot be restarted "
		       "without ESTALE errors", path, strerror(e));
		return -e;
	}
	if (!adopted)
		return 0;
	/* The kernel may hold inode numbers of every path listed: load them
	 * all before serving (from the cache; the registry may be down). */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	f = fopen(path, "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		struct nx_spath *p;
		size_t l = strcspn(line, "\n");

		line[l] = '\0';
		if (l == 0)
			continue;
		if (nx_store_lookup(st, line, l, &p) == 0) {
			pthread_mutex_lock(&R.paths_lock);
			noted_add(nx_spath_id(p));
			pthread_mutex_unlock(&R.paths_lock);
			nx_spath_put(p); /* known now; by id it loads again when unloaded */
			loaded++;
		} else {
			failed++;
			nx_log(NX_LOG_WARNING, "takeover: cannot load %s again: its open files "
			       "and names will get ESTALE", line);
		}
	}
	fclose(f);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	nx_log(NX_LOG_INFO, "takeover: loaded the %zu store paths the kernel knows in %ld ms%s",
	       loaded, (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000),
	       failed ? " (some failed)" : "");
	return 0;
}

/* ------------------------------------------------ the open-modes journal */

/*
 * With passthrough, the kernel puts an inode that is open in a mode: cached
 * (opens answered without a backing file) or passthrough with one backing
 * file, and refuses (EIO to the opener) an open reply in the other mode or
 * with another backing file while any open of the inode lasts. ops.c keeps
 * the mode per inode for its own opens; a successor does not see the
 * predecessor's opens (their RELEASE comes to it with a foreign handle), so
 * it must answer every open of such an inode in the predecessor's mode, with
 * the predecessor's backing id (still registered: the ids belong to the
 * connection). ops.c journals each inode's first open (with its backing id,
 * before the reply) and last release (before the id is closed) to
 * <cache>/open-modes; a successor replays it and keeps those modes for the
 * rest of the mount. A fresh mount truncates it; an adopting daemon
 * rewrites it with what it replayed.
 */
#define MODES_FILE "open-modes"

static void modes_line(char op, uint64_t ino, int32_t id)
{
	char line[64];
	int n;

	if (R.modes_fd < 0)
		return;
	n = snprintf(line, sizeof(line), "%c %" PRIu64 " %" PRId32 "\n", op, ino, id);
	if (n > 0 && write(R.modes_fd, line, (size_t)n) != n)
		nx_log(NX_LOG_WARNING, "cannot record an open in the cache's " MODES_FILE
		       ": a restarted daemon may answer EIO for that file");
}

void nx_restart_note_open(uint64_t ino, int32_t backing_id)
{
	modes_line('o', ino, backing_id);
}

void nx_restart_note_close(uint64_t ino)
{
	modes_line('c', ino, 0);
}

struct mode_ent {
	uint64_t ino;
	int32_t id;
	int live;
};

int nx_restart_modes_open(const char *cache_dir,
			  void (*seed)(void *ctx, uint64_t ino, int32_t backing_id), void *ctx)
{
	char path[PATH_MAX], tmp[PATH_MAX], line[64];
	struct mode_ent *e = NULL;
	size_t n = 0, cap = 0, i, j;
	FILE *f;

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", cache_dir, MODES_FILE) >= sizeof(path) ||
	    (size_t)snprintf(tmp, sizeof(tmp), "%s/%s.tmp", cache_dir, MODES_FILE) >= sizeof(tmp))
		return -ENAMETOOLONG;
	if (R.mode != NX_START_MOUNT && (f = fopen(path, "re"))) {
		while (fgets(line, sizeof(line), f)) {
			char op;
			uint64_t ino;
			int32_t id;

			if (sscanf(line, "%c %" SCNu64 " %" SCNd32, &op, &ino, &id) != 3)
				continue;
			for (i = 0; i < n && e[i].ino != ino; i++)
				;
			if (i == n) {
				if (n == cap) {
					struct mode_ent *t;

					cap = cap ? cap * 2 : 256;
					t = realloc(e, cap * sizeof(*e));
					if (!t)
						break;
					e = t;
				}
				n++;
			}
			e[i].ino = ino;
			e[i].id = id;
			e[i].live = op == 'o';
		}
		fclose(f);
	}
	/* rewrite it with what is live, then append from there */
	R.modes_fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (R.modes_fd < 0) {
		free(e);
		return -errno;
	}
	for (i = j = 0; i < n; i++) {
		if (!e[i].live)
			continue;
		nx_restart_note_open(e[i].ino, e[i].id);
		seed(ctx, e[i].ino, e[i].id);
		j++;
	}
	free(e);
	close(R.modes_fd);
	R.modes_fd = -1;
	if (rename(tmp, path) < 0)
		return -errno;
	R.modes_fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (R.modes_fd < 0)
		return -errno;
	if (j)
		nx_log(NX_LOG_INFO, "takeover: %zu files the kernel may have open keep their "
		       "predecessor's open mode", j);
	return 0;
}

/* ------------------------------------------------- file handle tags */

#define FH_TAG_SHIFT 48
#define FH_PTR_MASK ((UINT64_C(1) << FH_TAG_SHIFT) - 1)

uint64_t nx_fh_pack(void *p)
{
	uint64_t v = (uint64_t)(uintptr_t)p;

	if (!p)
		return 0;
	if (v & ~FH_PTR_MASK)
		abort(); /* a user pointer above 2^48: 5-level paging opt-in; never here */
	return v | ((uint64_t)R.gen << FH_TAG_SHIFT);
}

uint64_t nx_fh_mark(void)
{
	return (uint64_t)R.gen << FH_TAG_SHIFT;
}

void *nx_fh_unpack(uint64_t fh, int *foreign)
{
	*foreign = 0;
	if (!fh)
		return NULL;
	if ((fh >> FH_TAG_SHIFT) != R.gen) {
		*foreign = 1;
		return NULL;
	}
	fh &= FH_PTR_MASK;
	return fh ? (void *)(uintptr_t)fh : NULL;
}

/* --------------------------------------------- the predecessor's side */

/* Stops reading, waits until every request read has been answered. */
static void stop_reading(void)
{
	uint64_t one = 1;

	__atomic_store_n(&R.stopping, 1, __ATOMIC_SEQ_CST);
	if (write(R.stop_efd, &one, sizeof(one)) < 0) {
		/* an eventfd write of 1 cannot fail; readers also poll stopping */
	}
	while (__atomic_load_n(&R.busy, __ATOMIC_SEQ_CST) > 0)
		usleep(1000);
	__atomic_store_n(&R.handed_over, 1, __ATOMIC_SEQ_CST);
	__atomic_store_n(&R.released, 1, __ATOMIC_SEQ_CST);
}

static void serve_one(int c)
{
	struct nx_ho_msg *m = malloc(sizeof(*m));
	struct timeval tv = { 10, 0 };
	int fd = -1, r;

	if (!m)
		goto out;
	setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (!peer_is_us(c)) {
		nx_log(NX_LOG_WARNING, "takeover request from another user refused");
		goto out;
	}
	r = nx_ho_recv(c, m, &fd);
	if (fd >= 0)
		close(fd);
	if (r < 0 || m->kind != NX_HO_TAKE)
		goto out;
	if (R.keeper >= 0 && !m->supervisor) {
		/* A successor outside the supervisor would leave it holding a
		 * connection it cannot resume: send the caller there. */
		nx_ho_msg_init(m, NX_HO_REFUSED);
		m->supervisor = (int32_t)getppid();
		nx_ho_send(c, m, -1);
		goto out;
	}
	if (!__atomic_load_n(&R.sess->init_done, __ATOMIC_ACQUIRE) ||
	    state_msg(m, NX_HO_STATE) < 0) {
		nx_ho_msg_init(m, NX_HO_REFUSED);
		nx_ho_send(c, m, -1);
		goto out;
	}
	if (nx_ho_send(c, m, R.sess->fd) < 0)
		goto out;
	/* The successor holds the connection. Stop reading and finish. */
	nx_log(NX_LOG_INFO, "handing the mount over to a successor: finishing the requests "
	       "in flight");
	stop_reading();
	R.conn = c;
	c = -1;
out:
	if (c >= 0)
		close(c);
	free(m);
}

static void *listener(void *arg)
{
	for (;;) {
		int c = accept4(R.listen_fd, NULL, NULL, SOCK_CLOEXEC);

		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			break;
		}
		serve_one(c);
		if (R.handed_over)
			break;
	}
	return NULL;
}

int nx_restart_listen(struct nx_session *s, const char *mountpoint, int argc, char **argv)
{
	struct sockaddr_un sa;
	char *canon;
	int r;

	R.sess = s;
	R.argc = argc;
	R.argv = argv;
	canon = nx_restart_canon_mountpoint(mountpoint);
	if (!canon)
		return -ENOENT;
	R.mountpoint = canon;
	r = sock_path(canon, R.sock_path, sizeof(R.sock_path));
	if (r < 0)
		goto fail;
	R.listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (R.listen_fd < 0) {
		r = -errno;
		goto fail;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", R.sock_path);
	/* A predecessor does not unlink its socket when it hands over; a stale
	 * one from a crash is just as dead. */
	unlink(R.sock_path);
	if (bind(R.listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    chmod(R.sock_path, 0600) < 0 || listen(R.listen_fd, 4) < 0) {
		r = -errno;
		goto fail;
	}
	r = pthread_create(&R.listener, NULL, listener, NULL);
	if (r) {
		r = -r;
		goto fail;
	}
	R.listening = 1;
	return 0;
fail:
	nx_log(NX_LOG_WARNING, "cannot listen for a successor on %s: %s; nixoci-fs "
	       "--takeover will not work for %s", R.sock_path, strerror(-r), mountpoint);
	if (R.listen_fd >= 0)
		close(R.listen_fd);
	R.listen_fd = -1;
	return r;
}

int nx_restart_handed_over(void)
{
	return __atomic_load_n(&R.handed_over, __ATOMIC_SEQ_CST);
}

void nx_restart_finish(void)
{
	if (R.listening) {
		if (!R.handed_over) {
			/* Not handed over: nobody else can answer there. */
			unlink(R.sock_path);
			shutdown(R.listen_fd, SHUT_RDWR);
		}
		pthread_cancel(R.listener); /* accept() is a cancellation point */
		pthread_join(R.listener, NULL);
		close(R.listen_fd);
		R.listening = 0;
	}
	if (R.conn >= 0 && R.handed_over) {
		struct nx_ho_msg m;

		nx_ho_msg_init(&m, NX_HO_DONE);
		nx_ho_send(R.conn, &m, -1);
		nx_log(NX_LOG_NOTICE, "handed %s over; exiting without unmounting", R.mountpoint);
	}
	if (R.conn >= 0)
		close(R.conn);
	R.conn = -1;
	if (R.paths_fd >= 0)
		close(R.paths_fd);
	R.paths_fd = -1;
	if (R.modes_fd >= 0)
		close(R.modes_fd);
	R.modes_fd = -1;
	free(R.noted);
	R.noted = NULL;
	R.noted_cap = R.noted_n = 0;
	if (R.stop_efd >= 0)
		close(R.stop_efd);
	R.stop_efd = -1;
	if (R.keeper >= 0)
		close(R.keeper);
	R.keeper = -1;
	free(R.mountpoint);
	R.mountpoint = NULL;
}

int nx_restart_unmount(const char *mp, int clean)
{
	pid_t pid;
	int st;

	if (!clean && R.keeper >= 0)
		return 0;
	if (nx_fs_privs_active())
		return nx_fs_privs_unmount(); /* a sandbox may not unmount */
	/* libfuse did not mount an adopted connection, so it will not unmount
	 * it: do what fuse_session_unmount would (lazily, like fusermount -z). */
	if (umount2(mp, MNT_DETACH) == 0)
		return 0;
	if (errno != EPERM)
		return -errno;
	pid = fork();
	if (pid == 0) {
		execlp("fusermount3", "fusermount3", "-u", "-z", "--", mp, (char *)NULL);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &st, 0) < 0)
		return -errno;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EPERM;
}
