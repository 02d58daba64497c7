/*
 * tests/unit/common-nar.c: the NAR writer against the real `nix-store --dump`
 * (byte for byte), the parser against the writer (same events, any split),
 * and the parser against a table of malformed archives.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/common.h"
#include "tests/unit/tap.h"

/* ------------------------------------------------------------ helpers */

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void buf_add(struct buf *b, const void *data, size_t len)
{
	if (b->len + len > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;

		while (cap < b->len + len)
			cap *= 2;
		b->p = realloc(b->p, cap);
		if (!b->p)
			abort();
		b->cap = cap;
	}
	if (len)
		memcpy(b->p + b->len, data, len);
	b->len += len;
}

static void buf_u64(struct buf *b, uint64_t v)
{
	uint8_t x[8];

	for (int i = 0; i < 8; i++)
		x[i] = (uint8_t)(v >> (8 * i));
	buf_add(b, x, 8);
}

static uint64_t get_u64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* str(s): length, bytes, zero padding */
static void buf_strn(struct buf *b, const void *s, size_t len)
{
	static const uint8_t zeros[8];

	buf_u64(b, len);
	buf_add(b, s, len);
	buf_add(b, zeros, (8 - len % 8) % 8);
}

static void buf_str(struct buf *b, const char *s)
{
	buf_strn(b, s, strlen(s));
}

/* Several tokens: buf_toks(b, "(", "type", "regular", NULL) */
static void buf_toks(struct buf *b, ...)
{
	va_list ap;
	const char *s;

	va_start(ap, b);
	while ((s = va_arg(ap, const char *)))
		buf_str(b, s);
	va_end(ap);
}

struct ev {
	enum nx_node_type type;
	char *path, *name, *target;
	unsigned depth;
	int exec;
	uint64_t size, off;
};

struct rec {
	struct buf out;
	struct ev *evs;
	size_t n;
	int bad_name;      /* name is not the last component of path */
	int not_flushed;   /* regular event before contents_off bytes were written */
	int fail_node_at;  /* return -EIO from the Nth event (1-based), 0 = never */
};

static int rec_write(void *ctx, const void *data, size_t len)
{
	struct rec *r = ctx;

	buf_add(&r->out, data, len);
	return 0;
}

static int rec_node(void *ctx, const struct nx_nar_node *n)
{
	struct rec *r = ctx;
	struct ev *e;
	const char *slash;
	size_t want_name;

	r->evs = realloc(r->evs, (r->n + 1) * sizeof(*r->evs));
	if (!r->evs)
		abort();
	e = &r->evs[r->n++];
	e->type = n->type;
	e->path = strndup(n->path, n->path_len);
	e->name = strndup(n->name, n->name_len);
	e->target = n->target ? strndup(n->target, n->size) : NULL;
	e->depth = n->depth;
	e->exec = n->executable;
	e->size = n->size;
	e->off = n->contents_off;
	slash = memrchr(n->path, '/', n->path_len);
	want_name = slash ? (size_t)(slash - n->path) + 1 : 0;
	if (n->name != n->path + want_name || n->name_len != n->path_len - want_name)
		r->bad_name = 1;
	if (n->type == NX_NODE_REGULAR && r->out.len != n->contents_off)
		r->not_flushed = 1;
	if (r->fail_node_at && (size_t)r->fail_node_at == r->n)
		return -EIO;
	return 0;
}

static void rec_free(struct rec *r)
{
	for (size_t i = 0; i < r->n; i++) {
		free(r->evs[i].path);
		free(r->evs[i].name);
		free(r->evs[i].target);
	}
	free(r->evs);
	free(r->out.p);
	memset(r, 0, sizeof(*r));
}

static int evs_equal(const struct rec *a, const struct rec *b)
{
	if (a->n != b->n)
		return 0;
	for (size_t i = 0; i < a->n; i++) {
		const struct ev *x = &a->evs[i], *y = &b->evs[i];

		if (x->type != y->type || strcmp(x->path, y->path) || strcmp(x->name, y->name) ||
		    x->depth != y->depth || x->exec != y->exec || x->size != y->size ||
		    x->off != y->off || !x->target != !y->target ||
		    (x->target && strcmp(x->target, y->target))) {
			diag("event %zu differs: '%s' vs '%s'", i, x->path, y->path);
			return 0;
		}
	}
	return 1;
}

static int dump(const char *path, struct rec *r)
{
	struct nx_nar_sink sink = { .ctx = r, .write = rec_write, .node = rec_node };

	return nx_nar_dump(path, &sink);
}

/* Parses @len bytes in pieces of @step (0 = all at once). */
static int parse(const uint8_t *data, size_t len, size_t step, struct rec *r)
{
	struct nx_nar_sink sink = { .ctx = r, .write = rec_write, .node = rec_node };
	struct nx_nar_parser *p;
	size_t i = 0;
	int ret = 0;

	if (nx_nar_parser_new(&p, &sink) < 0)
		return -ENOMEM;
	if (step == 0)
		step = len ? len : 1;
	while (i < len && ret == 0) {
		size_t n = len - i < step ? len - i : step;

		ret = nx_nar_parser_feed(p, data + i, n);
		i += n;
	}
	if (ret == 0) {
		ret = nx_nar_parser_finish(p);
		if (ret == 0 && nx_nar_parser_offset(p) != len)
			ret = -EPROTO;
	}
	nx_nar_parser_free(p);
	return ret;
}

static int nix_dump(const char *path, struct buf *out)
{
	char cmd[4096];
	uint8_t tmp[65536];
	FILE *f;
	size_t n;

	snprintf(cmd, sizeof(cmd), "nix-store --dump '%s'", path);
	f = popen(cmd, "r");
	if (!f)
		return -errno;
	while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
		buf_add(out, tmp, n);
	return pclose(f) == 0 ? 0 : -EIO;
}

static int on_path(const char *prog)
{
	const char *path = getenv("PATH");
	char full[4096];

	while (path && *path) {
		size_t n = strcspn(path, ":");

		snprintf(full, sizeof(full), "%.*s/%s", (int)n, path, prog);
		if (access(full, X_OK) == 0)
			return 1;
		path += n;
		if (*path == ':')
			path++;
	}
	return 0;
}

/* Repeated failures would flood stderr with the same line: silence them. */
static void quiet(int on)
{
	nx_log_set_level(on ? NX_LOG_ERR - 1 : NX_LOG_NOTICE);
}

/* Every prefix of a valid NAR is refused by finish(). */
static int all_truncations_fail(const uint8_t *nar, size_t len, size_t step)
{
	int good = 1;

	quiet(1);
	for (size_t n = 0; n < len; n++) {
		struct rec t = { 0 };

		if (parse(nar, n, step, &t) != -EINVAL)
			good = 0;
		rec_free(&t);
	}
	quiet(0);
	return good;
}

/* ----------------------------------------------------------- the tree */

static char tmpdir[] = "/tmp/nixoci-nar-XXXXXX";

static void mkfile(const char *rel, const void *data, size_t len, mode_t mode)
{
	char path[8192];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, rel);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || (len && write(fd, data, len) != (ssize_t)len)) {
		perror(path);
		exit(1);
	}
	close(fd);
	chmod(path, mode);
}

static void mkdir_rel(const char *rel)
{
	char path[8192];

	snprintf(path, sizeof(path), "%s/%s", tmpdir, rel);
	if (mkdir(path, 0755) < 0) {
		perror(path);
		exit(1);
	}
}

static void mklink(const char *rel, const char *target)
{
	char path[4096];

	snprintf(path, sizeof(path), "%s/%s", tmpdir, rel);
	if (symlink(target, path) < 0) {
		perror(path);
		exit(1);
	}
}

static void build_tree(void)
{
	static const char *sort_names[] = { "B", "a", "a-b", "a.b", "a0", "Z", "_",
					    "caf\xc3\xa9", "\xe2\x82\xac", "\xc3\xa4", "~" };
	uint8_t *big;
	size_t big_len = 3u << 20;
	uint32_t x = 12345;
	char rel[256];

	mkdir_rel("tree");
	mkfile("tree/empty", "", 0, 0644);
	mkfile("tree/one", "x", 1, 0644);
	mkfile("tree/seven", "1234567", 7, 0644);
	mkfile("tree/eight", "12345678", 8, 0444);
	mkfile("tree/nine", "123456789", 9, 0600);
	mkfile("tree/exec", "#!/bin/sh\necho hi\n", 18, 0755);
	mkfile("tree/exec-empty", "", 0, 0700);
	mkfile("tree/group-exec-only", "g", 1, 0654); /* S_IXGRP without S_IXUSR: not executable */
	big = malloc(big_len);
	for (size_t i = 0; i < big_len; i++) {
		x = x * 1103515245u + 12345u;
		big[i] = (uint8_t)(x >> 16);
	}
	mkfile("tree/big", big, big_len, 0644);
	mkfile("tree/big-odd", big, big_len - 3, 0755);
	free(big);
	mklink("tree/link-rel", "one");
	mklink("tree/link-abs", "/etc/passwd");
	mklink("tree/link-dangling", "does/not/exist");
	mklink("tree/link-dir", "sub");
	mkdir_rel("tree/emptydir");
	mkdir_rel("tree/sub");
	mkdir_rel("tree/sub/dir");
	mkdir_rel("tree/sub/dir/deep");
	mkfile("tree/sub/dir/deep/file", "deep\n", 5, 0644);
	mkdir_rel("tree/sub/dir/deep/empty");
	mkdir_rel("tree/sorting");
	for (size_t i = 0; i < sizeof(sort_names) / sizeof(sort_names[0]); i++) {
		snprintf(rel, sizeof(rel), "tree/sorting/%s", sort_names[i]);
		mkfile(rel, sort_names[i], strlen(sort_names[i]), 0644);
	}
	mkdir_rel("tree/sorting/a-dir");
	mkfile("tree/sorting/a-dir/x", "", 0, 0644);

	mkfile("hello.txt", "hello\n", 6, 0644);
	mkfile("lone-exec", "#!/bin/sh\n", 10, 0755);
	mklink("lone-link", "tree/one");
	mkdir_rel("lone-empty");
}

static int rm_rf(const char *path)
{
	char cmd[4200];

	snprintf(cmd, sizeof(cmd), "chmod -R u+rwx '%s' 2>/dev/null; rm -rf '%s'", path, path);
	return system(cmd);
}

/* ------------------------------------------------- differential tests */

static int check_contents(const char *root, const struct rec *r, const struct buf *nar)
{
	char path[8192];
	int good = 1;

	for (size_t i = 0; i < r->n; i++) {
		const struct ev *e = &r->evs[i];
		uint8_t *want;
		FILE *f;

		if (e->type != NX_NODE_REGULAR)
			continue;
		if (e->off < 8 || e->off + e->size > nar->len ||
		    get_u64(nar->p + e->off - 8) != e->size) {
			diag("%s: contents_off %llu does not follow the length", e->path,
			     (unsigned long long)e->off);
			good = 0;
			continue;
		}
		snprintf(path, sizeof(path), "%s%s%s", root, *e->path ? "/" : "", e->path);
		want = malloc(e->size + 1);
		f = fopen(path, "rb");
		if (!f || fread(want, 1, e->size + 1, f) != e->size ||
		    memcmp(want, nar->p + e->off, e->size)) {
			diag("%s: bytes at contents_off are not the file", path);
			good = 0;
		}
		if (f)
			fclose(f);
		free(want);
	}
	return good;
}

static void diff_one(const char *rel)
{
	char path[4096];
	struct rec ours = { 0 }, p1 = { 0 }, p2 = { 0 };
	struct buf theirs = { 0 };
	int r;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, rel);
	r = dump(path, &ours);
	is_int(r, 0, "%s: nx_nar_dump", rel);
	is_int(nix_dump(path, &theirs), 0, "%s: nix-store --dump", rel);
	ok(ours.out.len == theirs.len && !memcmp(ours.out.p, theirs.p, theirs.len),
	   "%s: identical to nix-store --dump (%zu vs %zu bytes)", rel, ours.out.len,
	   theirs.len);
	ok(ours.n > 0 && !ours.bad_name && !ours.not_flushed, "%s: writer events well-formed",
	   rel);
	ok(check_contents(path, &ours, &theirs), "%s: contents_off points at the file bytes",
	   rel);

	is_int(parse(theirs.p, theirs.len, 0, &p1), 0, "%s: parse whole", rel);
	ok(evs_equal(&ours, &p1), "%s: parser events = writer events (whole)", rel);
	ok(p1.out.len == theirs.len && !memcmp(p1.out.p, theirs.p, theirs.len) &&
		   !p1.not_flushed && !p1.bad_name,
	   "%s: parser passes the bytes through (whole)", rel);
	is_int(parse(theirs.p, theirs.len, 1, &p2), 0, "%s: parse 1-byte feeds", rel);
	ok(evs_equal(&ours, &p2), "%s: parser events = writer events (1-byte)", rel);
	ok(p2.out.len == theirs.len && !memcmp(p2.out.p, theirs.p, theirs.len) &&
		   !p2.not_flushed,
	   "%s: parser passes the bytes through (1-byte)", rel);
	rec_free(&p1);
	memset(&p1, 0, sizeof(p1));
	is_int(parse(theirs.p, theirs.len, 4093, &p1), 0, "%s: parse 4093-byte feeds", rel);
	ok(evs_equal(&ours, &p1), "%s: parser events = writer events (4093)", rel);
	if (theirs.len <= 4096)
		ok(all_truncations_fail(theirs.p, theirs.len, 0),
		   "%s: each of %zu truncations is refused", rel, theirs.len);

	rec_free(&ours);
	rec_free(&p1);
	rec_free(&p2);
	free(theirs.p);
}

static void test_tree_events(void)
{
	char path[4096];
	struct rec r = { 0 };
	int seen_exec = 0, seen_gexec = 0, seen_deep = 0;

	snprintf(path, sizeof(path), "%s/tree", tmpdir);
	dump(path, &r);
	ok(r.n > 0 && r.evs[0].type == NX_NODE_DIRECTORY && r.evs[0].path[0] == '\0' &&
		   r.evs[0].depth == 0,
	   "root event is the directory, path \"\", depth 0");
	for (size_t i = 0; i < r.n; i++) {
		if (!strcmp(r.evs[i].path, "exec"))
			seen_exec = r.evs[i].exec && r.evs[i].size == 18;
		if (!strcmp(r.evs[i].path, "group-exec-only"))
			seen_gexec = !r.evs[i].exec;
		if (!strcmp(r.evs[i].path, "sub/dir/deep/file"))
			seen_deep = r.evs[i].depth == 4 && !strcmp(r.evs[i].name, "file");
		if (!strcmp(r.evs[i].path, "link-abs"))
			ok(r.evs[i].type == NX_NODE_SYMLINK &&
				   !strcmp(r.evs[i].target, "/etc/passwd") && r.evs[i].size == 11,
			   "symlink event carries the target");
	}
	ok(seen_exec, "exec is executable");
	ok(seen_gexec, "only S_IXUSR counts");
	ok(seen_deep, "deep file: depth 4, name 'file'");
	rec_free(&r);
}

/* The writer refuses what Nix ≥ 2.35 would refuse, naming the file. */
static void test_writer_errors(void)
{
	char path[8192], rel[4096];
	struct rec r = { 0 };
	size_t n = 0;

	mkdir_rel("fifo-tree");
	snprintf(path, sizeof(path), "%s/fifo-tree/fifo", tmpdir);
	if (mkfifo(path, 0644) == 0) {
		snprintf(path, sizeof(path), "%s/fifo-tree", tmpdir);
		is_int(dump(path, &r), -EINVAL, "fifo is an unsupported type");
		rec_free(&r);
	}

	/* 64 nested directories: depth 0..63 is fine, a directory at 64 is not */
	n = (size_t)snprintf(rel, sizeof(rel), "deep");
	mkdir_rel(rel);
	for (int i = 1; i < NX_NAR_DEPTH_MAX; i++) {
		n += (size_t)snprintf(rel + n, sizeof(rel) - n, "/d");
		mkdir_rel(rel);
	}
	snprintf(path, sizeof(path), "%s/deep", tmpdir);
	is_int(dump(path, &r), 0, "directory at depth 63 is accepted");
	rec_free(&r);
	snprintf(rel + n, sizeof(rel) - n, "/f");
	mkfile(rel, "f", 1, 0644);
	is_int(dump(path, &r), 0, "file at depth 64 is accepted");
	{
		struct rec p = { 0 };

		is_int(parse(r.out.p, r.out.len, 0, &p), 0, "parser accepts depth 63 dirs");
		ok(evs_equal(&r, &p), "deep events agree");
		rec_free(&p);
	}
	rec_free(&r);
	unlink(path); /* no-op on a dir; the file is removed below */
	snprintf(path, sizeof(path), "%s/%s", tmpdir, rel);
	unlink(path);
	snprintf(rel + n, sizeof(rel) - n, "/d");
	mkdir_rel(rel);
	snprintf(path, sizeof(path), "%s/deep", tmpdir);
	is_int(dump(path, &r), -EINVAL, "directory at depth 64 is refused");
	rec_free(&r);

	snprintf(path, sizeof(path), "%s/does-not-exist", tmpdir);
	is_int(dump(path, &r), -ENOENT, "missing path");
	rec_free(&r);

	if (geteuid() != 0) {
		mkfile("unreadable", "secret", 6, 0000);
		snprintf(path, sizeof(path), "%s/unreadable", tmpdir);
		is_int(dump(path, &r), -EACCES, "unreadable file");
		rec_free(&r);
	}

	/* a sink error aborts the dump and comes back unchanged */
	snprintf(path, sizeof(path), "%s/tree", tmpdir);
	r.fail_node_at = 3;
	is_int(dump(path, &r), -EIO, "node() error aborts the dump");
	is_int(r.n, 3, "no event after the failing one");
	rec_free(&r);
}

/* ---------------------------------------------------- the hello vector */

static const uint8_t hello_nar[120] = {
	0x0d, 0, 0, 0, 0, 0, 0, 0, 'n', 'i', 'x', '-', 'a', 'r', 'c', 'h',
	'i', 'v', 'e', '-', '1', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
	'(', 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0,
	't', 'y', 'p', 'e', 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0,
	'r', 'e', 'g', 'u', 'l', 'a', 'r', 0, 8, 0, 0, 0, 0, 0, 0, 0,
	'c', 'o', 'n', 't', 'e', 'n', 't', 's', 6, 0, 0, 0, 0, 0, 0, 0,
	'h', 'e', 'l', 'l', 'o', '\n', 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
	')', 0, 0, 0, 0, 0, 0, 0,
};

static void test_hello(void)
{
	struct rec r = { 0 }, w = { 0 };
	char path[4096], hash[NX_NARHASH_STRLEN];
	uint8_t d[NX_SHA256_LEN];

	is_int(parse(hello_nar, sizeof(hello_nar), 1, &r), 0, "hello NAR parses");
	ok(r.n == 1 && r.evs[0].type == NX_NODE_REGULAR && r.evs[0].size == 6 &&
		   r.evs[0].off == 96 && !r.evs[0].exec && r.evs[0].depth == 0,
	   "hello NAR: one regular file, 6 bytes at offset 96");
	snprintf(path, sizeof(path), "%s/hello.txt", tmpdir);
	is_int(dump(path, &w), 0, "dump hello.txt");
	ok(w.out.len == sizeof(hello_nar) && !memcmp(w.out.p, hello_nar, sizeof(hello_nar)),
	   "writer produces the 120-byte vector");
	nx_sha256(hello_nar, sizeof(hello_nar), d);
	nx_narhash_format(d, hash);
	ok(!strcmp(hash, "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"),
	   "hello NarHash %s", hash);
	rec_free(&r);
	rec_free(&w);

	/* every truncation fails in finish(), fed whole and byte by byte */
	ok(all_truncations_fail(hello_nar, sizeof(hello_nar), 0) &&
		   all_truncations_fail(hello_nar, sizeof(hello_nar), 1),
	   "hello NAR truncated at each of 120 points is refused");
}

/* ---------------------------------------------------- malformed NARs */

/* A directory root around @body (entries), closed. */
static void dir_open(struct buf *b)
{
	buf_toks(b, "nix-archive-1", "(", "type", "directory", NULL);
}

static void entry_file(struct buf *b, const void *name, size_t nlen)
{
	buf_toks(b, "entry", "(", "name", NULL);
	buf_strn(b, name, nlen);
	buf_toks(b, "node", "(", "type", "regular", "contents", "", ")", ")", NULL);
}

struct bad {
	const char *what;
	struct buf nar;
	int want; /* -EINVAL or -E2BIG */
};

static struct bad bads[64];
static size_t nbads;

static struct buf *bad_new(const char *what, int want)
{
	struct bad *b = &bads[nbads++];

	b->what = what;
	b->want = want;
	return &b->nar;
}

static void build_bads(void)
{
	struct buf *b;
	char big[5000];
	uint8_t junk[8] = { 1, 0, 0, 0, 0, 0, 0, 0 };

	memset(big, 'a', sizeof(big));

	b = bad_new("bad magic", -EINVAL);
	buf_toks(b, "nix-archive-2", "(", "type", "regular", "contents", "", ")", NULL);

	b = bad_new("long magic", -EINVAL);
	buf_strn(b, big, 100);

	b = bad_new("empty input", -EINVAL);

	b = bad_new("unsorted entries", -EINVAL);
	dir_open(b);
	entry_file(b, "b", 1);
	entry_file(b, "a", 1);
	buf_str(b, ")");

	b = bad_new("duplicate entries", -EINVAL);
	dir_open(b);
	entry_file(b, "a", 1);
	entry_file(b, "a", 1);
	buf_str(b, ")");

	b = bad_new("prefix sorts first", -EINVAL);
	dir_open(b);
	entry_file(b, "ab", 2);
	entry_file(b, "a", 1);
	buf_str(b, ")");

	b = bad_new("name '.'", -EINVAL);
	dir_open(b);
	entry_file(b, ".", 1);
	buf_str(b, ")");

	b = bad_new("name '..'", -EINVAL);
	dir_open(b);
	entry_file(b, "..", 2);
	buf_str(b, ")");

	b = bad_new("empty name", -EINVAL);
	dir_open(b);
	entry_file(b, "", 0);
	buf_str(b, ")");

	b = bad_new("name with '/'", -EINVAL);
	dir_open(b);
	entry_file(b, "a/b", 3);
	buf_str(b, ")");

	b = bad_new("name with NUL", -EINVAL);
	dir_open(b);
	entry_file(b, "a\0b", 3);
	buf_str(b, ")");

	b = bad_new("name of 256 bytes", -E2BIG);
	dir_open(b);
	entry_file(b, big, 256);
	buf_str(b, ")");

	b = bad_new("non-zero padding in a tag", -EINVAL);
	buf_str(b, "nix-archive-1");
	buf_u64(b, 1);
	buf_add(b, "(\0\0\0\0\0\0\1", 8);

	b = bad_new("non-zero padding in contents", -EINVAL);
	buf_toks(b, "nix-archive-1", "(", "type", "regular", "contents", NULL);
	buf_u64(b, 1);
	buf_add(b, "x\0\0\0\0\1\0\0", 8);
	buf_str(b, ")");

	b = bad_new("trailing 8 bytes", -EINVAL);
	buf_add(b, hello_nar, sizeof(hello_nar));
	buf_add(b, junk, 8);

	b = bad_new("trailing 1 byte", -EINVAL);
	buf_add(b, hello_nar, sizeof(hello_nar));
	buf_add(b, junk, 1);

	b = bad_new("trailing zero bytes", -EINVAL);
	buf_add(b, hello_nar, sizeof(hello_nar));
	buf_u64(b, 0);

	b = bad_new("executable with a value", -EINVAL);
	buf_toks(b, "nix-archive-1", "(", "type", "regular", "executable", "x", "contents", "",
		 ")", NULL);

	b = bad_new("executable after contents", -EINVAL);
	buf_toks(b, "nix-archive-1", "(", "type", "regular", "contents", "x", "executable", "",
		 ")", NULL);

	b = bad_new("executable twice", -EINVAL);
	buf_toks(b, "nix-archive-1", "(", "type", "regular", "executable", "", "executable", "",
		 "contents", "", ")", NULL);

	b = bad_new("regular without contents", -EINVAL);
	buf_toks(b, "nix-archive-1", "(", "type", "regular", ")", NULL);

	b = bad_new("unknown type", -EINVAL);
	buf_toks(b, "nix-archive-1", "(", "type", "fifo", ")", NULL);

	b = bad_new("missing type tag", -EINVAL);
	buf_toks(b, "nix-archive-1", "(", "regular", "contents", "", ")", NULL);

	b = bad_new("missing open paren", -EINVAL);
	buf_toks(b, "nix-archive-1", "type", "regular", "contents", "", ")", NULL);

	b = bad_new("node before name", -EINVAL);
	dir_open(b);
	buf_toks(b, "entry", "(", "node", "(", "type", "regular", "contents", "", ")", "name",
		 "a", ")", ")", NULL);

	b = bad_new("entry without paren", -EINVAL);
	dir_open(b);
	buf_toks(b, "entry", "name", "a", NULL);

	b = bad_new("unclosed entry", -EINVAL);
	dir_open(b);
	buf_toks(b, "entry", "(", "name", "a", "node", "(", "type", "regular", "contents", "",
		 ")", "entry", NULL);

	b = bad_new("tag of 40 bytes", -EINVAL);
	buf_toks(b, "nix-archive-1", "(", NULL);
	buf_strn(b, big, 40);

	b = bad_new("symlink target empty", -EINVAL);
	buf_toks(b, "nix-archive-1", "(", "type", "symlink", "target", "", ")", NULL);

	b = bad_new("symlink target with NUL", -EINVAL);
	buf_toks(b, "nix-archive-1", "(", "type", "symlink", "target", NULL);
	buf_strn(b, "a\0b", 3);
	buf_str(b, ")");

	b = bad_new("symlink target of 4096 bytes", -E2BIG);
	buf_toks(b, "nix-archive-1", "(", "type", "symlink", "target", NULL);
	buf_strn(b, big, 4096);
	buf_str(b, ")");

	b = bad_new("symlink with contents", -EINVAL);
	buf_toks(b, "nix-archive-1", "(", "type", "symlink", "contents", "x", ")", NULL);

	b = bad_new("directory with contents", -EINVAL);
	dir_open(b);
	buf_toks(b, "contents", "", ")", NULL);

	b = bad_new("directory at depth 64", -E2BIG);
	buf_str(b, "nix-archive-1");
	for (int i = 0; i <= NX_NAR_DEPTH_MAX; i++) {
		buf_toks(b, "(", "type", "directory", NULL);
		if (i < NX_NAR_DEPTH_MAX)
			buf_toks(b, "entry", "(", "name", "d", "node", NULL);
	}
	buf_str(b, ")");
	for (int i = 0; i < NX_NAR_DEPTH_MAX; i++)
		buf_toks(b, ")", ")", NULL);

	b = bad_new("file size overflows", -E2BIG);
	buf_toks(b, "nix-archive-1", "(", "type", "regular", "contents", NULL);
	buf_u64(b, UINT64_MAX);
	buf_add(b, "x", 1);

	b = bad_new("huge file, truncated", -EINVAL);
	buf_toks(b, "nix-archive-1", "(", "type", "regular", "contents", NULL);
	buf_u64(b, 1ull << 62);
	buf_add(b, big, 100);

	b = bad_new("close paren missing at end", -EINVAL);
	buf_toks(b, "nix-archive-1", "(", "type", "regular", "contents", "x", NULL);

	b = bad_new("second root object", -EINVAL);
	buf_add(b, hello_nar, sizeof(hello_nar));
	buf_add(b, hello_nar + 24, sizeof(hello_nar) - 24);
}

static void test_malformed(void)
{
	struct buf b = { 0 };
	struct rec r = { 0 };
	char big[4096];

	build_bads();
	ok(nbads >= 15, "%zu malformed archives", nbads);
	for (size_t i = 0; i < nbads; i++) {
		struct bad *x = &bads[i];

		is_int(parse(x->nar.p, x->nar.len, 0, &r), x->want, "refused (whole): %s",
		       x->what);
		rec_free(&r);
		quiet(1);
		is_int(parse(x->nar.p, x->nar.len, 1, &r), x->want, "refused (1-byte): %s",
		       x->what);
		rec_free(&r);
		is_int(parse(x->nar.p, x->nar.len, 7, &r), x->want, "refused (7-byte): %s",
		       x->what);
		rec_free(&r);
		quiet(0);
		free(x->nar.p);
	}

	/* the limits themselves are fine */
	memset(big, 'a', sizeof(big));
	dir_open(&b);
	entry_file(&b, big, 255);
	buf_str(&b, ")");
	is_int(parse(b.p, b.len, 1, &r), 0, "name of 255 bytes is accepted");
	ok(r.n == 2 && strlen(r.evs[1].name) == 255, "long name event");
	rec_free(&r);
	b.len = 0;
	buf_toks(&b, "nix-archive-1", "(", "type", "symlink", "target", NULL);
	buf_strn(&b, big, 4095);
	buf_str(&b, ")");
	is_int(parse(b.p, b.len, 0, &r), 0, "target of 4095 bytes is accepted");
	ok(r.n == 1 && r.evs[0].size == 4095 && strlen(r.evs[0].target) == 4095,
	   "long target event");
	rec_free(&r);

	/* a node() error aborts parsing and comes back unchanged */
	r.fail_node_at = 1;
	is_int(parse(hello_nar, sizeof(hello_nar), 1, &r), -EIO, "node() error aborts parsing");
	rec_free(&r);

	/* after an error the parser stays failed */
	{
		struct nx_nar_parser *p;

		nx_nar_parser_new(&p, NULL);
		is_int(nx_nar_parser_feed(p, "\x0e\0\0\0\0\0\0\0", 8), -EINVAL,
		       "13-byte magic length mismatch is refused early");
		is_int(nx_nar_parser_feed(p, hello_nar, sizeof(hello_nar)), -EINVAL,
		       "error is sticky");
		is_int(nx_nar_parser_finish(p), -EINVAL, "finish after error");
		nx_nar_parser_free(p);

		/* NULL sink: pure validation */
		nx_nar_parser_new(&p, NULL);
		is_int(nx_nar_parser_feed(p, hello_nar, sizeof(hello_nar)), 0, "NULL sink feed");
		is_int(nx_nar_parser_finish(p), 0, "NULL sink finish");
		is_int(nx_nar_parser_offset(p), sizeof(hello_nar), "offset");
		nx_nar_parser_free(p);
	}
	free(b.p);
}

int main(void)
{
	static const char *cases[] = {
		"tree", "tree/one", "tree/empty", "tree/big", "tree/exec", "tree/link-rel",
		"tree/link-abs", "tree/link-dangling", "tree/emptydir", "tree/sorting",
		"hello.txt", "lone-exec", "lone-link", "lone-empty",
	};

	/* the malformed table needs no nix */
	test_malformed();

	if (!on_path("nix-store")) {
		printf("# nix-store not on PATH: differential tests skipped\n");
		return done_testing();
	}
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	nx_log_set_prog("common-nar");
	build_tree();
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		diff_one(cases[i]);
	test_tree_events();
	test_hello();
	test_writer_errors();
	rm_rf(tmpdir);
	return done_testing();
}
