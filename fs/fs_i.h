/*
 * fs/fs_i.h: private to fs/ (main.c wires, ops.c serves). The only header of
 * the project that includes <fuse_lowlevel.h>.
 */
#ifndef NIXOCI_FS_I_H
#define NIXOCI_FS_I_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include "cache/cache.h"
#include "fetch/fetch.h"

#include <stdio.h>

/*
 * The session's userdata. main() fills it before the session loop starts and
 * frees it after the loop ends; ops only read it, so no locking is needed.
 */
struct nx_fs {
	struct nx_store *st;     /* opened after fuse_daemonize() */
	struct nx_registry *reg; /* for the request counter of the stats xattr */
	int closure_mode;        /* the root lists a closure (not only resolved paths) */
};

/* The command line (opts.c). Strings are malloc'ed by the parser and freed
 * by nx_fs_opts_release(); the parsed values are filled by
 * nx_fs_opts_check(). */
#define NX_FS_DEFAULT_CACHE_DIR "/var/cache/nixoci"

struct nx_fs_opts {
	/* as given */
	char *cache;
	char *cache_size;
	char *closure;
	char *timeout;
	char *readahead;
	char *cafile;
	int insecure;
	char *insecure_host; /* insecure=HOST */
	int debug;
	char *keys;     /* every trusted-public-keys= value, space-joined */
	char **mirrors; /* every mirror= value, in order */
	size_t nmirrors;
	char *ref;
	char *mountpoint;
	int bad_arg;
	struct fuse_cmdline_opts fo; /* libfuse's -f -d -s -h -V ... */

	/* parsed by nx_fs_opts_check() */
	const char *cache_dir; /* cache, or the default */
	uint64_t cache_bytes;  /* 0: the store's default */
	int timeout_s;
	int readahead_frames;  /* 0: the store's default; -1: off */
	struct nx_pubkey *pubkeys;
	size_t npubkeys;
};

/* Prints the usage text of nixoci-fs's own options. */
void nx_fs_usage(FILE *f);
/* Parses @args (removing ours, leaving libfuse's for fuse_session_new) into
 * @o, which must be zeroed. -EINVAL (logged) on a usage error. */
int nx_fs_opts_parse(struct nx_fs_opts *o, struct fuse_args *args);
/* Checks every value and fills the parsed fields. No side effects. -EINVAL
 * (logged, naming the option) on a bad value. */
int nx_fs_opts_check(struct nx_fs_opts *o);
void nx_fs_opts_release(struct nx_fs_opts *o);

/* The low-level operations of ops.c. */
extern const struct fuse_lowlevel_ops nx_fs_ops;

#endif
