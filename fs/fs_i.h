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

/*
 * The session's userdata. main() fills it before the session loop starts and
 * frees it after the loop ends; ops only read it, so no locking is needed.
 */
struct nx_fs {
	struct nx_store *st;     /* opened after fuse_daemonize() */
	struct nx_registry *reg; /* for the request counter of the stats xattr */
	int closure_mode;        /* the root lists a closure (not only resolved paths) */
};

/* The low-level operations of ops.c. */
extern const struct fuse_lowlevel_ops nx_fs_ops;

#endif
