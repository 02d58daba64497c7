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
 *   ids:      store path id (8, LE) -> base name   (store.c: inode ids)
 *   idnames:  base name        -> store path id (8, LE)
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
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

/* Disk bytes of a record (what du counts): recorded since records carry it,
 * else the size rounded up to a block. */
static uint64_t rec_disk(const void *v, size_t n)
{
	uint64_t size = get_le64(v);

	if (n >= 24)
		return get_le64((const uint8_t *)v + 16);
	return (size + 4095) & ~UINT64_C(4095);
}

/* What @fd takes on disk, as du counts it. */
static uint64_t disk_bytes(const struct stat *sb)
{
	return (uint64_t)sb->st_blocks * 512;
}

/* mkdir -p with parents 0755 and the last one 0700 (an existing one is left
 * as it is: the walk below judges it). */
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
		if (mkdir(buf, c ? 0755 : 0700) < 0 && errno != EEXIST)
			return -errno;
		buf[i] = c;
	}
	return 0;
}

/* Why a directory above the cache or the cache itself cannot be trusted,
 * or NULL. */
static const char *untrusted(const struct stat *sb, int above, uid_t me)
{
	if (!S_ISDIR(sb->st_mode))
		return "is not a directory";
	if (above) {
		if (sb->st_uid != 0 && sb->st_uid != me)
			return "is owned by another user, who could replace the cache";
		if ((sb->st_mode & 022) && !((sb->st_mode & S_ISVTX) && sb->st_uid == 0))
			return "is writable by other users (and not a root-owned sticky directory), "
			       "who could replace the cache";
		return NULL;
	}
	if (sb->st_uid != me)
		return "is owned by another user, who could change the bytes served";
	if (sb->st_mode & 022)
		return "is writable by other users, who could change the bytes served";
	return NULL;
}

/*
 * Opens the cache directory for use: resolves @dir (creating it when
 * @create), then opens every component from / with O_NOFOLLOW and checks it
 * on the open descriptor, so what is checked is what is used. *out is an
 * O_RDONLY descriptor of the directory, *resolved its path (caller frees).
 * -ENOENT quietly when it does not exist and !@create; other failures log
 * one line (at @level) saying why and what to do.
 */
static int dir_open_checked(const char *dir, int create, int level, int *out, char **resolved)
{
	char *real = NULL, *save = NULL, *tok, *walk = NULL;
	uid_t me = geteuid();
	struct stat sb;
	int fd = -1, nfd, rc = 0;
	const char *why;

	*out = -1;
	if (create) {
		rc = mkdir_p(dir);
		if (rc < 0) {
			nx_log(level, "cache directory %s: cannot create it: %s; choose another "
			       "with -o cache=DIR", dir, strerror(-rc));
			return rc;
		}
	}
	real = realpath(dir, NULL);
	if (!real) {
		rc = -errno;
		if (rc != -ENOENT || create)
			nx_log(level, "cache directory %s: %s; choose another with -o cache=DIR", dir,
			       strerror(-rc));
		return rc;
	}
	walk = strdup(real);
	fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (!walk || fd < 0) {
		rc = walk ? -errno : -ENOMEM;
		goto out;
	}
	tok = strtok_r(walk, "/", &save);
	if (fstat(fd, &sb) < 0) {
		rc = -errno;
		goto out;
	}
	why = untrusted(&sb, tok != NULL, me);
	if (why) {
		nx_log(level, "cache directory %s: / %s; choose a cache= directory that only "
		       "root or uid %u can change", dir, why, (unsigned)me);
		rc = -EPERM;
		goto out;
	}
	for (; tok; tok = strtok_r(NULL, "/", &save)) {
		const char *next = save && *save ? save : NULL;

		nfd = openat(fd, tok, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (nfd < 0) {
			rc = -errno;
			nx_log(level, "cache directory %s: cannot open %s: %s (changed while "
			       "being checked?)", dir, tok, strerror(-rc));
			goto out;
		}
		close(fd);
		fd = nfd;
		if (fstat(fd, &sb) < 0) {
			rc = -errno;
			goto out;
		}
		why = untrusted(&sb, next != NULL, me);
		if (why) {
			if (next) {
				/* the directory above, as a path for the message */
				size_t len = (size_t)(tok - walk) + strlen(tok);

				nx_log(level, "cache directory %s: %.*s above it %s; choose a "
				       "cache= directory whose parents only root or uid %u can "
				       "change", dir, (int)len, real, why, (unsigned)me);
			} else {
				nx_log(level, "cache directory %s %s (owner uid %u, mode %04o; "
				       "nixoci runs as uid %u); remove it to have it created "
				       "again (mode 0700), or choose another with -o cache=DIR",
				       dir, why, (unsigned)sb.st_uid, (unsigned)(sb.st_mode & 07777),
				       (unsigned)me);
			}
			rc = -EPERM;
			goto out;
		}
	}
	*out = fd;
	fd = -1;
	*resolved = real;
	real = NULL;
out:
	if (fd >= 0)
		close(fd);
	free(walk);
	free(real);
	return rc;
}

/* Opens subdirectory @name of the cache directory @dirfd (named @dir in
 * messages), creating it if @create, with the same checks as the cache
 * directory. -ENOENT quietly when it is missing and !@create. */
static int subdir_open_at(int dirfd, const char *dir, const char *name, int create, int level,
			  int *out)
{
	struct stat sb;
	const char *why;
	int fd;

	if (create && mkdirat(dirfd, name, 0700) < 0 && errno != EEXIST) {
		int e = errno;

		nx_log(level, "cache %s: cannot create %s: %s", dir, name, strerror(e));
		return -e;
	}
	fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;

		if (e == ENOENT && !create)
			return -ENOENT;
		nx_log(level, "cache %s: %s is %s; remove it (the cache rebuilds itself)", dir,
		       name, e == ELOOP || e == ENOTDIR ? "a symlink or not a directory" :
		       strerror(e));
		return -e;
	}
	why = fstat(fd, &sb) < 0 ? "cannot be checked" : untrusted(&sb, 0, geteuid());
	if (why) {
		nx_log(level, "cache %s: %s %s; remove it (the cache rebuilds itself)", dir,
		       name, why);
		close(fd);
		return -EPERM;
	}
	*out = fd;
	return 0;
}

static int subdir_open(struct nx_store *st, const char *name, int level, int *out)
{
	return subdir_open_at(st->dirfd, st->dir, name, !st->readonly, level, out);
}

/* LMDB opens its two files by path: they must be ours, regular, not
 * writable by others (or absent). */
static int index_files_check(struct nx_store *st, int level)
{
	static const char *const names[] = { "data.mdb", "lock.mdb" };

	for (size_t i = 0; i < 2; i++) {
		struct stat sb;

		if (fstatat(st->fd_index, names[i], &sb, AT_SYMLINK_NOFOLLOW) < 0) {
			if (errno == ENOENT)
				continue;
			return -errno;
		}
		if (!S_ISREG(sb.st_mode) || sb.st_uid != geteuid() || (sb.st_mode & 022)) {
			nx_log(level, "cache %s: index.mdb/%s is not a file of uid %u that only it "
			       "can write; remove index.mdb (the cache rebuilds itself)", st->dir,
			       names[i], (unsigned)geteuid());
			return -EPERM;
		}
	}
	return 0;
}

int nx_cache_dir_check(const char *dir)
{
	char *real = NULL;
	int fd, rc;

	static const char *const subs[] = { "index.mdb", "blobs", "chunks", "tmp", "files" };

	rc = dir_open_checked(dir, 1, NX_LOG_ERR, &fd, &real);
	if (rc < 0)
		return rc;
	/* the ones that exist already: refused now, not after mounting */
	for (size_t i = 0; rc == 0 && i < sizeof(subs) / sizeof(subs[0]); i++) {
		int sfd;

		rc = subdir_open_at(fd, dir, subs[i], 0, NX_LOG_ERR, &sfd);
		if (rc == 0)
			close(sfd);
		if (rc == -ENOENT)
			rc = 0;
	}
	close(fd);
	free(real);
	return rc;
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

/* A descriptor of its own for reading directory @fd (a dup would share the
 * read position with every other reader of it). */
static int reopen_dir(int fd)
{
	return fd < 0 ? -1 : openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* Removes tmp files of processes that no longer exist. Names are
 * "<pid>.<random>" so a prefetch CLI sharing the cache keeps its files.
 * tmp was opened with O_NOFOLLOW and unlinkat never follows a symlink, so
 * nothing outside the cache can be removed. */
static void clean_tmp(struct nx_store *st)
{
	int fd = reopen_dir(st->fd_tmp);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d))) {
		char *end;
		long pid;

		if (de->d_name[0] == '.')
			continue;
		pid = strtol(de->d_name, &end, 10);
		if (*end == '.' && pid > 0 &&
		    (pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH))
			continue; /* its writer is alive */
		if (unlinkat(st->fd_tmp, de->d_name, 0) == 0)
			nx_log(NX_LOG_DEBUG, "cache %s: removed stale tmp file %s", st->dir,
			       de->d_name);
	}
	closedir(d);
}

/* Disk bytes of what is not a chunk or a blob: the LMDB files and every
 * directory (the fan-out ones grow with their entries), which du counts
 * too. O(fan-out directories); called at open, every NX_RESYNC_SAVES saves
 * and at each eviction. */
static uint64_t index_bytes(struct nx_store *st)
{
	int fds[] = { st->dirfd, st->fd_index, st->fd_blobs, st->fd_chunks, st->fd_tmp,
		      st->fd_files };
	struct stat sb;
	uint64_t n = 0;

	if (st->fd_index < 0)
		return 0;
	if (fstatat(st->fd_index, "data.mdb", &sb, AT_SYMLINK_NOFOLLOW) == 0)
		n += disk_bytes(&sb);
	if (fstatat(st->fd_index, "lock.mdb", &sb, AT_SYMLINK_NOFOLLOW) == 0)
		n += disk_bytes(&sb);
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fstat(fds[i], &sb) == 0)
			n += disk_bytes(&sb);
	for (int k = 0; k < 3; k++) {
		int dfd = reopen_dir(k == 0 ? st->fd_chunks : k == 1 ? st->fd_blobs : st->fd_files);
		DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
		struct dirent *de;

		if (!d) {
			if (dfd >= 0)
				close(dfd);
			continue;
		}
		while ((de = readdir(d)))
			if (de->d_name[0] != '.' &&
			    fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0)
				n += disk_bytes(&sb);
		closedir(d);
	}
	return n;
}

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
				sum += rec_disk(v.mv_data, v.mv_size);
		mdb_cursor_close(cur);
	}
	txn_abort(st, txn);
	return sum;
}

static int open_dbis(struct nx_store *st)
{
	static const char *const names[] = { "chunks", "blobs", "tags", "verified", "ids",
					     "idnames" };
	MDB_dbi *dbis[] = { &st->dbi_chunks, &st->dbi_blobs, &st->dbi_tags, &st->dbi_verified,
			    &st->dbi_ids, &st->dbi_idnames };
	MDB_txn *txn;
	int rc;

	rc = txn_begin(st, st->readonly ? MDB_RDONLY : 0, &txn);
	if (rc)
		return rc;
	for (size_t i = 0; i < 6; i++) {
		rc = mdb_dbi_open(txn, names[i], st->readonly ? 0 : MDB_CREATE, dbis[i]);
		if (rc == MDB_NOTFOUND && i >= 4) {
			/* a read-only look at a cache from before the id table */
			st->no_ids = 1;
			continue;
		}
		if (rc) {
			txn_abort(st, txn);
			return rc;
		}
	}
	return txn_commit(st, txn);
}

static void sweep(struct nx_store *st, uint64_t min_age_ns);
static void sync_start_locked(struct nx_store *st);

/* The cache's total as du sees it, from LMDB and the files not recorded yet. */
static uint64_t true_total(struct nx_store *st);

static void fds_close(struct nx_store *st)
{
	int *fds[] = { &st->dirfd, &st->fd_index, &st->fd_blobs, &st->fd_chunks, &st->fd_tmp,
		       &st->lockfd, &st->fd_files };

	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
	free(st->rdir);
	st->rdir = NULL;
}

/* The checked directory and its subdirectories; read-only: 1 when there is
 * no usable cache (then read without one). */
static int dirs_open(struct nx_store *st)
{
	int level = st->readonly ? NX_LOG_WARNING : NX_LOG_ERR;
	int rc;

	rc = dir_open_checked(st->dir, !st->readonly, level, &st->dirfd, &st->rdir);
	if (rc == 0)
		rc = subdir_open(st, "index.mdb", level, &st->fd_index);
	if (rc == 0)
		rc = subdir_open(st, "blobs", level, &st->fd_blobs);
	if (rc == 0)
		rc = subdir_open(st, "chunks", level, &st->fd_chunks);
	if (rc == 0)
		rc = subdir_open(st, "tmp", level, &st->fd_tmp);
	if (rc == 0 && !st->readonly)
		rc = subdir_open(st, "files", level, &st->fd_files);
	if (rc == 0)
		rc = index_files_check(st, level);
	if (rc == 0 && st->readonly && faccessat(st->fd_index, "data.mdb", R_OK, 0) < 0)
		rc = -ENOENT;
	if (rc < 0 && st->readonly) {
		nx_log(NX_LOG_DEBUG, "cache %s: none usable, reading without a cache", st->dir);
		fds_close(st);
		return 1;
	}
	return rc;
}

int nx_db_open(struct nx_store *st)
{
	char path[PATH_MAX];
	int rc, exclusive = 0;

	st->dirfd = st->fd_index = st->fd_blobs = st->fd_chunks = st->fd_tmp = st->lockfd = -1;
	st->fd_files = -1;
	rc = dirs_open(st);
	if (rc)
		return rc > 0 ? 0 : rc;
	if (!st->readonly) {
		/* Every writer holds writers.lock shared; one that gets it
		 * exclusively is alone, so no other process is between a rename
		 * and its record and every unrecorded file is an orphan. (DIR/lock
		 * is nixoci-fs's own: one daemon per cache.) */
		st->lockfd = openat(st->dirfd, "writers.lock",
				    O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (st->lockfd < 0) {
			rc = -errno;
			nx_log(NX_LOG_ERR, "cache %s: cannot open writers.lock: %s; remove it",
			       st->dir, strerror(-rc));
			fds_close(st);
			return rc;
		}
		exclusive = flock(st->lockfd, LOCK_EX | LOCK_NB) == 0;
		if (!exclusive)
			flock(st->lockfd, LOCK_SH); /* waits out another's start-up sweep */
		clean_tmp(st);
	}

	snprintf(path, sizeof(path), "%s/index.mdb", st->rdir);
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
				  0600);
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
		fds_close(st);
		if (st->readonly) /* a tool can still read without the cache */
			return 0;
		return rc > 0 ? -rc : -EIO;
	}
	if (!st->readonly) {
		sweep(st, exclusive ? 0 : NX_ORPHAN_AGE_NS);
		if (exclusive)
			flock(st->lockfd, LOCK_SH);
		pthread_mutex_lock(&st->lock);
		st->next_sweep = nx_now_ns() + NX_SWEEP_INTERVAL_NS;
		sync_start_locked(st); /* it sweeps on a schedule */
		pthread_mutex_unlock(&st->lock);
	}
	st->total_bytes = true_total(st);
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
	fds_close(st);
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

struct id_op {
	const char *base;
	size_t len;
	uint64_t want, mask, id;
};

static int id_apply(struct nx_store *st, MDB_txn *txn, void *arg)
{
	struct id_op *op = arg;
	MDB_val k = { op->len, (void *)op->base }, v;
	uint8_t key[8];
	uint64_t id = op->want;
	int rc;

	rc = mdb_get(txn, st->dbi_idnames, &k, &v);
	if (rc == 0 && v.mv_size == 8) {
		op->id = get_le64(v.mv_data);
		return 0;
	}
	if (rc != 0 && rc != MDB_NOTFOUND)
		return rc;
	/* bounded: a table this full means the id space is (nearly) used up */
	for (uint64_t tries = 0; tries <= op->mask && tries < (UINT64_C(1) << 20); tries++) {
		MDB_val ik = { 8, key };

		put_le64(key, id);
		rc = mdb_get(txn, st->dbi_ids, &ik, &v);
		if (rc == MDB_NOTFOUND ||
		    (rc == 0 && v.mv_size == op->len && memcmp(v.mv_data, op->base, op->len) == 0)) {
			MDB_val iv = { op->len, (void *)op->base }, nv = { 8, key };

			rc = mdb_put(txn, st->dbi_ids, &ik, &iv, 0);
			if (rc == 0)
				rc = mdb_put(txn, st->dbi_idnames, &k, &nv, 0);
			if (rc == 0)
				op->id = id;
			return rc;
		}
		if (rc != 0)
			return rc;
		id = (id + 1) & op->mask;
		if (!id)
			id = 1;
	}
	return ENOSPC;
}

int nx_db_id_assign(struct nx_store *st, const char *base, size_t len, uint64_t want,
		    uint64_t mask, uint64_t *id)
{
	struct id_op op = { base, len, want, mask, 0 };
	MDB_txn *txn;
	MDB_val k = { len, (void *)base }, v;
	int rc;

	if (!st->env || st->no_ids)
		return -ENOENT;
	/* the common case (known) needs no write transaction */
	rc = txn_begin(st, MDB_RDONLY, &txn);
	if (rc)
		return mdb_errno(rc);
	rc = mdb_get(txn, st->dbi_idnames, &k, &v);
	if (rc == 0 && v.mv_size == 8)
		op.id = get_le64(v.mv_data);
	txn_abort(st, txn);
	if (rc == 0 && v.mv_size == 8) {
		*id = op.id;
		return 0;
	}
	if (rc != MDB_NOTFOUND)
		return mdb_errno(rc ? rc : MDB_CORRUPTED);
	if (st->readonly)
		return -ENOENT;
	rc = write_txn(st, id_apply, &op);
	if (rc)
		return mdb_errno(rc);
	*id = op.id;
	return 0;
}

struct id_all {
	const char *const *bases;
	const uint64_t *wants;
	size_t n;
	uint64_t mask;
};

static int id_all_apply(struct nx_store *st, MDB_txn *txn, void *arg)
{
	const struct id_all *a = arg;

	for (size_t i = 0; i < a->n; i++) {
		struct id_op op = { a->bases[i], strlen(a->bases[i]), a->wants[i], a->mask, 0 };
		int rc = id_apply(st, txn, &op);

		if (rc)
			return rc;
	}
	return 0;
}

int nx_db_id_assign_all(struct nx_store *st, const char *const *bases, const uint64_t *wants,
			size_t n, uint64_t mask)
{
	struct id_all a = { bases, wants, n, mask };
	MDB_txn *txn;
	size_t i;
	int rc;

	if (!st->env || st->no_ids || st->readonly)
		return -ENOENT;
	/* a remount of a closure finds every name: a read transaction only */
	rc = txn_begin(st, MDB_RDONLY, &txn);
	if (rc)
		return mdb_errno(rc);
	for (i = 0; i < n; i++) {
		MDB_val k = { strlen(bases[i]), (void *)bases[i] }, v;

		rc = mdb_get(txn, st->dbi_idnames, &k, &v);
		if (rc != 0 || v.mv_size != 8)
			break;
	}
	txn_abort(st, txn);
	if (i == n)
		return 0;
	return mdb_errno(write_txn(st, id_all_apply, &a));
}

int nx_db_id_base(struct nx_store *st, uint64_t id, char *base, size_t cap)
{
	uint8_t key[8];
	size_t vlen = 0;
	int rc;

	if (!st->env || st->no_ids || cap == 0)
		return -ENOENT;
	put_le64(key, id);
	rc = nx_db_get(st, st->dbi_ids, key, sizeof(key), base, cap - 1, &vlen);
	if (rc < 0)
		return rc;
	if (vlen == 0 || vlen >= cap)
		return -ENOENT; /* not a name we could have written */
	base[vlen] = '\0';
	return 0;
}

/* "xx/<hex>" of digest @d, relative to fd_chunks or fd_blobs. */
static void obj_rel(const uint8_t d[NX_SHA256_LEN], char out[2 * NX_SHA256_LEN + 4])
{
	char hex[2 * NX_SHA256_LEN + 1];

	nx_hex(d, NX_SHA256_LEN, hex);
	snprintf(out, 2 * NX_SHA256_LEN + 4, "%.2s/%s", hex, hex);
}

/* Opens a cache file read-only: a regular file of ours, not through a
 * symlink; *sb gets its status. -ENOENT for anything else. */
static int obj_open(int dirfd, const char *rel, struct stat *sb)
{
	int fd = openat(dirfd, rel, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		return -ENOENT;
	if (fstat(fd, sb) < 0 || !S_ISREG(sb->st_mode) || sb->st_uid != geteuid()) {
		close(fd);
		return -ENOENT;
	}
	return fd;
}

/* Wall-clock nanoseconds: last_use must order frames across restarts too. */
static uint64_t wall_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A new file in tmp/ (name in @tmp), or -errno. */
static int tmp_create(struct nx_store *st, char tmp[64])
{
	static uint64_t seq;
	int fd = -1;

	for (int tries = 0; fd < 0 && tries < 8; tries++) {
		uint64_t r = __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED) * 0x9e3779b97f4a7c15ull ^
			     nx_now_ns();

		snprintf(tmp, 64, "%ld.%016llx", (long)getpid(), (unsigned long long)r);
		fd = openat(st->fd_tmp, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			    0600);
		if (fd < 0 && errno != EEXIST)
			break;
	}
	return fd < 0 ? -errno : fd;
}

/* (fsync if @sync) + rename of tmp/@tmp (@len bytes written to @fd, which
 * this closes) into <kind>/xx/<hex>; the tmp file is gone either way.
 * *disk gets what the file takes on disk. */
static int tmp_commit(struct nx_store *st, int fd, const char *tmp, int kind_fd,
		      const uint8_t d[NX_SHA256_LEN], uint64_t len, int sync, uint64_t *disk)
{
	char rel[2 * NX_SHA256_LEN + 4];
	struct stat sb;
	int rc = 0;

	if (sync && fsync(fd) < 0) {
		rc = -errno;
		goto out_unlink;
	}
	if (fchmod(fd, 0444) < 0 || fstat(fd, &sb) < 0) {
		rc = -errno;
		goto out_unlink;
	}
	/* at least the size rounded to a block: delayed allocation may not
	 * show the blocks yet */
	*disk = disk_bytes(&sb);
	if (*disk < ((len + 4095) & ~(uint64_t)4095))
		*disk = (len + 4095) & ~(uint64_t)4095;
	close(fd);
	fd = -1;
	obj_rel(d, rel);
	rel[2] = '\0';
	if (mkdirat(kind_fd, rel, 0700) < 0 && errno != EEXIST) {
		rc = -errno;
		goto out_unlink;
	}
	rel[2] = '/';
	if (renameat(st->fd_tmp, tmp, kind_fd, rel) < 0) {
		rc = -errno;
		goto out_unlink;
	}
	return 0;

out_unlink:
	if (fd >= 0)
		close(fd);
	unlinkat(st->fd_tmp, tmp, 0);
	return rc;
}

/* tmp + (fsync if @sync) + rename into <kind>/xx/<hex>, all relative to the
 * checked descriptors. *disk gets what the file takes on disk. */
static int file_commit(struct nx_store *st, int kind_fd, const char *kind,
		       const uint8_t d[NX_SHA256_LEN], const void *buf, size_t len, int sync,
		       uint64_t *disk)
{
	char tmp[64];
	int fd, rc;

	fd = tmp_create(st, tmp);
	if (fd < 0) {
		rc = fd;
		goto out_log;
	}
	rc = nx_write_all(fd, buf, len);
	if (rc < 0) {
		close(fd);
		unlinkat(st->fd_tmp, tmp, 0);
		goto out_log;
	}
	rc = tmp_commit(st, fd, tmp, kind_fd, d, len, sync, disk);
	if (rc == 0)
		return 0;
out_log:
	nx_log(NX_LOG_ERR, "cache %s: cannot store %s file: %s", st->dir, kind, strerror(-rc));
	return rc;
}

static void touch_queue(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], int blob);
static const struct nx_pending *pending_find_kind(const struct nx_store *st,
						  const uint8_t d[NX_SHA256_LEN], int blob);
static void sync_take(struct nx_store *st);
static void sync_start_locked(struct nx_store *st);

/* last_use of records written before it was in nanoseconds (blobs kept
 * the time stored, in seconds) */
static uint64_t rec_last(const uint8_t *rec)
{
	uint64_t t = get_le64(rec + 8);

	return t < UINT64_C(100000000000) ? t * 1000000000u : t;
}

/*
 * The record of blob @d: from LMDB, or, for a blob saved a moment ago that
 * the syncer has not recorded yet (nx_blob_save, blob_record), its size with
 * no touch time; *queued says which. -ENOENT when neither knows it.
 */
static int blob_rec(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], uint8_t rec[24],
		    size_t *rlen, int *queued)
{
	const struct nx_pending *q;
	int rc = nx_db_get(st, st->dbi_blobs, d, NX_SHA256_LEN, rec, 24, rlen);

	*queued = 0;
	if (rc >= 0 && *rlen >= 16)
		return 0;
	pthread_mutex_lock(&st->lock);
	q = pending_find_kind(st, d, 1);
	if (q) {
		memset(rec, 0, 24);
		put_le64(rec, q->size);
		put_le64(rec + 8, UINT64_MAX / 2); /* no touch */
		*rlen = 16;
		*queued = 1;
	}
	pthread_mutex_unlock(&st->lock);
	return *queued ? 0 : -ENOENT;
}

int nx_blob_load(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], size_t cap, uint8_t **buf,
		 size_t *len)
{
	uint8_t rec[24], got[NX_SHA256_LEN];
	char rel[2 * NX_SHA256_LEN + 4];
	struct stat sb;
	uint64_t size, disk;
	uint8_t *b = NULL;
	size_t rlen = 0;
	int fd, rc, queued = 0;

	rc = blob_rec(st, d, rec, &rlen, &queued);
	if (rc < 0)
		return rc;
	size = get_le64(rec);
	disk = rec_disk(rec, rlen);
	obj_rel(d, rel);
	fd = obj_open(st->fd_blobs, rel, &sb);
	if (fd < 0)
		goto drop;
	if ((uint64_t)sb.st_size != size || size > cap)
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
	if (!st->readonly && wall_ns() > rec_last(rec) + NX_TOUCH_INTERVAL * 1000000000ull)
		touch_queue(st, d, 1);
	*buf = b;
	*len = size;
	return 0;

drop_fd:
	if (fd >= 0)
		close(fd);
drop:
	free(b);
	nx_log(NX_LOG_DEBUG, "cache %s: dropping damaged or missing blob %s", st->dir, rel);
	if (queued) {
		/* the syncer finds no file and records nothing */
		unlinkat(st->fd_blobs, rel, 0);
	} else if (!st->readonly) {
		unlinkat(st->fd_blobs, rel, 0);
		if (nx_db_del(st, st->dbi_blobs, d, NX_SHA256_LEN) == 0)
			nx_stat_sub(&st->total_bytes, disk);
	}
	return -ENOENT;
}

/*
 * Queue the record of a file just written (@blob: in blobs/, else chunks/)
 * for the syncer's next batch, and count it in the total. Under st->lock.
 * Returns 1 when it is the first of a batch (it starts the syncer's clock),
 * 0 otherwise, -ENOMEM when the queue cannot grow.
 */
static int pending_add_locked(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], uint64_t len,
			      uint64_t disk, int blob)
{
	struct nx_pending *q;
	int first = !st->npend;

	if (st->npend == st->pend_cap) {
		size_t ncap = st->pend_cap ? 2 * st->pend_cap : NX_SYNC_CHUNKS;
		struct nx_pending *np = realloc(st->pend, ncap * sizeof(*np));

		if (!np)
			return -ENOMEM;
		st->pend = np;
		st->pend_cap = ncap;
	}
	if (first)
		st->pend_since = nx_now_ns();
	q = &st->pend[st->npend++];
	memcpy(q->digest, d, NX_SHA256_LEN);
	q->size = len;
	q->disk = disk;
	q->blob = blob;
	st->pend_bytes += disk;
	nx_stat_add(&st->total_bytes, disk);
	return first;
}

/*
 * The record of blob @d (@len bytes, @disk on disk), now in blobs/. Blobs
 * are saved on the lookup path, so no fsync and no commit here: one lookup
 * used to wait for two fsyncs and two LMDB commits, and the commits of
 * concurrent lookups queue behind LMDB's writer lock. The syncer syncs and
 * records the file with its next batch, as it does chunks. Until then the
 * file is found through the queue; a crash leaves it unrecorded, and the
 * start-up sweep removes it.
 */
static void blob_record(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], uint64_t len,
			uint64_t disk)
{
	char rel[2 * NX_SHA256_LEN + 4];
	int first;

	pthread_mutex_lock(&st->lock);
	if (pending_find_kind(st, d, 1)) {
		pthread_mutex_unlock(&st->lock); /* a concurrent save of the same */
		return;
	}
	sync_start_locked(st);
	first = pending_add_locked(st, d, len, disk, 1);
	if (first < 0) {
		pthread_mutex_unlock(&st->lock);
		obj_rel(d, rel);
		unlinkat(st->fd_blobs, rel, 0);
		return;
	}
	if (!st->sync_started)
		sync_take(st); /* no thread (or closing): sync right here */
	else if (first)
		pthread_cond_broadcast(&st->sync_cond); /* starts the syncer's clock */
	pthread_mutex_unlock(&st->lock);
}

void nx_db_put_later(struct nx_store *st, MDB_dbi dbi, const void *key, size_t klen,
		     const void *val, size_t vlen)
{
	struct nx_kv *kv;
	int rc, now = 0;

	if (!st->env || st->readonly)
		return;
	if (klen > NX_KV_KEY_MAX || vlen > NX_KV_VAL_MAX) {
		now = 1;
	} else {
		pthread_mutex_lock(&st->lock);
		sync_start_locked(st);
		if (!st->kv && st->sync_started && !st->sync_stop)
			st->kv = malloc((NX_KV_MAX + 1) * sizeof(*st->kv));
		if (st->kv && st->nkv < NX_KV_MAX && st->sync_started && !st->sync_stop) {
			kv = &st->kv[st->nkv++];
			kv->dbi = dbi;
			kv->klen = (uint8_t)klen;
			kv->vlen = (uint8_t)vlen;
			memcpy(kv->key, key, klen);
			memcpy(kv->val, val, vlen);
			if (!st->npend && st->nkv == 1)
				st->pend_since = nx_now_ns();
			pthread_cond_broadcast(&st->sync_cond);
		} else {
			now = 1;
		}
		pthread_mutex_unlock(&st->lock);
	}
	if (!now)
		return;
	rc = nx_db_put(st, dbi, key, klen, val, vlen);
	if (rc < 0)
		nx_log(NX_LOG_WARNING, "cache %s: lmdb: cannot write a record: %s", st->dir,
		       strerror(-rc));
}

void nx_blob_save(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], const void *buf,
		  size_t len)
{
	uint8_t rec[24];
	uint64_t disk = 0;
	int queued;

	if (!st->env || st->readonly)
		return;
	if (nx_db_get(st, st->dbi_blobs, d, NX_SHA256_LEN, rec, sizeof(rec), NULL) == 0)
		return;
	pthread_mutex_lock(&st->lock);
	queued = pending_find_kind(st, d, 1) != NULL;
	pthread_mutex_unlock(&st->lock);
	if (queued)
		return;
	/* synced by the syncer with its batch (blob_record) */
	if (file_commit(st, st->fd_blobs, "blobs", d, buf, len, 0, &disk) < 0)
		return;
	blob_record(st, d, len, disk);
}

int nx_blob_stream(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], uint64_t size,
		   int (*cb)(void *ctx, const void *buf, size_t len), void *ctx)
{
	uint8_t rec[24], got[NX_SHA256_LEN], *b = NULL;
	char rel[2 * NX_SHA256_LEN + 4];
	struct nx_sha256 h;
	struct stat sb;
	uint64_t disk, off = 0;
	size_t rlen = 0;
	int fd, rc, hashing = 0, queued = 0;

	rc = blob_rec(st, d, rec, &rlen, &queued);
	if (rc < 0)
		return rc;
	disk = rec_disk(rec, rlen);
	obj_rel(d, rel);
	if (get_le64(rec) != size)
		return -ENOENT; /* same digest, other size: cannot happen */
	fd = obj_open(st->fd_blobs, rel, &sb);
	if (fd < 0)
		goto drop;
	if ((uint64_t)sb.st_size != size)
		goto drop;
	b = malloc(NX_BLOB_STREAM_BUF);
	if (!b || nx_sha256_init(&h) < 0) {
		rc = -ENOMEM;
		goto out;
	}
	hashing = 1;
	while (off < size) {
		size_t n = size - off < NX_BLOB_STREAM_BUF ? (size_t)(size - off)
							   : NX_BLOB_STREAM_BUF;

		if (nx_pread_all(fd, b, n, (off_t)off) < 0)
			goto drop;
		nx_sha256_update(&h, b, n);
		rc = cb(ctx, b, n);
		if (rc < 0)
			goto out;
		off += n;
	}
	/* cheap next to a fetch, and catches a damaged disk */
	nx_sha256_final(&h, got);
	hashing = 0;
	if (memcmp(got, d, NX_SHA256_LEN) != 0)
		goto drop;
	if (!st->readonly && wall_ns() > rec_last(rec) + NX_TOUCH_INTERVAL * 1000000000ull)
		touch_queue(st, d, 1);
	rc = 0;
	goto out;
drop:
	nx_log(NX_LOG_DEBUG, "cache %s: dropping damaged or missing blob %s", st->dir, rel);
	if (queued) {
		unlinkat(st->fd_blobs, rel, 0); /* the syncer finds no file */
	} else if (!st->readonly) {
		unlinkat(st->fd_blobs, rel, 0);
		if (nx_db_del(st, st->dbi_blobs, d, NX_SHA256_LEN) == 0)
			nx_stat_sub(&st->total_bytes, disk);
	}
	rc = -ENOENT;
out:
	if (hashing)
		nx_sha256_release(&h);
	if (fd >= 0)
		close(fd);
	free(b);
	return rc;
}

int nx_blob_tmp_open(struct nx_store *st, struct nx_blob_tmp *t, uint64_t size)
{
	int fd;

	memset(t, 0, sizeof(*t));
	t->fd = -1;
	if (!st->env || st->readonly)
		return -EROFS;
	/* counted from the start, room made first, so du stays within
	 * cache_size while it is written */
	t->reserve = (size + 4095) & ~UINT64_C(4095);
	nx_stat_add(&st->reserved, t->reserve);
	nx_stat_add(&st->total_bytes, t->reserve);
	if (nx_stat_get(&st->total_bytes) > st->limit)
		nx_db_evict(st);
	fd = tmp_create(st, t->name);
	if (fd < 0) {
		nx_log(NX_LOG_ERR, "cache %s: cannot store blobs file: %s", st->dir,
		       strerror(-fd));
		nx_blob_tmp_abort(st, t);
		return fd;
	}
	t->fd = fd;
	return 0;
}

int nx_blob_tmp_write(struct nx_store *st, struct nx_blob_tmp *t, const void *buf, size_t len)
{
	int rc;

	if (t->fd < 0)
		return -EBADF;
	rc = nx_write_all(t->fd, buf, len);
	if (rc < 0) {
		nx_log(NX_LOG_ERR, "cache %s: cannot store blobs file: %s", st->dir,
		       strerror(-rc));
		nx_blob_tmp_abort(st, t);
		return rc;
	}
	t->len += len;
	return 0;
}

void nx_blob_tmp_abort(struct nx_store *st, struct nx_blob_tmp *t)
{
	if (t->fd >= 0) {
		close(t->fd);
		unlinkat(st->fd_tmp, t->name, 0);
		t->fd = -1;
	}
	nx_stat_sub(&st->total_bytes, t->reserve);
	nx_stat_sub(&st->reserved, t->reserve);
	t->reserve = 0;
}

void nx_blob_tmp_commit(struct nx_store *st, struct nx_blob_tmp *t,
			const uint8_t d[NX_SHA256_LEN])
{
	uint8_t rec[24];
	uint64_t disk = 0;
	int rc, fd = t->fd;

	if (fd < 0 ||
	    nx_db_get(st, st->dbi_blobs, d, NX_SHA256_LEN, rec, sizeof(rec), NULL) == 0) {
		nx_blob_tmp_abort(st, t);
		return;
	}
	t->fd = -1; /* tmp_commit closes it and removes the tmp file on failure */
	/* synced by the syncer with its batch (blob_record) */
	rc = tmp_commit(st, fd, t->name, st->fd_blobs, d, t->len, 0, &disk);
	nx_blob_tmp_abort(st, t); /* the reservation */
	if (rc < 0) {
		nx_log(NX_LOG_ERR, "cache %s: cannot store blobs file: %s", st->dir,
		       strerror(-rc));
		return;
	}
	blob_record(st, d, t->len, disk);
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

/* The queued or syncing record of chunk (@blob 0) or blob (1) @d, or NULL;
 * under st->lock. */
static const struct nx_pending *pending_find_kind(const struct nx_store *st,
						  const uint8_t d[NX_SHA256_LEN], int blob)
{
	for (size_t i = 0; i < st->npend; i++)
		if (st->pend[i].blob == blob && memcmp(st->pend[i].digest, d, NX_SHA256_LEN) == 0)
			return &st->pend[i];
	for (size_t i = 0; i < st->nsyncing; i++)
		if (st->syncing[i].blob == blob &&
		    memcmp(st->syncing[i].digest, d, NX_SHA256_LEN) == 0)
			return &st->syncing[i];
	return NULL;
}

static const struct nx_pending *pending_find(const struct nx_store *st,
					     const uint8_t d[NX_SHA256_LEN])
{
	return pending_find_kind(st, d, 0);
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
	uint8_t rec[24];
	char rel[2 * NX_SHA256_LEN + 4];
	struct stat sb;
	uint64_t size, last, disk = 0;
	size_t rlen = 0;
	int rc, f;

	if (!st->env)
		return -ENOENT;
	rc = chunk_pin(st, d, &size);
	if (rc < 0)
		return rc;
	if (size) {
		last = UINT64_MAX; /* recorded with a fresh last_use soon */
	} else {
		rc = nx_db_get(st, st->dbi_chunks, d, NX_SHA256_LEN, rec, sizeof(rec), &rlen);
		if (rc < 0 || rlen < 16) {
			rc = -ENOENT; /* an LMDB hiccup is a miss, not a failed read */
			goto unpin;
		}
		size = get_le64(rec);
		last = get_le64(rec + 8);
		disk = rec_disk(rec, rlen);
	}
	obj_rel(d, rel);
	f = obj_open(st->fd_chunks, rel, &sb);
	/* The cache's own facts only: the file and its record must agree. */
	if (f < 0 || (uint64_t)sb.st_size != size) {
		if (f >= 0)
			close(f);
		nx_log(NX_LOG_DEBUG, "cache %s: dropping missing or damaged chunk %s", st->dir, rel);
		if (!st->readonly && last != UINT64_MAX) {
			unlinkat(st->fd_chunks, rel, 0);
			if (nx_db_del(st, st->dbi_chunks, d, NX_SHA256_LEN) == 0)
				nx_stat_sub(&st->total_bytes, disk);
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
	char rel[2 * NX_SHA256_LEN + 4];
	int fd;

	if (st->fd_chunks < 0)
		return;
	obj_rel(d, rel);
	fd = openat(st->fd_chunks, rel, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
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
	uint64_t disk;
	uint64_t last_use;
	int blob;
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
		int rc = mdb_del(txn, b->c[i].blob ? st->dbi_blobs : st->dbi_chunks, &key, NULL);

		if (rc && rc != MDB_NOTFOUND)
			return rc;
	}
	return 0;
}

/* Appends the records of @dbi to the candidates; 0 or -ENOMEM. */
static int cands_add(struct nx_store *st, MDB_dbi dbi, int blob, struct evict_cand **c, size_t *n,
		     size_t *cap)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc = 0;

	if (txn_begin(st, MDB_RDONLY, &txn))
		return -EIO;
	if (mdb_cursor_open(txn, dbi, &cur)) {
		txn_abort(st, txn);
		return -EIO;
	}
	while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
		if (k.mv_size != NX_SHA256_LEN || v.mv_size < 16)
			continue;
		if (*n == *cap) {
			size_t ncap = *cap ? 2 * *cap : 1024;
			struct evict_cand *nc = realloc(*c, ncap * sizeof(**c));

			if (!nc) {
				rc = -ENOMEM;
				break;
			}
			*c = nc;
			*cap = ncap;
		}
		memcpy((*c)[*n].digest, k.mv_data, NX_SHA256_LEN);
		(*c)[*n].disk = rec_disk(v.mv_data, v.mv_size);
		(*c)[*n].last_use = rec_last(v.mv_data);
		(*c)[*n].blob = blob;
		(*n)++;
	}
	mdb_cursor_close(cur);
	txn_abort(st, txn);
	return rc;
}

/* 1 if a path this store resolved (loaded or not) has @d as its manifest
 * or TOC (under st->lock): such blobs are what a reload needs, they are
 * never evicted. */
static int blob_in_use(struct nx_store *st, const uint8_t d[NX_SHA256_LEN])
{
	for (struct nx_spath *p = st->all; p; p = p->next_all)
		if (memcmp(p->man_digest, d, NX_SHA256_LEN) == 0 ||
		    memcmp(p->toc_digest, d, NX_SHA256_LEN) == 0)
			return 1;
	return 0;
}

/*
 * Evicts least recently used chunks and metadata blobs until the total is
 * at 90% of the limit (so eviction runs once per tenth of the cache, not
 * once per frame). Only one thread evicts at a time; the scan is O(records),
 * which is fine at that rate. The total is what du counts: blocks of the
 * files, LMDB's files, and chunks not recorded yet.
 */
static void evict(struct nx_store *st, int wait)
{
	uint64_t target = st->limit - st->limit / 10;
	struct evict_cand *c = NULL;
	size_t n = 0, cap = 0, ndel = 0;
	int complete;

	/*
	 * One eviction at a time. A caller with @wait (a reservation: what it
	 * counted is about to be written) that finds one running waits for
	 * it and looks again instead of returning: returning while the
	 * running one was past its last look let a passthrough copy of 6 MiB
	 * be written with the cache at its limit (t0520, after a kill -9). A
	 * saver of a chunk already written does not wait: it may own a flight
	 * others wait on (waiting there made t0420's copies fail now and then).
	 */
	pthread_mutex_lock(&st->lock);
	if (st->evicting && !wait) {
		pthread_mutex_unlock(&st->lock);
		return;
	}
	while (st->evicting)
		pthread_cond_wait(&st->evict_cond, &st->lock);
	if (nx_stat_get(&st->total_bytes) <= st->limit) {
		pthread_mutex_unlock(&st->lock); /* the other one made room */
		return;
	}
	st->evicting = 1;
	pthread_mutex_unlock(&st->lock);

	complete = cands_add(st, st->dbi_chunks, 0, &c, &n, &cap) == 0 &&
		   cands_add(st, st->dbi_blobs, 1, &c, &n, &cap) == 0;
	if (n) /* c is NULL when the scan found nothing */
		qsort(c, n, sizeof(*c), cand_cmp);
	if (complete) {
		/* the scan saw every record: start from the true total (other
		 * processes may have added or evicted since our last look) */
		uint64_t sum = index_bytes(st) + unrecorded_bytes(st) + nx_files_bytes(st) +
			       nx_stat_get(&st->reserved);

		for (size_t i = 0; i < n; i++)
			sum += c[i].disk;
		__atomic_store_n(&st->total_bytes, sum, __ATOMIC_RELAXED);
	}
	/* passthrough copies first: dropping one never costs a fetch */
	nx_files_evict(st, target);

	for (size_t i = 0; i < n && nx_stat_get(&st->total_bytes) > target; i++) {
		char rel[2 * NX_SHA256_LEN + 4];
		int skip;

		obj_rel(c[i].digest, rel);
		/* Under the lock, so a reader either pinned the chunk before
		 * (we skip it) or opens it after the unlink (a miss). */
		pthread_mutex_lock(&st->lock);
		if (c[i].blob)
			skip = blob_in_use(st, c[i].digest);
		else
			skip = pin_find(st, c[i].digest) || flight_busy(st, c[i].digest);
		if (!skip)
			unlinkat(c[i].blob ? st->fd_blobs : st->fd_chunks, rel, 0);
		pthread_mutex_unlock(&st->lock);
		if (skip)
			continue;
		nx_stat_sub(&st->total_bytes, c[i].disk);
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
	nx_log(NX_LOG_DEBUG, "cache %s: evicted %zu files", st->dir, ndel);
	free(c);
	pthread_mutex_lock(&st->lock);
	st->evicting = 0;
	pthread_cond_broadcast(&st->evict_cond);
	pthread_mutex_unlock(&st->lock);
}

void nx_db_evict(struct nx_store *st)
{
	if (st->env && !st->readonly)
		evict(st, 1);
}

static uint64_t true_total(struct nx_store *st)
{
	return sum_sizes(st, st->dbi_chunks) + sum_sizes(st, st->dbi_blobs) + index_bytes(st) +
	       unrecorded_bytes(st) + nx_files_bytes(st) + nx_stat_get(&st->reserved);
}

/* 1 if @d (a file under chunks/ or blobs/) is recorded or about to be. */
static int obj_known(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], int blob)
{
	uint8_t rec[8];
	int busy = 0, rc;

	pthread_mutex_lock(&st->lock);
	if (blob)
		busy = pending_find_kind(st, d, 1) != NULL;
	else
		busy = pending_find(st, d) || flight_busy(st, d) || pin_find(st, d);
	pthread_mutex_unlock(&st->lock);
	if (busy)
		return 1;
	rc = nx_db_get(st, blob ? st->dbi_blobs : st->dbi_chunks, d, NX_SHA256_LEN, rec,
		       sizeof(rec), NULL);
	/* an LMDB failure is not proof of an orphan */
	return rc != -ENOENT;
}

/*
 * Removes files under chunks/ and blobs/ that LMDB does not know (a crash
 * between a file's rename and its record, a batch LMDB could not record):
 * nothing counts them, so they would grow the directory past the limit.
 * Files younger than @min_age_ns stay: another process may be about to
 * record them. Everything is relative to the checked descriptors; entries
 * that are not our regular files (a symlink...) go too.
 */
static void sweep(struct nx_store *st, uint64_t min_age_ns)
{
	int kfds[] = { st->fd_chunks, st->fd_blobs };
	uint64_t now = wall_ns(), bytes = 0;
	size_t files = 0;

	for (int k = 0; k < 2; k++) {
		int dfd = reopen_dir(kfds[k]);
		DIR *top = dfd >= 0 ? fdopendir(dfd) : NULL;
		struct dirent *de;

		if (!top) {
			if (dfd >= 0)
				close(dfd);
			continue;
		}
		while ((de = readdir(top))) {
			int sfd;
			DIR *sub;
			struct dirent *fe;

			if (de->d_name[0] == '.')
				continue;
			sfd = openat(kfds[k], de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
				     O_CLOEXEC);
			sub = sfd >= 0 ? fdopendir(sfd) : NULL;
			if (!sub) {
				if (sfd >= 0)
					close(sfd);
				continue;
			}
			while ((fe = readdir(sub))) {
				uint8_t d[NX_SHA256_LEN];
				char name[NX_DIGEST_STRLEN + 256];
				struct stat sb;
				int ours;

				if (fe->d_name[0] == '.' ||
				    fstatat(sfd, fe->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
					continue;
				ours = S_ISREG(sb.st_mode) && sb.st_uid == geteuid();
				if (ours && (uint64_t)sb.st_mtim.tv_sec * 1000000000u +
						    (uint64_t)sb.st_mtim.tv_nsec + min_age_ns > now)
					continue;
				snprintf(name, sizeof(name), "sha256:%s", fe->d_name);
				if (ours && strlen(fe->d_name) == 2 * NX_SHA256_LEN &&
				    nx_digest_parse(name, d) == 0 &&
				    strncmp(fe->d_name, de->d_name, 2) == 0 && obj_known(st, d, k))
					continue;
				if (S_ISDIR(sb.st_mode))
					continue;
				if (unlinkat(sfd, fe->d_name, 0) == 0) {
					files++;
					bytes += disk_bytes(&sb);
				}
			}
			closedir(sub);
		}
		closedir(top);
	}
	if (files)
		nx_log(NX_LOG_NOTICE, "cache %s: removed %zu orphaned files (%llu bytes)", st->dir,
		       files, (unsigned long long)bytes);
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
	uint8_t rec[24];

	rb->dup = 0;
	for (size_t i = 0; i < rb->n; i++) {
		MDB_val k = { NX_SHA256_LEN, (void *)rb->b[i].digest }, v = { sizeof(rec), rec };
		MDB_dbi dbi = rb->b[i].blob ? st->dbi_blobs : st->dbi_chunks;
		int rc;

		if (!rb->ok[i])
			continue;
		put_le64(rec, rb->b[i].size);
		/* one batch shares a second: keep fetch order for LRU */
		put_le64(rec + 8, rb->now + i);
		put_le64(rec + 16, rb->b[i].disk);
		rc = mdb_put(txn, dbi, &k, &v, MDB_NOOVERWRITE);
		if (rc == MDB_KEYEXIST) {
			/* re-fetched after a damaged file, or another process
			 * got there first: counted once */
			rb->dup += rb->b[i].disk;
			v.mv_size = sizeof(rec);
			v.mv_data = rec;
			rc = mdb_put(txn, dbi, &k, &v, 0);
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
 * later; the files of what was not recorded are removed (nothing counts
 * them; the orphan sweep catches what a crash leaves).
 */
static void sync_batch(struct nx_store *st, const struct nx_pending *b, size_t n)
{
	char rel[2 * NX_SHA256_LEN + 4];
	uint8_t *ok;
	uint64_t unrecorded = 0;
	struct rec_batch rb = { .b = b, .n = n, .now = wall_ns() };
	size_t i;
	int rc, sync_err = 0, sync_err_blob = 0;

	ok = calloc(n ? n : 1, 1);
	if (!ok) {
		for (i = 0; i < n; i++)
			unrecorded += b[i].disk;
		nx_stat_sub(&st->total_bytes, unrecorded);
		return; /* nothing recorded: every one of them is a miss later */
	}
	for (i = 0; i < n; i++) {
		int fd;

		obj_rel(b[i].digest, rel);
		fd = openat(b[i].blob ? st->fd_blobs : st->fd_chunks, rel,
			    O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			continue; /* dropped or evicted meanwhile */
		/* the first fsync's journal commit carries most of the others */
		ok[i] = fsync(fd) == 0;
		if (!ok[i] && !sync_err) {
			sync_err = errno;
			sync_err_blob = b[i].blob;
		}
		close(fd);
	}
	if (sync_err)
		nx_log(NX_LOG_ERR, "cache %s: cannot sync %s files: %s; they stay unrecorded",
		       st->dir, sync_err_blob ? "blob" : "chunk", strerror(sync_err));
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
	for (i = 0; i < n; i++) {
		if (ok[i])
			continue;
		unrecorded += b[i].disk;
		obj_rel(b[i].digest, rel);
		/* readers with it open keep it */
		unlinkat(b[i].blob ? st->fd_blobs : st->fd_chunks, rel, 0);
	}
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

static int kvq_apply(struct nx_store *st, MDB_txn *txn, void *arg)
{
	const struct nx_kv *kv = arg;

	for (size_t i = 0; kv[i].klen; i++) {
		MDB_val k = { kv[i].klen, (void *)kv[i].key }, v = { kv[i].vlen, (void *)kv[i].val };
		int rc = mdb_put(txn, kv[i].dbi, &k, &v, 0);

		if (rc)
			return rc;
	}
	return 0;
}

/* Takes the queued records (under st->lock) and writes them outside. */
static void kv_take(struct nx_store *st)
{
	struct nx_kv *kv = st->kv;
	size_t n = st->nkv;
	int rc;

	if (!n)
		return;
	st->kv = NULL;
	st->nkv = 0;
	pthread_mutex_unlock(&st->lock);
	kv[n].klen = 0; /* the end: there is one slot more than NX_KV_MAX */
	rc = write_txn(st, kvq_apply, kv);
	if (rc)
		nx_log(NX_LOG_WARNING, "cache %s: lmdb: cannot write %zu records: %s", st->dir,
		       n, mdb_strerror(rc));
	pthread_mutex_lock(&st->lock);
	if (!st->kv)
		st->kv = kv; /* reuse it */
	else
		free(kv);
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

		while (!st->npend && !st->ntouch && !st->nkv && !st->sync_stop) {
			if (nx_now_ns() >= st->next_sweep) {
				/* orphans of crashes of processes sharing the cache */
				st->next_sweep = nx_now_ns() + NX_SWEEP_INTERVAL_NS;
				pthread_mutex_unlock(&st->lock);
				sweep(st, NX_ORPHAN_AGE_NS);
				pthread_mutex_lock(&st->lock);
				continue;
			}
			wait_until(st, st->next_sweep);
		}
		if (!st->npend && !st->ntouch && !st->nkv)
			break; /* stopping with nothing left */
		now = nx_now_ns();
		if (st->npend || st->nkv) {
			uint64_t due = st->pend_since + NX_SYNC_DELAY_NS;

			if (!st->sync_stop && !st->sync_urgent && st->npend < NX_SYNC_CHUNKS &&
			    st->pend_bytes < NX_SYNC_BYTES && st->nkv < NX_KV_MAX / 2 && now < due) {
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
			kv_take(st); /* tags after the blobs they name */
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
	kv_take(st);
	free(st->kv);
	st->kv = NULL;
	touch_take(st);
	free(st->touch);
	st->touch = NULL;
	pthread_mutex_unlock(&st->lock);
}

void nx_chunk_save(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], const void *buf,
		   size_t len)
{
	uint64_t disk = 0;
	int first;

	if (!st->env || st->readonly)
		return;
	if (file_commit(st, st->fd_chunks, "chunks", d, buf, len, 0, &disk) < 0)
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
	first = pending_add_locked(st, d, len, disk, 0);
	if (first < 0) {
		pthread_mutex_unlock(&st->lock);
		return; /* the file stays unrecorded: a miss next time */
	}
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
		__atomic_store_n(&st->total_bytes, true_total(st), __ATOMIC_RELAXED);
	if (nx_stat_get(&st->total_bytes) > st->limit)
		evict(st, 0);
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
		op->size = rec_disk(v.mv_data, v.mv_size);
	return mdb_del(txn, st->dbi_chunks, &k, NULL);
}

void nx_chunk_drop(struct nx_store *st, const uint8_t d[NX_SHA256_LEN])
{
	char rel[2 * NX_SHA256_LEN + 4];
	struct drop_op op = { d, 0 };
	const struct nx_pending *q;
	int skip, rc;

	if (!st->env || st->readonly)
		return;
	pthread_mutex_lock(&st->lock);
	skip = pin_find(st, d) || flight_busy(st, d);
	if (!skip) {
		obj_rel(d, rel);
		unlinkat(st->fd_chunks, rel, 0);
		/* Queued: forget it. Being synced: the syncer finds no file
		 * and records nothing, or records it just before the unlink,
		 * and the record of a missing file is a miss. */
		q = pending_find(st, d);
		if (q && q >= st->pend && q < st->pend + st->npend) {
			st->pend_bytes -= q->disk;
			nx_stat_sub(&st->total_bytes, q->disk);
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
