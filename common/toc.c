/*
 * common/toc.c: the TOC of one store path (docs/format.md section 4).
 *
 * The builder sees nodes in NAR order (depth first) and keeps them in that
 * order with first-child/next-sibling links. At finish it renumbers them
 * breadth first: walking the new order front to back, each directory's
 * children get the next free indices. That makes every child range
 * contiguous and sorted (NAR order is already sorted), and the ranges tile
 * [1, nentries) in directory order, which is exactly what the decoder
 * insists on. An empty directory's first_child is the running cursor at its
 * position (where its range would start), so the encoding has one form.
 *
 * The decoder treats its input as hostile: every count is bounded before it
 * is used to size an allocation, all offset arithmetic is done in 64 bits
 * where it cannot overflow, and the tree shape is checked so that later
 * walks (lookup, depth, parent chains) terminate.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "common/common.h"

#define TOC_MAGIC "NIXOCTOC"
#define TOC_VERSION 1
#define TOC_HDR 64
#define TOC_ENTRY 40
#define TOC_FRAME 56
#define SEEKTABLE_FIXED 17

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* ------------------------------------------------------------ builder */

#define NONE UINT32_MAX

struct bnode {
	uint32_t parent; /* NAR-order index */
	uint32_t first, last, next; /* children list, NAR-order indices */
	uint32_t nchildren;
	uint32_t name_off, name_len; /* into b->names */
	uint32_t target_off;         /* symlinks, into b->names */
	uint8_t type, exec;
	uint64_t size, off;
};

struct nx_toc_builder {
	struct bnode *nodes;
	uint32_t nnodes, cap;
	uint8_t *names; /* names and targets, NAR order */
	size_t names_len, names_cap;
	struct nx_toc_frame *frames;
	uint32_t nframes, frames_cap;
	uint32_t stack[NX_NAR_DEPTH_MAX]; /* open directories by depth */
	unsigned depth;                   /* number of open directories */
	int err;                          /* sticky */
};

int nx_toc_builder_new(struct nx_toc_builder **out)
{
	struct nx_toc_builder *b = calloc(1, sizeof(*b));

	if (!b)
		return -ENOMEM;
	*out = b;
	return 0;
}

void nx_toc_builder_free(struct nx_toc_builder *b)
{
	if (!b)
		return;
	free(b->nodes);
	free(b->names);
	free(b->frames);
	free(b);
}

static int names_add(struct nx_toc_builder *b, const void *s, size_t len, uint32_t *off)
{
	if (len > NX_TOC_MAX_BYTES || b->names_len + len > NX_TOC_MAX_BYTES) {
		nx_log(NX_LOG_ERR, "toc: string table exceeds %u bytes", NX_TOC_MAX_BYTES);
		return -E2BIG;
	}
	if (b->names_len + len > b->names_cap) {
		size_t ncap = b->names_cap ? b->names_cap : 4096;
		uint8_t *p;

		while (ncap < b->names_len + len)
			ncap *= 2;
		p = realloc(b->names, ncap);
		if (!p)
			return -ENOMEM;
		b->names = p;
		b->names_cap = ncap;
	}
	if (len)
		memcpy(b->names + b->names_len, s, len);
	*off = (uint32_t)b->names_len;
	b->names_len += len;
	return 0;
}

static int builder_node(struct nx_toc_builder *b, const struct nx_nar_node *n)
{
	struct bnode *bn;
	uint32_t idx = b->nnodes, parent = 0;
	int r;

	if (n->type != NX_NODE_REGULAR && n->type != NX_NODE_DIRECTORY &&
	    n->type != NX_NODE_SYMLINK) {
		nx_log(NX_LOG_ERR, "toc: unknown node type %d at '%.*s'", (int)n->type,
		       (int)n->path_len, n->path);
		return -EINVAL;
	}
	if (idx == 0) {
		if (n->depth != 0 || n->name_len != 0) {
			nx_log(NX_LOG_ERR, "toc: first node is not the root");
			return -EINVAL;
		}
	} else {
		if (n->depth == 0 || n->depth > b->depth) {
			nx_log(NX_LOG_ERR, "toc: node '%.*s' at depth %u has no open parent",
			       (int)n->path_len, n->path, n->depth);
			return -EINVAL;
		}
		if (n->name_len < 1 || n->name_len > NX_NAR_NAME_MAX) {
			nx_log(NX_LOG_ERR, "toc: bad name length %zu at '%.*s'", n->name_len,
			       (int)n->path_len, n->path);
			return -EINVAL;
		}
		parent = b->stack[n->depth - 1];
		b->depth = n->depth;
	}
	if (n->type == NX_NODE_DIRECTORY && n->depth >= NX_NAR_DEPTH_MAX) {
		nx_log(NX_LOG_ERR, "toc: directory '%.*s' is nested %u deep (limit %u)",
		       (int)n->path_len, n->path, n->depth, NX_NAR_DEPTH_MAX - 1);
		return -EINVAL;
	}
	if (n->type == NX_NODE_SYMLINK && (n->size < 1 || n->size > NX_NAR_TARGET_MAX)) {
		nx_log(NX_LOG_ERR, "toc: bad symlink target length at '%.*s'", (int)n->path_len,
		       n->path);
		return -EINVAL;
	}
	if (idx >= NX_TOC_MAX_ENTRIES) {
		nx_log(NX_LOG_ERR, "toc: more than %u entries", NX_TOC_MAX_ENTRIES);
		return -E2BIG;
	}
	if (idx == b->cap) {
		uint32_t ncap = b->cap ? b->cap * 2 : 256;
		struct bnode *p = realloc(b->nodes, (size_t)ncap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		b->nodes = p;
		b->cap = ncap;
	}
	bn = &b->nodes[idx];
	memset(bn, 0, sizeof(*bn));
	bn->parent = parent;
	bn->first = bn->last = bn->next = NONE;
	bn->type = (uint8_t)n->type;
	bn->exec = n->type == NX_NODE_REGULAR && n->executable;
	r = names_add(b, n->name, n->name_len, &bn->name_off);
	if (r < 0)
		return r;
	bn->name_len = (uint32_t)n->name_len;
	if (n->type == NX_NODE_REGULAR) {
		bn->size = n->size;
		bn->off = n->contents_off;
	} else if (n->type == NX_NODE_SYMLINK) {
		bn->size = n->size;
		r = names_add(b, n->target, (size_t)n->size, &bn->target_off);
		if (r < 0)
			return r;
	}
	if (idx > 0) {
		struct bnode *p = &b->nodes[parent];

		if (p->last != NONE) {
			const struct bnode *prev = &b->nodes[p->last];
			size_t m = prev->name_len < bn->name_len ? prev->name_len : bn->name_len;
			int c = memcmp(b->names + prev->name_off, b->names + bn->name_off, m);

			if (c > 0 || (c == 0 && prev->name_len >= bn->name_len)) {
				nx_log(NX_LOG_ERR, "toc: '%.*s' is out of order or duplicate",
				       (int)n->path_len, n->path);
				return -EINVAL;
			}
			b->nodes[p->last].next = idx;
		} else {
			p->first = idx;
		}
		p->last = idx;
		p->nchildren++;
	}
	if (n->type == NX_NODE_DIRECTORY)
		b->stack[b->depth++] = idx;
	b->nnodes++;
	return 0;
}

int nx_toc_builder_node(struct nx_toc_builder *b, const struct nx_nar_node *n)
{
	if (b->err)
		return b->err;
	b->err = builder_node(b, n);
	return b->err;
}

int nx_toc_builder_add_frame(struct nx_toc_builder *b, const struct nx_toc_frame *f)
{
	if (b->err)
		return b->err;
	if (b->nframes >= NX_TOC_MAX_FRAMES) {
		nx_log(NX_LOG_ERR, "toc: more than %u frames", NX_TOC_MAX_FRAMES);
		return b->err = -E2BIG;
	}
	if (b->nframes == b->frames_cap) {
		uint32_t ncap = b->frames_cap ? b->frames_cap * 2 : 64;
		struct nx_toc_frame *p = realloc(b->frames, (size_t)ncap * sizeof(*p));

		if (!p)
			return b->err = -ENOMEM;
		b->frames = p;
		b->frames_cap = ncap;
	}
	b->frames[b->nframes++] = *f;
	return 0;
}

int nx_toc_builder_finish(struct nx_toc_builder *b, uint64_t nar_size, uint64_t blob_size,
			  uint8_t **buf, size_t *len)
{
	uint32_t *order = NULL, *newidx = NULL;
	uint8_t *out = NULL, *p, *strtab;
	uint64_t strtab_len = 0, total;
	uint32_t n = b->nnodes, k, soff;
	struct nx_toc *check = NULL;
	int r;

	if (b->err)
		return b->err;
	b->err = -EINVAL; /* the builder can only be freed from now on */
	if (n == 0 || b->nframes == 0) {
		nx_log(NX_LOG_ERR, "toc: no nodes or no frames to encode");
		return -EINVAL;
	}
	order = malloc((size_t)n * sizeof(*order));
	newidx = malloc((size_t)n * sizeof(*newidx));
	if (!order || !newidx) {
		r = -ENOMEM;
		goto out;
	}
	/* Breadth-first renumbering: the queue is the new order itself. */
	order[0] = 0;
	k = 1;
	for (uint32_t i = 0; i < k; i++) {
		const struct bnode *d = &b->nodes[order[i]];

		for (uint32_t c = d->first; c != NONE; c = b->nodes[c].next)
			order[k++] = c;
	}
	for (uint32_t i = 0; i < n; i++) {
		const struct bnode *bn = &b->nodes[order[i]];

		newidx[order[i]] = i;
		strtab_len += bn->name_len;
		if (bn->type == NX_NODE_SYMLINK)
			strtab_len += bn->size;
	}
	total = TOC_HDR + (uint64_t)TOC_ENTRY * n + (uint64_t)TOC_FRAME * b->nframes + strtab_len;
	if (total > NX_TOC_MAX_BYTES) {
		nx_log(NX_LOG_ERR, "toc: encoded size %llu exceeds %u bytes",
		       (unsigned long long)total, NX_TOC_MAX_BYTES);
		r = -E2BIG;
		goto out;
	}
	out = calloc(1, (size_t)total);
	if (!out) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(out, TOC_MAGIC, 8);
	put32(out + 8, TOC_VERSION);
	put32(out + 12, 0);
	put64(out + 16, nar_size);
	put64(out + 24, blob_size);
	put32(out + 32, n);
	put32(out + 36, b->nframes);
	put32(out + 40, (uint32_t)strtab_len);
	put32(out + 44, NX_FRAME_MAX);

	strtab = out + TOC_HDR + (size_t)TOC_ENTRY * n + (size_t)TOC_FRAME * b->nframes;
	soff = 0;
	k = 1; /* next child range start */
	for (uint32_t i = 0; i < n; i++) {
		const struct bnode *bn = &b->nodes[order[i]];

		p = out + TOC_HDR + (size_t)TOC_ENTRY * i;
		put32(p, i ? newidx[bn->parent] : 0);
		put32(p + 4, i ? soff : 0);
		put32(p + 8, bn->name_len);
		if (bn->name_len) /* the root's name is empty; names may be NULL */
			memcpy(strtab + soff, b->names + bn->name_off, bn->name_len);
		soff += bn->name_len;
		p[12] = bn->type;
		p[13] = bn->exec ? 1 : 0;
		put16(p + 14, 0);
		if (bn->type == NX_NODE_DIRECTORY) {
			put32(p + 16, k);
			put32(p + 20, bn->nchildren);
			k += bn->nchildren;
		} else if (bn->type == NX_NODE_REGULAR) {
			put64(p + 24, bn->size);
			put64(p + 32, bn->off);
		} else {
			put64(p + 24, bn->size);
			put64(p + 32, soff);
			memcpy(strtab + soff, b->names + bn->target_off, (size_t)bn->size);
			soff += (uint32_t)bn->size;
		}
	}
	for (uint32_t i = 0; i < b->nframes; i++) {
		const struct nx_toc_frame *f = &b->frames[i];

		p = out + TOC_HDR + (size_t)TOC_ENTRY * n + (size_t)TOC_FRAME * i;
		put64(p, f->coff);
		put64(p + 8, f->uoff);
		put32(p + 16, f->clen);
		put32(p + 20, f->ulen);
		memcpy(p + 24, f->sha256, NX_SHA256_LEN);
	}
	/* The writer must never publish what the reader refuses. */
	r = nx_toc_decode(out, (size_t)total, &check);
	if (r < 0) {
		nx_log(NX_LOG_ERR, "toc: the encoded toc does not validate");
		goto out;
	}
	nx_toc_free(check);
	*buf = out;
	*len = (size_t)total;
	out = NULL;
	r = 0;
out:
	free(out);
	free(order);
	free(newidx);
	return r;
}

/* ------------------------------------------------------------ decoder */

/*
 * Why a TOC was refused: the first reason, kept to be logged once by the
 * caller as one line naming the artifact (the streaming reader cannot log
 * a reason before the bytes are known to be the ones the digest names).
 */
struct toc_why {
	char msg[160];
};

static int say(struct toc_why *w, int rc, const char *fmt, ...) NX_PRINTF(3, 4);
static int say(struct toc_why *w, int rc, const char *fmt, ...)
{
	va_list ap;

	if (!w->msg[0]) {
		va_start(ap, fmt);
		vsnprintf(w->msg, sizeof(w->msg), fmt, ap);
		va_end(ap);
	}
	return rc;
}

static int bad(struct toc_why *w, const char *what, uint64_t idx)
{
	return say(w, -EINVAL, "%s (entry or frame %llu)", what, (unsigned long long)idx);
}

static int name_ok(const char *s, uint32_t len)
{
	if (len == 0 || len > NX_NAR_NAME_MAX)
		return 0;
	if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
		return 0;
	return !memchr(s, '/', len) && !memchr(s, '\0', len);
}

static int name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	int c = memcmp(a, b, alen < blen ? alen : blen);

	if (c)
		return c;
	return alen < blen ? -1 : alen > blen ? 1 : 0;
}

static int decode_entries(struct nx_toc *t, const uint8_t *base, struct toc_why *w)
{
	uint8_t *depth = NULL;
	uint64_t cursor = 1;
	int r = -EINVAL;

	depth = calloc(t->nentries, 1);
	if (!depth)
		return -ENOMEM;
	for (uint32_t i = 0; i < t->nentries; i++) {
		/* a copy: @base may be t->entries itself (decoding in place) */
		uint8_t rec[TOC_ENTRY];
		const uint8_t *p = rec;
		struct nx_toc_entry *e = &t->entries[i];

		memcpy(rec, base + (size_t)TOC_ENTRY * i, TOC_ENTRY);

		e->parent = get32(p);
		e->name_off = get32(p + 4);
		e->name_len = get32(p + 8);
		e->type = p[12];
		e->executable = p[13] & 1;
		e->first_child = get32(p + 16);
		e->nchildren = get32(p + 20);
		e->size = get64(p + 24);
		e->off = get64(p + 32);
		if (get16(p + 14) != 0) {
			r = bad(w, "reserved entry bytes are not zero", i);
			goto out;
		}
		if (e->type < NX_NODE_REGULAR || e->type > NX_NODE_SYMLINK) {
			r = bad(w, "unknown entry type", i);
			goto out;
		}
		if (p[13] & ~(e->type == NX_NODE_REGULAR ? 1u : 0u)) {
			r = bad(w, "unknown entry flags", i);
			goto out;
		}
		if (i == 0) {
			if (e->parent != 0 || e->name_off != 0 || e->name_len != 0) {
				r = bad(w, "root entry has a parent or a name", i);
				goto out;
			}
		} else {
			const struct nx_toc_entry *pe;

			/* The tiling check below ran for every entry < i, so
			 * the parent's range is already known to be sane. */
			if (e->parent >= i) {
				r = bad(w, "parent does not precede entry", i);
				goto out;
			}
			pe = &t->entries[e->parent];
			if (pe->type != NX_NODE_DIRECTORY || i < pe->first_child ||
			    (uint64_t)i >= (uint64_t)pe->first_child + pe->nchildren) {
				r = bad(w, "entry lies outside its parent's child range", i);
				goto out;
			}
			if ((uint64_t)e->name_off + e->name_len > t->strtab_len ||
			    !name_ok(t->strtab + e->name_off, e->name_len)) {
				r = bad(w, "invalid name", i);
				goto out;
			}
			if (i > pe->first_child) {
				const struct nx_toc_entry *prev = &t->entries[i - 1];

				if (name_cmp(t->strtab + prev->name_off, prev->name_len,
					     t->strtab + e->name_off, e->name_len) >= 0) {
					r = bad(w, "names not sorted or duplicate", i);
					goto out;
				}
			}
			depth[i] = (uint8_t)(depth[e->parent] + 1);
		}
		switch (e->type) {
		case NX_NODE_DIRECTORY:
			if (e->size || e->off) {
				r = bad(w, "directory with size or offset", i);
				goto out;
			}
			if (depth[i] >= NX_NAR_DEPTH_MAX) {
				r = bad(w, "directory nested too deep", i);
				goto out;
			}
			/* Ranges tile [1, nentries) in directory order, and
			 * every range starts after its directory. */
			if (e->first_child != cursor || cursor <= i ||
			    cursor + e->nchildren > t->nentries) {
				r = bad(w, "bad directory child range", i);
				goto out;
			}
			cursor += e->nchildren;
			break;
		case NX_NODE_REGULAR:
			if (e->first_child || e->nchildren) {
				r = bad(w, "file with children", i);
				goto out;
			}
			if (e->off > t->nar_size || e->size > t->nar_size - e->off) {
				r = bad(w, "file contents lie outside the nar", i);
				goto out;
			}
			break;
		default: /* symlink */
			if (e->first_child || e->nchildren) {
				r = bad(w, "symlink with children", i);
				goto out;
			}
			if (e->size < 1 || e->size > NX_NAR_TARGET_MAX ||
			    e->off > t->strtab_len || e->size > t->strtab_len - e->off ||
			    memchr(t->strtab + e->off, '\0', (size_t)e->size)) {
				r = bad(w, "invalid symlink target", i);
				goto out;
			}
			break;
		}
	}
	if (cursor != t->nentries) {
		r = bad(w, "directory child ranges do not cover all entries", cursor);
		goto out;
	}
	r = 0;
out:
	free(depth);
	return r;
}

static int decode_frames(struct nx_toc *t, const uint8_t *base, uint32_t frame_max,
			 struct toc_why *w)
{
	uint64_t coff = 0, uoff = 0;

	for (uint32_t i = 0; i < t->nframes; i++) {
		uint8_t rec[TOC_FRAME]; /* @base may be t->frames itself */
		const uint8_t *p = rec;
		struct nx_toc_frame *f = &t->frames[i];

		memcpy(rec, base + (size_t)TOC_FRAME * i, TOC_FRAME);

		f->coff = get64(p);
		f->uoff = get64(p + 8);
		f->clen = get32(p + 16);
		f->ulen = get32(p + 20);
		memcpy(f->sha256, p + 24, NX_SHA256_LEN);
		if (f->coff != coff || f->uoff != uoff)
			return bad(w, "frame is not contiguous with the previous one", i);
		if (f->clen < 1)
			return bad(w, "empty compressed frame", i);
		if (f->ulen < 1 || f->ulen > frame_max)
			return bad(w, "frame size is 0 or above frame_max", i);
		/* At most 2^24 frames of < 2^32 bytes: no overflow. */
		coff += f->clen;
		uoff += f->ulen;
	}
	if (uoff != t->nar_size)
		return bad(w, "frames do not cover nar_size exactly", t->nframes);
	if (coff + SEEKTABLE_FIXED + 8ull * t->nframes != t->blob_size)
		return bad(w, "frames and seek table do not add up to blob_size", t->nframes);
	return 0;
}

/* The fixed header: every field checked before anything is allocated for
 * the rest. Fills the counts of *t; *want = the encoded length they imply. */
static int decode_header(const uint8_t *b, struct nx_toc *t, uint32_t *frame_max,
			 uint64_t *want, struct toc_why *w)
{
	if (memcmp(b, TOC_MAGIC, 8) != 0)
		return say(w, -EINVAL, "bad magic");
	if (get32(b + 8) != TOC_VERSION)
		return say(w, -EINVAL, "unsupported version %u", get32(b + 8));
	if (get32(b + 12) != 0)
		return say(w, -EINVAL, "unknown flags 0x%x", get32(b + 12));
	for (int i = 48; i < TOC_HDR; i++) {
		if (b[i])
			return say(w, -EINVAL, "reserved header bytes are not zero");
	}
	t->nar_size = get64(b + 16);
	t->blob_size = get64(b + 24);
	t->nentries = get32(b + 32);
	t->nframes = get32(b + 36);
	t->strtab_len = get32(b + 40);
	*frame_max = get32(b + 44);
	if (t->nar_size == 0)
		return say(w, -EINVAL, "nar_size is 0");
	if (t->nentries < 1 || t->nentries > NX_TOC_MAX_ENTRIES || t->nframes < 1 ||
	    t->nframes > NX_TOC_MAX_FRAMES)
		return say(w, t->nentries && t->nframes ? -E2BIG : -EINVAL,
			   "%u entries or %u frames out of range [1, 2^24]", t->nentries,
			   t->nframes);
	if (*frame_max < 1 || *frame_max > NX_FRAME_MAX)
		return say(w, -EINVAL, "frame_max %u out of range [1, %u]", *frame_max,
			   NX_FRAME_MAX);
	*want = TOC_HDR + (uint64_t)TOC_ENTRY * t->nentries + (uint64_t)TOC_FRAME * t->nframes +
		t->strtab_len;
	return 0;
}

static int alloc_tables(struct nx_toc *t)
{
	t->entries = calloc(t->nentries, sizeof(*t->entries));
	t->frames = calloc(t->nframes, sizeof(*t->frames));
	t->strtab = malloc(t->strtab_len ? t->strtab_len : 1);
	return t->entries && t->frames && t->strtab ? 0 : -ENOMEM;
}

int nx_toc_decode(const void *buf, size_t len, struct nx_toc **out)
{
	const uint8_t *b = buf;
	struct toc_why w = { "" };
	struct nx_toc *t = NULL;
	uint32_t frame_max;
	uint64_t want;
	int r;

	if (len < TOC_HDR) {
		nx_log(NX_LOG_ERR, "toc: %zu bytes is shorter than the header", len);
		return -EINVAL;
	}
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	r = decode_header(b, t, &frame_max, &want, &w);
	if (r == 0 && want != len)
		r = say(&w, -EINVAL, "length %zu does not match the header (%llu)", len,
			(unsigned long long)want);
	if (r < 0)
		goto fail;
	r = alloc_tables(t);
	if (r < 0)
		goto fail;
	memcpy(t->strtab, b + len - t->strtab_len, t->strtab_len);
	r = decode_entries(t, b + TOC_HDR, &w);
	if (r < 0)
		goto fail;
	r = decode_frames(t, b + TOC_HDR + (size_t)TOC_ENTRY * t->nentries, frame_max, &w);
	if (r < 0)
		goto fail;
	*out = t;
	return 0;
fail:
	if (w.msg[0])
		nx_log(NX_LOG_ERR, "toc: %s", w.msg);
	nx_toc_free(t);
	return r;
}

/*
 * The streaming reader: the TOC layer (one zstd frame with a declared
 * content size) is pushed through in pieces as it arrives, from the network
 * or a cache file, and inflated straight into the tables. The encoded entry
 * and frame records have the layout of struct nx_toc_entry and struct
 * nx_toc_frame (little-endian, no padding), so each table is first filled
 * with raw records and then decoded in place, record by record, once the
 * layer's digest is known to match. So a TOC costs its tables, zstd's
 * window and the caller's read buffer: never the compressed layer, never
 * the inflated TOC beside the tables.
 *
 * Bounds come before allocations: the zstd frame header (its declared size
 * against @cap) on the first 18 bytes, then the TOC header (magic, version,
 * counts, its implied length against the declared size) on the first 64
 * inflated bytes; only then are the tables allocated, at the sizes the
 * header states and the declared size confirms. A refusal frees what it
 * holds at once; the rest of the layer only goes through the digest, so
 * the reason is reported only for bytes that are the blob the digest names.
 */
_Static_assert(sizeof(struct nx_toc_entry) == TOC_ENTRY, "entry records decode in place");
_Static_assert(sizeof(struct nx_toc_frame) == TOC_FRAME, "frame records decode in place");

#define ZHDR_MAX NX_TOC_READER_HEAD /* magic, descriptor, window, dict id, content size */

enum { RD_ZHDR, RD_HDR, RD_ENTRIES, RD_FRAMES, RD_STRTAB, RD_END };

struct nx_toc_reader {
	char *what;      /* names the layer in the one log line */
	uint64_t zlen;   /* the layer's size from its descriptor */
	uint64_t fed;    /* bytes pushed so far */
	size_t cap;      /* on the declared inflated size */
	int verify;      /* hash what is fed and check it against digest */
	struct nx_sha256 h;
	uint8_t digest[NX_SHA256_LEN];
	uint8_t zh[ZHDR_MAX];
	size_t zhn;
	uint64_t fcs;    /* declared inflated size */
	ZSTD_DCtx *d;
	int stage, ended;
	uint8_t *dst;    /* the table being filled */
	size_t dlen, dpos;
	uint8_t hdr[TOC_HDR], scratch;
	uint32_t frame_max;
	struct nx_toc *t;
	int err;         /* sticky */
	struct toc_why why;
};

/* A refusal: keeps the first reason, drops the tables and the inflater. */
static int rd_fail(struct nx_toc_reader *r, int rc)
{
	if (!r->err)
		r->err = rc;
	ZSTD_freeDCtx(r->d);
	r->d = NULL;
	nx_toc_free(r->t);
	r->t = NULL;
	return rc;
}

int nx_toc_reader_new(struct nx_toc_reader **out, const char *what, uint64_t zlen,
		      const uint8_t digest[NX_SHA256_LEN], size_t cap)
{
	struct nx_toc_reader *r = calloc(1, sizeof(*r));
	int rc;

	if (!r)
		return -ENOMEM;
	r->what = strdup(what ? what : "toc");
	r->t = calloc(1, sizeof(*r->t));
	if (!r->what || !r->t) {
		rc = -ENOMEM;
		goto fail;
	}
	r->zlen = zlen;
	r->cap = cap;
	if (digest) {
		rc = nx_sha256_init(&r->h);
		if (rc < 0)
			goto fail;
		r->verify = 1;
		memcpy(r->digest, digest, NX_SHA256_LEN);
	}
	if (zlen == 0 || zlen > cap) /* a zstd frame never inflates to less */
		rd_fail(r, say(&r->why, zlen ? -E2BIG : -EINVAL,
			       "layer size %llu is out of range [1, %zu]", (unsigned long long)zlen,
			       cap));
	*out = r;
	return 0;
fail:
	nx_toc_reader_free(r);
	return rc;
}

void nx_toc_reader_free(struct nx_toc_reader *r)
{
	if (!r)
		return;
	if (r->verify)
		nx_sha256_release(&r->h);
	ZSTD_freeDCtx(r->d);
	nx_toc_free(r->t);
	free(r->what);
	free(r);
}

/* The table after the current one is full; zero-length ones are skipped. */
static int rd_next(struct nx_toc_reader *r)
{
	struct nx_toc *t = r->t;
	uint64_t want;
	int rc;

	switch (r->stage) {
	case RD_HDR:
		rc = decode_header(r->hdr, t, &r->frame_max, &want, &r->why);
		if (rc == 0 && want != r->fcs)
			rc = say(&r->why, -EINVAL, "declared size %llu does not match the header (%llu)",
				 (unsigned long long)r->fcs, (unsigned long long)want);
		if (rc < 0)
			return rd_fail(r, rc);
		/* justified now: the header's counts, which the declared size
		 * (at most @cap) confirms */
		if (alloc_tables(t) < 0)
			return rd_fail(r, -ENOMEM);
		r->stage = RD_ENTRIES;
		r->dst = (uint8_t *)t->entries;
		r->dlen = (size_t)TOC_ENTRY * t->nentries;
		break;
	case RD_ENTRIES:
		r->stage = RD_FRAMES;
		r->dst = (uint8_t *)t->frames;
		r->dlen = (size_t)TOC_FRAME * t->nframes;
		break;
	case RD_FRAMES:
		r->stage = RD_STRTAB;
		r->dst = (uint8_t *)t->strtab;
		r->dlen = t->strtab_len;
		break;
	default: /* RD_STRTAB: whatever comes next is one byte too many */
		r->stage = RD_END;
		r->dst = &r->scratch;
		r->dlen = 1;
		break;
	}
	r->dpos = 0;
	return r->dlen || r->stage == RD_END ? 0 : rd_next(r);
}

/* Inflates what @in holds into the tables, as far as it goes. */
static int rd_inflate(struct nx_toc_reader *r, const void *buf, size_t len)
{
	ZSTD_inBuffer in = { buf, len, 0 };

	for (;;) {
		ZSTD_outBuffer o = { r->dst, r->dlen, r->stage == RD_END ? 0 : r->dpos };
		size_t in0 = in.pos, rc;

		if (r->ended) {
			if (in.pos < in.size)
				return rd_fail(r, say(&r->why, -EINVAL,
						      "the layer is not exactly one zstd frame"));
			return 0;
		}
		rc = ZSTD_decompressStream(r->d, &o, &in);
		if (ZSTD_isError(rc))
			return rd_fail(r, say(&r->why, -EINVAL, "zstd: %s", ZSTD_getErrorName(rc)));
		if (r->stage == RD_END && o.pos)
			return rd_fail(r, say(&r->why, -EINVAL,
					      "the zstd stream goes on past the header's length"));
		if (rc == 0)
			r->ended = 1;
		if (r->stage != RD_END) {
			size_t got = o.pos - r->dpos;

			r->dpos = o.pos;
			if (r->dpos == r->dlen) {
				if (rd_next(r) < 0)
					return r->err;
				continue;
			}
			if (r->ended)
				return rd_fail(r, say(&r->why, -EINVAL, "the zstd stream is shorter "
						      "than the header says"));
			if (in.pos == in.size)
				return 0; /* all it could give: more input needed */
			if (!got && in.pos == in0)
				return rd_fail(r, say(&r->why, -EINVAL, "zstd: no progress"));
		} else if (!r->ended) {
			if (in.pos == in.size)
				return 0;
			if (in.pos == in0)
				return rd_fail(r, say(&r->why, -EINVAL, "zstd: no progress"));
		}
	}
}

/* The zstd frame header is complete (or the layer is shorter): its
 * declared size is checked, then it goes through like the rest. */
static int rd_start(struct nx_toc_reader *r)
{
	unsigned long long fcs = ZSTD_getFrameContentSize(r->zh, r->zhn);
	size_t zr;

	if (fcs == ZSTD_CONTENTSIZE_ERROR || fcs == ZSTD_CONTENTSIZE_UNKNOWN)
		return rd_fail(r, say(&r->why, -EINVAL,
				      "not a zstd frame with a declared content size"));
	if (fcs > r->cap || fcs < TOC_HDR)
		return rd_fail(r, say(&r->why, fcs > r->cap ? -E2BIG : -EINVAL,
				      "declared size %llu is out of range [%d, %zu]", fcs, TOC_HDR,
				      r->cap));
	r->fcs = fcs;
	r->d = ZSTD_createDCtx();
	if (!r->d)
		return rd_fail(r, -ENOMEM);
	/* the window is what this costs beyond the tables: 2^24 covers any
	 * level nixoci push uses by far */
	zr = ZSTD_DCtx_setParameter(r->d, ZSTD_d_windowLogMax, NX_TOC_WINDOW_LOG_MAX);
	if (ZSTD_isError(zr))
		return rd_fail(r, -ENOMEM);
	r->stage = RD_HDR;
	r->dst = r->hdr;
	r->dlen = TOC_HDR;
	r->dpos = 0;
	return rd_inflate(r, r->zh, r->zhn);
}

int nx_toc_reader_feed(struct nx_toc_reader *r, const void *buf, size_t len)
{
	const uint8_t *b = buf;

	if (r->verify)
		nx_sha256_update(&r->h, buf, len);
	if (len > r->zlen - (r->fed < r->zlen ? r->fed : r->zlen)) {
		r->fed += len;
		rd_fail(r, say(&r->why, -EINVAL, "longer than its descriptor says"));
		return 0;
	}
	r->fed += len;
	if (r->err)
		return r->err == -ENOMEM ? r->err : 0;
	if (r->stage == RD_ZHDR) {
		size_t need = (r->zlen < ZHDR_MAX ? (size_t)r->zlen : ZHDR_MAX) - r->zhn;
		size_t n = len < need ? len : need;

		memcpy(r->zh + r->zhn, b, n);
		r->zhn += n;
		b += n;
		len -= n;
		if (n < need)
			return 0;
		rd_start(r);
	}
	if (!r->err && len)
		rd_inflate(r, b, len);
	return r->err == -ENOMEM ? r->err : 0;
}

uint64_t nx_toc_reader_declared(const struct nx_toc_reader *r)
{
	return r->err || r->stage == RD_ZHDR ? 0 : r->fcs;
}

int nx_toc_reader_finish(struct nx_toc_reader *r, struct nx_toc **out)
{
	uint8_t got[NX_SHA256_LEN];
	int rc;

	*out = NULL;
	if (r->verify) {
		nx_sha256_final(&r->h, got);
		r->verify = 0;
		if (r->fed != r->zlen || memcmp(got, r->digest, NX_SHA256_LEN) != 0) {
			rd_fail(r, -EBADMSG);
			return -EBADMSG; /* not the blob: no reason is worth telling */
		}
	}
	if (!r->err && r->fed != r->zlen)
		rd_fail(r, say(&r->why, -EINVAL, "%llu bytes where the descriptor says %llu",
			       (unsigned long long)r->fed, (unsigned long long)r->zlen));
	if (!r->err && r->stage == RD_ZHDR)
		rd_start(r); /* never: zhn reaches min(18, zlen) first */
	if (!r->err && (r->stage != RD_END || !r->ended))
		rd_fail(r, say(&r->why, -EINVAL, "the zstd stream is shorter than the header says"));
	if (!r->err) {
		rc = decode_entries(r->t, (const uint8_t *)r->t->entries, &r->why);
		if (rc == 0)
			rc = decode_frames(r->t, (const uint8_t *)r->t->frames, r->frame_max,
					   &r->why);
		if (rc < 0)
			rd_fail(r, rc);
	}
	if (r->err) {
		if (r->err != -ENOMEM)
			nx_log(NX_LOG_ERR, "%s: malformed: %s", r->what,
			       r->why.msg[0] ? r->why.msg : "no reason");
		return r->err;
	}
	ZSTD_freeDCtx(r->d);
	r->d = NULL;
	*out = r->t;
	r->t = NULL;
	r->err = -EINVAL; /* finished: the reader can only be freed */
	return 0;
}

int nx_toc_decode_zstd(const void *zbuf, size_t zlen, size_t cap, struct nx_toc **out)
{
	struct nx_toc_reader *r = NULL;
	int rc;

	rc = nx_toc_reader_new(&r, "toc", zlen, NULL, cap);
	if (rc == 0)
		rc = nx_toc_reader_feed(r, zbuf, zlen);
	if (rc == 0)
		rc = nx_toc_reader_finish(r, out);
	nx_toc_reader_free(r);
	return rc;
}

void nx_toc_free(struct nx_toc *toc)
{
	if (!toc)
		return;
	free(toc->entries);
	free(toc->frames);
	free(toc->strtab);
	free(toc);
}

int64_t nx_toc_lookup(const struct nx_toc *toc, uint32_t dir, const char *name, size_t len)
{
	const struct nx_toc_entry *d;
	uint32_t lo, hi;

	if (dir >= toc->nentries)
		return -EINVAL;
	d = &toc->entries[dir];
	if (d->type != NX_NODE_DIRECTORY)
		return -ENOTDIR;
	lo = d->first_child;
	hi = d->first_child + d->nchildren;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct nx_toc_entry *e = &toc->entries[mid];
		int c = name_cmp(toc->strtab + e->name_off, e->name_len, name, len);

		if (c == 0)
			return mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -ENOENT;
}

const char *nx_toc_name(const struct nx_toc *toc, uint32_t idx, size_t *len)
{
	if (idx >= toc->nentries) {
		*len = 0;
		return NULL;
	}
	*len = toc->entries[idx].name_len;
	return toc->strtab + toc->entries[idx].name_off;
}

int nx_toc_path(const struct nx_toc *toc, uint32_t idx, char *buf, size_t cap)
{
	uint32_t chain[64];
	size_t depth = 0, len = 0, n;
	const char *name;
	int r = 0;

	if (!cap)
		return -E2BIG;
	buf[0] = '\0';
	/* leaf to root; the decoder checked that parents come first, so the
	 * walk ends, and a path deeper than the chain is cut at its top */
	while (idx != 0 && idx < toc->nentries) {
		if (depth == sizeof(chain) / sizeof(chain[0])) {
			r = -E2BIG;
			break;
		}
		chain[depth++] = idx;
		idx = toc->entries[idx].parent;
	}
	while (depth--) {
		name = nx_toc_name(toc, chain[depth], &n);
		if (!name)
			break; /* never: the walk kept to valid indexes */
		if (len + (len ? 1 : 0) + n + 1 > cap) {
			r = -E2BIG;
			break;
		}
		if (len)
			buf[len++] = '/';
		memcpy(buf + len, name, n);
		len += n;
		buf[len] = '\0';
	}
	return r;
}

const char *nx_toc_target(const struct nx_toc *toc, uint32_t idx, size_t *len)
{
	if (idx >= toc->nentries || toc->entries[idx].type != NX_NODE_SYMLINK) {
		*len = 0;
		return NULL;
	}
	*len = (size_t)toc->entries[idx].size;
	return toc->strtab + toc->entries[idx].off;
}

/* Index of the frame holding NAR byte @x (x < nar_size). */
static uint32_t frame_at(const struct nx_toc *toc, uint64_t x)
{
	uint32_t lo = 0, hi = toc->nframes - 1;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo + 1) / 2;

		if (toc->frames[mid].uoff <= x)
			lo = mid;
		else
			hi = mid - 1;
	}
	return lo;
}

int nx_toc_frames_for(const struct nx_toc *toc, uint64_t uoff, uint64_t len, uint32_t *first,
		      uint32_t *last)
{
	if (len == 0 || uoff >= toc->nar_size || len > toc->nar_size - uoff)
		return -EINVAL;
	*first = frame_at(toc, uoff);
	*last = frame_at(toc, uoff + len - 1);
	return 0;
}
