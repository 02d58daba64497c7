/*
 * cache/store.c: store paths. Turning a base name into a loaded, trusted
 * struct nx_spath, and the public read/prefetch/list/stats entry points.
 *
 * A path is loaded once at a time: concurrent lookups of one name wait for
 * the first one's load (st->loading), -ENOENT is remembered for
 * NX_NEG_TTL_NS. Loading reads the manifest and TOC from the
 * blob cache when it has them (by digest; in non-closure mode the tag ->
 * manifest digest mapping is cached too, which is safe because a tag never
 * moves to another store path), so a remount over a warm cache fetches
 * nothing.
 *
 * Lifetime and the metadata budget. A resolved path has a header (struct
 * nx_spath: name, id, digests) that stays until nx_store_close, and a
 * loaded part (manifest, decoded TOC) that may come and go. Every user of
 * the loaded part holds a reference: nx_store_lookup and nx_store_by_id
 * return one, nx_spath_get adds one, nx_spath_put drops one (open files,
 * requests in flight, readahead and copy jobs). A path whose last reference
 * goes joins an LRU list, loaded; whenever the metadata bytes (headers,
 * loaded parts as malloc_usable_size counts them, the closure metadata
 * blob) exceed st->meta_budget, the least recently used of those is
 * unloaded, and before a load, room is made for the TOC it brings. A path
 * referenced is never unloaded, so one larger than the budget still loads,
 * and goes as soon as it is unreferenced. A reload takes the same manifest
 * (by the digest the header kept) from the cache, so it has the same TOC:
 * a path keeps its resolution for the life of the store.
 *
 * Ids: an inode number is (id << 24) | entry, and the kernel may ask about
 * any number it was given, whether the path is loaded or not, and so may a
 * successor daemon (fs/takeover.c). So an id must not depend on load order:
 * it is 40 bits of the decoded hash part, and the rare collision (two paths
 * whose hash parts share 40 bits) is settled once, by the id table in the
 * cache (db.c: first come, probing id+1...; 0 is never used), which every
 * later run, successor and reload reads. nx_store_by_id finds an unknown
 * id there and loads the path. Without a writable cache (tools), a new
 * collision is settled in memory, in load order.
 */
#include <errno.h>
#include <malloc.h>
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

static int load_closure(struct nx_store *st, const char *closure, const char *given,
			size_t given_len)
{
	uint8_t pin[NX_SHA256_LEN], got[NX_SHA256_LEN];
	uint8_t *body = NULL; /* owned: from the cache or the registry */
	const uint8_t *data;
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
	if (!cached && given) {
		/* the start-up check's GET: no second round trip for the same
		 * bytes; hashed here like any fetched body */
		len = given_len;
		nx_sha256(given, len, got);
		nx_stat_add(&st->bytes_fetched, len);
	} else if (!cached) {
		rc = fetch_manifest(st, closure, NX_INDEX_MAX, (char **)&body, &len, got);
		if (rc == -ENOENT)
			nx_log(NX_LOG_ERR, "closure %s: not found in the repository", closure);
		if (rc < 0)
			return rc;
	}
	data = body ? body : (const uint8_t *)given;
	if (!cached && st->pinned && memcmp(got, pin, NX_SHA256_LEN) != 0) {
		nx_log(NX_LOG_ERR, "closure %s: digest mismatch", closure);
		free(body);
		return -EIO;
	}
	memcpy(st->closure_digest, cached ? pin : got, NX_SHA256_LEN);
	rc = nx_index_parse((const char *)data, len, &st->ix);
	if (rc < 0) {
		nx_log(NX_LOG_ERR, "closure %s: not a nixoci closure index", closure);
		free(body);
		return -EINVAL;
	}
	if (st->pinned && !cached)
		nx_blob_save(st, pin, data, len);
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

static void spath_free(struct nx_spath *p)
{
	nx_manifest_release(&p->man);
	nx_toc_free(p->toc);
	free(p);
}

static uint64_t usable(const void *p)
{
	return p ? malloc_usable_size((void *)p) : 0;
}

static uint64_t strv_bytes(char **v, size_t n)
{
	uint64_t b = usable(v);

	for (size_t i = 0; v && i < n; i++)
		b += usable(v[i]);
	return b;
}

/* What the loaded part of @p takes: every allocation, as malloc sees it. */
static uint64_t loaded_bytes(const struct nx_spath *p)
{
	const struct nx_manifest *m = &p->man;
	const struct nx_toc *t = p->toc;
	uint64_t b = 0;

	if (t)
		b += usable(t) + usable(t->entries) + usable(t->frames) + usable(t->strtab);
	b += usable(m->info.store_path) + usable(m->info.deriver) + usable(m->info.ca) +
	     usable(m->zstd_params);
	b += strv_bytes(m->info.refs, m->info.nrefs) + strv_bytes(m->info.sigs, m->info.nsigs) +
	     strv_bytes(m->toc_sigs, m->ntoc_sigs);
	return b;
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
	free(st->elf_hints); /* the readahead jobs used them */
	st->elf_hints = NULL;
	nx_files_close(st); /* its worker uses paths too */
	nx_warm_close(st);  /* so do its threads */
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
	pthread_cond_destroy(&st->evict_cond);
	pthread_mutex_destroy(&st->lock);
	free(st->dir);
	free(st);
}

/* The closure index and metadata blob, kept for the mount's life. */
static uint64_t closure_bytes(const struct nx_store *st)
{
	uint64_t b = usable(st->cm_raw) + usable(st->cm) + usable(st->ix_sorted) +
		     usable(st->ix.entries);

	for (size_t i = 0; i < st->ix.nentries; i++)
		b += usable(st->ix.entries[i].store_path);
	return b;
}

/* The inode ids of every path of the closure, recorded in one commit: a
 * walk of the closure would otherwise wait for one commit (and its
 * fdatasync) per path at its first lookup. A failure is no error: each
 * lookup then records its own, as without a closure. */
static uint64_t base_id(const char *base, uint64_t mask);

static void assign_closure_ids(struct nx_store *st)
{
	const char **bases = calloc(st->nix ? st->nix : 1, sizeof(*bases));
	uint64_t *wants = calloc(st->nix ? st->nix : 1, sizeof(*wants));
	size_t n = 0;

	for (size_t i = 0; bases && wants && i < st->nix; i++) {
		const char *b;

		if (nx_storepath_check(st->ix_sorted[i]->store_path, &b) == 0) {
			bases[n] = b;
			wants[n++] = base_id(b, st->id_mask);
		}
	}
	if (bases && wants && n)
		nx_db_id_assign_all(st, bases, wants, n, st->id_mask);
	free(bases);
	free(wants);
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
	st->meta_budget = o->meta_budget ? o->meta_budget : NX_META_BUDGET_DEFAULT;
	st->id_mask = NX_ID_MASK;
	{
		/* test knob: a small id space, so that ids collide */
		const char *e = getenv("NIXOCI_TEST_ID_BITS");
		long bits = e ? strtol(e, NULL, 10) : 0;

		if (bits >= 2 && bits < 40)
			st->id_mask = (UINT64_C(1) << bits) - 1;
	}
	if (o->lookup_rate >= 0)
		st->lk_interval_ns = NX_NS_PER_S / (uint64_t)(o->lookup_rate ? o->lookup_rate
								 : NX_LOOKUP_RATE_DEFAULT);
	if (!st->dir) {
		free(st);
		return -ENOMEM;
	}
	pthread_mutex_init(&st->lock, NULL);
	pthread_cond_init(&st->cond, NULL);
	pthread_cond_init(&st->evict_cond, NULL);
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
	/* A daemon killed while a copy or chunk it had counted was on its
	 * way may leave the cache over its limit once that file landed: the
	 * next start makes room before it serves, not at its first save. */
	if (!st->readonly && nx_stat_get(&st->total_bytes) > st->limit)
		nx_db_evict(st);
	rc = nx_warm_open(st);
	if (rc < 0)
		goto fail;
	if (o->closure && o->closure[0]) {
		rc = load_closure(st, o->closure, o->closure_body, o->closure_len);
		if (rc < 0)
			goto fail;
		if (o->profile) {
			/* found and fetched while the metadata is */
			rc = nx_pfetch_start(st, o->profile);
			if (rc < 0)
				goto fail;
		}
		rc = nx_cmeta_load(st, o->closure);
		if (rc < 0)
			goto fail;
		/* kept for the mount's life: part of the metadata budget */
		st->meta_bytes += closure_bytes(st);
		assign_closure_ids(st);
	}
	if (o->profile_record) {
		rc = nx_prec_open(st, o->profile_record, o->profile_seconds);
		if (rc < 0)
			goto fail;
	}
	if (o->profile && !st->pf) {
		rc = nx_pfetch_start(st, o->profile); /* refuses: not a closure mount */
		if (rc < 0)
			goto fail;
	}
	nx_pfetch_ready(st);
	*out = st;
	return 0;
fail:
	nx_store_close(st);
	return rc;
}

/* ------------------------------------------------------------ loading */

/*
 * The TOC of a path, decoded as it streams (common/toc.c, nx_toc_reader):
 * from the closure's metadata blob, from the cache's blob file, or from the
 * source. Neither the compressed layer nor the inflated TOC is ever held
 * whole. Bytes from the source go through the reader (which checks them
 * against the descriptor's digest) and into a tmp file at once; the caller
 * commits that file (nx_blob_tmp_commit) only once the path is accepted,
 * and aborts it otherwise, so a blob that verifies but does not decode, or
 * a path that is refused, leaves nothing in the cache.
 */
struct toc_sink {
	struct nx_store *st;
	struct nx_toc_reader *r;
	struct nx_blob_tmp *tmp; /* NULL: not written (from the cache) */
	uint64_t got;
	size_t head;             /* bytes fed before room was made */
	int roomed;
};

static void meta_make_room(struct nx_store *st, uint64_t need);

/* Into the reader; once the layer's first bytes have told its inflated
 * size, and before any table fills, other paths are unloaded so the
 * metadata budget holds while this one decodes. */
static int toc_feed(struct toc_sink *k, const uint8_t *buf, size_t len)
{
	int rc = 0;

	if (!k->roomed) {
		size_t n = NX_TOC_READER_HEAD - k->head;

		n = n < len ? n : len;
		rc = nx_toc_reader_feed(k->r, buf, n);
		k->head += n;
		buf += n;
		len -= n;
		if (rc == 0 && k->head == NX_TOC_READER_HEAD) {
			k->roomed = 1;
			meta_make_room(k->st, nx_toc_reader_declared(k->r));
		}
	}
	if (rc == 0 && len)
		rc = nx_toc_reader_feed(k->r, buf, len);
	return rc;
}

static int toc_file_cb(void *ctx, const void *buf, size_t len)
{
	return toc_feed(ctx, buf, len);
}

static int toc_source_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct toc_sink *k = ctx;
	int rc;

	if (off != k->got)
		return -EIO;
	k->got += len;
	rc = toc_feed(k, buf, len);
	/* a cache that cannot take the file costs the cache, not the read */
	if (rc == 0 && k->tmp->fd >= 0)
		nx_blob_tmp_write(k->st, k->tmp, buf, len);
	return rc;
}

/* 0 and p->toc; -EIO (logged) for a layer refused for its bytes (*refuse
 * set: remember it) or one the source did not deliver as named; -ENOMEM.
 * *tmp holds the fetched layer for the caller to commit or abort. */
static int load_toc(struct nx_store *st, struct nx_spath *p, const char *sp,
		    struct nx_blob_tmp *tmp, int *refuse)
{
	const struct nx_desc *d = &p->man.toc;
	struct toc_sink k = { .st = st, .tmp = tmp };
	struct nx_window w = { .cb = toc_source_cb, .ctx = &k };
	const uint8_t *at;
	char what[sizeof(NX_STORE_DIR) + NX_BASE_MAX + 16];
	const uint8_t *cm;
	size_t cmlen;
	int rc, probe;

	*refuse = 0;
	tmp->fd = -1;
	tmp->reserve = 0;
	snprintf(what, sizeof(what), "toc of %s", sp);
	if (d->size == 0 || d->size > NX_TOC_MAX_BYTES) {
		nx_log(NX_LOG_ERR, "toc of %s: size %llu is out of range", sp,
		       (unsigned long long)d->size);
		return -EIO;
	}
	/* from the closure's metadata blob, checked there against @d (a TOC
	 * that is not its manifest's is loaded below as if the blob had none) */
	if (nx_cmeta_toc(st, p->man_digest, d, sp, &cm, &cmlen) == 0) {
		rc = nx_toc_reader_new(&k.r, what, d->size, NULL, NX_TOC_MAX_BYTES);
		if (rc == 0)
			rc = toc_feed(&k, cm, cmlen);
		goto finish;
	}
	/* the cache file, checked as it is read */
	rc = nx_toc_reader_new(&k.r, what, d->size, NULL, NX_TOC_MAX_BYTES);
	if (rc < 0)
		return rc;
	rc = nx_blob_stream(st, d->digest, d->size, toc_file_cb, &k);
	if (rc != -ENOENT)
		goto finish;
	nx_toc_reader_free(k.r); /* whatever it built was not the blob */
	k.r = NULL;
	k.head = 0;
	k.roomed = 0;

	/* the source, checked against the digest as it arrives */
	rc = nx_toc_reader_new(&k.r, what, d->size, d->digest, NX_TOC_MAX_BYTES);
	if (rc < 0)
		return rc;
	nx_blob_tmp_open(st, tmp, d->size); /* none (read-only cache) is fine */
	probe = nx_source_begin(st);
	if (probe < 0) {
		nx_stat_add(&st->errors, 1);
		rc = -EIO;
		goto out;
	}
	/* format 2: the TOC is a range of the pack, verified by its own digest */
	nx_manifest_toc_at(&p->man, &at, &w.base);
	w.len = d->size;
	rc = st->src.get_blob(st->src.ctx, at, w.base, d->size, nx_window_cb, &w);
	nx_source_end(st, probe, rc);
	nx_stat_add(&st->bytes_fetched, k.got);
	if (rc == -ENOMEM)
		goto out;
	if (rc < 0 || k.got != d->size) {
		if (rc == -EIO || rc == 0)
			nx_log(NX_LOG_ERR, "toc of %s: the source sent an unexpected body", sp);
		nx_stat_add(&st->errors, 1);
		rc = -EIO;
		goto out;
	}
finish:
	if (rc == 0)
		rc = nx_toc_reader_finish(k.r, &p->toc);
	if (rc == 0 && p->man.nimports) {
		uint32_t top = 0;

		for (size_t i = 0; i < 2 * p->man.nimports; i++)
			top = p->man.imports[i] > top ? p->man.imports[i] : top;
		if (top >= p->toc->nentries) {
			/* a hint only: the path serves, its imports predicted at run time */
			nx_log(NX_LOG_WARNING, "%s: ignoring its dev.nixoci.imports (entry %u of "
					       "%u); its Python imports are predicted at run time",
			       sp, top, p->toc->nentries);
			free(p->man.imports);
			p->man.imports = NULL;
			p->man.nimports = 0;
		}
	}
	if (rc == 0 && p->man.elf) {
		const struct nx_elf_needs *n = p->man.elf;
		uint32_t bad = 0;

		/* sorted: the last entry is the largest */
		if (n->files[n->nfiles - 1].entry >= p->toc->nentries)
			bad = n->files[n->nfiles - 1].entry;
		for (size_t i = 0; i < n->nfiles && !bad; i++)
			if (p->toc->entries[n->files[i].entry].type != NX_NODE_REGULAR)
				bad = n->files[i].entry;
		if (bad) {
			/* a hint only: the libraries are predicted from the bytes */
			nx_log(NX_LOG_WARNING, "%s: ignoring its dev.nixoci.elf (entry %u is not a "
					       "file of its %u); its libraries are predicted from their bytes",
			       sp, bad, p->toc->nentries);
			nx_elf_needs_free(p->man.elf);
			p->man.elf = NULL;
		}
	}
	if (rc == -EBADMSG) {
		nx_stat_add(&st->verify_failures, 1);
		nx_log(NX_LOG_ERR, "toc of %s: digest mismatch", sp);
		rc = -EIO;
	} else if (rc == -EINVAL || rc == -E2BIG) {
		*refuse = 1; /* the blob the digest names: logged by the reader */
		rc = -EIO;
	}
out:
	nx_toc_reader_free(k.r);
	if (rc < 0)
		nx_blob_tmp_abort(st, tmp);
	return rc;
}

static struct nx_refused *refused_slot(struct nx_store *st, const uint8_t d[NX_SHA256_LEN])
{
	/* digests are uniform: two bytes pick the slot */
	return &st->refused[((unsigned)d[0] | (unsigned)d[1] << 8) % NX_REFUSED_SLOTS];
}

/* The remembered refusal of blob @d (-EIO or -EACCES), or 0. The path
 * that was refused for it heard why; another path naming the same blob
 * (another tag, another closure) gets one line of its own. */
static int refused_get(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], const char *what,
		       const char *sp)
{
	struct nx_refused *r;
	uint32_t who = name_hash(sp, strlen(sp));
	int rc = 0, other = 0;

	pthread_mutex_lock(&st->lock);
	r = refused_slot(st, d);
	if (r->rc && memcmp(r->digest, d, NX_SHA256_LEN) == 0) {
		rc = r->rc;
		other = r->who != who;
		r->who = who; /* said once per path in a row */
	}
	pthread_mutex_unlock(&st->lock);
	if (rc && other) {
		char ds[NX_DIGEST_STRLEN];

		nx_digest_format(d, ds);
		nx_log(NX_LOG_ERR, "%s of %s: %s was refused before for another path (%s), "
		       "not fetched again", what, sp, ds, strerror(-rc));
	} else if (rc) {
		nx_log(NX_LOG_DEBUG, "%s of %s: refused before (%s), not fetched again", what, sp,
		       strerror(-rc));
	}
	return rc;
}

static void refused_add(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], int rc,
			const char *sp)
{
	struct nx_refused *r;

	pthread_mutex_lock(&st->lock);
	r = refused_slot(st, d);
	memcpy(r->digest, d, NX_SHA256_LEN);
	r->rc = rc;
	r->who = name_hash(sp, strlen(sp));
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

/* The manifest @known (a reload) had, by its digest: never resolved again,
 * so a path keeps its resolution (and its inodes their files) while the
 * store is open. */
static int get_known_manifest(struct nx_store *st, const struct nx_spath *known, char **body,
			      size_t *blen, uint8_t digest[NX_SHA256_LEN], int *fetched)
{
	char ref[NX_DIGEST_STRLEN];
	uint8_t got[NX_SHA256_LEN];
	uint8_t *b;
	int rc;

	memcpy(digest, known->man_digest, NX_SHA256_LEN);
	if (nx_cmeta_get(st, digest, NX_MANIFEST_MAX, &b, blen) == 0 ||
	    nx_blob_load(st, digest, NX_MANIFEST_MAX, &b, blen) == 0) {
		*body = (char *)b;
		return 0;
	}
	nx_digest_format(digest, ref);
	rc = fetch_manifest(st, ref, NX_MANIFEST_MAX, body, blen, got);
	if (rc < 0)
		return rc == -ENOENT ? -EIO : rc;
	if (memcmp(got, digest, NX_SHA256_LEN) != 0) {
		nx_stat_add(&st->verify_failures, 1);
		nx_log(NX_LOG_ERR, "manifest of %s/%s: digest mismatch", NX_STORE_DIR, known->base);
		free(*body);
		*body = NULL;
		return -EIO;
	}
	*fetched = 1;
	return 0;
}

/* The manifest of @base: bytes and digest, from the cache or the source;
 * @known: the path's header when it was loaded before. */
static int get_path_manifest(struct nx_store *st, const char *base, size_t len,
			     const struct nx_spath *known, char **body, size_t *blen,
			     uint8_t digest[NX_SHA256_LEN], int *fetched)
{
	const struct nx_index_entry *e = NULL;
	char ref[NX_DIGEST_STRLEN];
	uint8_t stale_digest[NX_SHA256_LEN];
	int have_tag = 0, stale = 0;
	uint8_t *b;
	int rc;

	*fetched = 0;
	if (known)
		return get_known_manifest(st, known, body, blen, digest, fetched);
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
	/* with the next batch: a lookup never waits for a commit */
	nx_db_put_later(st, st->dbi_tags, base, NX_HASH_LEN, rec, sizeof(rec));
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

/* Loads @base; @known: its header when it was loaded before (a reload: the
 * same manifest, by digest, not resolved again). */
static int load_path(struct nx_store *st, const char *base, size_t len,
		     const struct nx_spath *known, struct nx_spath **out)
{
	struct nx_spath *p;
	char *body = NULL, sp[sizeof(NX_STORE_DIR) + NX_BASE_MAX + 1];
	struct nx_blob_tmp toctmp = { .fd = -1 };
	size_t blen;
	int rc, need_nar, man_fetched = 0, refuse;

	snprintf(sp, sizeof(sp), "%s/%.*s", NX_STORE_DIR, (int)len, base);
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	memcpy(p->base, base, len);
	p->base_len = len;

	rc = get_path_manifest(st, base, len, known, &body, &blen, p->man_digest, &man_fetched);
	if (rc < 0)
		goto fail;
	p->man_size = blen;
	rc = refused_get(st, p->man_digest, "manifest", sp);
	if (rc < 0)
		goto fail;
	rc = nx_manifest_parse(body, blen, &p->man);
	if (rc < 0) {
		nx_log(NX_LOG_ERR, "manifest of %s: malformed", sp);
		rc = -EIO;
		refused_add(st, p->man_digest, rc, sp);
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
			refused_add(st, p->man_digest, rc, sp);
		goto fail;
	}
	rc = refused_get(st, p->man.toc.digest, "toc", sp);
	if (rc < 0)
		goto fail;
	rc = load_toc(st, p, sp, &toctmp, &refuse);
	if (refuse)
		refused_add(st, p->man.toc.digest, rc, sp);
	if (rc < 0)
		goto fail;
	if (p->toc->nar_size != p->man.info.nar_size || p->toc->blob_size != p->man.nar.size) {
		nx_log(NX_LOG_ERR, "toc of %s: sizes do not match the manifest", sp);
		rc = -EIO;
		refused_add(st, p->man_digest, rc, sp);
		goto fail;
	}
	rc = nx_frames_policy(p, sp); /* files and records proportional to bytes */
	if (rc < 0) {
		refused_add(st, p->man_digest, rc, sp);
		goto fail;
	}
	if (need_nar) {
		rc = check_nar(st, p);
		if (rc == -EACCES) /* the NAR contradicts what was signed */
			refused_add(st, p->man_digest, rc, sp);
		if (rc < 0)
			goto fail;
	}
	/* accepted: only now does any of it go into the cache */
	if (man_fetched && known)
		nx_blob_save(st, p->man_digest, body, blen); /* no new tag resolution */
	else if (man_fetched)
		save_path_manifest(st, base, body, blen, p->man_digest);
	nx_blob_tmp_commit(st, &toctmp, p->man.toc.digest);
	free(body);
	*out = p;
	return 0;
fail:
	nx_blob_tmp_abort(st, &toctmp);
	free(body);
	spath_free(p);
	return rc;
}

static uint64_t base_id(const char *base, uint64_t mask)
{
	uint8_t h[NX_SHA256_LEN];
	uint64_t id = 0;

	if (nx_nix32_decode(base, NX_HASH_LEN, h, 20) < 0)
		nx_sha256(base, NX_HASH_LEN, h); /* not reached: the name was checked */
	for (int i = 0; i < 5; i++)
		id |= (uint64_t)h[i] << (8 * i);
	id &= mask;
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

/* The id of a path seen for the first time: the id table's answer (db.c),
 * or without one the hash's own bits (publish then probes in memory). */
static uint64_t assign_id(struct nx_store *st, const char *base, size_t len)
{
	uint64_t want = base_id(base, st->id_mask), id = 0;
	int rc = nx_db_id_assign(st, base, len, want, st->id_mask, &id);

	if (rc == 0 && id && id <= NX_ID_MASK)
		return id;
	if (rc < 0 && rc != -ENOENT && !__atomic_exchange_n(&st->id_warned, 1, __ATOMIC_RELAXED))
		nx_log(NX_LOG_WARNING, "cache %s: cannot record the inode id of %.*s: %s; ids of "
		       "colliding paths may change at the next start", st->dir, (int)len, base,
		       strerror(-rc));
	return want;
}

/* ----------------------------------------------- references and budget */

static void lru_remove(struct nx_store *st, struct nx_spath *p)
{
	if (!p->in_lru)
		return;
	if (p->lru_prev)
		p->lru_prev->lru_next = p->lru_next;
	else
		st->lru_head = p->lru_next;
	if (p->lru_next)
		p->lru_next->lru_prev = p->lru_prev;
	else
		st->lru_tail = p->lru_prev;
	p->lru_prev = p->lru_next = NULL;
	p->in_lru = 0;
}

static void lru_append(struct nx_store *st, struct nx_spath *p)
{
	p->lru_next = NULL;
	p->lru_prev = st->lru_tail;
	if (st->lru_tail)
		st->lru_tail->lru_next = p;
	else
		st->lru_head = p;
	st->lru_tail = p;
	p->in_lru = 1;
}

/* With st->lock held, @p loaded: one more reference. */
static void ref_locked(struct nx_store *st, struct nx_spath *p)
{
	if (__atomic_fetch_add(&p->refs, 1, __ATOMIC_ACQ_REL) == 0)
		lru_remove(st, p);
}

/* Freed memory in the middle of malloc's heaps (several arenas: loads run
 * on many threads) is not given back by free(); after a large unload, it
 * is, so the promise is about the process's memory, not only our count. */
static void heap_trim(uint64_t freed)
{
#ifdef __GLIBC__
	if (freed >= (UINT64_C(1) << 20))
		malloc_trim(0);
#else
	(void)freed;
#endif
}

/*
 * With st->lock held: unloads least recently used unreferenced paths until
 * the metadata bytes plus @need fit in the budget (or none is left). The
 * lock is dropped while each one is freed; a path is off every list by
 * then and has no references, so no one can reach its loaded part. Returns
 * the bytes freed (for heap_trim, after the caller unlocks).
 */
static uint64_t unload_locked(struct nx_store *st, uint64_t need)
{
	uint64_t freed = 0;

	while (st->lru_head && st->meta_bytes + need > st->meta_budget) {
		struct nx_spath *p = st->lru_head;
		struct nx_manifest man = p->man;
		struct nx_toc *toc = p->toc;

		lru_remove(st, p);
		memset(&p->man, 0, sizeof(p->man));
		p->toc = NULL;
		p->loaded = 0;
		st->meta_bytes -= p->bytes;
		freed += p->bytes;
		st->paths_in_memory--;
		nx_stat_add(&st->paths_unloaded, 1);
		nx_log(NX_LOG_DEBUG, "%.*s: unloaded (%llu bytes of metadata)", (int)p->base_len,
		       p->base, (unsigned long long)p->bytes);
		pthread_mutex_unlock(&st->lock);
		nx_manifest_release(&man);
		nx_toc_free(toc);
		pthread_mutex_lock(&st->lock);
	}
	return freed;
}

static void meta_make_room(struct nx_store *st, uint64_t need)
{
	uint64_t freed;

	pthread_mutex_lock(&st->lock);
	freed = unload_locked(st, need);
	pthread_mutex_unlock(&st->lock);
	heap_trim(freed);
}

void nx_spath_get(struct nx_spath *p)
{
	/* the caller holds one, so the count is not 0 and the lock not needed */
	__atomic_fetch_add(&p->refs, 1, __ATOMIC_ACQ_REL);
}

void nx_spath_put(struct nx_spath *p)
{
	struct nx_store *st;
	uint64_t freed;

	if (!p)
		return;
	st = p->st;
	pthread_mutex_lock(&st->lock);
	if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) == 0)
		lru_append(st, p);
	freed = unload_locked(st, 0);
	pthread_mutex_unlock(&st->lock);
	heap_trim(freed);
}

/* With st->lock held: makes @p (new, with its id) findable, loaded, with
 * one reference. */
static void publish(struct nx_store *st, struct nx_spath *p, uint64_t id)
{
	uint32_t h = name_hash(p->base, p->base_len) % NX_PATH_BUCKETS;

	for (uint64_t tries = 0; find_id(st, id); tries++) {
		/* only without a usable id table (or when writing it failed);
		 * a test's small id space may be full: go past it */
		uint64_t mask = tries < st->id_mask ? st->id_mask : NX_ID_MASK;

		nx_log(NX_LOG_DEBUG, "%.*s: id %llx taken, probing", (int)p->base_len, p->base,
		       (unsigned long long)id);
		id = (id + 1) & mask;
		if (!id)
			id = 1;
	}
	p->st = st;
	p->id = id;
	p->next_name = st->by_name[h];
	st->by_name[h] = p;
	p->next_id = st->by_id[id % NX_PATH_BUCKETS];
	st->by_id[id % NX_PATH_BUCKETS] = p;
	p->next_all = st->all;
	st->all = p;
	memcpy(p->toc_digest, p->man.toc.digest, NX_SHA256_LEN);
	p->root_type = p->toc->entries[0].type;
	p->loaded = 1;
	p->refs = 1;
	p->bytes = loaded_bytes(p);
	st->meta_bytes += p->bytes + usable(p);
	st->paths_in_memory++;
	nx_stat_add(&st->paths_loaded, 1);
}

/* With st->lock held: the loaded part of @np (a reload) into header @p,
 * which gets one reference; @np's shell is the caller's to free. */
static void refill(struct nx_store *st, struct nx_spath *p, struct nx_spath *np)
{
	p->man = np->man;
	p->toc = np->toc;
	memset(&np->man, 0, sizeof(np->man));
	np->toc = NULL;
	p->loaded = 1;
	p->refs = 1;
	p->bytes = loaded_bytes(p);
	st->meta_bytes += p->bytes;
	st->paths_in_memory++;
	nx_stat_add(&st->paths_reloaded, 1);
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
	struct nx_spath *p = NULL, *np = NULL;
	uint64_t id = 0, freed = 0;
	int rc, retry;

	if (len > NX_BASE_MAX || nx_storepath_check_base(base, len) < 0)
		return -ENOENT;

again:
	retry = 0;
	pthread_mutex_lock(&st->lock);
	p = find_name(st, base, len);
	if (p && p->loaded) {
		ref_locked(st, p);
		pthread_mutex_unlock(&st->lock);
		*out = p;
		return 0;
	}
	rc = p ? 0 : neg_hit(st, base, len);
	if (rc < 0) {
		pthread_mutex_unlock(&st->lock);
		return rc;
	}
	for (l = st->loading; l; l = l->next)
		if (strlen(l->base) == len && memcmp(l->base, base, len) == 0)
			break;
	if (l) {
		/* Someone loads it: wait for that result, then take our
		 * reference as any lookup does (it may be unloaded again by
		 * then: that lookup loads it once more). A background load
		 * that declined (refs.c) is no answer for a real lookup. */
		l->refs++;
		while (!l->done)
			pthread_cond_wait(&st->cond, &st->lock);
		rc = l->rc;
		retry = rc == 0 || (rc == -EAGAIN && l->bg && !nx_rp_in_worker());
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

	/* a header's fields other than the loaded part never change */
	if (p)
		meta_make_room(st, p->bytes);
	rc = load_path(st, base, len, p, &np);
	if (rc == 0 && !p)
		id = assign_id(st, base, len);

	pthread_mutex_lock(&st->lock);
	if (rc == 0 && p) {
		refill(st, p, np);
	} else if (rc == 0) {
		publish(st, np, id);
		p = np;
		np = NULL;
	} else if (rc == -ENOENT || rc == -EACCES) {
		neg_add(st, base, len, rc); /* failed trust costs a full fetch: not again soon */
	}
	l->done = 1;
	l->rc = rc;
	l->p = p;
	pthread_cond_broadcast(&st->cond);
	if (rc == 0)
		freed = unload_locked(st, 0); /* the new one is referenced: others go */
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
	if (np)
		spath_free(np); /* a reload's shell */
	heap_trim(freed);
	if (retry)
		goto again;
	if (rc == 0)
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
	char base[NX_BASE_MAX + 1];
	struct nx_spath *p;
	int rc;

	if (id == 0 || id > NX_ID_MASK)
		return -ENOENT;
	pthread_mutex_lock(&st->lock);
	p = find_id(st, id);
	if (p && p->loaded) {
		ref_locked(st, p);
		pthread_mutex_unlock(&st->lock);
		*out = p;
		return 0;
	}
	if (p)
		memcpy(base, p->base, p->base_len + 1);
	pthread_mutex_unlock(&st->lock);
	/* unloaded, or never loaded by this store (a predecessor's inode):
	 * the id table names the path */
	if (!p && nx_db_id_base(st, id, base, sizeof(base)) < 0)
		return -ENOENT;
	rc = nx_store_lookup(st, base, strlen(base), &p);
	if (rc < 0)
		return rc;
	if (p->id != id) {
		/* the table says otherwise than this store settled (no table
		 * when it loaded, or a table written since): not this path */
		nx_spath_put(p);
		return -ENOENT;
	}
	*out = p;
	return 0;
}

int nx_store_peek(struct nx_store *st, const char *base, size_t len, uint64_t *id, int *type,
		  struct nx_spath **loaded)
{
	struct nx_spath *p;

	if (loaded)
		*loaded = NULL;
	pthread_mutex_lock(&st->lock);
	p = find_name(st, base, len);
	if (p) {
		*id = p->id;
		*type = p->root_type;
		if (loaded && p->loaded) {
			ref_locked(st, p);
			*loaded = p;
		}
	}
	pthread_mutex_unlock(&st->lock);
	return p ? 0 : -ENOENT;
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
	/* a program or library whose start was cached already: its
	 * libraries may not be (elf.c looks once per file and mount) */
	if (rd && off == 0) {
		nx_elf_seen_fd(st, p, entry, *fd, a - f->uoff, (size_t)n);
		nx_pyc_seen_fd(st, p, entry, *fd, a - f->uoff, (size_t)n);
	}
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
	uint32_t first, last, ext;
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
	ext = nx_ra_extend(st, p, entry, last);
	if (rd && !nx_chunk_known(st, toc->frames[first].sha256)) {
		nx_ra_on_miss(st, rd, p, entry, off, first, ext);
		if (off == 0)
			nx_pyc_miss(st, p, entry);
	}
	rc = nx_frames_walk_ext(st, p, first, last, ext, NX_BATCH_BYTES, &ops, &w);
	if (rc < 0 && rd)
		nx_reader_fail(st, rd, p, entry);
	if (rc < 0)
		return rc == -ENOMEM ? rc : -EIO;
	if (rd)
		nx_ra_after_data(st, rd, p, entry, off, buf, (size_t)n);
	if (rd && off == 0) {
		nx_elf_seen(st, p, entry, buf, (size_t)n);
		nx_pyc_seen(st, p, entry, buf, (size_t)n);
	}
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
	out->paths_unloaded = nx_stat_get(&st->paths_unloaded);
	out->paths_reloaded = nx_stat_get(&st->paths_reloaded);
	out->meta_budget = st->meta_budget;
	out->readahead_frames = nx_stat_get(&st->ra_frames);
	out->warm_files = nx_stat_get(&st->warm_files);
	out->warm_frames = nx_stat_get(&st->warm_frames);
	out->warm_bytes = nx_stat_get(&st->warm_bytes);
	out->complete_files = nx_stat_get(&st->complete_files);
	out->complete_bytes = nx_stat_get(&st->complete_bytes);
	out->runs_shared = nx_stat_get(&st->runs_shared);
	out->predict_elf_files = nx_stat_get(&st->elf_parsed);
	out->predict_libs = nx_stat_get(&st->elf_libs);
	out->predict_whole = nx_stat_get(&st->pred_whole);
	out->predict_import = nx_stat_get(&st->pred_import);
	out->predict_exec = nx_stat_get(&st->pred_exec);
	pthread_mutex_lock(&st->lock);
	out->offline = st->offline;
	out->paths_in_memory = st->paths_in_memory;
	out->meta_bytes = st->meta_bytes;
	pthread_mutex_unlock(&st->lock);
}
