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
 *
 * Completions of mostly read files (complete.c) are jobs too, on a list of
 * their own: a worker takes one only when no other job waits, and only one
 * runs at a time, so they never hold up a reader's readahead.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_i.h"

/* Bytes a run must hold before it counts as sequential. */
#define NX_RA_TRIGGER (2 * (uint64_t)NX_FRAME_MAX)
/* A read this large right after the last one is the kernel's readahead
 * window (a program's own reads are rarely this large). */
#define NX_RA_WINDOW_MIN (UINT64_C(512) << 10)

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

	if (j->complete) {
		nx_complete_run(st, j->p, j->entry);
		return;
	}
	if (j->elf) {
		nx_elf_job(st, j->p, j->entry, j->depth, j->hint);
		return;
	}
	if (j->pyc) {
		nx_pyc_job(st, j->p, j->entry);
		return;
	}
	rc = nx_frames_walk(st, j->p, j->first, j->last, NX_BATCH_BYTES, &ops, NULL);
	if (rc < 0 && rc != -ECANCELED)
		nx_log(NX_LOG_DEBUG, "readahead of %s/%s frames %u-%u: %s", NX_STORE_DIR,
		       j->p->base, j->first, j->last, rc == -EIO ? "failed" : "gave up");
}

static void *ra_main(void *arg)
{
	struct nx_store *st = arg;
	struct nx_ra_job *j;

	nx_walk_deferrable = 1; /* no reader waits on a worker's walk */
	pthread_mutex_lock(&st->lock);
	for (;;) {
		int low = 0;

		/* a completion only when no other job waits, one at a time */
		while (!st->ra_head && !(st->ra_low_head && !st->ra_low_running) && !st->ra_stop)
			pthread_cond_wait(&st->ra_cond, &st->lock);
		if (st->ra_stop)
			break;
		if (st->ra_head) {
			j = st->ra_head;
			st->ra_head = j->next;
			if (!st->ra_head)
				st->ra_tail = NULL;
			st->ra_queued--;
		} else {
			j = st->ra_low_head;
			st->ra_low_head = j->next;
			if (!st->ra_low_head)
				st->ra_low_tail = NULL;
			st->ra_low_queued--;
			st->ra_low_running = low = 1;
		}
		pthread_mutex_unlock(&st->lock);
		ra_run(st, j);
		nx_spath_put(j->p);
		free(j);
		pthread_mutex_lock(&st->lock);
		if (low) {
			st->ra_low_running = 0;
			if (st->ra_low_head)
				pthread_cond_signal(&st->ra_cond);
		}
	}
	pthread_mutex_unlock(&st->lock);
	return NULL;
}

/* Starts the workers (st->lock held); 0 if there are none. */
static unsigned ra_start_locked(struct nx_store *st)
{
	while (st->ra_nthreads < NX_RA_THREADS) {
		if (pthread_create(&st->ra_threads[st->ra_nthreads], NULL, ra_main, st) != 0)
			break;
		st->ra_nthreads++;
	}
	return st->ra_nthreads;
}

static void ra_push(struct nx_store *st, struct nx_ra_job *j)
{
	struct nx_spath *p = j->p;

	nx_spath_get(p); /* the job uses its TOC: the reader's reference covers only the read */
	pthread_mutex_lock(&st->lock);
	if (st->ra_stop || st->ra_queued >= NX_RA_QUEUE) {
		pthread_mutex_unlock(&st->lock);
		nx_log(NX_LOG_DEBUG, "readahead: queue full, a job for %s/%s dropped", NX_STORE_DIR,
		       p->base);
		nx_spath_put(p);
		free(j);
		return;
	}
	/* Threads inherit the caller's signal mask; libfuse's workers block
	 * the signals the session handles, which is what a helper wants. */
	if (!ra_start_locked(st)) {
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

static void ra_queue(struct nx_store *st, struct nx_spath *p, uint32_t first, uint32_t last)
{
	struct nx_ra_job *j = calloc(1, sizeof(*j));

	if (!j)
		return;
	j->p = p;
	j->first = first;
	j->last = last;
	ra_push(st, j);
}

void nx_ra_queue_frames(struct nx_store *st, struct nx_spath *p, uint32_t first, uint32_t last)
{
	ra_queue(st, p, first, last);
}

void nx_ra_queue_elf(struct nx_store *st, struct nx_spath *p, uint32_t entry, unsigned depth,
		     unsigned hint)
{
	struct nx_ra_job *j = calloc(1, sizeof(*j));

	if (!j)
		return;
	j->p = p;
	j->elf = 1;
	j->entry = entry;
	j->depth = depth;
	j->hint = hint;
	ra_push(st, j);
}

void nx_ra_queue_pyc(struct nx_store *st, struct nx_spath *p, uint32_t entry)
{
	struct nx_ra_job *j = calloc(1, sizeof(*j));

	if (!j)
		return;
	j->p = p;
	j->pyc = 1;
	j->entry = entry;
	ra_push(st, j);
}

void nx_ra_stop(struct nx_store *st)
{
	struct nx_ra_job *j, *dropped;
	unsigned n;

	pthread_mutex_lock(&st->lock);
	__atomic_store_n(&st->ra_stop, 1, __ATOMIC_RELAXED);
	dropped = st->ra_head;
	if (st->ra_tail)
		st->ra_tail->next = st->ra_low_head;
	else
		dropped = st->ra_low_head;
	st->ra_head = NULL;
	st->ra_tail = NULL;
	st->ra_queued = 0;
	st->ra_low_head = st->ra_low_tail = NULL;
	st->ra_low_queued = 0;
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

int nx_ra_queue_complete(struct nx_store *st, struct nx_spath *p, uint32_t entry)
{
	struct nx_ra_job *j = calloc(1, sizeof(*j));

	if (!j)
		return -ENOMEM;
	j->p = p;
	j->entry = entry;
	j->complete = 1;
	nx_spath_get(p);
	pthread_mutex_lock(&st->lock);
	if (st->ra_stop || st->ra_low_queued >= NX_RA_QUEUE || !ra_start_locked(st)) {
		pthread_mutex_unlock(&st->lock);
		nx_spath_put(p);
		free(j);
		return -EAGAIN;
	}
	if (st->ra_low_tail)
		st->ra_low_tail->next = j;
	else
		st->ra_low_head = j;
	st->ra_low_tail = j;
	st->ra_low_queued++;
	pthread_cond_signal(&st->ra_cond);
	pthread_mutex_unlock(&st->lock);
	return 0;
}

void nx_ra_after_read(struct nx_store *st, struct nx_reader *rd, struct nx_spath *p,
		      uint32_t entry, uint64_t off, uint64_t len, uint32_t last)
{
	const struct nx_toc *toc = p->toc;
	const struct nx_toc_entry *e = &toc->entries[entry];
	uint64_t end = off + len, bytes = 0;
	uint32_t ffirst, flast, start = 0, stop = 0, win;
	int go = 0, kernel = 0;

	if (!st->ra_max || nx_toc_frames_for(toc, e->off, e->size, &ffirst, &flast) < 0)
		return;
	pthread_mutex_lock(&rd->lock);
	if (rd->p != p || rd->entry != entry) {
		rd->p = p;
		rd->entry = entry;
		rd->end = rd->seq = 0;
		rd->win = rd->ra_next = 0;
		rd->seeks = 0;
		rd->whole_done = 0;
	}
	/* The kernel's own read-around of a mapping or a sequential read:
	 * a large read that starts exactly where the last one ended. The
	 * next window it asks for follows at once (java's jimage index: two
	 * such reads of 1 MiB, each one request, before 2 MiB were read). */
	if (rd->end && off == rd->end && len >= NX_RA_WINDOW_MIN)
		kernel = 1;
	if (off + NX_RA_SLACK >= rd->end && off <= rd->end + NX_FRAME_MAX) {
		if (end > rd->end) {
			rd->seq += end - (off > rd->end ? off : rd->end);
			rd->end = end;
		}
	} else {
		/* a seek: start over (a jump counts only after a read: a
		 * first read anywhere is not one) */
		if (rd->end)
			rd->seeks++;
		rd->end = end;
		rd->seq = len;
		rd->win = rd->ra_next = 0;
	}
	if ((rd->seq >= NX_RA_TRIGGER || kernel) && last < flast) {
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
 * The file range [*lo, *hi) that an ELF's PT_LOAD segments cover, and up
 * to NX_FAULT_AROUND bytes past them, from the first @len bytes of the file. Untrusted input: every offset and count is
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
	/* A page fault near the end of the last segment has the kernel read
	 * around it, up to its largest read past the segment (libjvm.so's
	 * last 1 MiB read went past it: one more round trip after the 7 MB
	 * of segments). */
	h = size - h > NX_FAULT_AROUND ? h + NX_FAULT_AROUND : size;
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

/* ------------------------------------------------------ predicting misses */

/* An executable, or a name like libfoo.so or libfoo.so.1.2: what a loader
 * opens and then reads by page faults across its loadable segments. */
static int looks_elf(const struct nx_toc *toc, uint32_t entry)
{
	size_t n = 0;
	const char *name = nx_toc_name(toc, entry, &n);

	if (toc->entries[entry].executable)
		return 1;
	for (size_t i = 0; name && i + 3 <= n; i++)
		if (memcmp(name + i, ".so", 3) == 0 && (i + 3 == n || name[i + 3] == '.'))
			return 1;
	return 0;
}

/* The ending of a name: from its first dot (not a leading one) on, "" if
 * it has none. Files of one kind in one directory share it (modules
 * ".cpython-311.pyc", extensions ".cpython-311-x86_64-linux-gnu.so"). */
static const char *name_ending(const struct nx_toc *toc, uint32_t entry, size_t *len)
{
	size_t n = 0;
	const char *name = nx_toc_name(toc, entry, &n);
	const char *dot = name && n > 1 ? memchr(name + 1, '.', n - 1) : NULL;

	*len = dot ? n - (size_t)(dot - name) : 0;
	return dot ? dot : "";
}

static int same_ending(const struct nx_toc *toc, uint32_t a, uint32_t b)
{
	size_t la, lb;
	const char *ea = name_ending(toc, a, &la), *eb = name_ending(toc, b, &lb);

	return la == lb && memcmp(ea, eb, la) == 0;
}

/* A shared library's ending: ".so", or ".so." and a version. A loader opens
 * the libraries its ELF files name, one by one: which others of their
 * directory it opens the directory does not tell (an interpreter's
 * extension modules, ".cpython-311-x86_64-linux-gnu.so", are modules). */
static int library_ending(const char *end, size_t len)
{
	if (len < 3 || memcmp(end, ".so", 3) != 0)
		return 0;
	for (size_t i = 3; i < len; i++)
		if (end[i] != '.' && (end[i] < '0' || end[i] > '9'))
			return 0;
	return 1;
}

/* 1 when @file is the second file of directory @dir of @p to miss with the
 * ending of one of the last files that missed there: the first miss of a
 * kind is remembered, the second one predicts (once per directory). */
static int dir_second_miss(struct nx_store *st, const struct nx_spath *p, uint32_t dir,
			   uint32_t file)
{
	const struct nx_toc *toc = p->toc;
	struct nx_dirmiss *d = NULL;
	const char *end;
	size_t len;
	int go = 0;

	end = name_ending(toc, file, &len);
	if (library_ending(end, len))
		return 0;
	pthread_mutex_lock(&st->lock);
	for (unsigned i = 0; i < NX_DIRMISS_SLOTS && !d; i++)
		if (st->dirmiss[i].p == p && st->dirmiss[i].dir == dir)
			d = &st->dirmiss[i];
	if (!d) {
		d = &st->dirmiss[st->dirmiss_next++ % NX_DIRMISS_SLOTS];
		memset(d, 0, sizeof(*d));
		d->p = p;
		d->dir = dir;
	}
	for (unsigned i = 0; i < d->nfile && i < 4 && !d->done; i++) {
		if (d->file[i] == file)
			break;
		if (same_ending(toc, d->file[i], file))
			go = d->done = 1;
	}
	/* A directory's first miss of an ending predicts when files of that ending
	 * predicted in another directory of the same store path already: a
	 * program that imports by groups (an interpreter's packages) reads
	 * more than one file of each package it enters. */
	for (unsigned i = 0; i < NX_PRED_ENDINGS && !d->done; i++) {
		const struct nx_pred_ending *pe = &st->pred_end[i];

		if (pe->p == p && pe->len == len && memcmp(pe->end, end, len) == 0)
			go = d->done = 1;
	}
	if (go && len <= NX_PRED_ENDING_MAX) {
		unsigned i;

		for (i = 0; i < NX_PRED_ENDINGS; i++)
			if (st->pred_end[i].p == p && st->pred_end[i].len == len &&
			    memcmp(st->pred_end[i].end, end, len) == 0)
				break;
		if (i == NX_PRED_ENDINGS) {
			struct nx_pred_ending *pe = &st->pred_end[st->pred_end_next++ % NX_PRED_ENDINGS];

			pe->p = p;
			pe->len = len;
			memcpy(pe->end, end, len);
		}
	}
	if (!d->done)
		d->file[d->nfile++ % 4] = file;
	pthread_mutex_unlock(&st->lock);
	return go;
}

/* Queues frames fr[lo..hi] (ascending) in runs of adjacent frames, leaving
 * out [skip_a, skip_b]: the triggering read fetches those itself, and
 * must not wait behind a job's transfer for them. */
static void queue_frames(struct nx_store *st, struct nx_spath *p, const uint32_t *fr, size_t lo,
			 size_t hi, uint32_t skip_a, uint32_t skip_b)
{
	size_t k = lo;

	while (k <= hi) {
		size_t j = k;

		if (fr[k] >= skip_a && fr[k] <= skip_b) {
			k++;
			continue;
		}
		while (j < hi && fr[j + 1] == fr[j] + 1 && !(fr[j + 1] >= skip_a && fr[j + 1] <= skip_b))
			j++;
		ra_queue(st, p, fr[k], fr[j]);
		k = j + 1;
	}
}

/* Takes @bytes of the mount's prediction budget for entry @entry of @p: 0,
 * or -ENOSPC (logged at debug level) when they do not fit. A program that
 * reads one or two files of many directories (a scan) must not fetch every
 * directory: predictions of a mount stay within NX_PRED_FREE plus the bytes
 * that were fetched otherwise. */
int nx_pred_budget_take(struct nx_store *st, const struct nx_spath *p, uint32_t entry,
			uint64_t bytes)
{
	uint64_t fetched = nx_stat_get(&st->bytes_fetched), room;

	pthread_mutex_lock(&st->lock);
	room = NX_PRED_FREE + (fetched > st->pred_bytes ? fetched - st->pred_bytes : 0);
	if (st->pred_bytes + bytes > room) {
		pthread_mutex_unlock(&st->lock);
		nx_log(NX_LOG_DEBUG, "predict: %s/%s entry %u: over the prediction budget",
		       NX_STORE_DIR, p->base, entry);
		return -ENOSPC;
	}
	st->pred_bytes += bytes;
	pthread_mutex_unlock(&st->lock);
	return 0;
}

static void predict_dir(struct nx_store *st, struct nx_spath *p, uint32_t entry, uint32_t first,
			uint32_t ext)
{
	const struct nx_toc *toc = p->toc;
	const struct nx_toc_entry *d = &toc->entries[toc->entries[entry].parent];
	uint64_t bytes;
	size_t n = 0, m, lo, hi;
	uint32_t *fr, a, b;
	int grew;

	if (d->type != NX_NODE_DIRECTORY || !d->nchildren)
		return;
	fr = malloc(NX_RUN_FRAMES * sizeof(*fr));
	if (!fr)
		return;
	/* the frames of its small files, in NAR order (ascending) */
	for (uint32_t c = d->first_child; c - d->first_child < d->nchildren && n < NX_RUN_FRAMES;
	     c++) {
		const struct nx_toc_entry *e = &toc->entries[c];

		if (e->type != NX_NODE_REGULAR || !e->size || e->size > NX_SMALL_FILE ||
		    !same_ending(toc, c, entry) ||
		    nx_toc_frames_for(toc, e->off, e->size, &a, &b) < 0)
			continue;
		for (uint32_t i = a; i <= b && n < NX_RUN_FRAMES; i++)
			if (!n || fr[n - 1] < i)
				fr[n++] = i;
	}
	if (!n)
		goto out;
	/* a window of at most NX_DIR_MAX_BYTES around the miss */
	for (m = 0; m + 1 < n && fr[m] < first; m++)
		;
	lo = hi = m;
	bytes = toc->frames[fr[m]].clen;
	do {
		grew = 0;
		if (hi + 1 < n && bytes + toc->frames[fr[hi + 1]].clen <= NX_DIR_MAX_BYTES) {
			bytes += toc->frames[fr[++hi]].clen;
			grew = 1;
		}
		if (lo > 0 && bytes + toc->frames[fr[lo - 1]].clen <= NX_DIR_MAX_BYTES) {
			bytes += toc->frames[fr[--lo]].clen;
			grew = 1;
		}
	} while (grew);
	if (nx_pred_budget_take(st, p, entry, bytes) < 0)
		goto out;
	nx_log(NX_LOG_DEBUG, "predict: %s/%s entry %u: second miss of a kind in its directory, frames %u-%u",
	       NX_STORE_DIR, p->base, entry, fr[lo], fr[hi]);
	queue_frames(st, p, fr, lo, hi, first, ext);
out:
	free(fr);
}

void nx_ra_pred_elf_start(struct nx_store *st, struct nx_spath *p, uint32_t entry, uint32_t ext)
{
	const struct nx_toc *toc = p->toc;
	const struct nx_toc_entry *e = &toc->entries[entry];
	uint64_t bytes = 0;
	uint32_t a, b;

	if (nx_toc_frames_for(toc, e->off, e->size, &a, &b) < 0 || b <= ext)
		return;
	for (uint32_t i = ext + 1; i <= b && bytes <= NX_PRED_ELF_BYTES; i++)
		bytes += toc->frames[i].clen;
	if (bytes > NX_PRED_ELF_BYTES)
		return;
	nx_log(NX_LOG_DEBUG, "predict: %s/%s entry %u: start of a loadable file, frames %u-%u",
	       NX_STORE_DIR, p->base, entry, ext + 1, b);
	ra_queue(st, p, ext + 1, b);
}

/*
 * A read that jumped away from the one before in a file of at most
 * NX_PRED_WHOLE_BYTES compressed: a mapped file (a JVM's class data archive,
 * 13 MB read at a dozen places by page faults, each one round trip when
 * the sequential readahead starts over at every jump). Its rest goes now,
 * after the read's own frames [first, ext] and then from the start, in
 * jobs the workers send in parallel, so the faults after this one find
 * their frames on the way. Once per open file, within the budget of
 * predictions.
 */
static void predict_whole(struct nx_store *st, struct nx_reader *rd, struct nx_spath *p,
			  uint32_t entry, uint32_t first, uint32_t ext)
{
	const struct nx_toc *toc = p->toc;
	const struct nx_toc_entry *e = &toc->entries[entry];
	uint64_t bytes = 0;
	uint32_t a, b;
	int go;

	if (e->size <= NX_SMALL_FILE || nx_toc_frames_for(toc, e->off, e->size, &a, &b) < 0 ||
	    first < a || ext > b)
		return;
	pthread_mutex_lock(&rd->lock);
	go = rd->p == p && rd->entry == entry && rd->seeks && !rd->whole_done;
	if (go)
		rd->whole_done = 1;
	pthread_mutex_unlock(&rd->lock);
	if (!go)
		return;
	for (uint32_t i = a; i <= b && bytes <= NX_PRED_WHOLE_BYTES; i++)
		if (i < first || i > ext)
			bytes += toc->frames[i].clen;
	if (bytes > NX_PRED_WHOLE_BYTES || !bytes)
		return;
	if (nx_pred_budget_take(st, p, entry, bytes) < 0)
		return;
	nx_stat_add(&st->pred_whole, 1);
	nx_log(NX_LOG_DEBUG, "predict: %s/%s entry %u: a read jumped, the rest of the file, frames %u-%u",
	       NX_STORE_DIR, p->base, entry, a, b);
	/* after the read first (faults walk on from where they land), then
	 * the part before it; a frame cached or in flight is skipped */
	for (int part = 0; part < 2; part++) {
		uint32_t lo = part ? a : ext + 1, hi = part ? first : b + 1;

		while (lo < hi) {
			uint32_t j = lo;
			uint64_t n = toc->frames[j++].clen;

			while (j < hi && n + toc->frames[j].clen <= NX_PRED_JOB_BYTES)
				n += toc->frames[j++].clen;
			ra_queue(st, p, lo, j - 1);
			lo = j;
		}
	}
}

void nx_ra_on_miss(struct nx_store *st, struct nx_reader *rd, struct nx_spath *p, uint32_t entry,
		   uint64_t off, uint32_t first, uint32_t ext)
{
	const struct nx_toc *toc = p->toc;
	const struct nx_toc_entry *e = &toc->entries[entry];

	if (!st->ra_max || nx_bg_stopped(st))
		return;
	if (rd)
		predict_whole(st, rd, p, entry, first, ext);
	/* The start of a library or program: the loader's page faults will
	 * walk its segments next. The header's own request brings nothing
	 * more (it is answered first); the rest of the file goes in parallel
	 * now instead of one round trip later, when nx_ra_after_data has seen
	 * the header (whose exact segments are then in flight or cached). */
	if (off == 0 && looks_elf(toc, entry))
		nx_ra_pred_elf_start(st, p, entry, ext);
	/* A program that read two files of one kind in a directory reads
	 * more of them (an interpreter's modules): the directory's small
	 * files of that kind, which share frames and would each cost one
	 * round trip of their own. */
	if (e->size <= NX_SMALL_FILE && dir_second_miss(st, p, e->parent, entry))
		predict_dir(st, p, entry, first, ext);
}
