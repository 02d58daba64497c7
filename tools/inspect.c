/*
 * tools/inspect.c: the read-side subcommands `ls`, `info`, `verify` and
 * `cat`.
 *
 * `verify` is the independent check of everything a registry holds for a
 * store path: it does not use cache/ (which trusts what it verified once)
 * but streams every blob from the registry and checks each link of the
 * trust chain of docs/format.md section 6 itself: manifest bytes against the
 * digest the registry reports, TOC and NAR layer against their descriptors,
 * every frame against the TOC, the NAR against NarHash/NarSize, the NAR's
 * structure against the TOC entry for entry, and the seek table against the
 * TOC's frames. So a single changed byte in any blob is reported.
 *
 * `cat` goes through cache/ like the file system does, so it exercises the
 * same read path; it is the debugging twin of a mount.
 */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/tools_i.h"

/* ---------------------------------------------------------------- ls */

static const char usage_ls[] =
	"usage: nixoci ls [OPTIONS] REGISTRY/REPO\n"
	"\n"
	"Lists the store paths in the repository, one per line, sorted.\n"
	"\n"
	"options:\n"
	"  --closures            also list the tags of closure indexes\n"
	"  --json                one JSON object: {\"repository\", \"paths\": [...],\n"
	"                        \"closures\": [...] with --closures}\n"
	"  --cafile FILE, --insecure, --timeout SECONDS, -v   as for every command\n";

#define LS_THREADS 4
#define LS_MAX_TAGS (16u << 20)

struct ls_ctx {
	struct nx_registry *reg;
	char **tags;
	size_t ntags, cap;
	char **out; /* per tag: store path (hash tags) or NULL */
	pthread_mutex_t lock;
	size_t next;
	int failed;
};

static int ls_tag(void *ctx, const char *tag)
{
	struct ls_ctx *l = ctx;
	char **nt;

	if (l->ntags == l->cap) {
		if (l->cap >= LS_MAX_TAGS) {
			nx_log(NX_LOG_ERR, "%s: more than %u tags", nx_registry_ref(l->reg),
			       LS_MAX_TAGS);
			return -E2BIG;
		}
		l->cap = l->cap ? l->cap * 2 : 256;
		nt = realloc(l->tags, l->cap * sizeof(*nt));
		if (!nt)
			return -ENOMEM;
		l->tags = nt;
	}
	l->tags[l->ntags] = strdup(tag);
	if (!l->tags[l->ntags])
		return -ENOMEM;
	l->ntags++;
	return 0;
}

static void *ls_worker(void *arg)
{
	struct ls_ctx *l = arg;
	struct nx_manifest m;
	const char *tag, *base;
	char *body;
	size_t i, len;
	uint8_t d[NX_SHA256_LEN];
	int r;

	for (;;) {
		pthread_mutex_lock(&l->lock);
		while (l->next < l->ntags && !nx_cli_is_hash_tag(l->tags[l->next]))
			l->next++;
		if (l->next >= l->ntags) {
			pthread_mutex_unlock(&l->lock);
			return NULL;
		}
		i = l->next++;
		pthread_mutex_unlock(&l->lock);

		tag = l->tags[i];
		body = NULL;
		r = nx_registry_get_manifest(l->reg, tag, NX_MANIFEST_MAX, &body, &len, d, NULL);
		if (r == -ENOENT) /* deleted while we listed */
			continue;
		if (r == 0) {
			memset(&m, 0, sizeof(m));
			r = nx_manifest_parse(body, len, &m);
			free(body);
			if (r < 0) {
				nx_log(NX_LOG_ERR, "%s: tag %s holds no valid nixoci manifest",
				       nx_registry_ref(l->reg), tag);
			} else {
				if (nx_storepath_check(m.info.store_path, &base) < 0 ||
				    strncmp(base, tag, NX_HASH_LEN) != 0) {
					nx_log(NX_LOG_ERR, "%s: tag %s holds the manifest of %s",
					       nx_registry_ref(l->reg), tag, m.info.store_path);
					r = -EINVAL;
				} else {
					l->out[i] = m.info.store_path;
					m.info.store_path = NULL;
				}
				nx_manifest_release(&m);
			}
		}
		if (r < 0) {
			pthread_mutex_lock(&l->lock);
			l->failed = 1;
			pthread_mutex_unlock(&l->lock);
		}
	}
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Prints @v (store paths and, with @closures, closure tags) as one object. */
static int ls_json(const char *ref, char **v, size_t n, int closures)
{
	json_t *o = json_object(), *paths = json_array(), *cl = closures ? json_array() : NULL;
	size_t i;
	int r = -ENOMEM;

	if (!o || !paths || (closures && !cl))
		goto out;
	for (i = 0; i < n; i++)
		if (json_array_append_new(v[i][0] == '/' ? paths : cl, json_string(v[i])) < 0)
			goto out;
	if (json_object_set_new(o, "repository", json_string(ref)) < 0 ||
	    json_object_set(o, "paths", paths) < 0 || (cl && json_object_set(o, "closures", cl) < 0))
		goto out;
	r = nx_cli_print_json(o);
out:
	json_decref(paths);
	json_decref(cl);
	json_decref(o);
	return r;
}

int nx_cmd_ls(struct nx_cli *cli, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "closures", no_argument, NULL, NX_OPT_FIRST_PRIVATE },
		{ "json", no_argument, NULL, NX_OPT_FIRST_PRIVATE + 1 },
		NX_CLI_LONGOPTS,
		{ NULL, 0, NULL, 0 },
	};
	struct ls_ctx l = { 0 };
	pthread_t th[LS_THREADS];
	int c, closures = 0, json = 0, n = 0, r, ret = NX_EXIT_ERR;
	char **lines = NULL;
	size_t i, nlines = 0;

	while ((c = getopt_long(argc, argv, ":hv", lo, NULL)) != -1) {
		if (c == 'h') {
			fputs(usage_ls, stdout);
			return NX_EXIT_OK;
		} else if (c == NX_OPT_FIRST_PRIVATE) {
			closures = 1;
		} else if (c == NX_OPT_FIRST_PRIVATE + 1) {
			json = 1;
		} else if (c == '?' || c == ':') {
			return nx_cli_usage_error(usage_ls, "ls: %s '%s'",
						  c == '?' ? "unknown option"
							   : "missing argument to",
						  argv[optind - 1]);
		} else if (nx_cli_opt(cli, c, optarg) < 0) {
			return nx_cli_synopsis(usage_ls);
		}
	}
	if (argc - optind != 1)
		return nx_cli_usage_error(usage_ls, optind >= argc ? "ls: missing REGISTRY/REPO"
								   : "ls: unexpected argument '%s'",
					  argv[argc - 1]);
	if (pthread_mutex_init(&l.lock, NULL))
		return NX_EXIT_ERR;
	if (nx_cli_registry(cli, argv[optind], 1, &l.reg) < 0)
		goto out;
	r = nx_registry_list_tags(l.reg, ls_tag, &l);
	if (r == -ENOENT)
		nx_log(NX_LOG_ERR, "repository %s not found", argv[optind]);
	if (r < 0)
		goto out;
	l.out = calloc(l.ntags + 1, sizeof(*l.out));
	lines = calloc(l.ntags + 1, sizeof(*lines));
	if (!l.out || !lines)
		goto out;
	for (n = 0; n < LS_THREADS; n++)
		if (pthread_create(&th[n], NULL, ls_worker, &l))
			break;
	if (n == 0)
		ls_worker(&l);
	for (c = 0; c < n; c++)
		pthread_join(th[c], NULL);
	for (i = 0; i < l.ntags; i++) {
		if (l.out[i])
			lines[nlines++] = l.out[i];
		else if (closures && !nx_cli_is_hash_tag(l.tags[i]))
			lines[nlines++] = l.tags[i];
	}
	qsort(lines, nlines, sizeof(*lines), cmp_str);
	if (json) {
		if (ls_json(argv[optind], lines, nlines, closures) < 0)
			goto out;
	} else {
		for (i = 0; i < nlines; i++)
			printf("%s\n", lines[i]);
	}
	ret = l.failed ? NX_EXIT_ERR : NX_EXIT_OK;
out:
	free(lines);
	for (i = 0; i < l.ntags; i++) {
		free(l.tags[i]);
		if (l.out)
			free(l.out[i]);
	}
	free(l.tags);
	free(l.out);
	nx_registry_close(l.reg);
	pthread_mutex_destroy(&l.lock);
	return ret;
}

/* ---------------------------------------------------------------- info */

static const char usage_info[] =
	"usage: nixoci info [OPTIONS] REGISTRY/REPO PATH\n"
	"\n"
	"Prints the narinfo view of a store path and where its layers are.\n"
	"\n"
	"options:\n"
	"  --json                one JSON object (keys as nix path-info --json where\n"
	"                        they exist: path, narHash, narSize, references, ...)\n"
	"  --cafile FILE, --insecure, --timeout SECONDS, -v   as for every command\n";

/* Parses options of commands that only take the common ones and --json
 * (*json, when not NULL). Returns -1 to go on, or an exit status. */
static int common_only(struct nx_cli *cli, int argc, char **argv, const char *usage,
		       const char *cmd, int *json)
{
	static const struct option lo[] = { { "json", no_argument, NULL, NX_OPT_FIRST_PRIVATE },
					    NX_CLI_LONGOPTS,
					    { NULL, 0, NULL, 0 } };
	int c;

	while ((c = getopt_long(argc, argv, ":hv", lo, NULL)) != -1) {
		if (c == 'h') {
			fputs(usage, stdout);
			return NX_EXIT_OK;
		} else if (c == NX_OPT_FIRST_PRIVATE && json) {
			*json = 1;
		} else if (c == '?' || c == ':' || c == NX_OPT_FIRST_PRIVATE) {
			return nx_cli_usage_error(usage, "%s: %s '%s'", cmd,
						  c == '?' ? "unknown option"
							   : "missing argument to",
						  argv[optind - 1]);
		} else if (nx_cli_opt(cli, c, optarg) < 0) {
			return nx_cli_synopsis(usage);
		}
	}
	return -1;
}

static void print_list(const char *key, char **v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		printf("%s: %s\n", key, v[i]);
}

static json_t *json_strings(char **v, size_t n)
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; a && i < n; i++)
		if (json_array_append_new(a, json_string(v[i])) < 0) {
			json_decref(a);
			return NULL;
		}
	return a;
}

static json_t *json_layer(const struct nx_desc *d)
{
	char s[NX_DIGEST_STRLEN];

	nx_digest_format(d->digest, s);
	return json_pack("{s:s, s:I}", "digest", s, "size", (json_int_t)d->size);
}

/* The narinfo view as JSON; nix path-info --json's names where it has one. */
static int info_json(const struct nx_manifest *m, const uint8_t digest[NX_SHA256_LEN])
{
	char h[NX_NARHASH_STRLEN], d[NX_DIGEST_STRLEN];
	struct nx_desc pack = { .size = m->pack_size };
	json_t *o;
	int r;

	memcpy(pack.digest, m->nar.digest, NX_SHA256_LEN);
	nx_narhash_format(m->info.nar_hash, h);
	nx_digest_format(digest, d);
	o = json_pack("{s:s, s:s, s:I, s:o, s:o, s:s, s:o, s:o, s:o}", "path", m->info.store_path,
		      "narHash", h, "narSize", (json_int_t)m->info.nar_size, "references",
		      json_strings(m->info.refs, m->info.nrefs), "signatures",
		      json_strings(m->info.sigs, m->info.nsigs), "manifest", d, "narLayer",
		      json_layer(&m->nar), "tocLayer", json_layer(&m->toc), "tocSignatures",
		      json_strings(m->toc_sigs, m->ntoc_sigs));
	if (!o)
		return -ENOMEM;
	if ((m->info.deriver && json_object_set_new(o, "deriver", json_string(m->info.deriver))) ||
	    (m->info.ca && json_object_set_new(o, "ca", json_string(m->info.ca))) ||
	    (m->zstd_params && json_object_set_new(o, "zstd", json_string(m->zstd_params))) ||
	    (m->packed && json_object_set_new(o, "pack", json_pack("{s:o, s:I, s:I}", "layer",
			 json_layer(&pack), "narOffset", (json_int_t)m->nar_off, "tocOffset",
			 (json_int_t)m->toc_off)))) {
		json_decref(o);
		return -ENOMEM;
	}
	r = nx_cli_print_json(o);
	json_decref(o);
	return r;
}

int nx_cmd_info(struct nx_cli *cli, int argc, char **argv)
{
	struct nx_registry *reg = NULL;
	struct nx_manifest m = { 0 };
	uint8_t digest[NX_SHA256_LEN];
	char h[NX_NARHASH_STRLEN], d[NX_DIGEST_STRLEN];
	const char *base;
	size_t blen, i;
	int r, json = 0;

	r = common_only(cli, argc, argv, usage_info, "info", &json);
	if (r >= 0)
		return r;
	if (argc - optind != 2)
		return nx_cli_usage_error(usage_info, argc - optind < 2
						  ? "info: missing REGISTRY/REPO or PATH"
						  : "info: unexpected argument '%s'",
					  argv[argc - 1]);
	if (nx_cli_path_arg(argv[optind + 1], &base, &blen, NULL) < 0)
		return nx_cli_usage_error(usage_info,
					  "info: '%s' is not a store path or base name",
					  argv[optind + 1]);
	if (nx_cli_registry(cli, argv[optind], 1, &reg) < 0)
		return NX_EXIT_ERR;
	r = nx_cli_get_manifest(reg, base, blen, &m, digest, NULL);
	if (r == -ENOENT)
		nx_log(NX_LOG_ERR, "info %s/%.*s: not in the repository %s", NX_STORE_DIR,
		       (int)blen, base, nx_registry_ref(reg));
	nx_registry_close(reg);
	if (r < 0)
		return NX_EXIT_ERR;
	if (json) {
		r = info_json(&m, digest);
		nx_manifest_release(&m);
		return r < 0 ? NX_EXIT_ERR : NX_EXIT_OK;
	}

	printf("StorePath: %s\n", m.info.store_path);
	nx_narhash_format(m.info.nar_hash, h);
	printf("NarHash: %s\n", h);
	printf("NarSize: %llu\n", (unsigned long long)m.info.nar_size);
	/* narinfo writes "References: " even when empty (Nix's parser needs it) */
	printf("References: ");
	for (i = 0; i < m.info.nrefs; i++)
		printf("%s%s", i ? " " : "", m.info.refs[i]);
	printf("\n");
	if (m.info.deriver)
		printf("Deriver: %s\n", m.info.deriver);
	print_list("Sig", m.info.sigs, m.info.nsigs);
	if (m.info.ca)
		printf("CA: %s\n", m.info.ca);
	nx_digest_format(digest, d);
	printf("Manifest: %s\n", d);
	nx_digest_format(m.nar.digest, d);
	if (m.packed)
		printf("Pack: %s %llu nar %llu+%llu toc %llu+%llu\n", d,
		       (unsigned long long)m.pack_size, (unsigned long long)m.nar_off,
		       (unsigned long long)m.nar.size, (unsigned long long)m.toc_off,
		       (unsigned long long)m.toc.size);
	else
		printf("NarLayer: %s %llu\n", d, (unsigned long long)m.nar.size);
	nx_digest_format(m.toc.digest, d);
	printf("TocLayer: %s %llu\n", d, (unsigned long long)m.toc.size);
	print_list("TocSig", m.toc_sigs, m.ntoc_sigs);
	if (m.zstd_params)
		printf("Zstd: %s\n", m.zstd_params);
	nx_manifest_release(&m);
	return NX_EXIT_OK;
}

/* -------------------------------------------------------------- verify */

static const char usage_verify[] =
	"usage: nixoci verify [OPTIONS] REGISTRY/REPO PATH...\n"
	"\n"
	"Fetches every blob of each store path and checks every digest, the NAR\n"
	"against NarHash and NarSize, the TOC against the NAR, and with\n"
	"--trusted-public-keys the signatures. Prints \"ok PATH\" per good path.\n"
	"\n"
	"options:\n"
	"  --json                one JSON array of {\"path\", \"ok\", \"error\"} at the end\n"
	"  --trusted-public-keys KEYS, --cafile FILE, --insecure,\n"
	"  --timeout SECONDS, -v   as for every command\n";

/* A compressed frame of at most 1 MiB of content never needs more than
 * this (ZSTD_compressBound(1 MiB) is about 1 MiB + 4 KiB). */
#define VERIFY_CLEN_MAX (NX_FRAME_MAX + (NX_FRAME_MAX >> 7) + 4096)

struct small_blob {
	uint8_t *buf;
	uint64_t size;
	uint64_t got;
};

static int small_blob_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct small_blob *b = ctx;

	if (off != b->got || len > b->size - b->got)
		return -EBADMSG;
	memcpy(b->buf + off, buf, len);
	b->got += len;
	return 0;
}

/* Fetches a whole blob of @d->size bytes (at most @cap) and checks its
 * digest. *what (caller frees) describes a mismatch (-EBADMSG). */
static int fetch_small_blob(struct nx_registry *reg, const struct nx_desc *d, uint64_t cap,
			    uint8_t **out, char **what, const char *name)
{
	struct small_blob b = { 0 };
	uint8_t sha[NX_SHA256_LEN];
	char ds[NX_DIGEST_STRLEN];
	int r;

	nx_digest_format(d->digest, ds);
	if (d->size > cap) {
		if (asprintf(what, "%s %s declares %llu bytes, over the %llu byte limit", name,
			     ds, (unsigned long long)d->size, (unsigned long long)cap) < 0)
			*what = NULL;
		return -EBADMSG;
	}
	b.size = d->size;
	b.buf = malloc(d->size ? d->size : 1);
	if (!b.buf)
		return -ENOMEM;
	r = nx_registry_get_blob(reg, d->digest, 0, 0, small_blob_cb, &b);
	if (r == -EBADMSG || (r == 0 && b.got != b.size)) {
		if (asprintf(what, "%s %s is not %llu bytes long", name, ds,
			     (unsigned long long)d->size) < 0)
			*what = NULL;
		r = -EBADMSG;
	} else if (r < 0) {
		if (asprintf(what, "cannot fetch %s %s: %s", name, ds, strerror(-r)) < 0)
			*what = NULL;
	} else {
		nx_sha256(b.buf, b.size, sha);
		if (memcmp(sha, d->digest, NX_SHA256_LEN) != 0) {
			if (asprintf(what, "%s %s: content does not match its digest", name,
				     ds) < 0)
				*what = NULL;
			r = -EBADMSG;
		}
	}
	if (r < 0) {
		free(b.buf);
		return r;
	}
	*out = b.buf;
	return 0;
}

struct vnar {
	const struct nx_toc *toc;
	uint64_t blob_size;
	char *what; /* first mismatch */
	struct nx_sha256 blob_h, nar_h;
	int blob_h_live, nar_h_live;
	uint64_t got;
	uint32_t frame;
	uint8_t *cbuf;
	size_t cfill;
	uint8_t *ubuf;
	uint8_t *tail;
	size_t tail_len, tail_fill;
	struct nx_nar_parser *parser;
	uint32_t stack[NX_NAR_DEPTH_MAX + 2];
	uint64_t nevents;
};

static int vfail(struct vnar *v, const char *fmt, ...) NX_PRINTF(2, 3);
static int vfail(struct vnar *v, const char *fmt, ...)
{
	va_list ap;

	if (!v->what) {
		va_start(ap, fmt);
		if (vasprintf(&v->what, fmt, ap) < 0)
			v->what = NULL;
		va_end(ap);
	}
	return -EBADMSG;
}

/* Each NAR node as the parser sees it must be the TOC's entry at that path. */
static int v_node(void *ctx, const struct nx_nar_node *n)
{
	struct vnar *v = ctx;
	const struct nx_toc *toc = v->toc;
	const struct nx_toc_entry *e;
	const char *t;
	size_t tlen;
	int64_t idx = 0;

	if (n->depth > NX_NAR_DEPTH_MAX)
		return vfail(v, "NAR nests deeper than %u", NX_NAR_DEPTH_MAX);
	if (n->depth > 0) {
		idx = nx_toc_lookup(toc, v->stack[n->depth - 1], n->name, n->name_len);
		if (idx < 0)
			return vfail(v, "NAR has '%.*s', the TOC does not", (int)n->path_len,
				     n->path);
	}
	e = &toc->entries[idx];
	if (e->type != n->type)
		return vfail(v, "'%.*s' has type %d in the NAR, %d in the TOC",
			     (int)n->path_len, n->path, n->type, e->type);
	switch (n->type) {
	case NX_NODE_REGULAR:
		if (!!e->executable != !!n->executable || e->size != n->size ||
		    e->off != n->contents_off)
			return vfail(v, "file '%.*s' differs between NAR and TOC "
				     "(exec %d/%d, size %llu/%llu, offset %llu/%llu)",
				     (int)n->path_len, n->path, n->executable, e->executable,
				     (unsigned long long)n->size, (unsigned long long)e->size,
				     (unsigned long long)n->contents_off,
				     (unsigned long long)e->off);
		break;
	case NX_NODE_SYMLINK:
		t = nx_toc_target(toc, (uint32_t)idx, &tlen);
		if (!t || tlen != n->size || memcmp(t, n->target, tlen) != 0)
			return vfail(v, "symlink '%.*s' has another target in the TOC",
				     (int)n->path_len, n->path);
		break;
	case NX_NODE_DIRECTORY:
		v->stack[n->depth] = (uint32_t)idx;
		break;
	}
	v->nevents++;
	return 0;
}

static int v_frame(struct vnar *v)
{
	const struct nx_toc_frame *f = &v->toc->frames[v->frame];
	uint8_t sha[NX_SHA256_LEN];
	int r;

	nx_sha256(v->cbuf, f->clen, sha);
	if (memcmp(sha, f->sha256, NX_SHA256_LEN) != 0)
		return vfail(v, "frame %u (blob offset %llu) does not match its TOC digest",
			     v->frame, (unsigned long long)f->coff);
	r = nx_frame_decompress(v->cbuf, f->clen, v->ubuf, f->ulen);
	if (r < 0)
		return vfail(v, "frame %u does not decompress to %u bytes", v->frame, f->ulen);
	nx_sha256_update(&v->nar_h, v->ubuf, f->ulen);
	r = nx_nar_parser_feed(v->parser, v->ubuf, f->ulen);
	if (r < 0 && !v->what)
		return vfail(v, "NAR is malformed near offset %llu",
			     (unsigned long long)nx_nar_parser_offset(v->parser));
	if (r < 0)
		return r;
	v->frame++;
	v->cfill = 0;
	return 0;
}

static int v_blob_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct vnar *v = ctx;
	const uint8_t *p = buf;
	size_t take;
	int r;

	if (off != v->got)
		return vfail(v, "registry sent NAR layer bytes out of order "
			     "(offset %llu, want %llu)",
			     (unsigned long long)off, (unsigned long long)v->got);
	if (len > v->blob_size - v->got)
		return vfail(v, "NAR layer is longer than its descriptor's %llu bytes",
			     (unsigned long long)v->blob_size);
	nx_sha256_update(&v->blob_h, buf, len);
	v->got += len;
	while (len) {
		if (v->frame < v->toc->nframes) {
			const struct nx_toc_frame *f = &v->toc->frames[v->frame];

			take = f->clen - v->cfill;
			if (take > len)
				take = len;
			memcpy(v->cbuf + v->cfill, p, take);
			v->cfill += take;
			if (v->cfill == f->clen) {
				r = v_frame(v);
				if (r < 0)
					return r;
			}
		} else {
			take = len;
			if (take > v->tail_len - v->tail_fill)
				return vfail(v, "NAR layer has bytes after its seek table");
			memcpy(v->tail + v->tail_fill, p, take);
			v->tail_fill += take;
		}
		p += take;
		len -= take;
	}
	return 0;
}

/* Format 2: the whole pack goes through the pack's digest, and its NAR
 * layer's range through the checks of a format 1 NAR layer. */
struct vpack {
	struct nx_window w;
	struct nx_sha256 h;
	uint64_t got;
};

static int vpack_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct vpack *k = ctx;

	if (off != k->got)
		return vfail(k->w.ctx, "registry sent pack bytes out of order (offset %llu, "
			     "want %llu)", (unsigned long long)off, (unsigned long long)k->got);
	nx_sha256_update(&k->h, buf, len);
	k->got += len;
	return nx_window_cb(&k->w, off, buf, len);
}

/* Streams the NAR layer and checks it against the TOC and the manifest. */
static int verify_nar(struct nx_registry *reg, const struct nx_manifest *m,
		      const struct nx_toc *toc, char **what)
{
	struct nx_nar_sink sink = { .node = v_node };
	uint8_t sha[NX_SHA256_LEN], *want_tail = NULL;
	struct vnar v = { 0 };
	size_t cmax = 1;
	uint32_t i;
	int r;

	v.toc = toc;
	v.blob_size = m->nar.size;
	sink.ctx = &v;
	for (i = 0; i < toc->nframes; i++) {
		if (toc->frames[i].clen > VERIFY_CLEN_MAX) {
			r = vfail(&v, "frame %u declares %u compressed bytes, too many for a frame",
				  i, toc->frames[i].clen);
			goto out;
		}
		if (toc->frames[i].clen > cmax)
			cmax = toc->frames[i].clen;
	}
	v.tail_len = nx_seektable_size(toc->nframes);
	v.cbuf = malloc(cmax);
	v.ubuf = malloc(NX_FRAME_MAX);
	v.tail = malloc(v.tail_len);
	want_tail = malloc(v.tail_len);
	if (!v.cbuf || !v.ubuf || !v.tail || !want_tail) {
		r = -ENOMEM;
		goto out;
	}
	r = nx_nar_parser_new(&v.parser, &sink);
	if (r < 0)
		goto out;
	r = nx_sha256_init(&v.blob_h);
	if (r < 0)
		goto out;
	v.blob_h_live = 1;
	r = nx_sha256_init(&v.nar_h);
	if (r < 0)
		goto out;
	v.nar_h_live = 1;

	if (m->packed) {
		struct vpack k = { .w = { .cb = v_blob_cb, .ctx = &v, .base = m->nar_off,
					  .len = m->nar.size } };

		r = nx_sha256_init(&k.h);
		if (r < 0)
			goto out;
		r = nx_registry_get_blob(reg, m->nar.digest, 0, 0, vpack_cb, &k);
		nx_sha256_final(&k.h, sha);
		if (r == 0 && k.got != m->pack_size)
			r = vfail(&v, "pack is %llu bytes, its descriptor says %llu",
				  (unsigned long long)k.got, (unsigned long long)m->pack_size);
		else if (r == 0 && memcmp(sha, m->nar.digest, NX_SHA256_LEN) != 0)
			r = vfail(&v, "pack content does not match its digest");
	} else {
		r = nx_registry_get_blob(reg, m->nar.digest, 0, 0, v_blob_cb, &v);
	}
	if (r < 0) {
		if (!v.what)
			vfail(&v, "cannot fetch the NAR layer: %s", strerror(-r));
		goto out;
	}
	if (v.got != m->nar.size) {
		r = vfail(&v, "NAR layer is %llu bytes, its descriptor says %llu",
			  (unsigned long long)v.got, (unsigned long long)m->nar.size);
		goto out;
	}
	nx_sha256_final(&v.blob_h, sha);
	v.blob_h_live = 0;
	/* a packed NAR layer has no digest of its own: the pack's was checked,
	 * and every frame's is below */
	if (!m->packed && memcmp(sha, m->nar.digest, NX_SHA256_LEN) != 0) {
		r = vfail(&v, "NAR layer content does not match its digest");
		goto out;
	}
	if (v.frame != toc->nframes || v.tail_fill != v.tail_len) {
		r = vfail(&v, "NAR layer ends before its last frame or seek table");
		goto out;
	}
	nx_seektable_encode(toc->frames, toc->nframes, want_tail);
	if (memcmp(want_tail, v.tail, v.tail_len) != 0) {
		r = vfail(&v, "seek table does not match the TOC's frames");
		goto out;
	}
	r = nx_nar_parser_finish(v.parser);
	if (r < 0) {
		r = vfail(&v, "NAR is incomplete or has trailing bytes");
		goto out;
	}
	nx_sha256_final(&v.nar_h, sha);
	v.nar_h_live = 0;
	if (memcmp(sha, m->info.nar_hash, NX_SHA256_LEN) != 0) {
		char a[NX_NARHASH_STRLEN], b[NX_NARHASH_STRLEN];

		nx_narhash_format(sha, a);
		nx_narhash_format(m->info.nar_hash, b);
		r = vfail(&v, "NAR hash is %s, NarHash says %s", a, b);
		goto out;
	}
	if (nx_nar_parser_offset(v.parser) != m->info.nar_size) {
		r = vfail(&v, "NAR is %llu bytes, NarSize says %llu",
			  (unsigned long long)nx_nar_parser_offset(v.parser),
			  (unsigned long long)m->info.nar_size);
		goto out;
	}
	if (v.nevents != toc->nentries) {
		r = vfail(&v, "NAR has %llu nodes, the TOC %u", (unsigned long long)v.nevents,
			  toc->nentries);
		goto out;
	}
	r = 0;
out:
	if (v.blob_h_live)
		nx_sha256_release(&v.blob_h);
	if (v.nar_h_live)
		nx_sha256_release(&v.nar_h);
	nx_nar_parser_free(v.parser);
	free(v.cbuf);
	free(v.ubuf);
	free(v.tail);
	free(want_tail);
	if (r < 0 && !v.what)
		vfail(&v, "%s", strerror(-r));
	*what = v.what;
	return r < 0 ? r : 0;
}

/* 1 if a signature in @sigs verifies over @msg under @keys. */
static int any_sig(const struct nx_pubkey *keys, size_t nkeys, char **sigs, size_t n,
		   const char *msg)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (nx_sig_verify(keys, nkeys, sigs[i], msg, strlen(msg)) == 1)
			return 1;
	return 0;
}

static int verify_sigs(const struct nx_manifest *m, const struct nx_pubkey *keys, size_t nkeys,
		       char **what)
{
	char *fp = NULL;
	int r, ok = 0;

	r = nx_toc_fingerprint(m->info.store_path, m->info.nar_hash, m->toc.digest, &fp);
	if (r < 0)
		return r;
	ok = any_sig(keys, nkeys, m->toc_sigs, m->ntoc_sigs, fp);
	free(fp);
	if (ok) {
		nx_log(NX_LOG_INFO, "%s: TOC signature verifies", m->info.store_path);
		return 0;
	}
	/* verify checks the whole NAR against NarHash, so a narinfo
	 * signature is as good as a TOC signature here */
	r = nx_fingerprint(&m->info, &fp);
	if (r < 0)
		return r;
	ok = any_sig(keys, nkeys, m->info.sigs, m->info.nsigs, fp);
	free(fp);
	if (ok) {
		nx_log(NX_LOG_INFO, "%s: narinfo signature verifies", m->info.store_path);
		return 0;
	}
	if (asprintf(what, "no signature by a trusted key (%zu narinfo, %zu TOC signatures)",
		     m->info.nsigs, m->ntoc_sigs) < 0)
		*what = NULL;
	return -EACCES;
}

static int verify_one(json_t *results, struct nx_registry *reg, const char *base, size_t blen,
		      const struct nx_pubkey *keys, size_t nkeys)
{
	static const struct nx_desc empty_desc = { .size = 2 };
	uint8_t digest[NX_SHA256_LEN], reg_digest[NX_SHA256_LEN];
	struct nx_manifest m = { 0 };
	struct nx_toc *toc = NULL;
	uint8_t *cfg = NULL;
	struct nx_desc cfgd = empty_desc;
	char *what = NULL, tag[NX_HASH_LEN + 1];
	int r, exists = 0, logged = 0;

	r = nx_cli_get_manifest(reg, base, blen, &m, digest, NULL);
	if (r < 0) {
		if (r == -ENOENT)
			what = strdup("not in the repository");
		else if (r == -EINVAL)
			what = strdup("no valid manifest");
		else if (asprintf(&what, "cannot fetch its manifest: %s", strerror(-r)) < 0)
			what = NULL;
		goto out;
	}
	/* the body we got must be what the registry stored under the tag */
	nx_cli_tag(base, tag);
	r = nx_registry_manifest_exists(reg, tag, &exists, reg_digest);
	if (r < 0 || !exists) {
		what = strdup("manifest vanished while verifying");
		r = -EIO;
		goto out;
	}
	if (memcmp(digest, reg_digest, NX_SHA256_LEN) != 0) {
		char a[NX_DIGEST_STRLEN], b[NX_DIGEST_STRLEN];

		nx_digest_format(digest, a);
		nx_digest_format(reg_digest, b);
		r = asprintf(&what, "manifest content is %s, the registry says %s", a, b);
		r = -EBADMSG;
		goto out;
	}
	if (keys) {
		r = verify_sigs(&m, keys, nkeys, &what);
		if (r < 0)
			goto out;
	}
	/* the config blob is referenced too; a registry may serve it to anyone */
	r = nx_digest_parse(NX_EMPTY_DIGEST, cfgd.digest);
	if (r == 0)
		r = fetch_small_blob(reg, &cfgd, 2, &cfg, &what, "config blob");
	if (r < 0)
		goto out;

	r = nx_cli_get_toc(reg, &m, &toc, &what);
	logged = r == -EINVAL || r == -E2BIG; /* by the TOC reader, naming the path */
	if (r < 0)
		goto out;
	r = verify_nar(reg, &m, toc, &what);
out:
	if (r < 0) {
		if (!logged)
			nx_log(NX_LOG_ERR, "verify %s/%.*s: %s", NX_STORE_DIR, (int)blen, base,
			       what ? what : strerror(-r));
	} else if (!results)
		printf("ok %s/%.*s\n", NX_STORE_DIR, (int)blen, base);
	if (results) {
		char *sp = NULL;

		if (asprintf(&sp, "%s/%.*s", NX_STORE_DIR, (int)blen, base) < 0 ||
		    json_array_append_new(results,
					  r < 0 ? json_pack("{s:s, s:b, s:s}", "path", sp, "ok", 0,
							    "error", what ? what : strerror(-r))
						: json_pack("{s:s, s:b}", "path", sp, "ok", 1)) < 0)
			r = r < 0 ? r : -ENOMEM;
		free(sp);
	}
	fflush(stdout);
	free(what);
	nx_toc_free(toc);
	free(cfg);
	nx_manifest_release(&m);
	return r;
}

int nx_cmd_verify(struct nx_cli *cli, int argc, char **argv)
{
	struct nx_registry *reg = NULL;
	struct nx_pubkey *keys = NULL;
	size_t nkeys = 0, blen;
	const char *base;
	json_t *results = NULL;
	int r, i, failed = 0, json = 0;

	r = common_only(cli, argc, argv, usage_verify, "verify", &json);
	if (r >= 0)
		return r;
	if (argc - optind < 2)
		return nx_cli_usage_error(usage_verify, "verify: missing %s",
					  optind >= argc ? "REGISTRY/REPO and PATH" : "PATH");
	for (i = optind + 1; i < argc; i++)
		if (nx_cli_path_arg(argv[i], &base, &blen, NULL) < 0)
			return nx_cli_usage_error(
				usage_verify, "verify: '%s' is not a store path or base name",
				argv[i]);
	if (nx_cli_keys(cli, &keys, &nkeys) < 0) {
		return nx_cli_synopsis(usage_verify);
	}
	if (nx_cli_registry(cli, argv[optind], 1, &reg) < 0) {
		free(keys);
		return NX_EXIT_ERR;
	}
	if (json && !(results = json_array()))
		failed = 1;
	for (i = optind + 1; i < argc && !(json && !results); i++) {
		nx_cli_path_arg(argv[i], &base, &blen, NULL);
		if (verify_one(results, reg, base, blen, keys, nkeys) < 0)
			failed = 1;
	}
	if (results && nx_cli_print_json(results) < 0)
		failed = 1;
	json_decref(results);
	nx_registry_close(reg);
	free(keys);
	return failed ? NX_EXIT_ERR : NX_EXIT_OK;
}

/* ----------------------------------------------------------------- cat */

static const char usage_cat[] =
	"usage: nixoci cat [OPTIONS] REGISTRY/REPO /nix/store/<hash>-<name>[/SUB/PATH]\n"
	"\n"
	"Writes a file of a store path to standard output, fetching only the frames\n"
	"it needs, through the same verified cache as nixoci-fs.\n"
	"\n"
	"options:\n"
	"  --cache DIR           use (and fill) this cache; default: a private temporary one\n"
	"  --closure NAME        resolve paths through the closure index NAME\n"
	"  --readlink            if the path is a symlink, print its target\n"
	"  --trusted-public-keys KEYS, --cafile FILE, --insecure, --timeout SECONDS, -v\n";

/* Walks @sub ("a/b/c") from the root of @toc. Logs and fails on a symlink
 * in the middle (symlinks are not followed: their targets may leave the
 * store path). */
static int walk(const struct nx_toc *toc, const char *spath, const char *sub, uint32_t *out)
{
	const char *p = sub, *end;
	uint32_t idx = 0;
	int64_t r;

	while (*p) {
		end = strchr(p, '/');
		if (!end)
			end = p + strlen(p);
		if (end == p || (end - p == 1 && p[0] == '.')) {
			p = *end ? end + 1 : end;
			continue;
		}
		if (toc->entries[idx].type == NX_NODE_SYMLINK) {
			nx_log(NX_LOG_ERR, "cat %s/%.*s: is a symlink; nixoci cat does not follow "
			       "symlinks", spath, (int)(p - 1 - sub), sub);
			return -ELOOP;
		}
		r = nx_toc_lookup(toc, idx, p, (size_t)(end - p));
		if (r < 0) {
			nx_log(NX_LOG_ERR, "cat %s/%.*s: %s", spath, (int)(end - sub), sub,
			       strerror((int)-r));
			return (int)r;
		}
		idx = (uint32_t)r;
		p = *end ? end + 1 : end;
	}
	*out = idx;
	return 0;
}

static int write_all(const void *buf, size_t len)
{
	int r = nx_write_all(STDOUT_FILENO, buf, len);

	if (r < 0)
		nx_log(NX_LOG_ERR, "cannot write to standard output: %s", strerror(-r));
	return r;
}

#define CAT_PIECE (1u << 20)

int nx_cmd_cat(struct nx_cli *cli, int argc, char **argv)
{
	enum { O_CACHE = NX_OPT_FIRST_PRIVATE, O_CLOSURE, O_READLINK };
	static const struct option lo[] = {
		{ "cache", required_argument, NULL, O_CACHE },
		{ "closure", required_argument, NULL, O_CLOSURE },
		{ "readlink", no_argument, NULL, O_READLINK },
		NX_CLI_LONGOPTS,
		{ NULL, 0, NULL, 0 },
	};
	struct nx_store_opts so = { 0 };
	struct nx_registry *reg = NULL;
	struct nx_store *st = NULL;
	struct nx_pubkey *keys = NULL;
	struct nx_spath *sp = NULL;
	const struct nx_toc *toc;
	const struct nx_toc_entry *e;
	const char *base, *sub, *cache = NULL;
	char *tmpdir = NULL, *buf = NULL, spath[sizeof(NX_STORE_DIR) + NX_BASE_MAX + 1];
	size_t blen, nkeys = 0, got;
	uint64_t off;
	uint32_t idx = 0;
	int c, r, readlink_ = 0, ret = NX_EXIT_ERR;

	while ((c = getopt_long(argc, argv, ":hv", lo, NULL)) != -1) {
		switch (c) {
		case 'h':
			fputs(usage_cat, stdout);
			return NX_EXIT_OK;
		case O_CACHE:
			cache = optarg;
			break;
		case O_CLOSURE:
			so.closure = optarg;
			break;
		case O_READLINK:
			readlink_ = 1;
			break;
		case '?':
		case ':':
			return nx_cli_usage_error(usage_cat, "cat: %s '%s'",
						  c == '?' ? "unknown option"
							   : "missing argument to",
						  argv[optind - 1]);
		default:
			if (nx_cli_opt(cli, c, optarg) < 0) {
				return nx_cli_synopsis(usage_cat);
			}
		}
	}
	if (argc - optind != 2)
		return nx_cli_usage_error(usage_cat, argc - optind < 2
						  ? "cat: missing REGISTRY/REPO or PATH"
						  : "cat: unexpected argument '%s'",
					  argv[argc - 1]);
	if (nx_cli_path_arg(argv[optind + 1], &base, &blen, &sub) < 0)
		return nx_cli_usage_error(usage_cat, "cat: '%s' is not inside a store path",
					  argv[optind + 1]);
	snprintf(spath, sizeof(spath), "%s/%.*s", NX_STORE_DIR, (int)blen, base);
	if (nx_cli_keys(cli, &keys, &nkeys) < 0) {
		return nx_cli_synopsis(usage_cat);
	}
	if (nx_cli_registry(cli, argv[optind], 1, &reg) < 0)
		goto out;
	if (!cache) {
		if (nx_cli_tmpdir(&tmpdir) < 0)
			goto out;
		cache = tmpdir;
	}
	so.cache_dir = cache;
	so.lookup_rate = -1; /* one user's command, not a shared mount */
	so.origin = nx_registry_ref(reg);
	so.keys = keys;
	so.nkeys = nkeys;
	{
		struct nx_source src = { reg, nx_registry_source_manifest,
					 nx_registry_source_blob, NULL, NULL };

		if (nx_store_open(&st, &so, &src) < 0)
			goto out;
	}
	r = nx_store_lookup(st, base, blen, &sp);
	if (r < 0) {
		nx_log(NX_LOG_ERR, "cat %s: %s", spath,
		       r == -ENOENT ? "not in the repository" : strerror(-r));
		goto out;
	}
	toc = nx_spath_toc(sp);
	if (walk(toc, spath, sub, &idx) < 0)
		goto out;
	e = &toc->entries[idx];
	if (e->type == NX_NODE_SYMLINK) {
		const char *t;
		size_t tlen;

		if (!readlink_) {
			nx_log(NX_LOG_ERR, "cat %s%s%s: is a symlink; use --readlink to print "
			       "its target", spath, *sub ? "/" : "", sub);
			goto out;
		}
		t = nx_toc_target(toc, idx, &tlen);
		if (write_all(t, tlen) < 0 || write_all("\n", 1) < 0)
			goto out;
		ret = NX_EXIT_OK;
		goto out;
	}
	if (e->type == NX_NODE_DIRECTORY) {
		nx_log(NX_LOG_ERR, "cat %s%s%s: is a directory", spath, *sub ? "/" : "", sub);
		goto out;
	}
	buf = malloc(CAT_PIECE);
	if (!buf)
		goto out;
	for (off = 0; off < e->size; off += got) {
		r = nx_store_read(st, sp, idx, off, CAT_PIECE, buf, &got);
		if (r < 0) {
			nx_log(NX_LOG_ERR, "cat %s%s%s: read at offset %llu: %s", spath,
			       *sub ? "/" : "", sub, (unsigned long long)off, strerror(-r));
			goto out;
		}
		if (got == 0) {
			nx_log(NX_LOG_ERR, "cat %s%s%s: file ends at %llu, TOC says %llu", spath,
			       *sub ? "/" : "", sub, (unsigned long long)off,
			       (unsigned long long)e->size);
			goto out;
		}
		if (write_all(buf, got) < 0)
			goto out;
	}
	ret = NX_EXIT_OK;
out:
	free(buf);
	nx_spath_put(sp);
	nx_store_close(st);
	nx_registry_close(reg);
	nx_cli_tmpdir_remove(tmpdir);
	free(keys);
	return ret;
}
