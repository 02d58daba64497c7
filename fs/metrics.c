/*
 * fs/metrics.c: the daemon's metrics in the Prometheus text format: the
 * counters of the stats xattr, a latency histogram of registry requests
 * (fetch/ keeps it) and one of each FUSE operation, labelled by op.
 *
 * FUSE latencies are measured by wrapping the operations of ops.c: the
 * wrapper notes the time, calls the real operation and observes the time
 * it took. Every operation of ops.c replies before it returns, so that is
 * the daemon's whole share of the request (the kernel's queueing is not
 * in it).
 *
 * The text is served as the xattr user.nixoci.metrics of the root (what
 * `nixoci stats --prometheus` reads) and, with -o metrics=FILE, written to
 * FILE every NX_METRICS_PERIOD_S seconds and at exit, through a temporary
 * file and rename(2) so that node_exporter's textfile collector never
 * reads half a file.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs_i.h"

#define NX_METRICS_PERIOD_S 15

enum {
	OP_LOOKUP,
	OP_GETATTR,
	OP_READLINK,
	OP_OPEN,
	OP_READ,
	OP_RELEASE,
	OP_OPENDIR,
	OP_READDIR,
	OP_RELEASEDIR,
	OP_STATFS,
	OP_GETXATTR,
	OP_LISTXATTR,
	OP_N
};
static const char *const op_names[OP_N] = {
	"lookup",  "getattr", "readlink",   "open",   "read",     "release",
	"opendir", "readdir", "releasedir", "statfs", "getxattr", "listxattr",
};
static struct nx_hist op_hist[OP_N];
static struct fuse_lowlevel_ops real; /* the operations of ops.c */

#define TIMED(op, call)                                          \
	do {                                                     \
		uint64_t t0_ = nx_now_ns();                      \
		call;                                            \
		nx_hist_observe(&op_hist[op], nx_now_ns() - t0_); \
	} while (0)

static void m_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	TIMED(OP_LOOKUP, real.lookup(req, parent, name));
}

static void m_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	TIMED(OP_GETATTR, real.getattr(req, ino, fi));
}

static void m_readlink(fuse_req_t req, fuse_ino_t ino)
{
	TIMED(OP_READLINK, real.readlink(req, ino));
}

static void m_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	TIMED(OP_OPEN, real.open(req, ino, fi));
}

static void m_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		   struct fuse_file_info *fi)
{
	TIMED(OP_READ, real.read(req, ino, size, off, fi));
}

static void m_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	TIMED(OP_RELEASE, real.release(req, ino, fi));
}

static void m_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	TIMED(OP_OPENDIR, real.opendir(req, ino, fi));
}

static void m_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	TIMED(OP_READDIR, real.readdir(req, ino, size, off, fi));
}

static void m_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	TIMED(OP_RELEASEDIR, real.releasedir(req, ino, fi));
}

static void m_statfs(fuse_req_t req, fuse_ino_t ino)
{
	TIMED(OP_STATFS, real.statfs(req, ino));
}

static void m_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	TIMED(OP_GETXATTR, real.getxattr(req, ino, name, size));
}

static void m_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	TIMED(OP_LISTXATTR, real.listxattr(req, ino, size));
}

void nx_fs_metrics_wrap(struct fuse_lowlevel_ops *ops)
{
	real = *ops;
#define WRAP(f)               \
	if (ops->f)           \
		ops->f = m_##f
	WRAP(lookup);
	WRAP(getattr);
	WRAP(readlink);
	WRAP(open);
	WRAP(read);
	WRAP(release);
	WRAP(opendir);
	WRAP(readdir);
	WRAP(releasedir);
	WRAP(statfs);
	WRAP(getxattr);
	WRAP(listxattr);
#undef WRAP
}

/* ------------------------------------------------------------- the text */

struct counter {
	const char *name, *type, *help;
	uint64_t v;
};

int nx_fs_metrics_text(struct nx_fs *fs, char *buf, size_t cap)
{
	struct nx_store_stats ss;
	struct nx_fetch_stats fst;
	struct nx_prom p;
	char mp[PATH_MAX * 2], ref[1024], labels[sizeof(mp) + sizeof(ref) + 64], l2[sizeof(labels) + sizeof(ref) + 64];
	size_t i;

	memset(&ss, 0, sizeof(ss));
	memset(&fst, 0, sizeof(fst));
	if (fs->st)
		nx_store_stats(fs->st, &ss);
	if (fs->reg)
		nx_registry_stats(fs->reg, &fst);
	if (nx_prom_label_escape(fs->mountpoint ? fs->mountpoint : "", mp, sizeof(mp)) < 0 ||
	    nx_prom_label_escape(fs->ref ? fs->ref : "", ref, sizeof(ref)) < 0)
		return -E2BIG;
	snprintf(labels, sizeof(labels), "mountpoint=\"%s\"", mp);

	const struct counter c[] = {
		{ "nixoci_frames_fetched_total", "counter", "compressed frames fetched from the registry", ss.frames_fetched },
		{ "nixoci_fetched_bytes_total", "counter", "compressed bytes received from the registry", ss.bytes_fetched },
		{ "nixoci_cache_hits_total", "counter", "frames served from the cache", ss.cache_hits },
		{ "nixoci_cache_misses_total", "counter", "frames not in the cache when read", ss.cache_misses },
		{ "nixoci_cache_bytes", "gauge", "bytes in the cache's chunk and blob files", ss.cache_bytes },
		{ "nixoci_cache_limit_bytes", "gauge", "the cache's size limit (cache_size)", ss.cache_limit },
		{ "nixoci_evictions_total", "counter", "chunks evicted from the cache", ss.evictions },
		{ "nixoci_verify_failures_total", "counter", "data refused because a digest or signature did not match", ss.verify_failures },
		{ "nixoci_errors_total", "counter", "operations that failed with an error", ss.errors },
		{ "nixoci_paths_loaded", "gauge", "store paths resolved (their metadata loaded at least once)", ss.paths_loaded },
		{ "nixoci_paths_in_memory", "gauge", "store paths whose metadata is loaded now", ss.paths_in_memory },
		{ "nixoci_paths_unloaded_total", "counter", "unloads of unused store paths to keep the metadata budget", ss.paths_unloaded },
		{ "nixoci_paths_reloaded_total", "counter", "loads of store paths that were unloaded before", ss.paths_reloaded },
		{ "nixoci_meta_bytes", "gauge", "bytes of metadata in memory (decoded TOCs, manifests, names)", ss.meta_bytes },
		{ "nixoci_meta_budget_bytes", "gauge", "the metadata budget (meta_budget)", ss.meta_budget },
		{ "nixoci_readahead_frames_total", "counter", "frames fetched by readahead", ss.readahead_frames },
		{ "nixoci_predict_elf_files_total", "counter", "ELF files whose shared libraries were predicted from their dynamic section", ss.predict_elf_files },
		{ "nixoci_runs_shared_total", "counter", "runs of missing frames handed to another walker's request instead of sent alone", ss.runs_shared },
		{ "nixoci_predict_libs_total", "counter", "shared libraries whose start was fetched before the loader opened them", ss.predict_libs },
		{ "nixoci_predict_whole_total", "counter", "files fetched whole in the background when a read jumped in them (mapped files)", ss.predict_whole },
		{ "nixoci_predict_import_total", "counter", "Python modules (.pyc files, extension modules) fetched before their import, from the imports of the modules already read", ss.predict_import },
		{ "nixoci_predict_exec_total", "counter", "programs a script runs (its #! interpreter, the store files of its exec lines) fetched before it runs them", ss.predict_exec },
		{ "nixoci_warm_bytes_total", "counter", "bytes of cached chunk files read ahead from disk when a file was opened", ss.warm_bytes },
		{ "nixoci_complete_files_total", "counter", "mostly read files completed in the background for passthrough", ss.complete_files },
		{ "nixoci_complete_bytes_total", "counter", "compressed bytes fetched to complete mostly read files", ss.complete_bytes },
		{ "nixoci_offline", "gauge", "1 while the registry is unreachable", (uint64_t)ss.offline },
		{ "nixoci_registry_requests_total", "counter", "HTTP requests to the registry and mirrors", fst.requests },
		{ "nixoci_registry_bytes_total", "counter", "HTTP body bytes received", fst.bytes },
		{ "nixoci_registry_errors_total", "counter", "registry requests that failed", fst.errors },
		{ "nixoci_registry_retries_total", "counter", "registry requests retried", fst.retries },
		{ "nixoci_registry_connections_total", "counter", "TCP connections opened", fst.connections },
		{ "nixoci_registry_h2_requests_total", "counter", "responses received over HTTP/2", fst.h2_requests },
	};

	nx_prom_init(&p, buf, cap);
	snprintf(l2, sizeof(l2), "%s,repository=\"%s\",version=\"%s\"", labels, ref, NX_VERSION);
	nx_prom_help(&p, "nixoci_mount_info", "gauge", "the mount: its repository and nixoci's version");
	nx_prom_value(&p, "nixoci_mount_info", l2, 1);
	for (i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		nx_prom_help(&p, c[i].name, c[i].type, c[i].help);
		nx_prom_value(&p, c[i].name, labels, c[i].v);
	}
	nx_prom_help(&p, "nixoci_registry_request_duration_seconds", "histogram",
		     "time of each registry request, from its start to its last byte or failure");
	nx_prom_hist(&p, "nixoci_registry_request_duration_seconds", labels, &fst.latency);
	nx_prom_help(&p, "nixoci_fuse_request_duration_seconds", "histogram",
		     "time the daemon took to answer each FUSE request, by operation");
	for (i = 0; i < OP_N; i++) {
		struct nx_hist h;

		memset(&h, 0, sizeof(h));
		nx_hist_add(&h, &op_hist[i]);
		snprintf(l2, sizeof(l2), "%s,op=\"%s\"", labels, op_names[i]);
		nx_prom_hist(&p, "nixoci_fuse_request_duration_seconds", l2, &h);
	}
	if (p.err)
		return p.err;
	return (int)p.len;
}

/* ------------------------------------------------------------- the file */

static char text_buf[NX_METRICS_MAX];

int nx_fs_metrics_write(struct nx_fs *fs, const char *file)
{
	char tmp[PATH_MAX];
	int fd, n, r;

	n = nx_fs_metrics_text(fs, text_buf, sizeof(text_buf));
	if (n < 0)
		return n;
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", file) >= sizeof(tmp))
		return -ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		return -errno;
	r = nx_write_all(fd, text_buf, (size_t)n);
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && rename(tmp, file) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
	return r;
}

struct metrics_writer {
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int stop;
	struct nx_fs *fs;
	const char *file;
};
static struct metrics_writer mw = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void *writer_main(void *arg)
{
	struct timespec until;
	int r, warned = 0;

	pthread_mutex_lock(&mw.mu);
	while (!mw.stop) {
		pthread_mutex_unlock(&mw.mu);
		r = nx_fs_metrics_write(mw.fs, mw.file);
		if (r < 0 && !warned++)
			nx_log(NX_LOG_WARNING, "metrics file %s: %s", mw.file, strerror(-r));
		else if (r == 0)
			warned = 0;
		pthread_mutex_lock(&mw.mu);
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += NX_METRICS_PERIOD_S;
		while (!mw.stop && pthread_cond_timedwait(&mw.cv, &mw.mu, &until) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&mw.mu);
	return NULL;
}

int nx_fs_metrics_start(struct nx_fs *fs, const char *file)
{
	pthread_condattr_t ca;
	int r;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&mw.cv, &ca);
	pthread_condattr_destroy(&ca);
	mw.fs = fs;
	mw.file = file;
	mw.stop = 0;
	r = pthread_create(&mw.th, NULL, writer_main, NULL);
	if (r) {
		nx_log(NX_LOG_ERR, "metrics file %s: cannot start its writer: %s", file, strerror(r));
		return -r;
	}
	return 0;
}

void nx_fs_metrics_stop(void)
{
	if (!mw.file)
		return;
	pthread_mutex_lock(&mw.mu);
	mw.stop = 1;
	pthread_cond_signal(&mw.cv);
	pthread_mutex_unlock(&mw.mu);
	pthread_join(mw.th, NULL);
	/* the last figures, once every request is answered */
	nx_fs_metrics_write(mw.fs, mw.file);
	mw.file = NULL;
}
