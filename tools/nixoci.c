/*
 * tools/nixoci.c: main(), the common options, subcommand dispatch and the
 * helpers the subcommands share (registry wiring, path arguments, temporary
 * cache directories).
 *
 * Options common to every subcommand may come before the subcommand name
 * or among its own options: `nixoci --insecure ls REF` and
 * `nixoci ls --insecure REF` mean the same.
 */
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/tools_i.h"

static const char usage_main[] =
	"usage: nixoci [COMMON OPTIONS] COMMAND [ARGS...]\n"
	"\n"
	"commands:\n"
	"  push REF PATH...          push the closure of store paths to REGISTRY/REPO\n"
	"  import CACHE REF PATH...  copy closures from a Nix binary cache, signatures kept\n"
	"  serve REF                 serve the repository to Nix as an HTTP binary cache\n"
	"  register REF PATH...      Nix database records of a closure (nix-store --load-db)\n"
	"  ls REF                    list the store paths in the repository\n"
	"  info REF PATH             print the narinfo view of a store path\n"
	"  verify REF PATH...        fetch everything and check every digest and signature\n"
	"  cat REF PATH[/SUB]        print a file of a store path\n"
	"  prefetch --cache DIR REF PATH...   fill a cache with the closure of PATHs\n"
	"  stats MOUNTPOINT          print the counters of a nixoci-fs mount\n"
	"  profile push REF CLOSURE FILE   publish a startup profile for a closure\n"
	"\n"
	"common options:\n"
	"  --cafile FILE             extra CA bundle for TLS\n"
	"  --insecure[=HOST]         allow plain HTTP and unverified TLS for REF's\n"
	"                            registry (or only HOST[:PORT]); never implied\n"
	"  --mirror HOST[:PORT]      pull-through mirror tried before the registry for\n"
	"                            reads (repeatable, in order); pushes skip it\n"
	"  --trusted-public-keys K   space-separated Nix public keys name:base64\n"
	"  --timeout SECONDS         per-request timeout (default 30)\n"
	"  -v, --verbose             more log output (twice: debug)\n"
	"  -h, --help                this text; COMMAND -h: help for COMMAND\n"
	"  --version                 print the version and exit\n"
	"\n"
	"REF is [https://|http://]HOST[:PORT]/REPO (loopback hosts default to http).\nPATH is /nix/store/<hash>-<name> or <hash>-<name>.\n"
	"Exit status: 0 ok, 1 error, 2 usage error.\n";

int nx_cli_opt(struct nx_cli *cli, int c, const char *arg)
{
	char *end;
	long v;

	switch (c) {
	case NX_OPT_CAFILE:
		cli->cafile = arg;
		return 1;
	case NX_OPT_INSECURE:
		cli->insecure = 1;
		cli->insecure_host = arg; /* NULL: the registry of REF */
		return 1;
	case NX_OPT_KEYS:
		cli->keys = arg;
		return 1;
	case NX_OPT_MIRROR:
		if (cli->nmirrors == sizeof(cli->mirrors) / sizeof(cli->mirrors[0])) {
			nx_log(NX_LOG_ERR, "too many --mirror options (at most %zu)",
			       sizeof(cli->mirrors) / sizeof(cli->mirrors[0]));
			return -EINVAL;
		}
		cli->mirrors[cli->nmirrors++] = arg;
		return 1;
	case NX_OPT_TIMEOUT:
		errno = 0;
		v = strtol(arg, &end, 10);
		if (errno || end == arg || *end || v <= 0 || v > 86400) {
			nx_log(NX_LOG_ERR, "bad --timeout '%s': want seconds, 1..86400", arg);
			return -EINVAL;
		}
		cli->timeout_s = (int)v;
		return 1;
	case 'v':
		cli->verbose++;
		nx_log_set_level(cli->verbose > 1 ? NX_LOG_DEBUG : NX_LOG_INFO);
		return 1;
	default:
		return 0;
	}
}

int nx_cli_synopsis(const char *usage)
{
	fprintf(stderr, "%.*s\n", (int)strcspn(usage, "\n"), usage);
	return NX_EXIT_USAGE;
}

int nx_cli_usage_error(const char *usage, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	nx_vlog(NX_LOG_ERR, fmt, ap);
	va_end(ap);
	/* the synopsis line only: the whole text is one -h away */
	return nx_cli_synopsis(usage);
}

int nx_cli_print_json(void *v)
{
	if (json_dumpf(v, stdout, JSON_INDENT(2) | JSON_ENSURE_ASCII) < 0 || putchar('\n') == EOF)
		return -EIO;
	return 0;
}

int nx_cli_keys(const struct nx_cli *cli, struct nx_pubkey **keys, size_t *n)
{
	int r;

	*keys = NULL;
	*n = 0;
	if (!cli->keys)
		return 0;
	r = nx_pubkeys_parse(cli->keys, keys, n);
	if (r < 0)
		return r;
	if (*n == 0) {
		nx_log(NX_LOG_ERR, "--trusted-public-keys holds no key");
		free(*keys);
		*keys = NULL;
		return -EINVAL;
	}
	return 0;
}

int nx_cli_registry(const struct nx_cli *cli, const char *ref, int quiet_404,
		    struct nx_registry **out)
{
	struct nx_regopts o = {
		.cafile = cli->cafile,
		.timeout_s = cli->timeout_s,
		.max_transfers = cli->max_transfers,
		.insecure = cli->insecure,
		.insecure_host = cli->insecure_host,
		.quiet_404 = quiet_404,
		.mirrors = cli->mirrors,
		.nmirrors = cli->nmirrors,
	};

	return nx_registry_open(out, ref, &o);
}

int nx_cli_path_arg(const char *arg, const char **base, size_t *base_len, const char **sub)
{
	const char *p = arg, *slash;
	size_t len;

	if (strncmp(p, NX_STORE_DIR "/", sizeof(NX_STORE_DIR)) == 0)
		p += sizeof(NX_STORE_DIR);
	slash = strchr(p, '/');
	len = slash ? (size_t)(slash - p) : strlen(p);
	if (nx_storepath_check_base(p, len) < 0)
		return -EINVAL;
	if (slash && !sub) {
		/* "base/" is harmless; anything below the root is not a store path */
		while (*slash == '/')
			slash++;
		if (*slash)
			return -EINVAL;
	}
	*base = p;
	*base_len = len;
	if (sub) {
		if (slash)
			while (*slash == '/')
				slash++;
		*sub = slash ? slash : "";
	}
	return 0;
}

void nx_cli_tag(const char *base, char tag[NX_HASH_LEN + 1])
{
	memcpy(tag, base, NX_HASH_LEN);
	tag[NX_HASH_LEN] = '\0';
}

int nx_cli_is_hash_tag(const char *tag)
{
	uint8_t raw[20];

	return strlen(tag) == NX_HASH_LEN && nx_nix32_decode(tag, NX_HASH_LEN, raw, 20) == 0;
}

int nx_cli_get_manifest(struct nx_registry *reg, const char *base, size_t base_len,
			struct nx_manifest *m, uint8_t digest[NX_SHA256_LEN], size_t *json_len)
{
	char tag[NX_HASH_LEN + 1];
	uint8_t d[NX_SHA256_LEN];
	const char *mbase;
	char *body = NULL;
	size_t len = 0;
	int r;

	nx_cli_tag(base, tag);
	r = nx_registry_get_manifest(reg, tag, NX_MANIFEST_MAX, &body, &len, d, NULL);
	if (r < 0)
		return r;
	r = nx_manifest_parse(body, len, m);
	free(body);
	if (r < 0) {
		memset(m, 0, sizeof(*m));
		nx_log(NX_LOG_ERR, "%s/%.*s: tag %s does not hold a valid nixoci manifest",
		       nx_registry_ref(reg), (int)base_len, base, tag);
		return r;
	}
	if (nx_storepath_check(m->info.store_path, &mbase) < 0 || strlen(mbase) != base_len ||
	    memcmp(mbase, base, base_len) != 0) {
		nx_log(NX_LOG_ERR, "%s/%.*s: tag %s holds the manifest of %s",
		       nx_registry_ref(reg), (int)base_len, base, tag, m->info.store_path);
		nx_manifest_release(m);
		memset(m, 0, sizeof(*m));
		return -EINVAL;
	}
	if (digest)
		memcpy(digest, d, NX_SHA256_LEN);
	if (json_len)
		*json_len = len;
	return 0;
}

struct toc_fetch {
	struct nx_toc_reader *r;
	uint64_t got;
};

static int toc_fetch_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct toc_fetch *f = ctx;

	if (off != f->got)
		return -EBADMSG;
	f->got += len;
	return nx_toc_reader_feed(f->r, buf, len);
}

int nx_cli_get_toc(struct nx_registry *reg, const struct nx_manifest *m, struct nx_toc **toc,
		   char **what)
{
	struct toc_fetch f = { 0 };
	char ds[NX_DIGEST_STRLEN], *name = NULL;
	int r;

	*toc = NULL;
	*what = NULL;
	nx_digest_format(m->toc.digest, ds);
	if (m->toc.size == 0 || m->toc.size > NX_TOC_MAX_BYTES) {
		if (asprintf(what, "TOC layer %s declares %llu bytes, out of range [1, %u]", ds,
			     (unsigned long long)m->toc.size, NX_TOC_MAX_BYTES) < 0)
			*what = NULL;
		return -EBADMSG;
	}
	if (asprintf(&name, "toc of %s", m->info.store_path) < 0)
		return -ENOMEM;
	r = nx_toc_reader_new(&f.r, name, m->toc.size, m->toc.digest, NX_TOC_MAX_BYTES);
	free(name);
	if (r < 0)
		return r;
	/* format 2: the TOC's range of the pack, checked by its own digest */
	{
		struct nx_window w = { .cb = toc_fetch_cb, .ctx = &f, .len = m->toc.size };
		const uint8_t *at;

		nx_manifest_toc_at(m, &at, &w.base);
		r = nx_registry_get_blob(reg, at, w.base, m->packed ? m->toc.size : 0,
					 nx_window_cb, &w);
	}
	if (r == 0 || r == -EBADMSG)
		r = nx_toc_reader_finish(f.r, toc);
	nx_toc_reader_free(f.r);
	if (r == -EBADMSG) {
		if (asprintf(what, "TOC layer %s: the registry's bytes do not match it", ds) < 0)
			*what = NULL;
	} else if (r == -EINVAL || r == -E2BIG) {
		*what = strdup("TOC is malformed");
	} else if (r < 0) {
		if (asprintf(what, "cannot fetch TOC layer %s: %s", ds, strerror(-r)) < 0)
			*what = NULL;
	} else if ((*toc)->nar_size != m->info.nar_size || (*toc)->blob_size != m->nar.size) {
		if (asprintf(what, "TOC sizes (NAR %llu, blob %llu) disagree with the manifest "
			     "(NarSize %llu, NAR layer %llu)",
			     (unsigned long long)(*toc)->nar_size,
			     (unsigned long long)(*toc)->blob_size,
			     (unsigned long long)m->info.nar_size,
			     (unsigned long long)m->nar.size) < 0)
			*what = NULL;
		nx_toc_free(*toc);
		*toc = NULL;
		r = -EBADMSG;
	}
	return r;
}

int nx_cli_tty(void)
{
	return isatty(STDERR_FILENO);
}

int nx_cli_tmpdir(char **out)
{
	const char *tmp = getenv("TMPDIR");
	char *dir;

	if (!tmp || !*tmp)
		tmp = "/tmp";
	if (asprintf(&dir, "%s/nixoci-cache.XXXXXX", tmp) < 0)
		return -ENOMEM;
	if (!mkdtemp(dir)) {
		int r = -errno;

		nx_log(NX_LOG_ERR, "cannot create a temporary cache directory in %s: %s", tmp,
		       strerror(errno));
		free(dir);
		return r;
	}
	*out = dir;
	return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	if (remove(path) < 0)
		nx_log(NX_LOG_WARNING, "cannot remove %s: %s", path, strerror(errno));
	return 0;
}

void nx_cli_tmpdir_remove(char *dir)
{
	if (!dir)
		return;
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(dir);
}

const char *nx_cli_human(uint64_t bytes, char *buf, size_t len)
{
	static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)bytes;
	unsigned i = 0;

	while (v >= 1024 && i < 4) {
		v /= 1024;
		i++;
	}
	if (i == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)bytes);
	else
		snprintf(buf, len, "%.1f %s", v, unit[i]);
	return buf;
}

static const struct {
	const char *name;
	int (*fn)(struct nx_cli *cli, int argc, char **argv);
	int network;
} cmds[] = {
	{ "push", nx_cmd_push, 1 },   { "ls", nx_cmd_ls, 1 },
	{ "info", nx_cmd_info, 1 },   { "verify", nx_cmd_verify, 1 },
	{ "cat", nx_cmd_cat, 1 },     { "prefetch", nx_cmd_prefetch, 1 },
	{ "stats", nx_cmd_stats, 0 },  { "import", nx_cmd_import, 1 },
	{ "serve", nx_cmd_serve, 1 },  { "register", nx_cmd_register, 1 },
	{ "profile", nx_cmd_profile, 1 },
};

int main(int argc, char **argv)
{
	static const struct option lo[] = { NX_CLI_LONGOPTS,
					    { "version", no_argument, NULL, 'V' },
					    { NULL, 0, NULL, 0 } };
	struct nx_cli cli = { 0 };
	size_t i;
	int c, r, ret, first;

	nx_log_set_prog("nixoci");
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:hv", lo, NULL)) != -1) {
		if (c == 'h') {
			fputs(usage_main, stdout);
			return NX_EXIT_OK;
		}
		if (c == 'V') {
			printf("nixoci %s\n", NX_VERSION);
			return NX_EXIT_OK;
		}
		if (c == '?' || c == ':')
			return nx_cli_usage_error(usage_main, "%s option '%s'",
						  c == '?' ? "unknown" : "missing argument to",
						  argv[optind - 1]);
		r = nx_cli_opt(&cli, c, optarg);
		if (r < 0) {
			return nx_cli_synopsis(usage_main);
		}
	}
	if (optind >= argc)
		return nx_cli_usage_error(usage_main, "missing command");
	for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		if (strcmp(argv[optind], cmds[i].name) != 0)
			continue;
		if (cmds[i].network && nx_fetch_global_init() < 0) {
			nx_log(NX_LOG_ERR, "cannot initialize the HTTP library");
			return NX_EXIT_ERR;
		}
		/* glibc: optind 0 re-initializes getopt for the subcommand's argv */
		first = optind;
		optind = 0;
		ret = cmds[i].fn(&cli, argc - first, argv + first);
		if (cmds[i].network)
			nx_fetch_global_cleanup();
		fflush(stdout);
		if (ferror(stdout)) {
			nx_log(NX_LOG_ERR, "cannot write to standard output");
			return NX_EXIT_ERR;
		}
		return ret;
	}
	return nx_cli_usage_error(usage_main, "unknown command '%s'", argv[optind]);
}
