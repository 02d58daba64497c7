/*
 * tools/tools_i.h: private to tools/. The nixoci CLI is a thin client of
 * fetch/, cache/ and common/; this header holds what the subcommands share:
 * the common options, registry and store wiring, argument helpers and the
 * subcommand entry points.
 *
 * Subcommand entry points are main()-like: they take the argv that starts
 * at the subcommand name and return the process exit status
 * (NX_EXIT_OK, NX_EXIT_ERR or NX_EXIT_USAGE), not an errno. Every other
 * function here returns 0 or a negative errno.
 */
#ifndef NIXOCI_TOOLS_I_H
#define NIXOCI_TOOLS_I_H

#include <getopt.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/cache.h"
#include "common/common.h"
#include "fetch/fetch.h"

#define NX_EXIT_OK 0
#define NX_EXIT_ERR 1
#define NX_EXIT_USAGE 2

/* Options every subcommand accepts (before or after the subcommand name). */
struct nx_cli {
	const char *cafile;
	int insecure;
	const char *insecure_host; /* --insecure=HOST */
	const char *keys;  /* --trusted-public-keys, or NULL */
	int timeout_s;     /* 0 = fetch/'s default */
	int max_transfers; /* 0 = fetch/'s default */
	int verbose;
	const char *mirrors[16]; /* --mirror HOST[:PORT], in order */
	size_t nmirrors;
};

/* getopt_long codes of the common options; subcommands append these to their
 * own tables with NX_CLI_LONGOPTS and hand them to nx_cli_opt(). */
enum {
	NX_OPT_CAFILE = 0x100,
	NX_OPT_INSECURE,
	NX_OPT_KEYS,
	NX_OPT_TIMEOUT,
	NX_OPT_MIRROR,
	NX_OPT_FIRST_PRIVATE = 0x200, /* subcommands number their own from here */
};

#define NX_CLI_LONGOPTS                                                                 \
	{ "cafile", required_argument, NULL, NX_OPT_CAFILE },                           \
	{ "insecure", optional_argument, NULL, NX_OPT_INSECURE },                             \
	{ "trusted-public-keys", required_argument, NULL, NX_OPT_KEYS },                \
	{ "timeout", required_argument, NULL, NX_OPT_TIMEOUT },                         \
	{ "mirror", required_argument, NULL, NX_OPT_MIRROR },                           \
	{ "verbose", no_argument, NULL, 'v' },                                          \
	{ "help", no_argument, NULL, 'h' }

/* Handles a common option code (including 'v'). Returns 1 if it was one, 0
 * if @c is not a common option, -EINVAL (logged, naming the argument) if
 * its argument is bad. */
int nx_cli_opt(struct nx_cli *cli, int c, const char *arg);

/* Logs one line (which names the bad argument) and the synopsis line of
 * @usage to stderr. Returns NX_EXIT_USAGE. */
int nx_cli_usage_error(const char *usage, const char *fmt, ...) NX_PRINTF(2, 3);
/* Prints the synopsis line of @usage to stderr (after an error that was
 * already logged). Returns NX_EXIT_USAGE. */
int nx_cli_synopsis(const char *usage);

/* Prints @v (a jansson json_t *) on stdout as indented JSON and a newline.
 * 0 or -EIO. (void * keeps <jansson.h> out of this header.) */
int nx_cli_print_json(void *v);

/* Parses --trusted-public-keys into *keys (caller frees) or NULL/0 when
 * none were given. */
int nx_cli_keys(const struct nx_cli *cli, struct nx_pubkey **keys, size_t *n);

/* Opens the registry @ref with the common options. @quiet_404: a missing
 * manifest is expected (push, ls). Logs on error. */
int nx_cli_registry(const struct nx_cli *cli, const char *ref, int quiet_404,
		    struct nx_registry **out);

/* Accepts "/nix/store/<base>[/sub]" or "<base>[/sub]" and returns pointers
 * to the base (@base, @base_len) and the rest (@sub: "" or "x/y", without
 * leading slashes; may be NULL when a sub-path is not allowed). Quiet:
 * -EINVAL when @arg is neither. */
int nx_cli_path_arg(const char *arg, const char **base, size_t *base_len, const char **sub);

/* The tag of a store path base name: its 32-char hash part. @tag has room
 * for NX_HASH_LEN + 1. */
void nx_cli_tag(const char *base, char tag[NX_HASH_LEN + 1]);
/* 1 if @tag has the form of a store path hash part. */
int nx_cli_is_hash_tag(const char *tag);

/* Fetches and parses the manifest of store path @base (tag = hash part) and
 * checks that it is the manifest of /nix/store/<base>. @digest (may be NULL)
 * gets the manifest digest, @json_len (may be NULL) its size. -ENOENT (not
 * logged) when the tag does not exist; other errors are logged. */
int nx_cli_get_manifest(struct nx_registry *reg, const char *base, size_t base_len,
			struct nx_manifest *m, uint8_t digest[NX_SHA256_LEN], size_t *json_len);

/* The TOC of manifest @m, decoded as it streams from the registry
 * (nx_toc_reader: bounds before allocation, the bytes checked against the
 * layer's digest; never the whole layer in memory), and its sizes checked
 * against the manifest's. 0 and *toc (caller frees: nx_toc_free);
 * -EBADMSG when the registry's bytes are not the layer or the sizes
 * disagree, -EINVAL/-E2BIG for a malformed layer (the reader logged one line
 * naming the path), other -errno from the fetch. On failure *what (caller
 * frees; may be NULL) says what went wrong, for a result or a log line. */
int nx_cli_get_toc(struct nx_registry *reg, const struct nx_manifest *m, struct nx_toc **toc,
		   char **what);

/* 1 if stderr is a terminal (progress lines are printed only then). */
int nx_cli_tty(void);

/* A private cache directory for commands without --cache: created under
 * $TMPDIR, removed recursively by nx_cli_tmpdir_remove. */
int nx_cli_tmpdir(char **out);
void nx_cli_tmpdir_remove(char *dir);

/* Formats @bytes as "12.3 MiB" into @buf. */
const char *nx_cli_human(uint64_t bytes, char *buf, size_t len);

/* ---------------------------------------------------------- publishing
 * tools/publish.c: what push and import share once a store path's NAR is
 * packed: skip what the registry already holds, upload blobs, sign, write
 * the manifest, the closure index; a worker pool with a progress line. */

struct nx_pub_path {
	struct nx_pathinfo info; /* owned; released by nx_pub_release */
	uint8_t mdigest[NX_SHA256_LEN]; /* manifest written or found */
	uint64_t msize;
	int have_info;
	void *priv; /* the command's own per-path data, freed by the command */
	/* the manifest and compressed TOC written (or the manifest found), kept
	 * for the closure metadata so it need not read them back; owned,
	 * freed by nx_pub_release; NULL when not at hand */
	char *man;
	size_t man_len;
	uint8_t *toc;
	size_t toc_len;
	/* man, toc, mdigest and msize come from the closure index this push
	 * replaces (nx_pub_unchanged checked them): nx_pub_existing skips the
	 * path without a request when the tag list has its tag */
	int adopt;
	/* --pack: the pack this path goes into (NULL: blobs of its own), and
	 * until the pack is written, its NAR layer (a mapping of its temporary
	 * file) and its compressed TOC (owned) */
	struct nx_pub_group *group;
	uint8_t *pk_nar, *pk_toc;
	uint64_t pk_nar_len, pk_nar_off, pk_toc_off;
	size_t pk_toc_len;
	int pk_ready;
	uint8_t pk_digest[NX_SHA256_LEN]; /* the pack's, once written */
	uint64_t pk_size;
	/* its .pyc files' import graph (dev.nixoci.imports), owned */
	uint32_t *imports;
	size_t nimports;
	/* its files are in the local store at info.store_path, as pushed (push
	 * checked the NAR it dumped from them): its ELF files' dynamic
	 * sections are read there for dev.nixoci.elf, owned */
	int local;
	struct nx_elf_needs *elf;
};

/* A planned pack (format.md 2.1): paths first..last of nx_pub.paths whose
 * group is this one, in that order; written when the last member is in. */
struct nx_pub_group {
	size_t first, last, pending;
	uint64_t nar;
};

struct nx_pub {
	struct nx_registry *reg;
	struct nx_seckey key;
	int have_key;
	const char *tmpdir;
	const char *cmd;       /* "push": log lines of failed paths */
	const char *verb;      /* "pushing": the progress line */
	const char *done_verb; /* "pushed": -v lines */
	void *ctx;             /* the command's */
	/* one path: 2 written, 1 already there (skipped), or -errno (logged) */
	int (*one)(struct nx_pub *p, struct nx_pub_path *pp);

	struct nx_pub_path *paths; /* sorted by store path (nx_pub_sort) */
	size_t npaths;
	long jobs;              /* parallel transfers asked for; 0 = default */
	const char *mount_from; /* --mount-from REPO, or NULL */
	/* hash-part tags of the repository, sorted, listed once before the
	 * workers start (tags_known): a path whose tag is not among them is
	 * written without asking for its manifest first */
	char (*tags)[NX_HASH_LEN + 1];
	size_t ntags;
	int tags_known;
	int config_done;        /* the empty config blob is in the repository */
	int pack;               /* small paths share pack blobs (not --no-pack) */
	struct nx_pub_group *groups;
	size_t ngroups;

	pthread_mutex_t lock; /* guards everything below */
	size_t next;
	size_t done, uploaded, skipped, mounted;
	/* packed paths whose pack is written and whose manifest is not yet:
	 * any worker writes them; nflushing packs are being written */
	size_t *mq, mq_head, mq_tail, nflushing, packs;
	pthread_cond_t cond;
	uint64_t bytes;
	int failed;
	int tty;
	int progress_shown;
};

#define NX_PUB_JOBS 16

int nx_pub_init(struct nx_pub *p, const char *verb);
/* Frees the paths (their info), closes the registry, wipes the key. */
void nx_pub_release(struct nx_pub *p);
int nx_pub_load_key(struct nx_pub *p, const char *file);
/* An OCI tag that is not a store path hash part: 1 or 0. */
int nx_pub_tag_valid(const char *s);
void nx_pub_sort(struct nx_pub *p);
struct nx_pub_path *nx_pub_find(struct nx_pub *p, const char *store_path);
/* Opens REF for writing, pings it and uploads the empty config blob. */
int nx_pub_open(struct nx_pub *p, const struct nx_cli *cli, const char *ref);
/* An unlinked temporary file in $TMPDIR. */
int nx_pub_tmpfile(struct nx_pub *p);
/*
 * What the registry holds under @pp's tag: 1 if the same store path with the
 * same NarHash/NarSize is there (pp->mdigest filled; our signatures added
 * when a key is loaded and they were missing: then 2), 0 if the path must be
 * written, -EEXIST (logged) if the tag holds another path or another NAR.
 */
int nx_pub_existing(struct nx_pub *p, struct nx_pub_path *pp);
/*
 * Writes @pp: the NAR layer (@blob_size bytes of @fd, SHA-256 @blob_sha), the
 * TOC that @tb built (finished here; the caller still frees @tb), signatures
 * when a key is loaded, and the manifest from pp->info. Returns 2.
 */
int nx_pub_commit(struct nx_pub *p, struct nx_pub_path *pp, int fd, struct nx_toc_builder *tb,
		  uint64_t nar_size, uint64_t blob_size, const uint8_t blob_sha[NX_SHA256_LEN]);
/* Runs p->one over every path with @jobs threads; stops at the first
 * failure (-EIO). Lists the repository's tags first (one request per 1000
 * tags) so that paths not there cost no manifest request, and uploads the
 * empty config blob. */
int nx_pub_run(struct nx_pub *p, long jobs);
/*
 * The early stop of a re-push: 1 when the closure index under tag @name is
 * byte for byte the index this run would write (the same store paths, each
 * manifest, found in the index's closure metadata blob by the digest the
 * index lists, for the same store path, NarHash and NarSize and, with a key
 * loaded, carrying our signatures; the same roots); every pp->mdigest is
 * then filled and nothing needs writing. 0 otherwise (write as usual), or
 * -errno for a local failure. Three requests: the index, the metadata
 * manifest and its blob. Either way, each path that the old index holds as
 * this push would write it is adopted (pp->adopt, with its manifest and
 * TOC), so a partial re-push reads neither again.
 */
int nx_pub_unchanged(struct nx_pub *p, const char *name, char **roots, size_t nroots);
/* The closure index of every path under tag @name (unchanged: no write). */
int nx_pub_index(struct nx_pub *p, const char *name, char **roots, size_t nroots);
void nx_pub_add_bytes(struct nx_pub *p, uint64_t n);
/* Stores a blob unless the registry has it (asked first when @probe > 0,
 * or when @probe is 0 and the blob is not small; never when @probe < 0),
 * mounting it from p->mount_from when set; counts the bytes sent or the
 * mount. */
int nx_pub_upload_blob(struct nx_pub *p, const uint8_t digest[NX_SHA256_LEN], int fd,
		       const void *buf, uint64_t size, int probe);
/* tools/cmeta.c: writes (or finds under tag @name, unchanged) the closure
 * metadata manifest and blob of every path of @p (format.md 5.1); *meta
 * gets the manifest's descriptor, *blob the blob's (size 0: not known, an
 * index found unchanged that did not say). -E2BIG when over the readers'
 * caps. */
int nx_pub_closure_meta(struct nx_pub *p, const char *name, struct nx_desc *meta,
			struct nx_desc *blob);
/* Options push and import share: -j/--jobs N (1..64, default NX_PUB_JOBS),
 * --mount-from REPO, -t/--tag
 * NAME (checked), -k/--sign-key FILE, and the common ones. Returns -1 when
 * the command goes on (optind at the first operand), else the exit status
 * (help printed, or a usage error logged). */
struct nx_pub_opts {
	long jobs;
	const char *mount_from; /* --mount-from REPO */
	const char *tag;
	const char *keyfile;
	int pack; /* 1 unless --no-pack */
};
int nx_pub_getopt(struct nx_cli *cli, const char *cmd, const char *usage, int argc, char **argv,
		  struct nx_pub_opts *o);
void nx_pub_progress_clear(struct nx_pub *p);

/* Runs @argv (no shell) with stdin from /dev/null and stderr inherited, and
 * returns its standard output (NUL-terminated, caller frees), capped. */
int nx_run_capture(const char *what, char *const argv[], char **out, size_t *outlen);

int nx_cmd_push(struct nx_cli *cli, int argc, char **argv);
int nx_cmd_ls(struct nx_cli *cli, int argc, char **argv);
int nx_cmd_info(struct nx_cli *cli, int argc, char **argv);
int nx_cmd_verify(struct nx_cli *cli, int argc, char **argv);
int nx_cmd_cat(struct nx_cli *cli, int argc, char **argv);
int nx_cmd_prefetch(struct nx_cli *cli, int argc, char **argv);
int nx_cmd_stats(struct nx_cli *cli, int argc, char **argv);
int nx_cmd_import(struct nx_cli *cli, int argc, char **argv);
int nx_cmd_serve(struct nx_cli *cli, int argc, char **argv);
int nx_cmd_register(struct nx_cli *cli, int argc, char **argv);
int nx_cmd_profile(struct nx_cli *cli, int argc, char **argv);

#endif
