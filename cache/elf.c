/*
 * cache/elf.c: predicting the shared libraries a program will load.
 *
 * A cold start faults its way through the loader: ld.so reads the
 * program's header, then opens each library its dynamic section names
 * (DT_NEEDED), found in the directories of its DT_RUNPATH, reads that
 * library's header, maps it, and goes on with the libraries it names: one
 * round trip after another, each in another store path. The dynamic
 * section says all of that before the loader gets there, so once a file's
 * first frame is verified in the cache its libraries are resolved the way
 * ld.so resolves them for a Nix binary (RUNPATH directories in order,
 * $ORIGIN, symlinks inside the store) and their starts queued in parallel;
 * each predicted library's own libraries follow when its header is here.
 *
 * Only what the loader will certainly read is fetched: a DT_NEEDED library
 * is a mandatory load, its header and loadable segments are read whatever
 * happens. Libraries not named (dlopen'ed ones) are left to the reads that
 * open them, and a name that does not resolve inside the store is skipped
 * (ld.so would look in system directories, which are not ours).
 *
 * The bytes parsed are verified frames (from the cache, or fetched like a
 * read's); the parser treats them as hostile all the same: every count,
 * offset and length is bounded, and anything unexpected means "no
 * prediction", never an error for a reader.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_i.h"

/* ------------------------------------------------------------- the parser */

#define PT_LOAD_ 1
#define PT_DYNAMIC_ 2
#define DT_NULL_ 0
#define DT_NEEDED_ 1
#define DT_STRTAB_ 5
#define DT_STRSZ_ 10
#define DT_RPATH_ 15
#define DT_RUNPATH_ 29

static uint64_t le(const uint8_t *b, unsigned n)
{
	uint64_t v = 0;

	while (n--)
		v = (v << 8) | b[n];
	return v;
}

struct elf_load {
	uint64_t off, vaddr, filesz;
};

/* The file offset of virtual address @v, through the PT_LOAD headers;
 * -ENOENT when no segment's file bytes hold it. */
static int vaddr_off(const struct elf_load *ld, unsigned n, uint64_t v, uint64_t *off)
{
	for (unsigned i = 0; i < n; i++)
		if (v >= ld[i].vaddr && v - ld[i].vaddr < ld[i].filesz) {
			*off = ld[i].off + (v - ld[i].vaddr);
			return 0;
		}
	return -ENOENT;
}

/* The NUL-terminated string at @off of the string table [@tab, @tab+@tabsz)
 * of a file of @size bytes, into @out (@cap bytes with its NUL); -E2BIG
 * when it is longer, -EINVAL when outside the table. */
static int read_str(nx_elf_read_fn rd, void *ctx, uint64_t size, uint64_t tab, uint64_t tabsz,
		    uint64_t off, char *out, size_t cap)
{
	uint64_t n;
	char *nul;
	int rc;

	if (off >= tabsz)
		return -EINVAL;
	n = tabsz - off;
	if (n > cap)
		n = cap;
	if (tab + off > size || n > size - (tab + off))
		return -EINVAL;
	rc = rd(ctx, tab + off, out, (size_t)n);
	if (rc < 0)
		return rc;
	nul = memchr(out, 0, (size_t)n);
	if (!nul)
		return -E2BIG;
	return 0;
}

int nx_elf_dyn_parse(nx_elf_read_fn rd, void *ctx, uint64_t size, struct nx_elf_dyn *out)
{
	/* zeroed: what a reader leaves unwritten is read as zeros */
	uint8_t h[64] = { 0 }, *ph = NULL, *dyn = NULL;
	struct elf_load ld[NX_ELF_PHNUM_MAX] = { { 0 } };
	uint64_t phoff, dyn_off = 0, dyn_sz = 0, strtab = 0, strsz = 0, tab = 0;
	uint64_t needed[NX_ELF_NEEDED_MAX] = { 0 }, rpath = UINT64_MAX, runpath = UINT64_MAX;
	unsigned phnum, nload = 0, nneeded = 0, has_dyn = 0, has_strtab = 0, has_strsz = 0;
	size_t dlen;
	int rc;

	memset(out, 0, sizeof(*out));
	if (size < sizeof(h))
		return -EINVAL;
	rc = rd(ctx, 0, h, sizeof(h));
	if (rc < 0)
		return rc;
	/* 64-bit, little-endian, version 1, an executable or a shared object */
	if (memcmp(h, "\177ELF", 4) != 0 || h[4] != 2 || h[5] != 1 || h[6] != 1 ||
	    (le(h + 16, 2) != 2 && le(h + 16, 2) != 3))
		return -EINVAL;
	phoff = le(h + 32, 8);
	phnum = (unsigned)le(h + 56, 2);
	if (le(h + 54, 2) != 56 || phnum == 0 || phnum > NX_ELF_PHNUM_MAX || phoff > size ||
	    (uint64_t)phnum * 56 > size - phoff)
		return -EINVAL;
	ph = calloc(phnum, 56);
	if (!ph)
		return -ENOMEM;
	rc = rd(ctx, phoff, ph, (size_t)phnum * 56);
	if (rc < 0)
		goto out;
	for (unsigned i = 0; i < phnum; i++) {
		const uint8_t *p = ph + (size_t)i * 56;
		uint32_t type = (uint32_t)le(p, 4);

		if (type == PT_LOAD_) {
			ld[nload].off = le(p + 8, 8);
			ld[nload].vaddr = le(p + 16, 8);
			ld[nload].filesz = le(p + 32, 8);
			/* segment bytes beyond the file are not there to read */
			if (ld[nload].off < size && ld[nload].filesz &&
			    ld[nload].vaddr + ld[nload].filesz > ld[nload].vaddr) {
				if (ld[nload].filesz > size - ld[nload].off)
					ld[nload].filesz = size - ld[nload].off;
				nload++;
			}
		} else if (type == PT_DYNAMIC_ && !has_dyn) {
			dyn_off = le(p + 8, 8);
			dyn_sz = le(p + 32, 8);
			has_dyn = 1;
		}
	}
	rc = -ENOENT; /* statically linked: nothing to predict */
	if (!has_dyn)
		goto out;
	rc = -EINVAL;
	if (dyn_off >= size || dyn_sz < 16)
		goto out;
	if (dyn_sz > size - dyn_off)
		dyn_sz = size - dyn_off;
	if (dyn_sz > (uint64_t)NX_ELF_DYN_MAX * 16)
		dyn_sz = (uint64_t)NX_ELF_DYN_MAX * 16;
	dlen = (size_t)(dyn_sz / 16 * 16);
	dyn = calloc(1, dlen);
	rc = -ENOMEM;
	if (!dyn)
		goto out;
	rc = rd(ctx, dyn_off, dyn, dlen);
	if (rc < 0)
		goto out;
	for (size_t k = 0; k < dlen; k += 16) {
		uint64_t tag = le(dyn + k, 8), val = le(dyn + k + 8, 8);

		if (tag == DT_NULL_)
			break;
		if (tag == DT_NEEDED_ && nneeded < NX_ELF_NEEDED_MAX)
			needed[nneeded++] = val;
		else if (tag == DT_STRTAB_ && !has_strtab)
			strtab = val, has_strtab = 1;
		else if (tag == DT_STRSZ_ && !has_strsz)
			strsz = val, has_strsz = 1;
		else if (tag == DT_RPATH_ && rpath == UINT64_MAX)
			rpath = val;
		else if (tag == DT_RUNPATH_ && runpath == UINT64_MAX)
			runpath = val;
	}
	rc = -ENOENT;
	if (!nneeded)
		goto out;
	rc = -EINVAL;
	if (!has_strtab || !has_strsz || vaddr_off(ld, nload, strtab, &tab) < 0 || tab >= size)
		goto out;
	if (strsz > size - tab)
		strsz = size - tab;
	/* DT_RUNPATH wins over DT_RPATH, as in ld.so */
	if (runpath == UINT64_MAX) {
		runpath = rpath;
		out->rpath = runpath != UINT64_MAX;
	}
	if (runpath != UINT64_MAX) {
		rc = read_str(rd, ctx, size, tab, strsz, runpath, out->runpath,
			      sizeof(out->runpath));
		if (rc == -ENOMEM || rc == -ECANCELED || rc == -EIO)
			goto out;
		if (rc < 0)
			out->runpath[0] = 0; /* unusable: the library names still count */
	}
	for (unsigned i = 0; i < nneeded; i++) {
		char *name = out->needed[out->nneeded];

		rc = read_str(rd, ctx, size, tab, strsz, needed[i], name, NX_ELF_NAME_MAX + 1);
		if (rc == -ENOMEM || rc == -ECANCELED || rc == -EIO)
			goto out;
		/* a name with a slash is a path, not searched for: not ours */
		if (rc < 0 || !name[0] || strchr(name, '/'))
			continue;
		out->nneeded++;
	}
	rc = out->nneeded ? 0 : -ENOENT;
out:
	free(dyn);
	free(ph);
	return rc;
}

/* ------------------------------------------ reading a file's verified bytes */

struct fread_ctx {
	struct nx_store *st;
	struct nx_spath *p;
	uint64_t base; /* NAR offset of the file's byte 0 */
	uint64_t a, b; /* NAR range wanted */
	uint8_t *buf;
};

static void fr_slice(const struct nx_toc_frame *f, const struct fread_ctx *r, uint64_t *s,
		     uint64_t *e)
{
	*s = f->uoff > r->a ? f->uoff : r->a;
	*e = f->uoff + f->ulen < r->b ? f->uoff + f->ulen : r->b;
}

static int fr_data(void *ctx, uint32_t i, const uint8_t *buf, size_t len)
{
	struct fread_ctx *r = ctx;
	const struct nx_toc_frame *f = &r->p->toc->frames[i];
	uint64_t s, e;

	fr_slice(f, r, &s, &e);
	if (s < e && e - f->uoff <= len)
		memcpy(r->buf + (s - r->a), buf + (s - f->uoff), e - s);
	return 0;
}

static int fr_file(void *ctx, uint32_t i, int fd)
{
	struct fread_ctx *r = ctx;
	const struct nx_toc_frame *f = &r->p->toc->frames[i];
	uint64_t s, e;

	fr_slice(f, r, &s, &e);
	if (s >= e)
		return 0;
	return nx_pread_all(fd, r->buf + (s - r->a), e - s, (off_t)(s - f->uoff));
}

/* nx_elf_read_fn over a file of the store: verified bytes from the cache,
 * or fetched like a read's (waiting for a frame another thread fetches). */
static int fr_read(void *ctx, uint64_t off, void *buf, size_t len)
{
	struct fread_ctx *r = ctx;
	const struct nx_walk_ops ops = { .data = fr_data, .file = fr_file };
	uint32_t first, last;

	if (nx_bg_stopped(r->st))
		return -ECANCELED;
	if (!len)
		return 0;
	r->a = r->base + off;
	r->b = r->a + len;
	r->buf = buf;
	if (nx_toc_frames_for(r->p->toc, r->a, len, &first, &last) < 0)
		return -EINVAL;
	return nx_frames_walk(r->st, r->p, first, last, NX_BATCH_BYTES, &ops, r);
}

int nx_file_read(struct nx_store *st, struct nx_spath *p, uint32_t entry, uint64_t off,
		 void *buf, size_t len)
{
	struct fread_ctx r = { .st = st, .p = p, .base = p->toc->entries[entry].off };

	return fr_read(&r, off, buf, len);
}

/* ------------------------------------------------- the files seen, bounds */

int nx_pred_first_time(struct nx_store *st, uint64_t *slots, unsigned nslots, unsigned *nseen,
		       unsigned max, const struct nx_spath *p, uint32_t entry)
{
	uint64_t key = (p->id << 24) ^ entry, h = key * UINT64_C(0x9e3779b97f4a7c15);
	int go = 0;

	pthread_mutex_lock(&st->lock);
	for (unsigned k = 0; k < nslots; k++) {
		unsigned i = (unsigned)((h >> 40) + k) % nslots;

		if (slots[i] == key + 1)
			break;
		if (!slots[i]) {
			if (*nseen < max) {
				slots[i] = key + 1;
				(*nseen)++;
				go = 1;
			}
			break;
		}
	}
	pthread_mutex_unlock(&st->lock);
	return go;
}

/* 1 the first time (@p, @entry) is offered to the library rule in this
 * mount (and its file bound is not reached), 0 after. */
static int elf_first_time(struct nx_store *st, const struct nx_spath *p, uint32_t entry)
{
	return nx_pred_first_time(st, st->elf_seen, NX_ELF_SEEN_SLOTS, &st->elf_nseen,
				  NX_ELF_PRED_FILES, p, entry);
}

/* Takes @bytes of the rule's per-mount budget; 0 when it is spent. */
static int elf_budget(struct nx_store *st, uint64_t bytes)
{
	int ok;

	pthread_mutex_lock(&st->lock);
	ok = st->elf_bytes + bytes <= NX_ELF_PRED_BYTES;
	if (ok)
		st->elf_bytes += bytes;
	pthread_mutex_unlock(&st->lock);
	return ok;
}

/* ------------------------------------------------------------ resolution */

/* The store path @base (@len bytes) with a reference, if @from may name
 * it: itself or one of its references (a Nix binary's RUNPATH and its
 * libraries' symlinks point only there). A path not loaded yet is loaded
 * as the reference prefetch would (collapsing with a load in progress),
 * unless the lookup rate bound is short: then the name is skipped. */
static int path_get(struct nx_store *st, struct nx_spath *from, const char *base, size_t len,
		    struct nx_spath **out)
{
	const struct nx_pathinfo *pi = &from->man.info;
	struct nx_spath *q;
	int ok = len == from->base_len && memcmp(base, from->base, len) == 0, skip, rc;

	for (size_t i = 0; i < pi->nrefs && !ok; i++)
		ok = strlen(pi->refs[i]) == len && memcmp(pi->refs[i], base, len) == 0;
	if (!ok || len > NX_BASE_MAX)
		return -ENOENT;
	pthread_mutex_lock(&st->lock);
	q = nx_spath_find_locked(st, base, len);
	skip = !(q && q->loaded) && !st->closure_mode && st->lk_interval_ns &&
	       st->lk_tat > nx_now_ns() + NX_NS_PER_S;
	pthread_mutex_unlock(&st->lock);
	if (skip || nx_bg_stopped(st))
		return -EAGAIN;
	nx_rp_mark_worker(1); /* a guess: never a whole-NAR verification */
	rc = nx_store_lookup(st, base, len, out);
	nx_rp_mark_worker(0);
	return rc;
}

#define NX_ELF_HOPS 8
#define NX_ELF_PATH_MAX 4096

/*
 * Resolves absolute path @path as the kernel would, inside the store:
 * component by component from /nix/store, ".." to the physical parent,
 * symlinks followed (at most NX_ELF_HOPS), store paths entered only when
 * the path the walk is in may name them (path_get). 0 with *out (a
 * reference) and *entry a regular file, or a negative errno.
 */
static int resolve_path(struct nx_store *st, struct nx_spath *from, const char *path,
			struct nx_spath **out, uint32_t *entry)
{
	char *buf = malloc(NX_ELF_PATH_MAX), *tmp = malloc(NX_ELF_PATH_MAX);
	struct nx_spath *p = NULL, *ctx = from; /* ctx: whose references may be named */
	uint32_t cur = 0, hops = 0;
	size_t pos;
	int rc = -ENOENT;

	size_t plen = strlen(path);

	nx_spath_get(ctx);
	if (!buf || !tmp) {
		rc = -ENOMEM;
		goto out;
	}
	if (plen >= NX_ELF_PATH_MAX)
		goto out;
	memcpy(buf, path, plen + 1);
restart:
	/* absolute: from the store directory */
	if (strncmp(buf, NX_STORE_DIR "/", sizeof(NX_STORE_DIR)) != 0)
		goto out;
	if (p) {
		nx_spath_put(p);
		p = NULL;
	}
	pos = sizeof(NX_STORE_DIR);
relative:
	while (buf[pos]) {
		const char *c = buf + pos;
		size_t n = strcspn(c, "/");
		int64_t child;
		const struct nx_toc_entry *e;

		pos += n + (c[n] == '/');
		if (n == 0 || (n == 1 && c[0] == '.'))
			continue;
		if (n == 2 && c[0] == '.' && c[1] == '.') {
			if (!p)
				continue; /* the parent of /nix/store: not ours */
			if (cur == 0) {
				nx_spath_put(p);
				p = NULL;
			} else {
				cur = p->toc->entries[cur].parent;
			}
			continue;
		}
		if (!p) {
			rc = path_get(st, ctx, c, n, &p);
			if (rc < 0) {
				p = NULL;
				goto out;
			}
			cur = 0;
			if (p->toc->entries[0].type == NX_NODE_SYMLINK)
				goto link;
			continue;
		}
		rc = -ENOENT;
		if (p->toc->entries[cur].type != NX_NODE_DIRECTORY)
			goto out;
		child = nx_toc_lookup(p->toc, cur, c, n);
		if (child < 0)
			goto out;
		cur = (uint32_t)child;
		e = &p->toc->entries[cur];
		if (e->type != NX_NODE_SYMLINK)
			continue;
link: {
		size_t tlen = 0, rest = strlen(buf + pos);
		const char *t = nx_toc_target(p->toc, cur, &tlen);

		rc = -ELOOP;
		if (++hops > NX_ELF_HOPS || !t || !tlen)
			goto out;
		rc = -ENAMETOOLONG;
		if (tlen + 1 + rest + 1 > NX_ELF_PATH_MAX)
			goto out;
		memcpy(tmp, t, tlen);
		tmp[tlen] = '/';
		memcpy(tmp + tlen + 1, buf + pos, rest + 1);
		memcpy(buf, tmp, tlen + 1 + rest + 1);
		/* the symlink's own path may name its references */
		nx_spath_put(ctx);
		ctx = p;
		nx_spath_get(ctx);
		if (buf[0] == '/')
			goto restart;
		/* relative to the symlink's directory */
		if (cur == 0) {
			nx_spath_put(p);
			p = NULL;
		} else {
			cur = p->toc->entries[cur].parent;
		}
		pos = 0;
		goto relative;
	}
	}
	rc = -ENOENT;
	if (!p || p->toc->entries[cur].type != NX_NODE_REGULAR)
		goto out;
	*out = p;
	*entry = cur;
	p = NULL;
	rc = 0;
out:
	if (p)
		nx_spath_put(p);
	nx_spath_put(ctx);
	free(tmp);
	free(buf);
	return rc;
}

/* The directory of @entry of @p as an absolute path ($ORIGIN), into @buf. */
static int origin_of(const struct nx_spath *p, uint32_t entry, char *buf, size_t cap)
{
	char rel[NX_ELF_PATH_MAX];
	uint32_t dir = p->toc->entries[entry].parent;
	int n;

	if (nx_toc_path(p->toc, dir, rel, sizeof(rel)) < 0)
		return -ENAMETOOLONG;
	n = snprintf(buf, cap, "%s/%s%s%s", NX_STORE_DIR, p->base, rel[0] ? "/" : "", rel);
	return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

/* Library @name in the directories of @runpath, in order, as ld.so looks
 * for it: the first directory where it resolves to a regular file. */
static int resolve_lib(struct nx_store *st, struct nx_spath *p, uint32_t entry,
		       const char *runpath, const char *name, struct nx_spath **out,
		       uint32_t *lib)
{
	char *dir = malloc(NX_ELF_PATH_MAX), *origin = malloc(NX_ELF_PATH_MAX);
	char *full = malloc(NX_ELF_PATH_MAX);
	const char *s = runpath;
	int rc = -ENOENT, have_origin = 0;

	if (!dir || !origin || !full) {
		rc = -ENOMEM;
		goto out;
	}
	while (*s && rc < 0 && !nx_bg_stopped(st)) {
		size_t n = strcspn(s, ":"), olen;
		const char *d = s;
		int m;

		s += n + (s[n] == ':');
		if (!n || n >= NX_ELF_PATH_MAX)
			continue;
		memcpy(dir, d, n);
		dir[n] = 0;
		/* $ORIGIN and ${ORIGIN} at the start; other tokens ($LIB,
		 * $PLATFORM) do not occur in Nix's paths: skip the directory */
		olen = strncmp(dir, "$ORIGIN", 7) == 0 ? 7 : strncmp(dir, "${ORIGIN}", 9) == 0 ? 9 : 0;
		if (olen && (dir[olen] == 0 || dir[olen] == '/')) {
			if (!have_origin && origin_of(p, entry, origin, NX_ELF_PATH_MAX) < 0)
				continue;
			have_origin = 1;
			m = snprintf(full, NX_ELF_PATH_MAX, "%s%s/%s", origin, dir + olen, name);
		} else if (dir[0] == '/' && !strchr(dir, '$')) {
			m = snprintf(full, NX_ELF_PATH_MAX, "%s/%s", dir, name);
		} else {
			continue;
		}
		if (m < 0 || m >= NX_ELF_PATH_MAX)
			continue;
		rc = resolve_path(st, p, full, out, lib);
		if (rc == -ENOMEM)
			break;
	}
out:
	free(full);
	free(origin);
	free(dir);
	return rc;
}

/* ------------------------------------------------------------ prediction */

/* The compressed bytes of frames [a, b] of @p. */
static uint64_t frames_bytes(const struct nx_toc *toc, uint32_t a, uint32_t b)
{
	uint64_t n = 0;

	for (uint32_t i = a; i <= b; i++)
		n += toc->frames[i].clen;
	return n;
}

/*
 * What the loader reads of a library it opens, fetched before it asks: the
 * first frame(s) (its header, program headers, for a small library the
 * whole file, as a read at offset 0 would fetch it), with the rules a read
 * at offset 0 applies (the rest of a loadable file in parallel, its
 * loadable segments once the header is here). @hdr gets the first bytes.
 */
static int elf_start(struct nx_store *st, struct nx_spath *p, uint32_t entry,
		     struct fread_ctx *r, uint8_t *hdr, size_t hlen)
{
	const struct nx_toc *toc = p->toc;
	const struct nx_toc_entry *e = &toc->entries[entry];
	const struct nx_walk_ops ops = { .data = fr_data, .file = fr_file };
	uint32_t a, b, last, ext;
	uint64_t n = e->size < hlen ? e->size : hlen, lo, hi, bytes;
	int rc;

	if (nx_toc_frames_for(toc, e->off, n, &a, &last) < 0 ||
	    nx_toc_frames_for(toc, e->off, e->size, &a, &b) < 0)
		return -EINVAL;
	ext = nx_ra_extend(st, p, entry, last);
	if (!elf_budget(st, frames_bytes(toc, a, ext)))
		return -ENOSPC;
	/* the rest of a large library goes out beside its header */
	if (!nx_chunk_known(st, toc->frames[a].sha256) && b > ext) {
		bytes = frames_bytes(toc, ext + 1, b);
		if (bytes <= NX_PRED_ELF_BYTES && elf_budget(st, bytes))
			nx_ra_pred_elf_start(st, p, entry, ext);
	}
	r->a = r->base;
	r->b = r->a + n;
	r->buf = hdr;
	rc = nx_frames_walk_ext(st, p, a, last, ext, NX_BATCH_BYTES, &ops, r);
	if (rc < 0)
		return rc;
	/* its loadable segments, as nx_ra_after_data queues them for a read */
	if (nx_elf_load_range(hdr, (size_t)n, e->size, &lo, &hi) == 0 &&
	    nx_toc_frames_for(toc, e->off + lo, hi - lo, &a, &b) == 0 && b > ext) {
		if (a <= ext)
			a = ext + 1;
		bytes = frames_bytes(toc, a, b);
		if (bytes <= NX_ELF_MAX_BYTES && elf_budget(st, bytes))
			nx_ra_queue_frames(st, p, a, b);
	}
	return 0;
}

/* The wrapper's library path for a file of @p at @path, as slot + 1; 0.
 * The program itself, else another file of its store path: the loader
 * searches the library path for everything the process loads, and what
 * it opens of the program's own path (an interpreter's extension modules)
 * is loaded by that program. */
static unsigned hint_find(struct nx_store *st, const struct nx_spath *p, const char *path)
{
	size_t n = sizeof(NX_STORE_DIR) + p->base_len;
	unsigned h = 0;

	pthread_mutex_lock(&st->lock);
	for (unsigned i = 0; i < st->elf_nhints; i++) {
		const char *prog = st->elf_hints[i].prog;

		if (strcmp(prog, path) == 0) {
			h = i + 1;
			break;
		}
		if (!h && strncmp(prog, path, n) == 0 && prog[n] == '/')
			h = i + 1;
	}
	pthread_mutex_unlock(&st->lock);
	return h;
}

/* The wrapper's library path for file @entry of @p (hint_find). */
static unsigned file_hint(struct nx_store *st, const struct nx_spath *p, uint32_t entry)
{
	char path[NX_ELF_PATH_MAX], rel[NX_ELF_PATH_MAX];

	if (nx_toc_path(p->toc, entry, rel, sizeof(rel)) == 0 &&
	    snprintf(path, sizeof(path), "%s/%s/%s", NX_STORE_DIR, p->base, rel) < (int)sizeof(path))
		return hint_find(st, p, path);
	return 0;
}

/* The directories ld.so searches for the libraries of a file with dynamic
 * section @dyn, loaded with library path @hint: a DT_RPATH comes before
 * the library path, a DT_RUNPATH after it. */
static char *search_path(struct nx_store *st, const struct nx_elf_dyn *dyn, unsigned hint)
{
	size_t n = NX_ELF_RUNPATH_MAX + 1 + strlen(dyn->runpath) + 2;
	char *s = malloc(n), *lp = malloc(NX_ELF_RUNPATH_MAX + 1);

	if (!s || !lp) {
		free(s);
		free(lp);
		return NULL;
	}
	lp[0] = 0;
	pthread_mutex_lock(&st->lock);
	if (hint && hint <= st->elf_nhints)
		memcpy(lp, st->elf_hints[hint - 1].dirs, NX_ELF_RUNPATH_MAX + 1);
	pthread_mutex_unlock(&st->lock);
	if (dyn->rpath)
		snprintf(s, n, "%s:%s", dyn->runpath, lp);
	else
		snprintf(s, n, "%s:%s", lp, dyn->runpath);
	free(lp);
	return s;
}

/* The next word of [*s, end) (blanks and quotes around it dropped) into
 * @out (@cap bytes with its NUL); 0 when there is none or it is too long. */
static size_t next_word(const char **s, const char *end, char *out, size_t cap)
{
	const char *a = *s, *b;
	size_t n;

	while (a < end && (*a == ' ' || *a == '\t' || *a == '\\' || *a == '\n'))
		a++;
	b = a;
	while (b < end && *b != ' ' && *b != '\t' && *b != '\n')
		b++;
	*s = b;
	if (b > a && (*a == '"' || *a == '\''))
		a++;
	if (b > a && (b[-1] == '"' || b[-1] == '\''))
		b--;
	n = (size_t)(b - a);
	if (!n || n >= cap)
		return 0;
	memcpy(out, a, n);
	out[n] = 0;
	return n;
}

/*
 * A wrapper script that runs a program through the loader with a library
 * path ("exec .../ld-linux-x86-64.so.2 --library-path DIRS PROGRAM"): the
 * loader searches DIRS first for PROGRAM's libraries and theirs. Noted
 * for the program (at most NX_ELF_HINTS per mount, directories in the
 * store only), so its job searches them as the loader will.
 */
static void script_seen(struct nx_store *st, const uint8_t *buf, size_t len)
{
	static const char opt[] = "--library-path";
	const char *s = memmem(buf, len, opt, sizeof(opt) - 1), *end = (const char *)buf + len;
	struct nx_elf_hint h;

	if (!s)
		return;
	s += sizeof(opt) - 1;
	if (!next_word(&s, end, h.dirs, sizeof(h.dirs)) || h.dirs[0] != '/' || strchr(h.dirs, '$'))
		return;
	/* the program: the next word in the store (options and their
	 * values, such as --argv0 NAME, come before it) */
	for (int k = 0; k < 8; k++) {
		if (!next_word(&s, end, h.prog, sizeof(h.prog)))
			return;
		if (strncmp(h.prog, NX_STORE_DIR "/", sizeof(NX_STORE_DIR)) == 0)
			break;
		if (k == 7)
			return;
	}
	pthread_mutex_lock(&st->lock);
	if (!st->elf_hints)
		st->elf_hints = calloc(NX_ELF_HINTS, sizeof(*st->elf_hints));
	for (unsigned i = 0; st->elf_hints && i < st->elf_nhints; i++)
		if (strcmp(st->elf_hints[i].prog, h.prog) == 0)
			goto out;
	if (st->elf_hints && st->elf_nhints < NX_ELF_HINTS) {
		st->elf_hints[st->elf_nhints++] = h;
		nx_log(NX_LOG_DEBUG, "predict: %s runs with library path %s", h.prog, h.dirs);
	}
out:
	pthread_mutex_unlock(&st->lock);
}

/* At most this many programs a script runs are predicted (its #!
 * interpreter, the store files its exec commands name). */
#define NX_SCRIPT_PROGS 8

/* Program @word of script @p (an absolute path in the store, no
 * variable, not a colon list) resolved as the kernel's exec resolves it
 * and queued as a library would be: its start, its loadable segments,
 * then its own libraries. 1 when it was queued. */
static int script_prog(struct nx_store *st, struct nx_spath *p, uint32_t entry, unsigned depth,
		       const char *word)
{
	struct nx_spath *q = NULL;
	uint32_t prog = 0;
	int rc, go = 0;

	if (strncmp(word, NX_STORE_DIR "/", sizeof(NX_STORE_DIR)) != 0 || strpbrk(word, "$:`"))
		return 0;
	rc = resolve_path(st, p, word, &q, &prog);
	if (rc < 0) {
		nx_log(NX_LOG_DEBUG, "predict: %s/%s entry %u runs %s: not in the store (%s)",
		       NX_STORE_DIR, p->base, entry, word, strerror(-rc));
		return 0;
	}
	if (elf_first_time(st, q, prog)) {
		nx_log(NX_LOG_DEBUG, "predict: %s/%s entry %u runs %s: %s/%s entry %u", NX_STORE_DIR,
		       p->base, entry, word, NX_STORE_DIR, q->base, prog);
		nx_stat_add(&st->pred_exec, 1);
		nx_ra_queue_elf(st, q, prog, depth + 1, file_hint(st, q, prog));
		go = 1;
	}
	nx_spath_put(q);
	return go;
}

/* 1 when [@a, @a+4) is the shell word "exec" at @s..@end. */
static int exec_word(const char *s, const char *a, const char *end)
{
	return end - a > 4 && memcmp(a, "exec", 4) == 0 && (a[4] == ' ' || a[4] == '\t') &&
	       (a == s || strchr(" \t;&|({", a[-1]));
}

/*
 * A script the kernel or a shell runs (#!): what runs next is named in
 * it, and every such name is a round trip the program would otherwise
 * wait for in turn (the interpreter, then the program a wrapper execs,
 * then the loader's libraries for it). Its #! interpreter and the store
 * files on its exec lines (a wrapper's "exec -a "$0" /nix/store/...",
 * "exec .../ld-linux-x86-64.so.2 --library-path DIRS PROGRAM") are
 * resolved through the TOCs and fetched as a loaded library is, each
 * then predicting its own libraries, or, a script itself, what it runs.
 * A word that names nothing in the store is skipped; a script's store
 * path references whatever it names, so nothing outside the closure is
 * entered. Bounded by NX_SCRIPT_PROGS per script and the rule's per-mount
 * file and byte budget.
 */
static void script_job(struct nx_store *st, struct nx_spath *p, uint32_t entry, unsigned depth)
{
	uint64_t size = p->toc->entries[entry].size;
	size_t len = size < NX_ELF_SCRIPT_MAX ? (size_t)size : (size_t)NX_ELF_SCRIPT_MAX;
	/* zeroed: the analyzer cannot see the read's callbacks fill it */
	char *buf = calloc(1, len + 1), *word = malloc(NX_ELF_PATH_MAX);
	const char *s, *end, *line;
	unsigned n = 0;

	if (!buf || !word || len < 3 || depth >= NX_ELF_DEPTH_MAX ||
	    nx_file_read(st, p, entry, 0, buf, len) < 0)
		goto out;
	buf[len] = 0;
	/* a wrapper predicted from another script: its library path, for
	 * the program it runs (a script read by a reader noted it already) */
	if (depth > 0)
		script_seen(st, (const uint8_t *)buf, len);
	end = buf + len;
	line = memchr(buf, '\n', len);
	s = buf + 2;
	if (line && next_word(&s, line, word, NX_ELF_PATH_MAX))
		n += (unsigned)script_prog(st, p, entry, depth, word);
	for (const char *l = line ? line + 1 : end; l < end && n < NX_SCRIPT_PROGS &&
						       !nx_bg_stopped(st);) {
		const char *le = memchr(l, '\n', (size_t)(end - l)), *a;

		if (!le)
			le = end;
		for (a = l; a < le && (*a == ' ' || *a == '\t'); a++)
			;
		/* comments name nothing that runs */
		if (a < le && *a != '#') {
			for (const char *x = a; x + 4 < le; x++) {
				if (!exec_word(l, x, le))
					continue;
				s = x + 4;
				while (n < NX_SCRIPT_PROGS && next_word(&s, le, word, NX_ELF_PATH_MAX))
					n += (unsigned)script_prog(st, p, entry, depth, word);
				break;
			}
		}
		l = le + 1;
	}
out:
	free(word);
	free(buf);
}

/* The libraries dynamic section @dyn of @entry of @p names, resolved and
 * queued (those not seen before in this mount), @depth links from the
 * file that was read; @hint as for nx_elf_job. */
static void queue_libs(struct nx_store *st, struct nx_spath *p, uint32_t entry, unsigned depth,
		       unsigned hint, const struct nx_elf_dyn *dyn)
{
	char *search;
	int rc;

	if (depth >= NX_ELF_DEPTH_MAX)
		return;
	if (depth == 0)
		hint = file_hint(st, p, entry);
	search = search_path(st, dyn, hint);
	if (!search)
		return;
	for (unsigned i = 0; i < dyn->nneeded && !nx_bg_stopped(st); i++) {
		struct nx_spath *q = NULL;
		uint32_t lib = 0;

		rc = resolve_lib(st, p, entry, search, dyn->needed[i], &q, &lib);
		if (rc < 0) {
			nx_log(NX_LOG_DEBUG, "predict: %s/%s entry %u: %s not in its runpath (%s)",
			       NX_STORE_DIR, p->base, entry, dyn->needed[i], strerror(-rc));
			continue;
		}
		if (elf_first_time(st, q, lib)) {
			nx_log(NX_LOG_DEBUG, "predict: %s/%s entry %u needs %s: %s/%s entry %u",
			       NX_STORE_DIR, p->base, entry, dyn->needed[i], NX_STORE_DIR, q->base,
			       lib);
			nx_ra_queue_elf(st, q, lib, depth + 1, hint);
		}
		nx_spath_put(q);
	}
	free(search);
}

/* @dyn from the pusher's record of @entry's dynamic section (dev.nixoci.elf). */
static void dyn_of_record(const struct nx_elf_needs *n, const struct nx_elf_need *f,
			  struct nx_elf_dyn *dyn)
{
	dyn->nneeded = f->nnames;
	for (uint32_t k = 0; k < f->nnames; k++)
		snprintf(dyn->needed[k], sizeof(dyn->needed[k]), "%s", n->names[f->name0 + k]);
	snprintf(dyn->runpath, sizeof(dyn->runpath), "%s", f->search >= 0 ? n->search[f->search] : "");
	dyn->rpath = f->rpath;
}

void nx_elf_job(struct nx_store *st, struct nx_spath *p, uint32_t entry, unsigned depth,
		unsigned hint)
{
	const struct nx_toc_entry *e = &p->toc->entries[entry];
	const struct nx_elf_need *rec = nx_elf_needs_find(p->man.elf, entry);
	struct fread_ctx r = { .st = st, .p = p, .base = e->off };
	struct nx_elf_dyn *dyn = NULL;
	uint8_t *hdr = NULL;
	int rc;

	if (nx_bg_stopped(st))
		return;
	dyn = malloc(sizeof(*dyn));
	if (!dyn)
		return;
	if (rec) {
		/*
		 * Recorded at push time: its libraries are known without its
		 * bytes, so they go out now, beside its own start, and each of
		 * them does the same: a program's whole library tree in one
		 * wave instead of one per level.
		 */
		dyn_of_record(p->man.elf, rec, dyn);
		nx_stat_add(&st->elf_parsed, 1);
		queue_libs(st, p, entry, depth, hint, dyn);
	}
	if (depth > 0) {
		hdr = malloc(NX_ELF_HDR_BYTES);
		if (!hdr)
			goto out;
		rc = elf_start(st, p, entry, &r, hdr, NX_ELF_HDR_BYTES);
		if (rc < 0) {
			nx_log(NX_LOG_DEBUG, "predict: %s/%s entry %u: start of a library: %s",
			       NX_STORE_DIR, p->base, entry, strerror(-rc));
			goto out;
		}
		if (!rec && hdr[0] == '#' && hdr[1] == '!') {
			script_job(st, p, entry, depth);
			goto out;
		}
		nx_stat_add(&st->elf_libs, 1);
	} else if (!rec) {
		uint8_t h[2];

		if (fr_read(&r, 0, h, sizeof(h)) == 0 && h[0] == '#' && h[1] == '!') {
			script_job(st, p, entry, 0);
			goto out;
		}
	}
	if (rec)
		goto out;
	rc = nx_elf_dyn_parse(fr_read, &r, e->size, dyn);
	if (rc == 0 || rc == -ENOENT)
		nx_stat_add(&st->elf_parsed, 1);
	if (rc < 0) {
		nx_log(NX_LOG_DEBUG, "predict: %s/%s entry %u: no libraries to predict (%s)",
		       NX_STORE_DIR, p->base, entry, strerror(-rc));
		goto out;
	}
	queue_libs(st, p, entry, depth, hint, dyn);
out:
	free(dyn);
	free(hdr);
}

void nx_elf_predict(struct nx_store *st, struct nx_spath *p, uint32_t entry)
{
	/* loaded by the program of its store path: with its library path,
	 * as a library the loader opened for it would be */
	if (st->ra_max && !nx_bg_stopped(st) && elf_first_time(st, p, entry))
		nx_ra_queue_elf(st, p, entry, 1, file_hint(st, p, entry));
}

void nx_elf_seen(struct nx_store *st, struct nx_spath *p, uint32_t entry, const uint8_t *buf,
		 size_t len)
{
	if (!st->ra_max || nx_bg_stopped(st) || len < 64)
		return;
	if (buf[0] == '#' && buf[1] == '!') {
		script_seen(st, buf, len < NX_ELF_SCRIPT_MAX ? len : NX_ELF_SCRIPT_MAX);
		/* what it runs, in the background (resolving may load paths) */
		if (elf_first_time(st, p, entry))
			nx_ra_queue_elf(st, p, entry, 0, 0);
		return;
	}
	if (memcmp(buf, "\177ELF\2\1\1", 7) != 0)
		return;
	if (p->toc->entries[entry].size < 64 || !elf_first_time(st, p, entry))
		return;
	nx_ra_queue_elf(st, p, entry, 0, 0);
}

void nx_elf_seen_fd(struct nx_store *st, struct nx_spath *p, uint32_t entry, int fd, uint64_t off,
		    size_t len)
{
	uint8_t h[64], *buf;

	if (!st->ra_max || len < sizeof(h) || nx_pread_all(fd, h, sizeof(h), (off_t)off) < 0)
		return;
	if (h[0] != '#' || h[1] != '!') {
		nx_elf_seen(st, p, entry, h, sizeof(h));
		return;
	}
	if (len > NX_ELF_SCRIPT_MAX)
		len = NX_ELF_SCRIPT_MAX;
	buf = malloc(len);
	if (buf && nx_pread_all(fd, buf, len, (off_t)off) == 0)
		nx_elf_seen(st, p, entry, buf, len);
	free(buf);
}
