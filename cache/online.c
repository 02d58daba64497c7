/*
 * cache/online.c: noticing that the source is unreachable, and that it is
 * back.
 *
 * Without this, every miss while the registry is down would make its own
 * connection attempts (with the fetch layer's retries) and log its own line,
 * one per frame and thread. Instead the first network failure puts the store
 * offline; from then on one miss at a time is let through as a probe of
 * the source, and misses that arrive while it runs fail at once with -EIO
 * (cached data is served as always). Any answer from the source (even a 404
 * or a bad digest) ends it. There is no time window: the first read after
 * the registry returns goes through.
 *
 * The fetch layer logs the cause of each failed call, so an outage costs
 * one line per probe, and a probe lasts as long as the fetch layer tries
 * (its retries against a refused connection, or the timeout= against a
 * stalled registry): a burst of readers costs one line, not one per frame
 * and thread. The transitions are logged here.
 */
#include <errno.h>

#include "cache/cache_i.h"

/* The fetch layer's codes for "could not talk to the registry" (fetch.h). */
static int network_error(int rc)
{
	switch (rc) {
	case -ECONNREFUSED:
	case -EHOSTUNREACH:
	case -ENETUNREACH:
	case -ETIMEDOUT:
	case -ECONNRESET:
	case -EAGAIN:
		return 1;
	default:
		return 0;
	}
}

int nx_source_begin(struct nx_store *st)
{
	int rc = 0;

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
	int down = 0, up = 0;
	uint64_t secs = 0;

	pthread_mutex_lock(&st->lock);
	if (probe > 0)
		st->probing = 0;
	if (network_error(rc)) {
		if (!st->offline) {
			st->offline = 1;
			st->offline_since = nx_now_ns();
			down = 1;
		}
	} else if (st->offline) {
		st->offline = 0;
		secs = (nx_now_ns() - st->offline_since) / 1000000000u;
		up = 1;
	}
	pthread_mutex_unlock(&st->lock);
	/* The fetch layer logged the cause (one line per probe); these say
	 * what it means for reads. */
	if (down)
		nx_log(NX_LOG_INFO,
		       "registry unreachable: serving cached data only, uncached reads fail with "
		       "EIO until it answers again");
	if (up)
		nx_log(NX_LOG_NOTICE, "registry answers again after %llu s offline",
		       (unsigned long long)secs);
}
