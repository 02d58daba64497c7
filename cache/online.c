/*
 * cache/online.c: noticing that the source is unreachable, and that it is
 * back; telling that apart from one object failing.
 *
 * Without this, every miss while the registry is down would make its own
 * connection attempts (with the fetch layer's retries) and log its own line,
 * one per frame and thread. Instead a failure that says the source itself is
 * gone puts the store offline; from then on one miss at a time is let
 * through as a probe of the source, and misses that arrive while it runs
 * fail at once with -EIO (cached data is served as always). Any answer from
 * the source (even a 404, a 503 or a bad digest) ends it. There is no time
 * window: the first read after the registry returns goes through.
 *
 * Failures are accounted per source, not per request: what one blob does
 * must not make healthy reads of other paths fail fast.
 *  - refused, unreachable: the source is gone: offline.
 *  - an HTTP error status after the fetch layer's retries (503, 429, ...):
 *    the registry answered; that object failed. Never offline.
 *  - a timeout (silence, a stall): offline only if the source answered
 *    nothing else while this call waited (a SIGSTOPped registry, a dead
 *    link); when other calls got answers meanwhile, it is that object's
 *    trouble (one stalled blob) and the source stays online.
 *  - cancelled (shutdown, nx_fetch_cancel_all): no verdict.
 * The kernel's immediate retry of a read that just failed fails at once
 * anyway, offline or not (struct nx_reader's fail_* in readahead.c).
 *
 * The fetch layer logs the cause of each failed call, so an outage costs
 * one line per probe, and a probe lasts as long as the fetch layer tries
 * (its retries against a refused connection, or the timeout= against a
 * stalled registry): a burst of readers costs one line, not one per frame
 * and thread. The transitions are logged here.
 */
#include <errno.h>

#include "cache/cache_i.h"

enum verdict { V_ANSWER, V_GONE, V_SILENT, V_NONE };

/* The fetch layer's codes (fetch.h) -> what they say about the source. */
static enum verdict verdict(int rc)
{
	switch (rc) {
	case -ECONNREFUSED:
	case -EHOSTUNREACH:
	case -ENETUNREACH:
		return V_GONE;
	case -ETIMEDOUT:
	case -ECONNRESET:
		return V_SILENT;
	case -ECANCELED:
		return V_NONE;
	default:
		return V_ANSWER; /* 0, 404, 5xx after retries, a bad body: it answered */
	}
}

/* When this thread's call of the source began (begin and end run on the
 * caller's thread, around one synchronous call). */
static __thread uint64_t call_t0;

int nx_source_begin(struct nx_store *st)
{
	int rc = 0;

	call_t0 = nx_now_ns();
	pthread_mutex_lock(&st->lock);
	if (st->offline) {
		if (st->probing) {
			rc = -EIO;
		} else {
			st->probing = 1;
			rc = 1;
		}
	}
	pthread_mutex_unlock(&st->lock);
	if (rc < 0)
		nx_log(NX_LOG_DEBUG, "cache %s: source offline, not asking it", st->dir);
	return rc;
}

void nx_source_end(struct nx_store *st, int probe, int rc)
{
	enum verdict v = verdict(rc);
	int down = 0, up = 0, alone = 0;
	uint64_t now = nx_now_ns(), secs = 0;

	pthread_mutex_lock(&st->lock);
	if (probe > 0)
		st->probing = 0;
	if (v == V_SILENT && st->answered_ns >= call_t0 && !st->offline) {
		v = V_NONE; /* others got answers meanwhile: this object's trouble */
		alone = 1;
	}
	if (v == V_GONE || v == V_SILENT) {
		if (!st->offline) {
			st->offline = 1;
			st->offline_since = now;
			down = 1;
		}
	} else if (v == V_ANSWER) {
		st->answered_ns = now;
		if (st->offline) {
			st->offline = 0;
			secs = (now - st->offline_since) / 1000000000u;
			up = 1;
		}
	}
	pthread_mutex_unlock(&st->lock);
	/* The fetch layer logged the cause (one line per probe); these say
	 * what it means for reads. */
	if (alone)
		nx_log(NX_LOG_DEBUG, "cache %s: one transfer timed out while the registry answered "
		       "others: staying online", st->dir);
	if (down)
		nx_log(NX_LOG_INFO,
		       "registry unreachable: serving cached data only, uncached reads fail with "
		       "EIO until it answers again");
	if (up)
		nx_log(NX_LOG_NOTICE, "registry answers again after %llu s offline",
		       (unsigned long long)secs);
}
