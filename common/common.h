/*
 * common/common.h: the leaf library every other folder uses.
 *
 * It holds what nixoci knows about formats, and nothing that does I/O on the
 * network: logging, SHA-256 digests, nixbase32, store-path names, the NAR
 * writer and parser, the TOC encoder and decoder, the zstd seekable packer and
 * frame decoder, the OCI manifest and index JSON, and Nix signatures.
 *
 * Rules for every function here:
 *  - returns 0 (or a documented non-negative value) on success and a negative
 *    errno on failure; parsers of untrusted bytes return -EINVAL (malformed) or
 *    -E2BIG (a hard limit was exceeded) and log one line naming the problem
 *    at NX_LOG_ERR unless the function says it is quiet;
 *  - strings are NUL-terminated UTF-8 unless a length is given;
 *  - "caller frees" means free(3) unless a *_release or *_free function is named;
 *  - everything is thread-safe unless a handle is shared between threads.
 *
 * The on-registry format these functions implement is docs/format.md.
 */
#ifndef NIXOCI_COMMON_H
#define NIXOCI_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define NX_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* The release, printed by --version (the Makefile may pass its own). */
#ifndef NX_VERSION
#define NX_VERSION "0.1.0"
#endif

/*
 * make analyze (gcc 12 -fanalyzer) loses track of a pointer stored at a
 * variable index of a heap array and reports it leaked ("leak of 'strdup(..)'"
 * at the store). A function whose only such report is that store is wrapped
 * in these two; every other leak in it, and everywhere else, is still
 * reported. Nothing for other compilers.
 */
#if defined(__GNUC__) && !defined(__clang__)
#define NX_ANALYZER_ARRAY_STORE_BEGIN                                                     \
	_Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wanalyzer-malloc-leak\"")
#define NX_ANALYZER_ARRAY_STORE_END _Pragma("GCC diagnostic pop")
#else
#define NX_ANALYZER_ARRAY_STORE_BEGIN
#define NX_ANALYZER_ARRAY_STORE_END
#endif

/* ------------------------------------------------------------------ log */

/* Levels are syslog's. */
#define NX_LOG_ERR 3
#define NX_LOG_WARNING 4
#define NX_LOG_NOTICE 5
#define NX_LOG_INFO 6
#define NX_LOG_DEBUG 7

/* One line per call, prefixed with the program name ("nixoci-fs: "), to
 * stderr, or to syslog after nx_log_use_syslog(1). Lower-case message, no
 * trailing period, no trailing newline (one is added). Thread-safe. */
void nx_log(int level, const char *fmt, ...) NX_PRINTF(2, 3);
void nx_vlog(int level, const char *fmt, va_list ap) NX_PRINTF(2, 0);
/* Messages above @level are dropped. Default NX_LOG_NOTICE. */
void nx_log_set_level(int level);
int nx_log_get_level(void);
void nx_log_set_prog(const char *prog); /* pointer is kept; use a literal */
void nx_log_use_syslog(int on);
/* Prefix stderr lines with a UTC time stamp and "prog[pid]" (for a log
 * file, which has no journal to add them). */
void nx_log_set_stamps(int on);
/* While set, every error or warning this thread logs ends with " (CTX)",
 * CTX written by @fn(@arg) when the line is logged (so setting it costs
 * nothing on the paths that log nothing). fn NULL clears it. The file
 * system sets "reading /nix/store/<base>/<file>" around a read, so the one
 * line that names the cause also names the file. */
void nx_log_set_context(void (*fn)(void *arg, char *buf, size_t cap), void *arg);

/* --------------------------------------------------------------- digest */

#define NX_SHA256_LEN 32
/* "sha256:" + 64 hex + NUL */
#define NX_DIGEST_STRLEN 72

struct nx_sha256 {
	void *md; /* EVP_MD_CTX *, private */
};
int nx_sha256_init(struct nx_sha256 *h);
void nx_sha256_update(struct nx_sha256 *h, const void *buf, size_t len);
/* Writes the digest and releases the context (init again to reuse). */
void nx_sha256_final(struct nx_sha256 *h, uint8_t out[NX_SHA256_LEN]);
/* Releases a context without finishing it (error paths). */
void nx_sha256_release(struct nx_sha256 *h);
void nx_sha256(const void *buf, size_t len, uint8_t out[NX_SHA256_LEN]);

/* Lower-case hex; @out has room for 2*len+1. */
void nx_hex(const uint8_t *buf, size_t len, char *out);
/* OCI digest "sha256:<64 lower hex>". Quiet: returns -EINVAL, no log. */
int nx_digest_parse(const char *s, uint8_t out[NX_SHA256_LEN]);
void nx_digest_format(const uint8_t d[NX_SHA256_LEN], char out[NX_DIGEST_STRLEN]);

/* Standard padded base64 (OpenSSL EVP). nx_base64_decode accepts padded and
 * unpadded input, returns the decoded length or -EINVAL; @out needs
 * 3*(len/4+1) bytes. nx_base64_encode writes 4*((len+2)/3)+1 bytes. Quiet. */
ssize_t nx_base64_decode(const char *in, size_t len, uint8_t *out, size_t cap);
void nx_base64_encode(const uint8_t *in, size_t len, char *out);

/* -------------------------------------------------------------- nix32 */

/* Characters needed for @n bytes: (n*8-1)/5+1 (0 for 0). */
size_t nx_nix32_len(size_t n);
/* @out gets nx_nix32_len(len) chars + NUL. */
void nx_nix32_encode(const uint8_t *in, size_t len, char *out);
/* Decodes exactly @slen chars into @outlen bytes; -EINVAL on a bad char,
 * wrong length or overflow bits. Quiet. */
int nx_nix32_decode(const char *s, size_t slen, uint8_t *out, size_t outlen);

/* --------------------------------------------------------- store paths */

#define NX_STORE_DIR "/nix/store"
#define NX_HASH_LEN 32      /* nixbase32 chars of the hash part */
#define NX_NAME_MAX 211     /* name part */
#define NX_BASE_MAX (NX_HASH_LEN + 1 + NX_NAME_MAX)

/* Checks "<32 nix32 chars>-<name>" per Nix's grammar (name charset, length,
 * not "." / ".." / ".-" / "..-" prefixes). @len is the length of @base.
 * Quiet: 0 or -EINVAL. */
int nx_storepath_check_base(const char *base, size_t len);
/* Accepts "/nix/store/<base>" (no trailing slash); sets *base to point into
 * @path. Quiet: 0 or -EINVAL. */
int nx_storepath_check(const char *path, const char **base);

/* A NarHash in any form Nix accepts ("sha256:" + nix32/hex/base64, or SRI
 * "sha256-<base64>"). Quiet: 0 or -EINVAL. */
int nx_narhash_parse(const char *s, uint8_t out[NX_SHA256_LEN]);
/* "sha256:" + 52 nix32 chars + NUL = 60 bytes. */
#define NX_NARHASH_STRLEN 60
void nx_narhash_format(const uint8_t h[NX_SHA256_LEN], char out[NX_NARHASH_STRLEN]);

/* ---------------------------------------------------------------- NAR */

/* Limits the parser and the TOC decoder enforce (Nix 2.35's, docs/format.md) */
#define NX_NAR_NAME_MAX 255
#define NX_NAR_TARGET_MAX 4095
#define NX_NAR_DEPTH_MAX 64 /* a directory at depth 64 is refused; root = 0 */

enum nx_node_type {
	NX_NODE_REGULAR = 1,
	NX_NODE_DIRECTORY = 2,
	NX_NODE_SYMLINK = 3,
};

/*
 * One NAR node, as the writer and the parser see it. Events come in NAR
 * order (depth first, names in byte order). @path is relative to the store
 * path root ("" for the root, "bin/hello" below it) and valid only during
 * the callback. For a regular file, @contents_off is the NAR offset of the
 * first content byte (just after the 8-byte length) and @size the file size;
 * the event is delivered before the content bytes are emitted. For a
 * symlink, @target/@size hold the target. A directory event comes before its
 * children; @size is 0.
 */
struct nx_nar_node {
	enum nx_node_type type;
	const char *path;
	size_t path_len;
	const char *name; /* last component of path ("" for root) */
	size_t name_len;
	unsigned depth; /* root = 0 */
	int executable;
	uint64_t size;
	uint64_t contents_off;
	const char *target;
};

/*
 * Consumer of a NAR stream. @write gets every byte of the NAR in order;
 * @node is called once per node as described above (may be NULL). Either
 * returns 0 or a negative errno, which aborts the dump/parse and is returned.
 */
struct nx_nar_sink {
	void *ctx;
	int (*write)(void *ctx, const void *buf, size_t len);
	int (*node)(void *ctx, const struct nx_nar_node *node);
};

/*
 * Serializes the file system object at @path exactly as `nix-store --dump`
 * does (lstat, no symlink following, directories sorted bytewise, only the
 * user-execute bit kept). Unsupported file types, names or targets over the
 * limits give -EINVAL with a log line naming the file. I/O errors are
 * returned as -errno with a log line.
 */
int nx_nar_dump(const char *path, const struct nx_nar_sink *sink);

/*
 * Streaming NAR parser for untrusted bytes. Feed any split of the input;
 * it validates every rule of Nix's parser (docs/format.md "NAR rules"):
 * tokens, sorted unique names, forbidden names, zero padding, limits. Events
 * and bytes go to @sink (write may be NULL). nx_nar_parser_finish returns
 * -EINVAL if the archive is incomplete or had trailing bytes.
 */
struct nx_nar_parser;
int nx_nar_parser_new(struct nx_nar_parser **out, const struct nx_nar_sink *sink);
int nx_nar_parser_feed(struct nx_nar_parser *p, const void *buf, size_t len);
int nx_nar_parser_finish(struct nx_nar_parser *p);
/* Total bytes consumed so far. */
uint64_t nx_nar_parser_offset(const struct nx_nar_parser *p);
void nx_nar_parser_free(struct nx_nar_parser *p);

/* ---------------------------------------------------------------- TOC */

/*
 * The TOC (docs/format.md "TOC blob") describes one store path's NAR: every
 * node, and every zstd frame of the NAR layer with the SHA-256 of its
 * compressed bytes. In memory, entries are in breadth-first order so that the
 * children of a directory are contiguous and sorted by name; entry 0 is the
 * store path's root. The entry index is stable for a given TOC and is part
 * of the inode number (docs/architecture.md).
 */
#define NX_TOC_MAX_ENTRIES (1u << 24)
#define NX_TOC_MAX_FRAMES (1u << 24)
#define NX_TOC_MAX_BYTES (256u << 20)
#define NX_FRAME_MAX (1u << 20) /* uncompressed bytes per frame: the format's limit */
/*
 * What the packer cuts at. A reader that faults one page of a shared library
 * (the kernel asks for 128 KiB around it) or imports one module fetches the
 * whole frame that holds it, so the frame size is the unit of over-fetch:
 * 256 KiB frames fetch about 20% less than 1 MiB ones for a CPython start
 * and cost about 4% more compressed bytes (docs/benchmarks.md).
 */
#define NX_FRAME_TARGET (1u << 18)

struct nx_toc_entry {
	uint32_t parent;      /* index of the parent dir; root: 0 */
	uint32_t name_off;    /* into strtab; root: name_len 0 */
	uint32_t name_len;
	uint8_t type;         /* enum nx_node_type */
	uint8_t executable;   /* regular only */
	uint32_t first_child; /* directories: index of first child */
	uint32_t nchildren;   /* directories: number of children */
	uint64_t size;        /* regular: file size; symlink: target length */
	uint64_t off;         /* regular: NAR offset of contents;
			       * symlink: strtab offset of target */
};

struct nx_toc_frame {
	uint64_t coff; /* offset in the NAR layer blob */
	uint64_t uoff; /* offset in the NAR */
	uint32_t clen;
	uint32_t ulen;
	uint8_t sha256[NX_SHA256_LEN]; /* of the compressed bytes */
};

struct nx_toc {
	uint64_t nar_size;
	uint64_t blob_size; /* whole NAR layer, seek table included */
	uint32_t nentries;
	uint32_t nframes;
	uint32_t strtab_len;
	struct nx_toc_entry *entries;
	struct nx_toc_frame *frames;
	char *strtab;
};

/* Builds a TOC while nx_nar_dump runs: use nx_toc_builder_sink() as (part
 * of) the NAR sink and call nx_toc_builder_add_frame for each frame the
 * packer emits. */
struct nx_toc_builder;
int nx_toc_builder_new(struct nx_toc_builder **out);
int nx_toc_builder_node(struct nx_toc_builder *b, const struct nx_nar_node *n);
int nx_toc_builder_add_frame(struct nx_toc_builder *b, const struct nx_toc_frame *f);
/* Produces the encoded TOC (caller frees *buf). @nar_size/@blob_size are the
 * final sizes. The builder can then only be freed. */
int nx_toc_builder_finish(struct nx_toc_builder *b, uint64_t nar_size, uint64_t blob_size,
			  uint8_t **buf, size_t *len);
void nx_toc_builder_free(struct nx_toc_builder *b);

/*
 * Decodes and validates an encoded TOC from untrusted bytes (already verified
 * against its digest, but treat as hostile). Every rule of docs/format.md is
 * checked: magic, version, limits, string bounds, tree shape, sorted unique
 * valid names, frames contiguous from 0 covering exactly nar_size and
 * blob_size minus the seek table, file ranges inside nar_size. On success
 * *out is owned by the caller: nx_toc_free().
 */
int nx_toc_decode(const void *buf, size_t len, struct nx_toc **out);
/*
 * The TOC layer as stored (one zstd frame with a declared content size of at
 * most @cap), decoded as it streams: push its bytes in pieces of any size,
 * from the network or a file, and they are inflated straight into the
 * tables. Peak memory is the tables (sized by a header the declared size
 * confirms) plus zstd's window (capped at 2^NX_TOC_WINDOW_LOG_MAX) plus the
 * caller's buffer: the compressed layer and the inflated TOC are never held.
 * Bounds come first: the declared size on the first 18 bytes, the TOC header
 * (magic, version, counts, length) on the first 64 inflated ones, before any
 * table is allocated. Every rule of nx_toc_decode is then checked.
 *
 * nx_toc_reader_new: @zlen is the layer's size from its descriptor; @digest
 * its SHA-256, or NULL when the caller verifies the bytes itself (a cache
 * file checked as it is read, a blob verified as a whole); @what names the
 * layer in the one log line a refusal writes ("toc of /nix/store/..."),
 * copied. nx_toc_reader_feed: 0, or -ENOMEM; a malformed layer is not an
 * error here (its bytes still go through the digest), only at finish.
 * nx_toc_reader_finish: 0 and *out (caller frees: nx_toc_free); -EBADMSG if
 * the bytes are not the ones @digest names (or not @zlen of them), logged by
 * nobody: the caller says "digest mismatch"; -EINVAL or -E2BIG for a
 * layer that is the blob but breaks a rule, logged as one line; -ENOMEM.
 * After finish the reader can only be freed. Not thread-safe; one reader
 * per layer.
 */
#define NX_TOC_WINDOW_LOG_MAX 24
struct nx_toc_reader;
int nx_toc_reader_new(struct nx_toc_reader **out, const char *what, uint64_t zlen,
		      const uint8_t digest[NX_SHA256_LEN], size_t cap);
int nx_toc_reader_feed(struct nx_toc_reader *r, const void *buf, size_t len);
int nx_toc_reader_finish(struct nx_toc_reader *r, struct nx_toc **out);
void nx_toc_reader_free(struct nx_toc_reader *r);
/* The inflated size the layer declares, known once its first
 * NX_TOC_READER_HEAD bytes (or all of a shorter layer) have been fed and
 * within the cap; 0 before, or when the layer was refused. For a caller
 * that makes room before the tables fill. */
#define NX_TOC_READER_HEAD 18
uint64_t nx_toc_reader_declared(const struct nx_toc_reader *r);
/* The same in one call, for a layer already in memory and verified. */
int nx_toc_decode_zstd(const void *z, size_t zlen, size_t cap, struct nx_toc **out);
void nx_toc_free(struct nx_toc *toc);

/* Child of directory @dir named @name, or -ENOENT / -ENOTDIR. Binary search. */
int64_t nx_toc_lookup(const struct nx_toc *toc, uint32_t dir, const char *name, size_t len);
/* Pointer into strtab, not NUL-terminated: use *len. Valid while toc lives. */
const char *nx_toc_name(const struct nx_toc *toc, uint32_t idx, size_t *len);
const char *nx_toc_target(const struct nx_toc *toc, uint32_t idx, size_t *len);
/* The path of entry @idx below the store path's root ("bin/hello"; "" for
 * the root) into @buf, NUL-terminated. -E2BIG when it does not fit (@buf
 * then holds the part that did). For messages. */
int nx_toc_path(const struct nx_toc *toc, uint32_t idx, char *buf, size_t cap);
/* Frames [*first, *last] that cover NAR bytes [uoff, uoff+len), len > 0. */
int nx_toc_frames_for(const struct nx_toc *toc, uint64_t uoff, uint64_t len, uint32_t *first,
		      uint32_t *last);

/* ------------------------------------------------ zstd seekable packing */

/* The zstd settings of format v1, recorded in the manifest. */
#define NX_ZSTD_LEVEL 3

/*
 * Compresses a NAR into independent zstd frames written to @fd, then the
 * seek table. Use nx_packer_sink() as the NAR sink (it routes nodes to @toc
 * too when @toc is not NULL, and records frames there). Frames are cut so no
 * frame exceeds NX_FRAME_TARGET uncompressed bytes, small files share frames,
 * and a file that does not fit in the current frame starts a new one.
 */
struct nx_packer;
int nx_packer_new(struct nx_packer **out, int fd, struct nx_toc_builder *toc);
/* The sink to hand to nx_nar_dump; valid while the packer lives. */
const struct nx_nar_sink *nx_packer_sink(struct nx_packer *p);
/* The layer goes into a pack (format 2) whose digest is computed whole:
 * its own digest is not needed, and finish reports it as zeros. */
void nx_packer_no_blob_hash(struct nx_packer *p);
/* Flushes the last frame, writes the seek table. Reports totals and the
 * SHA-256 of everything written to @fd and of the NAR itself. */
int nx_packer_finish(struct nx_packer *p, uint64_t *nar_size, uint64_t *blob_size,
		     uint8_t blob_sha256[NX_SHA256_LEN], uint8_t nar_sha256[NX_SHA256_LEN]);
void nx_packer_free(struct nx_packer *p);
/* "zstd=1.5.4;level=3;frame-max=1048576;checksum=1;pledged=1;workers=0" */
const char *nx_packer_params(void);

/* Seek table (zstd seekable format, no checksums). Encodes n frames as the
 * final skippable frame; @out must hold 9 + 8 + 8*n bytes. */
size_t nx_seektable_size(uint32_t nframes);
void nx_seektable_encode(const struct nx_toc_frame *f, uint32_t n, uint8_t *out);
/* Parses a seek table from the last @len bytes of a blob (@tail). On success
 * *sizes gets n pairs (csize, dsize) as uint32 (caller frees). */
int nx_seektable_decode(const void *tail, size_t len, uint32_t **sizes, uint32_t *n);

/*
 * Decompresses one frame of exactly @clen bytes into @dst, which must hold
 * exactly @ulen bytes. The frame header's content size must equal @ulen and
 * the output must be exactly @ulen (a bomb or short frame is -EINVAL).
 */
int nx_frame_decompress(const void *src, size_t clen, void *dst, size_t ulen);
/* One-shot helpers for the TOC blob (a single zstd frame). *out is
 * malloc'ed; decompressed size is capped at @cap. */
int nx_zstd_compress(const void *src, size_t len, uint8_t **out, size_t *outlen);
int nx_zstd_decompress(const void *src, size_t len, size_t cap, uint8_t **out, size_t *outlen);

/* ------------------------------------------------- manifests and index */

#define NX_MT_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define NX_MT_INDEX "application/vnd.oci.image.index.v1+json"
#define NX_MT_EMPTY "application/vnd.oci.empty.v1+json"
#define NX_ARTIFACT_STORE_PATH "application/vnd.nixoci.store-path.v1"
/* format 2: the path's NAR layer and TOC live in a shared pack blob */
#define NX_ARTIFACT_STORE_PATH_PACKED "application/vnd.nixoci.store-path.v2"
#define NX_MT_PACK "application/vnd.nixoci.pack.v1"
#define NX_MT_NAR "application/vnd.nixoci.nar.v1.zstd-seekable"
#define NX_MT_TOC "application/vnd.nixoci.toc.v1+zstd"
#define NX_EMPTY_DIGEST "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
#define NX_MANIFEST_MAX (4u << 20)
#define NX_INDEX_MAX (4u << 20)

/* The narinfo view of a store path (all strings caller-owned via release). */
struct nx_pathinfo {
	char *store_path;              /* "/nix/store/<hash>-<name>" */
	uint8_t nar_hash[NX_SHA256_LEN];
	uint64_t nar_size;
	char **refs;                   /* base names, sorted */
	size_t nrefs;
	char *deriver;                 /* base name or NULL */
	char **sigs;                   /* "name:base64" */
	size_t nsigs;
	char *ca;                      /* or NULL */
};
void nx_pathinfo_release(struct nx_pathinfo *pi);

struct nx_desc {
	uint8_t digest[NX_SHA256_LEN];
	uint64_t size;
};

/* One store-path manifest (docs/format.md "Store-path manifest"). */
struct nx_elf_needs;
struct nx_manifest {
	struct nx_pathinfo info;
	/* Format 1: layer 0 (NX_MT_NAR) and layer 1 (NX_MT_TOC), each its own
	 * blob. Format 2 (packed): nar.digest is the pack blob's digest and
	 * nar.size the NAR layer's length inside it, at nar_off; toc is the
	 * TOC's own digest and length, at toc_off in the same pack. */
	struct nx_desc nar;
	struct nx_desc toc;
	int packed;
	uint64_t pack_size, nar_off, toc_off;
	char **toc_sigs;    /* "name:base64" over nx_toc_fingerprint */
	size_t ntoc_sigs;
	char *zstd_params;  /* nx_packer_params() at push time */
	/* dev.nixoci.imports (format.md 2): the import graph of the path's
	 * .pyc files, nimports edges (importing entry, imported entry) at
	 * imports[2i], imports[2i+1], sorted, unique; 0: none (or ignored) */
	uint32_t *imports;
	size_t nimports;
	/* dev.nixoci.elf (format.md 2): the dynamic sections of its ELF
	 * files; NULL: none (or ignored) */
	struct nx_elf_needs *elf;
};
void nx_manifest_release(struct nx_manifest *m);
/* The dev.nixoci.imports encoding: "v1;E:T,T;E:T" (format.md 2), at most
 * NX_IMPORTS_MAX bytes. _format: *out caller frees, -E2BIG over the cap.
 * _parse: strict (-EINVAL: bad syntax, unsorted, duplicate; -E2BIG), no
 * log; *edges caller frees. */
#define NX_IMPORTS_MAX (256u << 10)
int nx_imports_format(const uint32_t *edges, size_t n, char **out);
int nx_imports_parse(const char *s, uint32_t **edges, size_t *n);
/*
 * dev.nixoci.elf: for each ELF file of a path that names libraries, what
 * its dynamic section says (DT_NEEDED in order, DT_RUNPATH or DT_RPATH),
 * recorded by the pusher so a mount resolves a program's libraries, and
 * theirs, before any of their bytes arrive. The limits are the mount's
 * parser's (cache/elf.c), so a record says nothing the parser could not.
 */
#define NX_ELF_NEEDED_MAX 64
#define NX_ELF_NAME_MAX 255
#define NX_ELF_RUNPATH_MAX 4095
#define NX_ELF_NEEDS_MAX (256u << 10)
struct nx_elf_need {
	uint32_t entry;  /* TOC entry of the ELF file */
	int32_t search;  /* its search path in search[], -1: none */
	int rpath;       /* that search path is a DT_RPATH */
	uint32_t name0;  /* its DT_NEEDED names: names[name0 .. name0 + nnames) */
	uint32_t nnames; /* 1 .. NX_ELF_NEEDED_MAX */
};
struct nx_elf_needs {
	struct nx_elf_need *files; /* entry ascending, unique */
	size_t nfiles;
	char **names;
	size_t nnames;
	char **search;
	size_t nsearch;
};
/* _format: {"files":[[E,K,R,"name",...],...],"search":["dirs",...],"v":1}
 * (format.md 2), at most NX_ELF_NEEDS_MAX bytes; *out caller frees,
 * -E2BIG over the cap. _parse: strict (-EINVAL: not that shape, entries
 * not ascending, a name with '/', an index out of range; -E2BIG), no log;
 * *out freed with nx_elf_needs_free. _find: @entry's record or NULL. */
/* _add: appends @entry's record (entries ascending; @dir "" or NULL for no
 * search path, @rpath ignored without one) to *@np, allocated on first
 * use; the same limits as _parse (-EINVAL); after -ENOMEM *@np is still
 * whole (without that file), for the caller to free. */
int nx_elf_needs_add(struct nx_elf_needs **np, uint32_t entry, const char *dir, int rpath,
		     const char *const *names, unsigned nnames);
int nx_elf_needs_format(const struct nx_elf_needs *n, char **out);
int nx_elf_needs_parse(const char *s, struct nx_elf_needs **out);
void nx_elf_needs_free(struct nx_elf_needs *n);
const struct nx_elf_need *nx_elf_needs_find(const struct nx_elf_needs *n, uint32_t entry);
/* Deterministic serialization: same struct, same bytes. *json caller frees. */
int nx_manifest_build(const struct nx_manifest *m, char **json, size_t *len);
/* Strict parse of untrusted bytes (≤ NX_MANIFEST_MAX): media types, artifact
 * type, annotations present and well-formed, store path valid. */
int nx_manifest_parse(const char *json, size_t len, struct nx_manifest *out);
/* Where @m's TOC bytes are: in the blob *digest at offset *off (its own
 * blob at 0 in format 1, the pack in format 2). */
void nx_manifest_toc_at(const struct nx_manifest *m, const uint8_t **digest, uint64_t *off);

/*
 * A window on a blob callback: passes on only the bytes of
 * [base, base + len) of a blob, with offsets relative to base, so a reader
 * of a region of a pack sees what it would see of a blob of its own (a
 * source that ignores Range and sends the whole pack included).
 */
struct nx_window {
	int (*cb)(void *ctx, uint64_t off, const void *buf, size_t len);
	void *ctx;
	uint64_t base, len;
};
int nx_window_cb(void *ctx, uint64_t off, const void *buf, size_t len);

/* A closure: an OCI image index listing store-path manifests. */
struct nx_index_entry {
	struct nx_desc desc;
	char *store_path;
};
struct nx_index {
	struct nx_index_entry *entries;
	size_t nentries;
	char **roots; /* store paths */
	size_t nroots;
	/* the closure metadata manifest (format.md 5.1), when has_meta */
	int has_meta;
	struct nx_desc meta;
	/* the blob that manifest names, from its descriptor's annotations (a
	 * hint: a reader fetches it beside the manifest, and uses it only if
	 * the manifest names it too), when has_meta_blob */
	int has_meta_blob;
	struct nx_desc meta_blob;
};
void nx_index_release(struct nx_index *ix);
int nx_index_build(const struct nx_index *ix, char **json, size_t *len);
/* -EINVAL if it is not a nixoci closure index. */
int nx_index_parse(const char *json, size_t len, struct nx_index *out);

/*
 * Closure metadata (docs/format.md 5.1): one blob holding every path's
 * manifest and TOC blob, so that a closure mount loads all its metadata in
 * one fetch. It is the only layer of a small manifest (artifactType
 * NX_ARTIFACT_CLOSURE_META) that the closure index lists.
 */
#define NX_ARTIFACT_CLOSURE_META "application/vnd.nixoci.closure-meta.v1"
#define NX_MT_CLOSURE_META "application/vnd.nixoci.closure-meta.v1+zstd"
/* Caps of the reader: the compressed blob and what it inflates to. */
#define NX_CMETA_MAX_BYTES (UINT64_C(512) << 20)
#define NX_CMETA_MAX_INFLATED (UINT64_C(1) << 30)
int nx_cmeta_manifest_build(const struct nx_desc *blob, char **json, size_t *len);
/* Strict parse of the metadata manifest; *blob gets its layer. */
int nx_cmeta_manifest_parse(const char *json, size_t len, struct nx_desc *blob);

/* One store path in the metadata blob: its manifest bytes and TOC blob. */
struct nx_cmeta_item {
	const uint8_t *man;
	size_t man_len;
	const uint8_t *toc;
	size_t toc_len;
};
/* Encodes @n items and compresses; *blob caller frees. */
int nx_cmeta_encode(const struct nx_cmeta_item *items, size_t n, uint8_t **blob, size_t *len);
/* Inflates (capped) and checks the layout of untrusted bytes. *raw (caller
 * frees) holds the inflated blob; *items (caller frees) point into it.
 * -EINVAL after one log line when it is malformed. Nothing is verified
 * against any digest here: that is the reader's job. */
int nx_cmeta_decode(const uint8_t *blob, size_t len, uint8_t **raw, struct nx_cmeta_item **items,
		    size_t *n);

/* ---------------------------------------------------------- signatures */

struct nx_pubkey {
	char name[128];
	uint8_t key[32];
};
struct nx_seckey {
	char name[128];
	uint8_t seed[32];
};
/* Parses a whitespace- or comma-separated list of "name:base64" keys.
 * *keys caller frees. */
int nx_pubkeys_parse(const char *list, struct nx_pubkey **keys, size_t *n);
/* Reads a `nix-store --generate-binary-cache-key` secret key file. */
int nx_seckey_load(const char *file, struct nx_seckey *out);
/* Nix's narinfo fingerprint "1;<path>;sha256:<nix32>;<size>;<refs>". */
int nx_fingerprint(const struct nx_pathinfo *pi, char **out);
/* nixoci's TOC fingerprint, docs/format.md "Trust". */
int nx_toc_fingerprint(const char *store_path, const uint8_t nar_hash[NX_SHA256_LEN],
		       const uint8_t toc_digest[NX_SHA256_LEN], char **out);
/* 1 if @sig ("name:base64") verifies over @msg under the key of that name in
 * @keys, 0 if not (unknown name, bad signature, malformed), never negative
 * except -ENOMEM. */
int nx_sig_verify(const struct nx_pubkey *keys, size_t nkeys, const char *sig, const char *msg,
		  size_t len);
/* *sig = "name:base64" (caller frees). */
int nx_sig_sign(const struct nx_seckey *key, const char *msg, size_t len, char **sig);

/* ------------------------------------------- binary-cache decompression */

/* The compressions of a Nix binary cache's NAR files that we read. */
enum nx_comp { NX_COMP_NONE, NX_COMP_XZ, NX_COMP_ZSTD, NX_COMP_BZIP2 };
/* "none", "xz", "zstd", "bzip2" (narinfo's Compression). Quiet: -EINVAL. */
int nx_comp_parse(const char *name, enum nx_comp *out);
/*
 * Streaming decompressor of untrusted input (liblzma, libzstd, libbz2).
 * Every decompressed byte goes to @fn in pieces of at most 256 KiB, nothing
 * is accumulated; a negative return from @fn aborts and is returned by
 * feed/finish. nx_decomp_finish returns -EINVAL (logged) when the stream
 * was truncated; bytes after the end of the stream are -EINVAL too.
 */
struct nx_decomp;
int nx_decomp_new(struct nx_decomp **out, enum nx_comp kind,
		  int (*fn)(void *ctx, const void *buf, size_t len), void *ctx);
int nx_decomp_feed(struct nx_decomp *d, const void *buf, size_t len);
int nx_decomp_finish(struct nx_decomp *d);
void nx_decomp_free(struct nx_decomp *d);

/* A byte range of a blob: what fetch/ reads in one multi-range request
 * (nx_registry_get_ranges) and cache/ asks of its source (nx_source). */
struct nx_range {
	uint64_t off, len;
};

/* ----------------------------------------------------------- metrics */

/*
 * Latency histogram: bucket i counts observations <= nx_hist_bounds_ns[i]
 * (and above the previous bound); count[NX_HIST_BUCKETS] the rest (+Inf).
 * Zero-initialize; nx_hist_observe is thread-safe (relaxed atomics).
 */
#define NX_HIST_BUCKETS 15
extern const uint64_t nx_hist_bounds_ns[NX_HIST_BUCKETS];
struct nx_hist {
	uint64_t count[NX_HIST_BUCKETS + 1];
	uint64_t sum_ns;
};
void nx_hist_observe(struct nx_hist *h, uint64_t ns);
/* dst += a snapshot of src (dst is private to the caller). */
void nx_hist_add(struct nx_hist *dst, const struct nx_hist *src);

/*
 * Prometheus text exposition format (0.0.4) into a caller's buffer. Every
 * writer appends; on overflow p->err becomes -E2BIG and the text stops at
 * the last whole line. @labels is the inside of {...} ("" for none), with
 * values escaped by nx_prom_label_escape.
 */
struct nx_prom {
	char *buf;
	size_t cap, len;
	int err;
};
void nx_prom_init(struct nx_prom *p, char *buf, size_t cap);
int nx_prom_label_escape(const char *in, char *out, size_t cap);
void nx_prom_help(struct nx_prom *p, const char *name, const char *type, const char *help);
void nx_prom_value(struct nx_prom *p, const char *name, const char *labels, uint64_t v);
/* _bucket (cumulative, le in seconds), _sum (seconds) and _count lines */
void nx_prom_hist(struct nx_prom *p, const char *name, const char *labels,
		  const struct nx_hist *h);

/* ------------------------------------------------------------ narinfo */

#define NX_NARINFO_MAX (1u << 20)

/* A binary cache's narinfo: the path's metadata and where its NAR is. */
struct nx_narinfo {
	struct nx_pathinfo info; /* refs sorted; sigs in file order */
	char *url;               /* relative to the cache: no scheme, no "/.." */
	enum nx_comp comp;       /* bzip2 when the narinfo names none, as Nix */
	int have_file_hash;
	uint8_t file_hash[NX_SHA256_LEN];
	uint64_t file_size; /* 0: not given */
};
/*
 * Strict parse of untrusted narinfo bytes (at most NX_NARINFO_MAX). @src names
 * the narinfo in log lines (its URL). When @want is not NULL, StorePath's hash
 * part must be @want (32 chars). Required: StorePath, URL, NarHash, NarSize,
 * References; every field must be well-formed and appear once (Sig any number
 * of times); unknown fields are ignored. -EINVAL with one log line naming
 * @src and the field; on success release with nx_narinfo_release.
 */
int nx_narinfo_parse(const char *src, const char *want, const char *text, size_t len,
		     struct nx_narinfo *out);
void nx_narinfo_release(struct nx_narinfo *ni);

/* -------------------------------------------------------------- misc */

/* Parses "10G", "10GB", "10GiB", "512M", "4096", "1K" (K/M/G/T, each
 * optionally followed by B or iB: always powers of 1024). Quiet. */
int nx_parse_size(const char *s, uint64_t *out);
/* The default cache directory of nixoci-fs and nixoci prefetch: for root
 * /var/cache/nixoci, for anyone else $XDG_CACHE_HOME/nixoci (when set and
 * absolute) or $HOME/.cache/nixoci (HOME from the environment, else the
 * password database). 0, or -ENOENT when there is no home, -ENAMETOOLONG. */
#define NX_ROOT_CACHE_DIR "/var/cache/nixoci"
int nx_default_cache_dir(char *buf, size_t cap);
/* mkdir -p @path: creates the missing directories with @mode (existing
 * ones are left as they are). 0 or -errno. */
int nx_mkdir_p(const char *path, mode_t mode);
/* Writes all of @buf to @fd, retrying short writes and EINTR: 0 or -errno
 * (-EIO if write(2) returns 0). Quiet. */
int nx_write_all(int fd, const void *buf, size_t len);
/* Reads exactly @len bytes at @off: 0, -errno, or -EIO at end of file. Quiet. */
int nx_pread_all(int fd, void *buf, size_t len, off_t off);
/* Monotonic clock in nanoseconds. */
uint64_t nx_now_ns(void);


/* ------------------------------------------------- startup profiles (format.md §5.2) */

/*
 * A startup profile: the frames a workload read first, in that order, as
 * (store path base name, frame digest). Text: the line "nixoci-profile 1",
 * then one line "<base> sha256:<hex>" per frame; at most
 * NX_PROFILE_MAX_ENTRIES lines and NX_PROFILE_MAX_BYTES bytes. Pushed as
 * an OCI artifact (artifactType NX_AT_PROFILE, one NX_MT_PROFILE layer,
 * subject = the closure index, annotation NX_ANN_PROFILE_NAME = its name,
 * and NX_ANN_PROFILE_BLOB / NX_ANN_PROFILE_BLOB_SIZE = its layer's digest
 * and size: a referrers index copies a manifest's annotations into its
 * descriptor, so a reader can fetch the manifest and the layer at once).
 */
#define NX_AT_PROFILE "application/vnd.nixoci.profile.v1"
#define NX_MT_PROFILE "application/vnd.nixoci.profile.v1+text"
#define NX_ANN_PROFILE_NAME "dev.nixoci.profile.name"
#define NX_ANN_PROFILE_BLOB "dev.nixoci.profile.blob"
#define NX_ANN_PROFILE_BLOB_SIZE "dev.nixoci.profile.blob-size"
#define NX_PROFILE_MAX_ENTRIES 65536u
#define NX_PROFILE_MAX_BYTES (UINT64_C(24) << 20)
struct nx_profile_ent {
	char base[NX_BASE_MAX + 1];
	uint8_t digest[NX_SHA256_LEN];
};
struct nx_profile {
	struct nx_profile_ent *ents;
	size_t n;
};
/* Strict parse; -EINVAL for anything else. *out: free with nx_profile_free. */
int nx_profile_parse(const char *buf, size_t len, struct nx_profile **out);
void nx_profile_free(struct nx_profile *pr);
/* The first line, and one entry line into @out (bytes written, or
 * -ENAMETOOLONG). */
const char *nx_profile_magic(void);
int nx_profile_line(const char *base, const uint8_t d[NX_SHA256_LEN], char *out, size_t cap);
/* The artifact's manifest (deterministic JSON; caller frees *json), and its
 * strict parse: the profile layer and the subject. */
int nx_profile_manifest_build(const struct nx_desc *blob, const struct nx_desc *subject,
			      const char *name, char **json, size_t *len);
int nx_profile_manifest_parse(const char *json, size_t len, struct nx_desc *blob,
			      struct nx_desc *subject);
/* A referrers index (the referrers API's answer, or the tag fallback
 * `sha256-<hex>`): the last profile listed, named @name (any when NULL);
 * -ENOENT when there is none. With @blob (may be NULL), the layer its
 * descriptor's annotations announce, or blob->size 0 when they announce
 * none (or a malformed one): only a hint, to be checked against the
 * manifest. nx_referrers_add: @json (NULL: a new index) with @m, a profile
 * named @name whose layer is @blob (NULL: not announced), appended in
 * place of one of that name; caller frees *out. */
int nx_referrers_pick(const char *json, size_t len, const char *name, struct nx_desc *out,
		      struct nx_desc *blob);
int nx_referrers_add(const char *json, size_t len, const struct nx_desc *m, const char *name,
		     const struct nx_desc *blob, char **out, size_t *outlen);

#endif
