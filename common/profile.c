/*
 * common/profile.c: startup profiles (docs/format.md §5.2). The profile text
 * (which frames a workload read first, in order), the OCI artifact that
 * carries it (an image manifest whose subject is the closure index), and
 * the referrers index of the distribution spec's tag fallback
 * (`sha256-<hex>` listing the artifacts that refer to a manifest).
 *
 * Everything parsed here comes from the registry and is untrusted: sizes
 * and counts are capped before anything is allocated, and what does not
 * fit the format is refused as a whole (-EINVAL). A profile is a hint; the
 * reader checks its frames against the closure's own TOCs.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/common.h"

#define MAGIC "nixoci-profile 1\n"

void nx_profile_free(struct nx_profile *pr)
{
	if (!pr)
		return;
	free(pr->ents);
	free(pr);
}

int nx_profile_parse(const char *buf, size_t len, struct nx_profile **out)
{
	struct nx_profile *pr;
	const char *s = buf, *end = buf + len;
	size_t cap;

	*out = NULL;
	if (len > NX_PROFILE_MAX_BYTES || len < sizeof(MAGIC) - 1 ||
	    memcmp(buf, MAGIC, sizeof(MAGIC) - 1) != 0)
		return -EINVAL;
	s += sizeof(MAGIC) - 1;
	/* every line is at least a hash, '-', one name byte, ' ', a digest */
	cap = (size_t)(end - s) / (NX_HASH_LEN + 3 + NX_DIGEST_STRLEN - 1) + 1;
	if (cap > NX_PROFILE_MAX_ENTRIES)
		cap = NX_PROFILE_MAX_ENTRIES;
	pr = calloc(1, sizeof(*pr));
	if (!pr)
		return -ENOMEM;
	pr->ents = calloc(cap, sizeof(*pr->ents));
	if (!pr->ents) {
		free(pr);
		return -ENOMEM;
	}
	while (s < end) {
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		const char *sp;
		char d[NX_DIGEST_STRLEN];
		struct nx_profile_ent *e;
		size_t bl;

		if (!nl || pr->n == cap)
			goto bad;
		sp = memchr(s, ' ', (size_t)(nl - s));
		if (!sp)
			goto bad;
		bl = (size_t)(sp - s);
		if (bl > NX_BASE_MAX || nx_storepath_check_base(s, bl) < 0)
			goto bad;
		if ((size_t)(nl - sp - 1) != NX_DIGEST_STRLEN - 1)
			goto bad;
		memcpy(d, sp + 1, NX_DIGEST_STRLEN - 1);
		d[NX_DIGEST_STRLEN - 1] = '\0';
		e = &pr->ents[pr->n];
		if (nx_digest_parse(d, e->digest) < 0)
			goto bad;
		memcpy(e->base, s, bl);
		e->base[bl] = '\0';
		pr->n++;
		s = nl + 1;
	}
	*out = pr;
	return 0;
bad:
	nx_profile_free(pr);
	return -EINVAL;
}

int nx_profile_line(const char *base, const uint8_t d[NX_SHA256_LEN], char *out, size_t cap)
{
	char ds[NX_DIGEST_STRLEN];
	int n;

	nx_digest_format(d, ds);
	n = snprintf(out, cap, "%s %s\n", base, ds);
	return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : n;
}

const char *nx_profile_magic(void)
{
	return MAGIC;
}

/* ------------------------------------------------------------ the artifact */

static json_t *desc(const char *mt, const struct nx_desc *d)
{
	char ds[NX_DIGEST_STRLEN];

	nx_digest_format(d->digest, ds);
	return json_pack("{s:s,s:s,s:I}", "mediaType", mt, "digest", ds, "size",
			 (json_int_t)d->size);
}

/* The profile's name and, when known, its layer: a referrers index
 * carries these over, so a reader can ask for manifest and layer at once. */
static json_t *annotations(const char *name, const struct nx_desc *blob)
{
	char ds[NX_DIGEST_STRLEN], sz[24];

	if (!blob)
		return json_pack("{s:s}", NX_ANN_PROFILE_NAME, name);
	nx_digest_format(blob->digest, ds);
	snprintf(sz, sizeof(sz), "%llu", (unsigned long long)blob->size);
	return json_pack("{s:s,s:s,s:s}", NX_ANN_PROFILE_NAME, name, NX_ANN_PROFILE_BLOB, ds,
			 NX_ANN_PROFILE_BLOB_SIZE, sz);
}

int nx_profile_manifest_build(const struct nx_desc *blob, const struct nx_desc *subject,
			      const char *name, char **json, size_t *len)
{
	struct nx_desc empty = { .size = 2 };
	json_t *root;
	char *s;

	if (nx_digest_parse(NX_EMPTY_DIGEST, empty.digest) < 0)
		return -EINVAL;
	root = json_pack("{s:i,s:s,s:s,s:o,s:[o],s:o,s:o}", "schemaVersion", 2, "mediaType",
			 NX_MT_MANIFEST, "artifactType", NX_AT_PROFILE, "config",
			 desc(NX_MT_EMPTY, &empty), "layers", desc(NX_MT_PROFILE, blob),
			 "subject", desc(NX_MT_INDEX, subject), "annotations",
			 annotations(name, blob));
	if (!root)
		return -ENOMEM;
	s = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(root);
	if (!s)
		return -ENOMEM;
	*json = s;
	*len = strlen(s);
	return 0;
}

static int parse_desc(json_t *o, const char *mt, struct nx_desc *out)
{
	json_t *m = json_object_get(o, "mediaType"), *d = json_object_get(o, "digest"),
	       *z = json_object_get(o, "size");

	if (!json_is_string(m) || !json_is_string(d) || !json_is_integer(z) ||
	    (mt && strcmp(json_string_value(m), mt) != 0) || json_integer_value(z) < 0 ||
	    nx_digest_parse(json_string_value(d), out->digest) < 0)
		return -EINVAL;
	out->size = (uint64_t)json_integer_value(z);
	return 0;
}

int nx_profile_manifest_parse(const char *json, size_t len, struct nx_desc *blob,
			      struct nx_desc *subject)
{
	json_t *root, *at, *layers;
	int rc = -EINVAL;

	if (len > NX_MANIFEST_MAX)
		return -EINVAL;
	root = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL);
	if (!root)
		return -EINVAL;
	at = json_object_get(root, "artifactType");
	layers = json_object_get(root, "layers");
	if (json_is_string(at) && strcmp(json_string_value(at), NX_AT_PROFILE) == 0 &&
	    json_is_array(layers) && json_array_size(layers) == 1 &&
	    parse_desc(json_array_get(layers, 0), NX_MT_PROFILE, blob) == 0 &&
	    json_is_object(json_object_get(root, "subject")) &&
	    parse_desc(json_object_get(root, "subject"), NULL, subject) == 0 &&
	    blob->size <= NX_PROFILE_MAX_BYTES)
		rc = 0;
	json_decref(root);
	return rc;
}

/* ------------------------------------------------------- referrers index */

static const char *ann_name(json_t *d)
{
	json_t *a = json_object_get(d, "annotations");
	json_t *n = json_is_object(a) ? json_object_get(a, NX_ANN_PROFILE_NAME) : NULL;

	return json_is_string(n) ? json_string_value(n) : NULL;
}

/* The layer a descriptor announces; blob->size 0 when none or malformed. */
static void ann_blob(json_t *d, struct nx_desc *blob)
{
	json_t *a = json_object_get(d, "annotations");
	json_t *g = json_is_object(a) ? json_object_get(a, NX_ANN_PROFILE_BLOB) : NULL;
	json_t *z = json_is_object(a) ? json_object_get(a, NX_ANN_PROFILE_BLOB_SIZE) : NULL;
	unsigned long long v;
	char *end;

	blob->size = 0;
	if (!json_is_string(g) || !json_is_string(z) ||
	    nx_digest_parse(json_string_value(g), blob->digest) < 0)
		return;
	errno = 0;
	v = strtoull(json_string_value(z), &end, 10);
	if (errno || end == json_string_value(z) || *end || v > NX_PROFILE_MAX_BYTES)
		return;
	blob->size = v;
}

static int is_profile(json_t *d)
{
	json_t *at = json_object_get(d, "artifactType");

	return json_is_string(at) && strcmp(json_string_value(at), NX_AT_PROFILE) == 0;
}

int nx_referrers_pick(const char *json, size_t len, const char *name, struct nx_desc *out,
		      struct nx_desc *blob)
{
	json_t *root, *ms;
	int rc = -ENOENT;

	if (len > NX_INDEX_MAX)
		return -EINVAL;
	root = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL);
	if (!root)
		return -EINVAL;
	ms = json_object_get(root, "manifests");
	if (!json_is_array(ms)) {
		json_decref(root);
		return -EINVAL;
	}
	/* the last one listed: the newest, as the tag fallback appends */
	for (size_t i = json_array_size(ms); i-- > 0;) {
		json_t *d = json_array_get(ms, i);
		const char *n = ann_name(d);

		if (!json_is_object(d) || !is_profile(d))
			continue;
		if (name && (!n || strcmp(n, name) != 0))
			continue;
		if (parse_desc(d, NX_MT_MANIFEST, out) == 0) {
			if (blob)
				ann_blob(d, blob);
			rc = 0;
			break;
		}
	}
	json_decref(root);
	return rc;
}

int nx_referrers_add(const char *json, size_t len, const struct nx_desc *m, const char *name,
		     const struct nx_desc *blob, char **out, size_t *outlen)
{
	json_t *root, *ms, *d;
	size_t i;
	char *s;

	if (json) {
		root = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL);
		ms = root ? json_object_get(root, "manifests") : NULL;
		if (!json_is_array(ms)) {
			json_decref(root);
			return -EINVAL;
		}
	} else {
		root = json_pack("{s:i,s:s,s:[]}", "schemaVersion", 2, "mediaType", NX_MT_INDEX,
				 "manifests");
		if (!root)
			return -ENOMEM;
		ms = json_object_get(root, "manifests");
	}
	/* a profile of the same name is replaced: the newest is the one */
	for (i = 0; i < json_array_size(ms);) {
		const char *n;

		d = json_array_get(ms, i);
		n = ann_name(d);
		if (is_profile(d) && n && strcmp(n, name) == 0)
			json_array_remove(ms, i);
		else
			i++;
	}
	d = desc(NX_MT_MANIFEST, m);
	if (!d || json_object_set_new(d, "artifactType", json_string(NX_AT_PROFILE)) < 0 ||
	    json_object_set_new(d, "annotations", annotations(name, blob)) < 0 ||
	    json_array_append_new(ms, d) < 0) {
		json_decref(root);
		return -ENOMEM;
	}
	s = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(root);
	if (!s)
		return -ENOMEM;
	*out = s;
	*outlen = strlen(s);
	return 0;
}
