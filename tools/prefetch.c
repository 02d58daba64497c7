/*
 * tools/prefetch.c: `nixoci prefetch`, which fills a cache directory (the
 * one a nixoci-fs mount uses, or one it will use) with every frame of the
 * closure of some store paths, so that later reads never touch the network.
 *
 * The closure is walked through the references recorded in the manifests
 * (breadth first), not through a local Nix store: the machine that
 * prefetches usually has none.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/tools_i.h"

static const char usage_prefetch[] =
	"usage: nixoci prefetch [--cache DIR] [OPTIONS] REGISTRY/REPO PATH...\n"
	"\n"
	"Fetches every frame of each PATH and of everything it references\n"
	"(recursively) into the cache DIR, verifying as nixoci-fs does.\n"
	"\n"
	"options:\n"
	"  --cache DIR           the cache to fill; default nixoci-fs's: /var/cache/nixoci\n"
	"                        for root, $XDG_CACHE_HOME/nixoci or ~/.cache/nixoci else\n"
	"  --closure NAME        resolve paths through the closure index NAME\n"
	"  --trusted-public-keys KEYS, --cafile FILE, --insecure, --timeout SECONDS, -v\n";

/* Paths to visit, in discovery order (@v), with a sorted copy of the same
 * pointers (@sorted) so that each reference is checked in O(log n). */
struct queue {
	char **v;
	size_t n, cap;
	char **sorted; /* same strings, sorted, for membership */
};

/* s is owned by q->v (NX_ANALYZER_ARRAY_STORE_BEGIN says why) */
NX_ANALYZER_ARRAY_STORE_BEGIN
static int queue_add(struct queue *q, const char *base, size_t len)
{
	char *s, **nv, **ns, *key;
	size_t lo = 0, hi = q->n, mid;
	int c;

	s = strndup(base, len);
	if (!s)
		return -ENOMEM;
	key = s;
	while (lo < hi) {
		mid = (lo + hi) / 2;
		c = strcmp(q->sorted[mid], key);

		if (c == 0) {
			free(s);
			return 0;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (q->n == q->cap) {
		size_t cap = q->cap ? q->cap * 2 : 64;

		nv = reallocarray(q->v, cap, sizeof(*nv));
		if (!nv) {
			free(s);
			return -ENOMEM;
		}
		q->v = nv;
		ns = reallocarray(q->sorted, cap, sizeof(*ns));
		if (!ns) {
			free(s);
			return -ENOMEM;
		}
		q->sorted = ns;
		q->cap = cap;
	}
	memmove(&q->sorted[lo + 1], &q->sorted[lo], (q->n - lo) * sizeof(*q->sorted));
	q->sorted[lo] = s;
	q->v[q->n++] = s;
	return 0;
}
NX_ANALYZER_ARRAY_STORE_END

struct pf_progress {
	int tty;
	size_t i, n;
	const char *base;
};

static void pf_progress(void *ctx, uint64_t done, uint64_t total)
{
	struct pf_progress *p = ctx;
	char a[32], b[32];

	if (!p->tty)
		return;
	fprintf(stderr, "\r\033[Kprefetching %zu/%zu paths: %.32s %s/%s", p->i + 1, p->n, p->base,
		nx_cli_human(done, a, sizeof(a)), nx_cli_human(total, b, sizeof(b)));
	fflush(stderr);
}

int nx_cmd_prefetch(struct nx_cli *cli, int argc, char **argv)
{
	enum { O_CACHE = NX_OPT_FIRST_PRIVATE, O_CLOSURE };
	static const struct option lo[] = {
		{ "cache", required_argument, NULL, O_CACHE },
		{ "closure", required_argument, NULL, O_CLOSURE },
		NX_CLI_LONGOPTS,
		{ NULL, 0, NULL, 0 },
	};
	struct nx_store_opts so = { 0 };
	struct nx_registry *reg = NULL;
	struct nx_store *st = NULL;
	struct nx_pubkey *keys = NULL;
	struct nx_store_stats stats;
	struct pf_progress pp = { 0 };
	struct queue q = { 0 };
	const char *base;
	size_t blen, nkeys = 0, i, j;
	uint64_t t0 = nx_now_ns();
	char defcache[PATH_MAX];
	int c, r, ret = NX_EXIT_ERR;

	while ((c = getopt_long(argc, argv, ":hv", lo, NULL)) != -1) {
		switch (c) {
		case 'h':
			fputs(usage_prefetch, stdout);
			return NX_EXIT_OK;
		case O_CACHE:
			so.cache_dir = optarg;
			break;
		case O_CLOSURE:
			so.closure = optarg;
			break;
		case '?':
		case ':':
			return nx_cli_usage_error(usage_prefetch, "prefetch: %s '%s'",
						  c == '?' ? "unknown option"
							   : "missing argument to",
						  argv[optind - 1]);
		default:
			if (nx_cli_opt(cli, c, optarg) < 0) {
				return nx_cli_synopsis(usage_prefetch);
			}
		}
	}
	if (!so.cache_dir) {
		if (nx_default_cache_dir(defcache, sizeof(defcache)) < 0)
			return nx_cli_usage_error(usage_prefetch, "prefetch: no default cache "
						  "directory (no HOME): give --cache DIR");
		so.cache_dir = defcache;
	}
	if (argc - optind < 2)
		return nx_cli_usage_error(usage_prefetch, "prefetch: missing %s",
					  optind >= argc ? "REGISTRY/REPO and PATH" : "PATH");
	for (i = (size_t)optind + 1; i < (size_t)argc; i++)
		if (nx_cli_path_arg(argv[i], &base, &blen, NULL) < 0)
			return nx_cli_usage_error(usage_prefetch,
						  "prefetch: '%s' is not a store path or base name",
						  argv[i]);
	if (nx_cli_keys(cli, &keys, &nkeys) < 0) {
		return nx_cli_synopsis(usage_prefetch);
	}
	for (i = (size_t)optind + 1; i < (size_t)argc; i++) {
		nx_cli_path_arg(argv[i], &base, &blen, NULL);
		if (queue_add(&q, base, blen) < 0)
			goto out;
	}
	if (nx_cli_registry(cli, argv[optind], 1, &reg) < 0)
		goto out;
	so.origin = nx_registry_ref(reg); /* as the daemon records it: its REGISTRY/REPO */
	so.keys = keys;
	so.nkeys = nkeys;
	so.lookup_rate = -1; /* one user's command, not a shared mount */
	{
		struct nx_source src = { reg, nx_registry_source_manifest,
					 nx_registry_source_blob, NULL, NULL };

		if (nx_store_open(&st, &so, &src) < 0)
			goto out;
	}
	pp.tty = nx_cli_tty();
	for (i = 0; i < q.n; i++) {
		const struct nx_manifest *m;
		struct nx_spath *sp;

		r = nx_store_lookup(st, q.v[i], strlen(q.v[i]), &sp);
		if (r < 0) {
			if (pp.tty)
				fputs("\r\033[K", stderr);
			nx_log(NX_LOG_ERR, "prefetch %s/%s: %s", NX_STORE_DIR, q.v[i],
			       r == -ENOENT ? "not in the repository" : strerror(-r));
			goto out;
		}
		m = nx_spath_manifest(sp);
		for (j = 0; j < m->info.nrefs; j++) {
			if (queue_add(&q, m->info.refs[j], strlen(m->info.refs[j])) < 0)
				goto out;
		}
		pp.i = i;
		pp.n = q.n;
		pp.base = q.v[i];
		r = nx_store_prefetch(st, sp, pf_progress, &pp);
		nx_spath_put(sp);
		if (r < 0) {
			if (pp.tty)
				fputs("\r\033[K", stderr);
			nx_log(NX_LOG_ERR, "prefetch %s/%s: %s", NX_STORE_DIR, q.v[i],
			       strerror(-r));
			goto out;
		}
		nx_log(NX_LOG_INFO, "prefetched %s/%s", NX_STORE_DIR, q.v[i]);
	}
	if (pp.tty)
		fputs("\r\033[K", stderr);
	nx_store_stats(st, &stats);
	printf("prefetched %zu paths, %llu frames (%llu bytes) fetched, %llu already cached, "
	       "in %.1fs\n",
	       q.n, (unsigned long long)stats.frames_fetched,
	       (unsigned long long)stats.bytes_fetched, (unsigned long long)stats.cache_hits,
	       (double)(nx_now_ns() - t0) / 1e9);
	ret = NX_EXIT_OK;
out:
	nx_store_close(st);
	nx_registry_close(reg);
	for (i = 0; i < q.n; i++)
		free(q.v[i]);
	free(q.v);
	free(q.sorted);
	free(keys);
	return ret;
}
