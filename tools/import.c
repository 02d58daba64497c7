/*
 * tools/import.c: `nixoci import`, from a Nix binary cache into a registry.
 *
 * No Nix store is needed: the closure comes from the narinfo files (their
 * References), each NAR from the cache (xz, zstd, bzip2 or none). Every NAR
 * streams through decompression, our strict NAR parser and the seekable
 * zstd packer into a temporary file while its SHA-256 and size are counted;
 * a stream longer than NarSize stops at once, and nothing is uploaded until
 * the whole NAR matched the narinfo's NarHash and NarSize (and FileHash and
 * FileSize when given). The narinfo's signatures, deriver, CA and references
 * go into the manifest unchanged, so Nix's fingerprint over them still holds
 * and a mount with trusted-public-keys accepts them as Nix would.
 *
 * With --trusted-public-keys, a path none of whose signatures verifies
 * under one of the keys is an error before any NAR is fetched. The closure
 * index (--tag) is written only when every path of the closure was written.
 * Uploading, skipping what is there (re-runs are cheap), signing and the
 * index are tools/publish.c, shared with push.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/tools_i.h"

static const char usage_import[] =
	"usage: nixoci import [OPTIONS] CACHE REGISTRY/REPO PATH...\n"
	"\n"
	"Copies the closure of each PATH from the Nix binary cache CACHE (http://,\n"
	"https:// or file:// URL, or a directory) to the repository, with the\n"
	"narinfo's signatures, deriver, CA and references. No local Nix store is\n"
	"needed. Paths already in the repository are skipped.\n"
	"\n"
	"options:\n"
	"  -j, --jobs N          parallel NAR downloads and uploads (default 4)\n"
	"  -t, --tag NAME        also write a closure index under tag NAME (only when\n"
	"                        every path was imported)\n"
	"  -k, --sign-key FILE   also sign with a nix-store --generate-binary-cache-key key\n"
	"  --trusted-public-keys K   refuse paths without a signature by one of K\n"
	"  --cafile FILE, --insecure, --timeout SECONDS, -v   as for every command\n"
	"\n"
	"PATH is /nix/store/<hash>-<name>, <hash>-<name> or a bare <hash>.\n";

#define NARINFO_MAX (1u << 20)
#define CACHEINFO_MAX (64u << 10)

/* What a narinfo says beyond struct nx_pathinfo. */
struct narinfo_x {
	char *url;             /* relative to the cache */
	enum nx_comp comp;
	int have_file_hash;
	uint8_t file_hash[NX_SHA256_LEN];
	uint64_t file_size;    /* 0: not given */
};

struct import {
	const char *cache; /* without a trailing slash */
	struct nx_get_opts get;
	struct nx_pubkey *keys;
	size_t nkeys;
};

/* ------------------------------------------------------------- narinfo */

static void narinfo_x_free(struct narinfo_x *x)
{
	if (!x)
		return;
	free(x->url);
	free(x);
}

/* the copy is owned by *v (NX_ANALYZER_ARRAY_STORE_BEGIN says why) */
NX_ANALYZER_ARRAY_STORE_BEGIN
static int push_str(char ***v, size_t *n, const char *s, size_t len)
{
	char **nv = realloc(*v, (*n + 1) * sizeof(**v));

	if (!nv)
		return -ENOMEM;
	*v = nv;
	nv[*n] = strndup(s, len);
	if (!nv[*n])
		return -ENOMEM;
	(*n)++;
	return 0;
}
NX_ANALYZER_ARRAY_STORE_END

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A signature or key: "name:base64", printable, no spaces. */
static int sig_form_ok(const char *s)
{
	const char *c = strchr(s, ':');

	if (!c || c == s || !c[1])
		return 0;
	for (; *s; s++)
		if (*s <= ' ' || *s > '~')
			return 0;
	return 1;
}

/* A URL relative to the cache: no scheme, no absolute path, no "..". */
static int rel_url_ok(const char *u)
{
	const char *p;

	if (!*u || *u == '/' || strstr(u, "://") || strlen(u) > 1024)
		return 0;
	for (p = u; *p; p++)
		if (*p <= ' ' || *p > '~' || *p == '?' || *p == '#' || *p == '\\')
			return 0;
	for (p = u; p; p = strchr(p, '/')) {
		if (*p == '/')
			p++;
		if (strncmp(p, "..", 2) == 0 && (p[2] == '/' || p[2] == '\0'))
			return 0;
	}
	return 1;
}

/*
 * Strict parse of the narinfo of @want (a hash part) fetched from @src.
 * Every malformed, missing or duplicated field is one error line naming
 * the narinfo and the field; unknown fields are ignored, as Nix does.
 */
static int narinfo_parse(const char *src, const char *want, char *text, size_t len,
			 struct nx_pathinfo *pi, struct narinfo_x *x)
{
	enum { F_PATH, F_URL, F_COMP, F_FHASH, F_FSIZE, F_NHASH, F_NSIZE, F_REFS, F_DRV, F_CA,
	       F_N };
	static const char *const names[F_N] = { "StorePath", "URL",	 "Compression",
						"FileHash",  "FileSize", "NarHash",
						"NarSize",   "References", "Deriver", "CA" };
	int seen[F_N] = { 0 };
	char *line, *next, *end;
	const char *base, *what = "";
	int f, r = -EINVAL;

	if (memchr(text, '\0', len)) {
		nx_log(NX_LOG_ERR, "%s: holds a NUL byte; not a narinfo", src);
		return -EINVAL;
	}
	x->comp = NX_COMP_BZIP2; /* Nix's default when Compression is absent */
	for (line = text; line && *line; line = next) {
		char *colon, *v;

		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (!*line)
			continue;
		colon = strstr(line, ": ");
		if (!colon) {
			nx_log(NX_LOG_ERR, "%s: line '%.80s' is not 'Key: value'", src, line);
			return -EINVAL;
		}
		*colon = '\0';
		v = colon + 2;
		if (strcmp(line, "Sig") == 0) {
			if (!sig_form_ok(v)) {
				nx_log(NX_LOG_ERR, "%s: Sig '%.80s' is not name:base64", src, v);
				return -EINVAL;
			}
			r = push_str(&pi->sigs, &pi->nsigs, v, strlen(v));
			if (r < 0)
				return r;
			continue;
		}
		for (f = 0; f < F_N && strcmp(line, names[f]) != 0; f++)
			;
		if (f == F_N)
			continue;
		what = names[f];
		if (seen[f]++) {
			nx_log(NX_LOG_ERR, "%s: %s appears twice", src, what);
			return -EINVAL;
		}
		switch (f) {
		case F_PATH:
			if (nx_storepath_check(v, &base) < 0)
				goto bad;
			if (strncmp(base, want, NX_HASH_LEN) != 0) {
				nx_log(NX_LOG_ERR, "%s: StorePath %s is not the path of hash %s", src,
				       v, want);
				return -EINVAL;
			}
			pi->store_path = strdup(v);
			if (!pi->store_path)
				return -ENOMEM;
			break;
		case F_URL:
			if (!rel_url_ok(v))
				goto bad;
			x->url = strdup(v);
			if (!x->url)
				return -ENOMEM;
			break;
		case F_COMP:
			if (nx_comp_parse(v, &x->comp) < 0) {
				nx_log(NX_LOG_ERR,
				       "%s: Compression '%.40s' is not one nixoci reads "
				       "(xz, zstd, bzip2, none)",
				       src, v);
				return -EINVAL;
			}
			break;
		case F_FHASH:
			if (nx_narhash_parse(v, x->file_hash) < 0)
				goto bad;
			x->have_file_hash = 1;
			break;
		case F_NHASH:
			if (nx_narhash_parse(v, pi->nar_hash) < 0)
				goto bad;
			break;
		case F_FSIZE:
		case F_NSIZE: {
			unsigned long long n;

			errno = 0;
			if (*v < '0' || *v > '9')
				goto bad;
			n = strtoull(v, &end, 10);
			if (errno || *end || n == 0 || n >= (1ull << 53))
				goto bad;
			if (f == F_FSIZE)
				x->file_size = n;
			else
				pi->nar_size = n;
			break;
		}
		case F_REFS: {
			char *p = v;

			while (*p) {
				size_t l = strcspn(p, " ");

				if (l) {
					if (nx_storepath_check_base(p, l) < 0)
						goto bad;
					r = push_str(&pi->refs, &pi->nrefs, p, l);
					if (r < 0)
						return r;
				}
				p += l;
				p += strspn(p, " ");
			}
			break;
		}
		case F_DRV:
			if (strcmp(v, "unknown-deriver") == 0)
				break;
			if (nx_storepath_check_base(v, strlen(v)) < 0)
				goto bad;
			pi->deriver = strdup(v);
			if (!pi->deriver)
				return -ENOMEM;
			break;
		case F_CA:
			if (!*v || strchr(v, ' '))
				goto bad;
			pi->ca = strdup(v);
			if (!pi->ca)
				return -ENOMEM;
			break;
		}
	}
	for (f = 0; f < F_N; f++) {
		if (!seen[f] && (f == F_PATH || f == F_URL || f == F_NHASH || f == F_NSIZE ||
				 f == F_REFS)) {
			nx_log(NX_LOG_ERR, "%s: has no %s", src, names[f]);
			return -EINVAL;
		}
	}
	if (pi->nrefs > 1) {
		size_t i;

		qsort(pi->refs, pi->nrefs, sizeof(char *), cmp_str);
		for (i = 1; i < pi->nrefs; i++) {
			if (strcmp(pi->refs[i - 1], pi->refs[i]) == 0) {
				nx_log(NX_LOG_ERR, "%s: References lists %s twice", src, pi->refs[i]);
				return -EINVAL;
			}
		}
	}
	return 0;
bad:
	nx_log(NX_LOG_ERR, "%s: malformed %s", src, what);
	return -EINVAL;
}

/* ------------------------------------------------------------ closure */

struct queue {
	char (*hash)[NX_HASH_LEN + 1];
	char **from; /* the path that referenced it (NULL for roots), borrowed */
	size_t n, cap;
};

static int queue_add(struct queue *q, const char *hash, char *from)
{
	size_t i;

	for (i = 0; i < q->n; i++)
		if (memcmp(q->hash[i], hash, NX_HASH_LEN) == 0)
			return 0;
	if (q->n == q->cap) {
		size_t ncap = q->cap ? q->cap * 2 : 64;
		void *a = realloc(q->hash, ncap * sizeof(*q->hash));

		if (!a)
			return -ENOMEM;
		q->hash = a;
		a = realloc(q->from, ncap * sizeof(*q->from));
		if (!a)
			return -ENOMEM;
		q->from = a;
		q->cap = ncap;
	}
	memcpy(q->hash[q->n], hash, NX_HASH_LEN);
	q->hash[q->n][NX_HASH_LEN] = '\0';
	q->from[q->n] = from;
	q->n++;
	return 0;
}

static int check_sigs(struct import *im, const struct nx_pathinfo *pi)
{
	char *fp = NULL;
	size_t i;
	int r;

	if (!im->nkeys)
		return 0;
	r = nx_fingerprint(pi, &fp);
	if (r < 0)
		return r;
	for (i = 0; i < pi->nsigs; i++) {
		r = nx_sig_verify(im->keys, im->nkeys, pi->sigs[i], fp, strlen(fp));
		if (r != 0)
			break;
	}
	free(fp);
	if (r < 0)
		return r;
	if (r == 0) {
		nx_log(NX_LOG_ERR,
		       "%s: no signature by a trusted key (%zu signature%s in the narinfo); "
		       "add the cache's key to --trusted-public-keys if you trust it",
		       pi->store_path, pi->nsigs, pi->nsigs == 1 ? "" : "s");
		return -EACCES;
	}
	return 0;
}

/*
 * Reads the narinfo of every path of the closure of @roots (hash parts),
 * following References, into p->paths (sorted), each with its narinfo_x in
 * ->priv. A missing narinfo is an error naming the path that needs it.
 */
static int read_closure(struct nx_pub *p, struct import *im, struct queue *q)
{
	size_t i, j, cap = 0;
	int r = 0;

	for (i = 0; i < q->n; i++) {
		struct nx_pathinfo pi = { 0 };
		struct narinfo_x *x;
		char *url = NULL, *body = NULL;
		size_t len = 0;

		x = calloc(1, sizeof(*x));
		if (!x || asprintf(&url, "%s/%s.narinfo", im->cache, q->hash[i]) < 0) {
			free(x);
			return -ENOMEM;
		}
		r = nx_url_get_buf(url, &im->get, NARINFO_MAX, &body, &len);
		if (r == -ENOENT) {
			if (q->from[i])
				nx_log(NX_LOG_ERR,
				       "%s: the cache has no narinfo for %s, a reference of it; "
				       "the cache does not hold the whole closure",
				       q->from[i], q->hash[i]);
			else
				nx_log(NX_LOG_ERR, "%s: the cache has no narinfo for this path (%s)",
				       q->hash[i], url);
		}
		if (r == 0)
			r = narinfo_parse(url, q->hash[i], body, len, &pi, x);
		free(body);
		free(url);
		if (r == 0)
			r = check_sigs(im, &pi);
		if (r < 0) {
			nx_pathinfo_release(&pi);
			narinfo_x_free(x);
			return r;
		}
		if (p->npaths == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			struct nx_pub_path *np = realloc(p->paths, ncap * sizeof(*np));

			if (!np) {
				nx_pathinfo_release(&pi);
				narinfo_x_free(x);
				return -ENOMEM;
			}
			p->paths = np;
			cap = ncap;
		}
		memset(&p->paths[p->npaths], 0, sizeof(p->paths[0]));
		p->paths[p->npaths].info = pi;
		p->paths[p->npaths].priv = x;
		p->paths[p->npaths].have_info = 1;
		p->npaths++;
		for (j = 0; j < pi.nrefs; j++) {
			r = queue_add(q, pi.refs[j], p->paths[p->npaths - 1].info.store_path);
			if (r < 0)
				return r;
		}
	}
	nx_pub_sort(p);
	return 0;
}

/* ---------------------------------------------------------- one path */

struct stream {
	struct nx_pub_path *pp;
	struct narinfo_x *x;
	struct nx_decomp *dec;
	struct nx_nar_parser *parser;
	struct nx_sha256 fh; /* of the compressed file */
	uint64_t file_bytes, nar_bytes;
	int over; /* which limit was crossed: 1 file, 2 NAR */
};

static int on_nar(void *ctx, const void *buf, size_t len)
{
	struct stream *s = ctx;

	s->nar_bytes += len;
	if (s->nar_bytes > s->pp->info.nar_size) {
		s->over = 2;
		return -EBADMSG;
	}
	return nx_nar_parser_feed(s->parser, buf, len);
}

static int on_file(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct stream *s = ctx;

	s->file_bytes += len;
	if (s->x->file_size && s->file_bytes > s->x->file_size) {
		s->over = 1;
		return -EBADMSG;
	}
	nx_sha256_update(&s->fh, buf, len);
	return nx_decomp_feed(s->dec, buf, len);
}

static int import_one(struct nx_pub *p, struct nx_pub_path *pp)
{
	struct import *im = p->ctx;
	struct narinfo_x *x = pp->priv;
	const char *path = pp->info.store_path;
	uint8_t blob_sha[NX_SHA256_LEN], nar_sha[NX_SHA256_LEN], file_sha[NX_SHA256_LEN];
	struct nx_toc_builder *tb = NULL;
	struct nx_packer *pk = NULL;
	struct stream s = { .pp = pp, .x = x };
	uint64_t nar_size = 0, blob_size = 0;
	char *url = NULL, a[NX_NARHASH_STRLEN], b[NX_NARHASH_STRLEN];
	int fd = -1, r, have_fh = 0;

	r = nx_pub_existing(p, pp);
	if (r != 0)
		return r;
	if (asprintf(&url, "%s/%s", im->cache, x->url) < 0)
		return -ENOMEM;
	fd = nx_pub_tmpfile(p);
	if (fd < 0) {
		free(url);
		return fd;
	}
	r = nx_toc_builder_new(&tb);
	if (r == 0)
		r = nx_packer_new(&pk, fd, tb);
	if (r == 0)
		r = nx_nar_parser_new(&s.parser, nx_packer_sink(pk));
	if (r == 0)
		r = nx_decomp_new(&s.dec, x->comp, on_nar, &s);
	if (r == 0)
		r = nx_sha256_init(&s.fh);
	if (r < 0)
		goto out;
	have_fh = 1;
	r = nx_url_get(url, &im->get, on_file, &s);
	if (r == 0)
		r = nx_decomp_finish(s.dec);
	if (r == 0)
		r = nx_nar_parser_finish(s.parser);
	if (r < 0) {
		if (s.over == 1)
			nx_log(NX_LOG_ERR, "%s: %s is longer than the narinfo's FileSize %llu", path,
			       url, (unsigned long long)x->file_size);
		else if (s.over == 2)
			nx_log(NX_LOG_ERR, "%s: the NAR in %s is longer than the narinfo's NarSize %llu",
			       path, url, (unsigned long long)pp->info.nar_size);
		else if (r == -ENOENT)
			nx_log(NX_LOG_ERR, "%s: the cache has no NAR file %s", path, url);
		else
			nx_log(NX_LOG_ERR, "%s: %s is not a valid %s-compressed NAR (see above)", path,
			       url, x->comp == NX_COMP_XZ ? "xz" : x->comp == NX_COMP_ZSTD ? "zstd"
								 : x->comp == NX_COMP_BZIP2 ? "bzip2"
												 : "un");
		if (r != -ENOMEM)
			r = -EBADMSG;
		goto out;
	}
	nx_sha256_final(&s.fh, file_sha);
	have_fh = 0;
	if ((x->file_size && s.file_bytes != x->file_size) ||
	    (x->have_file_hash && memcmp(file_sha, x->file_hash, NX_SHA256_LEN) != 0)) {
		nx_narhash_format(file_sha, a);
		nx_narhash_format(x->file_hash, b);
		nx_log(NX_LOG_ERR, "%s: %s (%s, %llu bytes) does not match the narinfo's FileHash %s "
		       "and FileSize %llu",
		       path, url, a, (unsigned long long)s.file_bytes, x->have_file_hash ? b : "-",
		       (unsigned long long)x->file_size);
		r = -EBADMSG;
		goto out;
	}
	r = nx_packer_finish(pk, &nar_size, &blob_size, blob_sha, nar_sha);
	if (r < 0)
		goto out;
	if (nar_size != pp->info.nar_size || memcmp(nar_sha, pp->info.nar_hash, NX_SHA256_LEN)) {
		nx_narhash_format(nar_sha, a);
		nx_narhash_format(pp->info.nar_hash, b);
		nx_log(NX_LOG_ERR,
		       "%s: NAR hash mismatch: the NAR in %s is %s, %llu bytes; the narinfo says "
		       "%s, %llu bytes",
		       path, url, a, (unsigned long long)nar_size, b,
		       (unsigned long long)pp->info.nar_size);
		r = -EBADMSG;
		goto out;
	}
	r = nx_pub_commit(p, pp, fd, tb, nar_size, blob_size, blob_sha);
out:
	if (have_fh)
		nx_sha256_release(&s.fh);
	nx_decomp_free(s.dec);
	nx_nar_parser_free(s.parser);
	nx_packer_free(pk);
	nx_toc_builder_free(tb);
	close(fd);
	free(url);
	return r;
}

/* ---------------------------------------------------------------- main */

/* nix-cache-info: the cache must be one of /nix/store. */
static int check_cache_info(struct import *im)
{
	char *url = NULL, *body = NULL, *line, *next;
	size_t len;
	int r, store_ok = 0;

	if (asprintf(&url, "%s/nix-cache-info", im->cache) < 0)
		return -ENOMEM;
	r = nx_url_get_buf(url, &im->get, CACHEINFO_MAX, &body, &len);
	if (r < 0) {
		nx_log(NX_LOG_ERR, "%s: cannot read nix-cache-info; is this a Nix binary cache?",
		       im->cache);
		free(url);
		return r;
	}
	for (line = body; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (strncmp(line, "StoreDir: ", 10) == 0) {
			if (strcmp(line + 10, NX_STORE_DIR) != 0) {
				nx_log(NX_LOG_ERR, "%s: the cache is of store %s, not " NX_STORE_DIR,
				       im->cache, line + 10);
				r = -EINVAL;
			}
			store_ok = 1;
		}
	}
	if (r == 0 && !store_ok) {
		nx_log(NX_LOG_ERR, "%s: has no StoreDir line; not a Nix binary cache", url);
		r = -EINVAL;
	}
	free(body);
	free(url);
	return r;
}

/* CACHE argument -> URL without a trailing slash (caller frees). */
static int cache_url(const char *arg, char **out)
{
	size_t n;
	int r;

	if (arg[0] == '/')
		r = asprintf(out, "file://%s", arg);
	else if (strncmp(arg, "http://", 7) == 0 || strncmp(arg, "https://", 8) == 0 ||
		 strncmp(arg, "file:///", 8) == 0)
		r = asprintf(out, "%s", arg);
	else
		return -EINVAL;
	if (r < 0)
		return -ENOMEM;
	n = strlen(*out);
	while (n > 8 && (*out)[n - 1] == '/')
		(*out)[--n] = '\0';
	return 0;
}

/* PATH argument -> its hash part; *full = the whole store path if given. */
static int root_arg(const char *arg, char hash[NX_HASH_LEN + 1], const char **name)
{
	const char *base;
	size_t len;
	uint8_t raw[20];

	*name = NULL;
	if (strlen(arg) == NX_HASH_LEN && nx_nix32_decode(arg, NX_HASH_LEN, raw, 20) == 0) {
		memcpy(hash, arg, NX_HASH_LEN + 1);
		return 0;
	}
	if (nx_cli_path_arg(arg, &base, &len, NULL) < 0)
		return -EINVAL;
	memcpy(hash, base, NX_HASH_LEN);
	hash[NX_HASH_LEN] = '\0';
	*name = base;
	return 0;
}

int nx_cmd_import(struct nx_cli *cli, int argc, char **argv)
{
	struct nx_pub_opts po = { 0 };
	struct import im = { 0 };
	struct queue q = { 0 };
	struct nx_pub p;
	const char *ref;
	char **roots = NULL, *cache = NULL;
	size_t nroots = 0, i;
	uint64_t t0;
	int c, r, ret = NX_EXIT_ERR;

	c = nx_pub_getopt(cli, "import", usage_import, argc, argv, &po);
	if (c >= 0)
		return c;
	if (argc - optind < 3)
		return nx_cli_usage_error(usage_import, "import: missing %s",
					  argc - optind == 0   ? "CACHE, REGISTRY/REPO and PATH"
					  : argc - optind == 1 ? "REGISTRY/REPO and PATH"
							       : "PATH");
	r = cache_url(argv[optind], &cache);
	if (r == -EINVAL)
		return nx_cli_usage_error(usage_import,
					  "import: bad CACHE '%s': want an http://, https:// or "
					  "file:/// URL or an absolute directory",
					  argv[optind]);
	if (r < 0)
		return NX_EXIT_ERR;
	optind++;
	ref = argv[optind++];
	for (i = (size_t)optind; i < (size_t)argc; i++) {
		char h[NX_HASH_LEN + 1];
		const char *name;

		if (root_arg(argv[i], h, &name) < 0) {
			free(cache);
			return nx_cli_usage_error(usage_import,
						  "import: bad PATH '%s': want /nix/store/<hash>-<name>, "
						  "<hash>-<name> or <hash>",
						  argv[i]);
		}
	}
	t0 = nx_now_ns();
	if (nx_pub_init(&p, "importing") < 0) {
		free(cache);
		return NX_EXIT_ERR;
	}
	p.cmd = "import";
	p.done_verb = "imported";
	p.one = import_one;
	p.ctx = &im;
	im.cache = cache;
	im.get.cafile = cli->cafile;
	im.get.timeout_s = cli->timeout_s;
	im.get.insecure = cli->insecure;
	im.get.quiet_404 = 1;

	if (nx_cli_keys(cli, &im.keys, &im.nkeys) < 0)
		goto out;
	if (po.keyfile && nx_pub_load_key(&p, po.keyfile) < 0)
		goto out;
	if (check_cache_info(&im) < 0)
		goto out;
	for (i = (size_t)optind; i < (size_t)argc; i++) {
		char h[NX_HASH_LEN + 1];
		const char *name;

		root_arg(argv[i], h, &name);
		if (queue_add(&q, h, NULL) < 0)
			goto out;
	}
	if (read_closure(&p, &im, &q) < 0)
		goto out;
	/* the roots as store paths, checked against what the user named */
	roots = calloc(q.n, sizeof(*roots));
	if (!roots)
		goto out;
	for (i = (size_t)optind; i < (size_t)argc; i++) {
		char h[NX_HASH_LEN + 1];
		const char *name;
		size_t k;

		root_arg(argv[i], h, &name);
		for (k = 0; k < p.npaths; k++)
			if (memcmp(p.paths[k].info.store_path + sizeof(NX_STORE_DIR), h,
				   NX_HASH_LEN) == 0)
				break;
		if (k == p.npaths)
			goto out;
		if (name && strncmp(p.paths[k].info.store_path + sizeof(NX_STORE_DIR), name,
				    strcspn(name, "/")) != 0) {
			nx_log(NX_LOG_ERR, "import %s: the cache holds %s under this hash", argv[i],
			       p.paths[k].info.store_path);
			goto out;
		}
		for (r = 0; (size_t)r < nroots; r++)
			if (roots[r] == p.paths[k].info.store_path)
				break;
		if ((size_t)r == nroots)
			roots[nroots++] = p.paths[k].info.store_path;
	}
	nx_log(NX_LOG_INFO, "closure: %zu paths", p.npaths);

	if (nx_pub_open(&p, cli, ref) < 0)
		goto out;
	if (nx_pub_run(&p, po.jobs) < 0)
		goto out;
	if (po.tag) {
		r = nx_pub_index(&p, po.tag, roots, nroots);
		if (r < 0) {
			nx_pub_progress_clear(&p);
			nx_log(NX_LOG_ERR, "import: cannot write the closure index %s: %s", po.tag,
			       strerror(-r));
			goto out;
		}
	}
	nx_pub_progress_clear(&p);
	printf("imported %zu paths (%zu uploaded, %zu skipped), %llu bytes uploaded in %.1fs\n",
	       p.npaths, p.uploaded, p.skipped, (unsigned long long)p.bytes,
	       (double)(nx_now_ns() - t0) / 1e9);
	ret = NX_EXIT_OK;
out:
	for (i = 0; i < p.npaths; i++)
		narinfo_x_free(p.paths[i].priv);
	free(roots); /* the strings belong to p */
	nx_pub_release(&p);
	free(q.hash);
	free(q.from);
	free(im.keys);
	free(cache);
	return ret;
}
