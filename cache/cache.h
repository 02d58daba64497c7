/*
 * cache/cache.h: the lazy store core. The only folder that includes <lmdb.h>.
 *
 * A struct nx_store turns "a store path base name" into a verified TOC and
 * "bytes [off, off+len) of entry E" into verified bytes, fetching through a
 * struct nx_source (implemented by fetch/, wired in main()) and keeping
 * everything in an on-disk cache:
 *
 *   DIR/index.mdb     LMDB environment (data.mdb, lock.mdb): which chunks and
 *                     blobs are present, their sizes and last use (LRU)
 *   DIR/blobs/xx/<hex>   verified metadata blobs (manifests, TOCs), by digest
 *   DIR/chunks/xx/<hex>  decompressed frames, named by the SHA-256 of the
 *                     compressed frame (the digest the TOC lists)
 *
 * Files are written to DIR/tmp, fsync'ed and renamed into place only after
 * they verify; the LMDB record is written after the rename. A record whose
 * file is missing is a miss, so a crash at any point leaves a cache that only
 * holds verified data. No LMDB transaction is held across network I/O.
 *
 * Thread rules: every function may be called from any thread concurrently
 * after nx_store_open returns. Concurrent misses on one frame collapse into
 * one fetch. A struct nx_spath pointer stays valid (as an identity, and for
 * nx_spath_id and nx_spath_base) until nx_store_close; its manifest and TOC
 * only while the caller holds a reference: nx_store_lookup and
 * nx_store_by_id return one, nx_spath_get adds one, nx_spath_put drops it.
 * Every function taking a struct nx_spath wants one held. Unreferenced
 * paths are unloaded, least recently used first, when the metadata in
 * memory exceeds the budget (nx_store_opts.meta_budget), and are loaded
 * again from the cache when asked for, by name or by id.
 *
 * Errors are negative errnos; -EIO means "could not get verified data"
 * (network down, digest mismatch, malformed artifact) and was logged once.
 *
 * Offline: when the source itself is gone (refused, unreachable, or silent
 * while nothing else it was asked got an answer either) the store logs one
 * line and goes offline: cached data is still served, and while one request
 * probes the source, other misses fail at once with -EIO instead of piling
 * up on a dead registry (and logging one line each). The first answer ends
 * it. One object failing (a 503 after retries, one stalled blob while others
 * are answered) fails only the reads that need it (cache/online.c). Only
 * -ENOENT (the registry said "no such path") is remembered for lookups;
 * network failures never are.
 */
#ifndef NIXOCI_CACHE_H
#define NIXOCI_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/*
 * Where bytes come from. fetch/ provides one (tools/ and fs/ wire it).
 * Both functions have the semantics of nx_registry_get_manifest and
 * nx_registry_get_blob in fetch/fetch.h, including absolute offsets and a
 * possibly whole-blob answer to a range request.
 */
struct nx_source {
	void *ctx;
	int (*get_manifest)(void *ctx, const char *ref, size_t cap, char **body, size_t *len,
			    uint8_t digest[NX_SHA256_LEN]);
	int (*get_blob)(void *ctx, const uint8_t digest[NX_SHA256_LEN], uint64_t off, uint64_t len,
			int (*cb)(void *cbctx, uint64_t off, const void *buf, size_t len),
			void *cbctx);
	/* optional (NULL: none): nx_registry_get_referrers */
	int (*get_referrers)(void *ctx, const uint8_t digest[NX_SHA256_LEN], size_t cap,
			     char **body, size_t *len);
	/* optional (NULL: get_blob per range): several ranges of one blob in
	 * few requests, nx_registry_get_ranges */
	int (*get_ranges)(void *ctx, const uint8_t digest[NX_SHA256_LEN],
			  const struct nx_range *v, size_t n,
			  int (*cb)(void *cbctx, size_t i, uint64_t off, const void *buf,
				    size_t len),
			  void *cbctx);
};

struct nx_store_opts {
	const char *cache_dir;     /* created if missing; default /var/cache/nixoci */
	uint64_t cache_size;       /* bytes; 0 = default 10 GiB */
	const char *closure;       /* tag or "sha256:..." of a closure index, or NULL */
	const char *closure_body;  /* the closure index as the mount's start-up check
				    * fetched it (verified against its digest by
				    * fetch/), or NULL: fetched again here */
	size_t closure_len;
	const struct nx_pubkey *keys; /* trusted keys; NULL/0 = trust the manifest */
	size_t nkeys;
	int readonly_cache;        /* open the cache without writing (tools); a
				    * missing or unusable cache then means reading
				    * straight from the source */
	int readahead;             /* largest readahead window in frames: 0 =
				    * default (32 MiB of NX_FRAME_TARGET frames),
				    * negative = no readahead */
	int lookup_rate;           /* registry lookups per second outside
				    * closure mode: 0 = default
				    * (NX_LOOKUP_RATE_DEFAULT), negative = no
				    * bound */
	const char *origin;        /* where tags resolve (the registry's
				    * HOST/REPO); NULL = "" */
	const char *profile;       /* closure mode: a startup profile to
				    * prefetch at open (its name, or "auto":
				    * the newest), or NULL */
	const char *profile_record; /* write the frames read during the first
				    * profile_seconds to this file at close */
	int profile_seconds;       /* 0 = NX_PROFILE_SECONDS (60) */
	uint64_t meta_budget;      /* bytes of metadata in memory (decoded TOCs,
				    * manifests, names, the closure metadata
				    * blob) beyond which unreferenced paths are
				    * unloaded: 0 = NX_META_BUDGET_DEFAULT */
	int tag_ttl;               /* seconds a cached tag resolution is used
				    * without asking @origin again: 0 = default
				    * (NX_TAG_TTL_DEFAULT), NX_TAG_TTL_ZERO =
				    * ask at every lookup */
};

/* The bound on registry lookups (nx_store_lookup of names the cache does not
 * know, outside closure mode): on average @lookup_rate per second, bursts of
 * up to twice that, and a lookup over the bound waits for its turn only if
 * that comes within NX_LOOKUP_WAIT_MS; otherwise it fails at once with
 * -EAGAIN (one log line per burst). Names in the closure index are bounded
 * by the index and are not counted. */
#define NX_LOOKUP_RATE_DEFAULT 50
#define NX_LOOKUP_WAIT_MS 1000

/*
 * Tag resolutions (store path hash -> manifest digest, outside closure mode)
 * are cached with the time they were made and the origin that made them: a
 * record from another origin is ignored, and one older than tag_ttl is asked
 * again. When the origin cannot answer (down, 5xx) an expired record is used
 * rather than failing; when it says the tag is gone (404), it is not. A
 * closure pinned by digest resolves nothing by name, so it never expires. A
 * path loaded by a running store keeps its resolution while loaded.
 */
#define NX_TAG_TTL_DEFAULT 600
#define NX_META_BUDGET_DEFAULT (UINT64_C(256) << 20)
#define NX_TAG_TTL_ZERO (-1)

struct nx_store;
struct nx_spath;

/*
 * Creates the cache directory @dir if it is missing (0700; missing parents
 * 0755) and checks that it can be trusted: a directory owned by this
 * process's user that no other user can write, whose parents only root or
 * this user can change (a root-owned sticky directory such as /tmp counts
 * as unchangeable), with index.mdb, blobs, chunks and tmp the same and no
 * symlink anywhere on the way. Anyone who could write the cache could
 * change the bytes served (chunks are not re-hashed on every read) and
 * steer the daemon's file operations. 0, or a negative errno after one log
 * line that says why and what to do. nx_store_open applies the same check.
 */
int nx_cache_dir_check(const char *dir);

/* Opens (creating) the cache and, in closure mode, fetches and verifies the
 * closure index and, when the index lists one, the closure metadata blob
 * (format.md 5.1: every path's manifest and TOC in one fetch; a blob that
 * is missing or fails a check is logged once and ignored, and paths load
 * one by one). The store keeps a copy of @src and pointers in @o->keys
 * must outlive the store. */
int nx_store_open(struct nx_store **out, const struct nx_store_opts *o,
		  const struct nx_source *src);
void nx_store_close(struct nx_store *st);

/*
 * Resolves a store path base name "<hash>-<name>": in closure mode through
 * the index, otherwise the tag <hash>. Fetches (or takes from the cache) the
 * manifest and TOC, checks that the manifest's store path equals
 * /nix/store/<base>, enforces the trust policy, and decodes the TOC.
 * -ENOENT when the repository (or closure) has no such path or @base is not
 * a valid store path name; -EACCES when the trust policy refuses it (one log
 * line says why); -EIO when it could not be fetched or is malformed;
 * -EAGAIN when it would go to the registry over the lookup bound. Results
 * are remembered: successes until close (the name, its id and its manifest
 * digest; the loaded part may be unloaded and is then loaded again by that
 * digest, from the cache), -ENOENT and -EACCES for 5 seconds, -EIO not at
 * all. With trusted keys and only a narinfo signature, the first lookup
 * fetches and verifies the whole NAR (remembered in the cache). On success
 * *out holds a reference: nx_spath_put it.
 */
int nx_store_lookup(struct nx_store *st, const char *base, size_t len, struct nx_spath **out);
/* Another reference to @p, for a caller that holds one (an open file, a
 * queued job). */
void nx_spath_get(struct nx_spath *p);
/* Drops a reference; NULL is a no-op. The last one makes @p a candidate
 * for unloading, at once when the store is over its metadata budget. */
void nx_spath_put(struct nx_spath *p);
/* A path that a lookup loads also queues its references for loading in the
 * background (a cache opened read-only does not): at most 2 threads and 64
 * queued names, ordinary lookups (verified, collapsed with foreground ones),
 * yielding to the lookup rate bound; nx_store_close drops the queue and
 * joins them (a lookup in progress ends with its request). */

/*
 * Store paths get a 40-bit id derived from their hash part; the rare
 * collision is settled once and recorded in the cache's id table, so an id
 * is the same across unloads, restarts and successor daemons whatever the
 * load order (without a writable cache, a new collision is settled in load
 * order). The FUSE layer builds inode numbers as (id << 24) | entry.
 * Finds the path with @id, loading it again when it was unloaded or was
 * never loaded by this store but is in the id table; a reference in *out.
 * -ENOENT if no path has that id; load errors as nx_store_lookup.
 */
#define NX_INO_ENTRY_BITS 24
int nx_store_by_id(struct nx_store *st, uint64_t id, struct nx_spath **out);

/* What the store knows of @base without loading anything: 0, its id and
 * the type of its root (enum nx_node_type) when it was resolved before,
 * else -ENOENT. @loaded (may be NULL): the path with a reference when it
 * is loaded now, else NULL. */
int nx_store_peek(struct nx_store *st, const char *base, size_t len, uint64_t *id, int *type,
		  struct nx_spath **loaded);

/* Calls @cb for every store path base name the root directory lists: the
 * closure in closure mode, otherwise the paths resolved so far. Stops and
 * returns a non-zero return of @cb. */
int nx_store_list(struct nx_store *st, int (*cb)(void *ctx, const char *base), void *ctx);

uint64_t nx_spath_id(const struct nx_spath *p);
const char *nx_spath_base(const struct nx_spath *p);
const struct nx_toc *nx_spath_toc(const struct nx_spath *p);
const struct nx_manifest *nx_spath_manifest(const struct nx_spath *p);

/*
 * Reads up to @len bytes of regular-file entry @entry at @off into @buf:
 * fetches the covering frames that are not cached (one Range request for
 * adjacent frames), verifies each frame's SHA-256, decompresses, caches.
 * *got = bytes copied (short only at end of file). -EISDIR for a directory,
 * -EINVAL for a symlink, -ENOENT for an entry index out of range.
 */
int nx_store_read(struct nx_store *st, struct nx_spath *p, uint32_t entry, uint64_t off,
		  size_t len, void *buf, size_t *got);

/*
 * Readahead. A struct nx_reader is the state of one open file (fs/ keeps it
 * in fi->fh); reads through it that continue where the previous ones ended
 * make the store fetch a growing window of the file's next frames (2, 4, ...
 * up to nx_store_opts.readahead frames) in the background, so the reader
 * finds them cached. Random reads get none. Readahead uses the same
 * in-flight table as reads (a frame is never fetched twice at once), is
 * bounded (a few background threads, a short queue; excess is dropped) and
 * stops at nx_store_close. A reader may be used by several threads at once;
 * nx_reader_free must not race with a read through it.
 */
struct nx_reader;
int nx_reader_new(struct nx_reader **out);
void nx_reader_free(struct nx_reader *rd);
/* nx_store_read, plus readahead on behalf of @rd (NULL: none). */
int nx_store_read_ahead(struct nx_store *st, struct nx_spath *p, uint32_t entry, uint64_t off,
			size_t len, void *buf, size_t *got, struct nx_reader *rd);

/*
 * Zero-copy reads. When [@off, @off+@len) of regular-file entry @entry lies
 * in one frame whose chunk is cached, gives out the chunk file instead of
 * bytes: 0, *fd (pinned: hand it back with nx_store_read_fd_done), *fdoff
 * where the range starts in it, *got the bytes it holds (short only at end
 * of file), *frame for the done call. Readahead and statistics as
 * nx_store_read_ahead. -EAGAIN when the range spans frames or the frame is
 * not cached (then read with nx_store_read_ahead, which fetches); other
 * errors as nx_store_read.
 */
int nx_store_read_fd(struct nx_store *st, struct nx_spath *p, uint32_t entry, uint64_t off,
		     size_t len, struct nx_reader *rd, int *fd, uint64_t *fdoff, size_t *got,
		     uint32_t *frame);
/* Closes @fd and unpins the chunk of @frame. */
void nx_store_read_fd_done(struct nx_store *st, struct nx_spath *p, uint32_t frame, int fd);

/*
 * Makes every frame of @p present in the cache. @progress (may be NULL) is
 * called with bytes done and total.
 */
int nx_store_prefetch(struct nx_store *st, struct nx_spath *p,
		      void (*progress)(void *ctx, uint64_t done, uint64_t total), void *ctx);

/*
 * Backing files for FUSE passthrough (files.c). A regular file whose frames
 * are all cached gets a copy holding exactly its bytes, made in the
 * background: DIR/files/xx/<manifest digest>-<entry>, verified bytes only,
 * counted in cache_size and evicted before chunks.
 *
 * nx_store_file_pin: 0 and *fd (O_RDONLY, caller closes) when the copy
 * exists; it is then pinned (never evicted) until nx_store_file_unpin, which
 * the caller calls once per successful pin. -ENOENT when there is no copy
 * (yet): if every frame is cached a copy is queued, so a later open finds
 * it. -EOPNOTSUPP without a writable cache. Never fetches.
 * nx_store_file_want: queues a copy if every frame is cached (a reader just
 * finished with the file). Thread-safe.
 */
int nx_store_file_pin(struct nx_store *st, struct nx_spath *p, uint32_t entry, int *fd);
void nx_store_file_unpin(struct nx_store *st, struct nx_spath *p, uint32_t entry);
void nx_store_file_want(struct nx_store *st, struct nx_spath *p, uint32_t entry);

/*
 * A file about to be read through the daemon (no passthrough copy) was
 * opened: its cached frames' chunk files are handed to the kernel's
 * readahead by background threads (warm.c), at most NX_WARM_FILE_MAX bytes
 * and once per file, so the reads that follow find them in the page cache.
 * Only queues (never blocks on I/O), never fetches. Thread-safe.
 */
void nx_store_file_warm(struct nx_store *st, struct nx_spath *p, uint32_t entry);

struct nx_store_stats {
	uint64_t frames_fetched;
	uint64_t bytes_fetched;    /* compressed bytes received */
	uint64_t cache_hits;       /* frames served from disk */
	uint64_t cache_misses;
	uint64_t cache_bytes;      /* bytes in chunks and metadata blobs now (this
				    * process's view, re-read from LMDB every 64
				    * chunks saved and at each eviction, so what
				    * another process sharing the cache added or
				    * evicted shows up late; blobs are never
				    * evicted) */
	uint64_t copy_bytes;       /* of cache_bytes, the whole-file copies kept
				    * for passthrough (files.c) */
	uint64_t cache_limit;
	uint64_t evictions;
	uint64_t verify_failures;
	uint64_t errors;
	uint64_t paths_loaded;     /* paths resolved (loaded a first time) */
	uint64_t paths_in_memory;  /* of those, loaded now */
	uint64_t paths_unloaded;   /* unloads to keep the metadata budget */
	uint64_t paths_reloaded;   /* loads of a path unloaded before */
	uint64_t meta_bytes;       /* metadata in memory now (headers, loaded
				    * manifests and TOCs, closure metadata) */
	uint64_t meta_budget;
	uint64_t readahead_frames; /* frames fetched by readahead (also in
				    * frames_fetched) */
	uint64_t warm_files;       /* files opened whose cached chunk files
				    * were read ahead from disk (warm.c) */
	uint64_t warm_frames, warm_bytes; /* those chunk files, and bytes */
	uint64_t complete_files;   /* mostly read files whose missing frames
				    * were fetched in the background, for a
				    * passthrough copy (complete.c) */
	uint64_t complete_bytes;   /* compressed bytes those fetches took
				    * (also in bytes_fetched) */
	uint64_t runs_shared;      /* runs of claimed frames handed to another
				    * walker's request instead of sent alone */
	uint64_t predict_elf_files; /* ELF files whose libraries were looked
				     * for (their dynamic section parsed) */
	uint64_t predict_libs;      /* libraries whose start was fetched
				     * before the loader opened them */
	uint64_t predict_whole;     /* files whose rest was fetched when a
				     * read jumped in them (mapped files) */
	uint64_t predict_import;    /* Python modules (.pyc, extension)
				     * fetched before their import */
	uint64_t predict_exec;      /* programs a script runs (#! and
				     * exec), fetched before it runs them */
	int offline;               /* the source was found gone (refused,
				    * unreachable, silent) and has not
				    * answered since */
};
void nx_store_stats(struct nx_store *st, struct nx_store_stats *out);

/*
 * The import graph's edges from one .pyc (pyc.c), for the pusher's
 * dev.nixoci.imports: the entries of @toc (.pyc files, extension modules)
 * that .pyc @entry (its @len bytes at @buf) imports at module level,
 * resolved as a mount resolves them; at most @cap, sorted, into @out,
 * *@n of them. -ENOENT when @entry is not a .pyc the mount would parse,
 * -EINVAL when it does not parse. No mount needed.
 */
int nx_pyc_edges(const struct nx_toc *toc, uint32_t entry, const uint8_t *buf, size_t len,
		 uint32_t *out, unsigned cap, unsigned *n);

/*
 * The dynamic section of a 64-bit little-endian ELF file of @size bytes
 * (elf.c), read through @rd (0, or a negative errno that ends the parse):
 * at most NX_ELF_NEEDED_MAX DT_NEEDED names (each at most NX_ELF_NAME_MAX
 * bytes, without a slash), its DT_RUNPATH (or DT_RPATH without one; ""
 * when neither). 0; -EINVAL when it is not such a file or is malformed;
 * -ENOENT when it names no library; @rd's error. The input is hostile:
 * every count, offset and length is bounded. The mount parses verified
 * frames with it; the pusher, the files it records in dev.nixoci.elf.
 */
struct nx_elf_dyn {
	unsigned nneeded;
	char needed[NX_ELF_NEEDED_MAX][NX_ELF_NAME_MAX + 1];
	char runpath[NX_ELF_RUNPATH_MAX + 1];
	int rpath; /* it is a DT_RPATH (searched before a library path) */
};
typedef int (*nx_elf_read_fn)(void *ctx, uint64_t off, void *buf, size_t len);
int nx_elf_dyn_parse(nx_elf_read_fn rd, void *ctx, uint64_t size, struct nx_elf_dyn *out);

/* The largest .pyc the import rule parses, at a mount or a push. */
#define NX_PYC_MAX_BYTES (UINT64_C(4) << 20)

/* 1 when entry @entry of @toc is named as a .pyc the import rule parses (a
 * regular file NAME.pyc of 17 bytes to NX_PYC_MAX_BYTES in a __pycache__
 * directory), before its magic number is known: what the pusher reads. */
int nx_pyc_named(const struct nx_toc *toc, uint32_t entry);

#endif
