/*
 * fs/ops.c: the libfuse low-level operations of nixoci-fs. Every handler ends
 * in exactly one fuse_reply_* (forget ends in fuse_reply_none), whatever the
 * store answers; a store error becomes fuse_reply_err and nothing else.
 *
 * Inode identity
 * --------------
 * An inode number is not an index into a table of ours. It is computed:
 *
 *	ino = (id << NX_INO_ENTRY_BITS) | entry
 *
 * where id is the 40-bit number cache/ derives from the store path's hash
 * part (nx_spath_id) and entry is the node's index in that path's TOC. The
 * TOC lists nodes breadth-first with sorted, contiguous sibling ranges, so
 * the index is a pure function of the tree (docs/format.md 4.2), and the id
 * is a pure function of the hash part except for the rare collision of two
 * paths' 40 bits, which cache/ settles once and records in the cache's id
 * table, so that it does not depend on load order. 40 + 24 bits
 * fill the 64-bit fuse_ino_t exactly; NX_TOC_MAX_ENTRIES keeps entry below
 * 2^24. The root directory is FUSE_ROOT_ID (1); a store path root is entry 0.
 *
 * Consequences:
 *  - No inode table, so forget needs no bookkeeping and the lookup counts the
 *    kernel keeps never have to be mirrored here, nor pin memory. A request
 *    holds a reference to its store path while it runs (and an open file
 *    for as long as it is open); an unreferenced path may be unloaded to
 *    keep the metadata budget, and the next request for one of its inodes
 *    loads it again by id (cache/ keeps the id table in the cache), so every
 *    number handed out stays resolvable for the life of the mount.
 *  - The same file has the same inode number in every daemon over the same
 *    repository, across restarts and across hosts (useful for tools that
 *    remember st_ino, and what would make NFS export or a future
 *    reconnect-on-restart possible).
 *  - Decoding is two shifts and nx_store_by_id. If the id is unknown (a number
 *    that this daemon never handed out: a forged NFS handle, or a kernel that
 *    kept an inode across a daemon restart on a reused /dev/fuse connection)
 *    the answer is ESTALE, never a crash and never another file's data.
 *  - id 0 with entry 1 would equal FUSE_ROOT_ID; cache/ must never hand out
 *    id 0 (checked below, the path is then refused with EIO).
 *
 * Timeouts: everything inside a store path is immutable, so entries, attrs
 * and negative entries there are cached for a day, open files keep their page
 * cache and directories their readdir cache. The root directory changes as
 * paths are pushed: its attrs are cached for a minute and its negative
 * entries for a few seconds, and its listing is never cached by the kernel.
 */
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "fs/fs_i.h"

#define ID_BITS 40
#define ENTRY_MASK ((UINT64_C(1) << NX_INO_ENTRY_BITS) - 1)
#define ID_MASK ((UINT64_C(1) << ID_BITS) - 1)

#define TIMEOUT_STORE 86400.0   /* inside a store path: immutable */
#define TIMEOUT_ROOT_ATTR 60.0  /* the root directory itself */
#define TIMEOUT_ROOT_NEG 5.0    /* a store path that may be pushed soon */
#define TIMEOUT_ROOT_BAD 3600.0 /* a name that can never be a store path */

#define NX_FS_MAX_BACKGROUND 64
#define READ_MAX (1u << 20)    /* the kernel sends at most max_pages (256) pages */
#define READDIR_MAX (1u << 20) /* cap on the reply buffer we allocate */
#define STATS_XATTR "user.nixoci.stats"
#define STATS_MAX 2048

/* A d_ino for root entries whose store path is not loaded (closure mode). */
#define INO_UNKNOWN 0xffffffffu

static struct nx_fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* A store error as an errno the kernel accepts and does not remember as "not
 * implemented" (ENOSYS is sticky for some ops). */
static int err_of(int r)
{
	if (r >= 0 || r <= -4096 || r == -ENOSYS)
		return EIO;
	return -r;
}

static fuse_ino_t make_ino(uint64_t id, uint32_t entry)
{
	return (fuse_ino_t)(((id & ID_MASK) << NX_INO_ENTRY_BITS) | entry);
}

/* The id of a loaded path, refusing the one value that would alias the root. */
static int spath_id(const struct nx_spath *p, uint64_t *id)
{
	*id = nx_spath_id(p);
	if (*id == 0 || *id > ID_MASK) {
		nx_log(NX_LOG_ERR, "store path %s: invalid inode id %" PRIu64,
		       nx_spath_base(p), *id);
		return -EIO;
	}
	return 0;
}

/* Splits a non-root inode into its id, a loaded store path and a valid
 * entry; on success the caller holds a reference to *p (nx_spath_put). The
 * path may have been unloaded (or never loaded by this daemon, after a
 * takeover): cache/ loads it again by id. */
static int resolve(struct nx_fs *fs, fuse_ino_t ino, struct nx_spath **p, uint64_t *idp,
		   uint32_t *entry)
{
	uint64_t id = (uint64_t)ino >> NX_INO_ENTRY_BITS;
	uint32_t e = (uint32_t)((uint64_t)ino & ENTRY_MASK);
	const struct nx_toc *toc;
	int r;

	if (ino == FUSE_ROOT_ID || id == 0)
		return -ESTALE;
	r = nx_store_by_id(fs->st, id, p);
	if (r == -ENOENT)
		return -ESTALE;
	if (r < 0)
		return r;
	toc = nx_spath_toc(*p);
	if (!toc || e >= toc->nentries) {
		nx_spath_put(*p);
		*p = NULL;
		return -ESTALE;
	}
	*idp = id;
	*entry = e;
	return 0;
}

static void root_stat(struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = FUSE_ROOT_ID;
	st->st_mode = S_IFDIR | 0555;
	st->st_nlink = 2;
	st->st_blksize = 4096;
	st->st_atime = st->st_mtime = st->st_ctime = 1;
}

/* The canonical metadata of a Nix store (specs 5.6): 0444/0555, 0555 dirs,
 * 0777 symlinks, root-owned, mtime 1. */
static void entry_stat(const struct nx_toc *toc, uint64_t id, uint32_t e, struct stat *st)
{
	const struct nx_toc_entry *en = &toc->entries[e];
	uint32_t i, subdirs = 0;

	memset(st, 0, sizeof(*st));
	st->st_ino = make_ino(id, e);
	switch (en->type) {
	case NX_NODE_DIRECTORY:
		/* 2 + subdirectories, as a local store shows; the TOC has the
		 * child range, and attrs are cached for a day. */
		for (i = 0; i < en->nchildren; i++)
			if (toc->entries[en->first_child + i].type == NX_NODE_DIRECTORY)
				subdirs++;
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2 + subdirs;
		break;
	case NX_NODE_SYMLINK:
		st->st_mode = S_IFLNK | 0777;
		st->st_nlink = 1;
		st->st_size = (off_t)en->size;
		break;
	default:
		st->st_mode = S_IFREG | (en->executable ? 0555 : 0444);
		st->st_nlink = 1;
		st->st_size = (off_t)en->size;
		break;
	}
	st->st_blksize = 4096;
	st->st_blocks = (blkcnt_t)((en->size + 511) / 512);
	st->st_atime = st->st_mtime = st->st_ctime = 1;
}

static void reply_negative(fuse_req_t req, double timeout)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	e.ino = 0; /* a cached ENOENT */
	e.entry_timeout = timeout;
	fuse_reply_entry(req, &e);
}

static void reply_entry(fuse_req_t req, const struct nx_spath *p, uint64_t id, uint32_t entry)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	entry_stat(nx_spath_toc(p), id, entry, &e.attr);
	e.ino = e.attr.st_ino;
	e.generation = 1;
	e.attr_timeout = TIMEOUT_STORE;
	e.entry_timeout = TIMEOUT_STORE;
	fuse_reply_entry(req, &e);
}

/* ------------------------------------------------------------- lifecycle */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct nx_fs *fs = userdata;
	unsigned int want = FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_SPLICE_WRITE |
			     FUSE_CAP_SPLICE_MOVE | FUSE_CAP_EXPLICIT_INVAL_DATA;

	/* Bits outside capable make libfuse abort the session. */
	conn->want |= want & conn->capable;
	/* A registry, not a disk: many readers' readahead in flight at once
	 * (the kernel's default is 12 background requests, 9 before it
	 * throttles); unless -o max_background= chose. */
	if (!conn->max_background)
		conn->max_background = NX_FS_MAX_BACKGROUND;
	if (!conn->congestion_threshold)
		conn->congestion_threshold = conn->max_background * 3 / 4;
	/* Pages of an immutable store never go stale: drop them only when told. */
	if (conn->want & FUSE_CAP_EXPLICIT_INVAL_DATA)
		conn->want &= ~(unsigned int)FUSE_CAP_AUTO_INVAL_DATA;
	/* A walk of a tree opens every directory, often twice (fts: once to
	 * read it, once to come back to it), and each open and release is a
	 * request: two thirds of what a find costs. Where the kernel can open
	 * directories itself (an opendir answered ENOSYS), a closure mount
	 * lets it: every directory of a TOC is immutable and the root lists
	 * a fixed closure, so the kernel's default (cache the listing, keep
	 * the pages) is what opendir would answer. A plain mount's root grows
	 * with every lookup and needs its snapshot per open. */
	if (fs->closure_mode && (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT))
		fs->no_opendir = 1;
	nx_log(NX_LOG_DEBUG, "fuse protocol %u.%u, capable 0x%x, want 0x%x, max_readahead %u",
	       conn->proto_major, conn->proto_minor, conn->capable, conn->want,
	       conn->max_readahead);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	/* Inodes are computed, not allocated: nothing to release. */
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	fuse_reply_none(req);
}

/* ----------------------------------------------------------------- names */

static void lookup_root(fuse_req_t req, struct nx_fs *fs, const char *name)
{
	size_t len = strlen(name);
	struct nx_spath *p;
	uint64_t id;
	int r;

	/* Not a store path base name: no network, cache the answer long. */
	if (nx_storepath_check_base(name, len) < 0) {
		reply_negative(req, TIMEOUT_ROOT_BAD);
		return;
	}
	r = nx_store_lookup(fs->st, name, len, &p);
	if (r == -ENOENT) {
		reply_negative(req, TIMEOUT_ROOT_NEG);
		return;
	}
	if (r < 0) {
		fuse_reply_err(req, err_of(r));
		return;
	}
	r = spath_id(p, &id);
	if (r < 0) {
		fuse_reply_err(req, err_of(r));
		nx_spath_put(p);
		return;
	}
	/* before the kernel learns the id: a successor must load this path */
	nx_restart_note_path(p);
	reply_entry(req, p, id, 0);
	nx_spath_put(p);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct nx_fs *fs = fs_of(req);
	const struct nx_toc *toc;
	struct nx_spath *p;
	uint32_t dir;
	int64_t child;
	uint64_t id;
	int r;

	if (parent == FUSE_ROOT_ID) {
		lookup_root(req, fs, name);
		return;
	}
	r = resolve(fs, parent, &p, &id, &dir);
	if (r < 0) {
		fuse_reply_err(req, err_of(r));
		return;
	}
	toc = nx_spath_toc(p);
	if (toc->entries[dir].type != NX_NODE_DIRECTORY) {
		fuse_reply_err(req, ENOTDIR);
		goto out;
	}
	child = nx_toc_lookup(toc, dir, name, strlen(name));
	if (child == -ENOENT) {
		reply_negative(req, TIMEOUT_STORE); /* immutable: never appears */
		goto out;
	}
	if (child < 0 || (uint64_t)child >= toc->nentries) {
		fuse_reply_err(req, child < 0 ? err_of((int)child) : EIO);
		goto out;
	}
	reply_entry(req, p, id, (uint32_t)child);
out:
	nx_spath_put(p);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct nx_fs *fs = fs_of(req);
	struct nx_spath *p;
	struct stat st;
	uint32_t e;
	uint64_t id;
	int r;

	if (ino == FUSE_ROOT_ID) {
		root_stat(&st);
		fuse_reply_attr(req, &st, TIMEOUT_ROOT_ATTR);
		return;
	}
	r = resolve(fs, ino, &p, &id, &e);
	if (r < 0) {
		fuse_reply_err(req, err_of(r));
		return;
	}
	entry_stat(nx_spath_toc(p), id, e, &st);
	fuse_reply_attr(req, &st, TIMEOUT_STORE);
	nx_spath_put(p);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct nx_fs *fs = fs_of(req);
	char target[NX_NAR_TARGET_MAX + 1];
	const struct nx_toc *toc;
	struct nx_spath *p;
	const char *t;
	size_t len;
	uint32_t e;
	uint64_t id;
	int r;

	if (ino == FUSE_ROOT_ID) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	r = resolve(fs, ino, &p, &id, &e);
	if (r < 0) {
		fuse_reply_err(req, err_of(r));
		return;
	}
	toc = nx_spath_toc(p);
	if (toc->entries[e].type != NX_NODE_SYMLINK) {
		fuse_reply_err(req, EINVAL);
		goto out;
	}
	t = nx_toc_target(toc, e, &len);
	if (!t || len == 0 || len > NX_NAR_TARGET_MAX) {
		fuse_reply_err(req, EIO);
		goto out;
	}
	memcpy(target, t, len);
	target[len] = '\0';
	fuse_reply_readlink(req, target);
out:
	nx_spath_put(p);
}

/* ----------------------------------------------------------------- files */

/*
 * Passthrough opens. The kernel puts an inode either in cached mode (opens
 * without FOPEN_PASSTHROUGH) or in passthrough mode with one backing file,
 * and fails an open that does not match the mode the inode is in while
 * other opens of it live. So the daemon keeps, per inode with live opens,
 * the mode it answered and the backing id, and answers every further open
 * the same way until the last release. Our count only drops at RELEASE,
 * which the kernel sends after it dropped the file, so ours is never below
 * the kernel's: a mode we keep is never one the kernel has left for the
 * other.
 */
#define OPENS_BUCKETS 1024

struct open_ino {
	struct open_ino *next;
	fuse_ino_t ino;
	unsigned opens;
	int32_t backing_id; /* > 0: passthrough */
	struct nx_spath *p; /* for the unpin */
	uint32_t entry;
};

static pthread_mutex_t opens_lock = PTHREAD_MUTEX_INITIALIZER;
static struct open_ino *opens_tab[OPENS_BUCKETS];

static struct open_ino **opens_slot(fuse_ino_t ino)
{
	struct open_ino **pp = &opens_tab[(ino ^ (ino >> 24)) % OPENS_BUCKETS];

	while (*pp && (*pp)->ino != ino)
		pp = &(*pp)->next;
	return pp;
}

/* Registers a backing file for a fully cached file; 0 when none (the file
 * is not copied yet, or passthrough is off). */
static int32_t backing_for(struct nx_fs *fs, struct nx_spath *p, uint32_t e)
{
	int32_t id = 0;
	int fd, r;

	if (!fs->sess || !__atomic_load_n(&fs->sess->passthrough, __ATOMIC_ACQUIRE))
		return 0;
	if (nx_store_file_pin(fs->st, p, e, &fd) < 0)
		return 0;
	r = nx_session_backing_open(fs->sess, fd, &id);
	close(fd);
	if (r == 0) {
		__atomic_fetch_add(&fs->pt_opens, 1, __ATOMIC_RELAXED);
		return id;
	}
	nx_store_file_unpin(fs->st, p, e);
	/* The probe at mount worked, so this is new (an LSM, a cache moved to
	 * another filesystem): say it once and serve through the daemon. */
	if (__atomic_exchange_n(&fs->sess->passthrough, 0, __ATOMIC_ACQ_REL))
		nx_log(NX_LOG_WARNING, "passthrough turned off: the kernel did not accept a "
		       "backing file: %s", strerror(-r));
	return 0;
}

/* Counts an open of @ino; returns its backing id (0: cached mode). */
static int32_t opens_get(struct nx_fs *fs, fuse_ino_t ino, struct nx_spath *p, uint32_t e)
{
	struct open_ino **pp, *o;
	int32_t id;

	pthread_mutex_lock(&opens_lock);
	pp = opens_slot(ino);
	o = *pp;
	if (!o) {
		o = calloc(1, sizeof(*o));
		if (!o) {
			pthread_mutex_unlock(&opens_lock);
			return -ENOMEM;
		}
		o->ino = ino;
		o->p = p;
		nx_spath_get(p); /* the TOC stays loaded while the file is open */
		o->entry = e;
		/* under the lock: a second open must see the mode chosen */
		o->backing_id = backing_for(fs, p, e);
		*pp = o;
		/* before the reply: a successor must open it the same way */
		nx_restart_note_open(ino, o->backing_id);
	}
	o->opens++;
	id = o->backing_id;
	pthread_mutex_unlock(&opens_lock);
	return id;
}

static void opens_put(struct nx_fs *fs, fuse_ino_t ino)
{
	struct open_ino **pp, *o;

	pthread_mutex_lock(&opens_lock);
	pp = opens_slot(ino);
	o = *pp;
	if (o && --o->opens == 0) {
		*pp = o->next;
		nx_restart_note_close(ino); /* before the id goes */
		if (o->backing_id > 0) {
			nx_session_backing_close(fs->sess, o->backing_id);
			nx_store_file_unpin(fs->st, o->p, o->entry);
		}
	} else {
		o = NULL;
	}
	pthread_mutex_unlock(&opens_lock);
	if (o) {
		/* the reader may have completed the file: copy it for next time */
		if (o->backing_id <= 0 && fs->sess &&
		    __atomic_load_n(&fs->sess->passthrough, __ATOMIC_ACQUIRE))
			nx_store_file_want(fs->st, o->p, o->entry);
		nx_spath_put(o->p);
		free(o);
	}
}

/* An inode a predecessor daemon opened (takeover.c): the kernel may still
 * hold it open in that mode, so every open of it here uses that mode (and
 * backing id), and the entry never goes: its predecessor's releases are not
 * counted here. */
#define OPENS_FOREVER (UINT_MAX / 2)

void nx_fs_ops_seed_open(void *fsv, uint64_t ino, int32_t backing_id)
{
	struct open_ino **pp, *o;

	(void)fsv;
	pthread_mutex_lock(&opens_lock);
	pp = opens_slot((fuse_ino_t)ino);
	if (!*pp && (o = calloc(1, sizeof(*o)))) {
		o->ino = (fuse_ino_t)ino;
		o->backing_id = backing_id;
		o->opens = OPENS_FOREVER;
		*pp = o;
	}
	pthread_mutex_unlock(&opens_lock);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct nx_fs *fs = fs_of(req);
	struct nx_reader *rd = NULL;
	struct nx_spath *p;
	int32_t id;
	uint32_t e;
	uint64_t id64;
	int r;

	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (ino == FUSE_ROOT_ID) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	r = resolve(fs, ino, &p, &id64, &e);
	if (r < 0) {
		fuse_reply_err(req, err_of(r));
		return;
	}
	switch (nx_spath_toc(p)->entries[e].type) {
	case NX_NODE_REGULAR:
		break;
	case NX_NODE_DIRECTORY:
		fuse_reply_err(req, EISDIR);
		goto out;
	default:
		fuse_reply_err(req, ELOOP);
		goto out;
	}
	id = opens_get(fs, ino, p, e);
	if (id < 0) {
		fuse_reply_err(req, -id);
		goto out;
	}
	fi->noflush = 1; /* nothing to flush on close */
	if (id > 0) {
		/* the kernel reads the backing file: no reads reach us */
		fi->fh = 0;
		fi->keep_cache = 0;
	} else {
		fi->keep_cache = 1; /* immutable: the page cache never goes stale */
		/* per-open readahead state; without it reads just get none */
		fi->fh = nx_reader_new(&rd) == 0 ? nx_fh_pack(rd) : 0;
	}
	/* A handle always carries this daemon's generation (takeover.c), so
	 * that a successor knows the release of a predecessor's open. */
	if (!rd)
		fi->fh = nx_fh_mark();
	if (nx_session_reply_open(req, fi, id) == -ENOENT) {
		/* the opener was interrupted: no release follows */
		nx_reader_free(rd);
		opens_put(fs, ino);
	} else if (id == 0) {
		/* read through us: have the disk read its cached chunks now,
		 * not one READ at a time (after the reply: it only queues) */
		nx_store_file_warm(fs->st, p, e);
	}
out:
	nx_spath_put(p);
}

static pthread_key_t read_buf_key;
static pthread_once_t read_buf_once = PTHREAD_ONCE_INIT;
static int read_buf_key_err;

static void read_buf_key_init(void)
{
	read_buf_key_err = pthread_key_create(&read_buf_key, free);
}

/* One READ_MAX buffer per worker thread, freed when the thread exits. */
static void *read_buf(void)
{
	void *buf;

	pthread_once(&read_buf_once, read_buf_key_init);
	if (read_buf_key_err)
		return NULL;
	buf = pthread_getspecific(read_buf_key);
	if (buf)
		return buf;
	buf = malloc(READ_MAX);
	if (!buf)
		return NULL;
	if (pthread_setspecific(read_buf_key, buf) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* The log context of a read (nx_log_set_context): the file being read. */
struct read_ctx {
	struct nx_spath *p;
	uint32_t e;
};

static void read_ctx_fmt(void *arg, char *buf, size_t cap)
{
	const struct read_ctx *c = arg;
	char path[PATH_MAX];

	nx_toc_path(nx_spath_toc(c->p), c->e, path, sizeof(path));
	snprintf(buf, cap, "reading %s/%s/%s", NX_STORE_DIR, nx_spath_base(c->p), path);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct nx_fs *fs = fs_of(req);
	const struct nx_toc_entry *en;
	struct read_ctx rc;
	struct nx_spath *p;
	size_t got = 0;
	uint64_t len;
	uint32_t e;
	uint64_t id;
	void *buf;
	int r, foreign;

	if (ino == FUSE_ROOT_ID) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	r = resolve(fs, ino, &p, &id, &e);
	if (r < 0) {
		fuse_reply_err(req, err_of(r));
		return;
	}
	en = &nx_spath_toc(p)->entries[e];
	if (en->type != NX_NODE_REGULAR) {
		fuse_reply_err(req, EISDIR);
		goto out;
	}
	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		goto out;
	}
	if ((uint64_t)off >= en->size || size == 0) {
		fuse_reply_buf(req, NULL, 0);
		goto out;
	}
	len = en->size - (uint64_t)off;
	if (len > size)
		len = size;
	if (len > READ_MAX)
		len = READ_MAX; /* never: the kernel's largest read is 1 MiB */
	nx_log(NX_LOG_DEBUG, "read ino %#llx off %lld len %llu", (unsigned long long)ino,
	       (long long)off, (unsigned long long)len);
	{
		/* In one cached frame: the kernel splices it from the chunk
		 * file, no copy through our memory. */
		struct fuse_bufvec bv = FUSE_BUFVEC_INIT(0);
		uint64_t fdoff;
		uint32_t frame;
		int fd;

		r = nx_store_read_fd(fs->st, p, e, (uint64_t)off, (size_t)len,
				     nx_fh_unpack(fi->fh, &foreign), &fd, &fdoff, &got,
				     &frame);
		if (r == 0) {
			bv.buf[0].size = got;
			bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
			bv.buf[0].fd = fd;
			bv.buf[0].pos = (off_t)fdoff;
			fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
			nx_store_read_fd_done(fs->st, p, frame, fd);
			goto out;
		}
		if (r != -EAGAIN) {
			fuse_reply_err(req, err_of(r));
			goto out;
		}
		got = 0;
	}
	buf = read_buf();
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		goto out;
	}
	rc.p = p;
	rc.e = e;
	nx_log_set_context(read_ctx_fmt, &rc);
	/* a file opened by a predecessor daemon reads without readahead state */
	r = nx_store_read_ahead(fs->st, p, e, (uint64_t)off, (size_t)len, buf, &got,
				nx_fh_unpack(fi->fh, &foreign));
	nx_log_set_context(NULL, NULL);
	if (r < 0) {
		fuse_reply_err(req, err_of(r));
		goto out;
	}
	if (got > len)
		got = (size_t)len;
	fuse_reply_buf(req, buf, got);
out:
	nx_spath_put(p);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	int foreign;
	struct nx_reader *rd = nx_fh_unpack(fi->fh, &foreign);

	/* A predecessor's open: its reader died with it, and it was not
	 * counted here (takeover.c). */
	if (!foreign) {
		nx_reader_free(rd);
		opens_put(fs_of(req), ino);
	}
	fuse_reply_err(req, 0);
}

/* ----------------------------------------------------------- directories */

/* A snapshot of the root listing taken at opendir, so that offsets stay
 * stable while paths are resolved (and listed) concurrently. */
struct root_ent {
	char *name;
	fuse_ino_t ino;
	mode_t mode; /* type bits only; 0 = unknown */
};

struct root_snap {
	struct root_ent *ents;
	size_t n, cap;
};

static void root_snap_free(struct root_snap *s)
{
	size_t i;

	if (!s)
		return;
	for (i = 0; i < s->n; i++)
		free(s->ents[i].name);
	free(s->ents);
	free(s);
}

/* the strdup'd name is owned by s->ents (NX_ANALYZER_ARRAY_STORE_BEGIN says why) */
NX_ANALYZER_ARRAY_STORE_BEGIN
static int root_snap_add(void *ctx, const char *base)
{
	struct root_snap *s = ctx;
	struct root_ent *ents;
	size_t cap;

	if (s->n == s->cap) {
		cap = s->cap ? 2 * s->cap : 64;
		ents = reallocarray(s->ents, cap, sizeof(*ents));
		if (!ents)
			return -ENOMEM;
		s->ents = ents;
		s->cap = cap;
	}
	s->ents[s->n].name = strdup(base);
	if (!s->ents[s->n].name)
		return -ENOMEM;
	s->ents[s->n].ino = INO_UNKNOWN;
	s->ents[s->n].mode = 0;
	s->n++;
	return 0;
}
NX_ANALYZER_ARRAY_STORE_END

static int root_snap_take(struct nx_fs *fs, struct root_snap **out)
{
	struct root_snap *s = calloc(1, sizeof(*s));
	uint64_t id;
	size_t i;
	int r;

	if (!s)
		return -ENOMEM;
	r = nx_store_list(fs->st, root_snap_add, s);
	if (r != 0) {
		root_snap_free(s);
		return r < 0 ? r : -EIO;
	}
	/*
	 * Without a closure the root lists only resolved paths, whose ids and
	 * types are known without loading them, so d_ino/d_type can be exact. With a closure,
	 * most listed paths are not loaded yet and a lookup would fetch: leave
	 * them unknown rather than turn `ls` into one request per path.
	 */
	if (!fs->closure_mode) {
		for (i = 0; i < s->n; i++) {
			int type;

			/* the name's id and type, without loading it again */
			if (nx_store_peek(fs->st, s->ents[i].name, strlen(s->ents[i].name), &id,
					  &type, NULL) < 0 ||
			    id == 0 || id > ID_MASK)
				continue;
			s->ents[i].ino = make_ino(id, 0);
			switch (type) {
			case NX_NODE_DIRECTORY:
				s->ents[i].mode = S_IFDIR;
				break;
			case NX_NODE_SYMLINK:
				s->ents[i].mode = S_IFLNK;
				break;
			default:
				s->ents[i].mode = S_IFREG;
				break;
			}
		}
	}
	*out = s;
	return 0;
}

/* The closure root's listing, taken by the first reader that needs it; NULL
 * when it cannot be taken (the caller takes one of its own). */
static struct root_snap *root_static(struct nx_fs *fs)
{
	struct root_snap *s = __atomic_load_n((struct root_snap **)&fs->root_static,
					      __ATOMIC_ACQUIRE),
			 *expect = NULL;

	if (s || root_snap_take(fs, &s) < 0)
		return s;
	if (!__atomic_compare_exchange_n((struct root_snap **)&fs->root_static, &expect, s, 0,
					 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		root_snap_free(s); /* another reader's came first */
		s = expect;
	}
	return s;
}

void nx_fs_ops_release(struct nx_fs *fs)
{
	root_snap_free(fs->root_static);
	fs->root_static = NULL;
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct nx_fs *fs = fs_of(req);
	struct root_snap *snap;
	struct nx_spath *p;
	uint32_t e;
	uint64_t id;
	int r;

	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (fs->no_opendir) {
		/* from now on the kernel opens directories without asking (a
		 * write open of one is refused by the kernel: EISDIR) */
		fuse_reply_err(req, ENOSYS);
		return;
	}
	if (ino == FUSE_ROOT_ID) {
		r = root_snap_take(fs, &snap);
		if (r < 0) {
			fuse_reply_err(req, err_of(r));
			return;
		}
		/* The root grows as paths are pushed: no kernel readdir cache. */
		fi->fh = nx_fh_pack(snap);
		if (fuse_reply_open(req, fi) == -ENOENT)
			root_snap_free(snap); /* interrupted: no releasedir follows */
		return;
	}
	r = resolve(fs, ino, &p, &id, &e);
	if (r < 0) {
		fuse_reply_err(req, err_of(r));
		return;
	}
	if (nx_spath_toc(p)->entries[e].type != NX_NODE_DIRECTORY) {
		fuse_reply_err(req, ENOTDIR);
		goto out;
	}
	fi->fh = 0;
	fi->cache_readdir = 1;
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
out:
	nx_spath_put(p);
}

/*
 * Directory offsets are positions in a virtual list [".", "..", children...]:
 * the cookie passed with entry k is k + 1 (the position of the next entry),
 * so 0 means "from the start" and every cookie is stable, because the child
 * list of a TOC directory never changes and the root's comes from the
 * snapshot taken at opendir.
 */
static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi, int plus)
{
	struct nx_fs *fs = fs_of(req);
	struct root_snap *snap = NULL, *tmp_snap = NULL;
	const struct nx_toc_entry *dir = NULL;
	const struct nx_toc *toc = NULL;
	struct nx_spath *p = NULL;
	char name[NX_NAR_NAME_MAX + 1];
	const char *nm;
	size_t used = 0, need, nlen, total;
	uint64_t id = 0, pos;
	uint32_t e = 0;
	struct stat st;
	char *buf;
	int r;

	if (ino == FUSE_ROOT_ID) {
		int foreign;

		snap = nx_fh_unpack(fi->fh, &foreign);
		/* Opened by the kernel itself (no opendir): a closure's root,
		 * which never changes, listed once for the mount's life */
		if (!snap && !foreign && fs->closure_mode)
			snap = root_static(fs);
		/* Opened by a predecessor daemon (or, by the kernel, on a
		 * plain mount that took a closure mount over): list again. The
		 * successor loaded every path the predecessor had, so the
		 * listing (and the offsets into it) are the same unless paths
		 * were added since. */
		if (!snap && (foreign || !fi->fh) && root_snap_take(fs, &tmp_snap) == 0)
			snap = tmp_snap;
		if (!snap) {
			fuse_reply_err(req, EBADF);
			return;
		}
		total = 2 + snap->n;
	} else {
		r = resolve(fs, ino, &p, &id, &e);
		if (r == 0)
			r = spath_id(p, &id);
		if (r < 0) {
			fuse_reply_err(req, err_of(r));
			goto out;
		}
		toc = nx_spath_toc(p);
		dir = &toc->entries[e];
		if (dir->type != NX_NODE_DIRECTORY) {
			fuse_reply_err(req, ENOTDIR);
			goto out;
		}
		total = 2 + (size_t)dir->nchildren;
	}
	if (off < 0 || (uint64_t)off >= total) {
		root_snap_free(tmp_snap);
		fuse_reply_buf(req, NULL, 0);
		goto out;
	}
	if (size > READDIR_MAX)
		size = READDIR_MAX;
	buf = malloc(size ? size : 1);
	if (!buf) {
		root_snap_free(tmp_snap);
		fuse_reply_err(req, ENOMEM);
		goto out;
	}
	for (pos = (uint64_t)off; pos < total; pos++) {
		memset(&st, 0, sizeof(st));
		st.st_mode = S_IFDIR;
		if (pos == 0) {
			nm = ".";
			st.st_ino = snap ? FUSE_ROOT_ID : make_ino(id, e);
		} else if (pos == 1) {
			nm = "..";
			if (snap || e == 0)
				st.st_ino = FUSE_ROOT_ID;
			else
				st.st_ino = make_ino(id, dir->parent);
		} else if (snap) {
			nm = snap->ents[pos - 2].name;
			st.st_ino = snap->ents[pos - 2].ino;
			st.st_mode = snap->ents[pos - 2].mode;
		} else {
			uint32_t c = dir->first_child + (uint32_t)(pos - 2);
			const char *cn = nx_toc_name(toc, c, &nlen);

			if (!cn || nlen == 0 || nlen > NX_NAR_NAME_MAX) {
				free(buf);
				root_snap_free(tmp_snap);
				fuse_reply_err(req, EIO);
				goto out;
			}
			memcpy(name, cn, nlen);
			name[nlen] = '\0';
			nm = name;
			entry_stat(toc, id, c, &st);
		}
		if (plus) {
			struct fuse_entry_param ep;

			memset(&ep, 0, sizeof(ep));
			ep.attr = st;
			/* Attributes ride along, so `ls -l` costs no lookup per
			 * name: for nodes of a TOC, and for root entries whose
			 * path is loaded. Otherwise nodeid 0: name only. */
			if (pos >= 2 && !snap) {
				ep.ino = st.st_ino;
			} else if (pos >= 2 && snap && st.st_ino != INO_UNKNOWN) {
				struct nx_spath *rp = NULL;
				uint64_t rid;

				int type;

				/* only a loaded one: `ls -l` does not load every path again */
				if (nx_store_peek(fs->st, nm, strlen(nm), &rid, &type, &rp) == 0 &&
				    rp && spath_id(rp, &rid) == 0) {
					entry_stat(nx_spath_toc(rp), rid, 0, &ep.attr);
					ep.ino = ep.attr.st_ino;
				}
				nx_spath_put(rp);
			}
			if (ep.ino) {
				ep.generation = 1;
				ep.attr_timeout = TIMEOUT_STORE;
				ep.entry_timeout = TIMEOUT_STORE;
			}
			need = fuse_add_direntry_plus(req, buf + used, size - used, nm, &ep,
						      (off_t)(pos + 1));
		} else {
			need = fuse_add_direntry(req, buf + used, size - used, nm, &st,
						 (off_t)(pos + 1));
		}
		if (need > size - used)
			break; /* did not fit: the kernel asks again from pos */
		used += need;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
	root_snap_free(tmp_snap);
out:
	nx_spath_put(p);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, 1);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	int foreign;

	if (ino == FUSE_ROOT_ID)
		root_snap_free(nx_fh_unpack(fi->fh, &foreign));
	fuse_reply_err(req, 0);
}

/* ----------------------------------------------------------- filesystem */

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct nx_fs *fs = fs_of(req);
	struct nx_store_stats ss;
	struct statvfs sv;
	uint64_t used;

	nx_store_stats(fs->st, &ss);
	memset(&sv, 0, sizeof(sv));
	sv.f_bsize = 4096;
	sv.f_frsize = 4096;
	/* As CVMFS does: the size is the cache's limit and the use what the
	 * cache holds, so df shows how full the cache is (a lazy store has no
	 * meaningful total, and "100% full" would fire disk alerts). The
	 * limit bounds chunks and blobs only, and is enforced after a save,
	 * so the use may pass it briefly: free is then 0. */
	used = ss.cache_bytes;
	sv.f_blocks = (fsblkcnt_t)(ss.cache_limit / 4096);
	sv.f_bfree = used < ss.cache_limit ? (fsblkcnt_t)((ss.cache_limit - used) / 4096) : 0;
	sv.f_bavail = sv.f_bfree;
	/* no inode count to speak of: 0 total shows as "-" in df -i */
	sv.f_files = 0;
	sv.f_ffree = 0;
	sv.f_favail = 0;
	sv.f_namemax = NX_NAR_NAME_MAX;
	fuse_reply_statfs(req, &sv);
}

/* The session's counters: passthrough and the requests the kernel sent, by
 * kind (what the kernel settings are tuned against). */
static int session_stats(struct nx_fs *fs, char *buf, size_t cap)
{
	static const struct {
		unsigned op;
		const char *name;
	} ops[] = {
		{ 1, "lookup" },  { 3, "getattr" },   { 5, "readlink" }, { 14, "open" },
		{ 15, "read" },   { 18, "release" },  { 22, "getxattr" }, { 23, "listxattr" },
		{ 27, "opendir" }, { 28, "readdir" }, { 44, "readdirplus" }, { 34, "access" },
		{ 17, "statfs" },  { 2, "forget" },   { 42, "batch_forget" },
	};
	const struct nx_session *ss = fs->sess;
	uint64_t total = 0;
	size_t i, used = 0;
	int n;

	if (!ss)
		return 0;
	for (i = 0; i < NX_SESS_OPCODES; i++)
		total += __atomic_load_n(&ss->nreq[i], __ATOMIC_RELAXED);
	n = snprintf(buf, cap, "passthrough %d\npassthrough_opens %" PRIu64 "\n"
		     "fuse_requests %" PRIu64 "\n",
		     __atomic_load_n(&ss->passthrough, __ATOMIC_RELAXED),
		     __atomic_load_n(&fs->pt_opens, __ATOMIC_RELAXED), total);
	if (n < 0 || (size_t)n >= cap)
		return (int)cap;
	used = (size_t)n;
	for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		n = snprintf(buf + used, cap - used, "fuse_%s %" PRIu64 "\n", ops[i].name,
			     __atomic_load_n(&ss->nreq[ops[i].op], __ATOMIC_RELAXED));
		if (n < 0 || (size_t)n >= cap - used)
			return (int)cap;
		used += (size_t)n;
	}
	return (int)used;
}

static int stats_text(struct nx_fs *fs, char *buf, size_t cap)
{
	struct nx_store_stats ss;
	struct nx_fetch_stats fst;
	int n;

	nx_store_stats(fs->st, &ss);
	memset(&fst, 0, sizeof(fst));
	if (fs->reg)
		nx_registry_stats(fs->reg, &fst);
	n = snprintf(buf, cap,
		     "frames_fetched %" PRIu64 "\n"
		     "bytes_fetched %" PRIu64 "\n"
		     "cache_hits %" PRIu64 "\n"
		     "cache_misses %" PRIu64 "\n"
		     "cache_bytes %" PRIu64 "\n"
		     "cache_copy_bytes %" PRIu64 "\n"
		     "cache_limit %" PRIu64 "\n"
		     "evictions %" PRIu64 "\n"
		     "verify_failures %" PRIu64 "\n"
		     "errors %" PRIu64 "\n"
		     "paths_loaded %" PRIu64 "\n"
		     "paths_in_memory %" PRIu64 "\n"
		     "paths_unloaded %" PRIu64 "\n"
		     "paths_reloaded %" PRIu64 "\n"
		     "meta_bytes %" PRIu64 "\n"
		     "meta_budget %" PRIu64 "\n"
		     "requests %" PRIu64 "\n"
		     "readahead_frames %" PRIu64 "\n"
		     "offline %d\n"
		     "connections %" PRIu64 "\n"
		     "h2_requests %" PRIu64 "\n"
		     "warm_files %" PRIu64 "\n"
		     "warm_frames %" PRIu64 "\n"
		     "warm_bytes %" PRIu64 "\n"
		     "complete_files %" PRIu64 "\n"
		     "complete_bytes %" PRIu64 "\n"
		     "predict_elf_files %" PRIu64 "\n"
		     "predict_libs %" PRIu64 "\n"
		     "predict_whole %" PRIu64 "\n"
		     "predict_import %" PRIu64 "\n"
		     "predict_exec %" PRIu64 "\n"
		     "runs_shared %" PRIu64 "\n",
		     ss.frames_fetched, ss.bytes_fetched, ss.cache_hits, ss.cache_misses,
		     ss.cache_bytes, ss.copy_bytes, ss.cache_limit, ss.evictions, ss.verify_failures, ss.errors,
		     ss.paths_loaded, ss.paths_in_memory, ss.paths_unloaded, ss.paths_reloaded,
		     ss.meta_bytes, ss.meta_budget, fst.requests, ss.readahead_frames, ss.offline,
		     fst.connections, fst.h2_requests, ss.warm_files, ss.warm_frames, ss.warm_bytes,
		     ss.complete_files, ss.complete_bytes,
		     ss.predict_elf_files, ss.predict_libs, ss.predict_whole, ss.predict_import, ss.predict_exec,
		     ss.runs_shared);
	if (n < 0 || (size_t)n >= cap)
		return -EIO;
	n += session_stats(fs, buf + n, cap - (size_t)n);
	if ((size_t)n >= cap)
		return -EIO;
	return n;
}

/* The xattr reply protocol: size 0 asks for the length, a short buffer is
 * ERANGE. */
static void reply_xattr_value(fuse_req_t req, const char *val, size_t len, size_t size)
{
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, val, len);
}

/* The Prometheus text (metrics.c); too big for the stack of a worker. */
static void reply_metrics(fuse_req_t req, size_t size)
{
	char *text = malloc(NX_METRICS_MAX);
	int n;

	if (!text) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	n = nx_fs_metrics_text(fs_of(req), text, NX_METRICS_MAX);
	if (n < 0)
		fuse_reply_err(req, err_of(n));
	else
		reply_xattr_value(req, text, (size_t)n, size);
	free(text);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	char text[STATS_MAX];
	int n;

	/* ENODATA, not ENOSYS: the kernel would stop asking for good, and the
	 * stats xattr would become unreachable too. */
	if (ino == FUSE_ROOT_ID && strcmp(name, NX_METRICS_XATTR) == 0) {
		reply_metrics(req, size);
		return;
	}
	if (ino != FUSE_ROOT_ID || strcmp(name, STATS_XATTR) != 0) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	n = stats_text(fs_of(req), text, sizeof(text));
	if (n < 0) {
		fuse_reply_err(req, err_of(n));
		return;
	}
	reply_xattr_value(req, text, (size_t)n, size);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	/* each name with its NUL: sizeof */
	static const char list[] = STATS_XATTR "\0" NX_METRICS_XATTR;

	if (ino == FUSE_ROOT_ID)
		reply_xattr_value(req, list, sizeof(list), size);
	else
		reply_xattr_value(req, "", 0, size);
}

/* ------------------------------------------------------- read-only: EROFS */

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	fuse_reply_err(req, EROFS);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	fuse_reply_err(req, EROFS);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	fuse_reply_err(req, EROFS);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, EROFS);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, EROFS);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, EROFS);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	fuse_reply_err(req, EROFS);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	fuse_reply_err(req, EROFS);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	fuse_reply_err(req, EROFS);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	fuse_reply_err(req, EROFS);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			size_t size, int flags)
{
	fuse_reply_err(req, EROFS);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	fuse_reply_err(req, EROFS);
}

const struct fuse_lowlevel_ops nx_fs_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.readlink = op_readlink,
	.open = op_open,
	.read = op_read,
	.release = op_release,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.statfs = op_statfs,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.setattr = op_setattr,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.create = op_create,
	.write = op_write,
	.setxattr = op_setxattr,
	.removexattr = op_removexattr,
};
