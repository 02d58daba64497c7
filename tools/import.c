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
	"  --pack                the default: small store paths share pack blobs\n"
	"                        (manifest format 2)\n"
	"  --no-pack             every path its own NAR layer and TOC (format 1, for\n"
	"                        readers older than format 2)\n"
	"  -t, --tag NAME        also write a closure index under tag NAME (only when\n"
	"                        every path was imported)\n"
	"  -k, --sign-key FILE   also sign with a nix-store --generate-binary-cache-key key\n"
	"  --trusted-public-keys K   refuse paths without a signature by one of K\n"
	"  --cafile FILE, --insecure, --timeout SECONDS, -v   as for every command\n"
	"\n"
	"PATH is /nix/store/<hash>-<name>, <hash>-<name> or a bare <hash>.\n";

#define CACHEINFO_MAX (64u << 10)

static void narinfo_free(struct nx_narinfo *x)
{
	if (x) {
		nx_narinfo_release(x);
		free(x);
	}
}

struct import {
	const char *cache; /* without a trailing slash */
	struct nx_get_opts get;
	struct nx_pubkey *keys;
	size_t nkeys;
};

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
 * following References, into p->paths (sorted), each with its struct nx_narinfo in
 * ->priv. A missing narinfo is an error naming the path that needs it.
 */
static int read_closure(struct nx_pub *p, struct import *im, struct queue *q)
{
	size_t i, j, cap = 0;
	int r = 0;

	for (i = 0; i < q->n; i++) {
		struct nx_narinfo *x;
		char *url = NULL, *body = NULL;
		size_t len = 0;

		x = calloc(1, sizeof(*x));
		if (!x || asprintf(&url, "%s/%s.narinfo", im->cache, q->hash[i]) < 0) {
			free(x);
			return -ENOMEM;
		}
		r = nx_url_get_buf(url, &im->get, NX_NARINFO_MAX, &body, &len);
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
			r = nx_narinfo_parse(url, q->hash[i], body, len, x);
		free(body);
		free(url);
		if (r == 0) {
			r = check_sigs(im, &x->info);
			if (r < 0)
				nx_narinfo_release(x);
		}
		if (r < 0) {
			free(x);
			return r;
		}
		if (p->npaths == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			struct nx_pub_path *np = realloc(p->paths, ncap * sizeof(*np));

			if (!np) {
				narinfo_free(x);
				return -ENOMEM;
			}
			p->paths = np;
			cap = ncap;
		}
		memset(&p->paths[p->npaths], 0, sizeof(p->paths[0]));
		/* the pub path owns the pathinfo, the narinfo keeps the rest */
		p->paths[p->npaths].info = x->info;
		memset(&x->info, 0, sizeof(x->info));
		p->paths[p->npaths].priv = x;
		p->paths[p->npaths].have_info = 1;
		p->npaths++;
		for (j = 0; j < p->paths[p->npaths - 1].info.nrefs; j++) {
			r = queue_add(q, p->paths[p->npaths - 1].info.refs[j],
				      p->paths[p->npaths - 1].info.store_path);
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
	struct nx_narinfo *x;
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
	struct nx_narinfo *x = pp->priv;
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
	if (r == 0 && pp->group) /* its pack's digest is what counts */
		nx_packer_no_blob_hash(pk);
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

	p.jobs = po.jobs;
	p.mount_from = po.mount_from;
	p.pack = po.pack;
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
		narinfo_free(p.paths[i].priv);
	free(roots); /* the strings belong to p */
	nx_pub_release(&p);
	free(q.hash);
	free(q.from);
	free(im.keys);
	free(cache);
	return ret;
}
