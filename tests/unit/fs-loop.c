/*
 * tests/unit/fs-loop.c: the session loop of fs/session.c (nx_session_loop)
 * without a mount. A SOCK_SEQPACKET socket pair stands in for /dev/fuse (one
 * message per read, as the kernel gives one request per read); this test
 * plays the kernel on the other end: INIT, then requests, then each way the
 * session ends.
 *
 *  - 8 GETATTRs at once to a pool of 8: each handler waits until all 8 are
 *    inside, which only a pool whose workers all run at once lets happen
 *    (the wait is bounded: a smaller pool answers EIO, the test fails).
 *  - 12 requests to a pool of 3: all answered (more requests than workers).
 *  - fuse_session_exit + nx_session_loop_wake (what the exit-signal handler
 *    does) ends it with 0; a real SIGTERM through libfuse's handlers too.
 *  - the "kernel" going away (read error) ends it with that error.
 */
#include <errno.h>
#include <linux/fuse.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs_i.h"
#include "tests/unit/tap.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int inside, barrier; /* handlers inside; how many to wait for (0: none) */

static void t_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct timespec until;
	struct stat st;
	int r = 0;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 10;
	pthread_mutex_lock(&mu);
	inside++;
	pthread_cond_broadcast(&cv);
	while (barrier && inside < barrier && r == 0)
		r = pthread_cond_timedwait(&cv, &mu, &until);
	pthread_mutex_unlock(&mu);
	if (r != 0) {
		fuse_reply_err(req, EIO);
		return;
	}
	memset(&st, 0, sizeof(st));
	st.st_ino = ino;
	st.st_mode = S_IFDIR | 0555;
	st.st_nlink = 2;
	fuse_reply_attr(req, &st, 1.0);
}

static const struct fuse_lowlevel_ops t_ops = { .getattr = t_getattr };

struct loop {
	struct nx_fs fs;
	struct nx_session s;
	struct fuse_session *se;
	int k;      /* the kernel's end */
	unsigned n; /* workers */
	pthread_t t;
	int ret;
};

static void *run_loop(void *arg)
{
	struct loop *l = arg;

	l->ret = nx_session_loop(&l->s, l->se, l->n);
	return NULL;
}

static int send_msg(int k, uint32_t opcode, uint64_t unique, const void *body, size_t blen)
{
	uint8_t buf[256];
	struct fuse_in_header h;

	memset(&h, 0, sizeof(h));
	h.len = (uint32_t)(sizeof(h) + blen);
	h.opcode = opcode;
	h.unique = unique;
	h.nodeid = FUSE_ROOT_ID;
	memcpy(buf, &h, sizeof(h));
	memcpy(buf + sizeof(h), body, blen);
	return write(k, buf, h.len) == (ssize_t)h.len ? 0 : -1;
}

/* The next reply (10 s at most): its header; -1 on timeout. */
static int recv_reply(int k, struct fuse_out_header *h)
{
	uint8_t buf[4096];
	struct pollfd p = { .fd = k, .events = POLLIN };
	ssize_t n;

	if (poll(&p, 1, 10000) != 1)
		return -1;
	n = read(k, buf, sizeof(buf));
	if (n < (ssize_t)sizeof(*h))
		return -1;
	memcpy(h, buf, sizeof(*h));
	return 0;
}

static int start(struct loop *l, unsigned n)
{
	char *argv[] = { (char *)"fs-loop", NULL };
	struct fuse_args args = FUSE_ARGS_INIT(1, argv);
	struct fuse_init_in in;
	struct fuse_out_header h;
	int sv[2];

	memset(l, 0, sizeof(*l));
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	l->k = sv[1];
	l->n = n;
	nx_session_init(&l->s, NX_PT_OFF);
	l->fs.sess = &l->s;
	l->se = fuse_session_new(&args, &t_ops, sizeof(t_ops), &l->fs);
	fuse_opt_free_args(&args);
	if (!l->se || nx_session_adopt(&l->s, l->se, sv[0], NULL, NULL) < 0)
		return -1;
	if (pthread_create(&l->t, NULL, run_loop, l) != 0)
		return -1;
	memset(&in, 0, sizeof(in));
	in.major = FUSE_KERNEL_VERSION;
	in.minor = 38;
	in.max_readahead = 131072;
	in.flags = FUSE_ASYNC_READ | FUSE_PARALLEL_DIROPS;
	if (send_msg(l->k, FUSE_INIT, 1, &in, sizeof(in)) < 0 || recv_reply(l->k, &h) < 0)
		return -1;
	return h.unique == 1 && h.error == 0 ? 0 : -1;
}

/* @count GETATTRs sent at once; how many came back answered without error. */
static int getattrs(struct loop *l, int count)
{
	struct fuse_getattr_in g;
	struct fuse_out_header h;
	int i, good = 0;

	memset(&g, 0, sizeof(g));
	for (i = 0; i < count; i++)
		if (send_msg(l->k, FUSE_GETATTR, 100 + (uint64_t)i, &g, sizeof(g)) < 0)
			return -1;
	for (i = 0; i < count; i++) {
		if (recv_reply(l->k, &h) < 0)
			break;
		good += h.error == 0 && h.unique >= 100 && h.unique < 100 + (uint64_t)count;
	}
	return good;
}

/* Joins the loop's thread within 10 s: 0, or -1 if it is still running. */
static int join(struct loop *l)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 10;
	return pthread_timedjoin_np(l->t, NULL, &until) == 0 ? 0 : -1;
}

static void finish(struct loop *l)
{
	fuse_session_destroy(l->se); /* closes the daemon's end */
	if (l->k >= 0)
		close(l->k);
}

int main(void)
{
	struct loop l;

	/* all workers run at once */
	ok(start(&l, 8) == 0, "pool of 8: INIT answered");
	barrier = 8;
	is_int(getattrs(&l, 8), 8, "8 requests held inside 8 workers at once, all answered");
	barrier = 0;
	fuse_session_exit(l.se);
	nx_session_loop_wake();
	ok(join(&l) == 0, "exit + wake (the signal path) ends the loop");
	is_int(l.ret, 0, "an orderly end returns 0");
	finish(&l);

	/* more requests than workers */
	inside = 0;
	ok(start(&l, 3) == 0, "pool of 3: INIT answered");
	is_int(getattrs(&l, 12), 12, "12 requests to 3 workers: all answered");
	/* a real SIGTERM through libfuse's handler and ours */
	ok(fuse_set_signal_handlers(l.se) == 0 && nx_fs_cancel_on_exit_signals() == 0,
	   "signal handlers installed");
	kill(getpid(), SIGTERM);
	ok(join(&l) == 0, "SIGTERM ends the loop");
	is_int(l.ret, 0, "and it returns 0");
	fuse_remove_signal_handlers(l.se);
	finish(&l);

	/* the kernel's end goes away: a read error ends the session */
	ok(start(&l, 4) == 0, "pool of 4: INIT answered");
	close(l.k);
	l.k = -1;
	ok(join(&l) == 0, "a read error ends the loop");
	ok(l.ret < 0, "and it returns the error (%d)", l.ret);
	finish(&l);

	/* -s */
	ok(start(&l, 1) == 0, "pool of 1: INIT answered");
	is_int(getattrs(&l, 5), 5, "one worker answers 5 requests in turn");
	fuse_session_exit(l.se);
	nx_session_loop_wake();
	ok(join(&l) == 0, "exit + wake ends the pool of one");
	finish(&l);

	is_int(nx_session_loop(&l.s, NULL, 0), -EINVAL, "a pool of 0 is refused");
	return done_testing();
}
