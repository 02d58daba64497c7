/*
 * tests/unit/common-toc.c: TOC builder, encoder and the hostile-input
 * decoder (docs/format.md section 4).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tests/unit/tap.h"

struct tnode {
	enum nx_node_type type;
	const char *path;
	int exec;
	uint64_t size, off;
	const char *target;
};

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

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void append(char *buf, size_t cap, const char *s)
{
	size_t l = strlen(buf);

	snprintf(buf + l, cap - l, "%s", s);
}

static int feed(struct nx_toc_builder *b, const struct tnode *t)
{
	struct nx_nar_node n;
	const char *slash = strrchr(t->path, '/');
	unsigned depth = 0;

	memset(&n, 0, sizeof(n));
	if (*t->path) {
		depth = 1;
		for (const char *p = t->path; *p; p++)
			depth += *p == '/';
	}
	n.type = t->type;
	n.path = t->path;
	n.path_len = strlen(t->path);
	n.name = slash ? slash + 1 : t->path;
	n.name_len = strlen(n.name);
	n.depth = depth;
	n.executable = t->exec;
	n.size = t->type == NX_NODE_SYMLINK ? strlen(t->target) : t->size;
	n.contents_off = t->off;
	n.target = t->target;
	return nx_toc_builder_node(b, &n);
}

/* Frames of @ulen[i] bytes each with clen 100+i. */
static int build(const struct tnode *nodes, size_t n, const uint32_t *ulen, uint32_t nf,
		 uint8_t **buf, size_t *len)
{
	struct nx_toc_builder *b = NULL;
	uint64_t coff = 0, uoff = 0;
	int r;

	r = nx_toc_builder_new(&b);
	for (size_t i = 0; r == 0 && i < n; i++)
		r = feed(b, &nodes[i]);
	for (uint32_t i = 0; r == 0 && i < nf; i++) {
		struct nx_toc_frame f;

		memset(&f, 0, sizeof(f));
		f.coff = coff;
		f.uoff = uoff;
		f.clen = 100 + i;
		f.ulen = ulen[i];
		memset(f.sha256, (int)i + 1, sizeof(f.sha256));
		coff += f.clen;
		uoff += f.ulen;
		r = nx_toc_builder_add_frame(b, &f);
	}
	if (r == 0)
		r = nx_toc_builder_finish(b, uoff, coff + nx_seektable_size(nf), buf, len);
	nx_toc_builder_free(b);
	return r;
}

static int name_is(const struct nx_toc *t, uint32_t idx, const char *want)
{
	size_t len;
	const char *s = nx_toc_name(t, idx, &len);

	return s && len == strlen(want) && memcmp(s, want, len) == 0;
}

static int64_t lk(const struct nx_toc *t, uint32_t dir, const char *name)
{
	return nx_toc_lookup(t, dir, name, strlen(name));
}

static void test_root_file(void)
{
	static const struct tnode nodes[] = { { NX_NODE_REGULAR, "", 1, 6, 96, NULL } };
	static const uint32_t fr[] = { 120 };
	struct nx_toc *t = NULL;
	uint8_t *buf = NULL;
	size_t len = 0;

	is_int(build(nodes, 1, fr, 1, &buf, &len), 0, "root file: build");
	is_int(len, 64 + 40 + 56, "root file: encoded size");
	is_int(nx_toc_decode(buf, len, &t), 0, "root file: decode");
	if (t) {
		is_int(t->nentries, 1, "root file: one entry");
		is_int(t->entries[0].type, NX_NODE_REGULAR, "root file: type");
		is_int(t->entries[0].executable, 1, "root file: executable");
		is_int(t->entries[0].size, 6, "root file: size");
		is_int(t->entries[0].off, 96, "root file: offset");
		is_int(t->nar_size, 120, "root file: nar_size");
		is_int(t->blob_size, 100 + 17 + 8, "root file: blob_size");
		is_int(lk(t, 0, "x"), -ENOTDIR, "root file: lookup is ENOTDIR");
		ok(name_is(t, 0, ""), "root file: empty name");
	}
	nx_toc_free(t);
	free(buf);
}

static void test_root_symlink(void)
{
	static const struct tnode nodes[] = { { NX_NODE_SYMLINK, "", 0, 0, 0, "../foo/bar" } };
	static const uint32_t fr[] = { 136 };
	struct nx_toc *t = NULL;
	uint8_t *buf = NULL;
	size_t len = 0, tl = 0;
	const char *tg;

	is_int(build(nodes, 1, fr, 1, &buf, &len), 0, "root symlink: build");
	is_int(nx_toc_decode(buf, len, &t), 0, "root symlink: decode");
	if (t) {
		tg = nx_toc_target(t, 0, &tl);
		ok(tg && tl == 10 && memcmp(tg, "../foo/bar", 10) == 0, "root symlink: target");
		is_int(t->entries[0].size, 10, "root symlink: size is target length");
	}
	nx_toc_free(t);
	free(buf);
}

/* NAR (depth-first) order; the TOC renumbers breadth first. */
static const struct tnode nested[] = {
	{ NX_NODE_DIRECTORY, "", 0, 0, 0, NULL },
	{ NX_NODE_DIRECTORY, "a", 0, 0, 0, NULL },
	{ NX_NODE_REGULAR, "a/x", 0, 5, 200, NULL },
	{ NX_NODE_DIRECTORY, "a/y", 0, 0, 0, NULL },
	{ NX_NODE_SYMLINK, "b", 0, 0, 0, "a/x" },
	{ NX_NODE_DIRECTORY, "c", 0, 0, 0, NULL },
	{ NX_NODE_DIRECTORY, "c/d", 0, 0, 0, NULL },
	{ NX_NODE_REGULAR, "c/d/e", 1, 10, 400, NULL },
	{ NX_NODE_REGULAR, "zz", 0, 3, 1990, NULL },
};
static const uint32_t nested_fr[] = { 1000, 1000 };

static void test_nested(void)
{
	struct nx_toc *t = NULL;
	uint8_t *buf = NULL;
	size_t len = 0, tl;
	static const char *const bfs[] = { "", "a", "b", "c", "zz", "x", "y", "d", "e" };
	uint32_t f0, f1;

	is_int(build(nested, 9, nested_fr, 2, &buf, &len), 0, "nested: build");
	is_int(nx_toc_decode(buf, len, &t), 0, "nested: decode");
	if (!t)
		return;
	is_int(t->nentries, 9, "nested: 9 entries");
	for (uint32_t i = 0; i < 9; i++)
		ok(name_is(t, i, bfs[i]), "nested: entry %u is '%s'", i, bfs[i]);
	is_int(t->entries[0].first_child, 1, "nested: root children start at 1");
	is_int(t->entries[0].nchildren, 4, "nested: root has 4 children");
	is_int(t->entries[1].first_child, 5, "nested: a's children start at 5");
	is_int(t->entries[3].first_child, 7, "nested: c's children start at 7");
	is_int(t->entries[6].first_child, 8, "nested: empty a/y sits at the cursor");
	is_int(t->entries[6].nchildren, 0, "nested: a/y is empty");
	is_int(t->entries[7].first_child, 8, "nested: c/d's child at 8");
	is_int(t->entries[8].parent, 7, "nested: e's parent is d");
	is_int(t->entries[8].executable, 1, "nested: e is executable");
	is_int(t->entries[8].off, 400, "nested: e's offset");
	is_int(lk(t, 0, "a"), 1, "nested: lookup a");
	is_int(lk(t, 0, "zz"), 4, "nested: lookup zz");
	is_int(lk(t, 0, "z"), -ENOENT, "nested: lookup z (prefix) is ENOENT");
	is_int(lk(t, 0, "zzz"), -ENOENT, "nested: lookup zzz is ENOENT");
	is_int(lk(t, 0, ""), -ENOENT, "nested: lookup empty name");
	is_int(lk(t, 3, "d"), 7, "nested: lookup c/d");
	is_int(lk(t, 7, "e"), 8, "nested: lookup c/d/e");
	is_int(lk(t, 6, "e"), -ENOENT, "nested: lookup in empty dir");
	is_int(lk(t, 5, "e"), -ENOTDIR, "nested: lookup in a file");
	is_int(lk(t, 2, "e"), -ENOTDIR, "nested: lookup in a symlink");
	is_int(lk(t, 99, "e"), -EINVAL, "nested: lookup out of range");
	ok(nx_toc_target(t, 2, &tl) && tl == 3, "nested: b's target");
	ok(!nx_toc_target(t, 1, &tl), "nested: no target for a directory");
	is_int(nx_toc_frames_for(t, 0, 1, &f0, &f1), 0, "frames_for first byte");
	ok(f0 == 0 && f1 == 0, "frames_for [0,1) is frame 0");
	is_int(nx_toc_frames_for(t, 999, 2, &f0, &f1), 0, "frames_for straddle");
	ok(f0 == 0 && f1 == 1, "frames_for [999,1001) is frames 0..1");
	is_int(nx_toc_frames_for(t, 1000, 1000, &f0, &f1), 0, "frames_for second frame");
	ok(f0 == 1 && f1 == 1, "frames_for [1000,2000) is frame 1");
	is_int(nx_toc_frames_for(t, 1999, 2, &f0, &f1), -EINVAL, "frames_for past the end");
	is_int(nx_toc_frames_for(t, 5, 0, &f0, &f1), -EINVAL, "frames_for empty range");
	is_int(nx_toc_frames_for(t, UINT64_MAX, 2, &f0, &f1), -EINVAL, "frames_for overflow");
	is_int(t->frames[1].coff, 100, "frame 1 coff");
	is_int(t->frames[1].uoff, 1000, "frame 1 uoff");
	nx_toc_free(t);
	free(buf);
}

static void test_empty_root_and_many(void)
{
	static const struct tnode empty[] = { { NX_NODE_DIRECTORY, "", 0, 0, 0, NULL } };
	static const uint32_t fr1[] = { 112 };
	enum { N = 1000 };
	struct tnode *many = calloc(N + 1, sizeof(*many));
	char (*names)[8] = calloc(N, 8);
	uint32_t fr[3] = { 1048576, 1048576, 902848 };
	struct nx_toc *t = NULL;
	uint8_t *buf = NULL;
	size_t len;
	int good = 1;

	is_int(build(empty, 1, fr1, 1, &buf, &len), 0, "empty root dir: build");
	is_int(nx_toc_decode(buf, len, &t), 0, "empty root dir: decode");
	if (t) {
		is_int(t->entries[0].nchildren, 0, "empty root dir: no children");
		is_int(lk(t, 0, "a"), -ENOENT, "empty root dir: lookup ENOENT");
	}
	nx_toc_free(t);
	free(buf);
	t = NULL;
	buf = NULL;

	many[0].type = NX_NODE_DIRECTORY;
	many[0].path = "";
	for (int i = 0; i < N; i++) {
		snprintf(names[i], 8, "f%04d", i);
		many[i + 1].type = NX_NODE_REGULAR;
		many[i + 1].path = names[i];
		many[i + 1].size = 1000;
		many[i + 1].off = 200 + 2000 * (uint64_t)i;
	}
	is_int(build(many, N + 1, fr, 3, &buf, &len), 0, "many siblings: build");
	is_int(nx_toc_decode(buf, len, &t), 0, "many siblings: decode");
	if (t) {
		uint32_t f0, f1;

		for (int i = 0; i < N; i++)
			good &= lk(t, 0, names[i]) == i + 1;
		ok(good, "many siblings: every lookup finds its entry");
		is_int(lk(t, 0, "f1000"), -ENOENT, "many siblings: missing name");
		is_int(nx_toc_frames_for(t, 2500000, 1, &f0, &f1), 0, "frames_for 2.5M");
		ok(f0 == 2 && f1 == 2, "offset 2,500,000 is in frame 2");
		is_int(nx_toc_frames_for(t, 0, t->nar_size, &f0, &f1), 0, "frames_for all");
		ok(f0 == 0 && f1 == 2, "whole nar is frames 0..2");
	}
	nx_toc_free(t);
	free(buf);
	free(many);
	free(names);
}

static void test_builder_rejects(void)
{
	static const struct tnode unsorted[] = {
		{ NX_NODE_DIRECTORY, "", 0, 0, 0, NULL },
		{ NX_NODE_REGULAR, "b", 0, 1, 100, NULL },
		{ NX_NODE_REGULAR, "a", 0, 1, 200, NULL },
	};
	static const struct tnode dup[] = {
		{ NX_NODE_DIRECTORY, "", 0, 0, 0, NULL },
		{ NX_NODE_REGULAR, "a", 0, 1, 100, NULL },
		{ NX_NODE_REGULAR, "a", 0, 1, 200, NULL },
	};
	static const struct tnode orphan[] = {
		{ NX_NODE_DIRECTORY, "", 0, 0, 0, NULL },
		{ NX_NODE_REGULAR, "a/b", 0, 1, 100, NULL },
	};
	static const struct tnode badname[] = {
		{ NX_NODE_DIRECTORY, "", 0, 0, 0, NULL },
		{ NX_NODE_REGULAR, "..", 0, 1, 100, NULL },
	};
	static const uint32_t fr[] = { 1000 };
	char path[64 * 2 + 1];
	struct tnode deep[66];
	uint8_t *buf = NULL;
	size_t len;

	ok(build(unsorted, 3, fr, 1, &buf, &len) == -EINVAL, "builder: unsorted names refused");
	ok(build(dup, 3, fr, 1, &buf, &len) == -EINVAL, "builder: duplicate names refused");
	ok(build(orphan, 2, fr, 1, &buf, &len) == -EINVAL, "builder: node without parent refused");
	ok(build(badname, 2, fr, 1, &buf, &len) == -EINVAL, "builder: '..' refused at finish");
	ok(build(nested, 9, fr, 0, &buf, &len) == -EINVAL, "builder: no frames refused");
	ok(build(nested, 9, fr, 1, &buf, &len) == -EINVAL,
	   "builder: files past nar_size refused at finish");

	/* dirs at depth 0..64: the one at 64 is refused */
	memset(deep, 0, sizeof(deep));
	memset(path, 0, sizeof(path));
	for (int i = 0; i <= 64; i++) {
		deep[i].type = NX_NODE_DIRECTORY;
		deep[i].path = strdup(path);
		append(path, sizeof(path), i ? "/d" : "d");
	}
	ok(build(deep, 65, fr, 1, &buf, &len) == -EINVAL, "builder: directory at depth 64");
	ok(build(deep, 64, fr, 1, &buf, &len) == 0, "builder: directory at depth 63 is fine");
	free(buf);
	for (int i = 0; i <= 64; i++)
		free((char *)deep[i].path);
}

/* ---------------------------------------------------- corruption table */

#define HDR 64
#define ENT(b, i) ((b) + HDR + 40 * (size_t)(i))
#define FRM(b, j) ((b) + HDR + 40 * (size_t)get32((b) + 32) + 56 * (size_t)(j))

static void c_magic(uint8_t *b, size_t *l) { b[0] ^= 1; }
static void c_version(uint8_t *b, size_t *l) { put32(b + 8, 2); }
static void c_flags(uint8_t *b, size_t *l) { put32(b + 12, 1); }
static void c_reserved(uint8_t *b, size_t *l) { b[60] = 1; }
static void c_short(uint8_t *b, size_t *l) { *l -= 1; }
static void c_long(uint8_t *b, size_t *l) { *l += 1; }
static void c_tiny(uint8_t *b, size_t *l) { *l = 10; }
static void c_nentries_big(uint8_t *b, size_t *l) { put32(b + 32, (1u << 24) + 1); }
static void c_nentries_0(uint8_t *b, size_t *l) { put32(b + 32, 0); }
static void c_nframes_0(uint8_t *b, size_t *l) { put32(b + 36, 0); }
static void c_nframes_big(uint8_t *b, size_t *l) { put32(b + 36, 0xffffffffu); }
static void c_strtab_big(uint8_t *b, size_t *l) { put32(b + 40, 0xffffffffu); }
static void c_frame_max_big(uint8_t *b, size_t *l) { put32(b + 44, (1u << 20) + 1); }
static void c_ulen_over_max(uint8_t *b, size_t *l) { put32(b + 44, 999); }
static void c_nar_size_0(uint8_t *b, size_t *l) { put64(b + 16, 0); }
static void c_nar_size(uint8_t *b, size_t *l) { put64(b + 16, get64(b + 16) + 1); }
static void c_blob_size(uint8_t *b, size_t *l) { put64(b + 24, get64(b + 24) + 1); }
static void c_overlap(uint8_t *b, size_t *l) { put32(ENT(b, 1) + 16, 4); }
static void c_range_big(uint8_t *b, size_t *l) { put32(ENT(b, 3) + 20, 0xffffffffu); }
static void c_range_short(uint8_t *b, size_t *l) { put32(ENT(b, 0) + 20, 3); }
static void c_unsorted(uint8_t *b, size_t *l)
{
	uint32_t x = get32(ENT(b, 1) + 4);

	put32(ENT(b, 1) + 4, get32(ENT(b, 2) + 4));
	put32(ENT(b, 2) + 4, x);
}
static void c_duplicate(uint8_t *b, size_t *l) { put32(ENT(b, 2) + 4, get32(ENT(b, 1) + 4)); }
static uint8_t *strtab(uint8_t *b, size_t l) { return b + l - get32(b + 40); }
static void c_dotdot(uint8_t *b, size_t *l)
{
	memcpy(strtab(b, *l) + get32(ENT(b, 4) + 4), "..", 2); /* "zz" */
}
static void c_dot(uint8_t *b, size_t *l) { strtab(b, *l)[get32(ENT(b, 1) + 4)] = '.'; }
static void c_slash(uint8_t *b, size_t *l) { strtab(b, *l)[get32(ENT(b, 4) + 4) + 1] = '/'; }
static void c_nul(uint8_t *b, size_t *l) { strtab(b, *l)[get32(ENT(b, 4) + 4) + 1] = 0; }
static void c_name_0(uint8_t *b, size_t *l) { put32(ENT(b, 1) + 8, 0); }
static void c_name_256(uint8_t *b, size_t *l) { put32(ENT(b, 4) + 8, 256); }
static void c_name_past(uint8_t *b, size_t *l) { put32(ENT(b, 4) + 4, get32(b + 40) - 1); }
static void c_name_wrap(uint8_t *b, size_t *l) { put32(ENT(b, 4) + 4, 0xffffffffu); }
static void c_root_name(uint8_t *b, size_t *l) { put32(ENT(b, 0) + 8, 1); }
static void c_root_parent(uint8_t *b, size_t *l) { put32(ENT(b, 0), 1); }
static void c_parent_later(uint8_t *b, size_t *l) { put32(ENT(b, 5), 6); }
static void c_parent_file(uint8_t *b, size_t *l) { put32(ENT(b, 5), 4); }
static void c_parent_wrong(uint8_t *b, size_t *l) { put32(ENT(b, 5), 3); }
static void c_type_0(uint8_t *b, size_t *l) { ENT(b, 4)[12] = 0; }
static void c_type_4(uint8_t *b, size_t *l) { ENT(b, 4)[12] = 4; }
static void c_flag_bits(uint8_t *b, size_t *l) { ENT(b, 4)[13] = 2; }
static void c_exec_dir(uint8_t *b, size_t *l) { ENT(b, 1)[13] = 1; }
static void c_ent_reserved(uint8_t *b, size_t *l) { ENT(b, 4)[15] = 1; }
static void c_file_past(uint8_t *b, size_t *l) { put64(ENT(b, 4) + 32, get64(b + 16) - 2); }
static void c_file_wrap(uint8_t *b, size_t *l) { put64(ENT(b, 4) + 24, UINT64_MAX - 5); }
static void c_file_kids(uint8_t *b, size_t *l) { put32(ENT(b, 4) + 20, 1); }
static void c_dir_size(uint8_t *b, size_t *l) { put64(ENT(b, 1) + 24, 1); }
static void c_link_past(uint8_t *b, size_t *l) { put64(ENT(b, 2) + 32, get32(b + 40) - 1); }
static void c_link_0(uint8_t *b, size_t *l) { put64(ENT(b, 2) + 24, 0); }
static void c_link_4096(uint8_t *b, size_t *l) { put64(ENT(b, 2) + 24, 4096); }
static void c_link_nul(uint8_t *b, size_t *l) { strtab(b, *l)[get64(ENT(b, 2) + 32)] = 0; }
static void c_frame_gap(uint8_t *b, size_t *l) { put64(FRM(b, 1), get64(FRM(b, 1)) + 1); }
static void c_frame_ugap(uint8_t *b, size_t *l) { put64(FRM(b, 1) + 8, 999); }
static void c_frame_start(uint8_t *b, size_t *l) { put64(FRM(b, 0), 1); }
static void c_clen_0(uint8_t *b, size_t *l) { put32(FRM(b, 0) + 16, 0); }
static void c_ulen_0(uint8_t *b, size_t *l) { put32(FRM(b, 1) + 20, 0); }
static void c_ulen_sum(uint8_t *b, size_t *l) { put32(FRM(b, 1) + 20, 999); }
static void c_ulen_big(uint8_t *b, size_t *l) { put32(FRM(b, 1) + 20, (1u << 20) + 1); }
/* on the deep tree: the file at depth 64 becomes a directory */
static void c_deep_dir(uint8_t *b, size_t *l)
{
	uint32_t n = get32(b + 32);
	uint8_t *e = ENT(b, n - 1);

	e[12] = NX_NODE_DIRECTORY;
	put32(e + 16, n);
	put64(e + 24, 0);
	put64(e + 32, 0);
}

/* The streaming decoder: the same TOC as nx_toc_decode from the zstd layer;
 * refused when the layer is cut, followed by more, not zstd, or declares
 * more than the cap. */
static void test_zstd_layer(void)
{
	uint8_t *raw = NULL, *z = NULL, *zz;
	size_t rl = 0, zl = 0;
	struct nx_toc *a = NULL, *b = NULL;

	is_int(build(nested, 9, nested_fr, 2, &raw, &rl), 0, "zstd: base builds");
	is_int(nx_zstd_compress(raw, rl, &z, &zl), 0, "zstd: base compresses");
	is_int(nx_toc_decode(raw, rl, &a), 0, "zstd: plain decode");
	if (!raw || !z || !a) {
		free(raw);
		free(z);
		nx_toc_free(a);
		return;
	}
	is_int(nx_toc_decode_zstd(z, zl, NX_TOC_MAX_BYTES, &b), 0, "zstd: streaming decode");
	ok(a && b && a->nentries == b->nentries && a->nframes == b->nframes &&
	   a->strtab_len == b->strtab_len &&
	   memcmp(a->entries, b->entries, sizeof(*a->entries) * a->nentries) == 0 &&
	   memcmp(a->frames, b->frames, sizeof(*a->frames) * a->nframes) == 0 &&
	   memcmp(a->strtab, b->strtab, a->strtab_len) == 0,
	   "zstd: both decoders give the same tables");
	nx_toc_free(a);
	nx_toc_free(b);
	b = NULL;
	ok(nx_toc_decode_zstd(z, zl - 1, NX_TOC_MAX_BYTES, &b) < 0 && !b, "zstd: cut short");
	ok(nx_toc_decode_zstd(z, zl, rl - 1, &b) == -E2BIG && !b, "zstd: over the cap");
	zz = malloc(2 * zl);
	if (!zz)
		abort();
	memcpy(zz, z, zl);
	memcpy(zz + zl, z, zl);
	ok(nx_toc_decode_zstd(zz, 2 * zl, NX_TOC_MAX_BYTES, &b) < 0 && !b, "zstd: two frames");
	memcpy(zz, raw, zl < rl ? zl : rl);
	ok(nx_toc_decode_zstd(zz, zl < rl ? zl : rl, NX_TOC_MAX_BYTES, &b) < 0 && !b,
	   "zstd: not zstd");
	memcpy(zz, z, zl);
	zz[zl / 2] ^= 0x55;
	ok(nx_toc_decode_zstd(zz, zl, NX_TOC_MAX_BYTES, &b) < 0 && !b, "zstd: damaged block");
	free(zz);
	free(z);
	free(raw);
}

static void test_corruptions(void)
{
	static const struct {
		const char *name;
		void (*fn)(uint8_t *, size_t *);
		int deep;
	} tab[] = {
		{ "bad magic", c_magic, 0 },
		{ "version 2", c_version, 0 },
		{ "flags set", c_flags, 0 },
		{ "reserved header byte", c_reserved, 0 },
		{ "one byte short", c_short, 0 },
		{ "one byte long", c_long, 0 },
		{ "shorter than the header", c_tiny, 0 },
		{ "nentries over 2^24", c_nentries_big, 0 },
		{ "nentries 0", c_nentries_0, 0 },
		{ "nframes 0", c_nframes_0, 0 },
		{ "nframes 2^32-1", c_nframes_big, 0 },
		{ "strtab_len 2^32-1", c_strtab_big, 0 },
		{ "frame_max over 1 MiB", c_frame_max_big, 0 },
		{ "ulen over frame_max", c_ulen_over_max, 0 },
		{ "nar_size 0", c_nar_size_0, 0 },
		{ "sum of ulen != nar_size", c_nar_size, 0 },
		{ "blob_size mismatch", c_blob_size, 0 },
		{ "child ranges overlap", c_overlap, 0 },
		{ "child range past the end", c_range_big, 0 },
		{ "child ranges leave a gap", c_range_short, 0 },
		{ "unsorted names", c_unsorted, 0 },
		{ "duplicate names", c_duplicate, 0 },
		{ "name '..'", c_dotdot, 0 },
		{ "name '.'", c_dot, 0 },
		{ "name with '/'", c_slash, 0 },
		{ "name with NUL", c_nul, 0 },
		{ "empty name", c_name_0, 0 },
		{ "name of 256 bytes", c_name_256, 0 },
		{ "name past strtab", c_name_past, 0 },
		{ "name offset wraps", c_name_wrap, 0 },
		{ "root with a name", c_root_name, 0 },
		{ "root with a parent", c_root_parent, 0 },
		{ "parent after child", c_parent_later, 0 },
		{ "parent is a file", c_parent_file, 0 },
		{ "parent is the wrong directory", c_parent_wrong, 0 },
		{ "type 0", c_type_0, 0 },
		{ "type 4", c_type_4, 0 },
		{ "unknown entry flag", c_flag_bits, 0 },
		{ "executable directory", c_exec_dir, 0 },
		{ "reserved entry bytes", c_ent_reserved, 0 },
		{ "file range past nar_size", c_file_past, 0 },
		{ "file range overflows", c_file_wrap, 0 },
		{ "file with children", c_file_kids, 0 },
		{ "directory with size", c_dir_size, 0 },
		{ "symlink target past strtab", c_link_past, 0 },
		{ "empty symlink target", c_link_0, 0 },
		{ "symlink target of 4096", c_link_4096, 0 },
		{ "symlink target with NUL", c_link_nul, 0 },
		{ "frame gap in blob", c_frame_gap, 0 },
		{ "frame gap in nar", c_frame_ugap, 0 },
		{ "frame 0 not at 0", c_frame_start, 0 },
		{ "clen 0", c_clen_0, 0 },
		{ "ulen 0", c_ulen_0, 0 },
		{ "ulen sum short", c_ulen_sum, 0 },
		{ "ulen over 1 MiB", c_ulen_big, 0 },
		{ "directory at depth 64", c_deep_dir, 1 },
	};
	static const uint32_t fr[] = { 1000 };
	struct tnode deep[65];
	char path[64 * 2 + 1] = "";
	uint8_t *base[2] = { NULL, NULL }, *b;
	size_t blen[2] = { 0, 0 }, l;
	struct nx_toc *t = NULL;

	is_int(build(nested, 9, nested_fr, 2, &base[0], &blen[0]), 0, "corruption base builds");
	memset(deep, 0, sizeof(deep));
	for (int i = 0; i <= 64; i++) {
		deep[i].type = i < 64 ? NX_NODE_DIRECTORY : NX_NODE_REGULAR;
		deep[i].path = strdup(path);
		deep[i].size = 1;
		deep[i].off = 500;
		append(path, sizeof(path), i ? "/d" : "d");
	}
	is_int(build(deep, 65, fr, 1, &base[1], &blen[1]), 0, "deep base (file at 64) builds");
	is_int(nx_toc_decode(base[1], blen[1], &t), 0, "deep base decodes");
	nx_toc_free(t);
	for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++) {
		int d = tab[i].deep;

		b = malloc(blen[d] + 1);
		memcpy(b, base[d], blen[d]);
		b[blen[d]] = 0;
		l = blen[d];
		tab[i].fn(b, &l);
		t = NULL;
		ok(nx_toc_decode(b, l, &t) < 0 && !t, "corrupt: %s is rejected", tab[i].name);
		nx_toc_free(t);
		{
			uint8_t *z = NULL;
			size_t zl = 0;

			t = NULL;
			ok(nx_zstd_compress(b, l, &z, &zl) == 0 &&
			   nx_toc_decode_zstd(z, zl, NX_TOC_MAX_BYTES, &t) < 0 && !t,
			   "corrupt: %s is rejected from its zstd layer too", tab[i].name);
			nx_toc_free(t);
			free(z);
		}
		free(b);
	}

	/* random single-byte damage must never crash; record what passes */
	{
		unsigned seed = 12345, accepted = 0;

		for (int i = 0; i < 20000; i++) {
			b = malloc(blen[0]);
			memcpy(b, base[0], blen[0]);
			seed = seed * 1103515245u + 12345u;
			b[(seed >> 8) % blen[0]] ^= (uint8_t)(1u << ((seed >> 4) & 7));
			t = NULL;
			if (nx_toc_decode(b, blen[0], &t) == 0)
				accepted++;
			nx_toc_free(t);
			free(b);
		}
		ok(1, "20000 random bit flips decoded without crashing (%u accepted)", accepted);
	}
	for (int i = 0; i <= 64; i++)
		free((char *)deep[i].path);
	free(base[0]);
	free(base[1]);
}

/* Pushes @z in pieces of @step bytes through a reader; the finish code. */
static int read_in_steps(const uint8_t *z, size_t zl, uint64_t zlen, const uint8_t *digest,
			 size_t cap, size_t step, struct nx_toc **out)
{
	struct nx_toc_reader *r = NULL;
	int rc;

	*out = NULL;
	rc = nx_toc_reader_new(&r, "toc of test", zlen, digest, cap);
	for (size_t off = 0; rc == 0 && off < zl; off += step)
		rc = nx_toc_reader_feed(r, z + off, zl - off < step ? zl - off : step);
	if (rc == 0)
		rc = nx_toc_reader_finish(r, out);
	nx_toc_reader_free(r);
	return rc;
}

static int same_toc(const struct nx_toc *a, const struct nx_toc *b)
{
	return a && b && a->nentries == b->nentries && a->nframes == b->nframes &&
	       a->strtab_len == b->strtab_len && a->nar_size == b->nar_size &&
	       memcmp(a->entries, b->entries, sizeof(*a->entries) * a->nentries) == 0 &&
	       memcmp(a->frames, b->frames, sizeof(*a->frames) * a->nframes) == 0 &&
	       memcmp(a->strtab, b->strtab, a->strtab_len) == 0;
}

/* The reader fed in pieces: any split gives the plain decoder's tables; the
 * digest decides before any reason; lengths other than the descriptor's
 * are refused; a declared size over the cap is refused on the first bytes. */
static void test_reader(void)
{
	static const size_t steps[] = { 1, 2, 7, 17, 18, 19, 64, 4096, 1 << 20 };
	uint8_t *raw = NULL, *z = NULL, *zz, d[NX_SHA256_LEN], bad_d[NX_SHA256_LEN];
	size_t rl = 0, zl = 0;
	struct nx_toc *a = NULL, *b = NULL;
	int all = 1;

	is_int(build(nested, 9, nested_fr, 2, &raw, &rl), 0, "reader: base builds");
	is_int(nx_zstd_compress(raw, rl, &z, &zl), 0, "reader: base compresses");
	is_int(nx_toc_decode(raw, rl, &a), 0, "reader: plain decode");
	if (!raw || !z || !a) {
		free(raw);
		free(z);
		nx_toc_free(a);
		return;
	}
	nx_sha256(z, zl, d);
	memcpy(bad_d, d, sizeof(d));
	bad_d[0] ^= 1;
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		if (read_in_steps(z, zl, zl, d, NX_TOC_MAX_BYTES, steps[i], &b) != 0 ||
		    !same_toc(a, b)) {
			diag("split in pieces of %zu differs", steps[i]);
			all = 0;
		}
		nx_toc_free(b);
	}
	ok(all, "reader: every split gives the same tables, digest checked");
	is_int(read_in_steps(z, zl, zl, bad_d, NX_TOC_MAX_BYTES, 5, &b), -EBADMSG,
	       "reader: wrong digest is -EBADMSG");
	ok(!b, "reader: nothing decoded from bytes the digest does not name");
	is_int(read_in_steps(z, zl - 1, zl, d, NX_TOC_MAX_BYTES, 64, &b), -EBADMSG,
	       "reader: fewer bytes than the descriptor, with a digest");
	is_int(read_in_steps(z, zl - 1, zl, NULL, NX_TOC_MAX_BYTES, 64, &b), -EINVAL,
	       "reader: fewer bytes than the descriptor, verified by the caller");
	is_int(read_in_steps(z, zl, zl - 1, NULL, NX_TOC_MAX_BYTES, 64, &b), -EINVAL,
	       "reader: more bytes than the descriptor");
	is_int(read_in_steps(z, zl, zl, NULL, rl - 1, 18, &b), -E2BIG,
	       "reader: declared size over the cap");
	is_int(read_in_steps(z, 18, zl, NULL, rl - 1, 18, &b), -E2BIG,
	       "reader: ... refused on the first 18 bytes");
	is_int(read_in_steps(z, zl, 0, NULL, NX_TOC_MAX_BYTES, 64, &b), -EINVAL,
	       "reader: empty descriptor");
	zz = malloc(zl);
	if (!zz)
		abort();
	memcpy(zz, z, zl);
	zz[zl / 2] ^= 0x55;
	nx_sha256(zz, zl, bad_d);
	is_int(read_in_steps(zz, zl, zl, d, NX_TOC_MAX_BYTES, 3, &b), -EBADMSG,
	       "reader: a damaged block under the old digest is a digest mismatch");
	is_int(read_in_steps(zz, zl, zl, bad_d, NX_TOC_MAX_BYTES, 3, &b), -EINVAL,
	       "reader: a damaged block that is the named blob is malformed");
	free(zz);
	nx_toc_free(a);
	free(z);
	free(raw);
}

int main(void)
{
	nx_log_set_level(NX_LOG_ERR - 1); /* the rejection cases log by design */
	test_root_file();
	test_root_symlink();
	test_nested();
	test_empty_root_and_many();
	test_builder_rejects();
	test_corruptions();
	test_zstd_layer();
	test_reader();
	return done_testing();
}
