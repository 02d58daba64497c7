/*
 * fs/opts.c: nixoci-fs's command line. Parsing (ours first, then libfuse's
 * -f -d -s -h -V) and the checks of every option value, none of which has a
 * side effect: main() acts only after all of them passed, so a typo never
 * leaves a cache directory or a mount behind.
 */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/fs_i.h"

enum { KEY_KEYS, KEY_MIRROR };

#define OPT(t, m) { t, offsetof(struct nx_fs_opts, m), 1 }
static const struct fuse_opt fs_opt_spec[] = {
	OPT("cache=%s", cache),
	OPT("cache_size=%s", cache_size),
	OPT("meta_budget=%s", meta_budget),
	OPT("closure=%s", closure),
	OPT("timeout=%s", timeout),
	OPT("tag_ttl=%s", tag_ttl),
	OPT("readahead=%s", readahead),
	OPT("lookup_rate=%s", lookup_rate),
	OPT("cafile=%s", cafile),
	OPT("passthrough=%s", passthrough),
	OPT("sandbox=%s", sandbox),
	OPT("insecure", insecure),
	OPT("insecure=%s", insecure_host),
	OPT("debug", debug),
	OPT("nonempty", nonempty),
	OPT("log=%s", log),
	OPT("metrics=%s", metrics),
	OPT("profile=%s", profile),
	OPT("profile_record=%s", profile_record),
	OPT("profile_seconds=%s", profile_secs),
	FUSE_OPT_KEY("trusted-public-keys=", KEY_KEYS),
	FUSE_OPT_KEY("mirror=", KEY_MIRROR),
	FUSE_OPT_END,
};

void nx_fs_usage(FILE *f)
{
	fprintf(f,
		"usage: nixoci-fs [-f] [-d] [-o OPT[,OPT...]] REGISTRY/REPO MOUNTPOINT\n"
		"\n"
		"Mounts the Nix store held in an OCI repository, read-only and lazily.\n"
		"\n"
		"nixoci-fs options:\n"
		"    -o cache=DIR               cache directory (default " NX_ROOT_CACHE_DIR " for\n"
		"                               root, else $XDG_CACHE_HOME/nixoci or ~/.cache/nixoci)\n"
		"    -o cache_size=SIZE         cache limit, K/M/G/T suffixes, B or iB accepted,\n"
		"                               powers of 1024 (default 10G)\n"
		"    -o meta_budget=SIZE        metadata kept in memory (decoded TOCs, manifests);\n"
		"                               unused paths beyond it are unloaded, 1M at least\n"
		"                               (default 256M)\n"
		"    -o closure=NAME            serve only the closure under tag NAME or sha256:<hex>\n"
		"    -o trusted-public-keys=KEY Nix public key name:base64 (repeatable; separate\n"
		"                               several keys in one option with spaces)\n"
		"    -o timeout=SECONDS         per-request registry deadline, 1..3600 (default 30)\n"
		"    -o tag_ttl=SECONDS         how long a cached tag resolution is used before the\n"
		"                               registry is asked again, 0..31536000 (default 600)\n"
		"    -o readahead=SIZE          largest readahead window for sequential readers,\n"
		"                               K/M suffixes, up to 256M, 0 = off (default 32M)\n"
		"    -o lookup_rate=N           registry lookups of unknown names per second,\n"
		"                               1..100000, or 0 for no bound (default 50)\n"
		"    -o cafile=FILE             extra CA bundle for the registry\n"
		"    -o insecure[=HOST]         allow plain HTTP / unverified TLS for the\n"
		"                               registry (or only for HOST[:PORT], the\n"
		"                               registry or one mirror); never implied\n"
		"    -o mirror=HOST[:PORT]      pull-through mirror tried before the registry\n"
		"                               (repeatable, tried in order; https:// or http://\n"
		"                               prefix to choose the scheme)\n"
		"    -o passthrough=auto|off    let the kernel read fully cached files straight\n"
		"                               from the cache (FUSE passthrough; needs Linux\n"
		"                               6.9 and CAP_SYS_ADMIN; default auto)\n"
		"    -o sandbox=auto|off        after mounting, drop capabilities, set\n"
		"                               no_new_privs and confine writes with Landlock\n"
		"                               where the kernel has it (default auto)\n"
		"    -o debug                   log at debug level\n"
		"    -o allow_other             let other users (and root) use the mount\n"
		"    -o log=FILE                append the daemon's messages to FILE (default: stderr\n"
		"                               if it is not a terminal, else syslog)\n"
		"    -o metrics=FILE            write Prometheus metrics to FILE every 15 s (for\n"
		"                               node_exporter's textfile collector)\n"
		"    -o nonempty                mount over a non-empty directory (hiding it)\n"
		"    -o profile=NAME|auto       with closure=: prefetch the startup profile NAME\n"
		"                               pushed for the closure (auto: the newest) at mount\n"
		"    -o profile_record=FILE     write the frames read during the first\n"
		"                               profile_seconds (default 60) to FILE at unmount,\n"
		"                               for nixoci profile push\n"
		"Always mounted ro,nosuid,nodev,default_permissions; the source is REGISTRY/REPO,\n"
		"the type fuse.nixoci-fs. rw is refused; mount(8)'s _netdev, nofail, noauto,\n"
		"x-* are ignored. Exit status: 0 ok, 1 error, 2 usage error.\n"
		"\n");
}

static int append_keys(struct nx_fs_opts *o, const char *val)
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

/*
 * Options we hand to libfuse, checked here so that every option is judged
 * before any side effect (libfuse would only judge them in
 * fuse_session_new) and an unknown one gets a suggestion. The kernel flags
 * mount.fuse3 adds on its own ("dev,suid") are accepted: FORCED_OPTS come
 * after them and win.
 */
static const char *const fuse_passed[] = {
	"allow_other", "allow_root", "auto_unmount", "max_read=", "default_permissions",
	"ro", "nosuid", "nodev", "suid", "dev", "exec", "noexec", "atime", "noatime",
	"sync", "async", "dirsync", "context=", "fscontext=", "defcontext=", "rootcontext=",
	/* fuse_parse_cmdline's */
	"clone_fd", "max_idle_threads=", "max_threads=",
};
static const char *const fuse_dash[] = { "-f", "-d", "-s", "-h", "-V", "--help", "--version",
					 "--debug" };
/* For the suggestion only: ours, as the user types them. */
static const char *const ours[] = {
	"cache=", "cache_size=", "meta_budget=", "closure=", "timeout=", "tag_ttl=", "readahead=", "lookup_rate=",
	"cafile=", "insecure", "debug", "nonempty", "log=", "metrics=", "trusted-public-keys=",
	"mirror=", "passthrough=", "profile=", "profile_record=", "profile_seconds=",
	"sandbox=",
};

/* Options of fstab and mount(8) that mean nothing to the file system
 * itself; mount(8) strips most of them, a direct call may not. */
static int is_mount_only(const char *a)
{
	static const char *const plain[] = { "_netdev", "nofail", "noauto", "auto", "defaults",
					     "user", "users", "nouser", "owner", "group" };
	size_t i;

	if (strncmp(a, "x-", 2) == 0 || strncmp(a, "comment=", 8) == 0)
		return 1;
	for (i = 0; i < sizeof(plain) / sizeof(plain[0]); i++)
		if (strcmp(a, plain[i]) == 0)
			return 1;
	return 0;
}

/* @name matches @pat ("max_read=" matches "max_read=4096", "ro" only "ro") */
static int opt_match(const char *name, const char *pat)
{
	size_t n = strlen(pat);

	if (n && pat[n - 1] == '=')
		return strncmp(name, pat, n) == 0;
	return strcmp(name, pat) == 0;
}

/* Levenshtein distance of the option names (up to '='), capped at 9. */
static unsigned name_distance(const char *a, const char *b)
{
	size_t la = strcspn(a, "="), lb = strcspn(b, "="), i, j;
	unsigned row[64], prev, tmp;

	if (la >= 64 || lb >= 64)
		return 9;
	for (j = 0; j <= lb; j++)
		row[j] = (unsigned)j;
	for (i = 1; i <= la; i++) {
		prev = row[0];
		row[0] = (unsigned)i;
		for (j = 1; j <= lb; j++) {
			unsigned best = prev + (a[i - 1] != b[j - 1]);

			if (row[j] + 1 < best)
				best = row[j] + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			tmp = row[j];
			row[j] = best;
			prev = tmp;
		}
	}
	return row[lb] < 9 ? row[lb] : 9;
}

static const char *suggest(const char *arg, const char *const *list, size_t n,
			   const char *best, unsigned *bestd)
{
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned d = name_distance(arg, list[i]);

		if (d < *bestd) {
			*bestd = d;
			best = list[i];
		}
	}
	return best;
}

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* An option that is not ours: pass it to libfuse (1), drop it (0), or
 * refuse it (-1, logged). */
static int check_other_opt(struct nx_fs_opts *o, const char *arg)
{
	const char *best = NULL;
	unsigned d = 9;
	size_t i;

	if (!*arg)
		return 0; /* "-o ro," from an empty variable in a unit file */
	if (arg[0] == '-') {
		for (i = 0; i < N(fuse_dash); i++)
			if (strcmp(arg, fuse_dash[i]) == 0)
				return 1;
		best = suggest(arg, fuse_dash, N(fuse_dash), NULL, &d);
		if (strncmp(arg, "--", 2) == 0 && d > 2) /* --cache=DIR for -o cache=DIR */
			best = suggest(arg + 2, ours, N(ours), NULL, &d);
		goto unknown;
	}
	if (strcmp(arg, "rw") == 0) {
		nx_log(NX_LOG_ERR, "option rw refused: the store is read-only (mount(8) passes rw "
		       "unless told otherwise: give ro, or write ro in the fstab line)");
		o->bad_arg = 1;
		return 0;
	}
	if (opt_match(arg, "fsname=") || opt_match(arg, "subtype=")) {
		nx_log(NX_LOG_ERR, "option %s refused: nixoci-fs sets the source to the "
		       "repository and the type to fuse.nixoci-fs", arg);
		o->bad_arg = 1;
		return 0;
	}
	for (i = 0; i < N(fuse_passed); i++)
		if (opt_match(arg, fuse_passed[i]))
			return 1;
	if (is_mount_only(arg)) {
		nx_log(NX_LOG_DEBUG, "ignoring mount option %s", arg);
		return 0;
	}
	best = suggest(arg, ours, N(ours), NULL, &d);
	best = suggest(arg, fuse_passed, N(fuse_passed), best, &d);
unknown:
	/* a suggestion further than a third of the name away is noise */
	if (best && d <= 2 && d * 3 <= strcspn(arg, "="))
		nx_log(NX_LOG_ERR, "unknown option %s%s: did you mean %s%.*s? (see nixoci-fs "
		       "--help)", arg[0] == '-' ? "" : "-o ", arg,
		       best[0] == '-' ? "" : "-o ", (int)strcspn(best, "="), best);
	else
		nx_log(NX_LOG_ERR, "unknown option %s%s (see nixoci-fs --help)",
		       arg[0] == '-' ? "" : "-o ", arg);
	o->bad_arg = 1;
	return 0;
}

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct nx_fs_opts *o = data;

	switch (key) {
	case KEY_KEYS:
		if (append_keys(o, arg + strlen("trusted-public-keys=")) < 0)
			return -1;
		return 0;
	case KEY_MIRROR: {
		char *v = strdup(arg + strlen("mirror="));
		char **m = v ? reallocarray(o->mirrors, o->nmirrors + 1, sizeof(*m)) : NULL;

		if (!m) {
			free(v);
			return -1;
		}
		o->mirrors = m;
		o->mirrors[o->nmirrors++] = v;
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
	case FUSE_OPT_KEY_OPT:
		return check_other_opt(o, arg);
	default:
		return 1;
	}
}

int nx_fs_opts_parse(struct nx_fs_opts *o, struct fuse_args *args)
{
	if (fuse_opt_parse(args, o, fs_opt_spec, opt_proc) < 0 || o->bad_arg)
		return -EINVAL;
	if (fuse_parse_cmdline(args, &o->fo) < 0)
		return -EINVAL;
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

/*
 * The daemon changes directory to / when it goes to the background, and a
 * relative path would then name something else: every path option is made
 * absolute against the directory nixoci-fs was started in, before anything
 * uses it. No symlink is resolved (the cache directory may not exist yet).
 */
static int make_absolute(const char *opt, char **p)
{
	char cwd[PATH_MAX], *abs;

	if (!*p || (*p)[0] == '/')
		return 0;
	if (!getcwd(cwd, sizeof(cwd))) {
		nx_log(NX_LOG_ERR, "bad option %s=%s: a relative path, and the current directory "
		       "cannot be known (%s); give an absolute path", opt, *p, strerror(errno));
		return -EINVAL;
	}
	if (asprintf(&abs, "%s/%s", strcmp(cwd, "/") ? cwd : "", *p) < 0)
		return -ENOMEM;
	free(*p);
	*p = abs;
	return 0;
}

int nx_fs_opts_check(struct nx_fs_opts *o)
{
	int r;

	if (make_absolute("cache", &o->cache) < 0 || make_absolute("cafile", &o->cafile) < 0 ||
	    make_absolute("log", &o->log) < 0 || make_absolute("metrics", &o->metrics) < 0 ||
	    make_absolute("profile_record", &o->profile_record) < 0 ||
	    make_absolute("mountpoint", &o->mountpoint) < 0)
		return -EINVAL;
	if (o->mountpoint) {
		/* it exists (checked before mounting): name it as the kernel will */
		char *rp = realpath(o->mountpoint, NULL);

		if (rp) {
			free(o->mountpoint);
			o->mountpoint = rp;
		}
	}

	/* the session loop starts them all at once (session.c) */
	if (o->fo.max_threads == 0 || o->fo.max_threads > NX_FS_MAX_THREADS) {
		nx_log(NX_LOG_ERR, "max_threads=%u: give a number of worker threads from 1 to %d",
		       o->fo.max_threads, NX_FS_MAX_THREADS);
		return -EINVAL;
	}
	o->timeout_s = 30;
	o->cache_dir = o->cache;
	if (!o->cache_dir) {
		if (nx_default_cache_dir(o->default_cache, sizeof(o->default_cache)) < 0) {
			nx_log(NX_LOG_ERR, "no default cache directory (no home directory): give "
			       "-o cache=DIR");
			return -EINVAL;
		}
		o->cache_dir = o->default_cache;
	}
	if (!o->ref || !o->mountpoint) {
		nx_log(NX_LOG_ERR, "missing %s (usage: nixoci-fs [-f] [-o OPTS] REGISTRY/REPO "
		       "MOUNTPOINT)", o->ref ? "MOUNTPOINT" : "REGISTRY/REPO and MOUNTPOINT");
		return -EINVAL;
	}
	if (o->cache_size &&
	    (nx_parse_size(o->cache_size, &o->cache_bytes) < 0 || o->cache_bytes == 0)) {
		nx_log(NX_LOG_ERR, "bad option cache_size=%s: expected a size such as 512M or 10G",
		       o->cache_size);
		return -EINVAL;
	}
	if (o->meta_budget &&
	    (nx_parse_size(o->meta_budget, &o->meta_bytes) < 0 || o->meta_bytes < (1u << 20))) {
		nx_log(NX_LOG_ERR, "bad option meta_budget=%s: expected a size of at least 1M, "
		       "such as 64M or 1G", o->meta_budget);
		return -EINVAL;
	}
	o->tag_ttl_s = NX_TAG_TTL_DEFAULT;
	if (o->tag_ttl) {
		char *end;
		long v;

		errno = 0;
		v = strtol(o->tag_ttl, &end, 10);
		if (errno || end == o->tag_ttl || *end || v < 0 || v > 31536000) {
			nx_log(NX_LOG_ERR, "bad option tag_ttl=%s: expected whole seconds from 0 to "
			       "31536000", o->tag_ttl);
			return -EINVAL;
		}
		o->tag_ttl_s = v ? (int)v : NX_TAG_TTL_ZERO;
	}
	if (o->timeout && parse_timeout(o->timeout, &o->timeout_s) < 0) {
		nx_log(NX_LOG_ERR, "bad option timeout=%s: expected whole seconds from 1 to 3600",
		       o->timeout);
		return -EINVAL;
	}
	if (o->readahead) {
		uint64_t v;

		if (nx_parse_size(o->readahead, &v) < 0 || v > (UINT64_C(256) << 20)) {
			nx_log(NX_LOG_ERR, "bad option readahead=%s: expected a size from 0 to 256M "
			       "such as 32M, or 0 for none", o->readahead);
			return -EINVAL;
		}
		/* the window counts frames; the packer cuts NX_FRAME_TARGET ones */
		o->readahead_frames = v ? (int)((v + NX_FRAME_TARGET - 1) / NX_FRAME_TARGET) : -1;
	}
	if (o->lookup_rate) {
		char *end;
		unsigned long v;

		errno = 0;
		v = strtoul(o->lookup_rate, &end, 10);
		if (errno || end == o->lookup_rate || *end || o->lookup_rate[0] == '-' ||
		    v > 100000) {
			nx_log(NX_LOG_ERR, "bad option lookup_rate=%s: expected lookups per second "
			       "from 1 to 100000, or 0 for no bound", o->lookup_rate);
			return -EINVAL;
		}
		o->lookup_per_s = v ? (int)v : -1;
	}
	if (o->closure && check_closure_name(o->closure) < 0) {
		nx_log(NX_LOG_ERR, "bad option closure=%s: expected a tag or sha256:<64 hex>",
		       o->closure);
		return -EINVAL;
	}
	if (o->profile && (!o->closure || !o->profile[0] || strlen(o->profile) > 128)) {
		nx_log(NX_LOG_ERR, "bad option profile=%s: %s", o->profile,
		       o->closure ? "expected a profile name or auto" :
				    "a profile belongs to a closure: give closure=NAME too");
		return -EINVAL;
	}
	if (o->profile_secs) {
		char *end;
		long v;

		errno = 0;
		v = strtol(o->profile_secs, &end, 10);
		if (errno || end == o->profile_secs || *end || v < 1 || v > 86400) {
			nx_log(NX_LOG_ERR, "bad option profile_seconds=%s: expected whole seconds "
			       "from 1 to 86400", o->profile_secs);
			return -EINVAL;
		}
		o->profile_seconds = (int)v;
	}
	if (o->keys) {
		r = nx_pubkeys_parse(o->keys, &o->pubkeys, &o->npubkeys);
		if (r < 0 || o->npubkeys == 0) {
			/* a parse error was logged by common/ naming the key */
			if (r >= 0)
				nx_log(NX_LOG_ERR, "bad option trusted-public-keys=%s: expected "
				       "name:base64 keys separated by spaces", o->keys);
			return -EINVAL;
		}
	}
	if (o->metrics) {
		char dir[PATH_MAX];
		const char *slash = strrchr(o->metrics, '/');

		snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - o->metrics) + 1 : 1,
			 slash ? o->metrics : ".");
		if (access(dir, W_OK | X_OK) < 0) {
			nx_log(NX_LOG_ERR, "bad option metrics=%s: %s", o->metrics, strerror(errno));
			return -EINVAL;
		}
	}
	if (o->cafile && access(o->cafile, R_OK) < 0) {
		nx_log(NX_LOG_ERR, "bad option cafile=%s: %s", o->cafile, strerror(errno));
		return -EINVAL;
	}
	o->pt_mode = NX_PT_AUTO;
	if (o->passthrough && strcmp(o->passthrough, "auto") != 0) {
		if (strcmp(o->passthrough, "off") != 0) {
			nx_log(NX_LOG_ERR, "bad option passthrough=%s: expected auto or off",
			       o->passthrough);
			return -EINVAL;
		}
		o->pt_mode = NX_PT_OFF;
	}
	o->sandbox_mode = NX_SANDBOX_AUTO;
	if (o->sandbox && strcmp(o->sandbox, "auto") != 0) {
		if (strcmp(o->sandbox, "off") != 0) {
			nx_log(NX_LOG_ERR, "bad option sandbox=%s: expected auto or off",
			       o->sandbox);
			return -EINVAL;
		}
		o->sandbox_mode = NX_SANDBOX_OFF;
	}
	return 0;
}

void nx_fs_opts_release(struct nx_fs_opts *o)
{
	free(o->cache);
	free(o->cache_size);
	free(o->meta_budget);
	free(o->closure);
	free(o->timeout);
	free(o->tag_ttl);
	free(o->readahead);
	free(o->lookup_rate);
	free(o->cafile);
	free(o->log);
	free(o->metrics);
	free(o->profile);
	free(o->profile_record);
	free(o->profile_secs);
	free(o->passthrough);
	free(o->sandbox);
	free(o->insecure_host);
	free(o->keys);
	free(o->pubkeys);
	while (o->nmirrors)
		free(o->mirrors[--o->nmirrors]);
	free(o->mirrors);
	free(o->ref);
	free(o->mountpoint);
	free(o->fo.mountpoint);
}
