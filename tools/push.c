/*
 * tools/push.c: `nixoci push`, the writer of docs/format.md.
 *
 * The closure of the given paths comes from Nix (`nix-store --query
 * --requisites`), and so does the narinfo of each path (`nix path-info
 * --json`): nixoci never computes what Nix already knows. What it does
 * compute, the NAR, must then be byte-identical to Nix's: every NAR we
 * produce is checked against Nix's NarHash and NarSize before anything is
 * uploaded, so a bug in our NAR writer can never reach a registry.
 *
 * Re-pushing is cheap by design: a path whose tag already holds our
 * manifest for the same store path and NarHash is skipped before it is even
 * dumped, so pushing an unchanged closure again uploads no blob and reads
 * no file. A tag is never moved to a manifest of another store path or of
 * another NAR (artifacts are immutable, docs/format.md section 1); such a
 * conflict is an error.
 *
 * Paths are pushed by --jobs worker threads that share one registry handle
 * (fetch/ is thread-safe); each worker owns its temporary file, packer and
 * TOC builder. The closure index (--tag) is written last, after every
 * manifest it lists exists.
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
	"  -j, --jobs N          parallel uploads (default 4)\n"
	"  -t, --tag NAME        also write a closure index under tag NAME\n"
	"  -k, --sign-key FILE   sign with a nix-store --generate-binary-cache-key secret key\n"
	"  --cafile FILE, --insecure, --timeout SECONDS, -v   as for every command\n";

/* Output of a child process is capped: `nix path-info --json` of a 15,000
 * path closure is ~20 MiB. */
#define CHILD_OUT_MAX (512u << 20)
/* Paths per `nix path-info` invocation, far below ARG_MAX. */
#define PATHINFO_BATCH 500

struct push_path {
	struct nx_pathinfo info; /* from Nix */
	uint8_t mdigest[NX_SHA256_LEN];
	uint64_t msize;
	int have_info;
};

struct push {
	struct nx_registry *reg;
	struct nx_seckey key;
	int have_key;
	const char *tmpdir;

	struct push_path *paths; /* sorted by store path */
	size_t npaths;

	pthread_mutex_t lock; /* guards everything below */
	size_t next;
	size_t done, uploaded, skipped;
	uint64_t bytes;
	int failed;
	int tty;
	int progress_shown;
};

/* ------------------------------------------------------ running Nix */

/* Runs @argv (no shell) with stdin from /dev/null and stderr inherited, and
 * returns its standard output (NUL-terminated, caller frees). */
static int run_capture(const char *what, char *const argv[], char **out, size_t *outlen)
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

static int cmp_path(const void *a, const void *b)
{
	const struct push_path *x = a, *y = b;

	return strcmp(x->info.store_path, y->info.store_path);
}

static struct push_path *find_path(struct push *ps, const char *store_path)
{
	struct push_path key = { .info = { .store_path = (char *)store_path } };

	return bsearch(&key, ps->paths, ps->npaths, sizeof(*ps->paths), cmp_path);
}

/* The closure of @roots, as Nix sees it, into ps->paths (sorted). */
static int query_closure(struct push *ps, char **roots, size_t nroots)
{
	char **argv, *out = NULL, *line, *nl;
	size_t i, n = 0, len;
	int r;

	argv = calloc(nroots + 4, sizeof(*argv));
	if (!argv)
		return -ENOMEM;
	argv[0] = (char *)"nix-store";
	argv[1] = (char *)"--query";
	argv[2] = (char *)"--requisites";
	for (i = 0; i < nroots; i++)
		argv[3 + i] = roots[i];
	r = run_capture("nix-store --query --requisites", argv, &out, &len);
	free(argv);
	if (r < 0)
		return r;
	for (i = 0; i < len; i++)
		n += out[i] == '\n';
	ps->paths = calloc(n + 1, sizeof(*ps->paths));
	if (!ps->paths) {
		free(out);
		return -ENOMEM;
	}
	for (line = out; *line; line = nl + 1) {
		const char *base;

		nl = strchr(line, '\n');
		if (!nl)
			nl = line + strlen(line) - 1; /* last line without newline */
		else
			*nl = '\0';
		if (!*line)
			continue;

		if (nx_storepath_check(line, &base) < 0) {
			nx_log(NX_LOG_ERR, "nix-store --query printed '%s', not a store path",
			       line);
			free(out);
			return -EINVAL;
		}
		ps->paths[ps->npaths].info.store_path = strdup(line);
		if (!ps->paths[ps->npaths].info.store_path) {
			free(out);
			return -ENOMEM;
		}
		ps->npaths++;
	}
	free(out);
	qsort(ps->paths, ps->npaths, sizeof(*ps->paths), cmp_path);
	/* Nix never lists a path twice, but an index with duplicates is invalid */
	for (i = 1; i < ps->npaths; i++) {
		if (strcmp(ps->paths[i - 1].info.store_path, ps->paths[i].info.store_path) == 0) {
			nx_log(NX_LOG_ERR, "nix-store --query listed %s twice",
			       ps->paths[i].info.store_path);
			return -EINVAL;
		}
	}
	return 0;
}

/* "/nix/store/<base>" -> strdup(base), validated. */
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

static int parse_one_info(struct push *ps, json_t *o)
{
	const char *path, *hash, *s;
	struct push_path *pp;
	json_t *size;
	int r;

	path = json_string_value(json_object_get(o, "path"));
	if (!path) {
		nx_log(NX_LOG_ERR, "nix path-info: an entry has no path");
		return -EINVAL;
	}
	pp = find_path(ps, path);
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

/* Fills every ps->paths[i].info from `nix path-info --json`. */
static int query_infos(struct push *ps)
{
	static const char *const pre[] = { "nix", "--extra-experimental-features", "nix-command",
					   "path-info", "--json" };
	const size_t npre = sizeof(pre) / sizeof(pre[0]);
	char **argv, *out;
	json_error_t err;
	size_t i, j, len;
	json_t *root;
	int r = 0;

	argv = calloc(npre + PATHINFO_BATCH + 1, sizeof(*argv));
	if (!argv)
		return -ENOMEM;
	for (i = 0; i < npre; i++)
		argv[i] = (char *)pre[i];
	for (i = 0; i < ps->npaths && r == 0; i += PATHINFO_BATCH) {
		size_t n = ps->npaths - i < PATHINFO_BATCH ? ps->npaths - i : PATHINFO_BATCH;

		for (j = 0; j < n; j++)
			argv[npre + j] = ps->paths[i + j].info.store_path;
		argv[npre + n] = NULL;
		r = run_capture("nix path-info --json", argv, &out, &len);
		if (r < 0)
			break;
		root = json_loadb(out, len, 0, &err);
		free(out);
		if (!json_is_array(root)) {
			nx_log(NX_LOG_ERR, "nix path-info --json printed no JSON array: %s",
			       root ? "not an array" : err.text);
			json_decref(root);
			r = -EINVAL;
			break;
		}
		for (j = 0; j < json_array_size(root) && r == 0; j++)
			r = parse_one_info(ps, json_array_get(root, j));
		json_decref(root);
	}
	free(argv);
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

/* ------------------------------------------------------------ progress */

/* Caller holds ps->lock. */
static void progress_locked(struct push *ps)
{
	char h[32];

	if (!ps->tty)
		return;
	fprintf(stderr, "\r\033[Kpushing %zu/%zu paths, %s", ps->done, ps->npaths,
		nx_cli_human(ps->bytes, h, sizeof(h)));
	fflush(stderr);
	ps->progress_shown = 1;
}

static void progress_clear_locked(struct push *ps)
{
	if (ps->progress_shown) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
		ps->progress_shown = 0;
	}
}

static void add_bytes(struct push *ps, uint64_t n)
{
	pthread_mutex_lock(&ps->lock);
	ps->bytes += n;
	progress_locked(ps);
	pthread_mutex_unlock(&ps->lock);
}

/* ---------------------------------------------------------- uploading */

static int upload_blob(struct push *ps, const uint8_t digest[NX_SHA256_LEN], int fd,
		       const void *buf, uint64_t size)
{
	int exists = 0, r;

	r = nx_registry_blob_exists(ps->reg, digest, &exists);
	if (r < 0)
		return r;
	if (exists)
		return 0;
	r = nx_registry_put_blob(ps->reg, digest, fd, buf, size);
	if (r < 0)
		return r;
	add_bytes(ps, size);
	return 0;
}

/* An unlinked temporary file in ps->tmpdir. */
static int tmp_file(struct push *ps)
{
	char *name;
	int fd;

	fd = open(ps->tmpdir, O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
	if (fd >= 0)
		return fd;
	/* O_TMPFILE needs file system support; fall back to create + unlink */
	if (asprintf(&name, "%s/nixoci-push.XXXXXX", ps->tmpdir) < 0)
		return -ENOMEM;
	fd = mkostemp(name, O_CLOEXEC);
	if (fd < 0) {
		int r = -errno;

		nx_log(NX_LOG_ERR, "cannot create a temporary file in %s: %s (set TMPDIR)",
		       ps->tmpdir, strerror(errno));
		free(name);
		return r;
	}
	unlink(name);
	free(name);
	return fd;
}

static int has_sig(char **sigs, size_t n, const char *sig)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcmp(sigs[i], sig) == 0)
			return 1;
	return 0;
}

/* What sign_manifest allocated: new signature strings and the arrays that
 * replaced the manifest's (those share the old strings). */
struct sigset {
	char *own[2];
	char **arrays[2];
};

static void sigset_release(struct sigset *s)
{
	free(s->own[0]);
	free(s->own[1]);
	free(s->arrays[0]);
	free(s->arrays[1]);
}

static int append_sig(char ***arr, size_t *n, char *sig, char ***array_owned)
{
	char **v = calloc(*n + 1, sizeof(*v));

	if (!v)
		return -ENOMEM;
	if (*n)
		memcpy(v, *arr, *n * sizeof(*v));
	v[(*n)++] = sig;
	*arr = v;
	*array_owned = v;
	return 0;
}

/*
 * Adds our narinfo signature to m->info.sigs and our TOC signature to
 * m->toc_sigs where they are missing; *changed tells whether anything was
 * added. The caller keeps the old array pointers and frees @s.
 */
static int sign_manifest(struct push *ps, struct nx_manifest *m, struct sigset *s, int *changed)
{
	char *fp = NULL, *sig = NULL;
	int r;

	memset(s, 0, sizeof(*s));
	*changed = 0;
	if (!ps->have_key)
		return 0;

	r = nx_fingerprint(&m->info, &fp);
	if (r < 0)
		return r;
	r = nx_sig_sign(&ps->key, fp, strlen(fp), &sig);
	free(fp);
	if (r < 0)
		return r;
	if (has_sig(m->info.sigs, m->info.nsigs, sig)) {
		free(sig);
	} else {
		s->own[0] = sig;
		r = append_sig(&m->info.sigs, &m->info.nsigs, sig, &s->arrays[0]);
		if (r < 0)
			return r;
		*changed = 1;
	}

	r = nx_toc_fingerprint(m->info.store_path, m->info.nar_hash, m->toc.digest, &fp);
	if (r < 0)
		return r;
	r = nx_sig_sign(&ps->key, fp, strlen(fp), &sig);
	free(fp);
	if (r < 0)
		return r;
	if (has_sig(m->toc_sigs, m->ntoc_sigs, sig)) {
		free(sig);
	} else {
		s->own[1] = sig;
		r = append_sig(&m->toc_sigs, &m->ntoc_sigs, sig, &s->arrays[1]);
		if (r < 0)
			return r;
		*changed = 1;
	}
	return 0;
}

static int put_manifest(struct push *ps, struct push_path *pp, const char *tag,
			const struct nx_manifest *m)
{
	char *json = NULL;
	size_t len = 0;
	int r;

	r = nx_manifest_build(m, &json, &len);
	if (r < 0)
		return r;
	r = nx_registry_put_manifest(ps->reg, tag, NX_MT_MANIFEST, json, len);
	if (r == 0) {
		nx_sha256(json, len, pp->mdigest);
		pp->msize = len;
		add_bytes(ps, len);
	}
	free(json);
	return r;
}

/*
 * Looks at what the registry holds under the path's tag. Returns 1 if the
 * path is there (already pushed, pp->mdigest/msize filled, signatures added
 * if they were missing), 0 if it must be pushed, or a negative errno.
 */
static int check_existing(struct push *ps, struct push_path *pp, const char *tag)
{
	struct nx_manifest m = { 0 };
	uint8_t digest[NX_SHA256_LEN];
	char *body = NULL, **nsigs, **ntsigs;
	size_t len = 0, nn, nt;
	struct sigset s;
	int r, changed;

	r = nx_registry_get_manifest(ps->reg, tag, NX_MANIFEST_MAX, &body, &len, digest, NULL);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	r = nx_manifest_parse(body, len, &m);
	free(body);
	if (r < 0) {
		/* not a nixoci manifest, or a damaged one: ours replaces it */
		nx_log(NX_LOG_WARNING, "%s: tag %s holds no valid nixoci manifest; replacing it",
		       pp->info.store_path, tag);
		return 0;
	}
	if (strcmp(m.info.store_path, pp->info.store_path) != 0) {
		nx_log(NX_LOG_ERR, "%s: tag %s already holds %s; refusing to move it",
		       pp->info.store_path, tag, m.info.store_path);
		r = -EEXIST;
		goto out;
	}
	if (memcmp(m.info.nar_hash, pp->info.nar_hash, NX_SHA256_LEN) != 0 ||
	    m.info.nar_size != pp->info.nar_size) {
		char a[NX_NARHASH_STRLEN], b[NX_NARHASH_STRLEN];

		nx_narhash_format(m.info.nar_hash, a);
		nx_narhash_format(pp->info.nar_hash, b);
		nx_log(NX_LOG_ERR,
		       "%s: the repository holds another NAR of this path (NarHash %s, local %s); "
		       "artifacts are immutable, push to another repository",
		       pp->info.store_path, a, b);
		r = -EEXIST;
		goto out;
	}
	memcpy(pp->mdigest, digest, NX_SHA256_LEN);
	pp->msize = len;
	r = 1;
	if (!ps->have_key)
		goto out;
	/* same artifact, but without our signatures: add them, no blob moves */
	nsigs = m.info.sigs;
	nn = m.info.nsigs;
	ntsigs = m.toc_sigs;
	nt = m.ntoc_sigs;
	r = sign_manifest(ps, &m, &s, &changed);
	if (r == 0 && changed) {
		r = put_manifest(ps, pp, tag, &m);
		if (r == 0)
			r = 2;
	} else if (r == 0) {
		r = 1;
	}
	m.info.sigs = nsigs;
	m.info.nsigs = nn;
	m.toc_sigs = ntsigs;
	m.ntoc_sigs = nt;
	sigset_release(&s);
out:
	nx_manifest_release(&m);
	return r;
}

static int push_one(struct push *ps, struct push_path *pp)
{
	const char *path = pp->info.store_path;
	const char *base = path + sizeof(NX_STORE_DIR);
	uint8_t blob_sha[NX_SHA256_LEN], nar_sha[NX_SHA256_LEN];
	uint8_t *toc = NULL, *tocz = NULL;
	struct nx_toc_builder *tb = NULL;
	struct nx_packer *pk = NULL;
	struct nx_manifest m;
	uint64_t nar_size = 0, blob_size = 0;
	size_t toclen = 0, tocz_len = 0;
	char tag[NX_HASH_LEN + 1];
	struct sigset s = { 0 };
	int fd = -1, r, changed;

	nx_cli_tag(base, tag);
	r = check_existing(ps, pp, tag);
	if (r != 0)
		return r;

	fd = tmp_file(ps);
	if (fd < 0)
		return fd;
	r = nx_toc_builder_new(&tb);
	if (r < 0)
		goto out;
	r = nx_packer_new(&pk, fd, tb);
	if (r < 0)
		goto out;
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
	r = nx_toc_builder_finish(tb, nar_size, blob_size, &toc, &toclen);
	if (r < 0)
		goto out;
	r = nx_zstd_compress(toc, toclen, &tocz, &tocz_len);
	if (r < 0)
		goto out;

	memset(&m, 0, sizeof(m));
	m.info = pp->info; /* shallow: pp keeps ownership */
	memcpy(m.nar.digest, blob_sha, NX_SHA256_LEN);
	m.nar.size = blob_size;
	nx_sha256(tocz, tocz_len, m.toc.digest);
	m.toc.size = tocz_len;
	m.zstd_params = (char *)nx_packer_params();

	r = upload_blob(ps, m.nar.digest, fd, NULL, blob_size);
	if (r < 0)
		goto out;
	r = upload_blob(ps, m.toc.digest, -1, tocz, tocz_len);
	if (r < 0)
		goto out;
	r = sign_manifest(ps, &m, &s, &changed);
	if (r < 0)
		goto out;
	r = put_manifest(ps, pp, tag, &m);
	if (r == 0)
		r = 2;
out:
	sigset_release(&s);
	free(tocz);
	free(toc);
	nx_packer_free(pk);
	nx_toc_builder_free(tb);
	close(fd);
	return r;
}

static void *worker(void *arg)
{
	struct push *ps = arg;
	struct push_path *pp;
	size_t i;
	int r;

	for (;;) {
		pthread_mutex_lock(&ps->lock);
		if (ps->failed || ps->next >= ps->npaths) {
			pthread_mutex_unlock(&ps->lock);
			return NULL;
		}
		i = ps->next++;
		pthread_mutex_unlock(&ps->lock);

		pp = &ps->paths[i];
		r = push_one(ps, pp);

		pthread_mutex_lock(&ps->lock);
		if (r < 0) {
			ps->failed = 1;
			progress_clear_locked(ps);
			nx_log(NX_LOG_ERR, "push %s: %s", pp->info.store_path, strerror(-r));
		} else {
			ps->done++;
			if (r == 2)
				ps->uploaded++;
			else
				ps->skipped++;
			if (nx_log_get_level() >= NX_LOG_INFO)
				progress_clear_locked(ps);
			nx_log(NX_LOG_INFO, "%s %s", r == 2 ? "pushed" : "skipped",
			       pp->info.store_path);
			progress_locked(ps);
		}
		pthread_mutex_unlock(&ps->lock);
	}
}

/* --------------------------------------------------------------- index */

static int valid_tag_name(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0 || n > 128)
		return 0;
	for (i = 0; i < n; i++) {
		char c = s[i];
		int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			    (c >= '0' && c <= '9') || c == '_';

		if (!alnum && (i == 0 || (c != '.' && c != '-')))
			return 0;
	}
	return 1;
}

static int push_index(struct push *ps, const char *name, char **roots, size_t nroots)
{
	uint8_t digest[NX_SHA256_LEN], have[NX_SHA256_LEN];
	struct nx_index ix = { 0 };
	int exists = 0;
	char *json = NULL;
	size_t i, len = 0;
	int r;

	ix.entries = calloc(ps->npaths, sizeof(*ix.entries));
	if (!ix.entries)
		return -ENOMEM;
	for (i = 0; i < ps->npaths; i++) {
		memcpy(ix.entries[i].desc.digest, ps->paths[i].mdigest, NX_SHA256_LEN);
		ix.entries[i].desc.size = ps->paths[i].msize;
		ix.entries[i].store_path = ps->paths[i].info.store_path;
	}
	ix.nentries = ps->npaths;
	ix.roots = roots;
	ix.nroots = nroots;
	r = nx_index_build(&ix, &json, &len);
	free(ix.entries); /* shallow: strings belong to ps and roots */
	if (r < 0)
		return r;
	/* an unchanged closure re-pushed writes nothing */
	nx_sha256(json, len, digest);
	if (nx_registry_manifest_exists(ps->reg, name, &exists, have) == 0 && exists &&
	    memcmp(have, digest, NX_SHA256_LEN) == 0) {
		free(json);
		return 0;
	}
	if (len > NX_INDEX_MAX) {
		nx_log(NX_LOG_ERR, "closure index for tag %s is %zu bytes, over the %u MiB readers "
		       "accept; push fewer paths under one tag", name, len, NX_INDEX_MAX >> 20);
		free(json);
		return -E2BIG;
	}
	r = nx_registry_put_manifest(ps->reg, name, NX_MT_INDEX, json, len);
	if (r == 0)
		ps->bytes += len;
	free(json);
	return r;
}

/* ---------------------------------------------------------------- main */

/*
 * Resolves @arg to a store path: a store path itself, or a chain of symlinks
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

	p = strdup(arg);
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
			return 0;
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
		return 0;
	}
	nx_log(NX_LOG_ERR, "push %s: not a store path (/nix/store/<hash>-<name>) "
	       "or a symlink to one", arg);
	free(rp);
	return -EINVAL;
}

int nx_cmd_push(struct nx_cli *cli, int argc, char **argv)
{
	enum { O_JOBS = NX_OPT_FIRST_PRIVATE, O_TAG, O_KEY };
	static const struct option lo[] = {
		{ "jobs", required_argument, NULL, 'j' },
		{ "tag", required_argument, NULL, 't' },
		{ "sign-key", required_argument, NULL, 'k' },
		NX_CLI_LONGOPTS,
		{ NULL, 0, NULL, 0 },
	};
	struct push ps = { 0 };
	const char *tag = NULL, *keyfile = NULL, *ref;
	char **roots = NULL, *end;
	size_t nroots = 0, i, j;
	uint8_t empty[NX_SHA256_LEN];
	pthread_t *th = NULL;
	long jobs = 4;
	uint64_t t0;
	int c, r, ret = NX_EXIT_ERR, nthreads = 0;

	while ((c = getopt_long(argc, argv, ":hvj:t:k:", lo, NULL)) != -1) {
		switch (c) {
		case 'h':
			fputs(usage_push, stdout);
			return NX_EXIT_OK;
		case 'j':
			errno = 0;
			jobs = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || jobs < 1 || jobs > 64)
				return nx_cli_usage_error(usage_push,
							  "bad --jobs '%s': want 1..64", optarg);
			break;
		case 't':
			tag = optarg;
			break;
		case 'k':
			keyfile = optarg;
			break;
		case '?':
			return nx_cli_usage_error(usage_push, "push: unknown option '%s'",
						  argv[optind - 1]);
		case ':':
			return nx_cli_usage_error(usage_push, "push: option '%s' needs an argument",
						  argv[optind - 1]);
		default:
			if (nx_cli_opt(cli, c, optarg) < 0) {
				return nx_cli_synopsis(usage_push);
			}
		}
	}
	if (argc - optind < 2)
		return nx_cli_usage_error(usage_push, "push: %s",
					  optind >= argc ? "missing REGISTRY/REPO and PATH"
							 : "missing PATH");
	if (tag && (!valid_tag_name(tag) || nx_cli_is_hash_tag(tag)))
		return nx_cli_usage_error(usage_push,
					  "push: bad --tag '%s': want an OCI tag "
					  "([A-Za-z0-9_][A-Za-z0-9._-]{0,127}) "
					  "that is not a hash part",
					  tag);
	ref = argv[optind++];
	t0 = nx_now_ns();
	r = pthread_mutex_init(&ps.lock, NULL);
	if (r)
		return NX_EXIT_ERR;
	ps.tty = nx_cli_tty();
	ps.tmpdir = getenv("TMPDIR");
	if (!ps.tmpdir || !*ps.tmpdir)
		ps.tmpdir = "/tmp";

	if (keyfile) {
		if (nx_seckey_load(keyfile, &ps.key) < 0)
			goto out;
		ps.have_key = 1;
	}
	roots = calloc((size_t)(argc - optind), sizeof(*roots));
	if (!roots)
		goto out;
	for (; optind < argc; optind++) {
		char *rp = NULL;

		if (resolve_root(argv[optind], &rp) < 0)
			goto out;
		for (j = 0; j < nroots && strcmp(roots[j], rp) != 0; j++)
			;
		if (j < nroots)
			free(rp);
		else
			roots[nroots++] = rp;
	}

	if (nx_cli_registry(cli, ref, 1, &ps.reg) < 0)
		goto out;
	if (nx_registry_ping(ps.reg) < 0)
		goto out;
	if (query_closure(&ps, roots, nroots) < 0 || query_infos(&ps) < 0)
		goto out;
	if (nx_digest_parse(NX_EMPTY_DIGEST, empty) < 0 ||
	    upload_blob(&ps, empty, -1, "{}", 2) < 0) {
		nx_log(NX_LOG_ERR, "push: cannot upload the empty config blob to %s", ref);
		goto out;
	}

	th = calloc((size_t)jobs, sizeof(*th));
	if (!th)
		goto out;
	if ((size_t)jobs > ps.npaths)
		jobs = (long)ps.npaths;
	for (nthreads = 0; nthreads < jobs; nthreads++) {
		r = pthread_create(&th[nthreads], NULL, worker, &ps);
		if (r) {
			nx_log(NX_LOG_ERR, "cannot start a worker thread: %s", strerror(r));
			pthread_mutex_lock(&ps.lock);
			ps.failed = 1;
			pthread_mutex_unlock(&ps.lock);
			break;
		}
	}
	for (i = 0; i < (size_t)nthreads; i++)
		pthread_join(th[i], NULL);
	if (nthreads == 0 && ps.npaths)
		goto out;
	if (ps.failed)
		goto out;

	if (tag) {
		r = push_index(&ps, tag, roots, nroots);
		if (r < 0) {
			progress_clear_locked(&ps);
			nx_log(NX_LOG_ERR, "push: cannot write the closure index %s: %s", tag,
			       strerror(-r));
			goto out;
		}
	}
	progress_clear_locked(&ps);
	printf("pushed %zu paths (%zu uploaded, %zu skipped), %llu bytes uploaded in %.1fs\n",
	       ps.npaths, ps.uploaded, ps.skipped, (unsigned long long)ps.bytes,
	       (double)(nx_now_ns() - t0) / 1e9);
	ret = NX_EXIT_OK;
out:
	progress_clear_locked(&ps);
	free(th);
	for (i = 0; i < ps.npaths; i++)
		nx_pathinfo_release(&ps.paths[i].info);
	free(ps.paths);
	for (i = 0; i < nroots; i++)
		free(roots[i]);
	free(roots);
	nx_registry_close(ps.reg);
	pthread_mutex_destroy(&ps.lock);
	explicit_bzero(&ps.key, sizeof(ps.key));
	return ret;
}
