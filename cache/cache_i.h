/*
 * cache/cache_i.h: private to cache/. The store handle, the LMDB layer
 * (db.c), the frame machinery (frames.c) and the path loader (store.c).
 *
 * Locking: st->lock protects the path tables, the loading/negative lists,
 * the in-flight frame table and the pin table. It is never held across
 * network I/O; it may be held across short LMDB read transactions and
 * unlink(2) during eviction. LMDB transactions are opened and committed
 * inside one db.c function each, so none outlives a call.
 */
#ifndef NIXOCI_CACHE_I_H
#define NIXOCI_CACHE_I_H

#include <lmdb.h>
#include <pthread.h>

#include "cache/cache.h"

#define NX_PATH_BUCKETS 4096
#define NX_NS_PER_S UINT64_C(1000000000)
#define NX_ID_MASK ((UINT64_C(1) << 40) - 1)
/* Negative lookups are remembered this long. */
#define NX_NEG_TTL_NS (UINT64_C(5) * 1000000000)
#define NX_NEG_MAX 4096
/* Refusals remembered by digest (a direct-mapped table: a collision only
 * forgets an older refusal). */
#define NX_REFUSED_SLOTS 1024
/* last_use of a chunk is rewritten at most this often (seconds), never on
 * the read path: hits queue a touch that the syncer thread records in one
 * transaction per batch, at most NX_TOUCH_DELAY_NS after the first one;
 * at most NX_TOUCH_MAX wait (more are dropped: LRU order is a hint). */
#define NX_TOUCH_INTERVAL 60
#define NX_TOUCH_DELAY_NS (UINT64_C(1000) * 1000000)
#define NX_TOUCH_MAX 4096
/* Bytes of compressed frames asked for in one request. */
#define NX_BATCH_BYTES (16u << 20)
/* ...and at most this many frames. */
#define NX_RUN_FRAMES 4096
/* How long a walk that no reader waits on (readahead, a predicted miss)
 * holds its request for other walkers' adjacent runs to join (a reader
 * that wants one of its frames has it sent at once). */
#define NX_SEND_HOLD_NS (UINT64_C(3) * 1000000)
/* A compressed frame larger than this is malformed (1 MiB of input never
 * compresses to more than about 1 MiB + 4 KiB). */
#define NX_CLEN_MAX (2u * NX_FRAME_MAX)
#define NX_DEFAULT_CACHE_SIZE (UINT64_C(10) << 30)
/* Readahead: background threads, queued jobs (more are dropped), the first
 * and the default largest window (frames), and the largest window in
 * compressed bytes. Eight threads: a job mostly waits for the network,
 * and a program's predicted files (a wrapper's shell, loader and
 * interpreter, its libraries, known at once from dev.nixoci.elf) are
 * six to eight starts that should all be in flight in the same round
 * trip; with four, half waited for the others' answers. */
#define NX_RA_THREADS 8
#define NX_RA_QUEUE 16
#define NX_RA_MIN 4
#define NX_RA_DEFAULT_MAX ((32u << 20) / NX_FRAME_TARGET)
#define NX_RA_MAX_BYTES (UINT64_C(32) << 20)
/* A read starting within this distance of where the previous ones ended
 * still counts as sequential (the kernel sends its readahead requests in
 * parallel, so they arrive slightly out of order). */
#define NX_RA_SLACK (UINT64_C(4) << 20)
/* Library prediction (elf.c): files a mount predicts from (slots: twice
 * that, an open-addressing table), how far from the file read, and the
 * compressed bytes it may queue. The bytes are the same the loader's own
 * reads would fetch (what it certainly reads of a library it must load),
 * earlier; the bound only caps a program whose libraries the rule
 * resolves differently from the loader (LD_LIBRARY_PATH, LD_PRELOAD). */
#define NX_ELF_PRED_FILES 256
#define NX_ELF_SEEN_SLOTS 512
#define NX_ELF_DEPTH_MAX 8
#define NX_ELF_PRED_BYTES (UINT64_C(16) << 20)
/* Import prediction (pyc.c): .pyc files a mount parses or predicts
 * (slots: twice that), waves (import depths) followed from a file read,
 * files of one wave, and the largest .pyc parsed. Its bytes count against
 * the prediction budget (NX_PRED_FREE). */
#define NX_PYC_FILES 1024
#define NX_PYC_SEEN_SLOTS 2048
#define NX_PYC_DEPTH_MAX 16
#define NX_PYC_WAVE_MAX 256
/* Directories remembered by the miss predictor (the oldest is forgotten). */
#define NX_DIRMISS_SLOTS 64
/* How long a reader's failed file fails at once (the kernel's retry). */
#define NX_RA_FAIL_NS (UINT64_C(2) * 1000000000)
/* Group commit of chunk files (cache/db.c): a batch is synced and recorded
 * once it holds this many chunks or bytes, or this long after its first
 * chunk; savers wait while four batches' worth are waiting. */
#define NX_SYNC_CHUNKS 64
#define NX_SYNC_BYTES (UINT64_C(16) << 20)
#define NX_SYNC_DELAY_NS (UINT64_C(50) * 1000000)
/* The running cache total is re-read from LMDB every this many saves. */
#define NX_RESYNC_SAVES 64
/* The LMDB map starts at this size and doubles on MDB_MAP_FULL up to
 * NX_MAP_MAX (address space, not disk: the file grows as pages are used). */
#define NX_MAP_SIZE ((size_t)1 << 30)
/* Orphans (files in chunks/ or blobs/ without a record: a crash between
 * the rename and the record) are swept at open, every NX_SWEEP_INTERVAL_NS,
 * and only once older than NX_ORPHAN_AGE_NS while another process may be
 * between its rename and its record (at open with the cache to ourselves,
 * whatever their age). */
#define NX_SWEEP_INTERVAL_NS (UINT64_C(600) * 1000000000)
#define NX_ORPHAN_AGE_NS (UINT64_C(600) * 1000000000)
#define NX_MAP_MAX ((size_t)1 << 36)

/*
 * A store path this store has resolved. The header (name, id, digests)
 * stays until nx_store_close, so a pointer to it is a stable identity; the
 * loaded part (man, toc) is there only while @loaded, and may be unloaded
 * (under st->lock) once no one holds a reference: see store.c.
 */
struct nx_spath {
	struct nx_spath *next_name, *next_id, *next_all;
	/* the LRU list of loaded, unreferenced paths (under st->lock) */
	struct nx_spath *lru_prev, *lru_next;
	struct nx_store *st;
	uint64_t id;
	unsigned refs;     /* atomic; 0 -> 1 and the drop to 0 under st->lock */
	int loaded;        /* man and toc are valid (under st->lock) */
	int in_lru;
	uint8_t root_type; /* enum nx_node_type of entry 0, kept when unloaded */
	uint64_t bytes;    /* what the loaded part takes (malloc_usable_size) */
	char base[NX_BASE_MAX + 1];
	size_t base_len;
	struct nx_manifest man;
	struct nx_toc *toc;
	uint8_t man_digest[NX_SHA256_LEN];
	uint64_t man_size;
	uint8_t toc_digest[NX_SHA256_LEN]; /* man.toc.digest, kept when unloaded */
};

/* A path's item of the closure metadata blob (closure.c), by the SHA-256
 * of its manifest: the manifest's bytes and the TOC blob stored beside it,
 * which is checked against the manifest's TOC digest at its first use. */
struct nx_cm_ent {
	uint8_t digest[NX_SHA256_LEN];
	const uint8_t *buf; /* the manifest, inside nx_store.cm_raw */
	size_t len;
	const uint8_t *toc; /* its TOC blob, inside nx_store.cm_raw */
	size_t toc_len;
	int toc_bad; /* 1 once the TOC was found not to be the manifest's */
};

/* A reference whose metadata is to be loaded in the background (refs.c). */
struct nx_rp_job {
	struct nx_rp_job *next;
	char base[NX_BASE_MAX + 1];
};
/* Reference prefetch: workers and queued names (more are dropped). */
#define NX_RP_THREADS 2
#define NX_RP_QUEUE 64

struct nx_loading {
	struct nx_loading *next;
	char base[NX_BASE_MAX + 1];
	int done;
	int rc;
	int refs;
	int bg; /* loaded by a reference prefetch worker (refs.c) */
	struct nx_spath *p;
};

/* A manifest or TOC blob refused for what its bytes say (malformed, not
 * signed by a trusted key, a NAR that contradicts it): the same digest
 * always gets the same answer, so it is not fetched or inflated again. */
struct nx_refused {
	uint8_t digest[NX_SHA256_LEN];
	int rc; /* 0: empty slot; -EIO or -EACCES */
	uint32_t who; /* hash of the store path last told about it */
};

struct nx_neg {
	struct nx_neg *next;
	uint64_t expires;
	int rc; /* -ENOENT or -EACCES */
	char base[NX_BASE_MAX + 1];
};

/* A frame being fetched by some thread; waiters sleep on st->cond. The
 * owner unlinks it when done and the last waiter frees it, so waiters learn
 * the outcome and a failing registry is not asked once per waiter. */
struct nx_flight {
	struct nx_flight *next;
	uint8_t digest[NX_SHA256_LEN];
	unsigned waiters;
	int done;
	int rc;
	struct nx_sendq *q; /* the held request it is part of, if any */
};

/* A request for a run of adjacent claimed frames of one path that no
 * reader waits on yet, held up to NX_SEND_HOLD_NS so that the runs other
 * walkers claim next to it go out in the same request (frames.c). Under
 * st->lock; the walker that made it sends it and frees it. */
struct nx_sendq {
	struct nx_sendq *next;
	struct nx_spath *p;
	uint32_t first, last;
	uint8_t *flags; /* flags[i - first]: NX_FR_* */
	int sent;       /* off the list: nothing joins any more */
	int go;         /* a reader waits on one of its frames: send now */
	int merged;     /* handed whole to an adjacent held request */
	pthread_cond_t cond;
};
#define NX_FR_OWNED 1 /* claimed by this request: saved and released by it */
#define NX_FR_MINE 2  /* the sending walker's own: delivered to its consumer */
#define NX_FR_BG 4    /* claimed by a background walk: counted as readahead */

/* A readahead job: fetch the missing frames of [first, last] of @p; or,
 * with @complete, complete regular file @entry of @p (complete.c). */
struct nx_ra_job {
	struct nx_ra_job *next;
	struct nx_spath *p;
	uint32_t first, last;
	uint32_t entry;
	int complete;
	/* or (with @entry): predict the libraries of file @entry (elf.c),
	 * @depth links away from the file that was read */
	int elf;
	unsigned depth;
	unsigned hint; /* library path of a wrapper (elf.c): slot + 1, or 0 */
	/* or (with @entry): predict the imports of .pyc @entry (pyc.c) */
	int pyc;
};

/* A file considered for completion (complete.c), in a ring of
 * NX_CPL_SLOTS under st->lock: once it is queued or done it is not
 * considered again; one found short of the rule is considered again at a
 * later release only when frames were fetched since (its share can only
 * have grown then). Forgetting a file costs at most one more count. */
#define NX_CPL_SLOTS 256
enum { NX_CPL_IDLE, NX_CPL_QUEUED, NX_CPL_DONE };
struct nx_cpl_seen {
	uint8_t man[NX_SHA256_LEN];
	uint32_t entry;
	int state;
	uint64_t fetched; /* st->frames_fetched when last counted */
};

/* A directory in which a read missed (readahead.c, nx_ra_on_miss): @p is
 * only compared, never followed (a path unloaded since then costs at most
 * one wrong prediction). */
struct nx_dirmiss {
	const struct nx_spath *p;
	uint32_t dir;      /* TOC entry of the directory */
	uint32_t file[4];  /* the last files that missed in it */
	unsigned nfile;
	int done;          /* its files were queued (once per mount) */
};

/* A name ending whose files the directory rule predicted in store path @p
 * (compared, never followed): a first miss of that ending in another
 * directory of @p predicts at once. */
#define NX_PRED_ENDINGS 8
#define NX_PRED_ENDING_MAX 48
struct nx_pred_ending {
	const struct nx_spath *p;
	size_t len;
	char end[NX_PRED_ENDING_MAX];
};

/* Per-open sequential-read state (cache.h), guarded by its own lock. */
struct nx_reader {
	pthread_mutex_t lock;
	struct nx_spath *p;
	uint32_t entry;
	uint64_t end;      /* largest end offset read so far */
	uint64_t seq;      /* bytes read sequentially since the last seek */
	uint32_t win;      /* current window in frames; 0 = not sequential yet */
	uint32_t ra_next;  /* first frame not yet given to readahead */
	/* the last read that failed: the kernel retries a failed readahead
	 * page at once with a second request, which must not wait for the
	 * registry (or one failing blob) a second time */
	uint64_t fail_ns;
	struct nx_spath *fail_p; /* the file a request of this open just failed on */
	uint32_t fail_entry;
	/* the ELF header of this file was looked at (nx_ra_after_data) */
	int elf_done;
	struct nx_spath *elf_p;
	uint32_t elf_entry;
	/* reads of this file that jumped away from the one before (a mapped
	 * file's page faults), and whether that predicted the file whole
	 * (nx_ra_on_miss); both start over when another file is read */
	uint32_t seeks;
	int whole_done;
};

/* A chunk file in place but not yet synced and recorded in LMDB. */
struct nx_pending {
	uint8_t digest[NX_SHA256_LEN];
	uint64_t size; /* bytes of the chunk (its record checks the file) */
	uint64_t disk; /* what it takes on disk (st_blocks), for the limit */
	uint8_t blob;  /* a metadata blob (blobs/, dbi_blobs), not a chunk */
};

/* A small LMDB record the syncer writes with its next batch (a tag). */
#define NX_KV_KEY_MAX 64
#define NX_KV_VAL_MAX 128
#define NX_KV_MAX 1024
struct nx_kv {
	MDB_dbi dbi;
	uint8_t klen, vlen;
	uint8_t key[NX_KV_KEY_MAX];
	uint8_t val[NX_KV_VAL_MAX];
};

/* A last-use update waiting for the syncer (chunks or blobs). */
struct nx_touch {
	uint8_t digest[NX_SHA256_LEN];
	uint8_t blob;
};

/* A chunk file a reader is using; eviction skips it. */
struct nx_pin {
	struct nx_pin *next;
	uint8_t digest[NX_SHA256_LEN];
	unsigned count;
};

struct nx_store {
	struct nx_source src;
	char *dir;
	uint64_t limit;
	const struct nx_pubkey *keys;
	size_t nkeys;
	int readonly;
	int closure_mode;
	int pinned; /* closure pinned by digest: it authenticates everything */
	uint8_t origin_id[NX_SHA256_LEN]; /* SHA-256 of nx_store_opts.origin */
	uint64_t tag_ttl;                 /* seconds; 0: always ask again */
	struct nx_index ix;
	struct nx_index_entry **ix_sorted; /* by base name */
	size_t nix;
	/* the closure metadata blob, inflated, and its blobs sorted by
	 * digest (closure.c); read-only once nx_store_open returns */
	uint8_t *cm_raw;
	struct nx_cm_ent *cm;
	size_t ncm;

	MDB_env *env; /* NULL: no usable cache (read-only mode without one) */
	/* The checked cache directory and its subdirectories, opened once
	 * (O_NOFOLLOW, owner and mode checked): every file operation is
	 * relative to these, so nothing is reached through a path that
	 * someone could redirect. -1 when closed. */
	int dirfd, fd_index, fd_blobs, fd_chunks, fd_tmp, lockfd;
	int fd_files; /* files.c's passthrough copies */
	uint64_t reserved; /* bytes being written outside chunks/blobs (a copy) */
	char *rdir; /* the directory's resolved path (LMDB opens by path) */
	uint64_t next_sweep; /* nx_now_ns() of the next orphan sweep */
	/* Every transaction of this process holds db_rw shared: changing the
	 * map size (growth, or adopting another process's growth) is only
	 * allowed with no transaction open in the process, so it holds it
	 * exclusively. Transactions never nest, so this cannot deadlock. */
	pthread_rwlock_t db_rw;
	MDB_dbi dbi_chunks, dbi_blobs, dbi_tags, dbi_verified, dbi_ids, dbi_idnames;
	int no_ids; /* read-only look at a cache without the id table */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct nx_spath *by_name[NX_PATH_BUCKETS];
	struct nx_spath *by_id[NX_PATH_BUCKETS];
	struct nx_spath *all;
	/* metadata budget (store.c): bytes of headers, loaded manifests and
	 * TOCs and the closure metadata blob; unreferenced loaded paths in
	 * LRU order, the least recently used first */
	uint64_t meta_bytes, meta_budget;
	struct nx_spath *lru_head, *lru_tail;
	uint64_t id_mask; /* NX_ID_MASK, or fewer bits for tests */
	int id_warned;
	struct nx_loading *loading;
	struct nx_neg *neg;
	size_t nneg;
	struct nx_refused refused[NX_REFUSED_SLOTS];
	/* lookup bound (under st->lock): a GCRA token bucket, tat = the
	 * theoretical arrival time of the next lookup */
	uint64_t lk_interval_ns; /* 0: no bound */
	uint64_t lk_tat;
	int lk_warned;
	struct nx_flight *flights;
	struct nx_sendq *sendq; /* held requests (frames.c) */
	struct nx_pin *pins;
	int evicting;
	pthread_cond_t evict_cond; /* an eviction ended (evicting went 0) */
	struct nx_files *files; /* files.c: passthrough copies; NULL = none */
	struct nx_warm *warm;   /* warm.c: chunk files read ahead at open */

	/* group commit (under st->lock): chunk files waiting for the syncer
	 * thread, and the batch it is syncing; both are readable already */
	struct nx_pending *pend, *syncing;
	size_t npend, nsyncing, pend_cap, syncing_cap;
	uint64_t pend_bytes, syncing_bytes, pend_since; /* disk bytes */
	pthread_cond_t sync_cond;
	pthread_t sync_thread;
	int sync_started, sync_stop;
	int sync_urgent; /* a saver waits for the queue to be recorded */
	struct nx_touch *touch; /* NX_TOUCH_MAX slots, allocated on first use */
	size_t ntouch;
	struct nx_kv *kv; /* NX_KV_MAX slots, allocated on first use */
	size_t nkv;
	uint64_t touch_since;

	/* readahead pool (under st->lock; workers wait on ra_cond) */
	uint32_t ra_max;            /* 0: readahead off */
	pthread_cond_t ra_cond;
	pthread_t ra_threads[NX_RA_THREADS];
	unsigned ra_nthreads;
	struct nx_ra_job *ra_head, *ra_tail;
	unsigned ra_queued;
	int ra_stop;                /* read without the lock by transfers */
	/* miss prediction (readahead.c, under st->lock): directories with a
	 * miss, and the compressed bytes queued by the directory rule */
	struct nx_dirmiss dirmiss[NX_DIRMISS_SLOTS];
	unsigned dirmiss_next;
	struct nx_pred_ending pred_end[NX_PRED_ENDINGS];
	unsigned pred_end_next;
	uint64_t pred_bytes;
	/* completion (complete.c; under st->lock): its jobs wait on a list of
	 * their own, which a worker takes only when no other job waits, and
	 * one at a time, so a completion never holds up readahead */
	struct nx_ra_job *ra_low_head, *ra_low_tail;
	unsigned ra_low_queued;
	int ra_low_running;
	struct nx_cpl_seen cpl_seen[NX_CPL_SLOTS];
	unsigned cpl_next;
	uint64_t cpl_bytes; /* compressed bytes of the completions let through */
	/* library prediction (elf.c, under st->lock): the files offered
	 * (id << 24 ^ entry, plus one; 0 is free), compressed bytes queued */
	uint64_t elf_seen[NX_ELF_SEEN_SLOTS];
	unsigned elf_nseen;
	uint64_t elf_bytes;
	/* library paths that wrapper scripts hand to ld.so with the program
	 * they run (allocated on first use, never overwritten: jobs keep
	 * their index) */
	struct nx_elf_hint *elf_hints;
	unsigned elf_nhints;
	/* import prediction (pyc.c, under st->lock): the .pyc files parsed
	 * or predicted (as elf_seen) */
	uint64_t pyc_seen[NX_PYC_SEEN_SLOTS];
	unsigned pyc_nseen;

	/* reference prefetch (refs.c; under st->lock, workers wait on rp_cond) */
	pthread_cond_t rp_cond;
	pthread_t rp_threads[NX_RP_THREADS];
	unsigned rp_nthreads;
	struct nx_rp_job *rp_head, *rp_tail;
	unsigned rp_queued;
	int rp_stop;
	uint64_t rp_loaded; /* paths loaded by it (atomic) */

	/* startup profiles (profile.c): the recorder, the prefetcher, and
	 * the digest of the closure index (closure mode) they belong to */
	struct nx_prec *prec;
	struct nx_pfetch *pf;
	int pf_stop; /* read without the lock by transfers */
	uint8_t closure_digest[NX_SHA256_LEN];

	/* offline gate (under st->lock) */
	int offline;
	int probing;
	uint64_t offline_since;
	uint64_t answered_ns; /* when the source last answered anything */

	/* statistics, updated with __atomic builtins */
	uint64_t total_bytes; /* chunks + metadata blobs in the cache */
	uint64_t frames_fetched, bytes_fetched, cache_hits, cache_misses, evictions;
	uint64_t verify_failures, errors, paths_loaded, ra_frames;
	uint64_t paths_unloaded, paths_reloaded, paths_in_memory;
	uint64_t saves;
	uint64_t warm_files, warm_frames, warm_bytes; /* warm.c */
	uint64_t complete_files, complete_bytes;      /* complete.c */
	uint64_t runs_shared; /* frames.c: runs handed to another walker's request */
	uint64_t elf_parsed, elf_libs; /* elf.c */
	uint64_t pred_whole;           /* readahead.c: files predicted whole at a jump */
	uint64_t pred_import;          /* pyc.c: modules fetched before their import */
	uint64_t pred_exec;            /* elf.c: programs a script runs, fetched before */
};

static inline void nx_stat_add(uint64_t *v, uint64_t n)
{
	__atomic_fetch_add(v, n, __ATOMIC_RELAXED);
}

static inline void nx_stat_sub(uint64_t *v, uint64_t n)
{
	__atomic_fetch_sub(v, n, __ATOMIC_RELAXED);
}

static inline uint64_t nx_stat_get(const uint64_t *v)
{
	return __atomic_load_n(v, __ATOMIC_RELAXED);
}

/* db.c: LMDB environment, records and content-addressed files. */
int nx_db_open(struct nx_store *st);
void nx_db_close(struct nx_store *st);
/* Value of @key in @dbi copied into @val (at most @cap bytes; *vlen gets the
 * stored length). -ENOENT if absent or there is no cache. */
int nx_db_get(struct nx_store *st, MDB_dbi dbi, const void *key, size_t klen, void *val,
	      size_t cap, size_t *vlen);
int nx_db_put(struct nx_store *st, MDB_dbi dbi, const void *key, size_t klen, const void *val,
	      size_t vlen);
int nx_db_del(struct nx_store *st, MDB_dbi dbi, const void *key, size_t klen);
/* nx_db_put by the syncer thread, with its next batch (within
 * NX_SYNC_DELAY_NS): for records a lookup writes, which must not wait for
 * a commit. A crash before then loses the record, never corrupts it; a
 * full queue or a store without a syncer writes at once. */
void nx_db_put_later(struct nx_store *st, MDB_dbi dbi, const void *key, size_t klen,
		     const void *val, size_t vlen);

/* The id table (store paths' inode ids, kept so they do not depend on
 * load order): the id recorded for @base, else the first free one from
 * @want on (probing +1 within @mask, never 0), recorded in the same write
 * transaction, so concurrent processes sharing the cache agree. 0 and *id,
 * -ENOENT without a writable cache and no record, or another negative
 * errno (LMDB failed; logged by the caller). */
int nx_db_id_assign(struct nx_store *st, const char *base, size_t len, uint64_t want,
		    uint64_t mask, uint64_t *id);
/* The same for @n names at once (@bases NUL-terminated base names, @wants
 * their first choices), in one write transaction: a closure's paths at
 * open, one commit instead of one (with its fdatasync) at the first lookup
 * of each. Names recorded already keep their ids; nothing is written when
 * every name is recorded. 0 or a negative errno (nothing recorded). */
int nx_db_id_assign_all(struct nx_store *st, const char *const *bases, const uint64_t *wants,
			size_t n, uint64_t mask);
/* The base name recorded for @id into @base (NUL-terminated, @cap bytes);
 * -ENOENT if none. */
int nx_db_id_base(struct nx_store *st, uint64_t id, char *base, size_t cap);

/* Verified metadata blob from the cache: -ENOENT on a miss (a record whose
 * file is missing or damaged is dropped). *buf caller frees. */
int nx_blob_load(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], size_t cap, uint8_t **buf,
		 size_t *len);
/* Stores a blob the caller verified. Failures are logged and ignored. The
 * file is in place (and nx_blob_load finds it) on return; it is synced and
 * recorded by the syncer with its next batch, so a lookup never waits for
 * an fsync or a commit. A crash before then leaves an orphan file, swept
 * at the next start. */
void nx_blob_save(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], const void *buf,
		  size_t len);
/* The cached blob @d of @size bytes, pushed to @cb in pieces of at most
 * NX_BLOB_STREAM_BUF bytes as it is read and hashed: 0 once all of it went
 * through and matched @d; -ENOENT on a miss, or when the file is missing or
 * damaged (dropped; the caller discards what @cb built, it was not the
 * blob); @cb's own error stops it. */
#define NX_BLOB_STREAM_BUF (64u << 10)
int nx_blob_stream(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], uint64_t size,
		   int (*cb)(void *ctx, const void *buf, size_t len), void *ctx);
/* A blob written to tmp/ as it streams in, and put under blobs/ (fsync,
 * rename, record) only once the caller has verified and accepted it.
 * nx_blob_tmp_open: 0, -EROFS (no writable cache: write nothing) or
 * -errno (logged); @size is reserved in the cache's total meanwhile.
 * nx_blob_tmp_write: 0 or -errno (logged; the tmp file is gone, later calls
 * return -EBADF). Exactly one of commit (failures logged and ignored) or
 * abort ends it, whatever open and write returned. */
struct nx_blob_tmp {
	int fd;
	char name[64];
	uint64_t reserve, len;
};
int nx_blob_tmp_open(struct nx_store *st, struct nx_blob_tmp *t, uint64_t size);
int nx_blob_tmp_write(struct nx_store *st, struct nx_blob_tmp *t, const void *buf, size_t len);
void nx_blob_tmp_commit(struct nx_store *st, struct nx_blob_tmp *t,
			const uint8_t d[NX_SHA256_LEN]);
void nx_blob_tmp_abort(struct nx_store *st, struct nx_blob_tmp *t);

/* Opens the cached chunk of frame digest @d, pinned: call nx_chunk_unpin
 * after closing *fd. -ENOENT on a miss (a record whose file is missing or
 * differs from the record is dropped). The chunk is checked against what
 * the cache recorded, never against the caller: when the asker expects
 * @ulen bytes and the chunk has others, -ERANGE, and the chunk stays (the
 * asker's TOC is wrong, not the cache; *size gets the chunk's size). */
/* Evicts (passthrough copies, then chunks and blobs, LRU) down to 90% of
 * the limit; for a writer about to add something large. */
void nx_db_evict(struct nx_store *st);
int nx_chunk_open(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], uint32_t ulen, int *fd,
		  uint64_t *size);
void nx_chunk_unpin(struct nx_store *st, const uint8_t d[NX_SHA256_LEN]);
/* 1 if LMDB has a record for the chunk (no file check). */
int nx_chunk_known(struct nx_store *st, const uint8_t d[NX_SHA256_LEN]);
/* The same, for a caller holding st->lock. */
int nx_chunk_known_locked(struct nx_store *st, const uint8_t d[NX_SHA256_LEN]);
/* warm.c: the threads that read a file's cached chunk files ahead when it
 * is opened (nx_store_file_warm); open when the cache has chunks, close
 * (stop, join) before the paths go. At most NX_WARM_FILE_MAX bytes of
 * chunks per file. */
#define NX_WARM_FILE_MAX (UINT64_C(64) << 20)
int nx_warm_open(struct nx_store *st);
void nx_warm_close(struct nx_store *st);
/* Starts reading cached chunk @d from disk in the background (a hint). */
void nx_chunk_willneed(struct nx_store *st, const uint8_t d[NX_SHA256_LEN]);
/* Stores a verified, decompressed frame, then evicts if over the limit.
 * Failures are logged and ignored (the data was still served). */
void nx_chunk_save(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], const void *buf,
		   size_t len);
/* Forgets a chunk (file and record) unless a reader has it pinned: full
 * verification saves frames as it goes and drops them when the path is
 * refused, so nothing of a refused artifact stays cached. */
void nx_chunk_drop(struct nx_store *st, const uint8_t d[NX_SHA256_LEN]);

/* online.c: every call of the source goes through these two, so an
 * unreachable registry is noticed once and misses fail fast while it is.
 * nx_source_begin returns 0 (go ahead), 1 (go ahead, as the probe of an
 * offline source) or -EIO (offline and being probed: do not call, fail);
 * after calling, nx_source_end gets that value and the source's result. */
int nx_source_begin(struct nx_store *st);
void nx_source_end(struct nx_store *st, int probe, int rc);
/* closure.c: in closure mode with a metadata blob, fetches, verifies and
 * keeps it (any failure: one log line, and paths load one by one). */
int nx_cmeta_load(struct nx_store *st, const char *closure);
/* A copy (NUL-terminated; caller frees) of the blob with digest @d, if the
 * metadata blob has it; -ENOENT otherwise. */
int nx_cmeta_get(struct nx_store *st, const uint8_t d[NX_SHA256_LEN], size_t cap, uint8_t **out,
		 size_t *len);
/* The TOC blob @toc of the path whose manifest has digest @man, without a
 * copy: *buf points into the metadata blob, valid until nx_store_close.
 * Checked here, at its first use, against @toc (size and SHA-256): -ENOENT
 * when the blob has no such item, -EBADMSG when its TOC is not @toc (one
 * log line naming @sp per mount; the caller loads the TOC on its own). */
int nx_cmeta_toc(struct nx_store *st, const uint8_t man[NX_SHA256_LEN], const struct nx_desc *toc,
		 const char *sp, const uint8_t **buf, size_t *len);
void nx_cmeta_release(struct nx_store *st);
/* refs.c: queue @p's references for background loading; stop and join. */
void nx_rp_after_load(struct nx_store *st, const struct nx_spath *p);
void nx_rp_stop(struct nx_store *st);
/* 1 in a reference prefetch worker, or in a thread that marked itself as
 * loading on a guess (elf.c): such a load never verifies a whole NAR. */
int nx_rp_in_worker(void);
void nx_rp_mark_worker(int on);
/* store.c, with st->lock held: the loaded path @base, or NULL; 1 if the
 * closure index lists @base. */
struct nx_spath *nx_spath_find_locked(struct nx_store *st, const char *base, size_t len);
int nx_ix_has_locked(const struct nx_store *st, const char *base);
/* profile.c: recording (nx_prec_note on every read: frames [first, last]
 * of @p), prefetching a profile in closure mode, and stopping both (the
 * recorder writes its file then). */
#define NX_PROFILE_SECONDS 60
#define NX_PF_THREADS 4
#define NX_PF_GROUP 64
/* compressed bytes of the runs one profile worker fetches in one request */
#define NX_PF_BATCH_BYTES (4u << 20)
int nx_prec_open(struct nx_store *st, const char *file, int seconds);
void nx_prec_note(struct nx_store *st, const struct nx_spath *p, uint32_t first, uint32_t last);
/* nx_pfetch_start right after the closure index is read: the profile is
 * found and fetched while the closure's metadata is, and its frames wait
 * for nx_pfetch_ready (the store open; nothing when no profile runs). */
int nx_pfetch_start(struct nx_store *st, const char *name);
void nx_pfetch_ready(struct nx_store *st);
void nx_profile_stop(struct nx_store *st);
/* 1 when background walks (readahead, profile) are to give up. */
static inline int nx_bg_stopped(const struct nx_store *st)
{
	return __atomic_load_n(&st->ra_stop, __ATOMIC_RELAXED) ||
	       __atomic_load_n(&st->pf_stop, __ATOMIC_RELAXED);
}
/* readahead.c */
void nx_ra_stop(struct nx_store *st);
/* The retry shortcut (see struct nx_reader): 1 if a read of this reader's
 * entry failed moments ago (NX_RA_FAIL_NS). */
int nx_reader_failed(struct nx_store *st, struct nx_reader *rd, struct nx_spath *p,
		     uint32_t entry);
void nx_reader_fail(struct nx_store *st, struct nx_reader *rd, struct nx_spath *p,
		    uint32_t entry);
void nx_ra_after_read(struct nx_store *st, struct nx_reader *rd, struct nx_spath *p,
		      uint32_t entry, uint64_t off, uint64_t len, uint32_t last);
/* Larger reads on a miss. A regular file of at most NX_SMALL_FILE bytes is
 * fetched whole with its first miss: nx_ra_extend gives the last frame a
 * read ending at frame @last may fetch along (nx_frames_walk_ext). */
#define NX_SMALL_FILE (UINT64_C(1) << 20)
uint32_t nx_ra_extend(struct nx_store *st, struct nx_spath *p, uint32_t entry, uint32_t last);
/* After a read of @len bytes at @off served to @rd: when they are the
 * start of an ELF file, the frames of its PT_LOAD segments (at most
 * NX_ELF_MAX_BYTES compressed) are queued for background fetching, with
 * NX_FAULT_AROUND bytes past their end (nx_elf_load_range). */
#define NX_FAULT_AROUND (UINT64_C(1) << 20)
#define NX_ELF_MAX_BYTES (UINT64_C(8) << 20)
#define NX_ELF_PHNUM_MAX 64
void nx_ra_after_data(struct nx_store *st, struct nx_reader *rd, struct nx_spath *p,
		      uint32_t entry, uint64_t off, const uint8_t *buf, size_t len);
/* Predicting misses (docs/architecture.md, "Predicted misses"): called by a
 * read whose first frame @first is missing, before it fetches frames
 * [@first, @ext] itself. A read of the start of a file that looks like an
 * ELF object (executable, or named *.so / *.so.*) queues the rest of the
 * file (at most NX_PRED_ELF_BYTES compressed); the second small file of
 * one directory to miss with the same name ending as an earlier one
 * (".cpython-311.pyc"; not a library's ".so" or ".so.6") queues the frames
 * of that directory's small files with that ending (at most NX_DIR_MAX_BYTES compressed, around the miss,
 * and all such predictions of a mount at most NX_PRED_FREE plus the bytes
 * fetched otherwise). The read's own frames are never part of a job, so
 * it never waits for one. */
#define NX_PRED_ELF_BYTES NX_ELF_MAX_BYTES
#define NX_DIR_MAX_BYTES (UINT64_C(3) << 20)
#define NX_PRED_FREE (UINT64_C(8) << 20)
/* A read through @rd (may be NULL) that jumped away from the one before
 * in a file of more than NX_SMALL_FILE bytes and at most NX_PRED_WHOLE_BYTES
 * compressed (a mapped file's page faults: a JVM's class data archive)
 * queues the rest of the file, once per open, in jobs of at most
 * NX_PRED_JOB_BYTES compressed, within the NX_PRED_FREE budget. */
#define NX_PRED_WHOLE_BYTES (UINT64_C(4) << 20)
#define NX_PRED_JOB_BYTES (UINT64_C(1) << 20)
void nx_ra_on_miss(struct nx_store *st, struct nx_reader *rd, struct nx_spath *p, uint32_t entry,
		   uint64_t off, uint32_t first, uint32_t ext);
/* Queues a completion job (complete.c) on the low-priority list; -EAGAIN
 * when the queue is full or the workers are stopping. */
int nx_ra_queue_complete(struct nx_store *st, struct nx_spath *p, uint32_t entry);

/*
 * complete.c: background completion of mostly read files, so that their
 * next open is passthrough. nx_complete_want (a reader released a regular
 * file that has no copy and is not wholly cached) queues the file once;
 * nx_complete_run (a readahead worker) counts its cached frames and, when
 * the rule holds (docs/architecture.md, "Mostly read files completed in
 * the background"), fetches the missing ones and asks files.c for a copy.
 */
#define NX_CPL_MIN_SIZE NX_SMALL_FILE
#define NX_CPL_SHARE_NUM 3
#define NX_CPL_SHARE_DEN 4
#define NX_CPL_MAX_MISSING (UINT64_C(2) << 20)
#define NX_CPL_FREE (UINT64_C(16) << 20)
void nx_complete_want(struct nx_store *st, struct nx_spath *p, uint32_t entry);
void nx_complete_run(struct nx_store *st, struct nx_spath *p, uint32_t entry);

/* The rule for the start of a loadable file (nx_ra_on_miss), for a read
 * at offset 0 of @entry that fetches frames up to @ext itself: the rest of
 * the file, if at most NX_PRED_ELF_BYTES compressed. */
void nx_ra_pred_elf_start(struct nx_store *st, struct nx_spath *p, uint32_t entry, uint32_t ext);
/* Background jobs: frames [first, last] of @p; the libraries of @entry
 * (nx_elf_job). Dropped when the queue is full or readahead stops. */
void nx_ra_queue_frames(struct nx_store *st, struct nx_spath *p, uint32_t first, uint32_t last);
void nx_ra_queue_elf(struct nx_store *st, struct nx_spath *p, uint32_t entry, unsigned depth,
		     unsigned hint);

/* elf.c: predicting the libraries the loader will open (docs/architecture.md,
 * "Predicted misses"); the parser is in cache.h (the pusher uses it). */
#define NX_ELF_DYN_MAX 1024
/* bytes of a predicted library read for its header (its first frame) */
#define NX_ELF_HDR_BYTES 4096
/* A wrapper script's "ld.so --library-path DIRS PROGRAM": the loader
 * searches DIRS (before a DT_RUNPATH) for PROGRAM and all it loads. */
#define NX_ELF_HINTS 8
#define NX_ELF_SCRIPT_MAX (UINT64_C(64) << 10)
struct nx_elf_hint {
	char prog[NX_ELF_NAME_MAX + 1];
	char dirs[NX_ELF_RUNPATH_MAX + 1];
};
/* A read at offset 0 of @entry of @p got its first @len bytes @buf,
 * verified: an ELF file seen the first time in this mount has its
 * libraries predicted by a background job. */
void nx_elf_seen(struct nx_store *st, struct nx_spath *p, uint32_t entry, const uint8_t *buf,
		 size_t len);
/* The same for a read answered from a cached chunk file: @len bytes of the
 * file's start at @off of @fd. */
void nx_elf_seen_fd(struct nx_store *st, struct nx_spath *p, uint32_t entry, int fd, uint64_t off,
		    size_t len);
/* The job: for @depth > 0 (a predicted library) fetch its start first;
 * @hint: the library path it was loaded with (slot + 1), or 0. */
void nx_elf_job(struct nx_store *st, struct nx_spath *p, uint32_t entry, unsigned depth,
		unsigned hint);
/* The first time (@p, @entry) is offered to a rule whose table is @slots
 * (@nslots, open addressing, under st->lock; *@nseen of @max used): 1,
 * and it is noted; 0 when it was offered before or the table is full. */
int nx_pred_first_time(struct nx_store *st, uint64_t *slots, unsigned nslots, unsigned *nseen,
		       unsigned max, const struct nx_spath *p, uint32_t entry);
/* @len bytes at @off of regular file @entry of @p: verified, from the
 * cache or fetched like a read's. 0, -ECANCELED at unmount, or an error. */
int nx_file_read(struct nx_store *st, struct nx_spath *p, uint32_t entry, uint64_t off,
		 void *buf, size_t len);
/* A library the process will load (an interpreter's extension module):
 * its start and libraries are predicted, once per mount. */
void nx_elf_predict(struct nx_store *st, struct nx_spath *p, uint32_t entry);
/* Takes @bytes of the mount's prediction budget (readahead.c): 0, or
 * -ENOSPC when they do not fit. */
int nx_pred_budget_take(struct nx_store *st, const struct nx_spath *p, uint32_t entry,
			uint64_t bytes);

/* pyc.c: predicting the modules a CPython program imports
 * (docs/architecture.md, "Predicted misses"). nx_pyc_parse reads a .pyc
 * file (3.11, 3.12 or 3.13, by its magic number) and lists the imports of
 * its module-level code, at most NX_PYC_ITEMS_MAX: `import a.b` is
 * (level 0, "a.b"); `from .x import y, z` is (1, "x"), (1, "x", sub "y"),
 * (1, "x", sub "z"); names are [off, off+len) of @buf, ASCII identifiers
 * (dotted for a name, not for a sub; a name may be empty with a level).
 * 0; -ENOTSUP for another version; -EINVAL when malformed; -ENOMEM. */
#define NX_PYC_ITEMS_MAX 256
#define NX_PYC_NAME_MAX 255
#define NX_PYC_LEVEL_MAX 32
struct nx_pyc_item {
	unsigned level;
	uint32_t name_off, name_len;
	uint32_t sub_off, sub_len; /* sub_len 0: none */
};
struct nx_pyc_imports {
	unsigned n;
	struct nx_pyc_item item[NX_PYC_ITEMS_MAX];
};
int nx_pyc_parse(const uint8_t *buf, size_t len, struct nx_pyc_imports *out);
/* A read at offset 0 of @entry of @p got its first @len bytes @buf,
 * verified (or, _fd, from a cached chunk file at @off of @fd): a .pyc seen
 * the first time in this mount has its imports predicted by a job. */
void nx_pyc_seen(struct nx_store *st, struct nx_spath *p, uint32_t entry, const uint8_t *buf,
		 size_t len);
void nx_pyc_seen_fd(struct nx_store *st, struct nx_spath *p, uint32_t entry, int fd, uint64_t off,
		    size_t len);
/* A read at offset 0 of @entry of @p misses: with the push-time import
 * graph the job needs no bytes, so it starts now and the closure's wave
 * travels with the file's own read instead of one round trip after it. */
void nx_pyc_miss(struct nx_store *st, struct nx_spath *p, uint32_t entry);
/* The job: parse @entry, fetch the files it imports, parse those, ... */
void nx_pyc_job(struct nx_store *st, struct nx_spath *p, uint32_t entry);
void nx_ra_queue_pyc(struct nx_store *st, struct nx_spath *p, uint32_t entry);

/* The file range [*lo, *hi) covered by the PT_LOAD segments of the ELF file
 * of @size bytes whose first @len bytes are @b; -EINVAL if it is not one. */
int nx_elf_load_range(const uint8_t *b, size_t len, uint64_t size, uint64_t *lo, uint64_t *hi);

/* files.c: whole-file copies for passthrough. nx_files_open scans DIR/files
 * and adds what it finds to total_bytes; nx_files_bytes is their total (for
 * a recount of total_bytes); nx_files_evict drops unpinned copies, least
 * recently used first, until total_bytes <= @target. */
int nx_files_open(struct nx_store *st);
void nx_files_close(struct nx_store *st);
uint64_t nx_files_bytes(struct nx_store *st);
void nx_files_evict(struct nx_store *st, uint64_t target);

/* frames.c */
/* The frame-size policy: every frame but a path's last holds at least
 * NX_FRAME_FLOOR bytes, unless it and the next one together hold more than
 * NX_FRAME_TARGET (nixoci push closes a frame early when the next file does
 * not fit in it). So a path has at most about one frame (one chunk file,
 * one LMDB record) per NX_FRAME_FLOOR bytes, whatever its TOC says. 0, or
 * -EIO after one log line naming the path (@sp). */
#define NX_FRAME_FLOOR 4096u
int nx_frames_policy(const struct nx_spath *p, const char *sp);
struct nx_walk_ops {
	/* a decompressed, verified frame (fetched, or read from the cache
	 * when @file is NULL) */
	int (*data)(void *ctx, uint32_t i, const uint8_t *buf, size_t len);
	/* a cached frame, as an open chunk file */
	int (*file)(void *ctx, uint32_t i, int fd);
	/* optional: frame @i was fetched and saved into the cache by this
	 * walk (each digest once: a repeat inside the run is not reported) */
	void (*saved)(void *ctx, uint32_t i);
	/* readahead: skip frames that are cached or being fetched instead of
	 * reading or waiting for them, deliver nothing, give up on stop */
	int background;
};
/* Set in readahead workers: their walks block no reader, so they may hold
 * their requests for adjacent runs (frames.c). */
extern __thread int nx_walk_deferrable;
/* Delivers frames [first, last] of @p in order, from the cache or fetched
 * in merged runs of at most @batch compressed bytes. */
int nx_frames_walk(struct nx_store *st, struct nx_spath *p, uint32_t first, uint32_t last,
		   uint64_t batch, const struct nx_walk_ops *ops, void *ctx);
/* The same, where frames (last, ext] that are not cached are fetched in
 * the same request as a missing frame of [first, last] when they follow it
 * without a gap (and delivered too; a consumer ignores what it did not ask
 * for); they are never fetched on their own or waited for. */
int nx_frames_walk_ext(struct nx_store *st, struct nx_spath *p, uint32_t first, uint32_t last,
		       uint32_t ext, uint64_t batch, const struct nx_walk_ops *ops, void *ctx);
/* Background fetch of runs [runs[k].first, runs[k].last] of @p, in few
 * requests (the source's get_ranges: one multi-range request for up to
 * NX_RANGES_MAX runs): frames cached or in flight are skipped, the rest
 * claimed, verified, saved. A run that fails verification fails alone and
 * is logged at debug level (the read that asks for the frame logs it);
 * at most NX_MULTI_RUNS runs per call. 0 or a negative errno. */
#define NX_MULTI_RUNS 32
struct nx_frun {
	uint32_t first, last;
};
int nx_frames_fetch_runs(struct nx_store *st, struct nx_spath *p, const struct nx_frun *runs,
			 size_t n);
/* Full verification for narinfo-signed paths (format.md §6). */
int nx_verify_nar(struct nx_store *st, struct nx_spath *p);

#endif
