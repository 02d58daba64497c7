/*
 * fs/main.c: nixoci-fs, the daemon. Parses options, checks everything that
 * can be checked while the user is still watching (mountpoint, option values,
 * registry reachable, repository and closure present), mounts, daemonizes,
 * and only then opens the store: LMDB environments and curl handles must not
 * cross a fork, so the registry client used for the checks is closed before
 * fuse_daemonize() and a fresh one is wired into the store afterwards.
 */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/fs_i.h"


#define DEFAULT_MAX_THREADS 32
/* libfuse 3.14's fuse_parse_cmdline default for max_threads: if we still see
 * it, the user did not choose, and a network file system wants more workers
 * (each may block on a fetch). */
#define FUSE_DEFAULT_MAX_THREADS 10

/* Forced on every mount: see the contract in the usage text. The source
 * (fsname) is the repository, added by forced_opts(). */
#define FORCED_OPTS "-oro,nosuid,nodev,default_permissions,subtype=nixoci-fs,fsname="

/* Exit status of a usage error (bad or unknown option, missing argument),
 * as nixoci's. */
#define EXIT_USAGE 2

/* FORCED_OPTS + @ref, with fuse_opt's separators escaped. */
static char *forced_opts(const char *ref)
{
	size_t n = strlen(FORCED_OPTS), i;
	char *s = malloc(n + 2 * strlen(ref) + 1), *w;

	if (!s)
		return NULL;
	memcpy(s, FORCED_OPTS, n);
	w = s + n;
	for (i = 0; ref[i]; i++) {
		if (ref[i] == ',' || ref[i] == '\\')
			*w++ = '\\';
		*w++ = ref[i];
	}
	*w = '\0';
	return s;
}

/*
 * libfuse builds some lines from several fuse_log calls ("unknown option(s):
 * `" then each option then "'\n"): collect per thread until the newline so
 * each becomes one nx_log line. fuse_log levels are syslog's, as are ours.
 */
static void log_from_fuse(enum fuse_log_level level, const char *fmt, va_list ap)
{
	static __thread char line[1024];
	static __thread size_t len;
	int r;

	r = vsnprintf(line + len, sizeof(line) - len, fmt, ap);
	if (r > 0)
		len += (size_t)r < sizeof(line) - len ? (size_t)r : sizeof(line) - len - 1;
	if (len > 0 && line[len - 1] != '\n' && len < sizeof(line) - 1)
		return;
	nx_log((int)level, "%s", line);
	len = 0;
	line[0] = '\0';
}

static int stop_at_first_tag(void *ctx, const char *tag)
{
	return 1;
}

/* Is there a repository @ref at all? The tag list says; a 404 is its
 * absence. Logs one line on failure. */
static int check_repository(struct nx_registry *reg, const char *ref)
{
	int r = nx_registry_list_tags(reg, stop_at_first_tag, NULL);

	if (r == -ENOENT) {
		nx_log(NX_LOG_ERR, "repository %s not found", ref);
		return r;
	}
	if (r < 0) {
		nx_log(NX_LOG_ERR, "cannot list the tags of %s: %s", ref, strerror(-r));
		return r;
	}
	return 0;
}

/*
 * Registry reachable, repository present, closure present. A closure mount
 * GETs its index right away, and *@body (len @len) keeps it for the store:
 * the cold mount's chain is then index, metadata manifest, metadata blob
 * (docs/benchmarks.md, "Round trips of a cold start"). No API probe: the
 * first request's 401 carries the same challenge, and fetch/ logs the one
 * line naming the registry when it cannot be reached. No HEAD: the GET's
 * body is hashed and checked against the Docker-Content-Digest it came
 * with (fetch/). The tag list only tells a missing repository from a
 * missing tag, once the GET said 404.
 */
static int check_registry(const char *ref, const struct nx_regopts *ro, const char *closure,
			  char **body, size_t *len)
{
	struct nx_registry *reg = NULL;
	uint8_t digest[NX_SHA256_LEN];
	int r;

	struct nx_regopts quiet = *ro;

	*body = NULL;
	*len = 0;
	/* A missing repository is reported here, once, in our words; fetch/
	 * keeps its 404 line to the debug level. */
	quiet.quiet_404 = 1;
	r = nx_registry_open(&reg, ref, &quiet);
	if (r < 0)
		return r; /* fetch/ named the malformed reference */
	if (!closure) {
		r = nx_registry_ping(reg);
		if (r == 0)
			r = check_repository(reg, ref);
		goto out; /* fetch/ logged the one line naming the registry and cause */
	}
	r = nx_registry_get_manifest(reg, closure, NX_INDEX_MAX, body, len, digest, NULL);
	if (r == -ENOENT) {
		r = check_repository(reg, ref);
		if (r == 0) {
			nx_log(NX_LOG_ERR, "closure %s not found in %s", closure, ref);
			r = -ENOENT;
		}
	}
	/* any other failure: fetch/ logged the one line naming the cause */
out:
	if (r < 0) {
		free(*body);
		*body = NULL;
		*len = 0;
	}
	nx_registry_close(reg);
	return r;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct nx_fs_opts o;
	struct nx_regopts ro;
	struct nx_store_opts so;
	struct nx_source src;
	struct nx_fs fs;
	struct nx_session sess;
	struct nx_privs_conf pc;
	struct fuse_lowlevel_ops ops;
	char *mp_abs = NULL;
	char *closure_body = NULL; /* the start-up check's closure index */
	struct fuse_session *se = NULL;
	struct nx_fs_logdest logdest = { .fd = -1 };
	char *forced = NULL, status[512];
	int lock_fd = -1;
	unsigned nthreads;
	int ret = 1, r, start;

	memset(&o, 0, sizeof(o));
	memset(&ro, 0, sizeof(ro));
	memset(&so, 0, sizeof(so));
	memset(&fs, 0, sizeof(fs));
	memset(&src, 0, sizeof(src));
	nx_log_set_prog("nixoci-fs");
	fuse_set_log_func(log_from_fuse);

	/* ---- live restart (takeover.c): --supervise runs the supervisor;
	 * --takeover MOUNTPOINT takes the running daemon's connection and
	 * command line; a supervised daemon may resume its predecessor's. */
	if (argc >= 2 && strcmp(argv[1], "--supervise") == 0)
		return nx_supervise_main(argc, argv);
	start = nx_restart_prepare(&argc, &argv);
	if (start < 0)
		return 1;
	if (start == NX_START_DONE)
		return 0;
	args.argc = argc;
	args.argv = argv;

	/* ---- options: ours first, then libfuse's (-f -d -s -h -V ...) */
	ret = EXIT_USAGE;
	if (nx_fs_opts_parse(&o, &args) < 0)
		goto out_args;
	if (o.fo.show_help) {
		nx_fs_usage(stdout);
		printf("FUSE options:\n");
		fflush(stdout);
		fuse_cmdline_help();
		fuse_lowlevel_help();
		ret = 0;
		goto out_args;
	}
	if (o.fo.show_version) {
		printf("nixoci-fs %s\n", NX_VERSION);
		printf("FUSE library version %s\n", fuse_pkgversion());
		fflush(stdout); /* fuse_lowlevel_version runs fusermount3 -V */
		fuse_lowlevel_version();
		ret = 0;
		goto out_args;
	}
	if (o.debug || o.fo.debug)
		nx_log_set_level(NX_LOG_DEBUG);

	/* ---- every option checked before any side effect. Forced options
	 * come last, so nothing on the command line can override them; the
	 * session is created now (no mount yet) so libfuse judges its own
	 * options too. */
	if (nx_fs_opts_check(&o) < 0)
		goto out_args;
	/* now: once mounted, resolving it would ask the daemon itself */
	mp_abs = start == NX_START_MOUNT ? realpath(o.mountpoint, NULL) :
					   nx_restart_canon_mountpoint(o.mountpoint);
	nx_session_init(&sess, o.pt_mode);
	fs.sess = &sess;
	forced = forced_opts(o.ref);
	if (!forced || fuse_opt_add_arg(&args, forced) < 0)
		goto out_args;
	ops = nx_fs_ops;
	nx_fs_metrics_wrap(&ops);
	fs.ref = o.ref;
	fs.mountpoint = o.mountpoint;
	se = fuse_session_new(&args, &ops, sizeof(ops), &fs);
	if (!se)
		goto out_args; /* libfuse logged the unknown option through nx_vlog */
	so.readahead = o.readahead_frames;
	so.lookup_rate = o.lookup_per_s;

	/* ---- the mountpoint and the cache directory, before the network */
	ret = 1;
	if (start == NX_START_MOUNT && nx_fs_check_mountpoint(o.mountpoint, o.nonempty) < 0)
		goto out_session;
	/* who owns and can write it, before anything is put in it */
	if (nx_cache_dir_check(o.cache_dir) < 0)
		goto out_session;
	/* a takeover: the predecessor gives up the cache when it has finished */
	nx_restart_wait_old();
	if (nx_fs_cache_lock(o.cache_dir, &lock_fd) < 0)
		goto out_session;
	if (nx_fs_log_prepare(&logdest, o.log, o.fo.foreground) < 0)
		goto out_session;

	/* ---- the registry: reachable, repository and closure present */
	if (nx_fetch_global_init() < 0) {
		nx_log(NX_LOG_ERR, "cannot initialize the http client");
		goto out_session;
	}
	ro.cafile = o.cafile;
	ro.timeout_s = o.timeout_s;
	ro.insecure = o.insecure || o.insecure_host;
	ro.insecure_host = o.insecure_host;
	ro.mirrors = (const char *const *)o.mirrors;
	ro.nmirrors = o.nmirrors;
	ro.quiet_404 = 1; /* lookups of absent paths are routine */
	/* the readahead workers' (NX_RA_THREADS) background transfers leave
	 * as many for readers' misses */
	ro.max_transfers = 16;
	/* An adopted mount serves on even with the registry down: what is
	 * cached reads, what is not fails as it would have. */
	if (start == NX_START_MOUNT &&
	    check_registry(o.ref, &ro, o.closure, &closure_body, &so.closure_len) < 0)
		goto out_fetch;
	so.closure_body = closure_body;

	/* ---- mount, daemonize, then open what must not cross fork() */
	if (fuse_set_signal_handlers(se) < 0 || nx_fs_cancel_on_exit_signals() < 0) {
		nx_log(NX_LOG_ERR, "cannot install signal handlers");
		goto out_fetch;
	}
	if (start != NX_START_MOUNT) {
		r = nx_restart_adopt(&sess, se, o.cache_dir, mp_abs);
		if (r < 0) {
			nx_log(NX_LOG_ERR, "cannot adopt the fuse connection of %s: %s",
			       o.mountpoint, strerror(-r));
			goto out_signals;
		}
	} else if (fuse_session_mount(se, o.mountpoint) < 0) {
		nx_log(NX_LOG_ERR, "cannot mount %s on %s", o.ref, o.mountpoint);
		goto out_signals;
	}
	r = start != NX_START_MOUNT ? 0 : nx_session_attach(&sess, se, o.cache_dir, mp_abs);
	if (r < 0) {
		nx_log(NX_LOG_ERR, "cannot take over the fuse session's i/o: %s", strerror(-r));
		goto out_unmount;
	}
	/* the parent exits only when the child reports: after the store is
	 * open, or with its failure (nx_fs_daemon_report at the end) */
	if (nx_fs_daemonize(o.fo.foreground) < 0) {
		nx_log(NX_LOG_ERR, "cannot daemonize: %s", strerror(errno));
		goto out_unmount;
	}
	nx_fs_cache_lock_note(lock_fd, o.mountpoint);
	/* ---- the sandbox: the mount is up, and this process has one thread
	 * (daemonized: the child of a fork; in the foreground: the registry
	 * check's thread has been joined); every thread started from here on
	 * (registry, store, session loop) inherits it */
	pc.mode = o.sandbox_mode;
	pc.cache_dir = o.cache_dir;
	pc.mountpoint = mp_abs ? mp_abs : o.mountpoint;
	pc.metrics = o.metrics;
	pc.profile_record = o.profile_record;
	pc.keep_sys_admin = sess.pt_capable;
	nx_fs_privs_apply(&pc);

	r = nx_registry_open(&fs.reg, o.ref, &ro);
	if (r < 0) {
		nx_log(NX_LOG_ERR, "cannot open registry %s: %s", o.ref, strerror(-r));
		goto out_unmount;
	}
	so.cache_dir = o.cache_dir;
	so.origin = nx_registry_ref(fs.reg); /* tag records name where they came from */
	so.tag_ttl = o.tag_ttl_s;
	so.cache_size = o.cache_bytes;
	so.meta_budget = o.meta_bytes;
	so.closure = o.closure;
	so.keys = o.pubkeys;
	so.nkeys = o.npubkeys;
	src.ctx = fs.reg;
	src.get_manifest = nx_registry_source_manifest;
	src.get_blob = nx_registry_source_blob;
	src.get_referrers = nx_registry_source_referrers;
	src.get_ranges = nx_registry_source_ranges;
	so.profile = o.profile;
	so.profile_record = o.profile_record;
	so.profile_seconds = o.profile_seconds;
	r = nx_store_open(&fs.st, &so, &src);
	free(closure_body); /* read by the store while it opened; not kept */
	closure_body = NULL;
	so.closure_body = NULL;
	if (r < 0) {
		nx_log(NX_LOG_ERR, "cannot open the store of %s (cache %s): %s", o.ref,
		       so.cache_dir, strerror(-r));
		goto out_registry;
	}
	fs.closure_mode = o.closure != NULL;
	if (o.metrics && nx_fs_metrics_start(&fs, o.metrics) < 0)
		goto out_store;
	/* the paths the kernel knows (loaded again when adopted), the socket a
	 * successor asks, and the requests a dead predecessor left */
	nx_restart_paths_open(so.cache_dir, fs.st);
	nx_restart_modes_open(so.cache_dir, nx_fs_ops_seed_open, &fs);
	nx_restart_listen(&sess, o.mountpoint, argc, argv);
	if (start != NX_START_MOUNT)
		nx_restart_resend(&sess);
	nx_fs_daemon_report(0);
	nx_fs_log_start(&logdest, o.log != NULL);
	/* a takeover is an event worth a line at the default level */
	nx_log(start == NX_START_MOUNT ? NX_LOG_INFO : NX_LOG_NOTICE, "%s %s on %s (cache %s)",
	       start == NX_START_MOUNT ? "mounted" : "took over", o.ref, o.mountpoint,
	       so.cache_dir);
	nx_log(NX_LOG_NOTICE, "%s", nx_fs_privs_summary());
	/* only now: a unit ordered after this one may read the store at once */
	snprintf(status, sizeof(status), "READY=1\nMAINPID=%ld\nSTATUS=serving %s on %s",
		 (long)nx_restart_main_pid(), o.ref, o.mountpoint);
	nx_fs_notify(status);

	/* ---- serve until fusermount3 -u, a signal or a handover: a fixed
	 * pool of workers (session.c), -s being a pool of one. The pool never
	 * shrinks, so max_idle_threads has nothing to bound; clone_fd would
	 * give each worker a connection of its own, which the handover of one
	 * fd and the shared reader (takeover.c) do not support, and the kernel
	 * queues requests per connection anyway. Both are accepted so that
	 * existing command lines keep working. */
	if (o.fo.clone_fd)
		nx_log(NX_LOG_INFO, "-o clone_fd has no effect: the workers share one "
		       "connection to the kernel");
	nthreads = o.fo.singlethread ? 1 :
		   o.fo.max_threads == FUSE_DEFAULT_MAX_THREADS ? DEFAULT_MAX_THREADS :
								   o.fo.max_threads;
	r = nx_session_loop(&sess, se, nthreads);
	/* 0 after an unmount, a signal or a handover: an orderly shutdown */
	if (r < 0)
		nx_log(NX_LOG_ERR, "fuse session loop failed: %s", strerror(-r));
	else
		ret = 0;
	if (!nx_restart_handed_over()) {
		nx_fs_notify("STOPPING=1");
		nx_log(NX_LOG_INFO, "unmounted %s", o.mountpoint);
	}

out_store:
	/* Nothing reads through the mount any more: background transfers
	 * (readahead, predicted misses, profile and reference prefetch) end
	 * now instead of holding the exit until a stalled registry's
	 * timeout; the workers that wait on them are joined below. */
	nx_fetch_cancel_all();
	nx_fs_metrics_stop();
	nx_fs_ops_release(&fs);
	nx_store_close(fs.st);
out_registry:
	nx_registry_close(fs.reg);
out_unmount:
	/* Handed over: the successor serves the mount. Adopted: libfuse did
	 * not mount it, so it would not unmount it. */
	if (!nx_restart_handed_over()) {
		if (start != NX_START_MOUNT) {
			nx_restart_unmount(o.mountpoint, ret == 0);
			fuse_session_unmount(se);
		} else {
			nx_fs_privs_session_unmount(se); /* a sandbox may not unmount */
		}
	}
	nx_fs_privs_release();
out_signals:
	fuse_remove_signal_handlers(se);
out_fetch:
	nx_fetch_global_cleanup();
out_session:
	fuse_session_destroy(se);
	if (lock_fd >= 0)
		close(lock_fd);
	nx_restart_finish(); /* after the lock: a successor waits for both */
out_args:
	nx_fs_daemon_report(ret); /* a daemon that gave up: its parent exits so */
	nx_fs_log_release(&logdest);
	free(closure_body);
	free(forced);
	free(mp_abs);
	fuse_opt_free_args(&args);
	nx_fs_opts_release(&o);
	return ret;
}
