/*
 * cache/complete.c: background completion of mostly read files.
 *
 * A file a workload reads almost whole (a JVM's libjvm.so: a start reads
 * about 20 of its 24 MiB) never gets a passthrough copy, because files.c
 * copies only files whose every frame is cached, and copying never
 * fetches. So after a remount each of its reads still goes through the
 * daemon, from one chunk file per frame, where a passthrough file is read
 * by the kernel from one contiguous copy with the block layer's readahead.
 * When such a file is released, its few missing frames are fetched in the
 * background; the file is then complete, files.c copies it, and its next
 * open is passthrough.
 *
 * The rule (measured on a JDK 17 start, docs/benchmarks.md): a regular
 * file
 *  - larger than NX_CPL_MIN_SIZE (1 MiB: a smaller one is fetched whole by
 *    its first miss already, nx_ra_extend),
 *  - at most an eighth of cache_size (files.c copies no larger file),
 *  - with at least NX_CPL_SHARE_NUM/DEN (3/4) of its bytes cached: what a
 *    workload read almost whole it reads whole next time, or as good as;
 *    java's modules image (2% read) is far below, libjvm.so (86%: 20.7 of
 *    24.1 MB) well above,
 *  - and at most NX_CPL_MAX_MISSING (2 MiB) compressed missing: the cost
 *    is bounded per file whatever its size (libjvm.so: 1.03 MiB, +7% on a
 *    cold java start's 13.9 MiB).
 * and for the mount as a whole, completions stay within NX_CPL_FREE
 * (16 MiB) plus a quarter of the bytes fetched otherwise, so a workload
 * that reads most of many files cannot double what it fetches.
 *
 * Promises:
 *  - fetched and verified like every frame (nx_frames_fetch_runs: claimed
 *    in the in-flight table, so a reader arriving at one waits for that
 *    transfer instead of fetching it again); the copy is files.c's, from
 *    verified chunk files, tmp + fdatasync + rename;
 *  - never ahead of a reader: completions are readahead jobs on a list of
 *    their own that a worker takes only when no readahead job waits, one
 *    at a time, so three workers stay free for readers' readahead;
 *  - bounded by the cache: skipped when the cache after the completion
 *    and the copy would be above 90% of cache_size (where files.c's
 *    eviction stops), so a completion never pushes out what readers use;
 *  - readahead=0 turns it off (it is readahead of a kind), and so does a
 *    mount without passthrough (ops.c asks for copies only when the kernel
 *    takes backing files: a completion would then fetch bytes for nothing);
 *  - unmount: nx_ra_stop drops queued completions, and the transfer of a
 *    running one is cancelled (nx_fetch_cancel_all) and gives up at the
 *    next frame; what was verified and saved stays, nothing half written.
 *
 * Cost on the release path: a look into a ring of NX_CPL_SLOTS files under
 * st->lock, and a queued job. The LMDB lookups (one per frame) are the
 * worker's, once per file, again only when frames were fetched since.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_i.h"

/* st->lock held */
static struct nx_cpl_seen *seen_find(struct nx_store *st, const struct nx_spath *p, uint32_t entry)
{
	for (unsigned i = 0; i < NX_CPL_SLOTS; i++) {
		struct nx_cpl_seen *s = &st->cpl_seen[i];

		if (s->state != NX_CPL_IDLE || s->fetched) {
			if (s->entry == entry && memcmp(s->man, p->man_digest, NX_SHA256_LEN) == 0)
				return s;
		}
	}
	return NULL;
}

static void seen_set(struct nx_store *st, const struct nx_spath *p, uint32_t entry, int state,
		     uint64_t fetched)
{
	struct nx_cpl_seen *s;

	pthread_mutex_lock(&st->lock);
	s = seen_find(st, p, entry);
	if (s) {
		s->state = state;
		s->fetched = fetched;
	}
	pthread_mutex_unlock(&st->lock);
}

void nx_complete_want(struct nx_store *st, struct nx_spath *p, uint32_t entry)
{
	const struct nx_toc_entry *e;
	struct nx_cpl_seen *s;
	uint64_t fetched;

	if (!st->ra_max || st->readonly || !st->files || nx_bg_stopped(st) ||
	    entry >= p->toc->nentries)
		return;
	e = &p->toc->entries[entry];
	if (e->type != NX_NODE_REGULAR || e->size <= NX_CPL_MIN_SIZE || e->size > st->limit / 8)
		return;
	/* +1: a slot with fetched 0 and state idle is an empty one */
	fetched = nx_stat_get(&st->frames_fetched) + 1;
	pthread_mutex_lock(&st->lock);
	s = seen_find(st, p, entry);
	if (s && (s->state != NX_CPL_IDLE || s->fetched == fetched)) {
		pthread_mutex_unlock(&st->lock);
		return;
	}
	if (!s) {
		s = &st->cpl_seen[st->cpl_next++ % NX_CPL_SLOTS];
		memcpy(s->man, p->man_digest, NX_SHA256_LEN);
		s->entry = entry;
	}
	s->state = NX_CPL_QUEUED;
	s->fetched = fetched;
	pthread_mutex_unlock(&st->lock);
	if (nx_ra_queue_complete(st, p, entry) < 0)
		seen_set(st, p, entry, NX_CPL_IDLE, fetched);
}

/* Counts the cached and missing bytes of frames [first, last] and gathers
 * the missing ones in runs (at most *nruns, more are merged into the last
 * one's count only: the caller refuses such a file anyway). */
struct census {
	uint64_t all_u, cached_u, miss_u, miss_c;
	struct nx_frun *runs;
	size_t nruns, cap;
};

static int count(struct nx_store *st, const struct nx_toc *toc, uint32_t first, uint32_t last,
		 struct census *c)
{
	for (uint32_t i = first; i <= last; i++) {
		const struct nx_toc_frame *fr = &toc->frames[i];

		if (nx_bg_stopped(st))
			return -ECANCELED;
		c->all_u += fr->ulen;
		if (nx_chunk_known(st, fr->sha256)) {
			c->cached_u += fr->ulen;
			continue;
		}
		c->miss_u += fr->ulen;
		c->miss_c += fr->clen;
		if (c->miss_c > NX_CPL_MAX_MISSING)
			return 0; /* over the rule already: no need to go on */
		if (c->nruns && c->runs[c->nruns - 1].last + 1 == i) {
			c->runs[c->nruns - 1].last = i;
			continue;
		}
		if (c->nruns == c->cap) {
			size_t nc = c->cap ? 2 * c->cap : 16;
			struct nx_frun *r = realloc(c->runs, nc * sizeof(*r));

			if (!r)
				return -ENOMEM;
			c->runs = r;
			c->cap = nc;
		}
		c->runs[c->nruns++] = (struct nx_frun){ .first = i, .last = i };
	}
	return 0;
}

/* 1 when the cache, after @bytes more plus the copy of @e, stays below
 * where files.c's eviction stops (90% of cache_size): a completion, and the
 * copy it leads to, must never make room by evicting what readers pin. */
static int cache_has_room(struct nx_store *st, const struct nx_toc_entry *e, uint64_t bytes)
{
	uint64_t after = nx_stat_get(&st->total_bytes) + nx_stat_get(&st->reserved) + bytes +
			 e->size;

	return after <= st->limit - st->limit / 10;
}

void nx_complete_run(struct nx_store *st, struct nx_spath *p, uint32_t entry)
{
	const struct nx_toc *toc = p->toc;
	const struct nx_toc_entry *e = &toc->entries[entry];
	struct census c = { 0 };
	uint64_t fetched, room;
	uint32_t first, last;
	const char *why = NULL;
	int rc, state = NX_CPL_DONE;

	if (nx_toc_frames_for(toc, e->off, e->size, &first, &last) < 0)
		goto out;
	fetched = nx_stat_get(&st->frames_fetched) + 1;
	rc = count(st, toc, first, last, &c);
	if (rc < 0) {
		state = NX_CPL_IDLE;
		goto out;
	}
	if (!c.nruns) {
		/* complete already (its last frames came after the release):
		 * copy it, but as the fetch below, only with room to spare.
		 * Under cache pressure a copy made here (one files.c would not
		 * have made at the release) pushes the cache past cache_size
		 * while readers pin what eviction would remove. */
		if (!cache_has_room(st, e, 0)) {
			nx_log(NX_LOG_DEBUG, "complete: %s/%s entry %u: complete, cache near its bound: no copy",
			       NX_STORE_DIR, p->base, entry);
			goto out;
		}
		nx_store_file_want(st, p, entry);
		goto out;
	}
	if (c.miss_c > NX_CPL_MAX_MISSING) {
		/* count() stopped there: the totals are partial */
		seen_set(st, p, entry, NX_CPL_IDLE, fetched);
		nx_log(NX_LOG_DEBUG, "complete: %s/%s entry %u: more than %" PRIu64
		       " compressed bytes missing", NX_STORE_DIR, p->base, entry,
		       (uint64_t)NX_CPL_MAX_MISSING);
		goto free;
	}
	if (c.cached_u * NX_CPL_SHARE_DEN < c.all_u * NX_CPL_SHARE_NUM)
		why = "not mostly cached";
	if (why) {
		/* counted again at a later release if frames were fetched */
		seen_set(st, p, entry, NX_CPL_IDLE, fetched);
		nx_log(NX_LOG_DEBUG, "complete: %s/%s entry %u: %s (%" PRIu64 " of %" PRIu64
		       " bytes cached, %" PRIu64 " compressed missing)", NX_STORE_DIR, p->base,
		       entry, why, c.cached_u, c.all_u, c.miss_c);
		goto free;
	}
	/* the cache after the frames and the copy, against where files.c's
	 * eviction stops: a completion must not make room by evicting */
	pthread_mutex_lock(&st->lock);
	room = nx_stat_get(&st->bytes_fetched);
	room = NX_CPL_FREE + (room > st->cpl_bytes ? room - st->cpl_bytes : 0) / 4;
	if (!cache_has_room(st, e, c.miss_u))
		why = "cache near its bound";
	else if (st->cpl_bytes + c.miss_c > room)
		why = "over the completion budget";
	else
		st->cpl_bytes += c.miss_c;
	pthread_mutex_unlock(&st->lock);
	if (why) {
		seen_set(st, p, entry, NX_CPL_IDLE, fetched);
		nx_log(NX_LOG_DEBUG, "complete: %s/%s entry %u: %s", NX_STORE_DIR, p->base, entry,
		       why);
		goto free;
	}
	nx_log(NX_LOG_DEBUG, "complete: %s/%s entry %u: fetching %zu runs, %" PRIu64
	       " compressed bytes (%" PRIu64 " of %" PRIu64 " cached)", NX_STORE_DIR, p->base,
	       entry, c.nruns, c.miss_c, c.cached_u, c.all_u);
	for (size_t k = 0; k < c.nruns; k += NX_MULTI_RUNS) {
		size_t n = c.nruns - k < NX_MULTI_RUNS ? c.nruns - k : NX_MULTI_RUNS;

		if (nx_frames_fetch_runs(st, p, c.runs + k, n) == -ECANCELED || nx_bg_stopped(st))
			goto out; /* unmount: one more try after a remount */
	}
	/* Frames that failed verification (logged by the fetch) or were
	 * evicted meanwhile leave the file incomplete: it is not tried again
	 * in this mount (state done), so a bad blob costs one attempt. */
	for (size_t k = 0; k < c.nruns; k++)
		for (uint32_t i = c.runs[k].first; i <= c.runs[k].last; i++)
			if (!nx_chunk_known(st, toc->frames[i].sha256)) {
				nx_log(NX_LOG_DEBUG, "complete: %s/%s entry %u: frame %u not fetched",
				       NX_STORE_DIR, p->base, entry, i);
				goto out;
			}
	nx_stat_add(&st->complete_files, 1);
	nx_stat_add(&st->complete_bytes, c.miss_c);
	nx_log(NX_LOG_DEBUG, "complete: %s/%s entry %u: complete", NX_STORE_DIR, p->base, entry);
	nx_store_file_want(st, p, entry);
out:
	seen_set(st, p, entry, state, 0);
free:
	free(c.runs);
}
