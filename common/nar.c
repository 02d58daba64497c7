/*
 * common/nar.c: the NAR writer (nx_nar_dump) and the streaming NAR parser.
 *
 * Both produce the same node events (struct nx_nar_node), so a TOC built from
 * a local dump and one rebuilt from registry bytes can be compared entry for
 * entry. The format and the rules are reference/specs.md §5.
 *
 * Event timing, which the packer and the verifier rely on: when node() is
 * called for a regular file, write() has already received every NAR byte
 * before the file's contents, i.e. exactly @contents_off bytes. Directory and
 * symlink events carry no such promise (their bytes may still be buffered).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"

#define NAR_MAGIC "nix-archive-1"
/* Small tokens are batched into this buffer before they reach the sink. */
#define NAR_BUF_SIZE (256u << 10)
/* Longest relative path: 64 components (a file inside a directory at depth
 * 63) of at most 255 bytes, separated by '/'. */
#define NAR_REL_MAX (NX_NAR_DEPTH_MAX * (NX_NAR_NAME_MAX + 1))
/* Longest tag Nix ≥ 2.35 reads ("nix-archive-1" and "directory" are shorter). */
#define NAR_TAG_MAX 32

static size_t pad_len(uint64_t n)
{
	return (size_t)((8 - (n & 7)) & 7);
}

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* ------------------------------------------------------------- writer */

struct dumper {
	const struct nx_nar_sink *sink;
	const char *root; /* as given, for log lines */
	uint8_t *buf;
	size_t fill;
	uint64_t off; /* NAR bytes produced, delivered or still buffered */
	char *rel;
	size_t rel_len;
	char target[NX_NAR_TARGET_MAX + 2];
};

static int d_flush(struct dumper *d)
{
	int r = 0;

	if (d->fill && d->sink->write)
		r = d->sink->write(d->sink->ctx, d->buf, d->fill);
	d->fill = 0;
	return r;
}

static int d_put(struct dumper *d, const void *data, size_t len)
{
	const uint8_t *p = data;
	int r;

	while (len > 0) {
		size_t n = NAR_BUF_SIZE - d->fill;

		if (n == 0) {
			r = d_flush(d);
			if (r < 0)
				return r;
			continue;
		}
		if (n > len)
			n = len;
		memcpy(d->buf + d->fill, p, n);
		d->fill += n;
		d->off += n;
		p += n;
		len -= n;
	}
	return 0;
}

static int d_u64(struct dumper *d, uint64_t v)
{
	uint8_t b[8];

	put_le64(b, v);
	return d_put(d, b, sizeof(b));
}

static int d_pad(struct dumper *d, uint64_t n)
{
	static const uint8_t zeros[8];

	return d_put(d, zeros, pad_len(n));
}

static int d_str(struct dumper *d, const void *s, size_t len)
{
	int r = d_u64(d, len);

	if (r == 0)
		r = d_put(d, s, len);
	if (r == 0)
		r = d_pad(d, len);
	return r;
}

/* Tokens are literals: sizeof - 1 is their length. */
#define D_TOK(d, lit) d_str(d, lit, sizeof(lit) - 1)

static const char *d_sep(const struct dumper *d)
{
	return d->rel_len ? "/" : "";
}

static int d_event(struct dumper *d, enum nx_node_type type, unsigned depth, int exec,
		   uint64_t size, uint64_t contents_off, const char *target)
{
	struct nx_nar_node n = {
		.type = type,
		.path = d->rel,
		.path_len = d->rel_len,
		.depth = depth,
		.executable = exec,
		.size = size,
		.contents_off = contents_off,
		.target = target,
	};
	const char *slash = memrchr(d->rel, '/', d->rel_len);

	if (!d->sink->node)
		return 0;
	n.name = slash ? slash + 1 : d->rel;
	n.name_len = d->rel_len - (size_t)(n.name - d->rel);
	return d->sink->node(d->sink->ctx, &n);
}

static int d_regular(struct dumper *d, int at, const char *name, const struct stat *lst,
		     unsigned depth)
{
	struct stat st;
	uint64_t left;
	int fd, r;

	fd = openat(at, name, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		nx_log(NX_LOG_ERR, "nar: cannot open %s%s%s: %s", d->root, d_sep(d), d->rel,
		       strerror(-r));
		return r;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_dev != lst->st_dev ||
	    st.st_ino != lst->st_ino) {
		nx_log(NX_LOG_ERR, "nar: %s%s%s changed while it was being read", d->root,
		       d_sep(d), d->rel);
		r = -EIO;
		goto out;
	}

	r = D_TOK(d, "regular");
	if (r == 0 && (st.st_mode & S_IXUSR)) {
		r = D_TOK(d, "executable");
		if (r == 0)
			r = D_TOK(d, "");
	}
	if (r == 0)
		r = D_TOK(d, "contents");
	if (r == 0)
		r = d_u64(d, (uint64_t)st.st_size);
	if (r == 0 && d->sink->node) {
		/* the promise in the file comment: contents_off bytes delivered */
		r = d_flush(d);
		if (r == 0)
			r = d_event(d, NX_NODE_REGULAR, depth, !!(st.st_mode & S_IXUSR),
				    (uint64_t)st.st_size, d->off, NULL);
	}
	if (r < 0)
		goto out;

	/* Stream straight into the write buffer: no second copy, no big file in memory. */
	left = (uint64_t)st.st_size;
	while (left > 0) {
		size_t room = NAR_BUF_SIZE - d->fill;
		ssize_t n;

		if (room == 0) {
			r = d_flush(d);
			if (r < 0)
				goto out;
			continue;
		}
		if (room > left)
			room = (size_t)left;
		n = read(fd, d->buf + d->fill, room);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			nx_log(NX_LOG_ERR, "nar: cannot read %s%s%s: %s", d->root, d_sep(d),
			       d->rel, strerror(-r));
			goto out;
		}
		if (n == 0) {
			nx_log(NX_LOG_ERR, "nar: %s%s%s shrank while it was being read", d->root,
			       d_sep(d), d->rel);
			r = -EIO;
			goto out;
		}
		d->fill += (size_t)n;
		d->off += (uint64_t)n;
		left -= (uint64_t)n;
	}
	r = d_pad(d, (uint64_t)st.st_size);
out:
	close(fd);
	return r;
}

static int d_symlink(struct dumper *d, int at, const char *name, unsigned depth)
{
	ssize_t n = readlinkat(at, name, d->target, sizeof(d->target));
	int r;

	if (n < 0) {
		r = -errno;
		nx_log(NX_LOG_ERR, "nar: cannot read symlink %s%s%s: %s", d->root, d_sep(d),
		       d->rel, strerror(-r));
		return r;
	}
	if (n == 0 || (size_t)n > NX_NAR_TARGET_MAX) {
		nx_log(NX_LOG_ERR, "nar: symlink %s%s%s has an %s target (limit %d bytes)",
		       d->root, d_sep(d), d->rel, n ? "over-long" : "empty", NX_NAR_TARGET_MAX);
		return -EINVAL;
	}
	d->target[n] = '\0';
	r = D_TOK(d, "symlink");
	if (r == 0)
		r = D_TOK(d, "target");
	if (r == 0)
		r = d_str(d, d->target, (size_t)n);
	if (r == 0)
		r = d_event(d, NX_NODE_SYMLINK, depth, 0, (uint64_t)n, 0, d->target);
	return r;
}

static int cmp_names(const void *a, const void *b)
{
	/* strcmp compares as unsigned char: the byte order of Nix's std::map */
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int d_obj(struct dumper *d, int at, const char *name, unsigned depth);

static int d_directory(struct dumper *d, int at, const char *name, unsigned depth)
{
	char **names = NULL;
	size_t n = 0, cap = 0, saved_len = d->rel_len;
	DIR *dir = NULL;
	struct dirent *de;
	int fd, r;

	if (depth >= NX_NAR_DEPTH_MAX) {
		nx_log(NX_LOG_ERR, "nar: directory %s%s%s is nested %u levels deep (limit %d)",
		       d->root, d_sep(d), d->rel, depth, NX_NAR_DEPTH_MAX - 1);
		return -EINVAL;
	}
	r = D_TOK(d, "directory");
	if (r == 0)
		r = d_event(d, NX_NODE_DIRECTORY, depth, 0, 0, 0, NULL);
	if (r < 0)
		return r;

	fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 || !(dir = fdopendir(fd))) {
		r = -errno;
		if (fd >= 0)
			close(fd);
		nx_log(NX_LOG_ERR, "nar: cannot open directory %s%s%s: %s", d->root, d_sep(d),
		       d->rel, strerror(-r));
		return r;
	}
	for (;;) {
		size_t len;

		errno = 0;
		de = readdir(dir);
		if (!de) {
			if (errno) {
				r = -errno;
				nx_log(NX_LOG_ERR, "nar: cannot read directory %s%s%s: %s",
				       d->root, d_sep(d), d->rel, strerror(-r));
				goto out;
			}
			break;
		}
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		len = strlen(de->d_name);
		if (len > NX_NAR_NAME_MAX) {
			nx_log(NX_LOG_ERR, "nar: %s%s%s/%s: name longer than %d bytes", d->root,
			       d_sep(d), d->rel, de->d_name, NX_NAR_NAME_MAX);
			r = -EINVAL;
			goto out;
		}
		if (n == cap) {
			size_t ncap = cap ? 2 * cap : 16;
			char **nn = realloc(names, ncap * sizeof(*nn));

			if (!nn) {
				r = -ENOMEM;
				goto oom;
			}
			names = nn;
			cap = ncap;
		}
		names[n] = strdup(de->d_name);
		if (!names[n]) {
			r = -ENOMEM;
			goto oom;
		}
		n++;
	}
	if (n > 1)
		qsort(names, n, sizeof(*names), cmp_names);

	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(names[i]);

		r = D_TOK(d, "entry");
		if (r == 0)
			r = D_TOK(d, "(");
		if (r == 0)
			r = D_TOK(d, "name");
		if (r == 0)
			r = d_str(d, names[i], len);
		if (r == 0)
			r = D_TOK(d, "node");
		if (r < 0)
			goto out;
		/* room is guaranteed: depth < 64 components of ≤ 255 bytes */
		if (d->rel_len)
			d->rel[d->rel_len++] = '/';
		memcpy(d->rel + d->rel_len, names[i], len + 1);
		d->rel_len += len;
		r = d_obj(d, dirfd(dir), names[i], depth + 1);
		d->rel_len = saved_len;
		d->rel[saved_len] = '\0';
		if (r == 0)
			r = D_TOK(d, ")");
		if (r < 0)
			goto out;
	}
	r = 0;
	goto out;
oom:
	nx_log(NX_LOG_ERR, "nar: out of memory listing %s%s%s", d->root, d_sep(d), d->rel);
out:
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	closedir(dir);
	return r;
}

static int d_obj(struct dumper *d, int at, const char *name, unsigned depth)
{
	struct stat st;
	int r;

	if (fstatat(at, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		r = -errno;
		nx_log(NX_LOG_ERR, "nar: cannot stat %s%s%s: %s", d->root, d_sep(d), d->rel,
		       strerror(-r));
		return r;
	}
	if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode)) {
		nx_log(NX_LOG_ERR, "nar: %s%s%s has an unsupported file type (not a regular "
		       "file, directory or symlink)", d->root, d_sep(d), d->rel);
		return -EINVAL;
	}
	r = D_TOK(d, "(");
	if (r == 0)
		r = D_TOK(d, "type");
	if (r < 0)
		return r;
	if (S_ISREG(st.st_mode))
		r = d_regular(d, at, name, &st, depth);
	else if (S_ISLNK(st.st_mode))
		r = d_symlink(d, at, name, depth);
	else
		r = d_directory(d, at, name, depth);
	if (r == 0)
		r = D_TOK(d, ")");
	return r;
}

int nx_nar_dump(const char *path, const struct nx_nar_sink *sink)
{
	struct dumper *d;
	int r;

	d = calloc(1, sizeof(*d));
	if (!d)
		goto oom;
	d->sink = sink;
	d->root = path;
	d->buf = malloc(NAR_BUF_SIZE);
	d->rel = malloc(NAR_REL_MAX + 1);
	if (!d->buf || !d->rel)
		goto oom;
	d->rel[0] = '\0';

	r = D_TOK(d, NAR_MAGIC);
	if (r == 0)
		r = d_obj(d, AT_FDCWD, path, 0);
	if (r == 0)
		r = d_flush(d);
	goto out;
oom:
	nx_log(NX_LOG_ERR, "nar: out of memory dumping %s", path);
	r = -ENOMEM;
out:
	if (d) {
		free(d->buf);
		free(d->rel);
		free(d);
	}
	return r;
}

/* ------------------------------------------------------------- parser */

/*
 * The parser is a push state machine: feed() accepts any split of the
 * input, so every state can be suspended after any byte. Each NAR string is
 * read in three phases (8-byte length, body, zero padding); what a string
 * means depends on the grammar state that asked for it. Only file contents
 * are streamed; all other strings are buffered, capped before allocation by
 * the limit of their state (tags 32, names 255, targets 4095 bytes).
 */
enum pstate {
	P_MAGIC,
	P_OPEN,		/* "(" starting a node */
	P_TYPE,		/* "type" */
	P_TYPEVAL,	/* "regular" / "symlink" / "directory" */
	P_REG_TAG,	/* "executable" or "contents" */
	P_EXEC_VAL,	/* "" */
	P_CONTENTS_TAG, /* "contents" after "executable" "" */
	P_CONTENTS,	/* the file bytes, streamed */
	P_CLOSE,	/* ")" ending a regular file or symlink */
	P_TARGET_TAG,	/* "target" */
	P_TARGET,	/* the symlink target */
	P_DIR_TAG,	/* "entry" or ")" */
	P_ENTRY_OPEN,	/* "(" */
	P_NAME_TAG,	/* "name" */
	P_NAME,		/* the entry name */
	P_NODE_TAG,	/* "node" */
	P_ENTRY_CLOSE,	/* ")" ending an entry */
	P_DONE,
};

enum pphase {
	PH_LEN,
	PH_BODY,
	PH_PAD,
};

struct pdir {
	size_t rel_len;	/* length of the directory's own path */
	size_t prev_len;
	int has_prev;
	char prev[NX_NAR_NAME_MAX + 1];
};

struct nx_nar_parser {
	struct nx_nar_sink sink;
	enum pstate state;
	enum pphase phase;
	int err;		/* sticky: once failed, always failed */
	uint64_t off;		/* bytes consumed */
	uint8_t lenbuf[8];
	unsigned lenfill;
	uint64_t slen;		/* length of the current string */
	uint64_t got;		/* body bytes of it seen */
	size_t padleft;
	unsigned depth;		/* depth of the node being parsed */
	int exec;
	/* input of the current feed() not yet passed to sink.write */
	const uint8_t *chunk;
	size_t chunk_done;	/* written up to here */
	size_t chunk_pos;	/* consumed up to here */
	char tok[NX_NAR_TARGET_MAX + 1];
	char rel[NAR_REL_MAX + 1];
	size_t rel_len;
	size_t name_off;	/* of the current node's name in rel */
	struct pdir dirs[NX_NAR_DEPTH_MAX];
};

/* Untrusted bytes in a log line: printable ASCII only, and short. */
static const char *p_show(const char *s, size_t len, char *out, size_t cap)
{
	size_t j = 0;

	for (size_t i = 0; i < len && j + 5 < cap; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
			out[j++] = (char)c;
		} else {
			snprintf(out + j, cap - j, "\\x%02x", c);
			j += 4;
		}
	}
	out[j] = '\0';
	return out;
}

static int p_fail(struct nx_nar_parser *p, int err, const char *what)
{
	nx_log(NX_LOG_ERR, "nar: invalid archive at byte %llu%s%.*s: %s",
	       (unsigned long long)p->off, p->rel_len ? " in " : "", (int)p->rel_len, p->rel,
	       what);
	p->err = err;
	return err;
}

static int p_expected(struct nx_nar_parser *p, const char *want)
{
	char shown[64], msg[160];

	snprintf(msg, sizeof(msg), "expected '%s', got '%s'", want,
		 p_show(p->tok, (size_t)p->slen, shown, sizeof(shown)));
	return p_fail(p, -EINVAL, msg);
}

static int tok_is(const struct nx_nar_parser *p, const char *lit)
{
	size_t n = strlen(lit);

	return p->slen == n && memcmp(p->tok, lit, n) == 0;
}

/* Hands the consumed part of the current chunk to sink.write. */
static int p_pass(struct nx_nar_parser *p)
{
	int r = 0;

	if (p->chunk_pos > p->chunk_done && p->sink.write)
		r = p->sink.write(p->sink.ctx, p->chunk + p->chunk_done,
				  p->chunk_pos - p->chunk_done);
	p->chunk_done = p->chunk_pos;
	if (r < 0)
		p->err = r;
	return r;
}

static int p_event(struct nx_nar_parser *p, enum nx_node_type type, uint64_t size,
		   uint64_t contents_off, const char *target)
{
	struct nx_nar_node n = {
		.type = type,
		.path = p->rel,
		.path_len = p->rel_len,
		.name = p->rel + p->name_off,
		.name_len = p->rel_len - p->name_off,
		.depth = p->depth,
		.executable = type == NX_NODE_REGULAR ? p->exec : 0,
		.size = size,
		.contents_off = contents_off,
		.target = target,
	};
	int r;

	if (!p->sink.node)
		return 0;
	r = p_pass(p);
	if (r == 0)
		r = p->sink.node(p->sink.ctx, &n);
	if (r < 0)
		p->err = r;
	return r;
}

/* The cap on the string the current state is about to read. */
static uint64_t p_cap(const struct nx_nar_parser *p)
{
	switch (p->state) {
	case P_MAGIC:
		return sizeof(NAR_MAGIC) - 1;
	case P_NAME:
		return NX_NAR_NAME_MAX;
	case P_TARGET:
		return NX_NAR_TARGET_MAX;
	case P_CONTENTS:
		return UINT64_MAX;
	default:
		return NAR_TAG_MAX;
	}
}

/* A string's length is known: check it before any byte of it is kept. */
static int p_begin(struct nx_nar_parser *p)
{
	char msg[96];

	p->slen = get_le64(p->lenbuf);
	p->got = 0;
	if (p->slen > p_cap(p)) {
		switch (p->state) {
		case P_MAGIC:
			return p_fail(p, -EINVAL, "not a nix archive");
		case P_NAME:
			snprintf(msg, sizeof(msg), "entry name of %llu bytes (limit %d)",
				 (unsigned long long)p->slen, NX_NAR_NAME_MAX);
			return p_fail(p, -E2BIG, msg);
		case P_TARGET:
			snprintf(msg, sizeof(msg), "symlink target of %llu bytes (limit %d)",
				 (unsigned long long)p->slen, NX_NAR_TARGET_MAX);
			return p_fail(p, -E2BIG, msg);
		default:
			snprintf(msg, sizeof(msg), "tag of %llu bytes where a tag was expected",
				 (unsigned long long)p->slen);
			return p_fail(p, -EINVAL, msg);
		}
	}
	if (p->state == P_CONTENTS) {
		if (p->slen > UINT64_MAX - 16 - p->off)
			return p_fail(p, -E2BIG, "file size overflows the archive offset");
		return p_event(p, NX_NODE_REGULAR, p->slen, p->off, NULL);
	}
	return 0;
}

static int p_name(struct nx_nar_parser *p)
{
	struct pdir *dir = &p->dirs[p->depth];
	const char *s = p->tok;
	size_t n = (size_t)p->slen, m;
	char shown[64], msg[128];
	int c;

	if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.') ||
	    memchr(s, '/', n) || memchr(s, '\0', n)) {
		snprintf(msg, sizeof(msg), "invalid entry name '%s'",
			 p_show(s, n, shown, sizeof(shown)));
		return p_fail(p, -EINVAL, msg);
	}
	if (dir->has_prev) {
		m = n < dir->prev_len ? n : dir->prev_len;
		c = memcmp(s, dir->prev, m);
		if (c < 0 || (c == 0 && n <= dir->prev_len)) {
			snprintf(msg, sizeof(msg), "entry '%s' is out of order or a duplicate",
				 p_show(s, n, shown, sizeof(shown)));
			return p_fail(p, -EINVAL, msg);
		}
	}
	memcpy(dir->prev, s, n);
	dir->prev_len = n;
	dir->has_prev = 1;

	/* the child's path: fits, as depth < 64 and n ≤ 255 */
	p->rel_len = dir->rel_len;
	if (p->rel_len)
		p->rel[p->rel_len++] = '/';
	p->name_off = p->rel_len;
	memcpy(p->rel + p->rel_len, s, n);
	p->rel_len += n;
	p->rel[p->rel_len] = '\0';
	return 0;
}

/* The end of a node: back to its parent directory, or the end of the NAR. */
static void p_node_done(struct nx_nar_parser *p)
{
	if (p->depth == 0) {
		p->state = P_DONE;
		return;
	}
	p->depth--;
	p->rel_len = p->dirs[p->depth].rel_len;
	p->rel[p->rel_len] = '\0';
	/* name_off is set again by p_name before the next event */
	p->state = P_ENTRY_CLOSE;
}

/* A whole string was read (padding included): advance the grammar. */
static int p_token(struct nx_nar_parser *p)
{
	char msg[96];
	int r;

	switch (p->state) {
	case P_MAGIC:
		if (!tok_is(p, NAR_MAGIC))
			return p_fail(p, -EINVAL, "not a nix archive");
		p->state = P_OPEN;
		return 0;
	case P_OPEN:
		if (!tok_is(p, "("))
			return p_expected(p, "(");
		p->state = P_TYPE;
		return 0;
	case P_TYPE:
		if (!tok_is(p, "type"))
			return p_expected(p, "type");
		p->state = P_TYPEVAL;
		return 0;
	case P_TYPEVAL:
		if (tok_is(p, "regular")) {
			p->exec = 0;
			p->state = P_REG_TAG;
		} else if (tok_is(p, "symlink")) {
			p->state = P_TARGET_TAG;
		} else if (tok_is(p, "directory")) {
			if (p->depth >= NX_NAR_DEPTH_MAX) {
				snprintf(msg, sizeof(msg),
					 "directory nested %u levels deep (limit %d)", p->depth,
					 NX_NAR_DEPTH_MAX - 1);
				return p_fail(p, -E2BIG, msg);
			}
			p->dirs[p->depth].rel_len = p->rel_len;
			p->dirs[p->depth].has_prev = 0;
			p->state = P_DIR_TAG;
			return p_event(p, NX_NODE_DIRECTORY, 0, 0, NULL);
		} else {
			return p_expected(p, "regular', 'symlink' or 'directory");
		}
		return 0;
	case P_REG_TAG:
		if (tok_is(p, "executable")) {
			p->state = P_EXEC_VAL;
			return 0;
		}
		if (!tok_is(p, "contents"))
			return p_expected(p, "contents");
		p->state = P_CONTENTS;
		return 0;
	case P_EXEC_VAL:
		if (p->slen != 0)
			return p_fail(p, -EINVAL, "executable marker has a non-empty value");
		p->exec = 1;
		p->state = P_CONTENTS_TAG;
		return 0;
	case P_CONTENTS_TAG:
		if (!tok_is(p, "contents"))
			return p_expected(p, "contents");
		p->state = P_CONTENTS;
		return 0;
	case P_CONTENTS:
		p->state = P_CLOSE;
		return 0;
	case P_TARGET_TAG:
		if (!tok_is(p, "target"))
			return p_expected(p, "target");
		p->state = P_TARGET;
		return 0;
	case P_TARGET:
		if (p->slen == 0 || memchr(p->tok, '\0', (size_t)p->slen))
			return p_fail(p, -EINVAL, "symlink target is empty or contains NUL");
		p->tok[p->slen] = '\0';
		p->state = P_CLOSE;
		return p_event(p, NX_NODE_SYMLINK, p->slen, 0, p->tok);
	case P_CLOSE:
		if (!tok_is(p, ")"))
			return p_expected(p, ")");
		p_node_done(p);
		return 0;
	case P_DIR_TAG:
		if (tok_is(p, ")")) {
			p_node_done(p);
			return 0;
		}
		if (!tok_is(p, "entry"))
			return p_expected(p, "entry' or ')");
		p->state = P_ENTRY_OPEN;
		return 0;
	case P_ENTRY_OPEN:
		if (!tok_is(p, "("))
			return p_expected(p, "(");
		p->state = P_NAME_TAG;
		return 0;
	case P_NAME_TAG:
		if (!tok_is(p, "name"))
			return p_expected(p, "name");
		p->state = P_NAME;
		return 0;
	case P_NAME:
		r = p_name(p);
		if (r < 0)
			return r;
		p->state = P_NODE_TAG;
		return 0;
	case P_NODE_TAG:
		if (!tok_is(p, "node"))
			return p_expected(p, "node");
		p->depth++;
		p->state = P_OPEN;
		return 0;
	case P_ENTRY_CLOSE:
		if (!tok_is(p, ")"))
			return p_expected(p, ")");
		p->state = P_DIR_TAG;
		return 0;
	case P_DONE:
		break;
	}
	return p_fail(p, -EINVAL, "internal parser state");
}

int nx_nar_parser_new(struct nx_nar_parser **out, const struct nx_nar_sink *sink)
{
	struct nx_nar_parser *p = calloc(1, sizeof(*p));

	if (!p) {
		nx_log(NX_LOG_ERR, "nar: out of memory for a parser");
		return -ENOMEM;
	}
	if (sink)
		p->sink = *sink;
	p->state = P_MAGIC;
	p->phase = PH_LEN;
	*out = p;
	return 0;
}

int nx_nar_parser_feed(struct nx_nar_parser *p, const void *buf, size_t len)
{
	const uint8_t *in = buf;
	size_t i = 0;
	int r;

	if (p->err)
		return p->err;
	p->chunk = in;
	p->chunk_done = 0;

	while (i < len) {
		size_t n;

		p->chunk_pos = i;
		if (p->state == P_DONE)
			return p_fail(p, -EINVAL, "trailing bytes after the archive");

		switch (p->phase) {
		case PH_LEN:
			n = 8 - p->lenfill;
			if (n > len - i)
				n = len - i;
			memcpy(p->lenbuf + p->lenfill, in + i, n);
			p->lenfill += (unsigned)n;
			i += n;
			p->off += n;
			p->chunk_pos = i;
			if (p->lenfill < 8)
				break;
			p->lenfill = 0;
			r = p_begin(p);
			if (r < 0)
				return r;
			p->phase = PH_BODY;
			break;
		case PH_BODY:
			n = len - i;
			if (n > p->slen - p->got)
				n = (size_t)(p->slen - p->got);
			/* contents pass through; everything else fits in tok (p_cap) */
			if (p->state != P_CONTENTS)
				memcpy(p->tok + p->got, in + i, n);
			p->got += n;
			i += n;
			p->off += n;
			p->chunk_pos = i;
			break;
		case PH_PAD:
			if (in[i] != 0)
				return p_fail(p, -EINVAL, "non-zero padding");
			p->padleft--;
			i++;
			p->off++;
			p->chunk_pos = i;
			break;
		}
		if (p->phase == PH_BODY && p->got == p->slen) {
			p->phase = PH_PAD;
			p->padleft = pad_len(p->slen);
		}
		if (p->phase == PH_PAD && p->padleft == 0) {
			p->phase = PH_LEN;
			r = p_token(p);
			if (r < 0)
				return r;
		}
	}
	p->chunk_pos = len;
	r = p_pass(p);
	p->chunk = NULL;
	return r;
}

int nx_nar_parser_finish(struct nx_nar_parser *p)
{
	if (p->err)
		return p->err;
	if (p->state != P_DONE)
		return p_fail(p, -EINVAL, "archive is truncated");
	return 0;
}

uint64_t nx_nar_parser_offset(const struct nx_nar_parser *p)
{
	return p->off;
}

void nx_nar_parser_free(struct nx_nar_parser *p)
{
	free(p);
}
