/*
 * common/manifest.c: the store-path manifest and the closure index JSON
 * (docs/format.md sections 2 and 5), with jansson.
 *
 * Building is deterministic: compact output with sorted keys, references
 * sorted, lists joined with single spaces, so that the same struct always
 * gives the same bytes and so the same digest. Parsing is strict about what
 * nixoci relies on and names the offending field in its one error line;
 * keys nixoci does not know are ignored, as OCI requires.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/common.h"

#define NX_ARTIFACT_CLOSURE "application/vnd.nixoci.closure.v1"
#define A_PREFIX "dev.nixoci."
#define SIZE_LIMIT (1ull << 53)

/* --------------------------------------------------------------- helpers */

static void free_list(char **v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

void nx_pathinfo_release(struct nx_pathinfo *pi)
{
	if (!pi)
		return;
	free(pi->store_path);
	free_list(pi->refs, pi->nrefs);
	free(pi->deriver);
	free_list(pi->sigs, pi->nsigs);
	free(pi->ca);
	memset(pi, 0, sizeof(*pi));
}

void nx_manifest_release(struct nx_manifest *m)
{
	if (!m)
		return;
	nx_pathinfo_release(&m->info);
	free_list(m->toc_sigs, m->ntoc_sigs);
	free(m->zstd_params);
	free(m->imports);
	nx_elf_needs_free(m->elf);
	memset(m, 0, sizeof(*m));
}

void nx_index_release(struct nx_index *ix)
{
	if (!ix)
		return;
	for (size_t i = 0; i < ix->nentries; i++)
		free(ix->entries[i].store_path);
	free(ix->entries);
	free_list(ix->roots, ix->nroots);
	memset(ix, 0, sizeof(*ix));
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Joins @v with single spaces, sorted when @sort. Caller frees. */
static char *join(char *const *v, size_t n, int sort)
{
	const char **tmp = NULL;
	size_t len = 1, pos = 0;
	char *s;

	if (n) {
		tmp = malloc(n * sizeof(*tmp));
		if (!tmp)
			return NULL;
		memcpy(tmp, v, n * sizeof(*tmp));
		if (sort)
			qsort(tmp, n, sizeof(*tmp), cmp_str);
	}
	for (size_t i = 0; i < n; i++)
		len += strlen(tmp[i]) + 1;
	s = malloc(len);
	if (!s) {
		free(tmp);
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(tmp[i]);

		if (i)
			s[pos++] = ' ';
		memcpy(s + pos, tmp[i], l);
		pos += l;
	}
	s[pos] = '\0';
	free(tmp);
	return s;
}

/* obj[key] = string, stealing nothing; returns -ENOMEM on failure. */
static int set_str(json_t *obj, const char *key, const char *val)
{
	json_t *v = json_string(val);

	if (!v || json_object_set_new(obj, key, v) < 0)
		return -ENOMEM;
	return 0;
}

static int set_int(json_t *obj, const char *key, json_int_t val)
{
	json_t *v = json_integer(val);

	if (!v || json_object_set_new(obj, key, v) < 0)
		return -ENOMEM;
	return 0;
}

static json_t *make_desc(const char *mt, const uint8_t digest[NX_SHA256_LEN], uint64_t size)
{
	char d[NX_DIGEST_STRLEN];
	json_t *o = json_object();

	if (!o)
		return NULL;
	nx_digest_format(digest, d);
	if (set_str(o, "mediaType", mt) < 0 || set_str(o, "digest", d) < 0 ||
	    set_int(o, "size", (json_int_t)size) < 0) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static int dump(json_t *root, char **json, size_t *len)
{
	char *s = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);

	if (!s)
		return -ENOMEM;
	*json = s;
	*len = strlen(s);
	return 0;
}

/* Strict decimal: digits only, no sign, no leading zero, fits in 64 bits. */
static int parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (!*s || (s[0] == '0' && s[1]))
		return -EINVAL;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
			return -EINVAL;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return 0;
}

enum list_kind { L_BASE, L_PATH, L_SIG };

static int item_ok(enum list_kind k, const char *s, size_t len)
{
	const char *colon;

	switch (k) {
	case L_BASE:
		return nx_storepath_check_base(s, len) == 0;
	case L_PATH: {
		char tmp[sizeof(NX_STORE_DIR) + NX_BASE_MAX + 1];
		const char *base;

		if (len >= sizeof(tmp))
			return 0;
		memcpy(tmp, s, len);
		tmp[len] = '\0';
		return nx_storepath_check(tmp, &base) == 0;
	}
	default:
		colon = memchr(s, ':', len);
		return colon && colon > s && colon + 1 < s + len;
	}
}

/*
 * Splits a single-space-separated list ("" is the empty list), checking each
 * item. With @sorted, items must be strictly increasing bytewise.
 */
/* each item is owned by v, freed by free_list (NX_ANALYZER_ARRAY_STORE_BEGIN says why) */
NX_ANALYZER_ARRAY_STORE_BEGIN
static int split_list(const char *field, const char *s, enum list_kind k, int sorted,
		      char ***out, size_t *n)
{
	char **v = NULL;
	size_t cnt = 0, cap = 0;
	const char *p = s;

	*out = NULL;
	*n = 0;
	if (!*s)
		return 0;
	for (;;) {
		const char *e = strchr(p, ' ');
		size_t len = e ? (size_t)(e - p) : strlen(p);

		if (len == 0 || !item_ok(k, p, len)) {
			nx_log(NX_LOG_ERR, "%s: invalid item '%.*s'", field, (int)len, p);
			goto fail;
		}
		if (cnt == cap) {
			size_t ncap = cap ? cap * 2 : 8;
			char **nv = reallocarray(v, ncap, sizeof(*nv));

			if (!nv)
				goto nomem;
			v = nv;
			cap = ncap;
		}
		v[cnt] = strndup(p, len);
		if (!v[cnt])
			goto nomem;
		if (sorted && cnt > 0 && strcmp(v[cnt - 1], v[cnt]) >= 0) {
			nx_log(NX_LOG_ERR, "%s: '%s' is not sorted or is a duplicate", field,
			       v[cnt]);
			cnt++;
			goto fail;
		}
		cnt++;
		if (!e)
			break;
		p = e + 1;
	}
	*out = v;
	*n = cnt;
	return 0;
nomem:
	free_list(v, cnt);
	return -ENOMEM;
fail:
	free_list(v, cnt);
	return -EINVAL;
}
NX_ANALYZER_ARRAY_STORE_END

static int parse_root(const char *what, const char *json, size_t len, size_t cap,
		      json_t **root)
{
	json_error_t err;

	if (len > cap) {
		nx_log(NX_LOG_ERR, "%s: %zu bytes exceeds the limit of %zu", what, len, cap);
		return -E2BIG;
	}
	*root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &err);
	if (!*root) {
		nx_log(NX_LOG_ERR, "%s: not valid json: %s (line %d)", what, err.text, err.line);
		return -EINVAL;
	}
	if (!json_is_object(*root)) {
		nx_log(NX_LOG_ERR, "%s: not a json object", what);
		json_decref(*root);
		*root = NULL;
		return -EINVAL;
	}
	return 0;
}

/* obj[key] as a string; NULL (and a log line when @required) otherwise. */
static const char *get_str(const char *what, json_t *obj, const char *key, int required)
{
	json_t *v = json_object_get(obj, key);

	if (!v) {
		if (required)
			nx_log(NX_LOG_ERR, "%s: %s is missing", what, key);
		return NULL;
	}
	if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v)) {
		nx_log(NX_LOG_ERR, "%s: %s is not a string", what, key);
		return NULL;
	}
	return json_string_value(v);
}

static int check_eq(const char *what, json_t *obj, const char *key, const char *want)
{
	const char *s = get_str(what, obj, key, 1);

	if (!s)
		return -EINVAL;
	if (strcmp(s, want) != 0) {
		nx_log(NX_LOG_ERR, "%s: %s is '%s', expected '%s'", what, key, s, want);
		return -EINVAL;
	}
	return 0;
}

static int check_schema(const char *what, json_t *root)
{
	json_t *v = json_object_get(root, "schemaVersion");

	if (!json_is_integer(v) || json_integer_value(v) != 2) {
		nx_log(NX_LOG_ERR, "%s: schemaVersion is not 2", what);
		return -EINVAL;
	}
	return 0;
}

/* A descriptor: mediaType (checked against @mt when not NULL), digest, size. */
static int parse_desc(const char *what, json_t *d, const char *mt, struct nx_desc *out)
{
	const char *dg;
	json_t *sz;

	if (!json_is_object(d)) {
		nx_log(NX_LOG_ERR, "%s: not an object", what);
		return -EINVAL;
	}
	if (mt && check_eq(what, d, "mediaType", mt) < 0)
		return -EINVAL;
	dg = get_str(what, d, "digest", 1);
	if (!dg)
		return -EINVAL;
	if (nx_digest_parse(dg, out->digest) < 0) {
		nx_log(NX_LOG_ERR, "%s: digest '%s' is not sha256:<64 lower-case hex>", what, dg);
		return -EINVAL;
	}
	sz = json_object_get(d, "size");
	if (!json_is_integer(sz) || json_integer_value(sz) <= 0 ||
	    (uint64_t)json_integer_value(sz) >= SIZE_LIMIT) {
		nx_log(NX_LOG_ERR, "%s: size is not a positive integer below 2^53", what);
		return -EINVAL;
	}
	out->size = (uint64_t)json_integer_value(sz);
	return 0;
}

static int dup_opt(const char *s, char **out)
{
	*out = NULL;
	if (!s)
		return 0;
	*out = strdup(s);
	return *out ? 0 : -ENOMEM;
}

/* ---------------------------------------------------------- import graph */

int nx_imports_format(const uint32_t *edges, size_t n, char **out)
{
	size_t cap = 3 + n * 22, len = 0;
	char *s;

	*out = NULL;
	if (n > NX_IMPORTS_MAX)
		return -E2BIG;
	s = malloc(cap);
	if (!s)
		return -ENOMEM;
	len = (size_t)snprintf(s, cap, "v1");
	for (size_t i = 0; i < n; i++) {
		int w;

		if (i && edges[2 * i] == edges[2 * i - 2])
			w = snprintf(s + len, cap - len, ",%u", edges[2 * i + 1]);
		else
			w = snprintf(s + len, cap - len, ";%u:%u", edges[2 * i], edges[2 * i + 1]);
		if (w < 0 || (size_t)w >= cap - len) {
			free(s);
			return -EINVAL;
		}
		len += (size_t)w;
	}
	if (len > NX_IMPORTS_MAX) {
		free(s);
		return -E2BIG;
	}
	*out = s;
	return 0;
}

/* A decimal entry index without a sign or leading zeros; *p moves past it. */
static int imp_num(const char **p, uint32_t *v)
{
	const char *s = *p;
	uint64_t x = 0;

	if (*s < '0' || *s > '9' || (*s == '0' && s[1] >= '0' && s[1] <= '9'))
		return -EINVAL;
	for (; *s >= '0' && *s <= '9'; s++) {
		x = x * 10 + (uint64_t)(*s - '0');
		if (x >= UINT32_MAX)
			return -EINVAL;
	}
	*v = (uint32_t)x;
	*p = s;
	return 0;
}

int nx_imports_parse(const char *s, uint32_t **edges, size_t *n)
{
	size_t len = strlen(s), k = 0, cap = 0;
	uint32_t *e = NULL, from = 0, to;
	const char *p = s + 2;
	int have = 0;

	*edges = NULL;
	*n = 0;
	if (len > NX_IMPORTS_MAX)
		return -E2BIG;
	if (strncmp(s, "v1", 2) != 0)
		return -EINVAL;
	/* every edge takes at least 2 bytes ("a:b" or ",b") */
	cap = len / 2 + 1;
	e = malloc(cap * 2 * sizeof(*e));
	if (!e)
		return -ENOMEM;
	while (*p) {
		uint32_t prev_from = from;

		if (*p++ != ';' || imp_num(&p, &from) < 0 || *p++ != ':' ||
		    (have && from <= prev_from))
			goto bad;
		have = 1;
		for (int first = 1;; first = 0) {
			if (!first && *p++ != ',')
				goto bad;
			if (imp_num(&p, &to) < 0 || to == from ||
			    (!first && to <= e[2 * k - 1]) || k >= cap)
				goto bad;
			e[2 * k] = from;
			e[2 * k + 1] = to;
			k++;
			if (*p != ',')
				break;
		}
	}
	if (!k) {
		free(e);
		return -EINVAL;
	}
	*edges = e;
	*n = k;
	return 0;
bad:
	free(e);
	return -EINVAL;
}

/* ------------------------------------------------------- ELF dynamic info */

void nx_elf_needs_free(struct nx_elf_needs *n)
{
	if (!n)
		return;
	free_list(n->names, n->nnames);
	free_list(n->search, n->nsearch);
	free(n->files);
	free(n);
}

const struct nx_elf_need *nx_elf_needs_find(const struct nx_elf_needs *n, uint32_t entry)
{
	size_t lo = 0, hi = n ? n->nfiles : 0;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (n->files[mid].entry == entry)
			return &n->files[mid];
		if (n->files[mid].entry < entry)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* A string of 1..@max bytes without NUL (and without '/' when @noslash). */
static int needs_str(const json_t *v, size_t max, int noslash)
{
	const char *s = json_string_value(v);
	size_t n = s ? json_string_length(v) : 0;

	return s && n && n <= max && strlen(s) == n && !(noslash && strchr(s, '/'));
}

/* Grows *@v (of *@n items) by one slot; 0 or -ENOMEM. */
static int grow_list(char ***v, size_t n)
{
	char **nv = realloc(*v, (n + 1) * sizeof(**v));

	if (!nv)
		return -ENOMEM;
	*v = nv;
	return 0;
}

int nx_elf_needs_add(struct nx_elf_needs **np, uint32_t entry, const char *dir, int rpath,
		     const char *const *names, unsigned nnames)
{
	struct nx_elf_needs *n = *np;
	struct nx_elf_need *f, *nf;
	size_t dl = dir ? strlen(dir) : 0;
	int32_t k = -1;

	/* the same rules as _parse: what is added is what a reader takes */
	if (entry < 1 || entry == UINT32_MAX || nnames < 1 || nnames > NX_ELF_NEEDED_MAX ||
	    dl > NX_ELF_RUNPATH_MAX ||
	    (n && n->nfiles && entry <= n->files[n->nfiles - 1].entry))
		return -EINVAL;
	for (unsigned j = 0; j < nnames; j++) {
		size_t l = strlen(names[j]);

		if (!l || l > NX_ELF_NAME_MAX || strchr(names[j], '/'))
			return -EINVAL;
	}
	if (!n && !(n = *np = calloc(1, sizeof(*n))))
		return -ENOMEM;
	for (size_t i = 0; dl && i < n->nsearch && k < 0; i++)
		if (strcmp(n->search[i], dir) == 0)
			k = (int32_t)i;
	if (dl && k < 0) {
		if (n->nsearch >= INT32_MAX || grow_list(&n->search, n->nsearch) < 0 ||
		    !(n->search[n->nsearch] = strdup(dir)))
			return -ENOMEM;
		k = (int32_t)n->nsearch++;
	}
	nf = realloc(n->files, (n->nfiles + 1) * sizeof(*nf));
	if (!nf)
		return -ENOMEM;
	n->files = nf;
	f = &nf[n->nfiles];
	f->entry = entry;
	f->search = k;
	f->rpath = rpath && k >= 0;
	f->name0 = (uint32_t)n->nnames;
	f->nnames = 0;
	for (unsigned j = 0; j < nnames; j++) {
		if (grow_list(&n->names, n->nnames) < 0 || !(n->names[n->nnames] = strdup(names[j]))) {
			/* drop the half-added file's names: the struct stays whole */
			while (f->nnames--)
				free(n->names[--n->nnames]);
			return -ENOMEM;
		}
		n->nnames++;
		f->nnames++;
	}
	n->nfiles++;
	return 0;
}

int nx_elf_needs_format(const struct nx_elf_needs *n, char **out)
{
	json_t *o = json_object(), *files = json_array(), *search = json_array();
	int r = -ENOMEM;

	*out = NULL;
	if (!o || !files || !search)
		goto out;
	for (size_t i = 0; i < n->nsearch; i++)
		if (json_array_append_new(search, json_string(n->search[i])) < 0)
			goto out;
	for (size_t i = 0; i < n->nfiles; i++) {
		const struct nx_elf_need *f = &n->files[i];
		json_t *a = json_pack("[IIi]", (json_int_t)f->entry, (json_int_t)f->search, f->rpath);

		if (!a || json_array_append_new(files, a) < 0)
			goto out;
		for (uint32_t k = 0; k < f->nnames; k++)
			if (json_array_append_new(a, json_string(n->names[f->name0 + k])) < 0)
				goto out;
	}
	if (json_object_set_new(o, "v", json_integer(1)) < 0 ||
	    json_object_set(o, "files", files) < 0 || json_object_set(o, "search", search) < 0)
		goto out;
	*out = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	if (!*out)
		goto out;
	r = 0;
	if (strlen(*out) > NX_ELF_NEEDS_MAX) {
		free(*out);
		*out = NULL;
		r = -E2BIG;
	}
out:
	json_decref(files);
	json_decref(search);
	json_decref(o);
	return r;
}

int nx_elf_needs_parse(const char *s, struct nx_elf_needs **out)
{
	struct nx_elf_needs *n = NULL;
	json_t *o = NULL, *files, *search, *v;
	size_t nnames = 0;
	int r = -EINVAL;

	*out = NULL;
	if (strlen(s) > NX_ELF_NEEDS_MAX)
		return -E2BIG;
	o = json_loads(s, JSON_REJECT_DUPLICATES, NULL);
	files = json_object_get(o, "files");
	search = json_object_get(o, "search");
	v = json_object_get(o, "v");
	if (!json_is_object(o) || json_object_size(o) != 3 || !json_is_integer(v) ||
	    json_integer_value(v) != 1 || !json_is_array(files) || !json_is_array(search) ||
	    !json_array_size(files))
		goto out;
	for (size_t i = 0; i < json_array_size(files); i++) {
		json_t *a = json_array_get(files, i);
		size_t k = json_array_size(a);

		if (!json_is_array(a) || k < 4 || k > 3 + NX_ELF_NEEDED_MAX)
			goto out;
		nnames += k - 3;
	}
	n = calloc(1, sizeof(*n));
	if (!n || !(n->files = calloc(json_array_size(files), sizeof(*n->files))) ||
	    !(n->names = calloc(nnames, sizeof(*n->names))) ||
	    (json_array_size(search) && !(n->search = calloc(json_array_size(search), sizeof(char *))))) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < json_array_size(search); i++) {
		json_t *d = json_array_get(search, i);

		if (!needs_str(d, NX_ELF_RUNPATH_MAX, 0))
			goto out;
		if (!(n->search[n->nsearch] = strdup(json_string_value(d)))) {
			r = -ENOMEM;
			goto out;
		}
		n->nsearch++;
	}
	for (size_t i = 0; i < json_array_size(files); i++) {
		json_t *a = json_array_get(files, i), *e = json_array_get(a, 0),
		       *k = json_array_get(a, 1), *rp = json_array_get(a, 2);
		struct nx_elf_need *f = &n->files[i];
		json_int_t ev = json_integer_value(e), kv = json_integer_value(k),
			   rv = json_integer_value(rp);

		if (!json_is_integer(e) || !json_is_integer(k) || !json_is_integer(rp) || ev < 1 ||
		    ev >= (json_int_t)UINT32_MAX || (i && (uint32_t)ev <= n->files[i - 1].entry) ||
		    kv < -1 || kv >= (json_int_t)n->nsearch || rv < 0 || rv > 1 || (rv && kv < 0))
			goto out;
		f->entry = (uint32_t)ev;
		f->search = (int32_t)kv;
		f->rpath = (int)rv;
		f->name0 = (uint32_t)n->nnames;
		f->nnames = (uint32_t)(json_array_size(a) - 3);
		for (size_t j = 3; j < json_array_size(a); j++) {
			json_t *nm = json_array_get(a, j);

			if (!needs_str(nm, NX_ELF_NAME_MAX, 1))
				goto out;
			if (!(n->names[n->nnames] = strdup(json_string_value(nm)))) {
				r = -ENOMEM;
				goto out;
			}
			n->nnames++;
		}
		n->nfiles++;
	}
	*out = n;
	n = NULL;
	r = 0;
out:
	nx_elf_needs_free(n);
	json_decref(o);
	return r;
}

/* -------------------------------------------------------------- manifest */

static int manifest_annotations(const struct nx_manifest *m, json_t *a)
{
	const struct nx_pathinfo *pi = &m->info;
	char nh[NX_NARHASH_STRLEN], num[32], *s;
	int r;

	nx_narhash_format(pi->nar_hash, nh);
	snprintf(num, sizeof(num), "%llu", (unsigned long long)pi->nar_size);
	if (set_str(a, A_PREFIX "format", m->packed ? "2" : "1") < 0 ||
	    set_str(a, A_PREFIX "store-path", pi->store_path) < 0 ||
	    set_str(a, A_PREFIX "nar-hash", nh) < 0 || set_str(a, A_PREFIX "nar-size", num) < 0 ||
	    set_str(a, A_PREFIX "zstd", m->zstd_params) < 0)
		return -ENOMEM;
	s = join(pi->refs, pi->nrefs, 1);
	if (!s)
		return -ENOMEM;
	r = set_str(a, A_PREFIX "references", s);
	free(s);
	if (r < 0)
		return r;
	if (pi->deriver && set_str(a, A_PREFIX "deriver", pi->deriver) < 0)
		return -ENOMEM;
	if (pi->ca && set_str(a, A_PREFIX "ca", pi->ca) < 0)
		return -ENOMEM;
	if (pi->nsigs) {
		s = join(pi->sigs, pi->nsigs, 0);
		if (!s)
			return -ENOMEM;
		r = set_str(a, A_PREFIX "sigs", s);
		free(s);
		if (r < 0)
			return r;
	}
	if (m->ntoc_sigs) {
		s = join(m->toc_sigs, m->ntoc_sigs, 0);
		if (!s)
			return -ENOMEM;
		r = set_str(a, A_PREFIX "toc-sigs", s);
		free(s);
		if (r < 0)
			return r;
	}
	if (m->nimports) {
		r = nx_imports_format(m->imports, m->nimports, &s);
		if (r < 0)
			return r;
		r = set_str(a, A_PREFIX "imports", s);
		free(s);
		if (r < 0)
			return r;
	}
	if (m->elf) {
		r = nx_elf_needs_format(m->elf, &s);
		if (r < 0)
			return r;
		r = set_str(a, A_PREFIX "elf", s);
		free(s);
		if (r < 0)
			return r;
	}
	return 0;
}

/* The pack layer of a format 2 manifest: the pack's descriptor, and where
 * this path's NAR layer and TOC are in it. */
static json_t *pack_desc(const struct nx_manifest *m)
{
	char d[NX_DIGEST_STRLEN], num[32];
	json_t *o = make_desc(NX_MT_PACK, m->nar.digest, m->pack_size), *a = json_object();
	const struct {
		const char *key;
		uint64_t v;
	} nums[] = {
		{ A_PREFIX "nar-offset", m->nar_off },
		{ A_PREFIX "nar-length", m->nar.size },
		{ A_PREFIX "toc-offset", m->toc_off },
		{ A_PREFIX "toc-length", m->toc.size },
	};

	if (!o || !a || json_object_set_new(o, "annotations", a) < 0) {
		json_decref(o);
		if (!o || !a)
			json_decref(a);
		return NULL;
	}
	for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
		snprintf(num, sizeof(num), "%llu", (unsigned long long)nums[i].v);
		if (set_str(a, nums[i].key, num) < 0)
			goto fail;
	}
	nx_digest_format(m->toc.digest, d);
	if (set_str(a, A_PREFIX "toc-digest", d) < 0)
		goto fail;
	return o;
fail:
	json_decref(o);
	return NULL;
}

void nx_manifest_toc_at(const struct nx_manifest *m, const uint8_t **digest, uint64_t *off)
{
	*digest = m->packed ? m->nar.digest : m->toc.digest;
	*off = m->packed ? m->toc_off : 0;
}

int nx_window_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct nx_window *w = ctx;
	const uint8_t *b = buf;
	uint64_t end = w->base + w->len;

	/* bytes outside the window (a whole-blob answer): not ours to see */
	if (off >= end || off + len <= w->base)
		return 0;
	if (off < w->base) {
		b += w->base - off;
		len -= (size_t)(w->base - off);
		off = w->base;
	}
	if (len > end - off)
		len = (size_t)(end - off);
	return w->cb(w->ctx, off - w->base, b, len);
}

int nx_manifest_build(const struct nx_manifest *m, char **json, size_t *len)
{
	static const uint8_t empty_digest[NX_SHA256_LEN] = {
		0x44, 0x13, 0x6f, 0xa3, 0x55, 0xb3, 0x67, 0x8a, 0x11, 0x46, 0xad,
		0x16, 0xf7, 0xe8, 0x64, 0x9e, 0x94, 0xfb, 0x4f, 0xc2, 0x1f, 0xe7,
		0x7e, 0x83, 0x10, 0xc0, 0x60, 0xf6, 0x1c, 0xaa, 0xff, 0x8a,
	};
	const char *base;
	json_t *root = NULL, *a, *layers, *d;
	int r = -ENOMEM;

	if (!m->info.store_path || nx_storepath_check(m->info.store_path, &base) < 0 ||
	    m->info.nar_size == 0 || !m->zstd_params || m->nar.size == 0 || m->toc.size == 0) {
		nx_log(NX_LOG_ERR, "manifest: incomplete store path information for '%s'",
		       m->info.store_path ? m->info.store_path : "(null)");
		return -EINVAL;
	}
	root = json_object();
	a = json_object();
	layers = json_array();
	if (!root || !a || !layers) {
		json_decref(a);
		json_decref(layers);
		goto out;
	}
	if (json_object_set_new(root, "annotations", a) < 0) {
		json_decref(layers);
		goto out;
	}
	if (json_object_set_new(root, "layers", layers) < 0)
		goto out;
	r = manifest_annotations(m, a);
	if (r < 0)
		goto out;
	r = -ENOMEM;
	if (m->packed) {
		d = pack_desc(m);
		if (!d || json_array_append_new(layers, d) < 0)
			goto out;
	} else {
		d = make_desc(NX_MT_NAR, m->nar.digest, m->nar.size);
		if (!d || json_array_append_new(layers, d) < 0)
			goto out;
		d = make_desc(NX_MT_TOC, m->toc.digest, m->toc.size);
		if (!d || json_array_append_new(layers, d) < 0)
			goto out;
	}
	d = make_desc(NX_MT_EMPTY, empty_digest, 2);
	if (!d || json_object_set_new(root, "config", d) < 0)
		goto out;
	if (set_str(root, "artifactType",
		    m->packed ? NX_ARTIFACT_STORE_PATH_PACKED : NX_ARTIFACT_STORE_PATH) < 0 ||
	    set_str(root, "mediaType", NX_MT_MANIFEST) < 0 || set_int(root, "schemaVersion", 2) < 0)
		goto out;
	r = dump(root, json, len);
	if (r == 0) {
		/* Never publish what a reader refuses (bad refs, sigs, sizes). */
		struct nx_manifest check;

		r = nx_manifest_parse(*json, *len, &check);
		if (r < 0) {
			nx_log(NX_LOG_ERR, "manifest: refusing to build an invalid manifest for %s",
			       m->info.store_path);
			free(*json);
			*json = NULL;
		}
		nx_manifest_release(&check);
	}
out:
	json_decref(root);
	return r;
}

static int manifest_parse_annotations(json_t *a, struct nx_manifest *m)
{
	static const char what[] = "manifest annotations";
	struct nx_pathinfo *pi = &m->info;
	const char *s, *base;
	char canon[NX_NARHASH_STRLEN];
	json_t *v;
	const char *key;
	int r;

	if (!json_is_object(a)) {
		nx_log(NX_LOG_ERR, "manifest: annotations are missing or not an object");
		return -EINVAL;
	}
	json_object_foreach(a, key, v) {
		if (!json_is_string(v)) {
			nx_log(NX_LOG_ERR, "manifest: annotation %s is not a string", key);
			return -EINVAL;
		}
	}
	s = get_str(what, a, A_PREFIX "format", 1);
	if (!s)
		return -EINVAL;
	if (strcmp(s, m->packed ? "2" : "1") != 0) {
		nx_log(NX_LOG_ERR, "manifest: unsupported dev.nixoci.format '%s' for a %s "
				   "manifest (this nixoci reads format 1 and format 2 packed "
				   "manifests; upgrade nixoci)", s, m->packed ? "packed" : "format 1");
		return -EINVAL;
	}
	s = get_str(what, a, A_PREFIX "store-path", 1);
	if (!s)
		return -EINVAL;
	if (nx_storepath_check(s, &base) < 0) {
		nx_log(NX_LOG_ERR, "manifest: dev.nixoci.store-path '%s' is not a valid store path",
		       s);
		return -EINVAL;
	}
	pi->store_path = strdup(s);
	if (!pi->store_path)
		return -ENOMEM;
	s = get_str(what, a, A_PREFIX "nar-hash", 1);
	if (!s)
		return -EINVAL;
	if (nx_narhash_parse(s, pi->nar_hash) < 0 ||
	    (nx_narhash_format(pi->nar_hash, canon), strcmp(canon, s) != 0)) {
		nx_log(NX_LOG_ERR, "manifest: dev.nixoci.nar-hash '%s' is not sha256:<52 nix32>",
		       s);
		return -EINVAL;
	}
	s = get_str(what, a, A_PREFIX "nar-size", 1);
	if (!s)
		return -EINVAL;
	if (parse_u64(s, &pi->nar_size) < 0 || pi->nar_size == 0) {
		nx_log(NX_LOG_ERR, "manifest: dev.nixoci.nar-size '%s' is not a positive integer",
		       s);
		return -EINVAL;
	}
	s = get_str(what, a, A_PREFIX "references", 1);
	if (!s)
		return -EINVAL;
	r = split_list("manifest: dev.nixoci.references", s, L_BASE, 1, &pi->refs, &pi->nrefs);
	if (r < 0)
		return r;
	s = get_str(what, a, A_PREFIX "deriver", 0);
	if (s && nx_storepath_check_base(s, strlen(s)) < 0) {
		nx_log(NX_LOG_ERR, "manifest: dev.nixoci.deriver '%s' is not a store base name",
		       s);
		return -EINVAL;
	}
	if (dup_opt(s, &pi->deriver) < 0)
		return -ENOMEM;
	s = get_str(what, a, A_PREFIX "ca", 0);
	if (s && !*s) {
		nx_log(NX_LOG_ERR, "manifest: dev.nixoci.ca is empty");
		return -EINVAL;
	}
	if (dup_opt(s, &pi->ca) < 0)
		return -ENOMEM;
	s = get_str(what, a, A_PREFIX "sigs", 0);
	if (s) {
		r = split_list("manifest: dev.nixoci.sigs", s, L_SIG, 0, &pi->sigs, &pi->nsigs);
		if (r < 0)
			return r;
	}
	s = get_str(what, a, A_PREFIX "toc-sigs", 0);
	if (s) {
		r = split_list("manifest: dev.nixoci.toc-sigs", s, L_SIG, 0, &m->toc_sigs,
			       &m->ntoc_sigs);
		if (r < 0)
			return r;
	}
	s = get_str(what, a, A_PREFIX "imports", 0);
	if (s) {
		/* a hint: a bad one is ignored, the path serves all the same */
		r = nx_imports_parse(s, &m->imports, &m->nimports);
		if (r == -ENOMEM)
			return r;
		if (r < 0)
			nx_log(NX_LOG_WARNING, "manifest of %s: ignoring its dev.nixoci.imports (%s); "
					    "its Python imports are predicted at run time",
			       pi->store_path, r == -E2BIG ? "over 256 KiB" : "malformed");
	}
	s = get_str(what, a, A_PREFIX "elf", 0);
	if (s) {
		/* a hint too: without it the ELF files are parsed as they arrive */
		r = nx_elf_needs_parse(s, &m->elf);
		if (r == -ENOMEM)
			return r;
		if (r < 0)
			nx_log(NX_LOG_WARNING, "manifest of %s: ignoring its dev.nixoci.elf (%s); "
					    "its libraries are predicted from their bytes",
			       pi->store_path, r == -E2BIG ? "over 256 KiB" : "malformed");
	}
	s = get_str(what, a, A_PREFIX "zstd", 1);
	if (!s)
		return -EINVAL;
	if (!*s) {
		nx_log(NX_LOG_ERR, "manifest: dev.nixoci.zstd is empty");
		return -EINVAL;
	}
	return dup_opt(s, &m->zstd_params);
}

/* A format 2 layer list: one pack layer whose annotations place the NAR
 * layer and the TOC inside the pack (format.md 2.1). */
static int parse_pack(json_t *layers, struct nx_manifest *m)
{
	static const char what[] = "manifest layers[0] (pack)";
	struct nx_desc pack;
	json_t *l, *a;
	const char *s;
	uint64_t v[4];
	static const char *const keys[4] = {
		A_PREFIX "nar-offset", A_PREFIX "nar-length",
		A_PREFIX "toc-offset", A_PREFIX "toc-length",
	};

	if (!json_is_array(layers) || json_array_size(layers) != 1) {
		nx_log(NX_LOG_ERR, "manifest: layers of a packed manifest is not an array of "
				   "exactly 1 (pack)");
		return -EINVAL;
	}
	l = json_array_get(layers, 0);
	if (parse_desc(what, l, NX_MT_PACK, &pack) < 0)
		return -EINVAL;
	a = json_object_get(l, "annotations");
	if (!json_is_object(a)) {
		nx_log(NX_LOG_ERR, "%s: annotations are missing", what);
		return -EINVAL;
	}
	for (int i = 0; i < 4; i++) {
		s = get_str(what, a, keys[i], 1);
		if (!s)
			return -EINVAL;
		if (parse_u64(s, &v[i]) < 0 || v[i] >= SIZE_LIMIT || ((i & 1) && v[i] == 0)) {
			nx_log(NX_LOG_ERR, "%s: %s '%s' is not a%s integer below 2^53", what,
			       keys[i], s, (i & 1) ? " positive" : "n");
			return -EINVAL;
		}
	}
	/* both below 2^53: the sums cannot overflow */
	if (v[0] + v[1] > pack.size || v[2] + v[3] > pack.size ||
	    (v[0] < v[2] + v[3] && v[2] < v[0] + v[1])) {
		nx_log(NX_LOG_ERR, "%s: the NAR layer [%llu, +%llu) and the TOC [%llu, +%llu) do "
				   "not lie apart inside the pack of %llu bytes", what,
		       (unsigned long long)v[0], (unsigned long long)v[1], (unsigned long long)v[2],
		       (unsigned long long)v[3], (unsigned long long)pack.size);
		return -EINVAL;
	}
	s = get_str(what, a, A_PREFIX "toc-digest", 1);
	if (!s)
		return -EINVAL;
	if (nx_digest_parse(s, m->toc.digest) < 0) {
		nx_log(NX_LOG_ERR, "%s: toc-digest '%s' is not sha256:<64 lower-case hex>", what,
		       s);
		return -EINVAL;
	}
	memcpy(m->nar.digest, pack.digest, NX_SHA256_LEN);
	m->pack_size = pack.size;
	m->nar_off = v[0];
	m->nar.size = v[1];
	m->toc_off = v[2];
	m->toc.size = v[3];
	return 0;
}

int nx_manifest_parse(const char *json, size_t len, struct nx_manifest *out)
{
	static const char what[] = "manifest";
	struct nx_desc cfg;
	json_t *root, *layers;
	const char *at;
	int r;

	memset(out, 0, sizeof(*out));
	r = parse_root(what, json, len, NX_MANIFEST_MAX, &root);
	if (r < 0)
		return r;
	r = -EINVAL;
	if (check_schema(what, root) < 0 || check_eq(what, root, "mediaType", NX_MT_MANIFEST) < 0)
		goto out;
	at = get_str(what, root, "artifactType", 1);
	if (!at)
		goto out;
	if (strcmp(at, NX_ARTIFACT_STORE_PATH_PACKED) == 0) {
		out->packed = 1;
	} else if (strcmp(at, NX_ARTIFACT_STORE_PATH) != 0) {
		nx_log(NX_LOG_ERR, "manifest: artifactType is '%s', expected '%s' or '%s'", at,
		       NX_ARTIFACT_STORE_PATH, NX_ARTIFACT_STORE_PATH_PACKED);
		goto out;
	}
	if (parse_desc("manifest config", json_object_get(root, "config"), NX_MT_EMPTY, &cfg) < 0)
		goto out;
	if (cfg.size != 2 || check_eq("manifest config", json_object_get(root, "config"),
				      "digest", NX_EMPTY_DIGEST) < 0) {
		nx_log(NX_LOG_ERR, "manifest: config is not the empty descriptor");
		goto out;
	}
	layers = json_object_get(root, "layers");
	if (out->packed) {
		if (parse_pack(layers, out) < 0)
			goto out;
	} else if (!json_is_array(layers) || json_array_size(layers) != 2) {
		nx_log(NX_LOG_ERR, "manifest: layers is not an array of exactly 2 (nar, toc)");
		goto out;
	} else if (parse_desc("manifest layers[0] (nar)", json_array_get(layers, 0), NX_MT_NAR,
			      &out->nar) < 0 ||
		   parse_desc("manifest layers[1] (toc)", json_array_get(layers, 1), NX_MT_TOC,
			      &out->toc) < 0) {
		goto out;
	}
	r = manifest_parse_annotations(json_object_get(root, "annotations"), out);
out:
	json_decref(root);
	if (r < 0)
		nx_manifest_release(out);
	return r;
}

/* ----------------------------------------------------------------- index */

static int cmp_entry(const void *a, const void *b)
{
	const struct nx_index_entry *x = *(const struct nx_index_entry *const *)a;
	const struct nx_index_entry *y = *(const struct nx_index_entry *const *)b;

	return strcmp(x->store_path, y->store_path);
}

int nx_index_build(const struct nx_index *ix, char **json, size_t *len)
{
	const struct nx_index_entry **sorted = NULL;
	json_t *root = NULL, *a, *mans;
	char *roots = NULL;
	int r = -ENOMEM;

	for (size_t i = 0; i < ix->nentries; i++) {
		const char *base;

		if (!ix->entries[i].store_path ||
		    nx_storepath_check(ix->entries[i].store_path, &base) < 0) {
			nx_log(NX_LOG_ERR, "index: entry %zu has an invalid store path", i);
			return -EINVAL;
		}
	}
	/* at least one slot, so sorted is never NULL where the loop reads it */
	sorted = calloc(ix->nentries ? ix->nentries : 1, sizeof(*sorted));
	if (!sorted)
		return -ENOMEM;
	if (ix->nentries) {
		for (size_t i = 0; i < ix->nentries; i++)
			sorted[i] = &ix->entries[i];
		qsort(sorted, ix->nentries, sizeof(*sorted), cmp_entry);
	}
	roots = join(ix->roots, ix->nroots, 0);
	root = json_object();
	a = json_object();
	mans = json_array();
	if (!roots || !root || !a || !mans) {
		json_decref(a);
		json_decref(mans);
		goto out;
	}
	if (json_object_set_new(root, "annotations", a) < 0) {
		json_decref(mans);
		goto out;
	}
	if (json_object_set_new(root, "manifests", mans) < 0)
		goto out;
	if (set_str(a, A_PREFIX "closure", "1") < 0 || set_str(a, A_PREFIX "roots", roots) < 0)
		goto out;
	for (size_t i = 0; i < ix->nentries; i++) {
		json_t *d = make_desc(NX_MT_MANIFEST, sorted[i]->desc.digest, sorted[i]->desc.size);
		json_t *da = json_object();

		if (!d || !da || json_object_set_new(d, "annotations", da) < 0) {
			json_decref(d);
			json_decref(da);
			goto out;
		}
		if (set_str(da, A_PREFIX "store-path", sorted[i]->store_path) < 0 ||
		    set_str(d, "artifactType", NX_ARTIFACT_STORE_PATH) < 0 ||
		    json_array_append_new(mans, d) < 0)
			goto out;
	}
	if (ix->has_meta) {
		/* listed like any manifest, so skopeo copy --all carries it */
		json_t *d = make_desc(NX_MT_MANIFEST, ix->meta.digest, ix->meta.size);
		json_t *da = json_object();

		if (!d || !da || json_object_set_new(d, "annotations", da) < 0) {
			json_decref(d);
			json_decref(da);
			goto out;
		}
		if (set_str(da, A_PREFIX "closure-meta", "1") < 0 ||
		    set_str(d, "artifactType", NX_ARTIFACT_CLOSURE_META) < 0)
			goto out;
		if (ix->has_meta_blob) {
			char dg[NX_DIGEST_STRLEN], num[32];

			nx_digest_format(ix->meta_blob.digest, dg);
			snprintf(num, sizeof(num), "%llu", (unsigned long long)ix->meta_blob.size);
			if (set_str(da, A_PREFIX "closure-meta-blob", dg) < 0 ||
			    set_str(da, A_PREFIX "closure-meta-blob-size", num) < 0)
				goto out;
		}
		if (json_array_append_new(mans, d) < 0)
			goto out;
	}
	if (set_str(root, "artifactType", NX_ARTIFACT_CLOSURE) < 0 ||
	    set_str(root, "mediaType", NX_MT_INDEX) < 0 || set_int(root, "schemaVersion", 2) < 0)
		goto out;
	r = dump(root, json, len);
	if (r == 0) {
		struct nx_index check;

		r = nx_index_parse(*json, *len, &check);
		if (r < 0) {
			nx_log(NX_LOG_ERR, "index: refusing to build an invalid closure index");
			free(*json);
			*json = NULL;
		}
		nx_index_release(&check);
	}
out:
	json_decref(root);
	free(roots);
	free(sorted);
	return r;
}

/* e->store_path is owned by the index entry array (NX_ANALYZER_ARRAY_STORE_BEGIN says why) */
NX_ANALYZER_ARRAY_STORE_BEGIN
static int parse_index_entry(json_t *d, size_t i, struct nx_index_entry *e)
{
	char what[48];
	const char *sp, *base;

	snprintf(what, sizeof(what), "index manifests[%zu]", i);
	if (parse_desc(what, d, NX_MT_MANIFEST, &e->desc) < 0)
		return -EINVAL;
	sp = get_str(what, json_object_get(d, "annotations"), A_PREFIX "store-path", 1);
	if (!sp)
		return -EINVAL;
	if (nx_storepath_check(sp, &base) < 0) {
		nx_log(NX_LOG_ERR, "%s: '%s' is not a valid store path", what, sp);
		return -EINVAL;
	}
	e->store_path = strdup(sp);
	return e->store_path ? 0 : -ENOMEM;
}
NX_ANALYZER_ARRAY_STORE_END

/* The descriptor of the closure metadata manifest (format.md 5.1). */
static int parse_meta_entry(json_t *d, size_t i, struct nx_index *out)
{
	char what[48];
	const char *v;

	snprintf(what, sizeof(what), "index manifests[%zu]", i);
	v = get_str(what, json_object_get(d, "annotations"), A_PREFIX "closure-meta", 1);
	if (!v || strcmp(v, "1") != 0) {
		nx_log(NX_LOG_ERR, "%s: closure metadata of an unknown version", what);
		return -EINVAL;
	}
	if (out->has_meta) {
		nx_log(NX_LOG_ERR, "%s: a second closure metadata manifest", what);
		return -EINVAL;
	}
	if (parse_desc(what, d, NX_MT_MANIFEST, &out->meta) < 0)
		return -EINVAL;
	out->has_meta = 1;
	/* the blob it names, a hint: a bad one is ignored, the index stands */
	{
		json_t *a = json_object_get(d, "annotations");
		const char *bd = json_string_value(json_object_get(a, A_PREFIX "closure-meta-blob"));
		const char *bs =
			json_string_value(json_object_get(a, A_PREFIX "closure-meta-blob-size"));
		char *end = NULL;
		unsigned long long sz;

		if (!bd && !bs)
			return 0;
		sz = bs && *bs >= '1' && *bs <= '9' ? strtoull(bs, &end, 10) : 0;
		if (bd && nx_digest_parse(bd, out->meta_blob.digest) == 0 && end && !*end &&
		    sz > 0 && sz <= NX_CMETA_MAX_BYTES) {
			out->meta_blob.size = sz;
			out->has_meta_blob = 1;
		} else {
			nx_log(NX_LOG_WARNING, "%s: ignoring its dev.nixoci.closure-meta-blob "
					       "(malformed); the blob is found through its manifest",
			       what);
		}
	}
	return 0;
}

static int cmp_entry_val(const void *a, const void *b)
{
	return strcmp(((const struct nx_index_entry *)a)->store_path,
		      ((const struct nx_index_entry *)b)->store_path);
}

int nx_index_parse(const char *json, size_t len, struct nx_index *out)
{
	static const char what[] = "index";
	json_t *root, *a, *mans, *mt;
	const char *s;
	size_t n;
	int r;

	memset(out, 0, sizeof(*out));
	r = parse_root(what, json, len, NX_INDEX_MAX, &root);
	if (r < 0)
		return r;
	r = -EINVAL;
	if (check_schema(what, root) < 0)
		goto out;
	/* mediaType is a SHOULD in OCI; artifactType is not checked at all
	 * because skopeo copy drops it. */
	mt = json_object_get(root, "mediaType");
	if (mt && check_eq(what, root, "mediaType", NX_MT_INDEX) < 0)
		goto out;
	a = json_object_get(root, "annotations");
	s = json_is_object(a) ? get_str(what, a, A_PREFIX "closure", 0) : NULL;
	if (!s || strcmp(s, "1") != 0) {
		nx_log(NX_LOG_ERR, "index: not a nixoci closure (annotation dev.nixoci.closure "
				   "is not \"1\")");
		goto out;
	}
	s = get_str(what, a, A_PREFIX "roots", 1);
	if (!s)
		goto out;
	r = split_list("index: dev.nixoci.roots", s, L_PATH, 0, &out->roots, &out->nroots);
	if (r < 0)
		goto out;
	r = -EINVAL;
	mans = json_object_get(root, "manifests");
	if (!json_is_array(mans)) {
		nx_log(NX_LOG_ERR, "index: manifests is missing or not an array");
		goto out;
	}
	n = json_array_size(mans);
	if (n) {
		out->entries = calloc(n, sizeof(*out->entries));
		if (!out->entries) {
			r = -ENOMEM;
			goto out;
		}
	}
	for (size_t i = 0, k = 0; i < n; i++) {
		json_t *d = json_array_get(mans, i), *da = json_object_get(d, "annotations");

		if (json_is_object(da) && json_object_get(da, A_PREFIX "closure-meta")) {
			r = parse_meta_entry(d, i, out);
			if (r < 0)
				goto out;
			continue;
		}
		r = parse_index_entry(d, i, &out->entries[k]);
		out->nentries = ++k; /* so release frees a partial entry */
		if (r < 0)
			goto out;
	}
	n = out->nentries;
	/* Sorted on parse so callers can bsearch by store path. */
	if (n)
		qsort(out->entries, n, sizeof(*out->entries), cmp_entry_val);
	for (size_t i = 1; i < n; i++) {
		if (strcmp(out->entries[i - 1].store_path, out->entries[i].store_path) == 0) {
			nx_log(NX_LOG_ERR, "index: store path '%s' is listed twice",
			       out->entries[i].store_path);
			r = -EINVAL;
			goto out;
		}
	}
	r = 0;
out:
	json_decref(root);
	if (r < 0)
		nx_index_release(out);
	return r;
}

/* ---------------------------------------------------- closure metadata */

int nx_cmeta_manifest_build(const struct nx_desc *blob, char **json, size_t *len)
{
	uint8_t empty[NX_SHA256_LEN];
	json_t *root, *layers, *cfg, *l, *a;
	int r = -ENOMEM;

	if (nx_digest_parse(NX_EMPTY_DIGEST, empty) < 0)
		return -EINVAL;
	root = json_object();
	if (!root)
		return -ENOMEM;
	layers = json_array();
	a = json_object();
	if (!layers || json_object_set_new(root, "layers", layers) < 0 || !a ||
	    json_object_set_new(root, "annotations", a) < 0)
		goto out;
	cfg = make_desc(NX_MT_EMPTY, empty, 2);
	if (!cfg || json_object_set_new(root, "config", cfg) < 0)
		goto out;
	l = make_desc(NX_MT_CLOSURE_META, blob->digest, blob->size);
	if (!l || json_array_append_new(layers, l) < 0)
		goto out;
	if (set_str(a, A_PREFIX "format", "1") < 0 ||
	    set_str(root, "artifactType", NX_ARTIFACT_CLOSURE_META) < 0 ||
	    set_str(root, "mediaType", NX_MT_MANIFEST) < 0 || set_int(root, "schemaVersion", 2) < 0)
		goto out;
	r = dump(root, json, len);
out:
	json_decref(root);
	return r;
}

int nx_cmeta_manifest_parse(const char *json, size_t len, struct nx_desc *blob)
{
	static const char what[] = "closure metadata manifest";
	json_t *root, *layers;
	int r;

	r = parse_root(what, json, len, NX_MANIFEST_MAX, &root);
	if (r < 0)
		return r;
	r = -EINVAL;
	if (check_schema(what, root) < 0 || check_eq(what, root, "mediaType", NX_MT_MANIFEST) < 0)
		goto out;
	/* artifactType is not required: skopeo copy keeps manifests byte for
	 * byte, but a re-serializing tool might drop it */
	if (json_object_get(root, "artifactType") &&
	    check_eq(what, root, "artifactType", NX_ARTIFACT_CLOSURE_META) < 0)
		goto out;
	if (check_eq(what, json_object_get(root, "annotations"), A_PREFIX "format", "1") < 0)
		goto out;
	layers = json_object_get(root, "layers");
	if (!json_is_array(layers) || json_array_size(layers) != 1) {
		nx_log(NX_LOG_ERR, "%s: layers is not an array of exactly 1", what);
		goto out;
	}
	if (parse_desc(what, json_array_get(layers, 0), NX_MT_CLOSURE_META, blob) < 0)
		goto out;
	if (blob->size > NX_CMETA_MAX_BYTES) {
		nx_log(NX_LOG_ERR, "%s: blob of %llu bytes is over the reader's cap", what,
		       (unsigned long long)blob->size);
		goto out;
	}
	r = 0;
out:
	json_decref(root);
	return r;
}
