/*
 * cache/warm.c: reading the chunk files of a file read through the daemon
 * from disk as soon as it is opened, once per file.
 *
 * A file read only in part (a JVM's libjvm.so, its modules image) never
 * gets a passthrough copy (files.c copies complete files only), so every
 * read of it after a remount goes through the daemon, and with the page
 * cache cold each READ waited for its chunk files (one per frame, ~256 KiB
 * each) to be read from disk one after another, where the native file gets
 * the block layer's readahead of megabytes. The frames a warm start reads
 * are the ones cached, since those are what the earlier run read: so when
 * such a file is opened, its cached frames' chunk files are handed to the
 * kernel's readahead (POSIX_FADV_WILLNEED) by background threads, and the
 * reads that follow find them in the page cache or on their way.
 *
 * Bounds and promises:
 *  - never a fetch: frames the cache does not know are skipped, and the
 *    chunk files are only hinted (nothing is read into our memory, nothing
 *    served from here); a file evicted meanwhile is simply not there;
 *  - never on a worker's path: nx_store_file_warm only queues (a full
 *    queue drops the request, the reads are correct without it);
 *  - at most NX_WARM_FILE_MAX bytes of chunks per file, and each file once
 *    per daemon (the set of files seen is forgotten when it reaches
 *    WARM_SEEN_MAX, so a long-lived daemon may warm a file once more);
 *  - nx_warm_close (store close, i.e. unmount) drops the queue, makes the
 *    threads stop at the next frame and joins them.
 *
 * Several threads work on one file at once (each takes the next frame):
 * opening a chunk file whose directory and inode are not cached yet costs
 * a synchronous disk read, so one thread would trail behind the reader.
 *
 * Locking: w->lock guards everything here; never held across I/O or LMDB.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_i.h"

#define WARM_THREADS 4
#define WARM_QUEUE 64
#define WARM_BUCKETS 1024
#define WARM_SEEN_MAX 65536

struct warm_seen {
	struct warm_seen *next;
	uint8_t man[NX_SHA256_LEN];
	uint32_t entry;
};

struct warm_job {
	struct warm_job *next;
	struct nx_spath *p;
	uint32_t next_frame, last; /* frames not handed out yet: [next_frame, last] */
	uint64_t bytes;            /* of cached chunks hinted so far */
	unsigned busy;             /* threads working on one of its frames */
	int on_queue;              /* in w->head's list (or nx_warm_close's) */
	int counted;               /* counted in st->warm_files */
};

struct nx_warm {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct warm_seen *seen[WARM_BUCKETS];
	unsigned nseen;
	struct warm_job *head, *tail; /* jobs with frames left */
	unsigned queued;
	pthread_t threads[WARM_THREADS];
	unsigned nthreads;
	int stop;
};

static unsigned seen_bucket(const uint8_t man[NX_SHA256_LEN], uint32_t entry)
{
	uint32_t h;

	memcpy(&h, man, sizeof(h)); /* a digest: already uniform */
	return (h ^ (entry * 2654435761u)) % WARM_BUCKETS;
}

static void seen_clear(struct nx_warm *w)
{
	for (unsigned i = 0; i < WARM_BUCKETS; i++)
		while (w->seen[i]) {
			struct warm_seen *s = w->seen[i];

			w->seen[i] = s->next;
			free(s);
		}
	w->nseen = 0;
}

/* 1 if (man, entry) was seen before; else remembers it (0). w->lock held.
 * The entry goes into a hash bucket (a variable index): the analyzer loses
 * it (see NX_ANALYZER_ARRAY_STORE_BEGIN). */
NX_ANALYZER_ARRAY_STORE_BEGIN
static int seen_test_set(struct nx_warm *w, const uint8_t man[NX_SHA256_LEN], uint32_t entry)
{
	unsigned b = seen_bucket(man, entry);
	struct warm_seen *s;

	for (s = w->seen[b]; s; s = s->next)
		if (s->entry == entry && memcmp(s->man, man, NX_SHA256_LEN) == 0)
			return 1;
	if (w->nseen >= WARM_SEEN_MAX)
		seen_clear(w);
	s = malloc(sizeof(*s));
	if (!s)
		return 1; /* no memory: no hint, nothing lost */
	memcpy(s->man, man, NX_SHA256_LEN);
	s->entry = entry;
	s->next = w->seen[b];
	w->seen[b] = s;
	w->nseen++;
	return 0;
}
NX_ANALYZER_ARRAY_STORE_END

static void job_unqueue(struct nx_warm *w, struct warm_job *j)
{
	struct warm_job **pp = &w->head, *prev = NULL;

	while (*pp && *pp != j) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	if (!*pp)
		return; /* off already, or dropped by nx_warm_close (which frees it) */
	*pp = j->next;
	if (w->tail == j)
		w->tail = prev;
	j->next = NULL;
	j->on_queue = 0;
	w->queued--;
}

static int job_ended(const struct warm_job *j)
{
	return j->next_frame > j->last || j->bytes >= NX_WARM_FILE_MAX;
}

/* A job is freed by the thread that leaves it idle and off the queue; one
 * still queued at stop belongs to nx_warm_close. w->lock held; returns
 * with it held. */
static void job_done(struct nx_warm *w, struct warm_job *j)
{
	if (job_ended(j))
		job_unqueue(w, j);
	if (j->busy || j->on_queue)
		return;
	pthread_mutex_unlock(&w->lock);
	nx_spath_put(j->p); /* takes st->lock: not under ours */
	free(j);
	pthread_mutex_lock(&w->lock);
}

static void *warm_main(void *arg)
{
	struct nx_store *st = arg;
	struct nx_warm *w = st->warm;
	const struct nx_toc_frame *fr;
	struct warm_job *j;
	int hit;

	pthread_mutex_lock(&w->lock);
	for (;;) {
		while (!w->head && !w->stop)
			pthread_cond_wait(&w->cond, &w->lock);
		if (w->stop)
			break;
		j = w->head;
		if (job_ended(j)) {
			job_done(w, j); /* its bytes were used up meanwhile */
			continue;
		}
		fr = &j->p->toc->frames[j->next_frame++];
		j->busy++;
		pthread_mutex_unlock(&w->lock);

		hit = nx_chunk_known(st, fr->sha256);
		if (hit)
			nx_chunk_willneed(st, fr->sha256);

		pthread_mutex_lock(&w->lock);
		if (hit) {
			j->bytes += fr->ulen;
			nx_stat_add(&st->warm_bytes, fr->ulen);
			nx_stat_add(&st->warm_frames, 1);
			if (!j->counted) {
				j->counted = 1;
				nx_stat_add(&st->warm_files, 1);
			}
		}
		j->busy--;
		job_done(w, j);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

int nx_warm_open(struct nx_store *st)
{
	struct nx_warm *w;

	if (!st->env || st->fd_chunks < 0)
		return 0; /* no chunks to warm */
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	st->warm = w;
	return 0;
}

void nx_warm_close(struct nx_store *st)
{
	struct nx_warm *w = st->warm;
	struct warm_job *j, *dropped;
	unsigned n;

	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->stop = 1;
	dropped = w->head;
	w->head = w->tail = NULL;
	w->queued = 0;
	n = w->nthreads;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
	/* the jobs queued at stop are freed here, once no thread works on
	 * them; the threads free the others */
	for (unsigned i = 0; i < n; i++)
		pthread_join(w->threads[i], NULL);
	while ((j = dropped)) {
		dropped = j->next;
		nx_spath_put(j->p);
		free(j);
	}
	seen_clear(w);
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->lock);
	free(w);
	st->warm = NULL;
}

/* The analyzer reports the job leaked at its store into w->tail: after
 * seen_test_set's store at a variable index it no longer follows *w (see
 * NX_ANALYZER_ARRAY_STORE_BEGIN). The job is freed by a worker or by
 * nx_warm_close, which walks w->head. */
NX_ANALYZER_ARRAY_STORE_BEGIN
void nx_store_file_warm(struct nx_store *st, struct nx_spath *p, uint32_t entry)
{
	struct nx_warm *w = st->warm;
	const struct nx_toc_entry *e;
	struct warm_job *j;
	uint32_t first, last;

	if (!w || entry >= p->toc->nentries)
		return;
	e = &p->toc->entries[entry];
	/* One frame: the first read reads it anyway, at once. */
	if (e->type != NX_NODE_REGULAR || e->size == 0 ||
	    nx_toc_frames_for(p->toc, e->off, e->size, &first, &last) < 0 || first == last)
		return;
	j = calloc(1, sizeof(*j));
	if (!j)
		return;
	j->p = p;
	j->next_frame = first;
	j->last = last;
	j->on_queue = 1;
	pthread_mutex_lock(&w->lock);
	if (w->stop || w->queued >= WARM_QUEUE || seen_test_set(w, p->man_digest, entry)) {
		pthread_mutex_unlock(&w->lock);
		free(j);
		return;
	}
	/* Threads inherit the caller's signal mask; the session's workers
	 * block the signals it handles, which is what a helper wants. */
	while (w->nthreads < WARM_THREADS) {
		if (pthread_create(&w->threads[w->nthreads], NULL, warm_main, st) != 0)
			break;
		w->nthreads++;
	}
	if (!w->nthreads) {
		pthread_mutex_unlock(&w->lock);
		free(j);
		return;
	}
	nx_spath_get(p); /* the job reads its TOC */
	if (w->tail)
		w->tail->next = j;
	else
		w->head = j;
	w->tail = j;
	w->queued++;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
}
NX_ANALYZER_ARRAY_STORE_END
