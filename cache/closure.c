/*
 * cache/closure.c: a closure mount's metadata in one fetch (docs/format.md
 * 5.1). When the closure index lists a metadata manifest, nx_store_open
 * fetches it and its blob (in Range parts when large), checks the blob's
 * digest, inflates it, and keeps every manifest and TOC blob in memory,
 * keyed by the SHA-256 of the manifest. Path loading (store.c) asks here
 * before the blob cache and the registry, always by the digest the index
 * or a manifest names, so only bytes that hash to that digest are ever
 * handed out: a blob cannot smuggle in a manifest the index does not list,
 * or a TOC its manifest does not name.
 *
 * The blob must agree with the index as a whole (the same set of
 * manifests). If it does not, or is missing, malformed or unreachable, one
 * line is logged and the mount goes on without it, loading each path on its
 * own as before; nothing of the blob is used or cached. A TOC is checked
 * against its manifest's TOC digest when its path is first loaded, not at
 * mount (the mount is on a cold start's critical path, and a start loads a
 * few dozen of the closure's paths): a TOC that is not its manifest's is
 * one log line, and that path's TOC is loaded on its own, from the cache or
 * the registry, as without a blob. The verified metadata manifest and blob
 * go into the blob cache, so a remount over a warm cache fetches nothing
 * again.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_i.h"

/* Bytes asked for in one Range request of a large blob. */
#define CM_PART (UINT64_C(8) << 20)

struct cm_buf {
	uint8_t *buf;
	uint64_t size;
	uint64_t got; /* contiguous bytes from 0 */
};

/* The source may answer a range with the whole blob (absolute offsets):
 * keep whatever lands inside, count what is contiguous. */
static int cm_collect(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct cm_buf *c = ctx;

	if (off > c->size || len > c->size - off)
		return -EIO;
	memcpy(c->buf + off, buf, len);
	if (off <= c->got && off + len > c->got)
		c->got = off + len;
	return 0;
}

static int cm_fetch_blob(struct nx_store *st, const struct nx_desc *d, uint8_t **out)
{
	struct cm_buf c = { .size = d->size };
	uint8_t got[NX_SHA256_LEN];
	int rc = 0, probe;

	c.buf = malloc(c.size);
	if (!c.buf)
		return -ENOMEM;
	while (c.got < c.size) {
		uint64_t want = c.size - c.got < CM_PART ? c.size - c.got : CM_PART, before = c.got;

		probe = nx_source_begin(st);
		if (probe < 0) {
			rc = -EIO;
			break;
		}
		rc = st->src.get_blob(st->src.ctx, d->digest, c.got, want, cm_collect, &c);
		nx_source_end(st, probe, rc);
		if (rc == 0 && c.got == before)
			rc = -EIO; /* no progress: do not loop */
		if (rc < 0)
			break;
	}
	nx_stat_add(&st->bytes_fetched, c.got);
	if (rc < 0) {
		free(c.buf);
		return rc;
	}
	nx_sha256(c.buf, c.size, got);
	if (memcmp(got, d->digest, NX_SHA256_LEN) != 0) {
		nx_stat_add(&st->verify_failures, 1);
		free(c.buf);
		return -EBADMSG;
	}
	*out = c.buf;
	return 0;
}

static int cm_cmp(const void *a, const void *b)
{
	return memcmp(((const struct nx_cm_ent *)a)->digest, ((const struct nx_cm_ent *)b)->digest,
		      NX_SHA256_LEN);
}

static struct nx_cm_ent *cm_find(struct nx_cm_ent *e, size_t n,
				       const uint8_t d[NX_SHA256_LEN])
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = memcmp(e[mid].digest, d, NX_SHA256_LEN);

		if (c == 0)
			return &e[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* Indexes the decoded items by their manifest's digest and checks that
 * they are the index's manifests: -EINVAL (logged by the caller) when they
 * are not. Each TOC is checked against its manifest later, at the path's
 * first use (nx_cmeta_toc): parsing 1,804 manifests and hashing every TOC
 * here cost a cold start's critical path tens of milliseconds of CPU, for
 * the few dozen paths a start loads. */
static int cm_adopt(struct nx_store *st, uint8_t *raw, const struct nx_cmeta_item *it, size_t n)
{
	struct nx_cm_ent *e;
	int rc = -EINVAL;

	if (n != st->ix.nentries) {
		nx_log(NX_LOG_DEBUG, "closure metadata: %zu paths, the index lists %zu", n,
		       st->ix.nentries);
		return -EINVAL;
	}
	e = calloc(n ? n : 1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		nx_sha256(it[i].man, it[i].man_len, e[i].digest);
		e[i].buf = it[i].man;
		e[i].len = it[i].man_len;
		e[i].toc = it[i].toc;
		e[i].toc_len = it[i].toc_len;
	}
	qsort(e, n, sizeof(*e), cm_cmp);
	/* n items, n distinct index manifests (one per store path), each
	 * found among the items' manifests with its size: the same set. */
	for (size_t i = 0; i < st->ix.nentries; i++) {
		const struct nx_index_entry *x = &st->ix.entries[i];
		const struct nx_cm_ent *f = cm_find(e, n, x->desc.digest);

		if (!f || f->len != x->desc.size) {
			nx_log(NX_LOG_DEBUG, "closure metadata: lacks the manifest of %s",
			       x->store_path);
			goto out;
		}
	}
	st->cm = e;
	st->ncm = n;
	st->cm_raw = raw;
	e = NULL;
	rc = 0;
out:
	free(e);
	return rc;
}

/* The blob the index names (a hint), fetched beside the manifest. */
struct cm_early {
	struct nx_store *st;
	struct nx_desc d;
	uint8_t *z;
	int rc;
};

static void *cm_early_main(void *arg)
{
	struct cm_early *e = arg;

	e->rc = cm_fetch_blob(e->st, &e->d, &e->z);
	return NULL;
}

int nx_cmeta_load(struct nx_store *st, const char *closure)
{
	struct cm_early early = { .st = st, .rc = -ENOENT };
	pthread_t early_th;
	int early_on = 0;
	char ref[NX_DIGEST_STRLEN];
	uint8_t got[NX_SHA256_LEN];
	struct nx_cmeta_item *items = NULL;
	struct nx_desc blob;
	uint8_t *man = NULL, *z = NULL, *raw = NULL;
	size_t mlen = 0, zlen = 0, n = 0;
	int rc, man_cached, z_cached;
	const char *why = "";

	if (!st->ix.has_meta)
		return 0;
	man_cached = nx_blob_load(st, st->ix.meta.digest, NX_MANIFEST_MAX, &man, &mlen) == 0;
	/*
	 * The index says which blob its metadata manifest names: fetched at
	 * once, beside the manifest, instead of one round trip after it (a
	 * mount's critical path is the index, then these). Used only if the
	 * manifest, checked against the index, names the same blob; the blob
	 * is checked against its digest like any other.
	 */
	if (!man_cached && st->ix.has_meta_blob) {
		uint8_t *c = NULL;
		size_t clen = 0;

		if (nx_blob_load(st, st->ix.meta_blob.digest, (size_t)NX_CMETA_MAX_BYTES, &c,
				 &clen) < 0 || clen != st->ix.meta_blob.size) {
			early.d = st->ix.meta_blob;
			early_on = pthread_create(&early_th, NULL, cm_early_main, &early) == 0;
		}
		free(c);
	}
	if (!man_cached) {
		int probe = nx_source_begin(st);

		nx_digest_format(st->ix.meta.digest, ref);
		rc = probe < 0 ? -EIO
			       : st->src.get_manifest(st->src.ctx, ref, NX_MANIFEST_MAX,
						      (char **)&man, &mlen, got);
		if (probe >= 0)
			nx_source_end(st, probe, rc);
		if (rc < 0) {
			why = rc == -ENOENT ? "its manifest is missing" : "cannot fetch its manifest";
			goto fallback;
		}
		nx_stat_add(&st->bytes_fetched, mlen);
		if (memcmp(got, st->ix.meta.digest, NX_SHA256_LEN) != 0 ||
		    mlen != st->ix.meta.size) {
			nx_stat_add(&st->verify_failures, 1);
			why = "its manifest does not match the index's digest";
			rc = -EIO;
			goto fallback;
		}
	}
	rc = nx_cmeta_manifest_parse((const char *)man, mlen, &blob);
	if (rc < 0) {
		why = "its manifest is malformed";
		goto fallback;
	}
	z_cached = nx_blob_load(st, blob.digest, (size_t)NX_CMETA_MAX_BYTES, &z, &zlen) == 0 &&
		   zlen == blob.size;
	if (early_on) {
		pthread_join(early_th, NULL);
		early_on = 0;
		if (memcmp(early.d.digest, blob.digest, NX_SHA256_LEN) != 0 ||
		    early.d.size != blob.size) {
			nx_log(NX_LOG_WARNING, "closure %s: its index names another metadata blob "
			       "than its metadata manifest does; using the manifest's", closure);
		} else if (early.rc == 0 && !z_cached) {
			free(z);
			z = early.z;
			early.z = NULL;
			zlen = blob.size;
			z_cached = 0;
			goto have_blob;
		}
		/* failed (or not needed): fetched again below, errors reported there */
	}
	if (!z_cached) {
		free(z);
		z = NULL;
		rc = cm_fetch_blob(st, &blob, &z);
		if (rc < 0) {
			why = rc == -ENOENT	? "the blob is missing"
			      : rc == -EBADMSG ? "the blob does not match its digest"
					       : "cannot fetch the blob";
			goto fallback;
		}
		zlen = blob.size;
	}
have_blob:
	rc = nx_cmeta_decode(z, zlen, &raw, &items, &n);
	if (rc < 0) {
		why = "the blob is malformed";
		goto fallback;
	}
	rc = cm_adopt(st, raw, items, n);
	if (rc < 0) {
		why = "the blob disagrees with the closure index";
		goto fallback;
	}
	raw = NULL; /* the store owns it now */
	/* verified and agreeing: keep it for the next mount */
	if (!man_cached)
		nx_blob_save(st, st->ix.meta.digest, man, mlen);
	if (!z_cached)
		nx_blob_save(st, blob.digest, z, zlen);
	nx_log(NX_LOG_INFO, "closure %s: metadata of %zu paths loaded in one fetch", closure, n);
	free(items);
	free(man);
	free(z);
	free(early.z);
	return 0;
fallback:
	if (early_on)
		pthread_join(early_th, NULL);
	free(early.z);
	if (rc == -ENOMEM)
		why = "out of memory";
	nx_log(NX_LOG_WARNING,
	       "closure %s: not using its metadata blob (%s); loading each path on its own",
	       closure, why);
	free(items);
	free(raw);
	free(man);
	free(z);
	return 0;
}

int nx_cmeta_get(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], size_t cap, uint8_t **out,
		 size_t *len)
{
	const struct nx_cm_ent *e = cm_find(st->cm, st->ncm, d);

	if (!e || e->len > cap)
		return -ENOENT;
	/* +1: manifests are parsed as text by callers that expect a NUL */
	*out = malloc(e->len + 1);
	if (!*out)
		return -ENOMEM;
	memcpy(*out, e->buf, e->len);
	(*out)[e->len] = 0;
	*len = e->len;
	return 0;
}

int nx_cmeta_toc(struct nx_store *st, const uint8_t man[NX_SHA256_LEN], const struct nx_desc *toc,
		 const char *sp, const uint8_t **buf, size_t *len)
{
	struct nx_cm_ent *e = cm_find(st->cm, st->ncm, man);
	uint8_t got[NX_SHA256_LEN];

	if (!e)
		return -ENOENT;
	if (__atomic_load_n(&e->toc_bad, __ATOMIC_RELAXED))
		return -EBADMSG;
	/* hashed on every load from here, as a cached metadata blob is */
	if (e->toc_len == toc->size)
		nx_sha256(e->toc, e->toc_len, got);
	if (e->toc_len != toc->size || memcmp(got, toc->digest, NX_SHA256_LEN) != 0) {
		int was = __atomic_exchange_n(&e->toc_bad, 1, __ATOMIC_RELAXED);

		if (!was) {
			nx_stat_add(&st->verify_failures, 1);
			nx_log(NX_LOG_WARNING,
			       "closure metadata: the TOC of %s is not its manifest's; loading it on "
			       "its own",
			       sp);
		}
		return -EBADMSG;
	}
	*buf = e->toc;
	*len = e->toc_len;
	return 0;
}

void nx_cmeta_release(struct nx_store *st)
{
	free(st->cm);
	free(st->cm_raw);
	st->cm = NULL;
	st->cm_raw = NULL;
	st->ncm = 0;
}
