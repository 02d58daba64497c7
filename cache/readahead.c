/*
 * cache/readahead.c: fetching ahead of sequential readers.
 *
 * Each open file has a struct nx_reader. A read that starts near where the
 * previous ones ended (NX_RA_SLACK: the kernel's own readahead requests run
 * in parallel and arrive out of order) extends a sequential run; any other
 * read is a seek and resets it. Once a run holds two frames' worth of bytes,
 * the next NX_RA_MIN frames after the read are queued; each time the reader
 * has consumed half of what is queued ahead of it, the window doubles (up to
 * st->ra_max frames and NX_RA_MAX_BYTES compressed) and the next window is
 * queued. Random readers never get past the first condition, so they cost
 * nothing.
 *
 * Jobs go to a short queue served by NX_RA_THREADS threads, started on the
 * first job (tools that never read through a reader never start them). A
 * worker walks the job's frames in background mode: frames cached or being
 * fetched by anyone are skipped, the rest are claimed in the in-flight table
 * like a read's (so a reader arriving at such a frame waits for that one
 * fetch rather than making a second), and the fetch layer's pool bounds the
 * transfers. A full queue drops the job: the reader then fetches those
 * frames itself, which is slower but correct. nx_ra_stop drops queued jobs,
 * makes running ones give up at the next frame or buffer, and joins.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_i.h"

/* Bytes a run must hold before it counts as sequential. */
#define NX_RA_TRIGGER (2 * (uint64_t)NX_FRAME_MAX)

int nx_reader_new(struct nx_reader **out)
{
	struct nx_reader *rd = calloc(1, sizeof(*rd));

	if (!rd)
		return -ENOMEM;
	pthread_mutex_init(&rd->lock, NULL);
	*out = rd;
	return 0;
}

void nx_reader_free(struct nx_reader *rd)
{
	if (!rd)
		return;
	pthread_mutex_destroy(&rd->lock);
	free(rd);
}

int nx_reader_failed(struct nx_store *st, struct nx_reader *rd, struct nx_spath *p,
		     uint32_t entry)
{
	int hit;

	pthread_mutex_lock(&rd->lock);
	/* Any range of the same file: after a failed request the kernel
	 * retries page by page, and its readahead asks for neighbouring
	 * ranges, all of which would otherwise each wait a full timeout. */
	hit = rd->fail_ns && rd->fail_p == p && rd->fail_entry == entry &&
	      nx_now_ns() - rd->fail_ns < NX_RA_FAIL_NS;
	if (!hit)
		rd->fail_ns = 0;
	pthread_mutex_unlock(&rd->lock);
	return hit;
}

void nx_reader_fail(struct nx_store *st, struct nx_reader *rd, struct nx_spath *p,
		    uint32_t entry)
{
	pthread_mutex_lock(&rd->lock);
	rd->fail_ns = nx_now_ns();
	rd->fail_p = p;
	rd->fail_entry = entry;
	pthread_mutex_unlock(&rd->lock);
}

static void ra_run(struct nx_store *st, const struct nx_ra_job *j)
{
	const struct nx_walk_ops ops = { .background = 1 };
	int rc;

	rc = nx_frames_walk(st, j->p, j->first, j->last, NX_BATCH_BYTES, &ops, NULL);
	if (rc < 0 && rc != -ECANCELED)
		nx_log(NX_LOG_DEBUG, "readahead of %s/%s frames %u-%u: %s", NX_STORE_DIR,
		       j->p->base, j->first, j->last, rc == -EIO ? "failed" : "gave up");
}

static void *ra_main(void *arg)
{
	struct nx_store *st = arg;
	struct nx_ra_job *j;

	pthread_mutex_lock(&st->lock);
	for (;;) {
		while (!st->ra_head && !st->ra_stop)
			pthread_cond_wait(&st->ra_cond, &st->lock);
		if (st->ra_stop)
			break;
		j = st->ra_head;
		st->ra_head = j->next;
		if (!st->ra_head)
			st->ra_tail = NULL;
		st->ra_queued--;
		pthread_mutex_unlock(&st->lock);
		ra_run(st, j);
		nx_spath_put(j->p);
		free(j);
		pthread_mutex_lock(&st->lock);
	}
	pthread_mutex_unlock(&st->lock);
	return NULL;
}

static void ra_queue(struct nx_store *st, struct nx_spath *p, uint32_t first, uint32_t last)
{
	struct nx_ra_job *j = calloc(1, sizeof(*j));

	if (!j)
		return;
	j->p = p;
	j->first = first;
	j->last = last;
	nx_spath_get(p); /* the job uses its TOC: the reader's reference covers only the read */
	pthread_mutex_lock(&st->lock);
	if (st->ra_stop || st->ra_queued >= NX_RA_QUEUE) {
		pthread_mutex_unlock(&st->lock);
		nx_spath_put(p);
		free(j);
		return;
	}
	/* Threads inherit the caller's signal mask; libfuse's workers block
	 * the signals the session handles, which is what a helper wants. */
	while (st->ra_nthreads < NX_RA_THREADS) {
		if (pthread_create(&st->ra_threads[st->ra_nthreads], NULL, ra_main, st) != 0)
			break;
		st->ra_nthreads++;
	}
	if (!st->ra_nthreads) {
		pthread_mutex_unlock(&st->lock);
		nx_spath_put(p);
		free(j);
		return;
	}
	if (st->ra_tail)
		st->ra_tail->next = j;
	else
		st->ra_head = j;
	st->ra_tail = j;
	st->ra_queued++;
	pthread_cond_signal(&st->ra_cond);
	pthread_mutex_unlock(&st->lock);
}

void nx_ra_stop(struct nx_store *st)
{
	struct nx_ra_job *j, *dropped;
	unsigned n;

	pthread_mutex_lock(&st->lock);
	__atomic_store_n(&st->ra_stop, 1, __ATOMIC_RELAXED);
	dropped = st->ra_head;
	st->ra_head = NULL;
	st->ra_tail = NULL;
	st->ra_queued = 0;
	n = st->ra_nthreads;
	st->ra_nthreads = 0;
	pthread_cond_broadcast(&st->ra_cond);
	pthread_mutex_unlock(&st->lock);
	while ((j = dropped)) {
		dropped = j->next;
		nx_spath_put(j->p); /* takes st->lock */
		free(j);
	}
	for (unsigned i = 0; i < n; i++)
		pthread_join(st->ra_threads[i], NULL);
}

void nx_ra_after_read(struct nx_store *st, struct nx_reader *rd, struct nx_spath *p,
		      uint32_t entry, uint64_t off, uint64_t len, uint32_t last)
{
	const struct nx_toc *toc = p->toc;
	const struct nx_toc_entry *e = &toc->entries[entry];
	uint64_t end = off + len, bytes = 0;
	uint32_t ffirst, flast, start = 0, stop = 0, win;
	int go = 0;

	if (!st->ra_max || nx_toc_frames_for(toc, e->off, e->size, &ffirst, &flast) < 0)
		return;
	pthread_mutex_lock(&rd->lock);
	if (rd->p != p || rd->entry != entry) {
		rd->p = p;
		rd->entry = entry;
		rd->end = rd->seq = 0;
		rd->win = rd->ra_next = 0;
	}
	if (off + NX_RA_SLACK >= rd->end && off <= rd->end + NX_FRAME_MAX) {
		if (end > rd->end) {
			rd->seq += end - (off > rd->end ? off : rd->end);
			rd->end = end;
		}
	} else {
		/* a seek: start over */
		rd->end = end;
		rd->seq = len;
		rd->win = rd->ra_next = 0;
	}
	if (rd->seq >= NX_RA_TRIGGER && last < flast) {
		uint32_t ahead = rd->ra_next > last ? rd->ra_next - last - 1 : 0;

		if (!rd->win || ahead <= rd->win / 2) {
			win = rd->win ? rd->win * 2 : NX_RA_MIN;
			if (win > st->ra_max)
				win = st->ra_max;
			rd->win = win;
			start = rd->ra_next > last + 1 ? rd->ra_next : last + 1;
			for (stop = start; stop <= flast && stop - start < win; stop++) {
				bytes += toc->frames[stop].clen;
				if (bytes > NX_RA_MAX_BYTES && stop > start)
					break;
			}
			if (stop > start) {
				rd->ra_next = stop;
				go = 1;
			}
		}
	}
	pthread_mutex_unlock(&rd->lock);
	if (go)
		ra_queue(st, p, start, stop - 1);
}

/* ------------------------------------------------ larger reads on a miss */

uint32_t nx_ra_extend(struct nx_store *st, struct nx_spath *p, uint32_t entry, uint32_t last)
{
	const struct nx_toc *toc = p->toc;
	const struct nx_toc_entry *e = &toc->entries[entry];
	uint32_t ffirst, flast;

	/* A small file is nearly always read whole (an interpreter's module,
	 * a configuration file, a script): its other frames come in the same
	 * request as the first miss instead of one round trip each. */
	if (!st->ra_max || e->size > NX_SMALL_FILE ||
	    nx_toc_frames_for(toc, e->off, e->size, &ffirst, &flast) < 0 || flast < last)
		return last;
	return flast;
}

static uint64_t le(const uint8_t *b, unsigned n)
{
	uint64_t v = 0;

	while (n--)
		v = (v << 8) | b[n];
	return v;
}

/*
 * The file range [*lo, *hi) that an ELF's PT_LOAD segments cover, from the
 * first @len bytes of the file. Untrusted input: every offset and count is
 * checked against @len and @size, and anything unexpected is "not an ELF"
 * (-EINVAL); it is only a hint for what to fetch, never used to serve.
 */
int nx_elf_load_range(const uint8_t *b, size_t len, uint64_t size, uint64_t *lo, uint64_t *hi)
{
	uint64_t phoff, l = UINT64_MAX, h = 0;
	unsigned phnum, phent, is64;

	if (len < 52 || memcmp(b, "\177ELF", 4) != 0 || b[5] != 1 /* little-endian */)
		return -EINVAL;
	is64 = b[4] == 2;
	if (!is64 && b[4] != 1)
		return -EINVAL;
	if (is64 && len < 64)
		return -EINVAL;
	phoff = is64 ? le(b + 32, 8) : le(b + 28, 4);
	phent = (unsigned)le(b + (is64 ? 54 : 42), 2);
	phnum = (unsigned)le(b + (is64 ? 56 : 44), 2);
	if (phent != (is64 ? 56u : 32u) || phnum == 0 || phnum > NX_ELF_PHNUM_MAX ||
	    phoff > len || (uint64_t)phnum * phent > len - phoff)
		return -EINVAL;
	for (unsigned i = 0; i < phnum; i++) {
		const uint8_t *ph = b + phoff + (uint64_t)i * phent;
		uint64_t off, fsz;

		if (le(ph, 4) != 1 /* PT_LOAD */)
			continue;
		off = is64 ? le(ph + 8, 8) : le(ph + 4, 4);
		fsz = is64 ? le(ph + 32, 8) : le(ph + 16, 4);
		if (off >= size || fsz == 0)
			continue;
		if (fsz > size - off)
			fsz = size - off;
		if (off < l)
			l = off;
		if (off + fsz > h)
			h = off + fsz;
	}
	if (l >= h)
		return -EINVAL;
	*lo = l;
	*hi = h;
	return 0;
}

void nx_ra_after_data(struct nx_store *st, struct nx_reader *rd, struct nx_spath *p,
		      uint32_t entry, uint64_t off, const uint8_t *buf, size_t len)
{
	const struct nx_toc *toc = p->toc;
	const struct nx_toc_entry *e = &toc->entries[entry];
	uint64_t lo, hi, bytes = 0;
	uint32_t first, last;
	int go;

	if (!st->ra_max || off != 0 || len < 64 || memcmp(buf, "\177ELF", 4) != 0)
		return;
	/* once per open file: the loader reads the header once, the kernel
	 * may read it again in a readahead request */
	pthread_mutex_lock(&rd->lock);
	go = !(rd->elf_done && rd->elf_p == p && rd->elf_entry == entry);
	rd->elf_done = 1;
	rd->elf_p = p;
	rd->elf_entry = entry;
	pthread_mutex_unlock(&rd->lock);
	if (!go || nx_elf_load_range(buf, len, e->size, &lo, &hi) < 0 ||
	    nx_toc_frames_for(toc, e->off + lo, hi - lo, &first, &last) < 0)
		return;
	for (uint32_t i = first; i <= last; i++)
		bytes += toc->frames[i].clen;
	/* A library's loadable segments are what its page faults will read,
	 * one round trip each: fetch them in the background now, in runs of
	 * one request. A large one (a JIT's or a browser's) is read sparsely,
	 * and fetching it whole would cost laziness: it is left to faults
	 * and the sequential readahead. */
	if (bytes > NX_ELF_MAX_BYTES)
		return;
	nx_log(NX_LOG_DEBUG, "readahead: %s/%s entry %u: elf segments, frames %u-%u", NX_STORE_DIR,
	       p->base, entry, first, last);
	ra_queue(st, p, first, last);
}
