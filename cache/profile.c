/*
 * cache/profile.c: startup profiles (docs/format.md §5.2), recorded and
 * applied.
 *
 * Recording (nx_store_opts.profile_record): every read through the store
 * notes the frames it covers, once each, in the order they were first
 * asked for, during the first profile_seconds; the list is written to the
 * file (tmp + rename) when the store closes. Cheap on the read path: one
 * clock read after the window, a mutex and a hash probe per frame inside.
 *
 * Applying (nx_store_opts.profile): a thread finds the profile among the
 * referrers of the closure index (the referrers API when the source has
 * one, else the distribution spec's tag `sha256-<hex>`), fetches its
 * manifest and blob (each checked against its digest, the manifest's
 * subject against the closure index), and hands the entries to
 * NX_PF_THREADS workers. They take groups of entries of one store path in
 * profile order, look the path up (through the closure: a name the closure
 * does not list is skipped), find each digest in that path's verified TOC
 * (a digest it does not list is skipped: that is how a profile of another
 * closure, or a stale one, does nothing), and fetch runs of adjacent
 * frames with the background walk: frames cached or in flight are skipped,
 * the rest claimed like a read's, each verified against the TOC before it
 * is cached. A read that arrives meanwhile needs no turn: it fetches what
 * is not claimed itself, and waits only for a frame already on its way.
 * Everything the profile did is one log line at the end; a profile that is
 * missing, stale or malformed is one log line and nothing else.
 * nx_profile_stop (at close) stops the workers at the next frame or
 * buffer and joins every thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache_i.h"

/* ------------------------------------------------------------ recording */

struct nx_prec {
	pthread_mutex_t lock;
	char *file;
	uint64_t until_ns;
	uint8_t (*set)[NX_SHA256_LEN]; /* open addressing, 2 * MAX slots */
	uint8_t *used;
	size_t setcap;
	struct nx_profile_ent *ents;
	size_t n, cap;
	int full;
};

static size_t slot_of(const uint8_t d[NX_SHA256_LEN], size_t cap)
{
	uint64_t h;

	memcpy(&h, d, sizeof(h)); /* a SHA-256: its bytes are uniform */
	return (size_t)(h % cap);
}

int nx_prec_open(struct nx_store *st, const char *file, int seconds)
{
	struct nx_prec *r = calloc(1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	r->file = strdup(file);
	r->setcap = 2 * (size_t)NX_PROFILE_MAX_ENTRIES;
	r->set = calloc(r->setcap, sizeof(*r->set));
	r->used = calloc(r->setcap, 1);
	if (!r->file || !r->set || !r->used) {
		free(r->file);
		free(r->set);
		free(r->used);
		free(r);
		return -ENOMEM;
	}
	pthread_mutex_init(&r->lock, NULL);
	r->until_ns = nx_now_ns() + (uint64_t)(seconds > 0 ? seconds : NX_PROFILE_SECONDS) *
					    NX_NS_PER_S;
	st->prec = r;
	return 0;
}

void nx_prec_note(struct nx_store *st, const struct nx_spath *p, uint32_t first, uint32_t last)
{
	struct nx_prec *r = st->prec;

	if (!r || nx_now_ns() > r->until_ns)
		return;
	pthread_mutex_lock(&r->lock);
	for (uint32_t i = first; i <= last && i < p->toc->nframes && !r->full; i++) {
		const uint8_t *d = p->toc->frames[i].sha256;
		size_t s = slot_of(d, r->setcap);

		while (r->used[s] && memcmp(r->set[s], d, NX_SHA256_LEN) != 0)
			s = (s + 1) % r->setcap;
		if (r->used[s])
			continue; /* noted already */
		if (r->n == NX_PROFILE_MAX_ENTRIES) {
			r->full = 1; /* the first frames are the ones that matter */
			break;
		}
		if (r->n == r->cap) {
			size_t nc = r->cap ? 2 * r->cap : 256;
			struct nx_profile_ent *ne = realloc(r->ents, nc * sizeof(*ne));

			if (!ne)
				break;
			r->ents = ne;
			r->cap = nc;
		}
		r->used[s] = 1;
		memcpy(r->set[s], d, NX_SHA256_LEN);
		memcpy(r->ents[r->n].digest, d, NX_SHA256_LEN);
		memcpy(r->ents[r->n].base, p->base, p->base_len + 1);
		r->n++;
	}
	pthread_mutex_unlock(&r->lock);
}

static int prec_write(struct nx_prec *r)
{
	char *tmp = NULL, line[NX_BASE_MAX + NX_DIGEST_STRLEN + 4];
	int fd, rc = 0, n;

	if (asprintf(&tmp, "%s.tmp", r->file) < 0)
		return -ENOMEM;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0) {
		rc = -errno;
		goto out;
	}
	rc = nx_write_all(fd, nx_profile_magic(), strlen(nx_profile_magic()));
	for (size_t i = 0; rc == 0 && i < r->n; i++) {
		n = nx_profile_line(r->ents[i].base, r->ents[i].digest, line, sizeof(line));
		rc = n < 0 ? n : nx_write_all(fd, line, (size_t)n);
	}
	if (rc == 0 && fsync(fd) < 0)
		rc = -errno;
	if (close(fd) < 0 && rc == 0)
		rc = -errno;
	if (rc == 0 && rename(tmp, r->file) < 0)
		rc = -errno;
	if (rc < 0)
		unlink(tmp);
out:
	free(tmp);
	return rc;
}

static void prec_close(struct nx_store *st)
{
	struct nx_prec *r = st->prec;
	int rc;

	if (!r)
		return;
	st->prec = NULL;
	rc = prec_write(r);
	if (rc < 0)
		nx_log(NX_LOG_ERR, "profile %s: cannot write it: %s", r->file, strerror(-rc));
	else
		nx_log(NX_LOG_INFO, "profile %s: %zu frames recorded%s", r->file, r->n,
		       r->full ? " (the most a profile holds)" : "");
	pthread_mutex_destroy(&r->lock);
	free(r->ents);
	free(r->set);
	free(r->used);
	free(r->file);
	free(r);
}

/* ---------------------------------------------------------- applying it */

struct nx_pf_run {
	struct nx_spath *p;
	uint32_t first, last;
	uint64_t bytes; /* compressed */
};

struct nx_pfetch {
	struct nx_store *st;
	char *name; /* NULL: auto */
	pthread_t main;
	int main_started;
	struct nx_profile *pr;
	pthread_t workers[NX_PF_THREADS];
	unsigned nworkers;
	size_t foreign;  /* entries not in this closure's TOCs (coordinator) */
	uint64_t t0;
	/* the plan, under st->lock: runs in profile order, the first not yet
	 * taken by a worker, and whether the coordinator has finished */
	pthread_cond_t cond;
	struct nx_pf_run *runv;
	size_t nruns, runcap, taken;
	size_t batches; /* taken by workers: one multi-range fetch each */
	int planned;
	int ready; /* the store is open: paths can be looked up (st->lock) */
};

static const char *pf_name(const struct nx_pfetch *pf)
{
	return pf->name ? pf->name : "auto";
}

static int pf_stopped(const struct nx_store *st)
{
	return __atomic_load_n(&st->pf_stop, __ATOMIC_RELAXED);
}

struct pcollect {
	uint8_t *buf;
	uint64_t size, got;
};

static int pcollect_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct pcollect *c = ctx;

	if (off > c->got)
		return -EIO;
	if (off + len <= c->got)
		return 0;
	buf = (const uint8_t *)buf + (c->got - off);
	len -= (size_t)(c->got - off);
	if (len > c->size - c->got)
		return -EIO;
	memcpy(c->buf + c->got, buf, len);
	c->got += len;
	return 0;
}

/* Fetches blob @d whole and checks it against its digest and size: 0 and
 * *out (caller frees, d->size bytes), -EBADMSG, or the source's error. */
static int pf_get_blob(struct nx_store *st, const struct nx_desc *d, uint8_t **out)
{
	struct pcollect c = { .size = d->size };
	uint8_t got[NX_SHA256_LEN];
	int rc;

	*out = NULL;
	c.buf = malloc(d->size ? d->size : 1);
	if (!c.buf)
		return -ENOMEM;
	rc = st->src.get_blob(st->src.ctx, d->digest, 0, d->size, pcollect_cb, &c);
	if (rc == 0) {
		nx_sha256(c.buf, c.got, got);
		if (c.got != d->size || memcmp(got, d->digest, NX_SHA256_LEN) != 0)
			rc = -EBADMSG;
	}
	if (rc < 0) {
		free(c.buf);
		return rc;
	}
	*out = c.buf;
	return 0;
}

/*
 * One request on a thread of its own, so that two requests that do not
 * depend on each other cost one round trip, not two: the referrers API
 * and the tag fallback (a registry has one or the other, and asking which
 * first would cost a round trip), or the profile's manifest and the layer
 * the referrers index announced for it. Whatever it returns is checked by
 * the caller as if it had been fetched in series.
 */
struct pf_async {
	struct nx_store *st;
	pthread_t t;
	int started;
	/* in: a manifest reference (the tag), or a blob descriptor */
	char ref[NX_DIGEST_STRLEN + 8];
	struct nx_desc blob;
	/* out */
	int rc;
	char *body;
	size_t len;
	uint8_t *bytes;
};

static void *pf_async_tag(void *arg)
{
	struct pf_async *a = arg;
	uint8_t got[NX_SHA256_LEN];

	a->rc = a->st->src.get_manifest(a->st->src.ctx, a->ref, NX_INDEX_MAX, &a->body, &a->len,
					got);
	return NULL;
}

static void *pf_async_blob(void *arg)
{
	struct pf_async *a = arg;

	a->rc = pf_get_blob(a->st, &a->blob, &a->bytes);
	return NULL;
}

/* Starts @fn on @a; when no thread can be had, runs it here (in series). */
static void pf_async_start(struct pf_async *a, void *(*fn)(void *))
{
	a->started = pthread_create(&a->t, NULL, fn, a) == 0;
	if (!a->started)
		fn(a);
}

static void pf_async_join(struct pf_async *a)
{
	if (a->started)
		pthread_join(a->t, NULL);
	a->started = 0;
}

/* Finds, fetches and checks the profile; 0 with pf->pr, or -ENOENT / -EIO
 * after its one log line. Two round trips when the registry announces the
 * layer (profiles pushed by nixoci do): referrers API and tag fallback at
 * once, then manifest and layer at once. */
static int pf_resolve(struct nx_pfetch *pf)
{
	struct nx_store *st = pf->st;
	char *body = NULL, ref[NX_DIGEST_STRLEN + 8], cd[NX_DIGEST_STRLEN];
	struct nx_desc m, blob, subject, hint = { .size = 0 };
	struct pf_async tag = { .st = st }, lay = { .st = st };
	uint8_t got[NX_SHA256_LEN], *bytes = NULL;
	size_t len = 0;
	int rc = -ENOENT;

	nx_digest_format(st->closure_digest, cd);
	snprintf(tag.ref, sizeof(tag.ref), "sha256-%s", cd + 7);
	if (st->src.get_referrers) {
		pf_async_start(&tag, pf_async_tag);
		rc = st->src.get_referrers(st->src.ctx, st->closure_digest, NX_INDEX_MAX, &body,
					   &len);
		if (rc == 0)
			rc = nx_referrers_pick(body, len, pf->name, &m, &hint);
		pf_async_join(&tag);
	} else {
		pf_async_tag(&tag);
	}
	if (rc < 0 && !pf_stopped(st)) {
		/* no referrers API (a 404) or nothing there: the tag scheme */
		rc = tag.rc;
		if (rc == 0)
			rc = nx_referrers_pick(tag.body, tag.len, pf->name, &m, &hint);
	}
	free(tag.body);
	free(body);
	body = NULL;
	if (rc < 0) {
		nx_log(NX_LOG_NOTICE, "profile %s: %s for closure %s; mounted without one",
		       pf_name(pf), rc == -ENOENT ? "none found" : "the referrers could not be read",
		       cd);
		return rc;
	}
	nx_digest_format(m.digest, ref);
	if (hint.size > 0 && m.size <= NX_MANIFEST_MAX) {
		lay.blob = hint;
		pf_async_start(&lay, pf_async_blob);
	}
	rc = m.size > NX_MANIFEST_MAX ? -EINVAL :
		st->src.get_manifest(st->src.ctx, ref, NX_MANIFEST_MAX, &body, &len, got);
	if (rc == 0)
		rc = nx_profile_manifest_parse(body, len, &blob, &subject);
	free(body);
	pf_async_join(&lay);
	if (rc == 0 && memcmp(subject.digest, st->closure_digest, NX_SHA256_LEN) != 0) {
		nx_log(NX_LOG_NOTICE, "profile %s (%s): made for another closure; ignored",
		       pf_name(pf), ref);
		free(lay.bytes);
		return -ENOENT;
	}
	if (rc == 0 && blob.size == 0)
		rc = -EINVAL;
	if (rc == 0 && lay.bytes && blob.size == lay.blob.size &&
	    memcmp(blob.digest, lay.blob.digest, NX_SHA256_LEN) == 0) {
		bytes = lay.bytes; /* what the manifest names: verified already */
		lay.bytes = NULL;
	} else if (rc == 0) {
		/* announced none, another one, or it failed: the manifest's own */
		rc = pf_get_blob(st, &blob, &bytes);
	}
	free(lay.bytes);
	if (rc == 0)
		rc = nx_profile_parse((const char *)bytes, blob.size, &pf->pr);
	free(bytes);
	if (rc < 0) {
		nx_log(NX_LOG_NOTICE, "profile %s (%s): %s; ignored", pf_name(pf), ref,
		       rc == -EINVAL	? "not a valid profile" :
		       rc == -EBADMSG ? "its blob does not match its digest" :
					"could not be fetched");
		return rc;
	}
	return 0;
}

/* Frame indexes of @p sorted by digest, for the lookups of one group. */
struct fmap {
	const struct nx_spath *p;
	uint32_t *idx;
	uint32_t n;
};

static int cmp_frame(const void *a, const void *b, void *arg)
{
	const struct nx_toc *toc = arg;

	return memcmp(toc->frames[*(const uint32_t *)a].sha256,
		      toc->frames[*(const uint32_t *)b].sha256, NX_SHA256_LEN);
}

static int fmap_build(struct fmap *m, const struct nx_spath *p)
{
	const struct nx_toc *toc = p->toc;

	if (m->p == p)
		return 0;
	free(m->idx);
	m->p = NULL;
	m->n = toc->nframes;
	m->idx = malloc((m->n ? m->n : 1) * sizeof(*m->idx));
	if (!m->idx)
		return -ENOMEM;
	for (uint32_t i = 0; i < m->n; i++)
		m->idx[i] = i;
	qsort_r(m->idx, m->n, sizeof(*m->idx), cmp_frame, (void *)toc);
	m->p = p;
	return 0;
}

static int64_t fmap_find(const struct fmap *m, const uint8_t d[NX_SHA256_LEN])
{
	const struct nx_toc *toc = m->p->toc;
	uint32_t lo = 0, hi = m->n;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		int c = memcmp(toc->frames[m->idx[mid]].sha256, d, NX_SHA256_LEN);

		if (c == 0)
			return m->idx[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

/* The coordinator's work, in profile order: groups of entries of one
 * path become runs of adjacent frames (sorted inside a group: they are
 * needed at about the same moment, and adjacent ones cost one request). */
static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Queues the runs of one group at once: a worker takes runs of one path
 * together (one multi-range request), so it must not find half a group. */
static int pf_add_runs(struct nx_pfetch *pf, const struct nx_pf_run *rv, size_t n)
{
	struct nx_store *st = pf->st;
	int rc = 0;

	if (n == 0) /* a group with no frame of this closure: nothing to queue */
		return 0;
	pthread_mutex_lock(&st->lock);
	if (pf->nruns + n > pf->runcap) {
		size_t nc = pf->runcap ? 2 * pf->runcap : 64;
		struct nx_pf_run *nr;

		while (nc < pf->nruns + n)
			nc *= 2;
		nr = realloc(pf->runv, nc * sizeof(*nr));
		if (!nr) {
			rc = -ENOMEM;
			goto out;
		}
		pf->runv = nr;
		pf->runcap = nc;
	}
	memcpy(pf->runv + pf->nruns, rv, n * sizeof(*rv));
	pf->nruns += n;
	pthread_cond_broadcast(&pf->cond);
out:
	pthread_mutex_unlock(&st->lock);
	return rc;
}

static void pf_plan(struct nx_pfetch *pf)
{
	struct nx_store *st = pf->st;
	const struct nx_profile *pr = pf->pr;
	struct fmap m = { 0 };
	uint32_t *idx = malloc(NX_PF_GROUP * sizeof(*idx));
	struct nx_pf_run *rv = malloc(NX_PF_GROUP * sizeof(*rv));
	size_t a = 0, b, nr;

	while (idx && rv && a < pr->n && !pf_stopped(st)) {
		struct nx_spath *p = NULL;
		size_t k = 0;

		for (b = a; b < pr->n && b - a < NX_PF_GROUP &&
			    strcmp(pr->ents[b].base, pr->ents[a].base) == 0;
		     b++)
			;
		if (nx_store_lookup(st, pr->ents[a].base, strlen(pr->ents[a].base), &p) < 0 ||
		    fmap_build(&m, p) < 0) {
			nx_spath_put(p);
			pf->foreign += b - a; /* not in this closure (or cannot load) */
			a = b;
			continue;
		}
		for (size_t i = a; i < b; i++) {
			int64_t f = fmap_find(&m, pr->ents[i].digest);

			if (f < 0)
				pf->foreign++;
			else
				idx[k++] = (uint32_t)f;
		}
		qsort(idx, k, sizeof(*idx), cmp_u32);
		nr = 0;
		for (size_t i = 0; i < k;) {
			size_t j = i + 1;
			uint64_t bytes = p->toc->frames[idx[i]].clen;

			while (j < k && idx[j] <= idx[j - 1] + 1) {
				if (idx[j] != idx[j - 1])
					bytes += p->toc->frames[idx[j]].clen;
				j++;
			}
			rv[nr++] = (struct nx_pf_run){ p, idx[i], idx[j - 1], bytes };
			i = j;
		}
		if (pf_add_runs(pf, rv, nr) < 0) {
			nx_spath_put(p);
			goto out;
		}
		/* a queued run holds no reference (a worker takes one by id):
		 * a profile does not pin its paths over the metadata budget */
		nx_spath_put(p);
		a = b;
	}
out:
	free(idx);
	free(rv);
	free(m.idx);
	pthread_mutex_lock(&st->lock);
	pf->planned = 1;
	pthread_cond_broadcast(&pf->cond);
	pthread_mutex_unlock(&st->lock);
}

static void *pf_worker(void *arg)
{
	struct nx_pfetch *pf = arg;
	struct nx_store *st = pf->st;
	const struct nx_walk_ops ops = { .background = 1 };

	for (;;) {
		struct nx_frun fr[NX_MULTI_RUNS];
		struct nx_spath *rp, *p;
		uint64_t bytes = 0;
		size_t n = 0;

		pthread_mutex_lock(&st->lock);
		while (pf->taken == pf->nruns && !pf->planned && !pf_stopped(st))
			pthread_cond_wait(&pf->cond, &st->lock);
		if (pf->taken == pf->nruns || pf_stopped(st)) {
			pthread_mutex_unlock(&st->lock);
			break;
		}
		/* the next runs of one path, in profile order, as one batch:
		 * one multi-range request, bounded so that the workers share
		 * the profile instead of one of them fetching it all */
		rp = pf->runv[pf->taken].p;
		while (pf->taken < pf->nruns && n < NX_MULTI_RUNS && pf->runv[pf->taken].p == rp &&
		       (n == 0 || bytes + pf->runv[pf->taken].bytes <= NX_PF_BATCH_BYTES)) {
			const struct nx_pf_run *r = &pf->runv[pf->taken++];

			fr[n++] = (struct nx_frun){ r->first, r->last };
			bytes += r->bytes;
		}
		pf->batches++;
		pthread_mutex_unlock(&st->lock);
		/* the header stays, its TOC may have been unloaded meanwhile:
		 * by id it is loaded again (the same TOC, by digest) */
		if (nx_store_by_id(st, nx_spath_id(rp), &p) < 0)
			continue;
		/* cached and in-flight frames cost nothing; a failure was
		 * logged by the fetch (at debug level: a read that asks for
		 * the frame fetches it again and logs why it fails) */
		if (n == 1)
			nx_frames_walk(st, p, fr[0].first, fr[0].last, NX_BATCH_BYTES, &ops, NULL);
		else
			nx_frames_fetch_runs(st, p, fr, n);
		nx_spath_put(p);
	}
	return NULL;
}

static void *pf_main(void *arg)
{
	struct nx_pfetch *pf = arg;
	struct nx_store *st = pf->st;
	uint64_t f0 = nx_stat_get(&st->frames_fetched);
	unsigned n = 0;

	pthread_setname_np(pthread_self(), "nx-profile");
	if (pf_resolve(pf) < 0)
		return NULL;
	/* resolved while the store was still opening (the closure's metadata
	 * on its way): lookups wait until it is open */
	pthread_mutex_lock(&st->lock);
	while (!pf->ready && !pf_stopped(st))
		pthread_cond_wait(&pf->cond, &st->lock);
	pthread_mutex_unlock(&st->lock);
	for (; n < NX_PF_THREADS && !pf_stopped(st); n++)
		if (pthread_create(&pf->workers[n], NULL, pf_worker, pf) != 0)
			break;
	pf_plan(pf);
	for (unsigned i = 0; i < n; i++)
		pthread_join(pf->workers[i], NULL);
	if (pf_stopped(st)) {
		nx_log(NX_LOG_DEBUG, "profile %s: stopped at unmount", pf_name(pf));
	} else if (pf->foreign == pf->pr->n) {
		nx_log(NX_LOG_NOTICE,
		       "profile %s: none of its %zu frames is in this closure's store paths; "
		       "ignored", pf_name(pf), pf->pr->n);
	} else {
		nx_log(NX_LOG_INFO,
		       "profile %s: %zu frames listed, %zu not in this closure (skipped), %zu "
		       "runs in %zu batches walked in %.2f s; %llu frames fetched meanwhile",
		       pf_name(pf), pf->pr->n, pf->foreign, pf->nruns, pf->batches,
		       (double)(nx_now_ns() - pf->t0) / NX_NS_PER_S,
		       (unsigned long long)(nx_stat_get(&st->frames_fetched) - f0));
	}
	return NULL;
}

int nx_pfetch_start(struct nx_store *st, const char *name)
{
	struct nx_pfetch *pf;

	if (!st->closure_mode) {
		nx_log(NX_LOG_ERR, "profile=%s needs a closure mount (closure=NAME): a profile "
		       "belongs to a closure", name);
		return -EINVAL;
	}
	pf = calloc(1, sizeof(*pf));
	if (!pf)
		return -ENOMEM;
	pf->st = st;
	pf->t0 = nx_now_ns();
	pthread_cond_init(&pf->cond, NULL);
	if (strcmp(name, "auto") != 0 && !(pf->name = strdup(name))) {
		free(pf);
		return -ENOMEM;
	}
	if (pthread_create(&pf->main, NULL, pf_main, pf) != 0) {
		pthread_cond_destroy(&pf->cond);
		free(pf->name);
		free(pf);
		return -EAGAIN;
	}
	pf->main_started = 1;
	st->pf = pf;
	return 0;
}

void nx_pfetch_ready(struct nx_store *st)
{
	if (!st->pf)
		return;
	pthread_mutex_lock(&st->lock);
	st->pf->ready = 1;
	pthread_cond_broadcast(&st->pf->cond);
	pthread_mutex_unlock(&st->lock);
}

void nx_profile_stop(struct nx_store *st)
{
	struct nx_pfetch *pf = st->pf;

	__atomic_store_n(&st->pf_stop, 1, __ATOMIC_RELAXED);
	if (pf) {
		pthread_mutex_lock(&st->lock);
		pthread_cond_broadcast(&pf->cond); /* idle workers see the stop */
		pthread_mutex_unlock(&st->lock);
		if (pf->main_started)
			pthread_join(pf->main, NULL);
		st->pf = NULL;
		pthread_cond_destroy(&pf->cond);
		free(pf->runv);
		nx_profile_free(pf->pr);
		free(pf->name);
		free(pf);
	}
	prec_close(st);
}
