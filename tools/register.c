/*
 * tools/register.c: `nixoci register`, the Nix database records of the
 * paths of a closure in a repository, so that a host that mounts the store
 * at /nix/store also has a Nix database that knows those paths (nix-store
 * -q, nix path-info, nix-shell against already-present dependencies).
 *
 * The output is the format of `nix-store --dump-db`, which `nix-store
 * --load-db` and `nix-store --register-validity --hash-given` read: per
 * path, the store path, its NarHash, its NarSize, the deriver (or an empty
 * line), the number of references and the references, one per line. With
 * the hashes given, Nix does not read the NARs (a mount would fetch them
 * all). --load pipes it into `nix-store --load-db`: plain
 * --register-validity also resets the files' metadata (canonicalisation),
 * which a read-only mount refuses.
 *
 * The records come from the manifests (docs/format.md section 2), closures
 * follow their references. With --trusted-public-keys a path is printed only
 * if a narinfo or TOC signature on it verifies under one of the keys.
 */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tools/tools_i.h"

extern char **environ;

static const char usage_register[] =
	"usage: nixoci register [OPTIONS] REGISTRY/REPO PATH...\n"
	"\n"
	"Prints the Nix database records (nix-store --dump-db format) of the closure\n"
	"of each PATH in the repository, for nix-store --load-db or\n"
	"nix-store --register-validity --hash-given.\n"
	"\n"
	"options:\n"
	"  --load                feed them to nix-store --load-db instead of printing\n"
	"  --store STORE         with --load: nix-store --store STORE (a chroot store\n"
	"                        root such as /mnt/root, or a store URI)\n"
	"  --no-closure          only the paths given, not their references\n"
	"  --trusted-public-keys K   only paths signed by one of K (narinfo or TOC)\n"
	"  --cafile FILE, --insecure, --timeout SECONDS, -v   as for every command\n";

struct reg_path {
	struct nx_manifest m;
};

struct queue {
	char **v; /* base names, each once */
	size_t n, cap;
};

/* Appends a copy of @base[0..len) unless the queue has it already. */
NX_ANALYZER_ARRAY_STORE_BEGIN
static int queue_push(struct queue *q, const char *base, size_t len)
{
	size_t i;

	for (i = 0; i < q->n; i++)
		if (strlen(q->v[i]) == len && memcmp(q->v[i], base, len) == 0)
			return 0;
	if (q->n == q->cap) {
		size_t ncap = q->cap ? 2 * q->cap : 64;
		char **nv = realloc(q->v, ncap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		q->v = nv;
		q->cap = ncap;
	}
	q->v[q->n] = strndup(base, len);
	if (!q->v[q->n])
		return -ENOMEM;
	q->n++;
	return 0;
}
NX_ANALYZER_ARRAY_STORE_END

static void queue_release(struct queue *q)
{
	size_t i;

	for (i = 0; i < q->n; i++)
		free(q->v[i]);
	free(q->v);
}

static int cmp_reg(const void *a, const void *b)
{
	const struct reg_path *x = a, *y = b;

	return strcmp(x->m.info.store_path, y->m.info.store_path);
}

static int signed_by(const struct nx_manifest *m, const struct nx_pubkey *keys, size_t nkeys)
{
	char *fp = NULL;
	size_t i;
	int ok = 0;

	if (nx_fingerprint(&m->info, &fp) == 0) {
		for (i = 0; i < m->info.nsigs && ok == 0; i++)
			ok = nx_sig_verify(keys, nkeys, m->info.sigs[i], fp, strlen(fp));
		free(fp);
	}
	fp = NULL;
	if (ok == 0 && nx_toc_fingerprint(m->info.store_path, m->info.nar_hash, m->toc.digest,
					  &fp) == 0) {
		for (i = 0; i < m->ntoc_sigs && ok == 0; i++)
			ok = nx_sig_verify(keys, nkeys, m->toc_sigs[i], fp, strlen(fp));
		free(fp);
	}
	return ok;
}

/* One record of the --dump-db format. */
static int record(FILE *f, const struct nx_pathinfo *pi)
{
	char hex[2 * NX_SHA256_LEN + 1];
	size_t i;

	/* NarHash in base16 without "sha256:", as --dump-db prints it */
	nx_hex(pi->nar_hash, NX_SHA256_LEN, hex);
	fprintf(f, "%s\n%s\n%llu\n", pi->store_path, hex, (unsigned long long)pi->nar_size);
	if (pi->deriver)
		fprintf(f, NX_STORE_DIR "/%s\n", pi->deriver);
	else
		fputc('\n', f);
	fprintf(f, "%zu\n", pi->nrefs);
	for (i = 0; i < pi->nrefs; i++)
		fprintf(f, NX_STORE_DIR "/%s\n", pi->refs[i]);
	return ferror(f) ? -EIO : 0;
}

/* Starts nix-store --load-db [--store S] with a pipe on its stdin. */
static int start_load(const char *store, FILE **f, pid_t *pid)
{
	char *argv[6] = { (char *)"nix-store", NULL, NULL, NULL, NULL, NULL };
	posix_spawn_file_actions_t fa;
	int fds[2], r, i = 1;

	if (store) {
		argv[i++] = (char *)"--store";
		argv[i++] = (char *)store;
	}
	argv[i] = (char *)"--load-db";
	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	r = posix_spawn_file_actions_init(&fa);
	if (!r)
		r = posix_spawn_file_actions_adddup2(&fa, fds[0], 0);
	if (!r)
		r = posix_spawnp(pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(fds[0]);
	if (r) {
		nx_log(NX_LOG_ERR, "cannot run nix-store: %s%s", strerror(r),
		       r == ENOENT ? " (is Nix installed and in PATH?)" : "");
		close(fds[1]);
		return -r;
	}
	*f = fdopen(fds[1], "w");
	if (!*f) {
		close(fds[1]);
		return -ENOMEM;
	}
	return 0;
}

static int finish_load(FILE *f, pid_t pid)
{
	int status, bad = fclose(f) != 0;

	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return -errno;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		nx_log(NX_LOG_ERR, "nix-store --load-db failed (exit status %d); see its message above",
		       WIFEXITED(status) ? WEXITSTATUS(status) : -1);
		return -EIO;
	}
	return bad ? -EIO : 0;
}

int nx_cmd_register(struct nx_cli *cli, int argc, char **argv)
{
	enum { O_LOAD = NX_OPT_FIRST_PRIVATE, O_STORE, O_NOCLOSURE };
	static const struct option lo[] = {
		{ "load", no_argument, NULL, O_LOAD },
		{ "store", required_argument, NULL, O_STORE },
		{ "no-closure", no_argument, NULL, O_NOCLOSURE },
		NX_CLI_LONGOPTS,
		{ NULL, 0, NULL, 0 },
	};
	struct nx_registry *reg = NULL;
	struct nx_pubkey *keys = NULL;
	struct reg_path *paths = NULL;
	struct queue q = { 0 };
	size_t nkeys = 0, npaths = 0, pcap = 0, i, j;
	const char *store = NULL, *ref;
	int c, r, load = 0, closure = 1, ret = NX_EXIT_ERR;
	FILE *out = stdout;
	pid_t pid = -1;

	while ((c = getopt_long(argc, argv, ":hv", lo, NULL)) != -1) {
		switch (c) {
		case 'h':
			fputs(usage_register, stdout);
			return NX_EXIT_OK;
		case O_LOAD:
			load = 1;
			break;
		case O_STORE:
			store = optarg;
			break;
		case O_NOCLOSURE:
			closure = 0;
			break;
		case '?':
			return nx_cli_usage_error(usage_register, "register: unknown option '%s'",
						  argv[optind - 1]);
		case ':':
			return nx_cli_usage_error(usage_register,
						  "register: option '%s' needs an argument",
						  argv[optind - 1]);
		default:
			if (nx_cli_opt(cli, c, optarg) < 0)
				return nx_cli_synopsis(usage_register);
		}
	}
	if (argc - optind < 2)
		return nx_cli_usage_error(usage_register, "register: missing %s",
					  optind >= argc ? "REGISTRY/REPO and PATH" : "PATH");
	if (store && !load)
		return nx_cli_usage_error(usage_register, "register: --store goes with --load");
	ref = argv[optind++];
	for (i = (size_t)optind; i < (size_t)argc; i++) {
		const char *b;
		size_t bl;

		if (nx_cli_path_arg(argv[i], &b, &bl, NULL) < 0)
			return nx_cli_usage_error(usage_register,
						  "register: bad PATH '%s': want "
						  "/nix/store/<hash>-<name> or <hash>-<name>",
						  argv[i]);
	}
	if (nx_cli_keys(cli, &keys, &nkeys) < 0)
		return NX_EXIT_ERR;
	if (nx_cli_registry(cli, ref, 1, &reg) < 0)
		goto out;

	for (i = (size_t)optind; i < (size_t)argc; i++) {
		const char *b;
		size_t bl;

		nx_cli_path_arg(argv[i], &b, &bl, NULL);
		if (queue_push(&q, b, bl) < 0)
			goto out;
	}
	for (i = 0; i < q.n; i++) {
		struct nx_manifest m = { 0 };

		r = nx_cli_get_manifest(reg, q.v[i], strlen(q.v[i]), &m, NULL, NULL);
		if (r == -ENOENT)
			nx_log(NX_LOG_ERR, "register: %s/%s is not in the repository", ref, q.v[i]);
		if (r < 0)
			goto out;
		if (nkeys && signed_by(&m, keys, nkeys) != 1) {
			nx_log(NX_LOG_ERR, "register: %s has no signature by a trusted key",
			       m.info.store_path);
			nx_manifest_release(&m);
			goto out;
		}
		if (npaths == pcap) {
			struct reg_path *np = realloc(paths, (pcap + 64) * sizeof(*np));

			if (!np) {
				nx_manifest_release(&m);
				goto out;
			}
			paths = np;
			pcap += 64;
		}
		paths[npaths++].m = m;
		for (j = 0; closure && j < m.info.nrefs; j++)
			if (queue_push(&q, m.info.refs[j], strlen(m.info.refs[j])) < 0)
				goto out;
	}
	if (npaths > 1)
		qsort(paths, npaths, sizeof(*paths), cmp_reg);
	if (load && start_load(store, &out, &pid) < 0)
		goto out;
	r = 0;
	for (i = 0; i < npaths && r == 0; i++)
		r = record(out, &paths[i].m.info);
	if (load) {
		int r2 = finish_load(out, pid);

		out = stdout;
		if (r == 0)
			r = r2;
		if (r == 0)
			fprintf(stderr, "registered %zu paths with nix-store --load-db%s%s\n", npaths,
				store ? " --store " : "", store ? store : "");
	}
	if (r < 0) {
		nx_log(NX_LOG_ERR, "register: cannot write the records: %s", strerror(-r));
		goto out;
	}
	ret = NX_EXIT_OK;
out:
	for (i = 0; i < npaths; i++)
		nx_manifest_release(&paths[i].m);
	free(paths);
	queue_release(&q);
	free(keys);
	nx_registry_close(reg);
	return ret;
}
