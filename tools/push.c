/*
 * tools/push.c: `nixoci push`, the writer of docs/format.md.
 *
 * The closure of the given paths and the narinfo of each path come from Nix
 * (`nix path-info --json --recursive`): nixoci never computes what Nix
 * already knows. What it does
 * compute, the NAR, must then be byte-identical to Nix's: every NAR we
 * produce is checked against Nix's NarHash and NarSize before anything is
 * uploaded, so a bug in our NAR writer can never reach a registry.
 *
 * Round trips, not bytes, set the time of a push over a real link, so a
 * push asks as little as it can (tools/publish.c): one `nix path-info`,
 * then, with --tag, the closure index there: when it is byte for byte the
 * index this run would write (checked against the manifests in its closure
 * metadata blob: same store paths, NarHash, NarSize, signatures), nothing
 * else is read or written - three requests. Otherwise one listing of the
 * repository's tags replaces a manifest request per path; a path whose tag
 * holds our manifest for the same store path and NarHash is skipped before
 * it is even dumped; the others are written by --jobs worker threads that
 * share one registry handle (fetch/ is thread-safe), each owning its
 * temporary file, packer and TOC builder. A tag is never moved to a
 * manifest of another store path or of another NAR (artifacts are
 * immutable, docs/format.md section 1); such a conflict is an error.
 *
 * Order keeps readers safe: a path's blobs before its manifest and tag, and
 * the closure index last, only when every path was written, so a tag never
 * names something missing. Uploading, signing, the manifest, the index and
 * the workers are tools/publish.c, shared with `nixoci import`.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tools/tools_i.h"

extern char **environ;

static const char usage_push[] =
	"usage: nixoci push [OPTIONS] REGISTRY/REPO PATH...\n"
	"\n"
	"Pushes the closure of each PATH (a store path, or a symlink to one such as\n"
	"./result) to the repository: one manifest per store path, tagged with its\n"
	"hash part. Paths already in the repository are skipped.\n"
	"\n"
	"options:\n"
	"  -j, --jobs N          paths pushed in parallel (default 16)\n"
	"  -t, --tag NAME        also write a closure index under tag NAME; when the\n"
	"                        index there already is what this push would write,\n"
	"                        nothing else is checked or written\n"
	"  --mount-from REPO     blobs that repository REPO of the same registry has\n"
	"                        are mounted from it instead of uploaded\n"
	"  --pack                the default: small store paths share pack blobs\n"
	"                        (manifest format 2 of docs/format.md), far fewer\n"
	"                        upload requests\n"
	"  --no-pack             every path its own NAR layer and TOC (format 1, for\n"
	"                        readers older than format 2)\n"
	"  -k, --sign-key FILE   sign with a nix-store --generate-binary-cache-key secret key\n"
	"  --cafile FILE, --insecure, --timeout SECONDS, -v   as for every command\n";

/* Output of a child process is capped: `nix path-info --json` of a 15,000
 * path closure is ~20 MiB. */
#define CHILD_OUT_MAX (512u << 20)

/* ------------------------------------------------------ running Nix */

int nx_run_capture(const char *what, char *const argv[], char **out, size_t *outlen)
{
	posix_spawn_file_actions_t fa;
	int fds[2] = { -1, -1 }, status, r;
	size_t len = 0, cap = 0;
	char *buf = NULL, *nb;
	pid_t pid;
	ssize_t n;

	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	r = posix_spawn_file_actions_init(&fa);
	if (r) {
		close(fds[0]);
		close(fds[1]);
		return -r;
	}
	r = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	if (!r)
		r = posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
	if (!r)
		r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(fds[1]);
	if (r) {
		nx_log(NX_LOG_ERR, "cannot run %s: %s%s", argv[0], strerror(r),
		       r == ENOENT ? " (is Nix installed and in PATH?)" : "");
		close(fds[0]);
		return -r;
	}
	for (;;) {
		if (cap - len < 65536 + 1) {
			if (cap >= CHILD_OUT_MAX) {
				nx_log(NX_LOG_ERR, "output of %s exceeds %u MiB", what,
				       CHILD_OUT_MAX >> 20);
				r = -E2BIG;
				break;
			}
			cap = cap ? cap * 2 : 1 << 16;
			nb = realloc(buf, cap);
			if (!nb) {
				r = -ENOMEM;
				break;
			}
			buf = nb;
		}
		n = read(fds[0], buf + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			nx_log(NX_LOG_ERR, "cannot read the output of %s: %s", what,
			       strerror(errno));
			break;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fds[0]);
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			status = -1;
			break;
		}
	}
	if (r == 0 && (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)) {
		nx_log(NX_LOG_ERR, "%s failed (exit status %d); see its message above", what,
		       status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1);
		r = -EIO;
	}
	if (r < 0) {
		free(buf);
		return r;
	}
	if (!buf) {
		buf = strdup("");
		if (!buf)
			return -ENOMEM;
	}
	buf[len] = '\0';
	*out = buf;
	*outlen = len;
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "/nix/store/<base>" -> strdup(base), validated. */
/* *out is an item of str_array's array (NX_ANALYZER_ARRAY_STORE_BEGIN says why) */
NX_ANALYZER_ARRAY_STORE_BEGIN
static int base_of(const char *what, const char *full, char **out)
{
	const char *base;

	if (nx_storepath_check(full, &base) < 0) {
		nx_log(NX_LOG_ERR, "nix path-info: %s '%s' is not a store path", what, full);
		return -EINVAL;
	}
	*out = strdup(base);
	return *out ? 0 : -ENOMEM;
}
NX_ANALYZER_ARRAY_STORE_END

/* each item is owned by v (NX_ANALYZER_ARRAY_STORE_BEGIN says why) */
NX_ANALYZER_ARRAY_STORE_BEGIN
static int str_array(json_t *a, const char *what, int base_names, char ***out, size_t *n)
{
	size_t i, cnt;
	char **v;
	int r;

	*out = NULL;
	*n = 0;
	if (!a)
		return 0;
	if (!json_is_array(a)) {
		nx_log(NX_LOG_ERR, "nix path-info: %s is not an array", what);
		return -EINVAL;
	}
	cnt = json_array_size(a);
	if (cnt == 0)
		return 0;
	v = calloc(cnt, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (i = 0; i < cnt; i++) {
		const char *s = json_string_value(json_array_get(a, i));

		if (!s) {
			nx_log(NX_LOG_ERR, "nix path-info: %s holds a non-string", what);
			r = -EINVAL;
			goto fail;
		}
		if (base_names) {
			r = base_of(what, s, &v[i]);
			if (r < 0)
				goto fail;
		} else {
			v[i] = strdup(s);
			if (!v[i]) {
				r = -ENOMEM;
				goto fail;
			}
		}
	}
	*out = v;
	*n = cnt;
	return 0;
fail:
	while (i--)
		free(v[i]);
	free(v);
	return r;
}
NX_ANALYZER_ARRAY_STORE_END

static int parse_one_info(struct nx_pub *ps, json_t *o)
{
	const char *path, *hash, *s;
	struct nx_pub_path *pp;
	json_t *size;
	int r;

	path = json_string_value(json_object_get(o, "path"));
	if (!path) {
		nx_log(NX_LOG_ERR, "nix path-info: an entry has no path");
		return -EINVAL;
	}
	pp = nx_pub_find(ps, path);
	if (!pp) /* not one we asked for; Nix does not do this */
		return 0;
	if (json_is_false(json_object_get(o, "valid"))) {
		nx_log(NX_LOG_ERR, "%s is not valid in the local Nix store", path);
		return -ENOENT;
	}
	hash = json_string_value(json_object_get(o, "narHash"));
	if (!hash || nx_narhash_parse(hash, pp->info.nar_hash) < 0) {
		nx_log(NX_LOG_ERR, "nix path-info: %s has no usable narHash", path);
		return -EINVAL;
	}
	size = json_object_get(o, "narSize");
	if (!json_is_integer(size) || json_integer_value(size) <= 0) {
		nx_log(NX_LOG_ERR, "nix path-info: %s has no usable narSize", path);
		return -EINVAL;
	}
	pp->info.nar_size = (uint64_t)json_integer_value(size);
	r = str_array(json_object_get(o, "references"), "references", 1, &pp->info.refs,
		      &pp->info.nrefs);
	if (r < 0)
		return r;
	if (pp->info.nrefs > 1)
		qsort(pp->info.refs, pp->info.nrefs, sizeof(char *), cmp_str);
	r = str_array(json_object_get(o, "signatures"), "signatures", 0, &pp->info.sigs,
		      &pp->info.nsigs);
	if (r < 0)
		return r;
	s = json_string_value(json_object_get(o, "deriver"));
	if (s && strcmp(s, "unknown-deriver") != 0) {
		r = base_of("deriver", s, &pp->info.deriver);
		if (r < 0)
			return r;
	}
	s = json_string_value(json_object_get(o, "ca"));
	if (s && *s) {
		pp->info.ca = strdup(s);
		if (!pp->info.ca)
			return -ENOMEM;
	}
	pp->have_info = 1;
	return 0;
}

/*
 * The closure of @roots and the narinfo of each of its paths, from one
 * `nix path-info --json --recursive` (one process instead of a query and a
 * batch of info queries: on a re-push these are most of the time), into
 * ps->paths, sorted by store path.
 */
/* each store_path is owned by ps->paths (NX_ANALYZER_ARRAY_STORE_BEGIN says why) */
NX_ANALYZER_ARRAY_STORE_BEGIN
static int query_closure(struct nx_pub *ps, char **roots, size_t nroots)
{
	static const char *const pre[] = { "nix", "--extra-experimental-features", "nix-command",
					   "path-info", "--json", "--recursive" };
	const size_t npre = sizeof(pre) / sizeof(pre[0]);
	char **argv, *out = NULL;
	json_error_t err;
	size_t i, n, len = 0;
	json_t *root;
	int r = 0;

	argv = calloc(npre + nroots + 1, sizeof(*argv));
	if (!argv)
		return -ENOMEM;
	for (i = 0; i < npre; i++)
		argv[i] = (char *)pre[i];
	for (i = 0; i < nroots; i++)
		argv[npre + i] = roots[i];
	r = nx_run_capture("nix path-info --json --recursive", argv, &out, &len);
	free(argv);
	if (r != 0) /* posix_spawn's codes are positive: != 0, not < 0, for the analyzer */
		return r;
	if (!out) /* set on success; the analyzer does not follow run_capture that far */
		return -EIO;
	root = json_loadb(out, len, 0, &err);
	free(out);
	if (!json_is_array(root)) {
		nx_log(NX_LOG_ERR, "nix path-info --json printed no JSON array: %s",
		       root ? "not an array" : err.text);
		json_decref(root);
		return -EINVAL;
	}
	n = json_array_size(root);
	ps->paths = calloc(n + 1, sizeof(*ps->paths));
	if (!ps->paths) {
		json_decref(root);
		return -ENOMEM;
	}
	for (i = 0; i < n; i++) {
		const char *path = json_string_value(json_object_get(json_array_get(root, i), "path"));
		const char *base;

		if (!path || nx_storepath_check(path, &base) < 0) {
			nx_log(NX_LOG_ERR, "nix path-info printed an entry without a store path");
			json_decref(root);
			return -EINVAL;
		}
		ps->paths[ps->npaths].info.store_path = strdup(path);
		if (!ps->paths[ps->npaths].info.store_path) {
			json_decref(root);
			return -ENOMEM;
		}
		ps->npaths++;
	}
	nx_pub_sort(ps);
	/* Nix never lists a path twice, but an index with duplicates is invalid */
	for (i = 1; i < ps->npaths; i++) {
		if (strcmp(ps->paths[i - 1].info.store_path, ps->paths[i].info.store_path) == 0) {
			nx_log(NX_LOG_ERR, "nix path-info listed %s twice",
			       ps->paths[i].info.store_path);
			json_decref(root);
			return -EINVAL;
		}
	}
	for (i = 0; i < n && r == 0; i++)
		r = parse_one_info(ps, json_array_get(root, i));
	json_decref(root);
	if (r < 0)
		return r;
	for (i = 0; i < ps->npaths; i++) {
		if (!ps->paths[i].have_info) {
			nx_log(NX_LOG_ERR, "nix path-info gave no information about %s",
			       ps->paths[i].info.store_path);
			return -EINVAL;
		}
	}
	return 0;
}
NX_ANALYZER_ARRAY_STORE_END

/* ---------------------------------------------------------- one path */

/* Dumps and packs one path, checks the NAR against Nix's NarHash and NarSize,
 * and hands it to nx_pub_commit: 2 pushed, 1 already there, or -errno. */
static int push_one(struct nx_pub *ps, struct nx_pub_path *pp)
{
	const char *path = pp->info.store_path;
	uint8_t blob_sha[NX_SHA256_LEN], nar_sha[NX_SHA256_LEN];
	struct nx_toc_builder *tb = NULL;
	struct nx_packer *pk = NULL;
	uint64_t nar_size = 0, blob_size = 0;
	int fd = -1, r;

	r = nx_pub_existing(ps, pp);
	if (r != 0)
		return r;

	fd = nx_pub_tmpfile(ps);
	if (fd < 0)
		return fd;
	r = nx_toc_builder_new(&tb);
	if (r < 0)
		goto out;
	r = nx_packer_new(&pk, fd, tb);
	if (r < 0)
		goto out;
	if (pp->group) /* its pack's digest is what counts */
		nx_packer_no_blob_hash(pk);
	r = nx_nar_dump(path, nx_packer_sink(pk));
	if (r < 0)
		goto out;
	r = nx_packer_finish(pk, &nar_size, &blob_size, blob_sha, nar_sha);
	if (r < 0)
		goto out;
	if (nar_size != pp->info.nar_size ||
	    memcmp(nar_sha, pp->info.nar_hash, NX_SHA256_LEN) != 0) {
		char a[NX_NARHASH_STRLEN], b[NX_NARHASH_STRLEN];

		nx_narhash_format(nar_sha, a);
		nx_narhash_format(pp->info.nar_hash, b);
		nx_log(NX_LOG_ERR,
		       "%s: our NAR (%s, %llu bytes) differs from Nix's (%s, %llu bytes); "
		       "the path changed on disk or nixoci's NAR writer is wrong",
		       path, a, (unsigned long long)nar_size, b,
		       (unsigned long long)pp->info.nar_size);
		r = -EBADMSG;
		goto out;
	}
	pp->local = 1; /* what was just dumped and checked against Nix */
	r = nx_pub_commit(ps, pp, fd, tb, nar_size, blob_size, blob_sha);
out:
	nx_packer_free(pk);
	nx_toc_builder_free(tb);
	close(fd);
	return r;
}

/* ---------------------------------------------------------------- main */

/* A derivation is a build recipe: its closure is sources and other .drv
 * files, not what a mount should serve. -EINVAL (logged) for one. */
static int is_drv(const char *arg, const char *sp)
{
	size_t n = strlen(sp);

	if (n < 4 || strcmp(sp + n - 4, ".drv") != 0)
		return 0;
	nx_log(NX_LOG_ERR, "push %s: %s is a derivation (a build recipe), not a build "
	       "output; push its outputs: nixoci push REF $(nix-store -q --outputs %s)",
	       arg, sp, sp);
	return -EINVAL;
}

/*
 * Resolves @arg to a store path: a store path itself, its "<hash>-<name>", or a chain of symlinks
 * that ends at one (./result). The store path may itself be a symlink (a
 * store path whose root object is a symlink), so the chain is followed one
 * link at a time and stops at the first store path, never beyond it.
 */
static int resolve_root(const char *arg, char **out)
{
	char *p, *t = NULL, *rp, *slash;
	const char *base;
	struct stat st;
	int hops, r;
	ssize_t n;

	/* "<hash>-<name>" alone names the store path, as everywhere else */
	if (!strchr(arg, '/') && nx_storepath_check_base(arg, strlen(arg)) == 0) {
		if (asprintf(&p, "%s/%s", NX_STORE_DIR, arg) < 0)
			return -ENOMEM;
	} else {
		p = strdup(arg);
	}
	if (!p)
		return -ENOMEM;
	for (hops = 0; hops < 40; hops++) {
		if (lstat(p, &st) < 0) {
			r = -errno;
			nx_log(NX_LOG_ERR, "push %s: %s: %s", arg, p, strerror(errno));
			free(p);
			return r;
		}
		if (nx_storepath_check(p, &base) == 0) {
			*out = p;
			return is_drv(arg, p);
		}
		if (!S_ISLNK(st.st_mode))
			break;
		t = malloc(PATH_MAX);
		if (!t) {
			free(p);
			return -ENOMEM;
		}
		n = readlink(p, t, PATH_MAX - 1);
		if (n < 0) {
			r = -errno;
			nx_log(NX_LOG_ERR, "push %s: %s", arg, strerror(errno));
			free(t);
			free(p);
			return r;
		}
		t[n] = '\0';
		if (t[0] != '/') {
			char *j;

			slash = strrchr(p, '/');
			if (asprintf(&j, "%.*s%s", slash ? (int)(slash - p + 1) : 0, p, t) < 0) {
				free(t);
				free(p);
				return -ENOMEM;
			}
			free(t);
			t = j;
		}
		free(p);
		p = t;
		t = NULL;
	}
	/* not a symlink chain to a store path: maybe one through symlinked dirs */
	rp = realpath(p, NULL);
	free(p);
	if (rp && nx_storepath_check(rp, &base) == 0) {
		*out = rp;
		return is_drv(arg, rp);
	}
	nx_log(NX_LOG_ERR, "push %s: not a store path (/nix/store/<hash>-<name>) "
	       "or a symlink to one", arg);
	free(rp);
	return -EINVAL;
}

int nx_cmd_push(struct nx_cli *cli, int argc, char **argv)
{
	struct nx_pub_opts po = { 0 };
	struct nx_pub ps;
	const char *ref;
	char **roots = NULL;
	size_t nroots = 0, i, j;
	uint64_t t0;
	int c, r, ret = NX_EXIT_ERR;

	c = nx_pub_getopt(cli, "push", usage_push, argc, argv, &po);
	if (c >= 0)
		return c;
	if (argc - optind < 2)
		return nx_cli_usage_error(usage_push, "push: %s",
					  optind >= argc ? "missing REGISTRY/REPO and PATH"
							 : "missing PATH");
	ref = argv[optind++];
	t0 = nx_now_ns();
	if (nx_pub_init(&ps, "pushing") < 0)
		return NX_EXIT_ERR;
	ps.cmd = "push";
	ps.done_verb = "pushed";
	ps.one = push_one;

	if (po.keyfile && nx_pub_load_key(&ps, po.keyfile) < 0)
		goto out;
	roots = calloc((size_t)(argc - optind), sizeof(*roots));
	if (!roots)
		goto out;
	for (; optind < argc; optind++) {
		char *rp = NULL;

		if (resolve_root(argv[optind], &rp) < 0) {
			free(rp); /* set when it named a .drv */
			goto out;
		}
		for (j = 0; j < nroots && strcmp(roots[j], rp) != 0; j++)
			;
		if (j < nroots)
			free(rp);
		else
			roots[nroots++] = rp;
	}

	ps.jobs = po.jobs;
	ps.mount_from = po.mount_from;
	ps.pack = po.pack;
	if (nx_pub_open(&ps, cli, ref) < 0)
		goto out;
	if (query_closure(&ps, roots, nroots) < 0)
		goto out;
	if (po.tag) {
		r = nx_pub_unchanged(&ps, po.tag, roots, nroots);
		if (r < 0)
			goto out;
		if (r == 1) {
			printf("pushed %zu paths (0 uploaded, %zu skipped), 0 bytes uploaded in "
			       "%.1fs (closure index %s unchanged)\n",
			       ps.npaths, ps.npaths, (double)(nx_now_ns() - t0) / 1e9, po.tag);
			ret = NX_EXIT_OK;
			goto out;
		}
	}
	if (nx_pub_run(&ps, po.jobs) < 0) {
		nx_pub_progress_clear(&ps);
		if (po.tag)
			nx_log(NX_LOG_ERR, "push: not every path was written (see above); the "
			       "closure index %s was not written", po.tag);
		goto out;
	}

	if (po.tag) {
		r = nx_pub_index(&ps, po.tag, roots, nroots);
		if (r < 0) {
			nx_pub_progress_clear(&ps);
			nx_log(NX_LOG_ERR, "push: cannot write the closure index %s: %s", po.tag,
			       strerror(-r));
			goto out;
		}
	}
	nx_pub_progress_clear(&ps);
	printf("pushed %zu paths (%zu uploaded, %zu skipped), %llu bytes uploaded in %.1fs",
	       ps.npaths, ps.uploaded, ps.skipped, (unsigned long long)ps.bytes,
	       (double)(nx_now_ns() - t0) / 1e9);
	if (ps.mount_from)
		printf(" (%zu blobs mounted from %s)", ps.mounted, ps.mount_from);
	putchar('\n');
	ret = NX_EXIT_OK;
out:
	nx_pub_release(&ps);
	for (i = 0; i < nroots; i++)
		free(roots[i]);
	free(roots);
	return ret;
}
