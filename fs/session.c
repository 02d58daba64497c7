/*
 * fs/session.c: the daemon's own I/O on /dev/fuse.
 *
 * nixoci-fs stays a libfuse low-level filesystem, but libfuse 3.14 (Debian
 * 12) cannot express a few protocol fields the kernel here understands: it
 * never offers FUSE_PARALLEL_DIROPS (so the kernel serializes every lookup
 * in one directory, and /nix/store is one directory), and it has no
 * passthrough (no FUSE_PASSTHROUGH in INIT, no backing_id in the OPEN
 * reply). fuse_session_custom_io() (libfuse >= 3.13) lets the daemon supply
 * the read and the writev of the session, so every request passes through
 * session_read and every reply that libfuse builds (INIT included) passes
 * through session_writev, where these fields are rewritten:
 *
 *  - INIT: the request (read side) records the kernel's protocol minor and
 *    offered flags; the reply (write side) gets FUSE_PARALLEL_DIROPS when
 *    the kernel offered it (minor >= 25), and FUSE_PASSTHROUGH (flags2) with
 *    max_stack_depth 1 when the kernel offered it (minor >= 40), it is
 *    wanted (-o passthrough=auto) and the daemon holds CAP_SYS_ADMIN. After
 *    the reply is written a probe registers a throw-away backing file, so
 *    the one log line at mount says whether passthrough really works.
 *  - OPEN: a reply sent through nx_session_reply_open() with a backing id
 *    carries FOPEN_PASSTHROUGH and the id. The id travels in a thread-local
 *    variable: libfuse writes the reply from inside fuse_reply_open, in the
 *    calling thread, so the very next writev of this thread is that reply.
 *
 * Replies that libfuse splices (fuse_reply_data with SPLICE_WRITE) bypass
 * writev; none of them needs rewriting (only READ data goes that way).
 *
 * Everything the kernel negotiated is kept in struct nx_session (fs_i.h):
 * the fd, the offered and the sent flags and the protocol minor. A daemon
 * that hands the connection to a successor hands over exactly that.
 *
 * Protocol constants newer than Debian's <linux/fuse.h> (7.38) are defined
 * below from the kernel's include/uapi/linux/fuse.h (protocol 7.40, Linux
 * 6.9): FUSE_PASSTHROUGH, FOPEN_PASSTHROUGH, struct fuse_backing_map and the
 * FUSE_DEV_IOC_BACKING_* ioctls, max_stack_depth in fuse_init_out (the word
 * after flags2) and backing_id in fuse_open_out (its former padding).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fs/fs_i.h"

/* ---- ABI of protocol 7.40 (Linux include/uapi/linux/fuse.h) */
#ifndef FUSE_PASSTHROUGH
#define FUSE_PASSTHROUGH (1ULL << 37)
#endif
#ifndef FOPEN_PASSTHROUGH
#define FOPEN_PASSTHROUGH (1 << 7)
#endif
#ifndef FUSE_DEV_IOC_BACKING_OPEN
struct fuse_backing_map {
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};
#define FUSE_DEV_IOC_MAGIC 229
#define FUSE_DEV_IOC_BACKING_OPEN _IOW(FUSE_DEV_IOC_MAGIC, 1, struct fuse_backing_map)
#define FUSE_DEV_IOC_BACKING_CLOSE _IOW(FUSE_DEV_IOC_MAGIC, 2, uint32_t)
#endif
/* Offsets in fuse_init_out / fuse_open_out of fields 7.38 calls unused or
 * padding. */
#define INIT_OUT_FLAGS2 offsetof(struct fuse_init_out, flags2)
#define INIT_OUT_STACK_DEPTH (offsetof(struct fuse_init_out, flags2) + 4)
#define OPEN_OUT_BACKING_ID offsetof(struct fuse_open_out, padding)

#define MINOR_PARALLEL_DIROPS 25
#define MINOR_INIT_EXT 36
#define MINOR_PASSTHROUGH 40

/* The backing id the next open reply of this thread carries; 0 = none. */
static __thread int32_t reply_backing_id;

void nx_session_init(struct nx_session *s, int pt_mode)
{
	memset(s, 0, sizeof(*s));
	s->fd = -1;
	s->pt_mode = pt_mode;
	s->pt_why = "not negotiated yet";
}

/* ------------------------------------------------------ message helpers */

static size_t iov_total(const struct iovec *iov, int count)
{
	size_t n = 0;
	int i;

	for (i = 0; i < count; i++)
		n += iov[i].iov_len;
	return n;
}

/* Copies @len bytes at message offset @off out of / into the iovec. */
static int iov_io(struct iovec *iov, int count, size_t off, void *buf, size_t len, int write)
{
	uint8_t *b = buf;
	int i;

	for (i = 0; i < count && len; i++) {
		size_t l = iov[i].iov_len, n;

		if (off >= l) {
			off -= l;
			continue;
		}
		n = l - off < len ? l - off : len;
		if (write)
			memcpy((uint8_t *)iov[i].iov_base + off, b, n);
		else
			memcpy(b, (uint8_t *)iov[i].iov_base + off, n);
		b += n;
		len -= n;
		off = 0;
	}
	return len ? -EINVAL : 0;
}

static uint32_t get32(struct iovec *iov, int count, size_t off)
{
	uint32_t v = 0;

	iov_io(iov, count, off, &v, sizeof(v), 0);
	return v;
}

static void put32(struct iovec *iov, int count, size_t off, uint32_t v)
{
	iov_io(iov, count, off, &v, sizeof(v), 1);
}

/* ------------------------------------------------------- the read side */

void nx_session_note_request(struct nx_session *s, const void *buf, size_t len)
{
	const struct fuse_in_header *h = buf;
	const struct fuse_init_in *in;

	if (len < sizeof(*h))
		return;
	__atomic_fetch_add(&s->nreq[h->opcode < NX_SESS_OPCODES ? h->opcode : 0], 1,
			   __ATOMIC_RELAXED);
	if (h->opcode != FUSE_INIT)
		return;
	/* The kernel's part of INIT: major, minor, max_readahead, flags, and
	 * since 7.36 (with FUSE_INIT_EXT) flags2. */
	if (len < sizeof(*h) + 16)
		return;
	in = (const struct fuse_init_in *)((const uint8_t *)buf + sizeof(*h));
	s->kmajor = in->major;
	s->kminor = in->minor;
	s->kflags = in->flags;
	if (in->major == 7 && in->minor >= MINOR_INIT_EXT && (in->flags & FUSE_INIT_EXT) &&
	    len >= sizeof(*h) + offsetof(struct fuse_init_in, flags2) + 4)
		s->kflags |= (uint64_t)in->flags2 << 32;
	s->init_unique = h->unique;
	s->init_in_len = (uint32_t)(len - sizeof(*h) < sizeof(s->init_in) ?
				    len - sizeof(*h) : sizeof(s->init_in));
	memcpy(s->init_in, in, s->init_in_len);
	s->init_seen = 1;
}

/* ------------------------------------------------------ the write side */

/* Rewrites the INIT reply in place. Only widens what the kernel offered. */
static void patch_init(struct nx_session *s, struct iovec *iov, int count, size_t total)
{
	size_t base = sizeof(struct fuse_out_header);
	uint32_t flags, minor;
	uint64_t sent;

	s->init_done = 1;
	/* A reply shorter than the 7.23 layout (old kernel, or libfuse chose a
	 * compat size) has no room for flags2: leave it alone. */
	if (s->kmajor != 7 || total < base + sizeof(struct fuse_init_out)) {
		s->pt_why = "the kernel's fuse protocol is too old";
		return;
	}
	minor = get32(iov, count, base + offsetof(struct fuse_init_out, minor));
	flags = get32(iov, count, base + offsetof(struct fuse_init_out, flags));
	sent = flags;
	if (flags & FUSE_INIT_EXT)
		sent |= (uint64_t)get32(iov, count, base + INIT_OUT_FLAGS2) << 32;

	if (s->kminor >= MINOR_PARALLEL_DIROPS && (s->kflags & FUSE_PARALLEL_DIROPS)) {
		sent |= FUSE_PARALLEL_DIROPS;
		s->parallel_dirops = 1;
	}

	if (s->pt_mode == NX_PT_OFF)
		s->pt_why = "-o passthrough=off";
	else if (s->kminor < MINOR_PASSTHROUGH || !(s->kflags & FUSE_INIT_EXT) ||
		 !(s->kflags & FUSE_PASSTHROUGH))
		s->pt_why = "the kernel does not offer it (needs Linux 6.9 with "
			    "CONFIG_FUSE_PASSTHROUGH)";
	else if (!s->pt_capable)
		s->pt_why = "it needs CAP_SYS_ADMIN in the initial user namespace";
	else if (sent & FUSE_WRITEBACK_CACHE)
		s->pt_why = "writeback cache is on"; /* never: we are read-only */
	else {
		sent |= FUSE_PASSTHROUGH | FUSE_INIT_EXT;
		put32(iov, count, base + INIT_OUT_STACK_DEPTH, 1);
		s->pt_negotiated = 1;
		s->pt_why = NULL;
	}

	put32(iov, count, base + offsetof(struct fuse_init_out, flags), (uint32_t)sent);
	if (sent & FUSE_INIT_EXT)
		put32(iov, count, base + INIT_OUT_FLAGS2, (uint32_t)(sent >> 32));
	s->flags_out = sent;
	s->minor_out = minor;
}

void nx_session_patch_reply(struct nx_session *s, struct iovec *iov, int count)
{
	struct fuse_out_header h;
	size_t total = iov_total(iov, count);

	if (total < sizeof(h) || iov_io(iov, count, 0, &h, sizeof(h), 0) < 0)
		return;
	if (h.error == 0 && s->init_seen && !s->init_done && h.unique == s->init_unique) {
		patch_init(s, iov, count, total);
		/* as sent, for a successor (takeover.c) */
		s->init_out_len = (uint32_t)(total - sizeof(h) < sizeof(s->init_out) ?
					     total - sizeof(h) : sizeof(s->init_out));
		iov_io(iov, count, sizeof(h), s->init_out, s->init_out_len, 0);
		return;
	}
	if (reply_backing_id > 0 && h.error == 0 &&
	    total == sizeof(h) + sizeof(struct fuse_open_out)) {
		size_t fo = sizeof(h) + offsetof(struct fuse_open_out, open_flags);
		uint32_t of = get32(iov, count, fo);

		/* The kernel refuses KEEP_CACHE with passthrough: the page cache
		 * is the backing file's. */
		of = (of & ~(uint32_t)FOPEN_KEEP_CACHE) | FOPEN_PASSTHROUGH;
		put32(iov, count, fo, of);
		put32(iov, count, sizeof(h) + OPEN_OUT_BACKING_ID, (uint32_t)reply_backing_id);
		reply_backing_id = 0;
	}
}

/* ------------------------------------------------------------ backing */

int nx_session_backing_open(struct nx_session *s, int fd, int32_t *id)
{
	struct fuse_backing_map map;
	int r;

	if (!__atomic_load_n(&s->passthrough, __ATOMIC_ACQUIRE))
		return -EOPNOTSUPP;
	memset(&map, 0, sizeof(map));
	map.fd = fd;
	/* the kernel wants CAP_SYS_ADMIN; the sandbox keeps it permitted only */
	nx_fs_privs_raise();
	r = ioctl(s->fd, FUSE_DEV_IOC_BACKING_OPEN, &map);
	if (r < 0)
		r = -errno;
	nx_fs_privs_lower();
	if (r < 0)
		return r;
	if (r == 0)
		return -EIO; /* 0 is not a valid id */
	*id = r;
	return 0;
}

void nx_session_backing_close(struct nx_session *s, int32_t id)
{
	uint32_t u = (uint32_t)id;

	int r;

	if (id <= 0)
		return;
	nx_fs_privs_raise();
	r = ioctl(s->fd, FUSE_DEV_IOC_BACKING_CLOSE, &u) < 0 ? -errno : 0;
	nx_fs_privs_lower();
	if (r < 0)
		nx_log(NX_LOG_WARNING, "cannot release passthrough backing id %d: %s", id,
		       strerror(-r));
}

int nx_session_reply_open(fuse_req_t req, const struct fuse_file_info *fi, int32_t backing_id)
{
	int r;

	reply_backing_id = backing_id;
	r = fuse_reply_open(req, fi);
	reply_backing_id = 0;
	return r;
}

/*
 * After the INIT reply: does registering a backing file work? The ioctl is
 * the authority (capabilities, namespaces, LSMs, the stack depth of the
 * cache's filesystem), so try one with an unnamed file in the cache dir.
 */
static void probe_passthrough(struct nx_session *s)
{
	int32_t id = 0;
	int fd, r;

	if (!s->pt_negotiated)
		goto log;
	fd = open(s->probe_dir ? s->probe_dir : "/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0) {
		s->pt_why = "cannot create a probe file in the cache directory";
		goto log;
	}
	__atomic_store_n(&s->passthrough, 1, __ATOMIC_RELEASE);
	r = nx_session_backing_open(s, fd, &id);
	close(fd);
	if (r == 0) {
		nx_session_backing_close(s, id);
	} else {
		__atomic_store_n(&s->passthrough, 0, __ATOMIC_RELEASE);
		s->pt_why = r == -EPERM ? "the kernel did not accept a backing file (EPERM: needs "
					  "CAP_SYS_ADMIN in the initial user namespace)" :
			    r == -ELOOP ? "the cache directory is on a stacked filesystem" :
					  "the kernel did not accept a backing file";
	}
log:
	if (s->passthrough)
		nx_log(NX_LOG_NOTICE, "passthrough in use: cached files are read by the kernel "
		       "from the cache (fuse protocol 7.%u)", s->kminor);
	else
		nx_log(NX_LOG_NOTICE, "passthrough not in use: %s; every read goes through "
		       "the daemon", s->pt_why);
	nx_log(NX_LOG_DEBUG, "fuse init: kernel 7.%u offered %#" PRIx64 ", sent 7.%u %#" PRIx64
	       ", parallel dirops %s", s->kminor, s->kflags, s->minor_out, s->flags_out,
	       s->parallel_dirops ? "on" : "off");
}

/*
 * The kernel's readahead for the mount is its bdi's read_ahead_kb, which the
 * INIT reply can only lower (from the default 128 KiB). A registry behind
 * the mount wants fewer, larger reads: raise it to what one FUSE request
 * carries (max_pages, 256 pages: 1 MiB). Only root may; after INIT, since
 * INIT sets it. The mount is found in mountinfo by its mountpoint, so no
 * request is sent to ourselves.
 */
#define NX_READ_AHEAD_KB 1024

static void tune_readahead(struct nx_session *s)
{
	char line[4096], mp[4096], path[128], dev[32] = "";
	unsigned maj, min;
	FILE *f;

	if (!s->mountpoint)
		return;
	f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		/* id parent maj:min root mountpoint ... - fstype ... */
		if (sscanf(line, "%*u %*u %u:%u %*s %4095s", &maj, &min, mp) == 3 &&
		    strcmp(mp, s->mountpoint) == 0 && strstr(line, " - fuse"))
			snprintf(dev, sizeof(dev), "%u:%u", maj, min); /* the last one */
	}
	fclose(f);
	if (!dev[0])
		return;
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
	f = fopen(path, "we");
	if (!f) {
		nx_log(NX_LOG_DEBUG, "kernel readahead stays at its default: %s: %s", path,
		       strerror(errno));
		return;
	}
	fprintf(f, "%d\n", NX_READ_AHEAD_KB);
	if (fclose(f) != 0)
		nx_log(NX_LOG_DEBUG, "kernel readahead stays at its default: %s", strerror(errno));
	else
		s->read_ahead_kb = NX_READ_AHEAD_KB;
}

/* ------------------------------------------------ the libfuse callbacks */

static struct nx_session *sess_of(void *userdata)
{
	return ((struct nx_fs *)userdata)->sess;
}

static ssize_t session_read(int fd, void *buf, size_t len, void *userdata)
{
	/* takeover.c: poll + non-blocking read, so that reading can stop
	 * without losing a request; a successor's first read is INIT replayed */
	ssize_t n = nx_restart_read(sess_of(userdata), fd, buf, len);

	if (n > 0)
		nx_session_note_request(sess_of(userdata), buf, (size_t)n);
	return n;
}

static ssize_t session_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct nx_session *s = sess_of(userdata);
	int was_init = s->init_done;
	ssize_t n;

	nx_session_patch_reply(s, iov, count);
	if (nx_restart_swallow(s, iov, count))
		n = (ssize_t)iov_total(iov, count); /* the replayed INIT: the kernel has it */
	else
		n = writev(fd, iov, count);
	if (!was_init && s->init_done) {
		int e = errno;

		if (n >= 0) {
			probe_passthrough(s);
			tune_readahead(s);
			nx_restart_after_init(s);
		}
		errno = e;
	}
	return n;
}

/* CAP_SYS_ADMIN in our effective set and an identity uid map (the initial
 * user namespace maps all of 0..2^32-2): the kernel's condition for backing
 * files. The probe after INIT has the last word. */
static int may_passthrough(void)
{
	char line[256];
	unsigned long long eff = 0;
	unsigned a = 1, b = 1, c = 0;
	FILE *f;
	int ok = 0;

	f = fopen("/proc/self/status", "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "CapEff: %llx", &eff) == 1)
			break;
	fclose(f);
	if (!(eff & (1ULL << 21))) /* CAP_SYS_ADMIN */
		return 0;
	f = fopen("/proc/self/uid_map", "re");
	if (!f)
		return 0;
	if (fscanf(f, "%u %u %u", &a, &b, &c) == 3 && a == 0 && b == 0 && c == 4294967295u)
		ok = 1;
	fclose(f);
	return ok;
}

int nx_session_adopt(struct nx_session *s, struct fuse_session *se, int fd, const char *probe_dir,
		     const char *mountpoint)
{
	struct fuse_custom_io io;
	int r;

	memset(&io, 0, sizeof(io));
	io.read = session_read;
	io.writev = session_writev;
	s->fd = fd;
	s->probe_dir = probe_dir;
	s->mountpoint = mountpoint;
	s->pt_capable = s->pt_mode != NX_PT_OFF && may_passthrough();
	r = nx_restart_io_init(s);
	if (r < 0)
		return r;
	r = fuse_session_custom_io(se, &io, s->fd);
	if (r < 0)
		return r;
	return 0;
}

int nx_session_attach(struct nx_session *s, struct fuse_session *se, const char *probe_dir,
		      const char *mountpoint)
{
	return nx_session_adopt(s, se, fuse_session_fd(se), probe_dir, mountpoint);
}

/* ------------------------------------------------------ the session loop */

/*
 * libfuse 3.14's fuse_session_loop_mt starts one worker and adds another only
 * when a worker takes a request while none is idle, so on a fresh mount the
 * k-th of k concurrent requests waits for k - 1 thread starts in a row (on a
 * loaded host, steps of tens of milliseconds each: 8 concurrent first lookups
 * took 2.6 times one). Here every worker is started before the first request
 * is read and none ever ends before the session does: the pool's size is the
 * number of requests served at once.
 *
 * Ending: whoever ends the session makes fuse_session_exited() true first (a
 * worker on ENODEV or a read error, libfuse's signal handler), then posts
 * loop_done; the loop thread wakes, tells the readers to leave without
 * reading (nx_restart_wake_readers) and joins the workers, each after it has
 * answered the request it holds. A handover ends the same way: takeover.c
 * parks the readers until every request read has been answered, then they
 * return ENODEV.
 */
static sem_t loop_done;
static int loop_done_ok; /* loop_done initialized (atomic) */

struct pool {
	struct fuse_session *se;
	int error; /* the first read error, -errno (atomic) */
};

void nx_session_loop_wake(void)
{
	int e = errno; /* a signal handler's caller keeps its errno */

	if (__atomic_load_n(&loop_done_ok, __ATOMIC_ACQUIRE))
		sem_post(&loop_done); /* async-signal-safe */
	errno = e;
}

static void *pool_worker(void *arg)
{
	struct pool *p = arg;
	struct fuse_buf buf;
	int r = 0, zero = 0;

	memset(&buf, 0, sizeof(buf));
	while (!fuse_session_exited(p->se)) {
		/* 0 when the session exited (ENODEV included); the buffer is
		 * allocated by libfuse on the first call, kept for the next */
		r = fuse_session_receive_buf(p->se, &buf);
		if (r == -EINTR || r == -EAGAIN)
			continue;
		if (r <= 0)
			break;
		fuse_session_process_buf(p->se, &buf);
	}
	if (r < 0 && r != -EINTR && r != -EAGAIN &&
	    __atomic_compare_exchange_n(&p->error, &zero, r, 0, __ATOMIC_SEQ_CST,
					__ATOMIC_SEQ_CST)) {
		nx_log(NX_LOG_ERR, "cannot read /dev/fuse: %s; ending the session", strerror(-r));
		fuse_session_exit(p->se);
	}
	free(buf.mem);
	nx_session_loop_wake();
	return NULL;
}

int nx_session_loop(struct nx_session *s, struct fuse_session *se, unsigned nworkers)
{
	struct pool p = { .se = se, .error = 0 };
	sigset_t async, old;
	pthread_t *t;
	unsigned i, n = 0;
	int r = 0;

	if (nworkers == 0)
		return -EINVAL;
	t = calloc(nworkers, sizeof(*t));
	if (!t)
		return -ENOMEM;
	if (!__atomic_load_n(&loop_done_ok, __ATOMIC_ACQUIRE)) {
		if (sem_init(&loop_done, 0, 0) < 0) {
			r = -errno;
			free(t);
			return r;
		}
		__atomic_store_n(&loop_done_ok, 1, __ATOMIC_RELEASE);
	}
	/* The workers take no asynchronous signal: an exit signal reaches a
	 * thread that is not waiting for a request, and its handler wakes us.
	 * Faults stay deliverable, so a crash is reported where it happens. */
	sigfillset(&async);
	sigdelset(&async, SIGSEGV);
	sigdelset(&async, SIGBUS);
	sigdelset(&async, SIGFPE);
	sigdelset(&async, SIGILL);
	sigdelset(&async, SIGABRT);
	sigdelset(&async, SIGTRAP);
	pthread_sigmask(SIG_BLOCK, &async, &old);
	for (i = 0; i < nworkers; i++) {
		r = pthread_create(&t[n], NULL, pool_worker, &p);
		if (r != 0)
			break;
		n++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (n == 0) {
		nx_log(NX_LOG_ERR, "cannot start a fuse worker thread: %s", strerror(r));
		free(t);
		return -r;
	}
	if (n < nworkers)
		nx_log(NX_LOG_WARNING, "started %u of %u fuse worker threads: %s", n, nworkers,
		       strerror(r));
	else
		nx_log(NX_LOG_DEBUG, "serving with %u fuse worker threads", n);
	while (!fuse_session_exited(se))
		sem_wait(&loop_done); /* EINTR: a signal; look again */
	nx_restart_wake_readers(s);
	for (i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	free(t);
	return __atomic_load_n(&p.error, __ATOMIC_SEQ_CST);
}
