/*
 * cache/files.c: whole-file copies of fully cached regular files, the
 * backing files of FUSE passthrough.
 *
 * Passthrough maps a FUSE file offset to the same offset of a backing file,
 * so the backing file must hold exactly the file's bytes. Chunk files hold
 * NAR frames (a file starts anywhere in a frame, small files share one), so
 * a file whose frames are all cached is copied out of them once:
 *
 *	DIR/files/xx/<manifest digest hex>-<entry hex>
 *
 * The name binds the file to the manifest (which pins the TOC and with it
 * every frame digest) and to the TOC entry, so a name can only ever hold one
 * content, and it is only looked up for a path the trust policy admitted.
 *
 * Promises, the same as the chunks':
 *  - nothing unverified: the bytes come from verified chunk files (a frame
 *    evicted meanwhile is fetched and verified like any read);
 *  - crash-safe: written under DIR/tmp (emptied at every open of the
 *    cache), fdatasync'ed, then renamed into place; a file of the wrong size
 *    is removed when found;
 *  - bounded: the copies count in the cache total (cache_size) and are
 *    evicted first, least recently used first, because a copy is only an
 *    accelerator: dropping one costs a local copy later, never a fetch;
 *  - a copy in use (pinned by an open file) is never evicted;
 *  - a warm remount finds them on disk (scanned at open) and fetches nothing.
 *
 * A copy is made in the background by one worker, only when every frame of
 * the file is already cached (checked when the file is opened and when it
 * is released): making one never fetches bytes nobody read.
 *
 * Locking: f->lock guards the table and the queue; never held across I/O
 * except the unlink(2) of an eviction. It nests inside nothing.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache/cache_i.h"

#define FILES_BUCKETS 4096
#define FILES_QUEUE 256
/* "<64 hex>-<8 hex>" */
#define FILE_NAME_LEN (2 * NX_SHA256_LEN + 1 + 8)
#define COPY_BUF (1u << 20)

struct nx_file {
	struct nx_file *next;
	uint8_t man[NX_SHA256_LEN];
	uint32_t entry;
	uint64_t disk;     /* blocks on disk, what cache_size counts */
	uint64_t last_use; /* ns */
	unsigned pins;
	int present;       /* on disk; else queued for the worker */
};

struct nx_file_job {
	struct nx_file_job *next;
	struct nx_spath *p;
	uint32_t entry;
};

struct nx_files {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct nx_file *tab[FILES_BUCKETS];
	uint64_t bytes;    /* of present copies */
	struct nx_file_job *head, *tail;
	unsigned queued;
	pthread_t worker;
	int started, stop;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static unsigned bucket(const uint8_t man[NX_SHA256_LEN], uint32_t entry)
{
	uint32_t h;

	memcpy(&h, man, sizeof(h)); /* a digest: already uniform */
	return (h ^ (entry * 2654435761u)) % FILES_BUCKETS;
}

static struct nx_file *find(struct nx_files *f, const uint8_t man[NX_SHA256_LEN], uint32_t entry)
{
	struct nx_file *x;

	for (x = f->tab[bucket(man, entry)]; x; x = x->next)
		if (x->entry == entry && memcmp(x->man, man, NX_SHA256_LEN) == 0)
			return x;
	return NULL;
}

static struct nx_file *add(struct nx_files *f, const uint8_t man[NX_SHA256_LEN], uint32_t entry)
{
	struct nx_file *x = calloc(1, sizeof(*x));
	unsigned b = bucket(man, entry);

	if (!x)
		return NULL;
	memcpy(x->man, man, NX_SHA256_LEN);
	x->entry = entry;
	x->next = f->tab[b];
	f->tab[b] = x;
	return x;
}

static void unlink_entry(struct nx_files *f, struct nx_file *x)
{
	struct nx_file **pp = &f->tab[bucket(x->man, x->entry)];

	while (*pp && *pp != x)
		pp = &(*pp)->next;
	if (*pp)
		*pp = x->next;
	free(x);
}

static void file_name(const uint8_t man[NX_SHA256_LEN], uint32_t entry, char out[FILE_NAME_LEN + 1])
{
	nx_hex(man, NX_SHA256_LEN, out);
	snprintf(out + 2 * NX_SHA256_LEN, 10, "-%08" PRIx32, entry);
}

/* "xx/<name>", relative to st->fd_files (every file operation is relative
 * to the cache's checked descriptors, see db.c) */
static void file_path(const struct nx_store *st, const uint8_t man[NX_SHA256_LEN], uint32_t entry,
		      char *path, size_t cap)
{
	char name[FILE_NAME_LEN + 1];

	file_name(man, entry, name);
	snprintf(path, cap, "%.2s/%s", name, name);
}

static int parse_name(const char *s, uint8_t man[NX_SHA256_LEN], uint32_t *entry)
{
	char dig[NX_DIGEST_STRLEN];
	char *end;
	unsigned long v;

	if (strlen(s) != FILE_NAME_LEN || s[2 * NX_SHA256_LEN] != '-')
		return -EINVAL;
	snprintf(dig, sizeof(dig), "sha256:%.64s", s);
	if (nx_digest_parse(dig, man) < 0)
		return -EINVAL;
	errno = 0;
	v = strtoul(s + 2 * NX_SHA256_LEN + 1, &end, 16);
	if (errno || *end || v > UINT32_MAX)
		return -EINVAL;
	*entry = (uint32_t)v;
	return 0;
}

/* ---------------------------------------------------------------- evict */

struct cand {
	struct nx_file *x;
	uint64_t last_use;
};

static int cand_cmp(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;

	return x->last_use < y->last_use ? -1 : x->last_use > y->last_use;
}

uint64_t nx_files_bytes(struct nx_store *st)
{
	struct nx_files *f = st->files;
	uint64_t n;

	if (!f)
		return 0;
	pthread_mutex_lock(&f->lock);
	n = f->bytes;
	pthread_mutex_unlock(&f->lock);
	return n;
}

void nx_files_evict(struct nx_store *st, uint64_t target)
{
	struct nx_files *f = st->files;
	struct cand *c = NULL;
	size_t n = 0, cap = 0, i;
	char path[PATH_MAX];

	if (!f)
		return;
	pthread_mutex_lock(&f->lock);
	for (i = 0; i < FILES_BUCKETS; i++) {
		struct nx_file *x;

		for (x = f->tab[i]; x; x = x->next) {
			if (!x->present || x->pins)
				continue;
			if (n == cap) {
				size_t nc = cap ? 2 * cap : 256;
				struct cand *c2 = realloc(c, nc * sizeof(*c));

				if (!c2)
					goto sorted;
				c = c2;
				cap = nc;
			}
			c[n].x = x;
			c[n].last_use = x->last_use;
			n++;
		}
	}
sorted:
	if (n)
		qsort(c, n, sizeof(*c), cand_cmp);
	for (i = 0; i < n && nx_stat_get(&st->total_bytes) > target; i++) {
		struct nx_file *x = c[i].x;

		file_path(st, x->man, x->entry, path, sizeof(path));
		unlinkat(st->fd_files, path, 0);
		f->bytes -= x->disk;
		nx_stat_sub(&st->total_bytes, x->disk);
		nx_stat_add(&st->evictions, 1);
		unlink_entry(f, x);
	}
	pthread_mutex_unlock(&f->lock);
	free(c);
}

/* ----------------------------------------------------------------- copy */

struct copyctx {
	const struct nx_toc *toc;
	uint64_t a, b; /* NAR range of the file */
	int out;
};

static int copy_out(struct copyctx *cx, uint64_t nar_off, const uint8_t *buf, size_t len)
{
	off_t off = (off_t)(nar_off - cx->a);

	while (len) {
		ssize_t n = pwrite(cx->out, buf, len, off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		buf += n;
		len -= (size_t)n;
		off += n;
	}
	return 0;
}

static int copy_data(void *ctx, uint32_t i, const uint8_t *buf, size_t len)
{
	struct copyctx *cx = ctx;
	const struct nx_toc_frame *fr = &cx->toc->frames[i];
	uint64_t s = fr->uoff > cx->a ? fr->uoff : cx->a;
	uint64_t e = fr->uoff + fr->ulen < cx->b ? fr->uoff + fr->ulen : cx->b;

	if (s >= e)
		return 0;
	return copy_out(cx, s, buf + (s - fr->uoff), (size_t)(e - s));
}

static int copy_file(void *ctx, uint32_t i, int fd)
{
	struct copyctx *cx = ctx;
	const struct nx_toc_frame *fr = &cx->toc->frames[i];
	uint64_t s = fr->uoff > cx->a ? fr->uoff : cx->a;
	uint64_t e = fr->uoff + fr->ulen < cx->b ? fr->uoff + fr->ulen : cx->b;

	while (s < e) {
		loff_t in = (loff_t)(s - fr->uoff), out = (loff_t)(s - cx->a);
		ssize_t n = copy_file_range(fd, &in, cx->out, &out, (size_t)(e - s), 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			/* no copy_file_range across these files: copy by hand */
			uint8_t buf[65536];
			size_t want = e - s < sizeof(buf) ? (size_t)(e - s) : sizeof(buf);
			ssize_t r = pread(fd, buf, want, (off_t)(s - fr->uoff));

			if (r <= 0)
				return -EIO;
			if (copy_out(cx, s, buf, (size_t)r) < 0)
				return -EIO;
			n = r;
		}
		s += (uint64_t)n;
	}
	return 0;
}

/* 1 if every frame of the file is recorded in the cache. */
static int all_cached(struct nx_store *st, const struct nx_toc *toc, const struct nx_toc_entry *e)
{
	uint32_t first, last, i;

	if (nx_toc_frames_for(toc, e->off, e->size, &first, &last) < 0)
		return 0;
	for (i = first; i <= last; i++)
		if (!nx_chunk_known(st, toc->frames[i].sha256))
			return 0;
	return 1;
}

static int materialize(struct nx_store *st, struct nx_spath *p, uint32_t entry, uint64_t *disk)
{
	const struct nx_toc *toc = p->toc;
	const struct nx_toc_entry *e = &toc->entries[entry];
	struct nx_walk_ops ops = { .data = copy_data, .file = copy_file };
	struct copyctx cx = { .toc = toc, .a = e->off, .b = e->off + e->size, .out = -1 };
	char tmp[PATH_MAX], path[PATH_MAX], dir[PATH_MAX];
	uint32_t first, last;
	char *slash;
	int rc;

	if (nx_toc_frames_for(toc, e->off, e->size, &first, &last) < 0)
		return -EIO;
	snprintf(tmp, sizeof(tmp), "file-%ld-%016llx", (long)getpid(),
		 (unsigned long long)now_ns());
	cx.out = openat(st->fd_tmp, tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (cx.out < 0)
		return -errno;
	rc = nx_frames_walk(st, p, first, last, NX_BATCH_BYTES, &ops, &cx);
	if (rc == 0 && fdatasync(cx.out) < 0)
		rc = -errno;
	if (rc == 0 && fchmod(cx.out, 0444) < 0)
		rc = -errno;
	if (rc == 0) {
		struct stat sb;

		*disk = fstat(cx.out, &sb) == 0 ? (uint64_t)sb.st_blocks * 512 : e->size;
	}
	if (rc == 0) {
		/* written once, read through passthrough later: the copy
		 * itself need not stay in the page cache */
		posix_fadvise(cx.out, 0, 0, POSIX_FADV_DONTNEED);
		file_path(st, p->man_digest, entry, path, sizeof(path));
		snprintf(dir, sizeof(dir), "%s", path);
		slash = strrchr(dir, '/');
		*slash = '\0';
		if (mkdirat(st->fd_files, dir, 0700) < 0 && errno != EEXIST)
			rc = -errno;
		else if (renameat(st->fd_tmp, tmp, st->fd_files, path) < 0)
			rc = -errno;
	}
	close(cx.out);
	if (rc < 0) {
		unlinkat(st->fd_tmp, tmp, 0);
		nx_log(NX_LOG_WARNING, "cache %s: cannot copy out %s entry %u for passthrough: %s",
		       st->dir, p->base, entry, strerror(-rc));
	}
	return rc;
}

static void *worker(void *arg)
{
	struct nx_store *st = arg;
	struct nx_files *f = st->files;
	struct nx_file_job *j;
	struct nx_file *x;
	uint64_t disk = 0, reserve;
	int rc;

	pthread_mutex_lock(&f->lock);
	for (;;) {
		while (!f->head && !f->stop)
			pthread_cond_wait(&f->cond, &f->lock);
		if (f->stop)
			break;
		j = f->head;
		f->head = j->next;
		if (!f->head)
			f->tail = NULL;
		f->queued--;
		pthread_mutex_unlock(&f->lock);

		/* The copy takes disk while it is written (and stays in tmp/
		 * if we are killed): count it from the start, room made first,
		 * so du stays within cache_size. */
		reserve = (j->p->toc->entries[j->entry].size + 4095) & ~UINT64_C(4095);
		nx_stat_add(&st->reserved, reserve);
		nx_stat_add(&st->total_bytes, reserve);
		if (nx_stat_get(&st->total_bytes) > st->limit)
			nx_db_evict(st);
		rc = materialize(st, j->p, j->entry, &disk);
		nx_stat_sub(&st->total_bytes, reserve);
		nx_stat_sub(&st->reserved, reserve);

		pthread_mutex_lock(&f->lock);
		x = find(f, j->p->man_digest, j->entry);
		if (x && rc == 0) {
			x->present = 1;
			x->disk = disk;
			x->last_use = now_ns();
			f->bytes += x->disk;
			nx_stat_add(&st->total_bytes, x->disk);
		} else if (x) {
			unlink_entry(f, x);
		}
		{
			struct nx_spath *done = j->p;

			free(j);
			/* not under f->lock: the put takes st->lock */
			pthread_mutex_unlock(&f->lock);
			nx_spath_put(done);
			pthread_mutex_lock(&f->lock);
		}
		if (rc == 0 && nx_stat_get(&st->total_bytes) > st->limit) {
			pthread_mutex_unlock(&f->lock);
			nx_files_evict(st, st->limit - st->limit / 10);
			pthread_mutex_lock(&f->lock);
		}
	}
	pthread_mutex_unlock(&f->lock);
	return NULL;
}

/* ------------------------------------------------------------- open/close */

static void scan(struct nx_store *st, struct nx_files *f)
{
	int dfd = openat(st->fd_files, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dirent *de, *de2;
	DIR *d, *d2;

	d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!d) {
		if (dfd >= 0)
			close(dfd);
		return;
	}
	while ((de = readdir(d))) {
		int sfd;

		if (de->d_name[0] == '.' || strlen(de->d_name) != 2)
			continue;
		sfd = openat(st->fd_files, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		d2 = sfd >= 0 ? fdopendir(sfd) : NULL;
		if (!d2) {
			if (sfd >= 0)
				close(sfd);
			continue;
		}
		while ((de2 = readdir(d2))) {
			uint8_t man[NX_SHA256_LEN];
			struct stat sb;
			uint32_t entry;
			struct nx_file *x;

			if (de2->d_name[0] == '.')
				continue;
			if (parse_name(de2->d_name, man, &entry) < 0 ||
			    strncmp(de2->d_name, de->d_name, 2) != 0) {
				unlinkat(sfd, de2->d_name, 0); /* not ours (a symlink goes too) */
				continue;
			}
			if (fstatat(sfd, de2->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0 ||
			    !S_ISREG(sb.st_mode) || sb.st_uid != geteuid() || find(f, man, entry))
				continue;
			x = add(f, man, entry);
			if (!x)
				break;
			x->present = 1;
			x->disk = (uint64_t)sb.st_blocks * 512;
			x->last_use = (uint64_t)sb.st_mtim.tv_sec * 1000000000u +
				      (uint64_t)sb.st_mtim.tv_nsec;
			f->bytes += x->disk;
		}
		closedir(d2);
	}
	closedir(d);
}

int nx_files_open(struct nx_store *st)
{
	struct nx_files *f;

	if (st->readonly || !st->env || st->fd_files < 0)
		return 0; /* db.c opened files/ (checked, O_NOFOLLOW) or said why not */
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->cond, NULL);
	scan(st, f);
	nx_stat_add(&st->total_bytes, f->bytes);
	st->files = f;
	return 0;
}

void nx_files_close(struct nx_store *st)
{
	struct nx_files *f = st->files;
	size_t i;

	if (!f)
		return;
	pthread_mutex_lock(&f->lock);
	f->stop = 1;
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
	if (f->started)
		pthread_join(f->worker, NULL);
	while (f->head) {
		struct nx_file_job *j = f->head;

		f->head = j->next;
		nx_spath_put(j->p);
		free(j);
	}
	for (i = 0; i < FILES_BUCKETS; i++)
		while (f->tab[i]) {
			struct nx_file *x = f->tab[i];

			f->tab[i] = x->next;
			free(x);
		}
	pthread_cond_destroy(&f->cond);
	pthread_mutex_destroy(&f->lock);
	free(f);
	st->files = NULL;
}

/* Queues a copy of a fully cached file; f->lock held. The job goes on the
 * queue and the entry into a hash bucket (a variable index): the analyzer
 * loses both (see NX_ANALYZER_ARRAY_STORE_BEGIN). */
NX_ANALYZER_ARRAY_STORE_BEGIN
static void want_locked(struct nx_store *st, struct nx_files *f, struct nx_spath *p,
			uint32_t entry)
{
	struct nx_file_job *j;
	struct nx_file *x;

	if (f->stop || f->queued >= FILES_QUEUE)
		return;
	/* A copy takes as much disk again as the file's chunks, and room for
	 * it is made before it is written: a file larger than an eighth of
	 * the cache would push out frames that readers (and readahead) are
	 * about to use, and be refetched for it. Such a file keeps the
	 * normal read path. */
	if (p->toc->entries[entry].size > st->limit / 8)
		return;
	if (!f->started) {
		if (pthread_create(&f->worker, NULL, worker, st) != 0)
			return;
		f->started = 1;
	}
	j = calloc(1, sizeof(*j));
	x = j ? add(f, p->man_digest, entry) : NULL;
	if (!x) {
		free(j);
		return;
	}
	j->p = p;
	nx_spath_get(p); /* the worker reads its TOC */
	j->entry = entry;
	if (f->tail)
		f->tail->next = j;
	else
		f->head = j;
	f->tail = j;
	f->queued++;
	pthread_cond_signal(&f->cond);
}
NX_ANALYZER_ARRAY_STORE_END

int nx_store_file_pin(struct nx_store *st, struct nx_spath *p, uint32_t entry, int *fd)
{
	struct nx_files *f = st->files;
	const struct nx_toc_entry *e;
	char path[PATH_MAX];
	struct nx_file *x;
	struct stat sb;
	int want = 0, pinned = 0, rc;

	if (!f)
		return -EOPNOTSUPP;
	if (entry >= p->toc->nentries)
		return -ENOENT;
	e = &p->toc->entries[entry];
	if (e->type != NX_NODE_REGULAR || e->size == 0)
		return -ENOENT;
	pthread_mutex_lock(&f->lock);
	x = find(f, p->man_digest, entry);
	if (x && x->present) {
		x->pins++;
		x->last_use = now_ns();
		pinned = 1;
	} else if (!x) {
		want = 1;
	}
	pthread_mutex_unlock(&f->lock);
	if (want) {
		/* outside the lock: LMDB lookups, one per frame */
		if (all_cached(st, p->toc, e)) {
			pthread_mutex_lock(&f->lock);
			if (!find(f, p->man_digest, entry))
				want_locked(st, f, p, entry);
			pthread_mutex_unlock(&f->lock);
		}
		return -ENOENT;
	}
	if (!pinned)
		return -ENOENT; /* being copied */

	file_path(st, p->man_digest, entry, path, sizeof(path));
	*fd = openat(st->fd_files, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	rc = *fd < 0 ? -errno : 0;
	if (rc == 0 && (fstat(*fd, &sb) < 0 || !S_ISREG(sb.st_mode) ||
			(uint64_t)sb.st_size != e->size)) {
		close(*fd);
		rc = -EIO;
	}
	if (rc == 0)
		return 0;
	/* gone or damaged (a crash, someone's rm): forget it, copy again */
	pthread_mutex_lock(&f->lock);
	x = find(f, p->man_digest, entry);
	if (x) {
		x->pins--;
		if (!x->pins) {
			if (rc == -EIO)
				unlinkat(st->fd_files, path, 0);
			f->bytes -= x->disk;
			nx_stat_sub(&st->total_bytes, x->disk);
			unlink_entry(f, x);
		}
	}
	pthread_mutex_unlock(&f->lock);
	return -ENOENT;
}

void nx_store_file_unpin(struct nx_store *st, struct nx_spath *p, uint32_t entry)
{
	struct nx_files *f = st->files;
	struct nx_file *x;

	if (!f)
		return;
	pthread_mutex_lock(&f->lock);
	x = find(f, p->man_digest, entry);
	if (x && x->pins)
		x->pins--;
	pthread_mutex_unlock(&f->lock);
}

void nx_store_file_want(struct nx_store *st, struct nx_spath *p, uint32_t entry)
{
	struct nx_files *f = st->files;
	const struct nx_toc_entry *e;
	int known;

	if (!f || entry >= p->toc->nentries)
		return;
	e = &p->toc->entries[entry];
	if (e->type != NX_NODE_REGULAR || e->size == 0)
		return;
	pthread_mutex_lock(&f->lock);
	known = find(f, p->man_digest, entry) != NULL;
	pthread_mutex_unlock(&f->lock);
	if (known)
		return;
	if (!all_cached(st, p->toc, e)) {
		/* read mostly? its missing frames in the background (complete.c) */
		nx_complete_want(st, p, entry);
		return;
	}
	pthread_mutex_lock(&f->lock);
	if (!find(f, p->man_digest, entry))
		want_locked(st, f, p, entry);
	pthread_mutex_unlock(&f->lock);
}
