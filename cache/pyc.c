/*
 * cache/pyc.c: predicting the modules a CPython program will import.
 *
 * An interpreter's cold start is a chain of imports: it reads a module's
 * .pyc, runs its module-level code, which imports the next module, whose
 * .pyc it then reads: one round trip after another. The module-level code
 * object says which modules it imports before the interpreter runs it, the
 * way an ELF file's dynamic section names its libraries (elf.c). So once a
 * .pyc's bytes are verified here, its IMPORT_NAME instructions are read
 * from the marshalled code, resolved to files of the same store path the
 * way the import system's path finder would, and the files fetched in the
 * background, all of one wave in one request; each predicted .pyc, once
 * here, is parsed in turn (depth- and budget-limited).
 *
 * Only what the interpreter will certainly read is fetched: imports in
 * the module's own code object (not in functions, which import lazily,
 * nor in class bodies), outside exception handlers and `with` blocks
 * (an `except ImportError:` fallback such as decimal's _pydecimal), and
 * before an `if __name__ == "__main__":` test. Modules the interpreter
 * has frozen in (os, codecs, ...) are never read from a file and are not
 * predicted; names that do not resolve in the same store path (another
 * store path on sys.path) are skipped. An extension module goes to the
 * library predictor (elf.c), which brings its start and its libraries.
 *
 * The marshal format and the bytecode are CPython's, per version, chosen
 * by the .pyc's magic number (3.11, 3.12, 3.13; any other: no
 * prediction). The bytes are verified frames, parsed as hostile all the
 * same: every length and index is bounded by the buffer, recursion is
 * limited, and anything unexpected means "no prediction".
 *
 * That is the run-time rule, one wave per level of the import graph. The
 * pusher runs the same parse and resolution (nx_pyc_edges, no mount) and
 * records the graph in the manifest (dev.nixoci.imports); a path that
 * carries it gets the whole closure of a module in one wave (graph_job)
 * and no parse at all.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_i.h"

/* ------------------------------------------------------------- the parser */

/* Per version: the magic number's first two bytes (then "\r\n") and the
 * opcodes read (Lib/opcode.py of each release). */
struct pyver {
	uint8_t magic[2];
	uint8_t import_name, load_const, load_name, extended_arg;
	/* COMPARE_OP (its comparison is oparg >> cmp_shift, 2 for ==) and the
	 * forward POP_JUMP_IF_FALSE (relative, in code units, from after its
	 * jif_caches inline cache entries) */
	uint8_t compare_op, cmp_shift, jump_if_false, jif_caches;
};

static const struct pyver pyvers[] = {
	{ { 0xa7, 0x0d }, 108, 100, 101, 144, 107, 0, 114, 0 }, /* 3.11: 3495 */
	{ { 0xcb, 0x0d }, 108, 100, 101, 144, 107, 4, 114, 0 }, /* 3.12: 3531 */
	{ { 0xf3, 0x0d }, 75, 83, 92, 71, 58, 5, 97, 1 },       /* 3.13: 3571 */
};

/* `if sys.platform == "win32":` and the like: the values of sys.platform
 * and os.name of other systems than the one a FUSE store serves (Linux).
 * Imports in such a block are not run (asyncio's windows_events, which
 * would bring tempfile, shutil, bz2, lzma). */
static const char *const other_platforms[] = {
	"win32", "cygwin", "msys", "nt", "darwin", "ios", "android", "emscripten", "wasi", "java",
};

#define PYC_HEADER 16
#define OP_CACHE 0    /* an inline cache entry: not an instruction */
#define FLAG_REF 0x80 /* the object is added to the back-reference table */
#define MAR_DEPTH 200 /* nesting of objects (CPython allows 2000) */

/* A marshal reader over [b, b+n). refs: the offset of each object that
 * carries FLAG_REF, in the order CPython numbers them (pre-order: an object
 * is numbered before its contents); @reg: numbering them (the first pass),
 * or not (a second walk over objects already numbered). */
struct mr {
	const uint8_t *b;
	size_t n, pos;
	uint32_t *refs;
	size_t nrefs, cap;
	int reg;
};

enum { MV_OTHER, MV_NULL, MV_NONE, MV_INT, MV_STR, MV_TUPLE, MV_CODE, MV_REF };

/* An object's value, as far as the scan needs it: MV_STR: bytes [off,
 * off+len); MV_TUPLE: len elements from off; MV_INT: i; MV_REF: the index
 * in i; MV_CODE: off is its type byte. */
struct mval {
	int kind;
	size_t off, len;
	int64_t i;
};

static uint32_t u32le(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int need(const struct mr *m, size_t k)
{
	return m->n - m->pos >= k ? 0 : -EINVAL;
}

static int ref_add(struct mr *m, size_t start)
{
	if (!m->reg)
		return 0;
	if (m->nrefs == m->cap) {
		/* each numbered object has a type byte of its own: never more
		 * than the buffer's bytes */
		size_t nc = m->cap ? 2 * m->cap : 64;
		uint32_t *nr;

		if (nc > m->n)
			nc = m->n;
		if (nc <= m->nrefs)
			return -EINVAL;
		nr = realloc(m->refs, nc * sizeof(*nr));
		if (!nr)
			return -ENOMEM;
		m->refs = nr;
		m->cap = nc;
	}
	m->refs[m->nrefs++] = (uint32_t)start;
	return 0;
}

static int r_obj(struct mr *m, unsigned depth, int shallow, struct mval *v);

/* @k objects in a row (a container's contents). */
static int r_objs(struct mr *m, unsigned depth, uint64_t k)
{
	int rc;

	/* every object takes at least one byte */
	if (k > m->n - m->pos)
		return -EINVAL;
	for (uint64_t i = 0; i < k; i++)
		if ((rc = r_obj(m, depth, 0, NULL)) < 0)
			return rc;
	return 0;
}

/* A code object (3.11 to 3.13): five 32-bit fields, then co_code,
 * co_consts, co_names, co_localsplusnames, co_localspluskinds,
 * co_filename, co_name, co_qualname, a 32-bit co_firstlineno,
 * co_linetable, co_exceptiontable. @parts gets the values of the
 * objects (code, consts, names, exceptiontable in 0, 1, 2, 10). */
static int r_code(struct mr *m, unsigned depth, struct mval *parts)
{
	int rc;

	if ((rc = need(m, 20)) < 0)
		return rc;
	m->pos += 20;
	for (unsigned k = 0; k < 10; k++) {
		if (k == 8) {
			if ((rc = need(m, 4)) < 0)
				return rc;
			m->pos += 4;
		}
		rc = r_obj(m, depth + 1, 0, parts ? &parts[k] : NULL);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/*
 * One object at m->pos (CPython's Python/marshal.c, version 4 and 5
 * types). @shallow: a container's header only (its value), for a
 * back-reference's target, whose contents were walked already. @v: its
 * value, or NULL.
 */
static int r_obj(struct mr *m, unsigned depth, int shallow, struct mval *v)
{
	struct mval tmp;
	size_t start = m->pos;
	uint64_t k;
	uint8_t code, type;
	int rc, flag;

	if (!v)
		v = &tmp;
	memset(v, 0, sizeof(*v));
	if (depth > MAR_DEPTH)
		return -EINVAL;
	if ((rc = need(m, 1)) < 0)
		return rc;
	code = m->b[m->pos++];
	flag = code & FLAG_REF;
	type = code & (uint8_t)~FLAG_REF;
	/* numbered before its contents, as CPython does; the singletons
	 * and back-references never are */
	if (flag && !strchr("0NFTS.r", type) && (rc = ref_add(m, start)) < 0)
		return rc;
	switch (type) {
	case '0':
		v->kind = MV_NULL;
		return 0;
	case 'N':
		v->kind = MV_NONE;
		return 0;
	case 'F': case 'T': case 'S': case '.':
		return 0;
	case 'i':
		if ((rc = need(m, 4)) < 0)
			return rc;
		v->kind = MV_INT;
		v->i = (int32_t)u32le(m->b + m->pos);
		m->pos += 4;
		return 0;
	case 'I': case 'g':
		k = 8;
		break;
	case 'y':
		k = 16;
		break;
	case 'f':
	case 'x':
		for (int part = 0; part < (type == 'x' ? 2 : 1); part++) {
			if ((rc = need(m, 1)) < 0)
				return rc;
			k = m->b[m->pos++];
			if ((rc = need(m, k)) < 0)
				return rc;
			m->pos += k;
		}
		return 0;
	case 'l': {
		int64_t nd;

		if ((rc = need(m, 4)) < 0)
			return rc;
		nd = (int32_t)u32le(m->b + m->pos);
		m->pos += 4;
		k = (uint64_t)(nd < 0 ? -nd : nd) * 2;
		break;
	}
	case 's': case 't': case 'u': case 'a': case 'A':
		if ((rc = need(m, 4)) < 0)
			return rc;
		k = u32le(m->b + m->pos);
		m->pos += 4;
		goto str;
	case 'z': case 'Z':
		if ((rc = need(m, 1)) < 0)
			return rc;
		k = m->b[m->pos++];
str:
		if ((rc = need(m, k)) < 0)
			return rc;
		v->kind = MV_STR;
		v->off = m->pos;
		v->len = (size_t)k;
		m->pos += k;
		return 0;
	case 'r':
		if ((rc = need(m, 4)) < 0)
			return rc;
		k = u32le(m->b + m->pos);
		m->pos += 4;
		if (k >= m->nrefs)
			return -EINVAL;
		v->kind = MV_REF;
		v->i = (int64_t)k;
		return 0;
	case '(': case '[': case '<': case '>':
		if ((rc = need(m, 4)) < 0)
			return rc;
		k = u32le(m->b + m->pos);
		m->pos += 4;
		goto seq;
	case ')':
		if ((rc = need(m, 1)) < 0)
			return rc;
		k = m->b[m->pos++];
seq:
		if (type == '(' || type == ')') {
			v->kind = MV_TUPLE;
			v->off = m->pos;
			v->len = (size_t)k;
		}
		if (shallow)
			return k <= m->n - m->pos ? 0 : -EINVAL;
		return r_objs(m, depth + 1, k);
	case '{':
		if (shallow)
			return 0;
		for (;;) {
			struct mval key;

			if ((rc = r_obj(m, depth + 1, 0, &key)) < 0)
				return rc;
			if (key.kind == MV_NULL)
				return 0;
			if ((rc = r_obj(m, depth + 1, 0, NULL)) < 0)
				return rc;
		}
	case 'c':
		v->kind = MV_CODE;
		v->off = start;
		return shallow ? 0 : r_code(m, depth, NULL);
	default:
		return -EINVAL;
	}
	if ((rc = need(m, k)) < 0)
		return rc;
	m->pos += k;
	return 0;
}

/* @v with back-references followed to the object they name. */
static int deref(const struct mr *m, struct mval *v)
{
	for (unsigned hops = 0; v->kind == MV_REF; hops++) {
		struct mr t = *m;
		int rc;

		if (hops > MAR_DEPTH || (size_t)v->i >= m->nrefs)
			return -EINVAL;
		t.pos = m->refs[v->i];
		t.reg = 0;
		if ((rc = r_obj(&t, 0, 1, v)) < 0)
			return rc;
	}
	return 0;
}

/* The elements of tuple @tup (walked again without numbering: they were
 * numbered by the first pass) as offsets into *@out (freed by the caller). */
static int tuple_elems(const struct mr *m, const struct mval *tup, uint32_t **out)
{
	struct mr t = *m;
	uint32_t *o;
	int rc;

	*out = NULL;
	if (tup->kind != MV_TUPLE || tup->len > m->n - tup->off)
		return -EINVAL;
	o = malloc((tup->len ? tup->len : 1) * sizeof(*o));
	if (!o)
		return -ENOMEM;
	t.pos = tup->off;
	t.reg = 0;
	for (size_t i = 0; i < tup->len; i++) {
		o[i] = (uint32_t)t.pos;
		if ((rc = r_obj(&t, 1, 0, NULL)) < 0) {
			free(o);
			return rc;
		}
	}
	*out = o;
	return 0;
}

/* Element @i of a tuple whose element offsets are @el (@n of them). */
static int elem(const struct mr *m, const uint32_t *el, size_t n, uint64_t i, struct mval *v)
{
	struct mr t = *m;
	int rc;

	if (i >= n)
		return -EINVAL;
	t.pos = el[i];
	t.reg = 0;
	if ((rc = r_obj(&t, 1, 1, v)) < 0)
		return rc;
	return deref(m, v);
}

static int str_is(const struct mr *m, const struct mval *v, const char *s)
{
	return v->kind == MV_STR && v->len == strlen(s) && memcmp(m->b + v->off, s, v->len) == 0;
}

/* A module name the path finder can look up: ASCII identifiers joined by
 * single dots (@dotted), or one identifier. */
static int name_ok(const uint8_t *s, size_t n, int dotted)
{
	if (!n || n > NX_PYC_NAME_MAX || s[0] == '.' || s[n - 1] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		uint8_t c = s[i];

		if (c == '.' && dotted && s[i + 1] != '.')
			continue;
		if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9')))
			return 0;
	}
	return s[0] < '0' || s[0] > '9';
}

static void add_item(struct nx_pyc_imports *out, unsigned level, const struct mval *name,
		     const struct mval *sub)
{
	struct nx_pyc_item *it;

	if (out->n >= NX_PYC_ITEMS_MAX)
		return;
	it = &out->item[out->n++];
	it->level = level;
	it->name_off = (uint32_t)name->off;
	it->name_len = (uint32_t)name->len;
	it->sub_off = sub ? (uint32_t)sub->off : 0;
	it->sub_len = sub ? (uint32_t)sub->len : 0;
}

/* 1 when code unit @u is inside an exception handler or a `with` body:
 * covered by an entry of the exception table that pushes the last
 * instruction's offset (CPython's Objects/exception_handling_notes.txt:
 * start, length, target, depth << 1 | lasti, as varints of 6 bits with
 * 0x40 for "more" and 0x80 on an entry's first byte). */
static int in_handler(const uint8_t *t, size_t n, uint64_t u)
{
	size_t i = 0;

	while (i < n) {
		uint64_t f[4];

		for (int k = 0; k < 4; k++) {
			uint64_t val;
			uint8_t c;

			if (i >= n)
				return 0;
			c = t[i++];
			val = c & 63;
			while (c & 64) {
				if (i >= n || val > (UINT64_C(1) << 40))
					return 0;
				c = t[i++];
				val = val << 6 | (c & 63);
			}
			f[k] = val;
		}
		if ((f[3] & 1) && u >= f[0] && u - f[0] < f[1])
			return 1;
	}
	return 0;
}

int nx_pyc_parse(const uint8_t *buf, size_t len, struct nx_pyc_imports *out)
{
	const struct pyver *ver = NULL;
	struct mr m = { .b = buf, .n = len, .pos = PYC_HEADER, .reg = 1 };
	struct mval top, parts[10], code, consts, names, etab;
	uint32_t *cel = NULL, *nel = NULL;
	struct { uint8_t op; uint32_t arg; } prev[2] = { { 0, 0 }, { 0, 0 } };
	uint32_t ext = 0;
	uint64_t skip_until = 0; /* code units of a block for another platform */
	int plat = 0;            /* steps of `LOAD_CONST "win32"; COMPARE_OP ==` seen */
	int rc;

	out->n = 0;
	if (len < PYC_HEADER + 1 || buf[2] != '\r' || buf[3] != '\n')
		return -EINVAL;
	for (size_t i = 0; i < sizeof(pyvers) / sizeof(pyvers[0]); i++)
		if (buf[0] == pyvers[i].magic[0] && buf[1] == pyvers[i].magic[1])
			ver = &pyvers[i];
	if (!ver)
		return -ENOTSUP;
	memset(parts, 0, sizeof(parts));
	/* the whole file, numbering back-references as CPython does */
	if ((buf[PYC_HEADER] & (uint8_t)~FLAG_REF) != 'c') {
		rc = -EINVAL;
		goto out;
	}
	rc = r_obj(&m, 0, 1, &top); /* numbers it, reads the type byte */
	if (rc == 0)
		rc = r_code(&m, 0, parts);
	if (rc == 0 && m.pos != len)
		rc = -EINVAL; /* a .pyc holds one code object and nothing after */
	if (rc < 0)
		goto out;
	code = parts[0];
	consts = parts[1];
	names = parts[2];
	etab = parts[9];
	if ((rc = deref(&m, &code)) < 0 || (rc = deref(&m, &consts)) < 0 ||
	    (rc = deref(&m, &names)) < 0 || (rc = deref(&m, &etab)) < 0)
		goto out;
	rc = -EINVAL;
	if (code.kind != MV_STR || consts.kind != MV_TUPLE || names.kind != MV_TUPLE ||
	    etab.kind != MV_STR || code.len % 2)
		goto out;
	if ((rc = tuple_elems(&m, &consts, &cel)) < 0 || (rc = tuple_elems(&m, &names, &nel)) < 0)
		goto out;
	for (size_t u = 0; u < code.len / 2; u++) {
		uint8_t op = buf[code.off + 2 * u];
		uint32_t arg = ext | buf[code.off + 2 * u + 1];
		struct mval a, b, c;

		if (op == OP_CACHE)
			continue; /* not an instruction: the platform test goes on */
		if (op == ver->extended_arg) {
			if (arg > (UINT32_C(1) << 23))
				break; /* no real code has 2^31 constants */
			ext = arg << 8;
			continue;
		}
		ext = 0;
		if (plat == 2 && op == ver->jump_if_false)
			skip_until = u + 1 + ver->jif_caches + (uint64_t)arg;
		plat = plat == 1 && op == ver->compare_op && (arg >> ver->cmp_shift) == 2 ? 2 : 0;
		if (op == ver->load_const && elem(&m, cel, consts.len, arg, &a) == 0 && a.kind == MV_STR)
			for (size_t k = 0; k < sizeof(other_platforms) / sizeof(other_platforms[0]); k++)
				if (str_is(&m, &a, other_platforms[k]))
					plat = 1;
		if (op == ver->load_const && prev[0].op == ver->load_name &&
		    elem(&m, cel, consts.len, arg, &a) == 0 && str_is(&m, &a, "__main__") &&
		    elem(&m, nel, names.len, prev[0].arg, &b) == 0 && str_is(&m, &b, "__name__"))
			break; /* `if __name__ == "__main__":` and what follows */
		if (op == ver->import_name && u >= skip_until && prev[0].op == ver->load_const &&
		    prev[1].op == ver->load_const && !in_handler(buf + etab.off, etab.len, u) &&
		    elem(&m, nel, names.len, arg, &a) == 0 && a.kind == MV_STR &&
		    elem(&m, cel, consts.len, prev[0].arg, &b) == 0 &&
		    elem(&m, cel, consts.len, prev[1].arg, &c) == 0 && c.kind == MV_INT &&
		    c.i >= 0 && c.i <= NX_PYC_LEVEL_MAX &&
		    (a.len == 0 ? c.i > 0 : name_ok(buf + a.off, a.len, 1))) {
			unsigned level = (unsigned)c.i;

			/* `from X import Y`: X, then X.Y where that is a module */
			if (a.len)
				add_item(out, level, &a, NULL);
			if (b.kind == MV_TUPLE) {
				uint32_t *fel = NULL;

				if (tuple_elems(&m, &b, &fel) == 0)
					for (size_t k = 0; k < b.len; k++) {
						struct mval s;

						if (elem(&m, fel, b.len, k, &s) == 0 && s.kind == MV_STR &&
						    name_ok(buf + s.off, s.len, 0))
							add_item(out, level, &a, &s);
					}
				free(fel);
			}
		}
		prev[1] = prev[0];
		prev[0].op = op;
		prev[0].arg = arg;
	}
	rc = 0;
out:
	free(nel);
	free(cel);
	free(m.refs);
	if (rc < 0)
		out->n = 0;
	return rc;
}

/* ------------------------------------------------------------ resolution */

/* Modules CPython 3.11 to 3.13 have frozen in (Python/frozen.c; the
 * standard build uses them): never read from a file. The importlib
 * bootstrap is frozen as _frozen_importlib*. */
static const char *const frozen[] = {
	"_collections_abc", "_sitebuiltins", "abc", "codecs", "genericpath",
	"importlib._bootstrap", "importlib._bootstrap_external", "importlib.machinery",
	"importlib.util", "io", "ntpath", "os", "os.path", "posixpath", "runpy", "site",
	"stat", "zipimport",
};

#define NOFILE UINT32_MAX

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* What a job knows of the .pyc it parses: where its imports resolve.
 * Without @st (nx_pyc_edges, at push time) every resolved file goes to
 * next[], extension modules included. */
struct pyres {
	struct nx_store *st;
	struct nx_spath *p;
	const struct nx_toc *toc;
	char tag[NX_PYC_NAME_MAX + 1]; /* its ending, ".cpython-311.pyc" */
	char ext[NX_PYC_NAME_MAX + 1]; /* extension modules': ".cpython-311-" */
	uint32_t root, dynload;        /* NOFILE: none */
	uint32_t pkg;                  /* the package it is in (for level 1) */
	uint32_t *next;                /* the next wave's files */
	unsigned nnext;
};

static int64_t child(const struct nx_toc *toc, uint32_t dir, const char *name, size_t n)
{
	if (dir == NOFILE || toc->entries[dir].type != NX_NODE_DIRECTORY)
		return -1;
	return nx_toc_lookup(toc, dir, name, n);
}

static int is_type(const struct nx_toc *toc, int64_t e, int type)
{
	return e >= 0 && toc->entries[e].type == type;
}

static int has_init(const struct nx_toc *toc, uint32_t dir)
{
	return is_type(toc, child(toc, dir, "__init__.py", 11), NX_NODE_REGULAR);
}

/* The .pyc of module @name (@n bytes) whose source is in @dir. */
static uint32_t pyc_of(const struct pyres *c, uint32_t dir, const char *name, size_t n)
{
	char buf[2 * NX_PYC_NAME_MAX + 2];
	int64_t pc = child(c->toc, dir, "__pycache__", 11), f;
	int m = snprintf(buf, sizeof(buf), "%.*s%s", (int)n, name, c->tag);

	if (pc < 0 || m < 0 || (size_t)m >= sizeof(buf))
		return NOFILE;
	f = child(c->toc, (uint32_t)pc, buf, (size_t)m);
	return is_type(c->toc, f, NX_NODE_REGULAR) ? (uint32_t)f : NOFILE;
}

/* The dotted name of the module @name in package directory @dir (below
 * the root), for the frozen list; 0, or -1 when it does not fit. */
static int dotted(const struct pyres *c, uint32_t dir, const char *name, size_t n, char *out,
		  size_t cap)
{
	size_t len = n, k = 0;
	uint32_t d;

	if (n >= cap)
		return -1;
	memcpy(out + cap - n - 1, name, n);
	out[cap - 1] = 0;
	for (d = dir; d != c->root && d != 0 && k++ < 64; d = c->toc->entries[d].parent) {
		size_t dn = 0;
		const char *s = nx_toc_name(c->toc, d, &dn);

		if (!s || len + dn + 1 >= cap)
			return -1;
		len += dn + 1;
		memcpy(out + cap - len - 1, s, dn);
		out[cap - len - 1 + dn] = '.';
	}
	if (d != c->root)
		return -1;
	memmove(out, out + cap - len - 1, len + 1);
	return 0;
}

static int is_frozen(const struct pyres *c, uint32_t dir, const char *name, size_t n)
{
	char full[2 * NX_PYC_NAME_MAX + 2];

	if (dotted(c, dir, name, n, full, sizeof(full)) < 0)
		return 0;
	for (size_t i = 0; i < sizeof(frozen) / sizeof(frozen[0]); i++)
		if (strcmp(full, frozen[i]) == 0)
			return 1;
	return 0;
}

enum { R_NONE, R_PKG, R_MOD, R_EXT };

/*
 * Module @name (@n bytes, one identifier) in directory @dir, in the order
 * of CPython's path finder (FileFinder.find_spec): a package directory
 * with an __init__, an extension module (NAME.cpython-3XY-*.so,
 * NAME.abi3.so, NAME.so), a source module (NAME.py, whose .pyc in
 * __pycache__ is what is read), a directory without __init__ (a namespace
 * package). *@file: the file the import reads (NOFILE: none); *@dirout:
 * a package's directory.
 */
static int find_in(const struct pyres *c, uint32_t dir, const char *name, size_t n,
		   uint32_t *file, uint32_t *dirout)
{
	const struct nx_toc *toc = c->toc;
	const struct nx_toc_entry *d;
	char buf[NX_PYC_NAME_MAX + 4];
	int64_t sub = child(toc, dir, name, n), f;

	*file = NOFILE;
	*dirout = NOFILE;
	if (sub >= 0 && toc->entries[sub].type == NX_NODE_DIRECTORY && has_init(toc, (uint32_t)sub)) {
		*dirout = (uint32_t)sub;
		*file = pyc_of(c, (uint32_t)sub, "__init__", 8);
		return R_PKG;
	}
	d = &toc->entries[dir];
	for (uint32_t k = d->first_child; k - d->first_child < d->nchildren; k++) {
		size_t en = 0;
		const char *s = nx_toc_name(toc, k, &en);
		size_t xl = strlen(c->ext);

		if (!s || en <= n + 3 || memcmp(s, name, n) != 0 || s[n] != '.' ||
		    memcmp(s + en - 3, ".so", 3) != 0 || toc->entries[k].type != NX_NODE_REGULAR)
			continue;
		if ((xl && en - n > xl + 3 && memcmp(s + n, c->ext, xl) == 0) ||
		    (en - n == 8 && memcmp(s + n, ".abi3.so", 8) == 0) || en - n == 3) {
			*file = k;
			return R_EXT;
		}
	}
	if (n + 3 < sizeof(buf)) {
		memcpy(buf, name, n);
		memcpy(buf + n, ".py", 3);
		f = child(toc, dir, buf, n + 3);
		if (is_type(toc, f, NX_NODE_REGULAR)) {
			*file = pyc_of(c, dir, name, n);
			return R_MOD;
		}
	}
	if (sub >= 0 && toc->entries[sub].type == NX_NODE_DIRECTORY) {
		*dirout = (uint32_t)sub;
		return R_PKG;
	}
	return R_NONE;
}

static void predict_file(struct pyres *c, int kind, uint32_t dir, const char *name, size_t n,
			 uint32_t file)
{
	if (file == NOFILE || is_frozen(c, dir, name, n))
		return;
	if (!c->st) {
		for (unsigned i = 0; i < c->nnext; i++)
			if (c->next[i] == file)
				return;
		if (c->nnext < NX_PYC_WAVE_MAX)
			c->next[c->nnext++] = file;
		return;
	}
	if (kind == R_EXT) {
		/* counted once: many imports name one extension (from _json
		 * import a, b) */
		if (!nx_pred_first_time(c->st, c->st->pyc_seen, NX_PYC_SEEN_SLOTS, &c->st->pyc_nseen,
					NX_PYC_FILES, c->p, file))
			return;
		nx_log(NX_LOG_DEBUG, "predict: %s/%s: import of extension %.*s, entry %u",
		       NX_STORE_DIR, c->p->base, (int)n, name, file);
		nx_stat_add(&c->st->pred_import, 1);
		nx_elf_predict(c->st, c->p, file);
		return;
	}
	if (c->nnext < NX_PYC_WAVE_MAX &&
	    nx_pred_first_time(c->st, c->st->pyc_seen, NX_PYC_SEEN_SLOTS, &c->st->pyc_nseen,
			       NX_PYC_FILES, c->p, file))
		c->next[c->nnext++] = file;
}

/* One import of a parsed .pyc (@buf): the files it reads, into the wave. */
static void resolve_item(struct pyres *c, const uint8_t *buf, const struct nx_pyc_item *it)
{
	const char *name = (const char *)buf + it->name_off, *end = name + it->name_len;
	uint32_t dir, file, sub;
	int kind = R_PKG;

	if (it->level == 0) {
		dir = c->root;
	} else {
		/* the importing module's package, then one up per level, never
		 * above the top-level package (CPython: an error) */
		dir = c->pkg;
		for (unsigned l = 1; l < it->level && dir != c->root && dir != NOFILE; l++)
			dir = dir ? c->toc->entries[dir].parent : NOFILE;
		if (dir == c->root || dir == NOFILE)
			return;
	}
	if (dir == NOFILE)
		return;
	while (name < end) {
		const char *dot = memchr(name, '.', (size_t)(end - name));
		size_t n = dot ? (size_t)(dot - name) : (size_t)(end - name);

		kind = find_in(c, dir, name, n, &file, &sub);
		/* a top-level extension module is in lib-dynload, next on sys.path */
		if (kind == R_NONE && dir == c->root && c->dynload != NOFILE)
			kind = find_in(c, c->dynload, name, n, &file, &sub);
		if (kind == R_NONE)
			return;
		predict_file(c, kind, dir, name, n, file);
		if (kind != R_PKG)
			return; /* a module has no submodules: X.Y is not a file */
		dir = sub;
		name += n + (dot != NULL);
	}
	/* `from X import Y`: Y is a submodule only if X is a package with one */
	if (it->sub_len && kind == R_PKG) {
		const char *s = (const char *)buf + it->sub_off;

		kind = find_in(c, dir, s, it->sub_len, &file, &sub);
		if (kind != R_NONE)
			predict_file(c, kind, dir, s, it->sub_len, file);
	}
}

/* Where the imports of .pyc @entry resolve: -ENOENT when it is not one
 * (a regular file NAME.TAG in a __pycache__ directory). */
static int pyres_init(struct pyres *c, uint32_t entry)
{
	const struct nx_toc *toc = c->toc;
	const char *name, *dot, *pcn;
	size_t n = 0, pn = 0;
	uint32_t pc, src, d;
	int64_t dl;

	name = nx_toc_name(toc, entry, &n);
	if (!name || entry == 0 || n < 5 || memcmp(name + n - 4, ".pyc", 4) != 0)
		return -ENOENT;
	pc = toc->entries[entry].parent;
	pcn = nx_toc_name(toc, pc, &pn);
	if (pc == 0 || !pcn || pn != 11 || memcmp(pcn, "__pycache__", 11) != 0)
		return -ENOENT;
	dot = memchr(name, '.', n);
	if (!dot || dot == name || (size_t)(name + n - dot) > NX_PYC_NAME_MAX)
		return -ENOENT;
	memcpy(c->tag, dot, (size_t)(name + n - dot));
	c->tag[name + n - dot] = 0;
	/* ".cpython-311.pyc" -> ".cpython-311-" (".cpython-311-x86_64-linux-gnu.so") */
	c->ext[0] = 0;
	if (strncmp(c->tag, ".cpython-", 9) == 0) {
		size_t k = strcspn(c->tag + 1, ".") + 1;

		memcpy(c->ext, c->tag, k);
		c->ext[k] = '-';
		c->ext[k + 1] = 0;
	}
	src = toc->entries[pc].parent;
	c->pkg = src;
	/* the root: the directory above the top-level package */
	d = src;
	for (unsigned k = 0; has_init(toc, d) && k < 64; k++) {
		if (d == 0) {
			d = NOFILE;
			break;
		}
		d = toc->entries[d].parent;
	}
	c->root = d;
	dl = d == NOFILE ? -1 : child(toc, d, "lib-dynload", 11);
	c->dynload = is_type(toc, dl, NX_NODE_DIRECTORY) ? (uint32_t)dl : NOFILE;
	return 0;
}

static int looks_pyc(const struct nx_toc *toc, uint32_t entry, const uint8_t *buf, size_t len);

int nx_pyc_edges(const struct nx_toc *toc, uint32_t entry, const uint8_t *buf, size_t len,
		 uint32_t *out, unsigned cap, unsigned *n)
{
	struct nx_pyc_imports *imp;
	struct pyres c = { 0 };
	int rc;

	*n = 0;
	if (entry >= toc->nentries || toc->entries[entry].type != NX_NODE_REGULAR ||
	    len != toc->entries[entry].size || len <= PYC_HEADER ||
	    !looks_pyc(toc, entry, buf, len))
		return -ENOENT;
	c.toc = toc;
	if (pyres_init(&c, entry) < 0)
		return -ENOENT;
	c.next = malloc(NX_PYC_WAVE_MAX * sizeof(*c.next));
	imp = malloc(sizeof(*imp));
	rc = c.next && imp ? nx_pyc_parse(buf, len, imp) : -ENOMEM;
	if (rc == 0) {
		for (unsigned k = 0; k < imp->n; k++)
			resolve_item(&c, buf, &imp->item[k]);
		qsort(c.next, c.nnext, sizeof(*c.next), cmp_u32);
		for (unsigned k = 0; k < c.nnext && *n < cap; k++)
			if (c.next[k] != entry)
				out[(*n)++] = c.next[k];
	}
	free(imp);
	free(c.next);
	return rc;
}

/* ------------------------------------------------------------ prediction */

/* The frames of the wave's files that are not cached, in few requests:
 * runs of adjacent frames, NX_MULTI_RUNS runs per request. -ENOSPC when
 * they do not fit the prediction budget. */
static int fetch_wave(struct nx_store *st, struct nx_spath *p, const uint32_t *files, unsigned n)
{
	const struct nx_toc *toc = p->toc;
	struct nx_frun *runs = NULL;
	uint32_t *fr = NULL, a, b;
	size_t nf = 0, cap = 0, nr = 0;
	uint64_t bytes = 0;
	int rc = 0;

	for (unsigned i = 0; i < n && rc == 0; i++) {
		const struct nx_toc_entry *e = &toc->entries[files[i]];

		if (!e->size || nx_toc_frames_for(toc, e->off, e->size, &a, &b) < 0)
			continue;
		for (uint32_t k = a; k <= b; k++) {
			if (nx_chunk_known(st, toc->frames[k].sha256))
				continue;
			if (nf == cap) {
				size_t nc = cap ? 2 * cap : 64;
				uint32_t *t = realloc(fr, nc * sizeof(*t));

				if (!t) {
					rc = -ENOMEM;
					break;
				}
				fr = t;
				cap = nc;
			}
			fr[nf++] = k;
		}
	}
	if (rc < 0 || !nf)
		goto out;
	qsort(fr, nf, sizeof(*fr), cmp_u32);
	runs = malloc(nf * sizeof(*runs));
	if (!runs) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t k = 0; k < nf; k++) {
		if (k && fr[k] == fr[k - 1])
			continue;
		bytes += toc->frames[fr[k]].clen;
		if (nr && runs[nr - 1].last + 1 == fr[k])
			runs[nr - 1].last = fr[k];
		else
			runs[nr++] = (struct nx_frun){ fr[k], fr[k] };
	}
	rc = nx_pred_budget_take(st, p, files[0], bytes);
	if (rc < 0)
		goto out;
	nx_log(NX_LOG_DEBUG, "predict: %s/%s: %u imported files, %zu runs of frames", NX_STORE_DIR,
	       p->base, n, nr);
	for (size_t k = 0; k < nr && !nx_bg_stopped(st); k += NX_MULTI_RUNS) {
		rc = nx_frames_fetch_runs(st, p, runs + k, nr - k < NX_MULTI_RUNS ? nr - k : NX_MULTI_RUNS);
		if (rc == -ECANCELED)
			break;
		rc = 0;
	}
out:
	free(runs);
	free(fr);
	return rc;
}

/* The first edge from @from in the sorted edge list @e (@n edges). */
static size_t first_edge(const uint32_t *e, size_t n, uint32_t from)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (e[2 * mid] < from)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/*
 * With the import graph the pusher recorded (dev.nixoci.imports): every
 * file @entry imports, directly or not, in one wave, instead of one wave
 * per level of the graph. The files of the closure are marked as seen,
 * so their own reads start nothing; a file seen before was the start or
 * part of a closure already, so the walk stops there. The graph only
 * names entries of this path (checked against its TOC on load), so a
 * wrong one fetches verified frames of this path, within the budget.
 */
static void graph_job(struct nx_store *st, struct nx_spath *p, uint32_t entry)
{
	const struct nx_toc *toc = p->toc;
	const uint32_t *e = p->man.imports;
	size_t ne = p->man.nimports;
	uint32_t *q = malloc(NX_PYC_FILES * sizeof(*q));
	unsigned nq = 0, nwave = 0;

	if (!q)
		return;
	q[nq++] = entry;
	for (unsigned head = 0; head < nq && !nx_bg_stopped(st); head++) {
		for (size_t k = first_edge(e, ne, q[head]); k < ne && e[2 * k] == q[head]; k++) {
			uint32_t to = e[2 * k + 1];
			const struct nx_toc_entry *te = &toc->entries[to];
			size_t n = 0;
			const char *name = nx_toc_name(toc, to, &n);
			int ext = name && n > 3 && memcmp(name + n - 3, ".so", 3) == 0;

			if (te->type != NX_NODE_REGULAR || (!ext && te->size > NX_PYC_MAX_BYTES) || !name ||
			    nq >= NX_PYC_FILES ||
			    !nx_pred_first_time(st, st->pyc_seen, NX_PYC_SEEN_SLOTS, &st->pyc_nseen,
						NX_PYC_FILES, p, to))
				continue;
			if (ext) {
				nx_log(NX_LOG_DEBUG, "predict: %s/%s: import of extension %.*s, entry %u",
				       NX_STORE_DIR, p->base, (int)n, name, to);
				nx_stat_add(&st->pred_import, 1);
				nx_elf_predict(st, p, to);
				continue;
			}
			q[nq++] = to;
			nwave++;
		}
	}
	/* q[1..]: the .pyc files of the closure, in walk order */
	if (nwave && !nx_bg_stopped(st) && fetch_wave(st, p, q + 1, nwave) == 0)
		nx_stat_add(&st->pred_import, nwave);
	free(q);
}

void nx_pyc_job(struct nx_store *st, struct nx_spath *p, uint32_t entry)
{
	struct nx_pyc_imports *imp = malloc(sizeof(*imp));
	struct pyres *c = calloc(1, sizeof(*c));
	uint32_t *wave = malloc(NX_PYC_WAVE_MAX * sizeof(*wave));
	uint32_t *next = malloc(NX_PYC_WAVE_MAX * sizeof(*next));
	uint8_t *buf = NULL;
	size_t cap = 0;
	unsigned nwave = 1;
	int rc;

	if (p->man.nimports) {
		graph_job(st, p, entry);
		goto out;
	}
	if (!imp || !c || !wave || !next)
		goto out;
	wave[0] = entry;
	c->st = st;
	c->p = p;
	c->toc = p->toc;
	c->next = next;
	for (unsigned depth = 0; nwave && depth <= NX_PYC_DEPTH_MAX; depth++) {
		uint32_t *t;

		c->nnext = 0;
		for (unsigned i = 0; i < nwave && !nx_bg_stopped(st); i++) {
			uint64_t size = c->toc->entries[wave[i]].size;

			if (size <= PYC_HEADER || size > NX_PYC_MAX_BYTES || pyres_init(c, wave[i]) < 0)
				continue;
			if (size > cap) {
				uint8_t *nb = realloc(buf, (size_t)size);

				if (!nb)
					goto out;
				buf = nb;
				cap = (size_t)size;
			}
			if (!buf)
				continue;
			rc = nx_file_read(st, p, wave[i], 0, buf, (size_t)size);
			if (rc == 0)
				rc = nx_pyc_parse(buf, (size_t)size, imp);
			if (rc < 0) {
				nx_log(NX_LOG_DEBUG, "predict: %s/%s entry %u: no imports to predict (%s)",
				       NX_STORE_DIR, p->base, wave[i], strerror(-rc));
				continue;
			}
			for (unsigned k = 0; k < imp->n; k++)
				resolve_item(c, buf, &imp->item[k]);
		}
		if (!c->nnext || nx_bg_stopped(st) || fetch_wave(st, p, next, c->nnext) < 0)
			break;
		nx_stat_add(&st->pred_import, c->nnext);
		t = wave;
		wave = next;
		next = t;
		c->next = next;
		nwave = c->nnext;
	}
out:
	free(buf);
	free(next);
	free(wave);
	free(c);
	free(imp);
}

int nx_pyc_named(const struct nx_toc *toc, uint32_t entry)
{
	const struct nx_toc_entry *e = &toc->entries[entry];
	const char *name, *dir;
	size_t n = 0, dn = 0;

	if (entry == 0 || e->type != NX_NODE_REGULAR || e->size <= PYC_HEADER ||
	    e->size > NX_PYC_MAX_BYTES)
		return 0;
	name = nx_toc_name(toc, entry, &n);
	dir = e->parent ? nx_toc_name(toc, e->parent, &dn) : NULL;
	return name && n > 4 && memcmp(name + n - 4, ".pyc", 4) == 0 && dir && dn == 11 &&
	       memcmp(dir, "__pycache__", 11) == 0;
}

/* A .pyc of a known version in a __pycache__ directory. */
static int looks_pyc(const struct nx_toc *toc, uint32_t entry, const uint8_t *buf, size_t len)
{
	int known = 0;

	if (len < PYC_HEADER || buf[2] != '\r' || buf[3] != '\n')
		return 0;
	for (size_t i = 0; i < sizeof(pyvers) / sizeof(pyvers[0]); i++)
		known |= buf[0] == pyvers[i].magic[0] && buf[1] == pyvers[i].magic[1];
	return known && nx_pyc_named(toc, entry);
}

void nx_pyc_seen(struct nx_store *st, struct nx_spath *p, uint32_t entry, const uint8_t *buf,
		 size_t len)
{
	/* a read-only cache keeps nothing a prediction would fetch */
	if (!st->ra_max || st->readonly || nx_bg_stopped(st) || !looks_pyc(p->toc, entry, buf, len))
		return;
	if (nx_pred_first_time(st, st->pyc_seen, NX_PYC_SEEN_SLOTS, &st->pyc_nseen, NX_PYC_FILES, p,
			       entry))
		nx_ra_queue_pyc(st, p, entry);
}

void nx_pyc_miss(struct nx_store *st, struct nx_spath *p, uint32_t entry)
{
	size_t k;

	/* only a file the graph has edges from: the graph's .pyc files */
	if (!p->man.nimports || !st->ra_max || st->readonly || nx_bg_stopped(st))
		return;
	k = first_edge(p->man.imports, p->man.nimports, entry);
	if (k < p->man.nimports && p->man.imports[2 * k] == entry &&
	    nx_pred_first_time(st, st->pyc_seen, NX_PYC_SEEN_SLOTS, &st->pyc_nseen, NX_PYC_FILES, p,
			       entry))
		nx_ra_queue_pyc(st, p, entry);
}

void nx_pyc_seen_fd(struct nx_store *st, struct nx_spath *p, uint32_t entry, int fd, uint64_t off,
		    size_t len)
{
	uint8_t h[PYC_HEADER];

	if (!st->ra_max || st->readonly || len < sizeof(h) ||
	    nx_pread_all(fd, h, sizeof(h), (off_t)off) < 0)
		return;
	nx_pyc_seen(st, p, entry, h, sizeof(h));
}
