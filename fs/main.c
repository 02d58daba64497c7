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

#ifndef NX_VERSION
#define NX_VERSION "0.1.0"
#endif

#define DEFAULT_CACHE_DIR "/var/cache/nixoci"
#define DEFAULT_MAX_THREADS 32
/* libfuse 3.14's fuse_parse_cmdline default for max_threads: if we still see
 * it, the user did not choose, and a network file system wants more workers
 * (each may block on a fetch). */
#define FUSE_DEFAULT_MAX_THREADS 10

/* Forced on every mount: see the contract in the usage text. */
#define FORCED_OPTS "-oro,nosuid,nodev,default_permissions,fsname=nixoci,subtype=nixoci"

struct fs_opts {
	char *cache;
	char *cache_size;
	char *closure;
	char *timeout;
	char *readahead;
	char *cafile;
	int insecure;
	char *insecure_host; /* insecure=HOST */
	int debug;
	char *keys; /* every trusted-public-keys= value, space-joined */
	char **mirrors; /* every mirror= value, in order */
	size_t nmirrors;
	char *ref;
	char *mountpoint;
	int bad_arg;
};

enum { KEY_KEYS, KEY_MIRROR };

#define OPT(t, m) { t, offsetof(struct fs_opts, m), 1 }
static const struct fuse_opt fs_opt_spec[] = {
	OPT("cache=%s", cache),
	OPT("cache_size=%s", cache_size),
	OPT("closure=%s", closure),
	OPT("timeout=%s", timeout),
	OPT("readahead=%s", readahead),
	OPT("cafile=%s", cafile),
	OPT("insecure", insecure),
	OPT("insecure=%s", insecure_host),
	OPT("debug", debug),
	FUSE_OPT_KEY("trusted-public-keys=", KEY_KEYS),
	FUSE_OPT_KEY("mirror=", KEY_MIRROR),
	FUSE_OPT_END,
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: nixoci-fs [-f] [-d] [-o OPT[,OPT...]] REGISTRY/REPO MOUNTPOINT\n"
		"\n"
		"Mounts the Nix store held in an OCI repository, read-only and lazily.\n"
		"\n"
		"nixoci-fs options:\n"
		"    -o cache=DIR               cache directory (default " DEFAULT_CACHE_DIR ")\n"
		"    -o cache_size=SIZE         cache limit, K/M/G suffixes (default 10G)\n"
		"    -o closure=NAME            serve only the closure under tag NAME or sha256:<hex>\n"
		"    -o trusted-public-keys=KEY Nix public key name:base64 (repeatable; separate\n"
		"                               several keys in one option with spaces)\n"
		"    -o timeout=SECONDS         per-request registry deadline, 1..3600 (default 30)\n"
		"    -o readahead=SIZE          largest readahead window for sequential readers,\n"
		"                               K/M suffixes, up to 256M, 0 = off (default 32M)\n"
		"    -o cafile=FILE             extra CA bundle for the registry\n"
		"    -o insecure[=HOST]         allow plain HTTP / unverified TLS for the\n"
		"                               registry (or only for HOST[:PORT], the\n"
		"                               registry or one mirror); never implied\n"
		"    -o mirror=HOST[:PORT]      pull-through mirror tried before the registry\n"
		"                               (repeatable, tried in order; https:// or http://\n"
		"                               prefix to choose the scheme)\n"
		"    -o debug                   log at debug level\n"
		"    -o allow_other             let other users (and root) use the mount\n"
		"Always mounted ro,nosuid,nodev,default_permissions,fsname=nixoci,subtype=nixoci.\n"
		"\n");
}

static int append_keys(struct fs_opts *o, const char *val)
{
	size_t old = o->keys ? strlen(o->keys) : 0, add = strlen(val);
	char *k = realloc(o->keys, old + add + 2);

	if (!k)
		return -1;
	if (old)
		k[old++] = ' ';
	memcpy(k + old, val, add + 1);
	o->keys = k;
	return 0;
}

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct fs_opts *o = data;

	switch (key) {
	case KEY_KEYS:
		if (append_keys(o, arg + strlen("trusted-public-keys=")) < 0)
			return -1;
		return 0;
	case KEY_MIRROR: {
		char **m = realloc(o->mirrors, (o->nmirrors + 1) * sizeof(*m));

		if (!m)
			return -1;
		o->mirrors = m;
		if (!(m[o->nmirrors] = strdup(arg + strlen("mirror="))))
			return -1;
		o->nmirrors++;
		return 0;
	}
	case FUSE_OPT_KEY_NONOPT:
		/* Both positionals are ours: fuse_parse_cmdline would realpath()
		 * the mountpoint and fail with a message of its own. */
		if (!o->ref)
			o->ref = strdup(arg);
		else if (!o->mountpoint)
			o->mountpoint = strdup(arg);
		else {
			nx_log(NX_LOG_ERR, "unexpected argument '%s' (see nixoci-fs --help)", arg);
			o->bad_arg = 1;
		}
		return 0;
	default:
		return 1; /* libfuse's */
	}
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

static int check_mountpoint(const char *mp)
{
	struct stat st;

	if (stat(mp, &st) < 0) {
		if (errno == ENOENT)
			nx_log(NX_LOG_ERR, "mountpoint %s does not exist", mp);
		else if (errno == ENOTCONN)
			nx_log(NX_LOG_ERR,
			       "mountpoint %s: transport endpoint is not connected "
			       "(a dead mount? run fusermount3 -u %s)",
			       mp, mp);
		else
			nx_log(NX_LOG_ERR, "mountpoint %s: %s", mp, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		nx_log(NX_LOG_ERR, "mountpoint %s is not a directory", mp);
		return -1;
	}
	return 0;
}

/* The store creates the directory too; checking here turns a failure after
 * daemonizing (only in syslog) into an error the user sees. */
static int check_cache_dir(const char *dir)
{
	struct stat st;

	if (stat(dir, &st) < 0) {
		if (errno != ENOENT || mkdir(dir, 0700) < 0) {
			nx_log(NX_LOG_ERR, "cache directory %s: %s (choose one with -o cache=DIR)",
			       dir, strerror(errno));
			return -1;
		}
		return 0;
	}
	if (!S_ISDIR(st.st_mode)) {
		nx_log(NX_LOG_ERR, "cache directory %s is not a directory", dir);
		return -1;
	}
	if (access(dir, W_OK | X_OK) < 0) {
		nx_log(NX_LOG_ERR, "cache directory %s is not writable (choose one with -o cache=DIR)",
		       dir);
		return -1;
	}
	return 0;
}

/* distribution's tag grammar: [A-Za-z0-9_][A-Za-z0-9._-]{0,127} */
static int check_closure_name(const char *s)
{
	uint8_t d[NX_SHA256_LEN];
	size_t i, n = strlen(s);

	if (strncmp(s, "sha256:", 7) == 0)
		return nx_digest_parse(s, d);
	if (n == 0 || n > 128 || s[0] == '.' || s[0] == '-')
		return -EINVAL;
	for (i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == '-'))
			return -EINVAL;
	}
	return 0;
}

static int parse_timeout(const char *s, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 1 || v > 3600)
		return -EINVAL;
	*out = (int)v;
	return 0;
}

static int stop_at_first_tag(void *ctx, const char *tag)
{
	return 1;
}

/* Registry reachable, repository present, closure present. */
static int check_registry(const char *ref, const struct nx_regopts *ro, const char *closure)
{
	struct nx_registry *reg = NULL;
	uint8_t digest[NX_SHA256_LEN];
	int exists = 0;
	int r;

	struct nx_regopts quiet = *ro;

	/* A missing repository is reported here, once, in our words; fetch/
	 * keeps its 404 line to the debug level. */
	quiet.quiet_404 = 1;
	r = nx_registry_open(&reg, ref, &quiet);
	if (r < 0)
		return r; /* fetch/ named the malformed reference */
	r = nx_registry_ping(reg);
	if (r < 0)
		goto out; /* fetch/ logged the one line naming the registry and cause */
	r = nx_registry_list_tags(reg, stop_at_first_tag, NULL);
	if (r == -ENOENT) {
		nx_log(NX_LOG_ERR, "repository %s not found", ref);
		goto out;
	}
	if (r < 0) {
		nx_log(NX_LOG_ERR, "cannot list the tags of %s: %s", ref, strerror(-r));
		goto out;
	}
	r = 0;
	if (closure) {
		r = nx_registry_manifest_exists(reg, closure, &exists, digest);
		if (r < 0) {
			nx_log(NX_LOG_ERR, "cannot look up closure %s in %s: %s", closure, ref,
			       strerror(-r));
			goto out;
		}
		if (!exists) {
			nx_log(NX_LOG_ERR, "closure %s not found in %s", closure, ref);
			r = -ENOENT;
			goto out;
		}
	}
out:
	nx_registry_close(reg);
	return r;
}

static void fs_opts_release(struct fs_opts *o)
{
	free(o->cache);
	free(o->cache_size);
	free(o->closure);
	free(o->timeout);
	free(o->readahead);
	free(o->cafile);
	free(o->insecure_host);
	free(o->keys);
	while (o->nmirrors)
		free(o->mirrors[--o->nmirrors]);
	free(o->mirrors);
	free(o->ref);
	free(o->mountpoint);
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts fo;
	struct fs_opts o;
	struct nx_regopts ro;
	struct nx_store_opts so;
	struct nx_source src;
	struct nx_pubkey *keys = NULL;
	size_t nkeys = 0;
	struct nx_fs fs;
	struct fuse_session *se = NULL;
	struct fuse_loop_config *cfg = NULL;
	uint64_t cache_size = 0;
	int timeout = 30;
	int ret = 1, r;

	memset(&fo, 0, sizeof(fo));
	memset(&o, 0, sizeof(o));
	memset(&ro, 0, sizeof(ro));
	memset(&so, 0, sizeof(so));
	memset(&fs, 0, sizeof(fs));
	nx_log_set_prog("nixoci-fs");
	fuse_set_log_func(log_from_fuse);

	/* ---- options: ours first, then libfuse's (-f -d -s -h -V ...) */
	if (fuse_opt_parse(&args, &o, fs_opt_spec, opt_proc) < 0 || o.bad_arg)
		goto out_args;
	if (fuse_parse_cmdline(&args, &fo) < 0)
		goto out_args;
	if (fo.show_help) {
		usage(stdout);
		printf("FUSE options:\n");
		fflush(stdout);
		fuse_cmdline_help();
		fuse_lowlevel_help();
		ret = 0;
		goto out_args;
	}
	if (fo.show_version) {
		printf("nixoci-fs %s\n", NX_VERSION);
		printf("FUSE library version %s\n", fuse_pkgversion());
		fflush(stdout); /* fuse_lowlevel_version runs fusermount3 -V */
		fuse_lowlevel_version();
		ret = 0;
		goto out_args;
	}
	if (o.debug || fo.debug)
		nx_log_set_level(NX_LOG_DEBUG);
	if (!o.ref || !o.mountpoint) {
		nx_log(NX_LOG_ERR, "missing %s (usage: nixoci-fs [-f] [-o OPTS] REGISTRY/REPO "
		       "MOUNTPOINT)", o.ref ? "MOUNTPOINT" : "REGISTRY/REPO and MOUNTPOINT");
		goto out_args;
	}

	/* ---- validate before touching the network */
	if (check_mountpoint(o.mountpoint) < 0)
		goto out_args;
	if (o.cache_size && (nx_parse_size(o.cache_size, &cache_size) < 0 || cache_size == 0)) {
		nx_log(NX_LOG_ERR, "bad option cache_size=%s: expected a size such as 512M or 10G",
		       o.cache_size);
		goto out_args;
	}
	if (o.timeout && parse_timeout(o.timeout, &timeout) < 0) {
		nx_log(NX_LOG_ERR, "bad option timeout=%s: expected whole seconds from 1 to 3600",
		       o.timeout);
		goto out_args;
	}
	if (o.readahead) {
		uint64_t v;

		if (nx_parse_size(o.readahead, &v) < 0 || v > (UINT64_C(256) << 20)) {
			nx_log(NX_LOG_ERR, "bad option readahead=%s: expected a size from 0 to 256M "
			       "such as 32M, or 0 for none", o.readahead);
			goto out_args;
		}
		/* the window counts frames; the packer cuts NX_FRAME_TARGET ones */
		so.readahead = v ? (int)((v + NX_FRAME_TARGET - 1) / NX_FRAME_TARGET) : -1;
	}
	if (o.closure && check_closure_name(o.closure) < 0) {
		nx_log(NX_LOG_ERR, "bad option closure=%s: expected a tag or sha256:<64 hex>",
		       o.closure);
		goto out_args;
	}
	if (o.keys) {
		r = nx_pubkeys_parse(o.keys, &keys, &nkeys);
		if (r < 0 || nkeys == 0) {
			/* a parse error was logged by common/ naming the key */
			if (r >= 0)
				nx_log(NX_LOG_ERR, "bad option trusted-public-keys=%s: expected "
				       "name:base64 keys separated by spaces", o.keys);
			goto out_keys;
		}
	}
	if (o.cafile && access(o.cafile, R_OK) < 0) {
		nx_log(NX_LOG_ERR, "bad option cafile=%s: %s", o.cafile, strerror(errno));
		goto out_keys;
	}
	if (check_cache_dir(o.cache ? o.cache : DEFAULT_CACHE_DIR) < 0)
		goto out_keys;

	/* Forced last, so nothing on the command line can override them. The
	 * session is created now (no mount yet) so an unknown -o option is a
	 * usage error before any network traffic. */
	if (fuse_opt_add_arg(&args, FORCED_OPTS) < 0)
		goto out_keys;
	se = fuse_session_new(&args, &nx_fs_ops, sizeof(nx_fs_ops), &fs);
	if (!se)
		goto out_keys; /* libfuse logged the unknown option through nx_vlog */

	/* ---- the registry: reachable, repository and closure present */
	if (nx_fetch_global_init() < 0) {
		nx_log(NX_LOG_ERR, "cannot initialize the http client");
		goto out_session;
	}
	ro.cafile = o.cafile;
	ro.timeout_s = timeout;
	ro.insecure = o.insecure || o.insecure_host;
	ro.insecure_host = o.insecure_host;
	ro.mirrors = (const char *const *)o.mirrors;
	ro.nmirrors = o.nmirrors;
	ro.quiet_404 = 1; /* lookups of absent paths are routine */
	if (check_registry(o.ref, &ro, o.closure) < 0)
		goto out_fetch;

	/* ---- mount, daemonize, then open what must not cross fork() */
	if (fuse_set_signal_handlers(se) < 0) {
		nx_log(NX_LOG_ERR, "cannot install signal handlers");
		goto out_fetch;
	}
	if (fuse_session_mount(se, o.mountpoint) < 0) {
		nx_log(NX_LOG_ERR, "cannot mount %s on %s", o.ref, o.mountpoint);
		goto out_signals;
	}
	if (fuse_daemonize(fo.foreground) < 0) {
		nx_log(NX_LOG_ERR, "cannot daemonize");
		goto out_unmount;
	}
	if (!fo.foreground)
		nx_log_use_syslog(1);

	r = nx_registry_open(&fs.reg, o.ref, &ro);
	if (r < 0) {
		nx_log(NX_LOG_ERR, "cannot open registry %s: %s", o.ref, strerror(-r));
		goto out_unmount;
	}
	so.cache_dir = o.cache ? o.cache : DEFAULT_CACHE_DIR;
	so.cache_size = cache_size;
	so.closure = o.closure;
	so.keys = keys;
	so.nkeys = nkeys;
	src.ctx = fs.reg;
	src.get_manifest = nx_registry_source_manifest;
	src.get_blob = nx_registry_source_blob;
	r = nx_store_open(&fs.st, &so, &src);
	if (r < 0) {
		nx_log(NX_LOG_ERR, "cannot open the store of %s (cache %s): %s", o.ref,
		       so.cache_dir, strerror(-r));
		goto out_registry;
	}
	fs.closure_mode = o.closure != NULL;
	nx_log(NX_LOG_INFO, "mounted %s on %s (cache %s)", o.ref, o.mountpoint, so.cache_dir);

	/* ---- serve until fusermount3 -u or a signal */
	if (fo.singlethread) {
		r = fuse_session_loop(se);
	} else {
		cfg = fuse_loop_cfg_create();
		if (!cfg) {
			nx_log(NX_LOG_ERR, "out of memory");
			goto out_store;
		}
		fuse_loop_cfg_set_clone_fd(cfg, (unsigned int)fo.clone_fd);
		/* UINT_MAX is "not given"; libfuse 3.14 logs an error if we pass it */
		if (fo.max_idle_threads != UINT_MAX)
			fuse_loop_cfg_set_idle_threads(cfg, fo.max_idle_threads);
		fuse_loop_cfg_set_max_threads(cfg, fo.max_threads == FUSE_DEFAULT_MAX_THREADS ?
							   DEFAULT_MAX_THREADS :
							   fo.max_threads);
		r = fuse_session_loop_mt(se, cfg);
	}
	/* 0 after an unmount, the signal number after SIGINT/SIGTERM/SIGHUP:
	 * both are an orderly shutdown. */
	if (r < 0)
		nx_log(NX_LOG_ERR, "fuse session loop failed: %s", strerror(-r));
	else
		ret = 0;
	nx_log(NX_LOG_INFO, "unmounted %s", o.mountpoint);

	fuse_loop_cfg_destroy(cfg);
out_store:
	nx_store_close(fs.st);
out_registry:
	nx_registry_close(fs.reg);
out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_fetch:
	nx_fetch_global_cleanup();
out_session:
	fuse_session_destroy(se);
out_keys:
	free(keys);
out_args:
	free(fo.mountpoint);
	fuse_opt_free_args(&args);
	fs_opts_release(&o);
	return ret;
}
