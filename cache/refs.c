/*
 * cache/refs.c: loading a store path starts loading its references'
 * metadata in the background. The dynamic linker and interpreters open a
 * program's references next, so by the time they look them up, manifest
 * and TOC are usually here: the lookups that follow a first one stop
 * paying round trips one after the other.
 *
 * Bounded: NX_RP_THREADS workers (started on the first job), a queue of at
 * most NX_RP_QUEUE names (more are dropped: a hint, the lookup will load
 * the path itself), no name queued twice. A worker's lookup is an ordinary
 * nx_store_lookup, so it collapses with a foreground lookup of the same
 * name, verifies everything, and queues that path's references in turn.
 * Outside closure mode it yields to the lookup rate bound: it drops its job
 * once half the burst is used, so it never makes a foreground lookup fail.
 * It never fetches a whole NAR: a path signed only by a narinfo signature
 * (format.md section 6) fails its background load with -EAGAIN (not
 * remembered) and is verified when something really looks it up.
 * nx_rp_stop (first thing in nx_store_close) drops the queue and joins the
 * workers; a lookup in progress ends with its request (bounded by the fetch
 * deadline), and nothing new starts.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_i.h"

/* Set in the workers: a path whose trust needs its whole NAR fetched first
 * (a narinfo signature only) is left to a real lookup, not fetched on a
 * guess (store.c asks). */
static __thread int rp_worker_thread;

int nx_rp_in_worker(void)
{
	return rp_worker_thread;
}

void nx_rp_mark_worker(int on)
{
	rp_worker_thread = on;
}

static int rp_loaded_or_queued(struct nx_store *st, const char *base)
{
	for (struct nx_rp_job *j = st->rp_head; j; j = j->next)
		if (strcmp(j->base, base) == 0)
			return 1;
	return nx_spath_find_locked(st, base, strlen(base)) != NULL;
}

static void *rp_worker(void *arg)
{
	struct nx_store *st = arg;

	rp_worker_thread = 1;
	pthread_mutex_lock(&st->lock);
	for (;;) {
		struct nx_rp_job *j;
		struct nx_spath *p;
		int skip;

		while (!st->rp_stop && !st->rp_head)
			pthread_cond_wait(&st->rp_cond, &st->lock);
		if (st->rp_stop)
			break;
		j = st->rp_head;
		st->rp_head = j->next;
		if (!st->rp_head)
			st->rp_tail = NULL;
		st->rp_queued--;
		/* leave the registry's lookup budget to foreground lookups */
		skip = !st->closure_mode && st->lk_interval_ns &&
		       st->lk_tat > nx_now_ns() + NX_NS_PER_S;
		pthread_mutex_unlock(&st->lock);
		if (!skip && nx_store_lookup(st, j->base, strlen(j->base), &p) == 0) {
			nx_stat_add(&st->rp_loaded, 1);
			nx_spath_put(p); /* loaded for later: unloadable like any other */
		}
		free(j);
		pthread_mutex_lock(&st->lock);
	}
	pthread_mutex_unlock(&st->lock);
	return NULL;
}

void nx_rp_after_load(struct nx_store *st, const struct nx_spath *p)
{
	const struct nx_pathinfo *pi = &p->man.info;

	if (st->readonly || !pi->nrefs)
		return;
	pthread_mutex_lock(&st->lock);
	for (size_t i = 0; i < pi->nrefs && !st->rp_stop; i++) {
		const char *b = pi->refs[i];
		struct nx_rp_job *j;

		if (st->rp_queued >= NX_RP_QUEUE)
			break;
		size_t len = strlen(b);

		if (len > NX_BASE_MAX || rp_loaded_or_queued(st, b))
			continue;
		if (st->closure_mode && !nx_ix_has_locked(st, b))
			continue; /* not in the closure: a lookup would say ENOENT */
		j = calloc(1, sizeof(*j));
		if (!j)
			break;
		memcpy(j->base, b, len);
		if (st->rp_tail)
			st->rp_tail->next = j;
		else
			st->rp_head = j;
		st->rp_tail = j;
		st->rp_queued++;
		if (st->rp_nthreads < NX_RP_THREADS &&
		    pthread_create(&st->rp_threads[st->rp_nthreads], NULL, rp_worker, st) == 0)
			st->rp_nthreads++;
	}
	pthread_cond_broadcast(&st->rp_cond);
	pthread_mutex_unlock(&st->lock);
}

void nx_rp_stop(struct nx_store *st)
{
	struct nx_rp_job *j;
	unsigned n;

	pthread_mutex_lock(&st->lock);
	st->rp_stop = 1;
	while ((j = st->rp_head)) {
		st->rp_head = j->next;
		free(j);
	}
	st->rp_tail = NULL;
	st->rp_queued = 0;
	n = st->rp_nthreads;
	st->rp_nthreads = 0;
	pthread_cond_broadcast(&st->rp_cond);
	pthread_mutex_unlock(&st->lock);
	for (unsigned i = 0; i < n; i++)
		pthread_join(st->rp_threads[i], NULL);
}
