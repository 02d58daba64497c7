/*
 * cache/store.c: store paths. Turning a base name into a loaded, trusted
 * struct nx_spath, and the public read/prefetch/list/stats entry points.
 *
 * A path is loaded once: concurrent lookups of one name wait for the first
 * one's load (st->loading), results stay until nx_store_close, -ENOENT is
 * remembered for NX_NEG_TTL_NS. Loading reads the manifest and TOC from the
 * blob cache when it has them (by digest; in non-closure mode the tag ->
 * manifest digest mapping is cached too, which is safe because a tag never
 * moves to another store path), so a remount over a warm cache fetches
 * nothing.
 *
 * Ids: 40 bits of the decoded hash part, so inode numbers survive restarts;
 * 0 is never used, and a collision with another loaded path probes id+1...
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache/cache_i.h"

static uint32_t name_hash(const char *s, size_t len)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < len; i++) {
		h ^= (uint8_t)s[i];
		h *= 16777619u;
	}
	return h;
}

static const char *entry_base(const struct nx_index_entry *e)
{
	return e->store_path + sizeof(NX_STORE_DIR);
}

static int ix_cmp(const void *a, const void *b)
{
	const struct nx_index_entry *x = *(struct nx_index_entry *const *)a;
	const struct nx_index_entry *y = *(struct nx_index_entry *const *)b;

	return strcmp(entry_base(x), entry_base(y));
}

static const struct nx_index_entry *ix_find(const struct nx_store *st, const char *base,
					    size_t len)
{
	size_t lo = 0, hi = st->nix;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const char *b = entry_base(st->ix_sorted[mid]);
		int c = strncmp(b, base, len);

		if (c == 0 && b[len] != '\0')
			c = 1;
		if (c == 0)
			return st->ix_sorted[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/*
 * The lookup bound (cache.h): the generic cell rate algorithm, i.e. a token
 * bucket kept as one time. Each admitted lookup pushes lk_tat one interval
 * further; a lookup may start once lk_tat is no more than a burst ahead of
 * now, and may wait for that moment only if it comes within
 * NX_LOOKUP_WAIT_MS. So waiters are bounded (one second's worth) and a flood
 * of random names costs the registry at most the rate, not a queue.
 */
static int lookup_admit(struct nx_store *st, const char *base, size_t len)
{
	uint64_t now = nx_now_ns(), tat, burst, start;
	int warn = 0, rc = 0;

	if (!st->lk_interval_ns)
		return 0;
	burst = 2 * NX_NS_PER_S; /* two seconds' worth */
	pthread_mutex_lock(&st->lock);
	tat = st->lk_tat > now ? st->lk_tat : now;
	if (tat == now)
		st->lk_warned = 0; /* the bucket is full again: a new burst */
	if (tat - now > burst + UINT64_C(1000000) * NX_LOOKUP_WAIT_MS) {
		if (!st->lk_warned)
			warn = st->lk_warned = 1;
		rc = -EAGAIN;
	} else {
		st->lk_tat = tat + st->lk_interval_ns;
	}
	pthread_mutex_unlock(&st->lock);
	if (warn)
		nx_log(NX_LOG_WARNING,
		       "lookup of %.*s: more than %llu registry lookups per second; names "
		       "not in the cache fail with EAGAIN until the rate drops (-o lookup_rate=)",
		       (int)len, base, (unsigned long long)(NX_NS_PER_S / st->lk_interval_ns));
	if (rc < 0)
		return rc;
	start = tat > burst ? tat - burst : 0;
	if (start > now) {
		struct timespec ts = { .tv_sec = (time_t)((start - now) / NX_NS_PER_S),
				       .tv_nsec = (long)((start - now) % NX_NS_PER_S) };

		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
	return 0;
}

static int fetch_manifest(struct nx_store *st, const char *ref, size_t cap, char **body,
			  size_t *len, uint8_t digest[NX_SHA256_LEN])
{
	int rc, probe;

	probe = nx_source_begin(st);
	if (probe < 0) {
		nx_stat_add(&st->errors, 1);
		return -EIO;
	}
	rc = st->src.get_manifest(st->src.ctx, ref, cap, body, len, digest);
	nx_source_end(st, probe, rc);
	if (rc == -ENOENT)
		return rc;
	if (rc < 0) {
		nx_stat_add(&st->errors, 1);
		return -EIO; /* the source logged the cause */
	}
	nx_stat_add(&st->bytes_fetched, *len);
	return 0;
}

static int load_closure(struct nx_store *st, const char *closure)
{
	uint8_t pin[NX_SHA256_LEN], got[NX_SHA256_LEN];
	uint8_t *body = NULL;
	size_t len = 0, n = 0;
	int rc, cached = 0;

	if (strncmp(closure, "sha256:", 7) == 0) {
		if (nx_digest_parse(closure, pin) < 0) {
			nx_log(NX_LOG_ERR, "closure %s: not a valid sha256 digest", closure);
			return -EINVAL;
		}
		st->pinned = 1;
		cached = nx_blob_load(st, pin, NX_INDEX_MAX, &body, &len) == 0;
	}
	if (!cached) {
		rc = fetch_manifest(st, closure, NX_INDEX_MAX, (char **)&body, &len, got);
		if (rc == -ENOENT)
			nx_log(NX_LOG_ERR, "closure %s: not found in the repository", closure);
		if (rc < 0)
			return rc;
		if (st->pinned && memcmp(got, pin, NX_SHA256_LEN) != 0) {
			nx_log(NX_LOG_ERR, "closure %s: digest mismatch", closure);
			free(body);
			return -EIO;
		}
	}
	memcpy(st->closure_digest, cached ? pin : got, NX_SHA256_LEN);
	rc = nx_index_parse((const char *)body, len, &st->ix);
	if (rc < 0) {
		nx_log(NX_LOG_ERR, "closure %s: not a nixoci closure index", closure);
		free(body);
		return -EINVAL;
	}
	if (st->pinned && !cached)
		nx_blob_save(st, pin, body, len);
	free(body);

	st->ix_sorted = calloc(st->ix.nentries ? st->ix.nentries : 1, sizeof(*st->ix_sorted));
	if (!st->ix_sorted)
		return -ENOMEM;
	for (size_t i = 0; i < st->ix.nentries; i++) {
		const char *b;

		if (nx_storepath_check(st->ix.entries[i].store_path, &b) < 0) {
			nx_log(NX_LOG_WARNING, "closure %s: ignoring entry with bad store path",
			       closure);
			continue;
		}
		st->ix_sorted[n++] = &st->ix.entries[i];
	}
	qsort(st->ix_sorted, n, sizeof(*st->ix_sorted), ix_cmp);
	st->nix = n;
	st->closure_mode = 1;
	return 0;
}

int nx_store_open(struct nx_store **out, const struct nx_store_opts *o,
		  const struct nx_source *src)
{
	struct nx_store *st;
	int rc;

	st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	st->src = *src;
	st->dir = strdup(o->cache_dir ? o->cache_dir : "/var/cache/nixoci");
	/* on the directory as du sees it: db.c counts the blocks of every
	 * file and directory in it */
	st->limit = o->cache_size ? o->cache_size : NX_DEFAULT_CACHE_SIZE;
	st->keys = o->nkeys ? o->keys : NULL;
	st->nkeys = o->keys ? o->nkeys : 0;
	st->readonly = o->readonly_cache;
	nx_sha256(o->origin ? o->origin : "", o->origin ? strlen(o->origin) : 0, st->origin_id);
	st->tag_ttl = o->tag_ttl > 0 ? (uint64_t)o->tag_ttl : o->tag_ttl < 0 ? 0 : NX_TAG_TTL_DEFAULT;
	st->ra_max = o->readahead < 0 ? 0 : o->readahead ? (uint32_t)o->readahead : NX_RA_DEFAULT_MAX;
	if (st->ra_max > NX_RA_DEFAULT_MAX)
		st->ra_max = NX_RA_DEFAULT_MAX;
	if (o->lookup_rate >= 0)
		st->lk_interval_ns = NX_NS_PER_S / (uint64_t)(o->lookup_rate ? o->lookup_rate
								 : NX_LOOKUP_RATE_DEFAULT);
	if (!st->dir) {
		free(st);
		return -ENOMEM;
	}
	pthread_mutex_init(&st->lock, NULL);
	pthread_cond_init(&st->cond, NULL);
	pthread_cond_init(&st->ra_cond, NULL);
	pthread_cond_init(&st->rp_cond, NULL);
	{
		pthread_rwlockattr_t ra;

		/* a map growth must not wait behind a stream of readers */
		pthread_rwlockattr_init(&ra);
		pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
		pthread_rwlock_init(&st->db_rw, &ra);
		pthread_rwlockattr_destroy(&ra);
	}
	{
		pthread_condattr_t ca;

		/* the syncer's timed wait must not jump with the wall clock */
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&st->sync_cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	rc = nx_db_open(st);
	if (rc < 0)
		goto fail;
	rc = nx_files_open(st);
	if (rc < 0)
		goto fail;
	if (o->closure && o->closure[0]) {
		rc = load_closure(st, o->closure);
		if (rc < 0)
			goto fail;
		rc = nx_cmeta_load(st, o->closure);
		if (rc < 0)
			goto fail;
	}
	if (o->profile_record) {
		rc = nx_prec_open(st, o->profile_record, o->profile_seconds);
		if (rc < 0)
			goto fail;
	}
	if (o->profile) {
		rc = nx_pfetch_start(st, o->profile);
		if (rc < 0)
			goto fail;
	}
	*out = st;
	return 0;
fail:
	nx_store_close(st);
	return rc;
}

static void spath_free(struct nx_spath *p)
{
	nx_manifest_release(&p->man);
	nx_toc_free(p->toc);
	free(p);
}

void nx_store_close(struct nx_store *st)
{
	struct nx_spath *p, *pn;

	if (!st)
		return;
	/* first: reference prefetch and readahead workers use paths and the
	 * cache (prefetch first: its lookups could queue readahead) */
	nx_profile_stop(st); /* its workers look paths up and walk frames */
	nx_rp_stop(st);
	nx_ra_stop(st);
	nx_files_close(st); /* its worker uses paths too */
	for (p = st->all; p; p = pn) {
		pn = p->next_all;
		spath_free(p);
	}
	while (st->neg) {
		struct nx_neg *n = st->neg;

		st->neg = n->next;
		free(n);
	}
	/* loading, flights and pins are empty once no call is running */
	nx_db_close(st);
	nx_index_release(&st->ix);
	free(st->ix_sorted);
	nx_cmeta_release(st);
	pthread_cond_destroy(&st->ra_cond);
	pthread_cond_destroy(&st->rp_cond);
	pthread_rwlock_destroy(&st->db_rw);
	pthread_cond_destroy(&st->sync_cond);
	pthread_cond_destroy(&st->cond);
	pthread_mutex_destroy(&st->lock);
	free(st->dir);
	free(st);
}

/* ------------------------------------------------------------ loading */

struct collect {
	uint8_t *buf;
	uint64_t size;
	uint64_t got;
};

static int collect_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct collect *c = ctx;

	if (off != c->got || off + len > c->size)
		return -EIO;
	memcpy(c->buf + off, buf, len);
	c->got += len;
	return 0;
}

/* A whole metadata blob, verified against its descriptor, via the cache.
 * *fetched says it came from the source: the caller saves it once the
 * artifact is accepted (a blob that verifies but does not parse, or a path
 * that is refused, leaves nothing in the cache). */
static int get_meta_blob(struct nx_store *st, const struct nx_desc *d, size_t cap,
			 const char *what, const char *sp, uint8_t **out, size_t *outlen,
			 int *fetched)
{
	struct collect c = { 0 };
	uint8_t got[NX_SHA256_LEN];
	int rc, probe;

	*fetched = 0;
	if (nx_cmeta_get(st, d->digest, cap, out, outlen) == 0)
		return 0; /* verified by its digest; cached as part of the whole */
	if (nx_blob_load(st, d->digest, cap, out, outlen) == 0) {
		if (*outlen == d->size)
			return 0;
		free(*out); /* same digest, other size: cannot happen */
		*out = NULL;
	}
	if (d->size == 0 || d->size > cap) {
		nx_log(NX_LOG_ERR, "%s of %s: size %llu is out of range", what, sp,
		       (unsigned long long)d->size);
		return -EIO;
	}
	c.size = d->size;
	c.buf = malloc(c.size);
	if (!c.buf)
		return -ENOMEM;
	probe = nx_source_begin(st);
	if (probe < 0) {
		nx_stat_add(&st->errors, 1);
		free(c.buf);
		return -EIO;
	}
	rc = st->src.get_blob(st->src.ctx, d->digest, 0, d->size, collect_cb, &c);
	nx_source_end(st, probe, rc);
	nx_stat_add(&st->bytes_fetched, c.got);
	if (rc < 0 || c.got != c.size) {
		if (rc == -EIO || rc == 0)
			nx_log(NX_LOG_ERR, "%s of %s: the source sent an unexpected body", what,
			       sp);
		nx_stat_add(&st->errors, 1);
		free(c.buf);
		return -EIO;
	}
	nx_sha256(c.buf, c.size, got);
	if (memcmp(got, d->digest, NX_SHA256_LEN) != 0) {
		nx_stat_add(&st->verify_failures, 1);
		nx_log(NX_LOG_ERR, "%s of %s: digest mismatch", what, sp);
		free(c.buf);
		return -EIO;
	}
	*fetched = 1;
	*out = c.buf;
	*outlen = c.size;
	return 0;
}

static struct nx_refused *refused_slot(struct nx_store *st, const uint8_t d[NX_SHA256_LEN])
{
	/* digests are uniform: two bytes pick the slot */
	return &st->refused[((unsigned)d[0] | (unsigned)d[1] << 8) % NX_REFUSED_SLOTS];
}

/* The remembered refusal of blob @d (-EIO or -EACCES), or 0. */
static int refused_get(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], const char *what,
		       const char *sp)
{
	struct nx_refused *r;
	int rc = 0;

	pthread_mutex_lock(&st->lock);
	r = refused_slot(st, d);
	if (r->rc && memcmp(r->digest, d, NX_SHA256_LEN) == 0)
		rc = r->rc;
	pthread_mutex_unlock(&st->lock);
	if (rc)
		nx_log(NX_LOG_DEBUG, "%s of %s: refused before (%s), not fetched again", what, sp,
		       strerror(-rc));
	return rc;
}

static void refused_add(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], int rc)
{
	struct nx_refused *r;

	pthread_mutex_lock(&st->lock);
	r = refused_slot(st, d);
	memcpy(r->digest, d, NX_SHA256_LEN);
	r->rc = rc;
	pthread_mutex_unlock(&st->lock);
}

/* A tag record: the manifest digest, when it was resolved (seconds, LE) and
 * the SHA-256 of the origin that resolved it. Records of the older 40-byte
 * form (no origin) are ignored: resolved again. */
#define TAG_REC_LEN (NX_SHA256_LEN + 8 + NX_SHA256_LEN)

/* 1 if @base has a tag record from this store's origin (digest in @d,
 * *stale when older than the TTL), else 0. */
static int tag_get(struct nx_store *st, const char *base, uint8_t d[NX_SHA256_LEN], int *stale)
{
	uint8_t rec[TAG_REC_LEN];
	size_t vlen = 0;
	uint64_t when = 0, now = (uint64_t)time(NULL);

	if (nx_db_get(st, st->dbi_tags, base, NX_HASH_LEN, rec, sizeof(rec), &vlen) < 0 ||
	    vlen != TAG_REC_LEN ||
	    memcmp(rec + NX_SHA256_LEN + 8, st->origin_id, NX_SHA256_LEN) != 0)
		return 0;
	for (int i = 0; i < 8; i++)
		when |= (uint64_t)rec[NX_SHA256_LEN + i] << (8 * i);
	memcpy(d, rec, NX_SHA256_LEN);
	*stale = when > now || now - when >= st->tag_ttl;
	return 1;
}

/* The manifest of @base: bytes and digest, from the cache or the source. */
static int get_path_manifest(struct nx_store *st, const char *base, size_t len, char **body,
			     size_t *blen, uint8_t digest[NX_SHA256_LEN], int *fetched)
{
	const struct nx_index_entry *e = NULL;
	char ref[NX_DIGEST_STRLEN];
	uint8_t stale_digest[NX_SHA256_LEN];
	int have_tag = 0, stale = 0;
	uint8_t *b;
	int rc;

	*fetched = 0;
	if (st->closure_mode) {
		e = ix_find(st, base, len);
		if (!e)
			return -ENOENT;
		memcpy(digest, e->desc.digest, NX_SHA256_LEN);
		rc = refused_get(st, digest, "manifest", e->store_path);
		if (rc < 0)
			return rc;
		/* the closure's metadata blob (cached as a whole) */
		if (nx_cmeta_get(st, digest, NX_MANIFEST_MAX, &b, blen) == 0) {
			*body = (char *)b;
			return 0;
		}
		if (nx_blob_load(st, digest, NX_MANIFEST_MAX, &b, blen) == 0) {
			*body = (char *)b;
			return 0;
		}
		nx_digest_format(digest, ref);
	} else {
		have_tag = tag_get(st, base, stale_digest, &stale);
		if (have_tag && !stale &&
		    nx_blob_load(st, stale_digest, NX_MANIFEST_MAX, &b, blen) == 0) {
			memcpy(digest, stale_digest, NX_SHA256_LEN);
			*body = (char *)b;
			return 0;
		}
		memcpy(ref, base, NX_HASH_LEN);
		ref[NX_HASH_LEN] = '\0';
		rc = lookup_admit(st, base, len);
		if (rc < 0)
			return rc;
	}
	rc = fetch_manifest(st, ref, NX_MANIFEST_MAX, body, blen, digest);
	if (rc == -EIO && have_tag &&
	    nx_blob_load(st, stale_digest, NX_MANIFEST_MAX, &b, blen) == 0) {
		/* the origin cannot answer now: its last answer, past its TTL */
		nx_log(NX_LOG_DEBUG, "tag %.*s: the registry did not answer, using the resolution "
		       "cached before", NX_HASH_LEN, base);
		memcpy(digest, stale_digest, NX_SHA256_LEN);
		*body = (char *)b;
		return 0;
	}
	if (rc < 0)
		return rc;
	if (e && (memcmp(digest, e->desc.digest, NX_SHA256_LEN) != 0 || *blen != e->desc.size)) {
		nx_log(NX_LOG_ERR, "manifest of %s: does not match the closure's descriptor",
		       e->store_path);
		/* the caller owns *body from here on only on success */
		free(*body);
		*body = NULL;
		return -EIO;
	}
	*fetched = 1;
	return 0;
}

/* An accepted manifest fetched from the source goes into the cache, and
 * (outside closure mode) the tag record pointing at it. */
static void save_path_manifest(struct nx_store *st, const char *base, const char *body,
			       size_t blen, const uint8_t digest[NX_SHA256_LEN])
{
	uint8_t rec[TAG_REC_LEN];
	uint64_t now = (uint64_t)time(NULL);

	nx_blob_save(st, digest, body, blen);
	if (st->closure_mode)
		return;
	memcpy(rec, digest, NX_SHA256_LEN);
	for (int i = 0; i < 8; i++)
		rec[NX_SHA256_LEN + i] = (uint8_t)(now >> (8 * i));
	memcpy(rec + NX_SHA256_LEN + 8, st->origin_id, NX_SHA256_LEN);
	nx_db_put(st, st->dbi_tags, base, NX_HASH_LEN, rec, sizeof(rec));
}

static int any_sig(const struct nx_store *st, char **sigs, size_t n, const char *msg)
{
	for (size_t i = 0; i < n; i++) {
		int r = nx_sig_verify(st->keys, st->nkeys, sigs[i], msg, strlen(msg));

		if (r != 0)
			return r;
	}
	return 0;
}

/* format.md §6, from the manifest alone, so a refused path costs no TOC
 * fetch: 0 = served as the TOC says (no keys, a pinned closure, or a TOC
 * signature by a trusted key), 1 = only the narinfo is signed (the whole NAR
 * must be verified first), -EACCES = refused (logged). */
static int check_sigs(struct nx_store *st, const struct nx_manifest *m)
{
	char *fp = NULL;
	int rc;

	if (!st->nkeys || st->pinned)
		return 0;
	rc = nx_toc_fingerprint(m->info.store_path, m->info.nar_hash, m->toc.digest, &fp);
	if (rc < 0)
		return rc;
	rc = any_sig(st, m->toc_sigs, m->ntoc_sigs, fp);
	free(fp);
	if (rc != 0)
		return rc < 0 ? rc : 0;

	rc = nx_fingerprint(&m->info, &fp);
	if (rc < 0)
		return rc;
	rc = any_sig(st, m->info.sigs, m->info.nsigs, fp);
	free(fp);
	if (rc < 0)
		return rc;
	if (rc == 0) {
		nx_log(NX_LOG_ERR, "%s: refused: no signature by a trusted key", m->info.store_path);
		return -EACCES;
	}
	return 1;
}

/* The rest of format.md §6 for a narinfo-only signature, once the TOC is
 * decoded: only NarHash is signed, so the TOC is authenticated by the whole
 * NAR (remembered in the cache by manifest digest). */
static int check_nar(struct nx_store *st, struct nx_spath *p)
{
	const struct nx_manifest *m = &p->man;
	uint8_t rec[8];
	uint64_t now;
	int rc;

	if (nx_db_get(st, st->dbi_verified, p->man_digest, NX_SHA256_LEN, rec, sizeof(rec),
		      NULL) == 0)
		return 0;
	if (nx_rp_in_worker())
		return -EAGAIN; /* a guess is not worth a whole NAR (refs.c) */
	nx_log(NX_LOG_INFO, "%s: narinfo signature only, verifying the whole NAR",
	       m->info.store_path);
	rc = nx_verify_nar(st, p);
	if (rc < 0)
		return rc;
	now = (uint64_t)time(NULL);
	for (int i = 0; i < 8; i++)
		rec[i] = (uint8_t)(now >> (8 * i));
	nx_db_put(st, st->dbi_verified, p->man_digest, NX_SHA256_LEN, rec, sizeof(rec));
	return 0;
}

static int load_path(struct nx_store *st, const char *base, size_t len, struct nx_spath **out)
{
	struct nx_spath *p;
	char *body = NULL, sp[sizeof(NX_STORE_DIR) + NX_BASE_MAX + 1];
	uint8_t *tocz = NULL;
	size_t blen, toczlen;
	int rc, need_nar, man_fetched = 0, toc_fetched = 0;

	snprintf(sp, sizeof(sp), "%s/%.*s", NX_STORE_DIR, (int)len, base);
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	memcpy(p->base, base, len);
	p->base_len = len;

	rc = get_path_manifest(st, base, len, &body, &blen, p->man_digest, &man_fetched);
	if (rc < 0)
		goto fail;
	rc = refused_get(st, p->man_digest, "manifest", sp);
	if (rc < 0)
		goto fail;
	rc = nx_manifest_parse(body, blen, &p->man);
	if (rc < 0) {
		nx_log(NX_LOG_ERR, "manifest of %s: malformed", sp);
		rc = -EIO;
		refused_add(st, p->man_digest, rc);
		goto fail;
	}
	if (strcmp(p->man.info.store_path, sp) != 0) {
		nx_log(NX_LOG_WARNING, "manifest for %s names %s instead", sp,
		       p->man.info.store_path);
		rc = -ENOENT;
		goto fail;
	}
	need_nar = check_sigs(st, &p->man);
	if (need_nar < 0) {
		rc = need_nar;
		if (rc == -EACCES)
			refused_add(st, p->man_digest, rc);
		goto fail;
	}
	rc = refused_get(st, p->man.toc.digest, "toc", sp);
	if (rc < 0)
		goto fail;
	rc = get_meta_blob(st, &p->man.toc, NX_TOC_MAX_BYTES, "toc", sp, &tocz, &toczlen,
			   &toc_fetched);
	if (rc < 0)
		goto fail;
	/* inflated straight into the tables, the header checked first */
	rc = nx_toc_decode_zstd(tocz, toczlen, NX_TOC_MAX_BYTES, &p->toc);
	if (rc == -ENOMEM)
		goto fail;
	if (rc < 0) {
		nx_log(NX_LOG_ERR, "toc of %s: malformed", sp);
		rc = -EIO;
		refused_add(st, p->man.toc.digest, rc);
		goto fail;
	}
	if (p->toc->nar_size != p->man.info.nar_size || p->toc->blob_size != p->man.nar.size) {
		nx_log(NX_LOG_ERR, "toc of %s: sizes do not match the manifest", sp);
		rc = -EIO;
		refused_add(st, p->man_digest, rc);
		goto fail;
	}
	rc = nx_frames_policy(p, sp); /* files and records proportional to bytes */
	if (rc < 0) {
		refused_add(st, p->man_digest, rc);
		goto fail;
	}
	if (need_nar) {
		rc = check_nar(st, p);
		if (rc == -EACCES) /* the NAR contradicts what was signed */
			refused_add(st, p->man_digest, rc);
		if (rc < 0)
			goto fail;
	}
	/* accepted: only now does any of it go into the cache */
	if (man_fetched)
		save_path_manifest(st, base, body, blen, p->man_digest);
	if (toc_fetched)
		nx_blob_save(st, p->man.toc.digest, tocz, toczlen);
	free(body);
	free(tocz);
	*out = p;
	return 0;
fail:
	free(body);
	free(tocz);
	spath_free(p);
	return rc;
}

static uint64_t base_id(const char *base)
{
	uint8_t h[NX_SHA256_LEN];
	uint64_t id = 0;

	if (nx_nix32_decode(base, NX_HASH_LEN, h, 20) < 0)
		nx_sha256(base, NX_HASH_LEN, h); /* not reached: the name was checked */
	for (int i = 0; i < 5; i++)
		id |= (uint64_t)h[i] << (8 * i);
	return id ? id : 1;
}

static struct nx_spath *find_id(struct nx_store *st, uint64_t id)
{
	for (struct nx_spath *p = st->by_id[id % NX_PATH_BUCKETS]; p; p = p->next_id)
		if (p->id == id)
			return p;
	return NULL;
}

static struct nx_spath *find_name(struct nx_store *st, const char *base, size_t len)
{
	uint32_t h = name_hash(base, len) % NX_PATH_BUCKETS;

	for (struct nx_spath *p = st->by_name[h]; p; p = p->next_name)
		if (p->base_len == len && memcmp(p->base, base, len) == 0)
			return p;
	return NULL;
}

/* With st->lock held. */
static void publish(struct nx_store *st, struct nx_spath *p)
{
	uint64_t id = base_id(p->base);
	uint32_t h = name_hash(p->base, p->base_len) % NX_PATH_BUCKETS;

	while (find_id(st, id)) {
		nx_log(NX_LOG_DEBUG, "%.*s: id %llx taken, probing", (int)p->base_len, p->base,
		       (unsigned long long)id);
		id = (id + 1) & NX_ID_MASK;
		if (!id)
			id = 1;
	}
	p->id = id;
	p->next_name = st->by_name[h];
	st->by_name[h] = p;
	p->next_id = st->by_id[id % NX_PATH_BUCKETS];
	st->by_id[id % NX_PATH_BUCKETS] = p;
	p->next_all = st->all;
	st->all = p;
	nx_stat_add(&st->paths_loaded, 1);
}

/* With st->lock held: the remembered failure of @base, or 0. */
static int neg_hit(struct nx_store *st, const char *base, size_t len)
{
	uint64_t now = nx_now_ns();

	for (struct nx_neg *n = st->neg; n; n = n->next)
		if (n->expires > now && strlen(n->base) == len && memcmp(n->base, base, len) == 0)
			return n->rc;
	return 0;
}

static void neg_add(struct nx_store *st, const char *base, size_t len, int rc)
{
	uint64_t now = nx_now_ns();
	struct nx_neg **pp = &st->neg, *n;

	while ((n = *pp)) {
		if (n->expires <= now || st->nneg >= NX_NEG_MAX) {
			*pp = n->next;
			free(n);
			st->nneg--;
		} else {
			pp = &n->next;
		}
	}
	n = calloc(1, sizeof(*n));
	if (!n)
		return;
	memcpy(n->base, base, len);
	n->rc = rc;
	n->expires = now + NX_NEG_TTL_NS;
	n->next = st->neg;
	st->neg = n;
	st->nneg++;
}

int nx_store_lookup(struct nx_store *st, const char *base, size_t len, struct nx_spath **out)
{
	struct nx_loading *l, **pp;
	struct nx_spath *p = NULL;
	int rc, waited, retry;

	if (len > NX_BASE_MAX || nx_storepath_check_base(base, len) < 0)
		return -ENOENT;

again:
	waited = retry = 0;
	pthread_mutex_lock(&st->lock);
	p = find_name(st, base, len);
	if (p) {
		pthread_mutex_unlock(&st->lock);
		*out = p;
		return 0;
	}
	rc = neg_hit(st, base, len);
	if (rc < 0) {
		pthread_mutex_unlock(&st->lock);
		return rc;
	}
	for (l = st->loading; l; l = l->next)
		if (strlen(l->base) == len && memcmp(l->base, base, len) == 0)
			break;
	if (l) {
		/* Someone loads it: wait for that result. */
		l->refs++;
		waited = 1;
		while (!l->done)
			pthread_cond_wait(&st->cond, &st->lock);
		rc = l->rc;
		p = l->p;
		/* a background load that declined (refs.c) is no answer for
		 * a real lookup: load it ourselves */
		retry = rc == -EAGAIN && l->bg && !nx_rp_in_worker();
		goto unref;
	}
	l = calloc(1, sizeof(*l));
	if (!l) {
		pthread_mutex_unlock(&st->lock);
		return -ENOMEM;
	}
	memcpy(l->base, base, len);
	l->bg = nx_rp_in_worker();
	l->refs = 1;
	l->next = st->loading;
	st->loading = l;
	pthread_mutex_unlock(&st->lock);

	rc = load_path(st, base, len, &p);

	pthread_mutex_lock(&st->lock);
	if (rc == 0)
		publish(st, p);
	else if (rc == -ENOENT || rc == -EACCES)
		neg_add(st, base, len, rc); /* failed trust costs a full fetch: not again soon */
	l->done = 1;
	l->rc = rc;
	l->p = p;
	pthread_cond_broadcast(&st->cond);
unref:
	if (--l->refs == 0) {
		for (pp = &st->loading; *pp; pp = &(*pp)->next) {
			if (*pp == l) {
				*pp = l->next;
				break;
			}
		}
		free(l);
	}
	pthread_mutex_unlock(&st->lock);
	if (retry)
		goto again;
	if (rc == 0 && !waited)
		nx_rp_after_load(st, p);
	if (rc == 0)
		*out = p;
	return rc;
}

struct nx_spath *nx_spath_find_locked(struct nx_store *st, const char *base, size_t len)
{
	return find_name(st, base, len);
}

int nx_ix_has_locked(const struct nx_store *st, const char *base)
{
	return ix_find(st, base, strlen(base)) != NULL;
}

int nx_store_by_id(struct nx_store *st, uint64_t id, struct nx_spath **out)
{
	struct nx_spath *p;

	pthread_mutex_lock(&st->lock);
	p = find_id(st, id);
	pthread_mutex_unlock(&st->lock);
	if (!p)
		return -ENOENT;
	*out = p;
	return 0;
}

int nx_store_list(struct nx_store *st, int (*cb)(void *ctx, const char *base), void *ctx)
{
	char **names = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;

	if (st->closure_mode) {
		for (size_t i = 0; i < st->nix; i++) {
			rc = cb(ctx, entry_base(st->ix_sorted[i]));
			if (rc)
				return rc;
		}
		return 0;
	}
	/* Copy the names so @cb runs without the lock (it may look up). */
	pthread_mutex_lock(&st->lock);
	for (struct nx_spath *p = st->all; p; p = p->next_all) {
		if (n == cap) {
			size_t ncap = cap ? 2 * cap : 64;
			char **nn = realloc(names, ncap * sizeof(*names));

			if (!nn) {
				rc = -ENOMEM;
				break;
			}
			names = nn;
			cap = ncap;
		}
		names[n++] = p->base; /* paths live until close */
	}
	pthread_mutex_unlock(&st->lock);
	for (size_t i = 0; rc == 0 && i < n; i++)
		rc = cb(ctx, names[i]);
	free(names);
	return rc;
}

uint64_t nx_spath_id(const struct nx_spath *p)
{
	return p->id;
}

const char *nx_spath_base(const struct nx_spath *p)
{
	return p->base;
}

const struct nx_toc *nx_spath_toc(const struct nx_spath *p)
{
	return p->toc;
}

const struct nx_manifest *nx_spath_manifest(const struct nx_spath *p)
{
	return &p->man;
}

/* --------------------------------------------------------------- reads */

struct readctx {
	uint64_t a, b; /* NAR range wanted */
	uint8_t *buf;
};

static void slice(const struct nx_toc_frame *f, const struct readctx *r, uint64_t *s, uint64_t *e)
{
	*s = f->uoff > r->a ? f->uoff : r->a;
	*e = f->uoff + f->ulen < r->b ? f->uoff + f->ulen : r->b;
}

struct readwalk {
	struct readctx r;
	const struct nx_toc *toc;
};

static int read_data(void *ctx, uint32_t i, const uint8_t *buf, size_t len)
{
	struct readwalk *w = ctx;
	const struct nx_toc_frame *f = &w->toc->frames[i];
	uint64_t s, e;

	slice(f, &w->r, &s, &e);
	if (s < e)
		memcpy(w->r.buf + (s - w->r.a), buf + (s - f->uoff), e - s);
	return 0;
}

static int read_file(void *ctx, uint32_t i, int fd)
{
	struct readwalk *w = ctx;
	const struct nx_toc_frame *f = &w->toc->frames[i];
	uint64_t s, e;

	slice(f, &w->r, &s, &e);
	while (s < e) {
		ssize_t n = pread(fd, w->r.buf + (s - w->r.a), e - s, (off_t)(s - f->uoff));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			nx_log(NX_LOG_ERR, "cache: cannot read a cached frame: %s",
			       n < 0 ? strerror(errno) : "short file");
			return -EIO;
		}
		s += (uint64_t)n;
	}
	return 0;
}

int nx_store_read_fd(struct nx_store *st, struct nx_spath *p, uint32_t entry, uint64_t off,
		     size_t len, struct nx_reader *rd, int *fd, uint64_t *fdoff, size_t *got,
		     uint32_t *frame)
{
	const struct nx_toc *toc = p->toc;
	const struct nx_toc_entry *e;
	const struct nx_toc_frame *f;
	uint32_t first, last;
	uint64_t n, a, size = 0;
	int rc;

	*got = 0;
	if (entry >= toc->nentries)
		return -ENOENT;
	e = &toc->entries[entry];
	if (e->type == NX_NODE_DIRECTORY)
		return -EISDIR;
	if (e->type != NX_NODE_REGULAR)
		return -EINVAL;
	if (off >= e->size || len == 0)
		return -EAGAIN; /* nothing to hand out: the plain path answers */
	n = e->size - off < len ? e->size - off : len;
	a = e->off + off;
	if (nx_toc_frames_for(toc, a, n, &first, &last) < 0)
		return -EIO;
	if (first != last)
		return -EAGAIN;
	f = &toc->frames[first];
	rc = nx_chunk_open(st, f->sha256, f->ulen, fd, &size);
	if (rc < 0)
		return -EAGAIN; /* a miss, or a chunk to be judged by the plain path */
	if (rd)
		nx_ra_after_read(st, rd, p, entry, off, n, last);
	nx_prec_note(st, p, first, last);
	nx_stat_add(&st->cache_hits, 1);
	*fdoff = a - f->uoff;
	*got = (size_t)n;
	*frame = first;
	return 0;
}

void nx_store_read_fd_done(struct nx_store *st, struct nx_spath *p, uint32_t frame, int fd)
{
	close(fd);
	if (frame < p->toc->nframes)
		nx_chunk_unpin(st, p->toc->frames[frame].sha256);
}

int nx_store_read(struct nx_store *st, struct nx_spath *p, uint32_t entry, uint64_t off,
		  size_t len, void *buf, size_t *got)
{
	return nx_store_read_ahead(st, p, entry, off, len, buf, got, NULL);
}

int nx_store_read_ahead(struct nx_store *st, struct nx_spath *p, uint32_t entry, uint64_t off,
			size_t len, void *buf, size_t *got, struct nx_reader *rd)
{
	const struct nx_toc *toc = p->toc;
	const struct nx_toc_entry *e;
	struct readwalk w = { .toc = toc };
	struct nx_walk_ops ops = { .data = read_data, .file = read_file };
	uint32_t first, last;
	uint64_t n;
	int rc;

	*got = 0;
	if (entry >= toc->nentries)
		return -ENOENT;
	e = &toc->entries[entry];
	if (e->type == NX_NODE_DIRECTORY)
		return -EISDIR;
	if (e->type != NX_NODE_REGULAR)
		return -EINVAL;
	if (off >= e->size || len == 0)
		return 0;
	n = e->size - off < len ? e->size - off : len;
	w.r.a = e->off + off;
	w.r.b = w.r.a + n;
	w.r.buf = buf;
	rc = nx_toc_frames_for(toc, w.r.a, n, &first, &last);
	if (rc < 0)
		return -EIO;
	if (rd && nx_reader_failed(st, rd, p, entry))
		return -EIO;
	nx_prec_note(st, p, first, last);
	/* before our own fetch, so the window's transfers overlap with it */
	if (rd)
		nx_ra_after_read(st, rd, p, entry, off, n, last);
	rc = nx_frames_walk_ext(st, p, first, last, nx_ra_extend(st, p, entry, last),
				NX_BATCH_BYTES, &ops, &w);
	if (rc < 0 && rd)
		nx_reader_fail(st, rd, p, entry);
	if (rc < 0)
		return rc == -ENOMEM ? rc : -EIO;
	if (rd)
		nx_ra_after_data(st, rd, p, entry, off, buf, (size_t)n);
	*got = (size_t)n;
	return 0;
}

struct progress {
	const struct nx_toc *toc;
	uint64_t done, total;
	void (*cb)(void *ctx, uint64_t done, uint64_t total);
	void *ctx;
};

static int progress_data(void *ctx, uint32_t i, const uint8_t *buf, size_t len)
{
	struct progress *pr = ctx;

	pr->done += pr->toc->frames[i].ulen;
	if (pr->cb)
		pr->cb(pr->ctx, pr->done, pr->total);
	return 0;
}

static int progress_file(void *ctx, uint32_t i, int fd)
{
	return progress_data(ctx, i, NULL, 0);
}

int nx_store_prefetch(struct nx_store *st, struct nx_spath *p,
		      void (*progress)(void *ctx, uint64_t done, uint64_t total), void *ctx)
{
	struct progress pr = { .toc = p->toc, .total = p->toc->nar_size, .cb = progress,
			       .ctx = ctx };
	struct nx_walk_ops ops = { .data = progress_data, .file = progress_file };

	return nx_frames_walk(st, p, 0, p->toc->nframes - 1, NX_BATCH_BYTES, &ops, &pr);
}

void nx_store_stats(struct nx_store *st, struct nx_store_stats *out)
{
	out->frames_fetched = nx_stat_get(&st->frames_fetched);
	out->bytes_fetched = nx_stat_get(&st->bytes_fetched);
	out->cache_hits = nx_stat_get(&st->cache_hits);
	out->cache_misses = nx_stat_get(&st->cache_misses);
	out->cache_bytes = nx_stat_get(&st->total_bytes);
	out->copy_bytes = nx_files_bytes(st);
	out->cache_limit = st->limit;
	out->evictions = nx_stat_get(&st->evictions);
	out->verify_failures = nx_stat_get(&st->verify_failures);
	out->errors = nx_stat_get(&st->errors);
	out->paths_loaded = nx_stat_get(&st->paths_loaded);
	out->readahead_frames = nx_stat_get(&st->ra_frames);
	pthread_mutex_lock(&st->lock);
	out->offline = st->offline;
	pthread_mutex_unlock(&st->lock);
}
