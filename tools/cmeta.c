/*
 * tools/cmeta.c: the writer of the closure metadata blob (docs/format.md
 * 5.1) that `push --tag` and `import --tag` add to a closure index. It
 * takes every path's manifest and TOC blob from the registry itself (by
 * the digests the index will list), so what it packs is exactly what a
 * reader would otherwise fetch one path at a time, whichever run uploaded
 * it. Re-running over an unchanged closure reuses the metadata the
 * existing index already lists, so a re-push fetches nothing of it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tools/tools_i.h"

#define CM_THREADS 8

struct cm_job {
	struct nx_pub *p;
	struct nx_cmeta_item *items;
	char **mans;     /* manifest bodies, owned */
	uint8_t **tocs;  /* TOC blobs, owned */
	pthread_mutex_t lock;
	size_t next;
	int rc;
};

struct cm_toc {
	uint8_t *buf;
	uint64_t size, got;
};

static int cm_toc_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct cm_toc *t = ctx;

	if (off > t->size || len > t->size - off)
		return -EIO;
	memcpy(t->buf + off, buf, len);
	if (off <= t->got && off + len > t->got)
		t->got = off + len;
	return 0;
}

static int cm_one(struct cm_job *j, size_t i)
{
	struct nx_pub_path *pp = &j->p->paths[i];
	char ref[NX_DIGEST_STRLEN];
	uint8_t d[NX_SHA256_LEN];
	struct nx_manifest m;
	struct cm_toc t = { 0 };
	struct nx_window w = { .cb = cm_toc_cb, .ctx = &t };
	const uint8_t *at;
	char *body = NULL;
	size_t len = 0;
	int r;

	if (pp->man && pp->toc) { /* written by this run: nothing to read back */
		j->items[i].man = (const uint8_t *)pp->man;
		j->items[i].man_len = pp->man_len;
		j->items[i].toc = pp->toc;
		j->items[i].toc_len = pp->toc_len;
		return 0;
	}
	if (pp->man) { /* found by this run: only its TOC is to read */
		len = pp->man_len;
		body = malloc(len + 1);
		if (!body)
			return -ENOMEM;
		memcpy(body, pp->man, len);
		body[len] = '\0';
	} else {
		nx_digest_format(pp->mdigest, ref);
		r = nx_registry_get_manifest(j->p->reg, ref, NX_MANIFEST_MAX, &body, &len, d,
					     NULL);
		if (r < 0)
			return r;
	}
	r = nx_manifest_parse(body, len, &m);
	if (r < 0) {
		free(body);
		return r;
	}
	t.size = m.toc.size;
	t.buf = malloc(t.size ? t.size : 1);
	if (!t.buf) {
		nx_manifest_release(&m);
		free(body);
		return -ENOMEM;
	}
	nx_manifest_toc_at(&m, &at, &w.base);
	w.len = t.size;
	r = nx_registry_get_blob(j->p->reg, at, w.base, t.size, nx_window_cb, &w);
	if (r == 0 && t.got != t.size)
		r = -EIO;
	if (r == 0) {
		nx_sha256(t.buf, t.size, d);
		if (memcmp(d, m.toc.digest, NX_SHA256_LEN) != 0)
			r = -EBADMSG;
	}
	if (r < 0) {
		nx_log(NX_LOG_ERR, "closure metadata: cannot read the TOC of %s",
		       pp->info.store_path);
		nx_manifest_release(&m);
		free(t.buf);
		free(body);
		return r;
	}
	j->mans[i] = body;
	j->tocs[i] = t.buf;
	j->items[i].man = (const uint8_t *)body;
	j->items[i].man_len = len;
	j->items[i].toc = t.buf;
	j->items[i].toc_len = t.size;
	nx_manifest_release(&m);
	return 0;
}

static void *cm_worker(void *arg)
{
	struct cm_job *j = arg;

	for (;;) {
		size_t i;
		int r;

		pthread_mutex_lock(&j->lock);
		if (j->rc < 0 || j->next >= j->p->npaths) {
			pthread_mutex_unlock(&j->lock);
			return NULL;
		}
		i = j->next++;
		pthread_mutex_unlock(&j->lock);
		r = cm_one(j, i);
		if (r < 0) {
			pthread_mutex_lock(&j->lock);
			if (j->rc == 0)
				j->rc = r;
			pthread_mutex_unlock(&j->lock);
		}
	}
}

/* The metadata the index now under @name lists, if it lists exactly the
 * manifests of @p: 1 and *out, else 0. */
static int cm_reuse(struct nx_pub *p, const char *name, struct nx_desc *out,
		    struct nx_desc *blob)
{
	struct nx_index ix;
	uint8_t d[NX_SHA256_LEN];
	char *body = NULL;
	size_t len = 0;
	int same = 0, exists = 0;

	if (nx_registry_manifest_exists(p->reg, name, &exists, d) < 0 || !exists)
		return 0;
	if (nx_registry_get_manifest(p->reg, name, NX_INDEX_MAX, &body, &len, d, NULL) < 0)
		return 0;
	if (nx_index_parse(body, len, &ix) == 0) {
		same = ix.has_meta && ix.nentries == p->npaths;
		/* both sorted by store path */
		for (size_t i = 0; same && i < p->npaths; i++)
			same = strcmp(ix.entries[i].store_path, p->paths[i].info.store_path) == 0 &&
			       memcmp(ix.entries[i].desc.digest, p->paths[i].mdigest,
				      NX_SHA256_LEN) == 0;
		if (same) {
			*out = ix.meta;
			if (ix.has_meta_blob)
				*blob = ix.meta_blob;
		}
		nx_index_release(&ix);
	}
	free(body);
	if (same) {
		char ref[NX_DIGEST_STRLEN];

		/* still there? (a registry may have collected it) */
		nx_digest_format(out->digest, ref);
		if (nx_registry_manifest_exists(p->reg, ref, &exists, d) < 0 || !exists)
			same = 0;
	}
	return same;
}

int nx_pub_closure_meta(struct nx_pub *p, const char *name, struct nx_desc *out,
			struct nx_desc *blob_out)
{
	struct cm_job j = { .p = p };
	pthread_t th[CM_THREADS];
	struct nx_desc blob;
	char ref[NX_DIGEST_STRLEN];
	uint8_t *z = NULL;
	char *json = NULL;
	size_t zlen = 0, jlen = 0, nth = 0;
	int r;

	if (p->npaths == 0)
		return -EINVAL;
	memset(blob_out, 0, sizeof(*blob_out));
	if (cm_reuse(p, name, out, blob_out))
		return 0;
	j.items = calloc(p->npaths, sizeof(*j.items));
	j.mans = calloc(p->npaths, sizeof(*j.mans));
	j.tocs = calloc(p->npaths, sizeof(*j.tocs));
	if (!j.items || !j.mans || !j.tocs) {
		r = -ENOMEM;
		goto out;
	}
	pthread_mutex_init(&j.lock, NULL);
	for (; nth < CM_THREADS && nth < p->npaths; nth++)
		if (pthread_create(&th[nth], NULL, cm_worker, &j) != 0)
			break;
	if (nth == 0)
		cm_worker(&j);
	for (size_t i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&j.lock);
	r = j.rc;
	if (r < 0)
		goto out;
	r = nx_cmeta_encode(j.items, p->npaths, &z, &zlen);
	if (r < 0)
		goto out;
	nx_sha256(z, zlen, blob.digest);
	blob.size = zlen;
	r = nx_pub_upload_blob(p, blob.digest, -1, z, zlen, 1);
	if (r < 0)
		goto out;
	r = nx_cmeta_manifest_build(&blob, &json, &jlen);
	if (r < 0)
		goto out;
	nx_sha256(json, jlen, out->digest);
	out->size = jlen;
	nx_digest_format(out->digest, ref);
	r = nx_registry_put_manifest(p->reg, ref, NX_MT_MANIFEST, json, jlen);
	if (r == 0) {
		nx_pub_add_bytes(p, jlen);
		*blob_out = blob;
	}
out:
	if (j.mans)
		for (size_t i = 0; i < p->npaths; i++)
			free(j.mans[i]);
	if (j.tocs)
		for (size_t i = 0; i < p->npaths; i++)
			free(j.tocs[i]);
	free(j.mans);
	free(j.tocs);
	free(j.items);
	free(json);
	free(z);
	return r;
}
