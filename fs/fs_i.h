/*
 * fs/fs_i.h: private to fs/ (main.c wires, ops.c serves). The only header of
 * the project that includes <fuse_lowlevel.h>.
 */
#ifndef NIXOCI_FS_I_H
#define NIXOCI_FS_I_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <sys/uio.h>

#include "cache/cache.h"
#include "fetch/fetch.h"

#include <limits.h>
#include <stdio.h>

/*
 * The session layer (session.c): the daemon's read and writev on /dev/fuse,
 * which rewrite the few protocol fields libfuse 3.14 cannot express.
 * Everything the kernel negotiated lives here, so a successor daemon could be
 * handed the fd and this state. Fields are written by the thread that handles
 * INIT, before any other request is read, and only read afterwards
 * (passthrough is atomic: it may be turned off at run time).
 */
enum { NX_PT_OFF = 0, NX_PT_AUTO = 1 };
#define NX_SESS_OPCODES 64 /* per-opcode request counters; 0 = other */

struct nx_session {
	int fd;                 /* /dev/fuse; owned by the libfuse session */
	int pt_mode;            /* NX_PT_*: -o passthrough= */
	int pt_capable;         /* CAP_SYS_ADMIN in the initial user namespace */
	const char *probe_dir;  /* where the passthrough probe creates its file */
	const char *mountpoint; /* absolute, for the kernel readahead setting */
	int read_ahead_kb;      /* what the mount's readahead was set to; 0: default */
	/* INIT as the kernel sent it */
	int init_seen, init_done;
	uint64_t init_unique;
	uint32_t kmajor, kminor;
	uint64_t kflags;        /* offered: flags | flags2 << 32 */
	/* INIT as sent, after the rewrite */
	uint32_t minor_out;
	uint64_t flags_out;
	int parallel_dirops;    /* FUSE_PARALLEL_DIROPS negotiated */
	int pt_negotiated;      /* FUSE_PASSTHROUGH negotiated */
	int passthrough;        /* ...and a backing file could be registered */
	const char *pt_why;     /* why not, when passthrough is 0 */
	uint64_t nreq[NX_SESS_OPCODES]; /* requests read, by opcode */
	int exiting;            /* the session loop is ending: readers leave (atomic) */
	/* INIT as exchanged, raw, for a successor daemon (takeover.c) */
	uint8_t init_in[64];
	uint32_t init_in_len;
	uint8_t init_out[128];
	uint32_t init_out_len;
};

void nx_session_init(struct nx_session *s, int pt_mode);
/* As nx_session_attach, for a connection that is already mounted and
 * initialized (@fd received from a predecessor; libfuse never mounted it). */
int nx_session_adopt(struct nx_session *s, struct fuse_session *se, int fd, const char *probe_dir,
		     const char *mountpoint);
/* Installs the session's read and writev (fuse_session_custom_io) on the
 * fd of the mounted session @se. @probe_dir (kept) is where the passthrough
 * probe creates an unnamed file; @mountpoint (kept, absolute) finds the
 * mount's readahead setting. 0 or a negative errno. */
int nx_session_attach(struct nx_session *s, struct fuse_session *se, const char *probe_dir,
		      const char *mountpoint);
/* The two halves of the rewrite, exposed for the unit tests: a request as
 * read from /dev/fuse, and a reply about to be written (patched in place). */
void nx_session_note_request(struct nx_session *s, const void *buf, size_t len);
void nx_session_patch_reply(struct nx_session *s, struct iovec *iov, int count);
/* Registers @fd as a backing file: *id for nx_session_reply_open. Fails with
 * -EOPNOTSUPP when passthrough is not in use, or the ioctl's -errno. */
int nx_session_backing_open(struct nx_session *s, int fd, int32_t *id);
void nx_session_backing_close(struct nx_session *s, int32_t id);
/* fuse_reply_open, with FOPEN_PASSTHROUGH and @backing_id (> 0) in the reply
 * (0: a plain fuse_reply_open). Returns what fuse_reply_open returns. */
int nx_session_reply_open(fuse_req_t req, const struct fuse_file_info *fi, int32_t backing_id);
/*
 * Serves @se (attached or adopted above) with @nworkers threads, all started
 * before the first request is read, until the session exits: an unmount
 * (ENODEV), a handover to a successor (takeover.c parks the readers, then
 * ENODEV), an exit signal (nx_session_loop_wake) or a read error. Every
 * request read is answered before the workers are joined. Workers block the
 * asynchronous signals. 0 on an orderly end, or the read error (-errno).
 * Once per process.
 */
int nx_session_loop(struct nx_session *s, struct fuse_session *se, unsigned nworkers);
/* Async-signal-safe: makes nx_session_loop look at fuse_session_exited()
 * (daemon.c's exit-signal handler, after libfuse's has exited the session). */
void nx_session_loop_wake(void);

/*
 * The session's userdata. main() fills it before the session loop starts and
 * frees it after the loop ends; ops only read it, so no locking is needed.
 */
struct nx_fs {
	struct nx_store *st;     /* opened after fuse_daemonize() */
	struct nx_registry *reg; /* for the request counter of the stats xattr */
	int closure_mode;        /* the root lists a closure (not only resolved paths) */
	struct nx_session *sess; /* the session layer; NULL without one */
	const char *ref;         /* REGISTRY/REPO and the mountpoint, for the */
	const char *mountpoint;  /* metrics' labels */
	uint64_t pt_opens;       /* opens answered with passthrough (atomic) */
	/* closure mode on a kernel that lets opendir answer ENOSYS: the
	 * kernel then opens and releases directories itself (set by init) */
	int no_opendir;
	/* closure mode: the root's listing, which never changes, taken once
	 * (atomic pointer; freed by nx_fs_ops_release) */
	void *root_static;
};
/* Frees what the ops kept in @fs; after the session loop has ended. */
void nx_fs_ops_release(struct nx_fs *fs);

/* The command line (opts.c). Strings are malloc'ed by the parser and freed
 * by nx_fs_opts_release(); the parsed values are filled by
 * nx_fs_opts_check(). */

struct nx_fs_opts {
	/* as given */
	char *cache;
	char *cache_size;
	char *meta_budget;
	char *closure;
	char *timeout;
	char *tag_ttl;
	char *readahead;
	char *lookup_rate;
	char *cafile;
	char *passthrough;
	char *sandbox;
	int insecure;
	char *insecure_host; /* insecure=HOST */
	int debug;
	char *keys;     /* every trusted-public-keys= value, space-joined */
	char **mirrors; /* every mirror= value, in order */
	size_t nmirrors;
	char *ref;
	char *mountpoint;
	int nonempty;
	char *log;     /* log=FILE */
	char *metrics; /* metrics=FILE */
	char *profile;        /* profile=NAME|auto */
	char *profile_record; /* profile_record=FILE */
	char *profile_secs;   /* profile_seconds=N */
	int bad_arg;
	struct fuse_cmdline_opts fo; /* libfuse's -f -d -s -h -V ... */

	/* parsed by nx_fs_opts_check() */
	const char *cache_dir; /* cache, or the default (in default_cache) */
	char default_cache[PATH_MAX];
	uint64_t cache_bytes;  /* 0: the store's default */
	uint64_t meta_bytes;   /* meta_budget; 0: the store's default */
	int timeout_s;
	int tag_ttl_s;         /* for nx_store_opts.tag_ttl */
	int readahead_frames;  /* 0: the store's default; -1: off */
	int lookup_per_s;      /* 0: the store's default; -1: no bound */
	int pt_mode;           /* NX_PT_AUTO (default) or NX_PT_OFF */
	int profile_seconds;   /* 0: the store's default */
	int sandbox_mode;      /* NX_SANDBOX_AUTO (default) or NX_SANDBOX_OFF */
	struct nx_pubkey *pubkeys;
	size_t npubkeys;
};

#define NX_FS_MAX_THREADS 1024 /* -o max_threads= upper bound */

/* Prints the usage text of nixoci-fs's own options. */
void nx_fs_usage(FILE *f);
/* Parses @args (removing ours, leaving libfuse's for fuse_session_new) into
 * @o, which must be zeroed. -EINVAL (logged) on a usage error. */
int nx_fs_opts_parse(struct nx_fs_opts *o, struct fuse_args *args);
/* Checks every value and fills the parsed fields. No side effects. -EINVAL
 * (logged, naming the option) on a bad value. */
int nx_fs_opts_check(struct nx_fs_opts *o);
void nx_fs_opts_release(struct nx_fs_opts *o);

/* Mount safety (mountcheck.c); each logs one line naming the problem. */
/* 1 if @mp carries a nixoci-fs mount (its source copied to @source), 0 if
 * not, -errno if it cannot be told. */
int nx_fs_mounted_here(const char *mp, char *source, size_t cap);
/* @mp is a directory, not already carrying nixoci-fs, and empty unless
 * @nonempty. 0 or -errno. */
int nx_fs_check_mountpoint(const char *mp, int nonempty);
/* Creates @dir with its parents, checks it is writable and takes its
 * exclusive lock (-EBUSY: another daemon holds it). *fd keeps the lock
 * until it is closed (or the process exits). */
int nx_fs_cache_lock(const char *dir, int *fd);
/* Records the holder (this pid, @mountpoint) in the lock file. */
void nx_fs_cache_lock_note(int fd, const char *mountpoint);

/* Background and shutdown (daemon.c). nx_fs_daemonize forks; the parent
 * waits for the child's nx_fs_daemon_report and exits with the status it
 * reports (1 if the child dies first); the child returns 0 in a new session
 * in /, keeping fds 0-2 until it reports 0 (then /dev/null). With
 * @foreground it only changes directory to /. Reporting twice, or without
 * daemonizing, does nothing. */
int nx_fs_daemonize(int foreground);
void nx_fs_daemon_report(int status);
/* After fuse_set_signal_handlers: SIGTERM, SIGINT and SIGHUP also cancel
 * every fetch in progress (nx_fetch_cancel_all). 0 or -errno. */
int nx_fs_cancel_on_exit_signals(void);

/* Sends @state ("READY=1", "STOPPING=1", newline-separated assignments)
 * to the service manager when $NOTIFY_SOCKET is set (notify.c); 0 when it
 * is not. Logs a warning on failure. */
int nx_fs_notify(const char *state);

/* The daemon's log destination (logdest.c). nx_fs_log_prepare() runs
 * before fuse_daemonize() (it may open -o log=FILE: logs and returns
 * -errno on failure), nx_fs_log_start() after it. */
struct nx_fs_logdest {
	int fd;     /* the file or the saved stderr, -1 if none */
	int syslog; /* daemonized from a terminal */
};
int nx_fs_log_prepare(struct nx_fs_logdest *ld, const char *file, int foreground);
void nx_fs_log_start(struct nx_fs_logdest *ld, int is_file);
void nx_fs_log_release(struct nx_fs_logdest *ld);

/* Metrics (metrics.c), in the Prometheus text format. */
#define NX_METRICS_XATTR "user.nixoci.metrics"
#define NX_METRICS_MAX (60 * 1024) /* under the xattr limit of 64 KiB */
/* Replaces the operations in @ops by wrappers that time them (call once,
 * before fuse_session_new). */
void nx_fs_metrics_wrap(struct fuse_lowlevel_ops *ops);
/* The text into @buf: its length, or -E2BIG. */
int nx_fs_metrics_text(struct nx_fs *fs, char *buf, size_t cap);
/* Writes the text to @file (tmp + rename). 0 or -errno. Not thread-safe. */
int nx_fs_metrics_write(struct nx_fs *fs, const char *file);
/* A thread writes @file every 15 s until nx_fs_metrics_stop(), which
 * writes it once more. */
int nx_fs_metrics_start(struct nx_fs *fs, const char *file);
void nx_fs_metrics_stop(void);

/*
 * Live restart (takeover.c, supervise.c; docs/reliability.md): a daemon
 * hands its /dev/fuse connection and what the kernel negotiated to a
 * successor, which replays INIT to its own libfuse session and serves on.
 */
enum { NX_START_MOUNT = 0, NX_START_TAKEOVER, NX_START_RESUME, NX_START_DONE };

/* The one message of the handover protocol (SOCK_SEQPACKET; the /dev/fuse
 * fd rides along as SCM_RIGHTS with NX_HO_STATE). */
#define NX_HO_VERSION 1
#define NX_HO_MAX_ARGS 256
enum { NX_HO_TAKE = 1, NX_HO_STATE, NX_HO_DONE, NX_HO_REFUSED };
struct nx_ho_msg {
	char magic[8];
	uint32_t version, kind;
	uint32_t gen;          /* the sender's file handle generation */
	int32_t supervisor;    /* TAKE: 1 = from the supervisor; else its pid */
	uint32_t init_in_len, init_out_len;
	uint8_t init_in[64], init_out[128];
	uint32_t argc, argv_len;
	char argv[8192];       /* the daemon's command line, NUL-separated */
};
void nx_ho_msg_init(struct nx_ho_msg *m, uint32_t kind);
int nx_ho_msg_check(const struct nx_ho_msg *m, size_t len);
int nx_ho_send(int sock, const struct nx_ho_msg *m, int fd);
int nx_ho_recv(int sock, struct nx_ho_msg *m, int *fd);

/* Before option parsing: handles --takeover MOUNTPOINT (asks the running
 * daemon for its connection and command line, which replaces *argv) and a
 * supervisor's environment. Returns NX_START_* (DONE: nothing left to do)
 * or a negative errno (logged). */
int nx_restart_prepare(int *argc, char ***argv);
int nx_restart_mode(void);
/* The service's main process: the supervisor when there is one. */
long nx_restart_main_pid(void);
/* Takeover: waits until the predecessor has closed its store and lock. */
int nx_restart_wait_old(void);
/* Adopted start: the received fd becomes @se's, INIT is replayed. */
int nx_restart_adopt(struct nx_session *s, struct fuse_session *se, const char *probe_dir,
		     const char *mountpoint);
/* The mountpoint made absolute without stat'ing it (that would ask the
 * mount's daemon, which is us); malloc'ed, NULL if its parent is gone. */
char *nx_restart_canon_mountpoint(const char *mp);
/* Asks the kernel to resend what a dead predecessor had read. */
void nx_restart_resend(struct nx_session *s);
/* The journal of store paths the kernel may know (truncated on a fresh
 * mount, loaded again on an adopted one), and its writer (ops.c, before an
 * entry of a new path is replied). */
int nx_restart_paths_open(const char *cache_dir, struct nx_store *st);
void nx_restart_note_path(const struct nx_spath *p);
/* The open-modes journal (see takeover.c): ops.c notes an inode's first
 * open with its backing id (0: cached) and its last release; an adopting
 * daemon gets each inode still open through @seed. */
void nx_restart_note_open(uint64_t ino, int32_t backing_id);
void nx_restart_note_close(uint64_t ino);
int nx_restart_modes_open(const char *cache_dir,
			  void (*seed)(void *ctx, uint64_t ino, int32_t backing_id), void *ctx);
/* ops.c: keeps @ino in the mode a predecessor opened it in, for good. */
void nx_fs_ops_seed_open(void *fs, uint64_t ino, int32_t backing_id);
/* Listens for a successor on the mountpoint's socket. */
int nx_restart_listen(struct nx_session *s, const char *mountpoint, int argc, char **argv);
int nx_restart_handed_over(void);
/* At exit, after the store and the cache lock are closed. */
void nx_restart_finish(void);
/* Unmounts an adopted connection; after a failed start (!@clean) of a
 * supervised daemon it leaves the mount to the supervisor's next try. */
int nx_restart_unmount(const char *mp, int clean);
/* session.c's hooks: the read loop, the synthetic INIT's reply. */
int nx_restart_io_init(struct nx_session *s);
ssize_t nx_restart_read(struct nx_session *s, int fd, void *buf, size_t len);
int nx_restart_swallow(struct nx_session *s, const struct iovec *iov, int count);
/* Sets s->exiting and wakes every reader, which returns -1/EINTR without
 * reading (a request stays in the kernel's queue). */
void nx_restart_wake_readers(struct nx_session *s);
void nx_restart_after_init(struct nx_session *s);
/* fi->fh values carry the daemon's generation: *foreign = opened by a
 * predecessor (NULL returned, nothing to dereference). */
uint64_t nx_fh_pack(void *p);
/* A handle of this daemon with no pointer in it. */
uint64_t nx_fh_mark(void);
void *nx_fh_unpack(uint64_t fh, int *foreign);
/* nixoci-fs --supervise ...: holds the connection, restarts the daemon. */
int nx_supervise_main(int argc, char **argv);

/*
 * The sandbox (privs.c): after the mount, before the store opens, while the
 * process has one thread. What was applied and why the rest was not is in
 * nx_fs_privs_summary() (one line, for the log).
 */
enum { NX_SANDBOX_OFF = 0, NX_SANDBOX_AUTO = 1 };
struct nx_privs_conf {
	int mode;               /* NX_SANDBOX_*: -o sandbox= */
	const char *cache_dir;
	const char *mountpoint; /* absolute; the only one the outside helper unmounts */
	const char *metrics;    /* -o metrics= or NULL */
	const char *profile_record; /* -o profile_record= or NULL */
	int keep_sys_admin;     /* passthrough may register backing files */
};
/* Applies what it can; never fails the mount (0). Call once. */
int nx_fs_privs_apply(const struct nx_privs_conf *c);
const char *nx_fs_privs_summary(void);
/* 1 when the outside helper runs (the daemon dropped what unmounting
 * needs): unmounting goes through it. */
int nx_fs_privs_active(void);
const char *nx_fs_privs_mountpoint(void);
/* Lazily unmounts the mountpoint given to nx_fs_privs_apply, through the
 * outside helper. 0 or -errno. */
int nx_fs_privs_unmount(void);
/* fuse_session_unmount(), through the outside helper when sandboxed. */
void nx_fs_privs_session_unmount(struct fuse_session *se);
/* CAP_SYS_ADMIN in the calling thread's effective set, when it was kept
 * (around the passthrough ioctls); no-ops otherwise. */
void nx_fs_privs_raise(void);
void nx_fs_privs_lower(void);
/* Ends the outside helper (at exit). */
void nx_fs_privs_release(void);
/* takeover.c: the takeover socket's directory, created 0700 if needed. */
int nx_restart_sock_dir(char *out, size_t cap);

/* The low-level operations of ops.c. */
extern const struct fuse_lowlevel_ops nx_fs_ops;

#endif
