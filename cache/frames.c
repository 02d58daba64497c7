/*
 * cache/frames.c: getting verified frames, from the cache or the source.
 *
 * nx_frames_walk hands frames to a consumer strictly in index order. A frame
 * that is not cached is "claimed" in the in-flight table (keyed by frame
 * digest) before it is fetched; a thread that finds the frame claimed waits on
 * st->cond and then looks in the cache again, so concurrent misses on one
 * frame cost one fetch. Adjacent missing frames are claimed together and
 * fetched with one range request. The source may answer a range request with
 * the whole blob (absolute offsets); the assembler skips what it does not
 * need and stops the transfer once it has everything.
 *
 * Each frame's compressed bytes are checked against the TOC's SHA-256 before
 * they are decompressed, cached or delivered. Nothing is cached from a frame
 * that failed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache_i.h"

#define NX_SEND_POLL_NS (UINT64_C(20) * 1000000)

/* Returned by the assembler to stop a whole-blob answer early. */
#define NX_STOP (-ECANCELED)

static struct nx_flight *flight_find(struct nx_store *st, const uint8_t d[NX_SHA256_LEN])
{
	for (struct nx_flight *f = st->flights; f; f = f->next)
		if (memcmp(f->digest, d, NX_SHA256_LEN) == 0)
			return f;
	return NULL;
}

/* Called with st->lock held. */
static int flight_claim(struct nx_store *st, const uint8_t d[NX_SHA256_LEN])
{
	struct nx_flight *f = calloc(1, sizeof(*f));

	if (!f)
		return -ENOMEM;
	memcpy(f->digest, d, NX_SHA256_LEN);
	f->next = st->flights;
	st->flights = f;
	return 0;
}

static void flight_release(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], int rc)
{
	struct nx_flight **pp, *f;

	pthread_mutex_lock(&st->lock);
	for (pp = &st->flights; (f = *pp); pp = &f->next) {
		if (memcmp(f->digest, d, NX_SHA256_LEN) == 0) {
			*pp = f->next;
			f->done = 1;
			f->rc = rc;
			if (!f->waiters)
				free(f);
			break;
		}
	}
	pthread_cond_broadcast(&st->cond);
	pthread_mutex_unlock(&st->lock);
}

/* 0 if frame @i was served from the cache, -ENOENT on a miss. */
static int try_hit(struct nx_store *st, struct nx_spath *p, uint32_t i,
		   const struct nx_walk_ops *ops, void *ctx)
{
	const struct nx_toc_frame *f = &p->toc->frames[i];
	uint8_t *buf;
	uint64_t size = 0;
	int fd, rc;

	rc = nx_chunk_open(st, f->sha256, f->ulen, &fd, &size);
	if (rc == -ERANGE) {
		/* the frame is known by its digest and has another size: this
		 * TOC is wrong about it (the cached chunk serves other paths) */
		nx_stat_add(&st->verify_failures, 1);
		nx_log(NX_LOG_ERR, "toc of %s/%.*s: frame %u is %llu bytes, not %u", NX_STORE_DIR,
		       (int)p->base_len, p->base, i, (unsigned long long)size, f->ulen);
		return -EIO;
	}
	if (rc < 0)
		return rc;
	if (ops->file) {
		rc = ops->file(ctx, i, fd);
	} else if (ops->data) {
		buf = malloc(f->ulen);
		if (!buf) {
			rc = -ENOMEM;
		} else {
			rc = nx_pread_all(fd, buf, f->ulen, 0);
			if (rc < 0)
				nx_log(NX_LOG_ERR, "cache %s: cannot read frame %u of %s/%.*s: %s",
				       st->dir, i, NX_STORE_DIR, (int)p->base_len, p->base,
				       strerror(-rc));
			else
				rc = ops->data(ctx, i, buf, f->ulen);
			free(buf);
		}
	}
	close(fd);
	nx_chunk_unpin(st, f->sha256);
	if (rc == 0)
		nx_stat_add(&st->cache_hits, 1);
	return rc == -ENOENT ? -EIO : rc;
}

struct run {
	struct nx_store *st;
	struct nx_spath *p;
	uint32_t cur, last; /* frame being assembled, last frame of the run */
	uint32_t first;
	uint32_t need;      /* frames after this one only ride along (walk_ext) */
	uint32_t rel;       /* claims of frames before this one are released */
	const uint8_t *flags; /* flags[i - first]: NX_FR_* */
	uint64_t pos;       /* absolute blob offset of the next byte needed */
	uint8_t *cbuf;
	size_t cfill;
	uint8_t *ubuf;
	const struct nx_walk_ops *ops;
	void *ctx;
	int err;  /* our own failure (verification, consumer), already logged */
	int done;
	int quiet; /* a failed frame nobody asked for yet: debug level */
	int shared; /* other walkers' runs were handed to this request */
};

/* A failed frame is logged by the walk that asked for it: a frame nobody
 * asked for yet by the read that does (it fetches it again, and fails
 * again), another walker's frame of a shared request by that walker (it
 * fetches it again on its own). In a shared request a background walk's
 * frame counts as not asked for, whichever walker sends it, so the log
 * does not depend on which walker came first. */
static int quiet_frame(const struct run *r)
{
	uint8_t fl = r->flags[r->cur - r->first];

	return r->quiet || r->cur > r->need || !(fl & NX_FR_MINE) ||
	       (r->shared && (fl & NX_FR_BG));
}

static int frame_complete(struct run *r)
{
	struct nx_store *st = r->st;
	const struct nx_toc_frame *f = &r->p->toc->frames[r->cur];
	uint8_t fl = r->flags[r->cur - r->first];
	uint8_t got[NX_SHA256_LEN];
	int rc;

	nx_sha256(r->cbuf, f->clen, got);
	if (memcmp(got, f->sha256, NX_SHA256_LEN) != 0) {
		char want[NX_DIGEST_STRLEN], have[NX_DIGEST_STRLEN];

		nx_digest_format(f->sha256, want);
		nx_digest_format(got, have);
		nx_stat_add(&st->verify_failures, 1);
		nx_log(quiet_frame(r) ? NX_LOG_DEBUG : NX_LOG_ERR,
		       "verify frame %u of %s/%.*s: digest mismatch (got %s, want %s)", r->cur, NX_STORE_DIR, (int)r->p->base_len, r->p->base, have, want);
		return -EBADMSG;
	}
	rc = nx_frame_decompress(r->cbuf, f->clen, r->ubuf, f->ulen);
	if (rc < 0) {
		nx_stat_add(&st->verify_failures, 1);
		nx_log(quiet_frame(r) ? NX_LOG_DEBUG : NX_LOG_ERR,
		       "frame %u of %s/%.*s: does not decompress to %u bytes", r->cur,
		       NX_STORE_DIR, (int)r->p->base_len, r->p->base, f->ulen);
		return -EBADMSG;
	}
	nx_stat_add(&st->frames_fetched, 1);
	if (fl & NX_FR_BG)
		nx_stat_add(&st->ra_frames, 1);
	/* a repeated digest was saved by its first occurrence */
	if (fl & NX_FR_OWNED) {
		nx_chunk_save(st, f->sha256, r->ubuf, f->ulen);
		flight_release(st, f->sha256, 0);
		if (r->ops->saved && (fl & NX_FR_MINE))
			r->ops->saved(r->ctx, r->cur);
	}
	r->rel = r->cur + 1;
	/* another walker's frame in a shared request: it reads it from the
	 * cache once its claim is released */
	if (r->ops->data && (fl & NX_FR_MINE)) {
		rc = r->ops->data(r->ctx, r->cur, r->ubuf, f->ulen);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int run_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct run *r = ctx;
	const uint8_t *b = buf;
	int rc;

	nx_stat_add(&r->st->bytes_fetched, len);
	if (r->done)
		return NX_STOP;
	if (r->ops->background && nx_bg_stopped(r->st)) {
		r->err = -ECANCELED; /* shutting down: readahead is not worth waiting for */
		return r->err;
	}
	if (off + len <= r->pos)
		return 0; /* a whole-blob answer: before our range */
	if (off > r->pos) {
		nx_log(NX_LOG_ERR, "fetch %s/%.*s: source skipped bytes at offset %llu",
		       NX_STORE_DIR, (int)r->p->base_len, r->p->base, (unsigned long long)r->pos);
		r->err = -EIO;
		return -EIO;
	}
	b += r->pos - off;
	len -= (size_t)(r->pos - off);
	while (len && !r->done) {
		const struct nx_toc_frame *f = &r->p->toc->frames[r->cur];
		size_t n = f->clen - r->cfill;

		if (n > len)
			n = len;
		memcpy(r->cbuf + r->cfill, b, n);
		r->cfill += n;
		r->pos += n;
		b += n;
		len -= n;
		if (r->cfill < f->clen)
			break;
		rc = frame_complete(r);
		if (rc < 0) {
			r->err = rc;
			return rc;
		}
		r->cfill = 0;
		if (r->cur == r->last)
			r->done = 1;
		else
			r->cur++;
	}
	/* Extra bytes past our range: a whole-blob answer; stop it. */
	return (r->done && len) ? NX_STOP : 0;
}

/* Fetches frames [first, last]; @flags says which ones the caller claimed
 * (a digest repeated inside the run is claimed once) and which are its own
 * (the rest were handed to it by other walkers). Releases every claim
 * whatever happens. */
static int fetch_run(struct nx_store *st, struct nx_spath *p, uint32_t first, uint32_t last,
		     uint32_t need, const uint8_t *flags, const struct nx_walk_ops *ops, void *ctx,
		     uint32_t *failed)
{
	const struct nx_toc *toc = p->toc;
	struct run r = { .st = st, .p = p, .cur = first, .last = last, .first = first,
			 .need = need, .rel = first, .flags = flags, .ops = ops, .ctx = ctx };
	struct nx_window w = { .cb = run_cb, .ctx = &r };
	uint32_t cmax = 0;
	uint64_t end;
	int rc, probe, frc;

	for (uint32_t i = first; i <= last; i++) {
		if (toc->frames[i].clen > cmax)
			cmax = toc->frames[i].clen;
		if (!(flags[i - first] & NX_FR_MINE))
			r.shared = 1;
	}
	nx_stat_add(&st->cache_misses, last - first + 1);
	if (cmax > NX_CLEN_MAX) {
		nx_log(NX_LOG_ERR, "toc of %s/%.*s: frame of %u compressed bytes is too large",
		       NX_STORE_DIR, (int)p->base_len, p->base, cmax);
		rc = -EIO;
		goto out;
	}
	r.cbuf = malloc(cmax);
	r.ubuf = malloc(NX_FRAME_MAX);
	if (!r.cbuf || !r.ubuf) {
		rc = -ENOMEM;
		goto out;
	}
	r.pos = toc->frames[first].coff;
	end = toc->frames[last].coff + toc->frames[last].clen;
	probe = nx_source_begin(st);
	if (probe < 0) {
		rc = probe; /* offline: fail fast, the outage was logged */
		goto out;
	}
	/* format 2: the NAR layer is a range of the pack; run_cb sees offsets
	 * in the NAR layer either way */
	w.base = p->man.nar_off;
	w.len = p->man.nar.size;
	rc = st->src.get_blob(st->src.ctx, p->man.nar.digest, w.base + r.pos, end - r.pos,
			      nx_window_cb, &w);
	nx_source_end(st, probe, r.err || rc == NX_STOP ? 0 : rc);
	if (r.err) {
		rc = r.err == -EBADMSG ? -EIO : r.err;
	} else if (rc == NX_STOP || rc == 0) {
		rc = 0;
		if (!r.done) {
			/* shutting down, the transfer was cut: nothing to report */
			nx_log(nx_bg_stopped(st) ? NX_LOG_DEBUG : NX_LOG_ERR,
			       "fetch %s/%.*s: short answer for frames %u-%u",
			       NX_STORE_DIR, (int)p->base_len, p->base, first, last);
			rc = -EIO;
		}
	} else {
		/* the source logged the cause */
		nx_log(NX_LOG_DEBUG, "fetch %s/%.*s: frames %u-%u: %s", NX_STORE_DIR,
		       (int)p->base_len, p->base, first, last, strerror(-rc));
		rc = -EIO;
	}
out:
	/* Claims of frames that did not complete (completed ones are gone).
	 * -EBADMSG tells waiters that our TOC's claim about a frame failed:
	 * theirs may be right, so they fetch it themselves instead of
	 * sharing our failure (a hostile path must not fail a good one). */
	frc = r.err == -EBADMSG ? -EBADMSG : rc < 0 ? rc : -EIO;
	for (uint32_t i = r.rel; i <= last; i++)
		if (flags[i - first] & NX_FR_OWNED)
			flight_release(st, toc->frames[i].sha256, frc);
	free(r.cbuf);
	free(r.ubuf);
	*failed = r.rel; /* the first frame not delivered */
	if (rc < 0 && r.rel <= need)
		nx_stat_add(&st->errors, 1);
	return rc;
}

/* ------------------------------------------------ shared requests
 *
 * Walkers that claim adjacent runs of one path at the same moment (a
 * read's, the readahead workers', the predicted misses') would each send a
 * request, and the registry's cost is per request, not per byte. So a walk
 * that no reader waits on (readahead, a predicted miss: deferrable) holds
 * its claimed run as a request for NX_SEND_HOLD_NS before sending it, and
 * a walker that claims a run next to a held request hands the run to it
 * (one contiguous range) instead of sending its own. The request's walker
 * fetches the whole range, verifies and saves every frame, delivers its
 * own to its consumer and releases each claim as its frame completes; the
 * other walkers wait on their frames' claims as on anyone's and read them
 * from the cache. A reader never waits for the hold: its run goes only in
 * front of a held request (its bytes come first) and has it sent at once,
 * and a reader that finds one of its frames in a held request has it sent.
 */

__thread int nx_walk_deferrable;

static uint64_t span_bytes(const struct nx_toc_frame *fr, uint32_t a, uint32_t b)
{
	return fr[b].coff + fr[b].clen - fr[a].coff;
}

/* Points the claims of run [a, b] at @q (st->lock held). */
static void flights_mark(struct nx_store *st, const struct nx_toc_frame *fr, uint32_t a,
			 uint32_t b, const uint8_t *flags, struct nx_sendq *q)
{
	for (uint32_t i = a; i <= b; i++) {
		struct nx_flight *f;

		if (!(flags[i - a] & NX_FR_OWNED))
			continue;
		f = flight_find(st, fr[i].sha256);
		if (f)
			f->q = q;
	}
}

/* NX_SEND_HOLD_NS, or NIXOCI_TEST_SEND_HOLD_MS for the tests: a hold long
 * enough that walkers that start together always meet in one request. */
static uint64_t hold_ns(void)
{
	const char *e = getenv("NIXOCI_TEST_SEND_HOLD_MS");

	return e && *e ? strtoull(e, NULL, 10) * 1000000 : NX_SEND_HOLD_NS;
}

static void sendq_kick(struct nx_sendq *q)
{
	q->go = 1;
	pthread_cond_signal(&q->cond);
}

/* Adds claimed run [a, b] of q's path, adjacent to held request @q, to it
 * (st->lock held): 0, or -ENOMEM (nothing changed). Its frames are no
 * longer their walker's own. */
static int sendq_add(struct nx_store *st, struct nx_sendq *q, uint32_t a, uint32_t b,
		     const uint8_t *flags)
{
	const struct nx_toc_frame *fr = q->p->toc->frames;
	uint32_t n = b - a + 1, qn = q->last - q->first + 1;
	int front = q->first == b + 1;
	uint8_t *nf, *seg;

	nf = realloc(q->flags, qn + n);
	if (!nf)
		return -ENOMEM;
	q->flags = nf;
	if (front) {
		memmove(nf + n, nf, qn);
		seg = nf;
		q->first = a;
	} else {
		seg = nf + qn;
		q->last = b;
	}
	for (uint32_t k = 0; k < n; k++)
		seg[k] = flags[k] & (uint8_t)~NX_FR_MINE;
	flights_mark(st, fr, a, b, flags, q);
	return 0;
}

/* 1 if run [a, b] of @p may join held request @q at one end: adjacent
 * (in front only while no reader waits on it: its bytes come first), and
 * the sum within the bounds of one request. */
static int sendq_fits(const struct nx_sendq *q, const struct nx_spath *p, uint32_t a, uint32_t b,
		      int back_too)
{
	const struct nx_toc_frame *fr = p->toc->frames;
	int front = !q->go && q->first == b + 1, back = !front && back_too && q->last + 1 == a;

	return q->p == p && !q->sent && !q->merged && (front || back) &&
	       (q->last - q->first + 1) + (b - a + 1) <= NX_RUN_FRAMES &&
	       span_bytes(fr, front ? a : q->first, front ? q->last : b) <= NX_BATCH_BYTES;
}

/* Hands claimed run [a, b] of @p to a held request it adjoins (st->lock
 * held): 1 if it did (the request's walker fetches and releases it), 0 if
 * there is none. A walk a reader waits on goes only in front (its bytes
 * first) and has the request sent now; a deferrable one joins either end.
 * A run that fills the gap between two held requests makes them one: the
 * second one's walker then leaves its frames to the first's. */
static int sendq_join(struct nx_store *st, struct nx_spath *p, uint32_t a, uint32_t b,
		      const uint8_t *flags, int deferrable)
{
	struct nx_sendq *q, *o;

	for (q = st->sendq; q; q = q->next)
		if (sendq_fits(q, p, a, b, deferrable))
			break;
	if (!q || sendq_add(st, q, a, b, flags) < 0)
		return 0;
	nx_stat_add(&st->runs_shared, 1);
	nx_log(NX_LOG_DEBUG, "fetch %s/%.*s: frames %u-%u join the request for %u-%u",
	       NX_STORE_DIR, (int)p->base_len, p->base, a, b, q->first, q->last);
	for (o = st->sendq; deferrable && o; o = o->next) {
		/* another path's held request is not ours to take: its frame
		 * numbers are of its own TOC (taking it lost its claims) */
		if (o == q || o->p != p || !sendq_fits(q, p, o->first, o->last, 1))
			continue;
		if (sendq_add(st, q, o->first, o->last, o->flags) == 0) {
			o->merged = 1;
			pthread_cond_signal(&o->cond);
			nx_stat_add(&st->runs_shared, 1);
			nx_log(NX_LOG_DEBUG, "fetch %s/%.*s: frames %u-%u join the request for %u-%u",
			       NX_STORE_DIR, (int)p->base_len, p->base, o->first, o->last,
			       q->first, q->last);
		}
		break;
	}
	if (!deferrable)
		sendq_kick(q);
	return 1;
}

/* Holds claimed run [a, b] of @p (its @flags are the request's now) as a
 * request others may join, until a reader wants one of its frames or the
 * hold is over (st->lock held, released while waiting). NULL without
 * memory: the caller sends the run alone and still owns @flags. */
static struct nx_sendq *sendq_hold(struct nx_store *st, struct nx_spath *p, uint32_t a,
				   uint32_t b, uint8_t *flags)
{
	struct nx_sendq *q = calloc(1, sizeof(*q)), **pp;
	pthread_condattr_t ca;
	uint64_t due = nx_now_ns() + hold_ns();

	if (!q)
		return NULL;
	/* a timed wait must not jump with the wall clock */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (pthread_cond_init(&q->cond, &ca) != 0) {
		pthread_condattr_destroy(&ca);
		free(q);
		return NULL;
	}
	pthread_condattr_destroy(&ca);
	q->p = p;
	q->first = a;
	q->last = b;
	q->flags = flags;
	q->next = st->sendq;
	st->sendq = q;
	flights_mark(st, p->toc->frames, a, b, flags, q);
	nx_log(NX_LOG_DEBUG, "fetch %s/%.*s: frames %u-%u held for adjacent runs", NX_STORE_DIR,
	       (int)p->base_len, p->base, a, b);
	while (!q->go && !q->merged && !nx_bg_stopped(st)) {
		uint64_t now = nx_now_ns(), until = due;
		struct timespec ts;

		if (now >= due)
			break;
		/* an unmount does not signal us: look again every 20 ms */
		if (until - now > NX_SEND_POLL_NS)
			until = now + NX_SEND_POLL_NS;
		ts.tv_sec = (time_t)(until / 1000000000u);
		ts.tv_nsec = (long)(until % 1000000000u);
		pthread_cond_timedwait(&q->cond, &st->lock, &ts);
	}
	if (!q->merged && (q->first != a || q->last != b))
		nx_log(NX_LOG_DEBUG, "fetch %s/%.*s: frames %u-%u in one request", NX_STORE_DIR,
		       (int)p->base_len, p->base, q->first, q->last);
	q->sent = 1;
	for (pp = &st->sendq; *pp; pp = &(*pp)->next) {
		if (*pp == q) {
			*pp = q->next;
			break;
		}
	}
	return q;
}

static void sendq_free(struct nx_sendq *q)
{
	pthread_cond_destroy(&q->cond);
	free(q->flags);
	free(q);
}

int nx_frames_walk(struct nx_store *st, struct nx_spath *p, uint32_t first, uint32_t last,
		   uint64_t batch, const struct nx_walk_ops *ops, void *ctx)
{
	return nx_frames_walk_ext(st, p, first, last, last, batch, ops, ctx);
}

int nx_frames_walk_ext(struct nx_store *st, struct nx_spath *p, uint32_t first, uint32_t last,
		       uint32_t ext, uint64_t batch, const struct nx_walk_ops *ops, void *ctx)
{
	const struct nx_toc_frame *fr = p->toc->frames;
	int deferrable = ops->background || nx_walk_deferrable;
	/* joined frames reach their walkers through the cache */
	int share = !st->readonly;
	uint32_t i = first;
	int rc;

	while (i <= last) {
		uint32_t j, k, failed;
		uint64_t bytes;
		uint8_t *owned;
		struct nx_flight *fl;
		struct nx_sendq *q = NULL;

		if (ops->background) {
			if (nx_bg_stopped(st))
				return -ECANCELED;
			if (nx_chunk_known(st, fr[i].sha256)) {
				/* cached: have the disk read it before the reader
				 * asks, as the kernel does for one big file */
				nx_chunk_willneed(st, fr[i].sha256);
				i++;
				continue;
			}
		} else {
			rc = try_hit(st, p, i, ops, ctx);
			if (rc == 0) {
				i++;
				continue;
			}
			if (rc != -ENOENT)
				return rc;
		}

		/* Candidate run: following frames the cache does not know,
		 * up to @ext: frames past @last ride along with a needed
		 * one in the same request, never on their own. */
		bytes = fr[i].clen;
		for (j = i + 1; j <= ext && j - i < NX_RUN_FRAMES && bytes + fr[j].clen <= batch;
		     j++) {
			if (nx_chunk_known(st, fr[j].sha256))
				break;
			bytes += fr[j].clen;
		}

		pthread_mutex_lock(&st->lock);
		fl = flight_find(st, fr[i].sha256);
		if (fl && ops->background) {
			/* someone fetches it already: readahead moves on */
			pthread_mutex_unlock(&st->lock);
			i++;
			continue;
		}
		if (fl) {
			/* Someone fetches it: wait, then look in the cache again;
			 * a held request is sent now that a reader waits on it. */
			if (!deferrable && fl->q && !fl->q->sent)
				sendq_kick(fl->q);
			fl->waiters++;
			while (!fl->done)
				pthread_cond_wait(&st->cond, &st->lock);
			rc = fl->rc;
			if (--fl->waiters == 0)
				free(fl);
			pthread_mutex_unlock(&st->lock);
			if (rc == -EBADMSG) {
				share = 0; /* fetch it alone: a shared request failed */
				continue; /* the owner's TOC was wrong: try ours */
			}
			if (rc < 0)
				return rc == -ENOMEM ? rc : -EIO; /* the owner logged it */
			continue;
		}
		if (!st->readonly && nx_chunk_known_locked(st, fr[i].sha256)) {
			/* fetched and saved since our miss: read it */
			pthread_mutex_unlock(&st->lock);
			continue;
		}
		owned = calloc(j - i, 1);
		rc = owned ? 0 : -ENOMEM;
		for (k = i; rc == 0 && k < j; k++) {
			if (flight_find(st, fr[k].sha256)) {
				/* a digest repeated in this run (zeros...) rides
				 * along; one claimed elsewhere ends the run */
				uint32_t m;

				for (m = i; m < k; m++)
					if (memcmp(fr[m].sha256, fr[k].sha256, NX_SHA256_LEN) == 0)
						break;
				if (m == k)
					break;
				continue;
			}
			/* Fetched by another thread since the candidate scan?
			 * Its claim is gone, and since the chunk is saved
			 * before the claim is released, the record is there:
			 * claiming it again would fetch it twice. */
			if (k > i && !st->readonly && nx_chunk_known_locked(st, fr[k].sha256))
				break;
			rc = flight_claim(st, fr[k].sha256);
			if (rc == 0)
				owned[k - i] = NX_FR_OWNED;
		}
		if (rc == 0) {
			for (uint32_t m = i; m < k; m++)
				owned[m - i] |= NX_FR_MINE | (ops->background ? NX_FR_BG : 0);
			if (share && sendq_join(st, p, i, k - 1, owned, deferrable)) {
				pthread_mutex_unlock(&st->lock);
				free(owned);
				if (ops->background) {
					i = k;
					continue;
				}
				/* wait for our frames as for anyone's; if they
				 * do not reach the cache, fetch them alone */
				share = 0;
				continue;
			}
			if (share && deferrable)
				q = sendq_hold(st, p, i, k - 1, owned);
		}
		pthread_mutex_unlock(&st->lock);
		if (rc < 0) {
			for (uint32_t m = i; owned && m < k; m++)
				if (owned[m - i] & NX_FR_OWNED)
					flight_release(st, fr[m].sha256, rc);
			free(owned);
			return rc;
		}
		if (q && q->merged) {
			/* handed whole to the held request next to ours */
			sendq_free(q);
			if (ops->background) {
				i = k;
				continue;
			}
			share = 0;
			continue;
		}
		if (q) {
			/* our run with the ones handed to us, as one request */
			rc = fetch_run(st, p, q->first, q->last, last, q->flags, ops, ctx, &failed);
			sendq_free(q);
			if (rc < 0 && failed < i && rc != -ENOMEM && rc != -ECANCELED) {
				/* a frame handed to us, in front of ours, failed
				 * (and was logged by the walker that waits for it);
				 * ours were released undelivered: readahead leaves
				 * them to the read that wants them, a walk that
				 * needs them fetches them alone */
				if (ops->background) {
					i = k;
					continue;
				}
				share = 0;
				continue;
			}
			/* ours were delivered and one handed to us, after
			 * them, failed: the walk meets it again if it needs it */
			if (rc < 0 && failed >= k && rc != -ENOMEM && rc != -ECANCELED)
				rc = 0;
		} else {
			rc = fetch_run(st, p, i, k - 1, last, owned, ops, ctx, &failed);
			free(owned);
		}
		/* a frame that only rode along failing fails nobody: every
		 * frame asked for was delivered before it */
		if (rc < 0 && (failed <= last || rc == -ENOMEM))
			return rc;
		i = k;
	}
	return 0;
}

/* ------------------------------------------------ several runs at once */

/* The assemblers of one multi-range fetch: range i is run i. */
struct mruns {
	struct run *r;
	size_t n;
	uint8_t *ubuf; /* shared: a frame is decompressed and saved at once */
	int cancelled;
	uint64_t base; /* format 2: the NAR layer's offset in the pack */
};

static int mruns_cb(void *ctx, size_t i, uint64_t off, const void *buf, size_t len)
{
	struct mruns *m = ctx;
	struct run *r;
	int rc;

	if (i >= m->n)
		return -EIO;
	/* offsets in the pack to offsets in the NAR layer */
	if (off + len <= m->base)
		return 0;
	if (off < m->base) {
		buf = (const uint8_t *)buf + (m->base - off);
		len -= (size_t)(m->base - off);
		off = m->base;
	}
	off -= m->base;
	r = &m->r[i];
	if (r->err || r->done)
		return 0; /* a failed run's other bytes are dropped, the rest go on */
	if (!r->cbuf) {
		uint32_t cmax = 0;

		for (uint32_t k = r->first; k <= r->last; k++)
			if (r->p->toc->frames[k].clen > cmax)
				cmax = r->p->toc->frames[k].clen;
		r->cbuf = malloc(cmax ? cmax : 1);
		if (!r->cbuf) {
			r->err = -ENOMEM;
			return -ENOMEM;
		}
	}
	rc = run_cb(r, off, buf, len);
	if (r->done) {
		free(r->cbuf); /* memory for the runs in progress only */
		r->cbuf = NULL;
	}
	if (r->err == -ECANCELED) {
		m->cancelled = 1;
		return -ECANCELED; /* unmount: stop the whole transfer */
	}
	if (r->err == -ENOMEM)
		return -ENOMEM;
	return rc == NX_STOP || r->err ? 0 : rc;
}

static int cmp_run_off(const void *a, const void *b)
{
	const struct run *x = a, *y = b;
	uint64_t u = x->p->toc->frames[x->first].coff, v = y->p->toc->frames[y->first].coff;

	return u < v ? -1 : u > v;
}

int nx_frames_fetch_runs(struct nx_store *st, struct nx_spath *p, const struct nx_frun *runs,
			 size_t n)
{
	const struct nx_walk_ops bg = { .background = 1 };
	const struct nx_toc_frame *fr = p->toc->frames;
	struct mruns m = { 0 };
	struct nx_range *v = NULL;
	uint8_t *ones = NULL;
	size_t cap = 0;
	uint64_t bytes = 0;
	int rc = 0, probe;

	if (!st->src.get_ranges || n <= 1) {
		for (size_t k = 0; k < n && rc != -ECANCELED; k++)
			rc = nx_frames_walk(st, p, runs[k].first, runs[k].last, NX_BATCH_BYTES, &bg,
					    NULL);
		return rc == -ECANCELED ? rc : 0;
	}
	/* claim what is neither cached nor on its way, in runs of adjacent
	 * claimed frames (each becomes one range) */
	for (size_t k = 0; k < n && rc == 0; k++) {
		int open = 0;

		for (uint32_t i = runs[k].first; i <= runs[k].last && i < p->toc->nframes; i++) {
			struct run *cur = m.n ? &m.r[m.n - 1] : NULL;

			if (nx_bg_stopped(st)) {
				rc = -ECANCELED;
				break;
			}
			if (nx_chunk_known(st, fr[i].sha256)) {
				nx_chunk_willneed(st, fr[i].sha256);
				open = 0;
				continue;
			}
			pthread_mutex_lock(&st->lock);
			if (flight_find(st, fr[i].sha256) ||
			    (!st->readonly && nx_chunk_known_locked(st, fr[i].sha256))) {
				pthread_mutex_unlock(&st->lock);
				open = 0; /* another thread has it (or it is a repeat) */
				continue;
			}
			rc = flight_claim(st, fr[i].sha256);
			pthread_mutex_unlock(&st->lock);
			if (rc < 0)
				break;
			if (open && cur && cur->last + 1 == i && i - cur->first < NX_RUN_FRAMES &&
			    bytes + fr[i].clen <= NX_BATCH_BYTES) {
				cur->last = i;
				bytes += fr[i].clen;
				continue;
			}
			if (m.n == cap) {
				size_t nc = cap ? 2 * cap : 16;
				struct run *nr = realloc(m.r, nc * sizeof(*nr));

				if (!nr) {
					flight_release(st, fr[i].sha256, -ENOMEM);
					rc = -ENOMEM;
					break;
				}
				m.r = nr;
				cap = nc;
			}
			m.r[m.n++] = (struct run){ .st = st, .p = p, .cur = i, .first = i, .last = i,
						   .need = i, .rel = i, .ops = &bg, .quiet = 1 };
			bytes = fr[i].clen;
			open = 1;
		}
	}
	if (rc == 0 && m.n) {
		v = malloc(m.n * sizeof(*v));
		ones = malloc(NX_RUN_FRAMES);
		m.ubuf = malloc(NX_FRAME_MAX);
		if (!v || !ones || !m.ubuf)
			rc = -ENOMEM;
	}
	if (rc == 0 && m.n) {
		/* a multi-range request wants its ranges in blob order; within a
		 * group of the profile they are already */
		qsort(m.r, m.n, sizeof(*m.r), cmp_run_off);
		memset(ones, NX_FR_OWNED | NX_FR_MINE | NX_FR_BG, NX_RUN_FRAMES);
		m.base = p->man.nar_off;
		for (size_t k = 0; k < m.n; k++) {
			struct run *r = &m.r[k];

			r->flags = ones; /* every frame of a run was claimed by it */
			r->ubuf = m.ubuf;
			r->pos = fr[r->first].coff;
			v[k].off = m.base + r->pos;
			v[k].len = fr[r->last].coff + fr[r->last].clen - r->pos;
			nx_stat_add(&st->cache_misses, r->last - r->first + 1);
			for (uint32_t i = r->first; i <= r->last; i++)
				if (fr[i].clen > NX_CLEN_MAX)
					rc = -EIO;
		}
		if (rc < 0)
			nx_log(NX_LOG_ERR, "toc of %s/%.*s: a frame is too large", NX_STORE_DIR,
			       (int)p->base_len, p->base);
	}
	if (rc == 0 && m.n) {
		probe = nx_source_begin(st);
		if (probe < 0) {
			rc = probe; /* offline: the outage was logged */
		} else {
			rc = st->src.get_ranges(st->src.ctx, p->man.nar.digest, v, m.n, mruns_cb, &m);
			nx_source_end(st, probe, m.cancelled ? 0 : rc);
			if (rc < 0 && !m.cancelled)
				nx_log(NX_LOG_DEBUG, "fetch %s/%.*s: %zu runs: %s", NX_STORE_DIR,
				       (int)p->base_len, p->base, m.n, strerror(-rc));
		}
	}
	/* every claim not completed is released: -EBADMSG tells waiters to
	 * fetch the frame themselves (their TOC may be right), anything else
	 * fails them as a fetch of theirs would have */
	for (size_t k = 0; k < m.n; k++) {
		struct run *r = &m.r[k];
		int frc = r->err == -EBADMSG ? -EBADMSG : rc < 0 ? rc : r->err ? r->err : -EIO;

		if (rc == 0 && !r->err && !r->done)
			nx_log(NX_LOG_DEBUG, "fetch %s/%.*s: short answer for frames %u-%u",
			       NX_STORE_DIR, (int)p->base_len, p->base, r->first, r->last);
		for (uint32_t i = r->rel; i <= r->last; i++)
			flight_release(st, fr[i].sha256, frc);
		free(r->cbuf);
	}
	free(m.r);
	free(m.ubuf);
	free(ones);
	free(v);
	return rc == -ECANCELED || rc == -ENOMEM ? rc : 0;
}

int nx_frames_policy(const struct nx_spath *p, const char *sp)
{
	const struct nx_toc *toc = p->toc;

	for (uint32_t i = 0; i + 1 < toc->nframes; i++) {
		uint32_t u = toc->frames[i].ulen, v = toc->frames[i + 1].ulen;

		if (u >= NX_FRAME_FLOOR || (uint64_t)u + v > NX_FRAME_TARGET)
			continue;
		nx_log(NX_LOG_ERR, "toc of %s: frame %u holds %u bytes, below the %u-byte floor "
		       "(%u frames for %llu bytes); refusing the path: push it again with "
		       "nixoci push", sp, i, u, NX_FRAME_FLOOR, toc->nframes,
		       (unsigned long long)toc->nar_size);
		return -EIO;
	}
	return 0;
}

/* ------------------------------------------------- full verification */

struct verify {
	struct nx_spath *p;
	uint8_t *saved; /* saved[i]: frame i was brought into the cache by this walk */
	struct nx_sha256 h;
	struct nx_nar_parser *parser;
	uint32_t stack[NX_NAR_DEPTH_MAX + 2];
	uint64_t nodes;
	const char *why;
};

static int verify_data(void *ctx, uint32_t i, const uint8_t *buf, size_t len)
{
	struct verify *v = ctx;
	int rc;

	nx_sha256_update(&v->h, buf, len);
	rc = nx_nar_parser_feed(v->parser, buf, len);
	if (rc < 0 && !v->why)
		v->why = "the NAR is malformed";
	return rc < 0 ? -EIO : 0;
}

static void verify_saved(void *ctx, uint32_t i)
{
	struct verify *v = ctx;

	v->saved[i] = 1;
}

/* 1 if a loaded path other than @p lists frame digest @d. */
static int listed_elsewhere(struct nx_store *st, const struct nx_spath *p,
			    const uint8_t d[NX_SHA256_LEN])
{
	int found = 0;

	pthread_mutex_lock(&st->lock);
	for (const struct nx_spath *q = st->all; q && !found; q = q->next_all) {
		if (q == p || !q->toc)
			continue;
		for (uint32_t i = 0; i < q->toc->nframes; i++) {
			if (memcmp(q->toc->frames[i].sha256, d, NX_SHA256_LEN) == 0) {
				found = 1;
				break;
			}
		}
	}
	pthread_mutex_unlock(&st->lock);
	return found;
}

/*
 * A refused path keeps nothing of itself in the cache, and takes nothing
 * from anyone else: only frames this verification brought in are dropped,
 * and of those only the ones no loaded path lists. A frame that was cached
 * before belongs to whoever fetched it (a good path sharing the frame, a
 * path that was loaded in an earlier run): its bytes verified against their
 * digest, so a hostile TOC listing the same digest says nothing about them.
 * (A path that loads at the same moment and needs one of the dropped frames
 * fetches it again; that costs a transfer, never correctness.)
 */
static void drop_own_frames(struct nx_store *st, const struct verify *v)
{
	const struct nx_toc *toc = v->p->toc;

	for (uint32_t i = 0; i < toc->nframes; i++)
		if (v->saved[i] && !listed_elsewhere(st, v->p, toc->frames[i].sha256))
			nx_chunk_drop(st, toc->frames[i].sha256);
}

/* Each NAR node must be the TOC entry at the same path, with equal fields;
 * with equal counts, that makes the TOC exactly the NAR's tree. */
static int verify_node(void *ctx, const struct nx_nar_node *n)
{
	struct verify *v = ctx;
	const struct nx_toc *toc = v->p->toc;
	const struct nx_toc_entry *e;
	int64_t idx = 0;

	if (n->depth > NX_NAR_DEPTH_MAX)
		goto bad;
	if (n->depth > 0) {
		idx = nx_toc_lookup(toc, v->stack[n->depth - 1], n->name, n->name_len);
		if (idx < 0)
			goto bad;
	}
	e = &toc->entries[idx];
	if (e->type != (uint8_t)n->type)
		goto bad;
	switch (n->type) {
	case NX_NODE_REGULAR:
		if (!!e->executable != !!n->executable || e->size != n->size ||
		    e->off != n->contents_off)
			goto bad;
		break;
	case NX_NODE_SYMLINK: {
		size_t tlen;
		const char *t = nx_toc_target(toc, (uint32_t)idx, &tlen);

		if (!t || tlen != n->size || memcmp(t, n->target, tlen) != 0)
			goto bad;
		break;
	}
	case NX_NODE_DIRECTORY:
		v->stack[n->depth] = (uint32_t)idx;
		break;
	default:
		goto bad;
	}
	v->nodes++;
	return 0;
bad:
	if (!v->why)
		v->why = "the NAR does not match the TOC";
	return -EIO;
}

int nx_verify_nar(struct nx_store *st, struct nx_spath *p)
{
	struct verify v = { .p = p };
	struct nx_nar_sink sink = { .ctx = &v, .node = verify_node };
	struct nx_walk_ops ops = { .data = verify_data, .saved = verify_saved };
	uint8_t got[NX_SHA256_LEN];
	int rc;

	rc = nx_sha256_init(&v.h);
	if (rc < 0)
		return rc;
	rc = nx_nar_parser_new(&v.parser, &sink);
	if (rc < 0) {
		nx_sha256_release(&v.h);
		return rc;
	}
	v.saved = calloc(p->toc->nframes, 1);
	if (!v.saved) {
		nx_nar_parser_free(v.parser);
		nx_sha256_release(&v.h);
		return -ENOMEM;
	}
	rc = nx_frames_walk(st, p, 0, p->toc->nframes - 1, NX_BATCH_BYTES, &ops, &v);
	if (rc == 0 && nx_nar_parser_finish(v.parser) < 0) {
		v.why = "the NAR is truncated or malformed";
		rc = -EIO;
	}
	nx_nar_parser_free(v.parser);
	nx_sha256_final(&v.h, got);
	if (rc == 0 && v.nodes != p->toc->nentries) {
		v.why = "the NAR does not match the TOC";
		rc = -EIO;
	}
	if (rc == 0 && memcmp(got, p->man.info.nar_hash, NX_SHA256_LEN) != 0) {
		v.why = "NarHash mismatch";
		rc = -EIO;
	}
	if (rc < 0 && v.why) {
		/* the content contradicts what was signed: refuse the path, and
		 * drop what this walk cached for it and only that */
		drop_own_frames(st, &v);
		nx_stat_add(&st->verify_failures, 1);
		nx_log(NX_LOG_ERR, "verify %s: %s; refusing it", p->man.info.store_path, v.why);
		rc = -EACCES;
	}
	free(v.saved);
	return rc;
}
