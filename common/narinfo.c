/*
 * common/narinfo.c: the strict parser of a Nix binary cache's narinfo files
 * (untrusted bytes), for `nixoci import`. Every malformed, missing or
 * duplicated field is one error line naming the narinfo and the field;
 * unknown fields are ignored, as Nix does.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

void nx_narinfo_release(struct nx_narinfo *ni)
{
	nx_pathinfo_release(&ni->info);
	free(ni->url);
	memset(ni, 0, sizeof(*ni));
}

/* each item is owned by *v, freed by nx_pathinfo_release
 * (NX_ANALYZER_ARRAY_STORE_BEGIN says why) */
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

/* here, not in decompress.c: parsing a narinfo needs no compression library */
int nx_comp_parse(const char *name, enum nx_comp *out)
{
	static const struct {
		const char *name;
		enum nx_comp kind;
	} t[] = { { "none", NX_COMP_NONE }, { "xz", NX_COMP_XZ }, { "zstd", NX_COMP_ZSTD },
		  { "bzip2", NX_COMP_BZIP2 } };
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		if (strcmp(name, t[i].name) == 0) {
			*out = t[i].kind;
			return 0;
		}
	}
	return -EINVAL;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A signature: "name:base64", printable, no spaces. */
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

enum { F_PATH, F_URL, F_COMP, F_FHASH, F_FSIZE, F_NHASH, F_NSIZE, F_REFS, F_DRV, F_CA, F_N };
static const char *const names[F_N] = { "StorePath", "URL",     "Compression", "FileHash",
					"FileSize",  "NarHash", "NarSize",     "References",
					"Deriver",   "CA" };

static int parse_u53(const char *v, uint64_t *out)
{
	unsigned long long n;
	char *end;

	if (*v < '0' || *v > '9')
		return -EINVAL;
	errno = 0;
	n = strtoull(v, &end, 10);
	if (errno || *end || n == 0 || n >= (1ull << 53))
		return -EINVAL;
	*out = n;
	return 0;
}

static int parse_refs(char *v, struct nx_pathinfo *pi)
{
	char *p = v;
	int r;

	while (*p) {
		size_t l = strcspn(p, " ");

		if (l) {
			if (nx_storepath_check_base(p, l) < 0)
				return -EINVAL;
			r = push_str(&pi->refs, &pi->nrefs, p, l);
			if (r < 0)
				return r;
		}
		p += l;
		p += strspn(p, " ");
	}
	return 0;
}

/* One known field; -EINVAL (not logged) when its value is malformed. */
static int field(const char *src, const char *want, int f, char *v, struct nx_narinfo *ni)
{
	struct nx_pathinfo *pi = &ni->info;
	const char *base;

	switch (f) {
	case F_PATH:
		if (nx_storepath_check(v, &base) < 0)
			return -EINVAL;
		if (want && strncmp(base, want, NX_HASH_LEN) != 0) {
			nx_log(NX_LOG_ERR, "%s: StorePath %s is not the path of hash %s", src, v,
			       want);
			return -EBADMSG; /* logged */
		}
		pi->store_path = strdup(v);
		return pi->store_path ? 0 : -ENOMEM;
	case F_URL:
		if (!rel_url_ok(v))
			return -EINVAL;
		ni->url = strdup(v);
		return ni->url ? 0 : -ENOMEM;
	case F_COMP:
		if (nx_comp_parse(v, &ni->comp) < 0) {
			nx_log(NX_LOG_ERR,
			       "%s: Compression '%.40s' is not one nixoci reads (xz, zstd, bzip2, "
			       "none)",
			       src, v);
			return -EBADMSG;
		}
		return 0;
	case F_FHASH:
		ni->have_file_hash = 1;
		return nx_narhash_parse(v, ni->file_hash);
	case F_NHASH:
		return nx_narhash_parse(v, pi->nar_hash);
	case F_FSIZE:
		return parse_u53(v, &ni->file_size);
	case F_NSIZE:
		return parse_u53(v, &pi->nar_size);
	case F_REFS:
		return parse_refs(v, pi);
	case F_DRV:
		if (strcmp(v, "unknown-deriver") == 0)
			return 0;
		if (nx_storepath_check_base(v, strlen(v)) < 0)
			return -EINVAL;
		pi->deriver = strdup(v);
		return pi->deriver ? 0 : -ENOMEM;
	case F_CA:
		if (!*v || strchr(v, ' '))
			return -EINVAL;
		pi->ca = strdup(v);
		return pi->ca ? 0 : -ENOMEM;
	}
	return 0;
}

static int parse_lines(const char *src, const char *want, char *text, struct nx_narinfo *ni)
{
	int seen[F_N] = { 0 };
	char *line, *next;
	int f, r;

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
			r = push_str(&ni->info.sigs, &ni->info.nsigs, v, strlen(v));
			if (r < 0)
				return r;
			continue;
		}
		for (f = 0; f < F_N && strcmp(line, names[f]) != 0; f++)
			;
		if (f == F_N)
			continue;
		if (seen[f]++) {
			nx_log(NX_LOG_ERR, "%s: %s appears twice", src, names[f]);
			return -EINVAL;
		}
		r = field(src, want, f, v, ni);
		if (r == -EINVAL)
			nx_log(NX_LOG_ERR, "%s: malformed %s", src, names[f]);
		if (r == -EBADMSG)
			r = -EINVAL;
		if (r < 0)
			return r;
	}
	for (f = 0; f < F_N; f++) {
		if (!seen[f] && (f == F_PATH || f == F_URL || f == F_NHASH || f == F_NSIZE ||
				 f == F_REFS)) {
			nx_log(NX_LOG_ERR, "%s: has no %s", src, names[f]);
			return -EINVAL;
		}
	}
	return 0;
}

int nx_narinfo_parse(const char *src, const char *want, const char *text, size_t len,
		     struct nx_narinfo *out)
{
	char *copy;
	size_t i;
	int r;

	memset(out, 0, sizeof(*out));
	out->comp = NX_COMP_BZIP2; /* Nix's default when Compression is absent */
	if (len > NX_NARINFO_MAX) {
		nx_log(NX_LOG_ERR, "%s: over %u bytes; not a narinfo", src, NX_NARINFO_MAX);
		return -E2BIG;
	}
	if (memchr(text, '\0', len)) {
		nx_log(NX_LOG_ERR, "%s: holds a NUL byte; not a narinfo", src);
		return -EINVAL;
	}
	copy = strndup(text, len);
	if (!copy)
		return -ENOMEM;
	r = parse_lines(src, want, copy, out);
	free(copy);
	if (r == 0 && out->info.nrefs > 1) {
		qsort(out->info.refs, out->info.nrefs, sizeof(char *), cmp_str);
		for (i = 1; i < out->info.nrefs; i++) {
			if (strcmp(out->info.refs[i - 1], out->info.refs[i]) == 0) {
				nx_log(NX_LOG_ERR, "%s: References lists %s twice", src,
				       out->info.refs[i]);
				r = -EINVAL;
				break;
			}
		}
	}
	if (r < 0)
		nx_narinfo_release(out);
	return r;
}
