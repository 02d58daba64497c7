/*
 * cache/db.c: the on-disk cache. LMDB knows what is present; files hold it.
 *
 * Invariant: a file under blobs/ or chunks/ only ever holds bytes that were
 * verified against the digest in its name; it is written in tmp/ and renamed
 * into place, and its LMDB record is written only once the file is durable.
 * Blobs are fsync'ed one by one. Chunks are committed in groups: the saver
 * renames the file and queues it; a syncer thread syncs a batch of them and
 * records the batch in one LMDB transaction. One sync per batch instead of
 * two per chunk is what lets an uncached sequential read run at network
 * speed. Until then the queued chunk is served from its file (it is
 * verified and complete, only not yet safe from power loss). So:
 *  - a record whose file is missing (crash, eviction by another process,
 *    someone cleaning up) is a miss and is dropped;
 *  - a file without a record (a crash before its batch was recorded) is
 *    simply overwritten by the next fetch.
 * Chunk files are immutable once renamed, so a reader holding an fd keeps
 * valid bytes even if eviction unlinks the name, and several processes may
 * share one cache directory (LMDB is multi-process safe).
 *
 * Records (values are little-endian uint64s):
 *   chunks:   frame digest (32) -> size, last_use (unix nanoseconds: frames
 *             fetched in the same second must keep their order for LRU, or
 *             eviction takes frames readahead fetched but nobody read yet)
 *   blobs:    blob digest (32)  -> size, time stored
 *   tags:     hash part (32)    -> manifest digest (32), time
 *   verified: manifest digest   -> time the full NAR verification passed
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache/cache_i.h"

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* MDB_* codes are negative, system errors positive errno values. */
static int mdb_errno(int rc)
{
	if (rc == 0)
		return 0;
	if (rc == MDB_NOTFOUND)
		return -ENOENT;
	if (rc == MDB_MAP_FULL)
		return -ENOSPC;
	if (rc > 0)
		return -rc;
	return -EIO;
}

static int mkdir_p(const char *path)
{
	char buf[PATH_MAX];
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		char c = buf[i];

		buf[i] = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		buf[i] = c;
	}
	return 0;
}

/*
 * Transactions. Every one goes through txn_begin and ends in txn_abort or
 * txn_commit, which hold st->db_rw shared in between (see cache_i.h); *txn
 * is NULL after a failed begin, so no error path can touch a garbage
 * pointer. A begin that finds the map grown by another process
 * (MDB_MAP_RESIZED) adopts the new size and tries once more.
 */
static void map_adopt(struct nx_store *st)
{
	pthread_rwlock_wrlock(&st->db_rw);
	/* size 0: take the size the other process set */
	mdb_env_set_mapsize(st->env, 0);
	pthread_rwlock_unlock(&st->db_rw);
}

static int txn_begin(struct nx_store *st, unsigned flags, MDB_txn **txn)
{
	int rc;

	*txn = NULL;
	for (int tries = 0;; tries++) {
		pthread_rwlock_rdlock(&st->db_rw);
		rc = mdb_txn_begin(st->env, NULL, flags, txn);
		if (rc == 0)
			return 0;
		*txn = NULL;
		pthread_rwlock_unlock(&st->db_rw);
		if (rc != MDB_MAP_RESIZED || tries > 0)
			return rc;
		map_adopt(st);
	}
}

static void txn_abort(struct nx_store *st, MDB_txn *txn)
{
	if (!txn)
		return;
	mdb_txn_abort(txn);
	pthread_rwlock_unlock(&st->db_rw);
}

/* Commits (LMDB frees the transaction whatever the result). */
static int txn_commit(struct nx_store *st, MDB_txn *txn)
{
	int rc = mdb_txn_commit(txn);

	pthread_rwlock_unlock(&st->db_rw);
	return rc;
}

/*
 * MDB_MAP_FULL: doubles the map (up to NX_MAP_MAX) so the caller can retry.
 * @seen is the size the failed transaction had; if someone grew it since,
 * that is enough. 0 when there is room now, else the MDB error to report.
 */
static int map_grow(struct nx_store *st, size_t seen)
{
	MDB_envinfo info;
	size_t want;
	int rc = 0;

	pthread_rwlock_wrlock(&st->db_rw);
	if (mdb_env_info(st->env, &info) == 0 && info.me_mapsize == seen) {
		want = seen >= NX_MAP_MAX / 2 ? NX_MAP_MAX : 2 * seen;
		if (want <= seen) {
			rc = MDB_MAP_FULL;
		} else {
			rc = mdb_env_set_mapsize(st->env, want);
			if (rc == 0)
				nx_log(NX_LOG_NOTICE, "cache %s: lmdb map grown to %zu MiB", st->dir,
				       want >> 20);
		}
	}
	pthread_rwlock_unlock(&st->db_rw);
	return rc;
}

static size_t map_size(struct nx_store *st);

/* Runs @fn in a write transaction and commits it; on MDB_MAP_FULL grows the
 * map and runs it again from the start (so @fn must reset what it
 * computes). Returns an MDB code. */
static int write_txn(struct nx_store *st, int (*fn)(struct nx_store *st, MDB_txn *txn, void *arg),
		     void *arg)
{
	for (int tries = 0;; tries++) {
		size_t seen = map_size(st);
		MDB_txn *txn;
		int rc = txn_begin(st, 0, &txn);

		if (rc == 0) {
			rc = fn(st, txn, arg);
			if (rc == 0)
				rc = txn_commit(st, txn);
			else
				txn_abort(st, txn);
		}
		if (rc != MDB_MAP_FULL || tries >= 8 || map_grow(st, seen) != 0)
			return rc;
	}
}

static size_t map_size(struct nx_store *st)
{
	MDB_envinfo info;

	pthread_rwlock_rdlock(&st->db_rw);
	if (mdb_env_info(st->env, &info) != 0)
		info.me_mapsize = 0;
	pthread_rwlock_unlock(&st->db_rw);
	return info.me_mapsize;
}

/* Removes tmp files of processes that no longer exist. Names are
 * "<pid>.<random>" so a prefetch CLI sharing the cache keeps its files. */
static void clean_tmp(struct nx_store *st)
{
	char path[PATH_MAX];
	DIR *d;
	struct dirent *de;

	snprintf(path, sizeof(path), "%s/tmp", st->dir);
	d = opendir(path);
	if (!d)
		return;
	while ((de = readdir(d))) {
		char *end;
		long pid;

		if (de->d_name[0] == '.')
			continue;
		pid = strtol(de->d_name, &end, 10);
		if (*end == '.' && pid > 0 &&
		    (pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH))
			continue; /* its writer is alive */
		if (unlinkat(dirfd(d), de->d_name, 0) == 0)
			nx_log(NX_LOG_DEBUG, "cache %s: removed stale tmp file %s", st->dir,
			       de->d_name);
	}
	closedir(d);
}

/* Sums the sizes recorded in @dbi (for the running total). */
static uint64_t sum_sizes(struct nx_store *st, MDB_dbi dbi)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	uint64_t sum = 0;

	if (txn_begin(st, MDB_RDONLY, &txn))
		return 0;
	if (mdb_cursor_open(txn, dbi, &cur) == 0) {
		while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0)
			if (v.mv_size >= 8)
				sum += get_le64(v.mv_data);
		mdb_cursor_close(cur);
	}
	txn_abort(st, txn);
	return sum;
}

static int open_dbis(struct nx_store *st)
{
	static const char *const names[] = { "chunks", "blobs", "tags", "verified" };
	MDB_dbi *dbis[] = { &st->dbi_chunks, &st->dbi_blobs, &st->dbi_tags, &st->dbi_verified };
	MDB_txn *txn;
	int rc;

	rc = txn_begin(st, st->readonly ? MDB_RDONLY : 0, &txn);
	if (rc)
		return rc;
	for (size_t i = 0; i < 4; i++) {
		rc = mdb_dbi_open(txn, names[i], st->readonly ? 0 : MDB_CREATE, dbis[i]);
		if (rc) {
			txn_abort(st, txn);
			return rc;
		}
	}
	return txn_commit(st, txn);
}

int nx_db_open(struct nx_store *st)
{
	char path[PATH_MAX];
	static const char *const subs[] = { "index.mdb", "blobs", "chunks", "tmp" };
	int rc;

	if (st->readonly) {
		snprintf(path, sizeof(path), "%s/index.mdb/data.mdb", st->dir);
		if (access(path, R_OK) < 0) {
			nx_log(NX_LOG_DEBUG, "cache %s: none, reading without a cache", st->dir);
			return 0;
		}
	} else {
		rc = mkdir_p(st->dir);
		if (rc == 0 && access(st->dir, W_OK | X_OK) < 0)
			rc = -errno;
		for (size_t i = 0; rc == 0 && i < 4; i++) {
			snprintf(path, sizeof(path), "%s/%s", st->dir, subs[i]);
			if (mkdir(path, 0755) < 0 && errno != EEXIST)
				rc = -errno;
		}
		if (rc < 0) {
			nx_log(NX_LOG_ERR, "cache %s: cannot create: %s; check the cache= directory",
			       st->dir, strerror(-rc));
			return rc;
		}
		clean_tmp(st);
	}

	snprintf(path, sizeof(path), "%s/index.mdb", st->dir);
	rc = mdb_env_create(&st->env);
	if (rc == 0)
		rc = mdb_env_set_mapsize(st->env, NX_MAP_SIZE);
	if (rc == 0)
		rc = mdb_env_set_maxdbs(st->env, 8);
	if (rc == 0)
		rc = mdb_env_set_maxreaders(st->env, 510);
	if (rc == 0)
		rc = mdb_env_open(st->env, path,
				  MDB_NOTLS | MDB_NOMETASYNC | (st->readonly ? MDB_RDONLY : 0),
				  0644);
	if (rc == 0) {
		int dead = 0;

		/* slots of readers that died (kill -9) would pin old pages */
		if (mdb_reader_check(st->env, &dead) == 0 && dead > 0)
			nx_log(NX_LOG_INFO, "cache %s: cleared %d stale lmdb reader slots", st->dir,
			       dead);
		rc = open_dbis(st);
	}
	if (rc) {
		nx_log(st->readonly ? NX_LOG_WARNING : NX_LOG_ERR,
		       "cache %s: lmdb: %s; remove the directory to rebuild", st->dir,
		       mdb_strerror(rc));
		if (st->env)
			mdb_env_close(st->env);
		st->env = NULL;
		if (st->readonly) /* a tool can still read without the cache */
			return 0;
		return rc > 0 ? -rc : -EIO;
	}
	st->total_bytes = sum_sizes(st, st->dbi_chunks) + sum_sizes(st, st->dbi_blobs);
	return 0;
}

static void sync_stop(struct nx_store *st);

void nx_db_close(struct nx_store *st)
{
	sync_stop(st);
	free(st->pend);
	free(st->syncing);
	st->pend = st->syncing = NULL;
	if (st->env)
		mdb_env_close(st->env);
	st->env = NULL;
}

int nx_db_get(struct nx_store *st, MDB_dbi dbi, const void *key, size_t klen, void *val,
	      size_t cap, size_t *vlen)
{
	MDB_txn *txn;
	MDB_val k = { klen, (void *)key }, v;
	int rc;

	if (!st->env)
		return -ENOENT;
	rc = txn_begin(st, MDB_RDONLY, &txn);
	if (rc)
		return mdb_errno(rc);
	rc = mdb_get(txn, dbi, &k, &v);
	if (rc == 0) {
		memcpy(val, v.mv_data, v.mv_size < cap ? v.mv_size : cap);
		if (vlen)
			*vlen = v.mv_size;
	}
	txn_abort(st, txn);
	return mdb_errno(rc);
}

struct kv_op {
	MDB_dbi dbi;
	MDB_val k, v;
	int del;
};

static int kv_apply(struct nx_store *st, MDB_txn *txn, void *arg)
{
	struct kv_op *op = arg;

	if (op->del)
		return mdb_del(txn, op->dbi, &op->k, NULL);
	return mdb_put(txn, op->dbi, &op->k, &op->v, 0);
}

int nx_db_put(struct nx_store *st, MDB_dbi dbi, const void *key, size_t klen, const void *val,
	      size_t vlen)
{
	struct kv_op op = { dbi, { klen, (void *)key }, { vlen, (void *)val }, 0 };

	if (!st->env || st->readonly)
		return 0;
	return mdb_errno(write_txn(st, kv_apply, &op));
}

int nx_db_del(struct nx_store *st, MDB_dbi dbi, const void *key, size_t klen)
{
	struct kv_op op = { dbi, { klen, (void *)key }, { 0, NULL }, 1 };

	if (!st->env || st->readonly)
		return 0;
	return mdb_errno(write_txn(st, kv_apply, &op));
}

static void obj_path(const struct nx_store *st, const char *kind, const uint8_t d[NX_SHA256_LEN],
		     char *out, size_t cap)
{
	char hex[2 * NX_SHA256_LEN + 1];

	nx_hex(d, NX_SHA256_LEN, hex);
	snprintf(out, cap, "%s/%s/%.2s/%s", st->dir, kind, hex, hex);
}

/* Wall-clock nanoseconds: last_use must order frames across restarts too. */
static uint64_t wall_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* tmp + (fsync if @sync) + rename into DIR/<kind>/xx/<hex>. */
static int file_commit(struct nx_store *st, const char *kind, const uint8_t d[NX_SHA256_LEN],
		       const void *buf, size_t len, int sync)
{
	char tmp[PATH_MAX], dst[PATH_MAX], *slash;
	int fd, rc = 0;

	snprintf(tmp, sizeof(tmp), "%s/tmp/%ld.XXXXXX", st->dir, (long)getpid());
	fd = mkstemp(tmp);
	if (fd < 0) {
		rc = -errno;
		goto out_log;
	}
	rc = nx_write_all(fd, buf, len);
	if (rc < 0)
		goto out_unlink;
	if (sync && fsync(fd) < 0) {
		rc = -errno;
		goto out_unlink;
	}
	if (fchmod(fd, 0444) < 0) {
		rc = -errno;
		goto out_unlink;
	}
	close(fd);
	fd = -1;
	obj_path(st, kind, d, dst, sizeof(dst));
	slash = strrchr(dst, '/');
	*slash = '\0';
	if (mkdir(dst, 0755) < 0 && errno != EEXIST) {
		rc = -errno;
		goto out_unlink;
	}
	*slash = '/';
	if (rename(tmp, dst) < 0) {
		rc = -errno;
		goto out_unlink;
	}
	return 0;

out_unlink:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
out_log:
	nx_log(NX_LOG_ERR, "cache %s: cannot store %s file: %s", st->dir, kind, strerror(-rc));
	return rc;
}

int nx_blob_load(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], size_t cap, uint8_t **buf,
		 size_t *len)
{
	uint8_t rec[16], got[NX_SHA256_LEN];
	char path[PATH_MAX];
	struct stat sb;
	uint64_t size;
	uint8_t *b = NULL;
	int fd, rc;

	rc = nx_db_get(st, st->dbi_blobs, d, NX_SHA256_LEN, rec, sizeof(rec), NULL);
	if (rc < 0)
		return -ENOENT;
	size = get_le64(rec);
	obj_path(st, "blobs", d, path, sizeof(path));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		goto drop;
	if (fstat(fd, &sb) < 0 || (uint64_t)sb.st_size != size || size > cap)
		goto drop_fd;
	b = malloc(size ? size : 1);
	if (!b) {
		close(fd);
		return -ENOMEM;
	}
	if (nx_pread_all(fd, b, size, 0) < 0)
		goto drop_fd;
	close(fd);
	/* Cheap next to a fetch, and catches a damaged disk. */
	nx_sha256(b, size, got);
	if (memcmp(got, d, NX_SHA256_LEN) != 0) {
		fd = -1;
		goto drop_fd;
	}
	*buf = b;
	*len = size;
	return 0;

drop_fd:
	if (fd >= 0)
		close(fd);
drop:
	free(b);
	nx_log(NX_LOG_DEBUG, "cache %s: dropping damaged or missing blob %s", st->dir, path);
	if (!st->readonly) {
		unlink(path);
		if (nx_db_del(st, st->dbi_blobs, d, NX_SHA256_LEN) == 0)
			nx_stat_sub(&st->total_bytes, size);
	}
	return -ENOENT;
}

void nx_blob_save(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], const void *buf,
		  size_t len)
{
	uint8_t rec[16];
	int rc;

	if (!st->env || st->readonly)
		return;
	if (nx_db_get(st, st->dbi_blobs, d, NX_SHA256_LEN, rec, sizeof(rec), NULL) == 0)
		return;
	if (file_commit(st, "blobs", d, buf, len, 1) < 0)
		return;
	put_le64(rec, len);
	put_le64(rec + 8, (uint64_t)time(NULL));
	rc = nx_db_put(st, st->dbi_blobs, d, NX_SHA256_LEN, rec, sizeof(rec));
	if (rc < 0)
		nx_log(NX_LOG_ERR, "cache %s: lmdb: cannot record blob: %s", st->dir,
		       strerror(-rc));
	else
		nx_stat_add(&st->total_bytes, len);
}

static struct nx_pin *pin_find(struct nx_store *st, const uint8_t d[NX_SHA256_LEN])
{
	for (struct nx_pin *p = st->pins; p; p = p->next)
		if (memcmp(p->digest, d, NX_SHA256_LEN) == 0)
			return p;
	return NULL;
}

static const struct nx_pending *pending_find(const struct nx_store *st,
					     const uint8_t d[NX_SHA256_LEN]);

/* Pins @d; *@queued gets its size if it waits for its batch, else 0 (one
 * lock for both: this is on every read of a cached frame). */
static int chunk_pin(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], uint64_t *queued)
{
	const struct nx_pending *q;
	struct nx_pin *p;

	pthread_mutex_lock(&st->lock);
	q = pending_find(st, d);
	*queued = q ? q->size : 0;
	p = pin_find(st, d);
	if (!p) {
		p = calloc(1, sizeof(*p));
		if (!p) {
			pthread_mutex_unlock(&st->lock);
			return -ENOMEM;
		}
		memcpy(p->digest, d, NX_SHA256_LEN);
		p->next = st->pins;
		st->pins = p;
	}
	p->count++;
	pthread_mutex_unlock(&st->lock);
	return 0;
}

void nx_chunk_unpin(struct nx_store *st, const uint8_t d[NX_SHA256_LEN])
{
	struct nx_pin **pp, *p;

	pthread_mutex_lock(&st->lock);
	for (pp = &st->pins; (p = *pp); pp = &p->next) {
		if (memcmp(p->digest, d, NX_SHA256_LEN) != 0)
			continue;
		if (--p->count == 0) {
			*pp = p->next;
			free(p);
		}
		break;
	}
	pthread_mutex_unlock(&st->lock);
}

/* The queued or syncing record of @d, or NULL; under st->lock. */
static const struct nx_pending *pending_find(const struct nx_store *st,
					     const uint8_t d[NX_SHA256_LEN])
{
	for (size_t i = 0; i < st->npend; i++)
		if (memcmp(st->pend[i].digest, d, NX_SHA256_LEN) == 0)
			return &st->pend[i];
	for (size_t i = 0; i < st->nsyncing; i++)
		if (memcmp(st->syncing[i].digest, d, NX_SHA256_LEN) == 0)
			return &st->syncing[i];
	return NULL;
}

static int recorded(struct nx_store *st, const uint8_t d[NX_SHA256_LEN])
{
	uint8_t rec[16];

	return nx_db_get(st, st->dbi_chunks, d, NX_SHA256_LEN, rec, sizeof(rec), NULL) == 0;
}

/*
 * Queued first, LMDB second: the syncer takes a batch off its list only
 * after committing it, so a chunk not queued is either recorded or nowhere.
 */
int nx_chunk_known(struct nx_store *st, const uint8_t d[NX_SHA256_LEN])
{
	int queued;

	pthread_mutex_lock(&st->lock);
	queued = pending_find(st, d) != NULL;
	pthread_mutex_unlock(&st->lock);
	return queued || recorded(st, d);
}

int nx_chunk_known_locked(struct nx_store *st, const uint8_t d[NX_SHA256_LEN])
{
	return pending_find(st, d) != NULL || recorded(st, d);
}

static void sync_start_locked(struct nx_store *st);

/* Queues a last-use update for the syncer (the read path never writes). */
static void touch_queue(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], int blob)
{
	pthread_mutex_lock(&st->lock);
	if (!st->touch && !st->sync_stop)
		st->touch = malloc(NX_TOUCH_MAX * sizeof(*st->touch));
	if (st->touch && st->ntouch < NX_TOUCH_MAX && !st->sync_stop) {
		if (!st->ntouch)
			st->touch_since = nx_now_ns();
		memcpy(st->touch[st->ntouch].digest, d, NX_SHA256_LEN);
		st->touch[st->ntouch].blob = (uint8_t)blob;
		st->ntouch++;
		sync_start_locked(st);
		if (st->ntouch == 1 || st->ntouch >= NX_TOUCH_MAX / 2)
			pthread_cond_broadcast(&st->sync_cond);
	}
	pthread_mutex_unlock(&st->lock);
}

int nx_chunk_open(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], uint32_t ulen, int *fd,
		  uint64_t *sizep)
{
	uint8_t rec[16];
	char path[PATH_MAX];
	struct stat sb;
	uint64_t size, last;
	int rc, f;

	if (!st->env)
		return -ENOENT;
	rc = chunk_pin(st, d, &size);
	if (rc < 0)
		return rc;
	if (size) {
		last = UINT64_MAX; /* recorded with a fresh last_use soon */
	} else {
		rc = nx_db_get(st, st->dbi_chunks, d, NX_SHA256_LEN, rec, sizeof(rec), NULL);
		if (rc < 0) {
			rc = -ENOENT; /* an LMDB hiccup is a miss, not a failed read */
			goto unpin;
		}
		size = get_le64(rec);
		last = get_le64(rec + 8);
	}
	obj_path(st, "chunks", d, path, sizeof(path));
	f = open(path, O_RDONLY | O_CLOEXEC);
	/* The cache's own facts only: the file and its record must agree. */
	if (f < 0 || fstat(f, &sb) < 0 || (uint64_t)sb.st_size != size) {
		if (f >= 0)
			close(f);
		nx_log(NX_LOG_DEBUG, "cache %s: dropping missing or damaged chunk %s", st->dir,
		       path);
		if (!st->readonly) {
			unlink(path);
			if (nx_db_del(st, st->dbi_chunks, d, NX_SHA256_LEN) == 0)
				nx_stat_sub(&st->total_bytes, size);
		}
		rc = -ENOENT;
		goto unpin;
	}
	if (size != ulen) {
		close(f);
		*sizep = size;
		rc = -ERANGE;
		goto unpin;
	}
	/* LRU bookkeeping without a write per read, and none on this thread */
	if (!st->readonly && last != UINT64_MAX &&
	    wall_ns() > last + NX_TOUCH_INTERVAL * 1000000000ull)
		touch_queue(st, d, 0);
	*fd = f;
	return 0;

unpin:
	nx_chunk_unpin(st, d);
	return rc;
}

void nx_chunk_willneed(struct nx_store *st, const uint8_t d[NX_SHA256_LEN])
{
	char path[PATH_MAX];
	int fd;

	obj_path(st, "chunks", d, path, sizeof(path));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return; /* evicted meanwhile: the read will fetch it */
	posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
	close(fd);
}

/* Bytes of chunk files queued or being synced: counted, not in LMDB yet. */
static uint64_t unrecorded_bytes(struct nx_store *st)
{
	uint64_t n;

	pthread_mutex_lock(&st->lock);
	n = st->pend_bytes + st->syncing_bytes;
	pthread_mutex_unlock(&st->lock);
	return n;
}

struct evict_cand {
	uint8_t digest[NX_SHA256_LEN];
	uint64_t size;
	uint64_t last_use;
};

static int cand_cmp(const void *a, const void *b)
{
	const struct evict_cand *x = a, *y = b;

	if (x->last_use != y->last_use)
		return x->last_use < y->last_use ? -1 : 1;
	return memcmp(x->digest, y->digest, NX_SHA256_LEN);
}

static int flight_busy(struct nx_store *st, const uint8_t d[NX_SHA256_LEN])
{
	for (struct nx_flight *f = st->flights; f; f = f->next)
		if (memcmp(f->digest, d, NX_SHA256_LEN) == 0)
			return 1;
	return 0;
}

struct del_batch {
	const struct evict_cand *c;
	size_t n;
};

static int del_apply(struct nx_store *st, MDB_txn *txn, void *arg)
{
	const struct del_batch *b = arg;

	for (size_t i = 0; i < b->n; i++) {
		MDB_val key = { NX_SHA256_LEN, (void *)b->c[i].digest };
		int rc = mdb_del(txn, st->dbi_chunks, &key, NULL);

		if (rc && rc != MDB_NOTFOUND)
			return rc;
	}
	return 0;
}

/*
 * Evicts least recently used chunks until the total is at 90% of the limit
 * (so eviction runs once per tenth of the cache, not once per frame). Only
 * one thread evicts at a time; the scan is O(chunks), which is fine at that
 * rate.
 */
static void evict(struct nx_store *st)
{
	uint64_t target = st->limit - st->limit / 10;
	struct evict_cand *c = NULL;
	size_t n = 0, cap = 0, ndel = 0;
	int complete = 1;
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	char path[PATH_MAX];

	pthread_mutex_lock(&st->lock);
	if (st->evicting) {
		pthread_mutex_unlock(&st->lock);
		return;
	}
	st->evicting = 1;
	pthread_mutex_unlock(&st->lock);

	if (txn_begin(st, MDB_RDONLY, &txn))
		goto out;
	if (mdb_cursor_open(txn, st->dbi_chunks, &cur)) {
		txn_abort(st, txn);
		goto out;
	}
	while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
		if (k.mv_size != NX_SHA256_LEN || v.mv_size < 16)
			continue;
		if (n == cap) {
			size_t ncap = cap ? 2 * cap : 1024;
			struct evict_cand *nc = realloc(c, ncap * sizeof(*c));

			if (!nc) {
				complete = 0;
				break;
			}
			c = nc;
			cap = ncap;
		}
		memcpy(c[n].digest, k.mv_data, NX_SHA256_LEN);
		c[n].size = get_le64(v.mv_data);
		c[n].last_use = get_le64((const uint8_t *)v.mv_data + 8);
		n++;
	}
	mdb_cursor_close(cur);
	txn_abort(st, txn);
	if (n) /* c is NULL when the scan found nothing */
		qsort(c, n, sizeof(*c), cand_cmp);
	if (complete) {
		/* the scan saw every chunk: start from the true total (other
		 * processes may have added or evicted since our last look) */
		uint64_t sum = sum_sizes(st, st->dbi_blobs);

		for (size_t i = 0; i < n; i++)
			sum += c[i].size;
		sum += unrecorded_bytes(st);
		__atomic_store_n(&st->total_bytes, sum, __ATOMIC_RELAXED);
	}

	for (size_t i = 0; i < n && nx_stat_get(&st->total_bytes) > target; i++) {
		int skip;

		/* Under the lock, so a reader either pinned the chunk before
		 * (we skip it) or opens it after the unlink (a miss). */
		pthread_mutex_lock(&st->lock);
		skip = pin_find(st, c[i].digest) || flight_busy(st, c[i].digest);
		if (!skip) {
			obj_path(st, "chunks", c[i].digest, path, sizeof(path));
			unlink(path);
		}
		pthread_mutex_unlock(&st->lock);
		if (skip)
			continue;
		nx_stat_sub(&st->total_bytes, c[i].size);
		nx_stat_add(&st->evictions, 1);
		c[ndel++] = c[i];
	}
	if (ndel) {
		struct del_batch db = { c, ndel };
		int rc = write_txn(st, del_apply, &db);

		/* the files are gone: their records are misses, dropped when read */
		if (rc)
			nx_log(NX_LOG_WARNING, "cache %s: lmdb: cannot record eviction: %s", st->dir,
			       mdb_strerror(rc));
	}
	nx_log(NX_LOG_DEBUG, "cache %s: evicted %zu chunks", st->dir, ndel);
out:
	free(c);
	pthread_mutex_lock(&st->lock);
	st->evicting = 0;
	pthread_mutex_unlock(&st->lock);
}

struct rec_batch {
	const struct nx_pending *b;
	size_t n;
	const uint8_t *ok;
	uint64_t now;
	uint64_t dup; /* bytes of chunks another process had recorded */
};

static int rec_apply(struct nx_store *st, MDB_txn *txn, void *arg)
{
	struct rec_batch *rb = arg;
	uint8_t rec[16];

	rb->dup = 0;
	for (size_t i = 0; i < rb->n; i++) {
		MDB_val k = { NX_SHA256_LEN, (void *)rb->b[i].digest }, v = { sizeof(rec), rec };
		int rc;

		if (!rb->ok[i])
			continue;
		put_le64(rec, rb->b[i].size);
		/* one batch shares a second: keep fetch order for LRU */
		put_le64(rec + 8, rb->now + i);
		rc = mdb_put(txn, st->dbi_chunks, &k, &v, MDB_NOOVERWRITE);
		if (rc == MDB_KEYEXIST) {
			/* re-fetched after a damaged file, or another process
			 * got there first: counted once */
			rb->dup += rb->b[i].size;
			v.mv_size = sizeof(rec);
			v.mv_data = rec;
			rc = mdb_put(txn, st->dbi_chunks, &k, &v, 0);
		}
		if (rc)
			return rc;
	}
	return 0;
}

/*
 * Syncs the files of @n queued chunks and records them in one transaction.
 * A file that cannot be synced (or is gone) is left unrecorded: the next
 * read of it is a miss. A batch LMDB cannot record (disk error, full map
 * that cannot grow, a damaged environment) is one log line and a miss
 * later: its files stay, unrecorded, until the orphan sweep.
 */
static void sync_batch(struct nx_store *st, const struct nx_pending *b, size_t n)
{
	char path[PATH_MAX];
	uint8_t *ok;
	uint64_t unrecorded = 0;
	struct rec_batch rb = { .b = b, .n = n, .now = wall_ns() };
	size_t i;
	int rc, sync_err = 0;

	ok = calloc(n ? n : 1, 1);
	if (!ok) {
		for (i = 0; i < n; i++)
			unrecorded += b[i].size;
		nx_stat_sub(&st->total_bytes, unrecorded);
		return; /* nothing recorded: every one of them is a miss later */
	}
	for (i = 0; i < n; i++) {
		int fd;

		obj_path(st, "chunks", b[i].digest, path, sizeof(path));
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue; /* dropped or evicted meanwhile */
		/* the first fsync's journal commit carries most of the others */
		ok[i] = fsync(fd) == 0;
		if (!ok[i] && !sync_err)
			sync_err = errno;
		close(fd);
	}
	if (sync_err)
		nx_log(NX_LOG_ERR, "cache %s: cannot sync chunk files: %s; they stay unrecorded",
		       st->dir, strerror(sync_err));
	rb.ok = ok;
	rc = write_txn(st, rec_apply, &rb);
	if (rc) {
		nx_log(NX_LOG_ERR, "cache %s: lmdb: cannot record %zu chunks: %s", st->dir, n,
		       mdb_strerror(rc));
		for (i = 0; i < n; i++)
			ok[i] = 0;
		rb.dup = 0;
	}
	unrecorded = rb.dup;
	for (i = 0; i < n; i++)
		if (!ok[i])
			unrecorded += b[i].size;
	if (unrecorded)
		nx_stat_sub(&st->total_bytes, unrecorded);
	free(ok);
}

struct touch_batch {
	const struct nx_touch *t;
	size_t n;
	uint64_t now;
};

static int touch_apply(struct nx_store *st, MDB_txn *txn, void *arg)
{
	const struct touch_batch *tb = arg;

	for (size_t i = 0; i < tb->n; i++) {
		MDB_dbi dbi = tb->t[i].blob ? st->dbi_blobs : st->dbi_chunks;
		MDB_val k = { NX_SHA256_LEN, (void *)tb->t[i].digest }, v;
		uint8_t rec[64];
		int rc = mdb_get(txn, dbi, &k, &v);

		if (rc == MDB_NOTFOUND || (rc == 0 && (v.mv_size < 16 || v.mv_size > sizeof(rec))))
			continue; /* evicted meanwhile */
		if (rc)
			return rc;
		memcpy(rec, v.mv_data, v.mv_size);
		put_le64(rec + 8, tb->now + i);
		v.mv_data = rec;
		rc = mdb_put(txn, dbi, &k, &v, 0);
		if (rc)
			return rc;
	}
	return 0;
}

/* Takes the queued touches (under st->lock) and records them outside. */
static void touch_take(struct nx_store *st)
{
	struct touch_batch tb;
	struct nx_touch *t = st->touch;
	int rc;

	if (!st->ntouch)
		return;
	tb.t = t;
	tb.n = st->ntouch;
	tb.now = wall_ns();
	/* the next ones queue into a fresh array meanwhile */
	st->touch = NULL;
	st->ntouch = 0;
	pthread_mutex_unlock(&st->lock);
	rc = write_txn(st, touch_apply, &tb);
	if (rc)
		nx_log(NX_LOG_WARNING, "cache %s: lmdb: cannot record last use: %s", st->dir,
		       mdb_strerror(rc));
	pthread_mutex_lock(&st->lock);
	if (!st->touch)
		st->touch = t; /* reuse it */
	else
		free(t);
}

/* Takes the queued batch (under st->lock), syncs and records it outside. */
static void sync_take(struct nx_store *st)
{
	struct nx_pending *t;
	size_t tcap;

	/* one batch at a time: the syncing array is read outside the lock */
	while (st->nsyncing)
		pthread_cond_wait(&st->sync_cond, &st->lock);
	if (!st->npend)
		return;
	t = st->syncing;
	tcap = st->syncing_cap;

	st->syncing = st->pend;
	st->syncing_cap = st->pend_cap;
	st->nsyncing = st->npend;
	st->syncing_bytes = st->pend_bytes;
	st->pend = t;
	st->pend_cap = tcap;
	st->npend = 0;
	st->pend_bytes = 0;
	pthread_cond_broadcast(&st->sync_cond); /* room for waiting savers */
	pthread_mutex_unlock(&st->lock);
	sync_batch(st, st->syncing, st->nsyncing);
	pthread_mutex_lock(&st->lock);
	st->nsyncing = 0;
	st->syncing_bytes = 0;
	pthread_cond_broadcast(&st->sync_cond); /* for savers waiting on a full cache */
}

static void wait_until(struct nx_store *st, uint64_t due)
{
	struct timespec ts;

	ts.tv_sec = (time_t)(due / 1000000000u);
	ts.tv_nsec = (long)(due % 1000000000u);
	pthread_cond_timedwait(&st->sync_cond, &st->lock, &ts);
}

static void *syncer(void *arg)
{
	struct nx_store *st = arg;

	pthread_setname_np(pthread_self(), "nx-sync"); /* for tests and debuggers */
	pthread_mutex_lock(&st->lock);
	for (;;) {
		uint64_t now;

		while (!st->npend && !st->ntouch && !st->sync_stop)
			pthread_cond_wait(&st->sync_cond, &st->lock);
		if (!st->npend && !st->ntouch)
			break; /* stopping with nothing left */
		now = nx_now_ns();
		if (st->npend) {
			uint64_t due = st->pend_since + NX_SYNC_DELAY_NS;

			if (!st->sync_stop && !st->sync_urgent && st->npend < NX_SYNC_CHUNKS &&
			    st->pend_bytes < NX_SYNC_BYTES && now < due) {
				wait_until(st, due);
				continue; /* look again */
			}
			/* No eviction here: a saver over the limit waits for
			 * this batch and evicts itself, so it returns with the
			 * cache within its limit; evicting here too made that
			 * saver skip (one eviction at a time) and return while
			 * the cache was over. */
			st->sync_urgent = 0;
			sync_take(st);
			continue;
		}
		/* only touches: they wait for a batch worth a commit */
		if (!st->sync_stop && st->ntouch < NX_TOUCH_MAX / 2 &&
		    now < st->touch_since + NX_TOUCH_DELAY_NS) {
			wait_until(st, st->touch_since + NX_TOUCH_DELAY_NS);
			continue;
		}
		touch_take(st);
	}
	pthread_mutex_unlock(&st->lock);
	return NULL;
}

/* Starts the syncer thread if it is not running (under st->lock). */
static void sync_start_locked(struct nx_store *st)
{
	if (!st->sync_started && !st->sync_stop)
		st->sync_started = pthread_create(&st->sync_thread, NULL, syncer, st) == 0;
}

static void sync_stop(struct nx_store *st)
{
	pthread_mutex_lock(&st->lock);
	st->sync_stop = 1;
	pthread_cond_broadcast(&st->sync_cond);
	pthread_mutex_unlock(&st->lock);
	if (st->sync_started) {
		pthread_join(st->sync_thread, NULL);
		st->sync_started = 0;
	}
	pthread_mutex_lock(&st->lock);
	while (st->npend) /* no thread: sync what is left here */
		sync_take(st);
	touch_take(st);
	free(st->touch);
	st->touch = NULL;
	pthread_mutex_unlock(&st->lock);
}

void nx_chunk_save(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], const void *buf,
		   size_t len)
{
	int first;

	if (!st->env || st->readonly)
		return;
	if (file_commit(st, "chunks", d, buf, len, 0) < 0)
		return;

	pthread_mutex_lock(&st->lock);
	if (pending_find(st, d)) {
		/* queued a moment ago (a repeated digest): the file is the same */
		pthread_mutex_unlock(&st->lock);
		return;
	}
	sync_start_locked(st);
	while (st->sync_started && !st->sync_stop &&
	       (st->npend >= 4 * NX_SYNC_CHUNKS || st->pend_bytes >= 4 * NX_SYNC_BYTES))
		pthread_cond_wait(&st->sync_cond, &st->lock);
	if (st->npend == st->pend_cap) {
		size_t ncap = st->pend_cap ? 2 * st->pend_cap : NX_SYNC_CHUNKS;
		struct nx_pending *np = realloc(st->pend, ncap * sizeof(*np));

		if (!np) {
			pthread_mutex_unlock(&st->lock);
			return; /* the file stays unrecorded: a miss next time */
		}
		st->pend = np;
		st->pend_cap = ncap;
	}
	first = !st->npend;
	if (first)
		st->pend_since = nx_now_ns();
	memcpy(st->pend[st->npend].digest, d, NX_SHA256_LEN);
	st->pend[st->npend].size = len;
	st->npend++;
	st->pend_bytes += len;
	nx_stat_add(&st->total_bytes, len);
	if (!st->sync_started) {
		sync_take(st); /* no thread (or closing): sync right here */
	} else if (nx_stat_get(&st->total_bytes) > st->limit) {
		/* Only recorded chunks can be evicted: a full cache records
		 * what is queued now, so it stays within its limit. Others
		 * may queue more meanwhile: ask again each time. */
		while ((st->npend || st->nsyncing) && !st->sync_stop) {
			st->sync_urgent = 1;
			pthread_cond_broadcast(&st->sync_cond);
			pthread_cond_wait(&st->sync_cond, &st->lock);
		}
	} else if (first || st->npend >= NX_SYNC_CHUNKS || st->pend_bytes >= NX_SYNC_BYTES) {
		/* the first one starts the syncer's clock; a full batch goes now */
		pthread_cond_broadcast(&st->sync_cond);
	}
	pthread_mutex_unlock(&st->lock);

	/* Another process sharing the cache (nixoci prefetch, a second
	 * daemon) adds and evicts behind our back: our running total is only
	 * our own view, so now and then take the real one from LMDB. */
	if (__atomic_add_fetch(&st->saves, 1, __ATOMIC_RELAXED) % NX_RESYNC_SAVES == 0)
		__atomic_store_n(&st->total_bytes,
				 sum_sizes(st, st->dbi_chunks) + sum_sizes(st, st->dbi_blobs) +
					 unrecorded_bytes(st),
				 __ATOMIC_RELAXED);
	if (nx_stat_get(&st->total_bytes) > st->limit)
		evict(st);
}

struct drop_op {
	const uint8_t *d;
	uint64_t size; /* of the record deleted, 0 if none */
};

static int drop_apply(struct nx_store *st, MDB_txn *txn, void *arg)
{
	struct drop_op *op = arg;
	MDB_val k = { NX_SHA256_LEN, (void *)op->d }, v;
	int rc;

	op->size = 0;
	rc = mdb_get(txn, st->dbi_chunks, &k, &v);
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return rc;
	if (v.mv_size >= 8)
		op->size = get_le64(v.mv_data);
	return mdb_del(txn, st->dbi_chunks, &k, NULL);
}

void nx_chunk_drop(struct nx_store *st, const uint8_t d[NX_SHA256_LEN])
{
	char path[PATH_MAX];
	struct drop_op op = { d, 0 };
	const struct nx_pending *q;
	int skip, rc;

	if (!st->env || st->readonly)
		return;
	pthread_mutex_lock(&st->lock);
	skip = pin_find(st, d) || flight_busy(st, d);
	if (!skip) {
		obj_path(st, "chunks", d, path, sizeof(path));
		unlink(path);
		/* Queued: forget it. Being synced: the syncer finds no file
		 * and records nothing, or records it just before the unlink,
		 * and the record of a missing file is a miss. */
		q = pending_find(st, d);
		if (q && q >= st->pend && q < st->pend + st->npend) {
			st->pend_bytes -= q->size;
			nx_stat_sub(&st->total_bytes, q->size);
			st->pend[q - st->pend] = st->pend[--st->npend];
		}
	}
	pthread_mutex_unlock(&st->lock);
	if (skip)
		return;
	rc = write_txn(st, drop_apply, &op);
	if (rc == 0)
		nx_stat_sub(&st->total_bytes, op.size);
	else /* the file is gone: the record is a miss, dropped when read */
		nx_log(NX_LOG_WARNING, "cache %s: lmdb: cannot drop a chunk record: %s", st->dir,
		       mdb_strerror(rc));
}
