/*
 * tools/publish.c: the writer's half that `nixoci push` and `nixoci import`
 * share. Both end the same way for every store path: a NAR packed into our
 * seekable zstd layer (a temporary file) and a TOC builder, plus the narinfo
 * of the path (from the local Nix for push, from a binary cache's narinfo for
 * import). What follows is one code path, here: look whether the registry
 * already holds the path (idempotent re-runs), upload the blobs it lacks,
 * sign, write the manifest under the hash-part tag, and at the end the
 * closure index. The worker pool and the progress line are shared too.
 *
 * A tag is never moved to a manifest of another store path or of another NAR
 * (artifacts are immutable, docs/format.md section 1); such a conflict is an
 * error.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <jansson.h>

#include "tools/tools_i.h"

/* A packed member's NAR layer is a read-only mapping of its temporary
 * file: the pack copies it once, from the page cache. */
static void member_nar_free(struct nx_pub_path *pp)
{
	if (pp->pk_nar)
		munmap(pp->pk_nar, pp->pk_nar_len);
	pp->pk_nar = NULL;
}

int nx_pub_init(struct nx_pub *p, const char *verb)
{
	int r;

	memset(p, 0, sizeof(*p));
	r = pthread_mutex_init(&p->lock, NULL);
	if (r)
		return -r;
	r = pthread_cond_init(&p->cond, NULL);
	if (r) {
		pthread_mutex_destroy(&p->lock);
		return -r;
	}
	p->verb = verb;
	p->tty = nx_cli_tty();
	p->tmpdir = getenv("TMPDIR");
	if (!p->tmpdir || !*p->tmpdir)
		p->tmpdir = "/tmp";
	return 0;
}

void nx_pub_release(struct nx_pub *p)
{
	size_t i;

	nx_pub_progress_clear(p);
	for (i = 0; i < p->npaths; i++) {
		nx_pathinfo_release(&p->paths[i].info);
		free(p->paths[i].man);
		free(p->paths[i].toc);
		member_nar_free(&p->paths[i]);
		free(p->paths[i].pk_toc);
		free(p->paths[i].imports);
		nx_elf_needs_free(p->paths[i].elf);
	}
	free(p->paths);
	free(p->tags);
	free(p->groups);
	free(p->mq);
	nx_registry_close(p->reg);
	pthread_cond_destroy(&p->cond);
	pthread_mutex_destroy(&p->lock);
	explicit_bzero(&p->key, sizeof(p->key));
}

int nx_pub_load_key(struct nx_pub *p, const char *file)
{
	int r = nx_seckey_load(file, &p->key);

	if (r == 0)
		p->have_key = 1;
	return r;
}

int nx_pub_tag_valid(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0 || n > 128 || nx_cli_is_hash_tag(s))
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

static int cmp_path(const void *a, const void *b)
{
	const struct nx_pub_path *x = a, *y = b;

	return strcmp(x->info.store_path, y->info.store_path);
}

void nx_pub_sort(struct nx_pub *p)
{
	if (p->npaths > 1)
		qsort(p->paths, p->npaths, sizeof(*p->paths), cmp_path);
}

struct nx_pub_path *nx_pub_find(struct nx_pub *p, const char *store_path)
{
	struct nx_pub_path key = { .info = { .store_path = (char *)store_path } };

	if (!p->npaths)
		return NULL;
	return bsearch(&key, p->paths, p->npaths, sizeof(*p->paths), cmp_path);
}

/* ------------------------------------------------------------ progress */

/* Caller holds p->lock. */
static void progress_locked(struct nx_pub *p)
{
	char h[32];

	if (!p->tty)
		return;
	fprintf(stderr, "\r\033[K%s %zu/%zu paths, %s", p->verb, p->done, p->npaths,
		nx_cli_human(p->bytes, h, sizeof(h)));
	fflush(stderr);
	p->progress_shown = 1;
}

static void progress_clear_locked(struct nx_pub *p)
{
	if (p->progress_shown) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
		p->progress_shown = 0;
	}
}

void nx_pub_progress_clear(struct nx_pub *p)
{
	pthread_mutex_lock(&p->lock);
	progress_clear_locked(p);
	pthread_mutex_unlock(&p->lock);
}

void nx_pub_add_bytes(struct nx_pub *p, uint64_t n)
{
	pthread_mutex_lock(&p->lock);
	p->bytes += n;
	progress_locked(p);
	pthread_mutex_unlock(&p->lock);
}

/* ---------------------------------------------------------- uploading */

/*
 * A blob of at most this many bytes is sent without asking first whether
 * the registry has it: the HEAD would cost a round trip to save less than a
 * round trip's worth of sending on any link worth the name.
 */
#define NX_PUB_PROBE_MIN (64u << 10)

int nx_pub_upload_blob(struct nx_pub *p, const uint8_t digest[NX_SHA256_LEN], int fd,
		       const void *buf, uint64_t size, int probe)
{
	int exists = 0, how = NX_BLOB_PUT, r;

	/* with a mount source the mount request is the existence check:
	 * 201 whether the blob came from there or was here already */
	if (!p->mount_from && probe >= 0 && (probe || size > NX_PUB_PROBE_MIN)) {
		r = nx_registry_blob_exists(p->reg, digest, &exists);
		if (r < 0)
			return r;
		if (exists)
			return 0;
	}
	r = nx_registry_push_blob(p->reg, digest, fd, buf, size, p->mount_from, &how);
	if (r < 0)
		return r;
	if (how == NX_BLOB_MOUNTED) {
		pthread_mutex_lock(&p->lock);
		p->mounted++;
		pthread_mutex_unlock(&p->lock);
		return 0;
	}
	nx_pub_add_bytes(p, size);
	return 0;
}

int nx_pub_open(struct nx_pub *p, const struct nx_cli *cli, const char *ref)
{
	struct nx_cli c = *cli;

	/* every worker has a transfer of its own, and the closure metadata
	 * reader its eight */
	c.max_transfers = (int)(p->jobs > 8 ? p->jobs : 8);
	if (nx_cli_registry(&c, ref, 1, &p->reg) < 0)
		return -EINVAL;
	if (p->mount_from && nx_registry_mount_source(p->reg, p->mount_from) < 0)
		return -EINVAL;
	if (nx_registry_ping(p->reg) < 0)
		return -EIO;
	return 0;
}

/* Registries check that every blob a manifest names exists. */
static int config_blob(struct nx_pub *p)
{
	uint8_t empty[NX_SHA256_LEN];

	if (p->config_done)
		return 0;
	if (nx_digest_parse(NX_EMPTY_DIGEST, empty) < 0 || nx_pub_upload_blob(p, empty, -1, "{}", 2, 1) < 0) {
		nx_log(NX_LOG_ERR, "cannot upload the empty config blob to %s",
		       nx_registry_ref(p->reg));
		return -EIO;
	}
	p->config_done = 1;
	return 0;
}

int nx_pub_tmpfile(struct nx_pub *p)
{
	char *name;
	int fd;

	fd = open(p->tmpdir, O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
	if (fd >= 0)
		return fd;
	/* O_TMPFILE needs file system support; fall back to create + unlink */
	if (asprintf(&name, "%s/nixoci-push.XXXXXX", p->tmpdir) < 0)
		return -ENOMEM;
	fd = mkostemp(name, O_CLOEXEC);
	if (fd < 0) {
		int r = -errno;

		nx_log(NX_LOG_ERR, "cannot create a temporary file in %s: %s (set TMPDIR)",
		       p->tmpdir, strerror(errno));
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
static int sign_manifest(struct nx_pub *p, struct nx_manifest *m, struct sigset *s, int *changed)
{
	char *fp = NULL, *sig = NULL;
	int r;

	memset(s, 0, sizeof(*s));
	*changed = 0;
	if (!p->have_key)
		return 0;

	r = nx_fingerprint(&m->info, &fp);
	if (r < 0)
		return r;
	r = nx_sig_sign(&p->key, fp, strlen(fp), &sig);
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
	r = nx_sig_sign(&p->key, fp, strlen(fp), &sig);
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

/* 1 when @m carries every signature we would add (or no key is loaded). */
static int signed_by_us(struct nx_pub *p, struct nx_manifest *m)
{
	char **nsigs = m->info.sigs, **ntsigs = m->toc_sigs;
	size_t nn = m->info.nsigs, nt = m->ntoc_sigs;
	struct sigset s;
	int r, changed = 0;

	if (!p->have_key)
		return 1;
	r = sign_manifest(p, m, &s, &changed);
	m->info.sigs = nsigs;
	m->info.nsigs = nn;
	m->toc_sigs = ntsigs;
	m->ntoc_sigs = nt;
	sigset_release(&s);
	return r == 0 && !changed;
}

/* Writes @m under @tag; pp->man keeps the JSON (for the closure metadata). */
static int put_manifest(struct nx_pub *p, struct nx_pub_path *pp, const char *tag,
			const struct nx_manifest *m)
{
	char *json = NULL;
	size_t len = 0;
	int r;

	r = nx_manifest_build(m, &json, &len);
	if (r < 0)
		return r;
	r = nx_registry_put_manifest(p->reg, tag, NX_MT_MANIFEST, json, len);
	if (r == 0) {
		nx_sha256(json, len, pp->mdigest);
		pp->msize = len;
		nx_pub_add_bytes(p, len);
		free(pp->man);
		pp->man = json;
		pp->man_len = len;
		json = NULL;
	}
	free(json);
	return r;
}

/* The tags are char[NX_HASH_LEN + 1] elements: strcmp on each. */
static int cmp_tag(const void *a, const void *b)
{
	return strcmp(a, b);
}

static int has_tag(struct nx_pub *p, const char *tag)
{
	/* bsearch and qsort must not be given a NULL array, even empty */
	return p->ntags && bsearch(tag, p->tags, p->ntags, sizeof(*p->tags), cmp_tag) != NULL;
}

int nx_pub_existing(struct nx_pub *p, struct nx_pub_path *pp)
{
	const char *base = pp->info.store_path + sizeof(NX_STORE_DIR);
	struct nx_manifest m = { 0 };
	uint8_t digest[NX_SHA256_LEN];
	char *body = NULL, **nsigs, **ntsigs, tag[NX_HASH_LEN + 1];
	size_t len = 0, nn, nt;
	struct sigset s;
	int r, changed;

	nx_cli_tag(base, tag);
	if (pp->adopt) {
		/* in the closure index this push replaces, as we would write
		 * it (nx_pub_unchanged), and its tag is there: nothing to ask */
		if (p->tags_known && has_tag(p, tag))
			return 1;
		/* else what the tag holds decides, and the manifest found or
		 * written replaces the old index's */
		pp->adopt = 0;
		free(pp->man);
		free(pp->toc);
		pp->man = NULL;
		pp->toc = NULL;
	}
	if (p->tags_known && !has_tag(p, tag))
		return 0;
	r = nx_registry_get_manifest(p->reg, tag, NX_MANIFEST_MAX, &body, &len, digest, NULL);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	r = nx_manifest_parse(body, len, &m);
	if (r == 0 && !pp->man) {
		pp->man = body; /* the closure metadata's, if it is ours */
		pp->man_len = len;
		body = NULL;
	}
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
		       "%s: the repository holds another NAR of this path (NarHash %s, ours %s); "
		       "artifacts are immutable, write to another repository",
		       pp->info.store_path, a, b);
		r = -EEXIST;
		goto out;
	}
	memcpy(pp->mdigest, digest, NX_SHA256_LEN);
	pp->msize = len;
	r = 1;
	if (!p->have_key)
		goto out;
	/* same artifact, but without our signatures: add them, no blob moves */
	nsigs = m.info.sigs;
	nn = m.info.nsigs;
	ntsigs = m.toc_sigs;
	nt = m.ntoc_sigs;
	r = sign_manifest(p, &m, &s, &changed);
	if (r == 0 && changed) {
		r = put_manifest(p, pp, tag, &m);
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

/* ------------------------------------------------------------- packing */

/*
 * Unless --no-pack, the paths that this push writes and whose NAR is at most
 * NX_PACK_NAR_MAX are planned into packs before the workers start, in store
 * path order, each pack closed at NX_PACK_NAR_TARGET bytes of NAR or
 * NX_PACK_MEMBERS paths. The plan depends only on the paths and on which the
 * tag list shows written, so the same push into another repository writes
 * the same packs (and --mount-from can mount them). A pack is a few tens of
 * MiB compressed: a unit small enough to cache, copy and push again on its
 * own, large enough that its two upload requests are shared by many paths.
 */
#define NX_PACK_NAR_MAX (8ull << 20)
#define NX_PACK_NAR_TARGET (64ull << 20)
#define NX_PACK_MEMBERS 512

static void plan_packs(struct nx_pub *p)
{
	struct nx_pub_group *g = NULL;
	char tag[NX_HASH_LEN + 1];
	size_t i;

	p->groups = calloc(p->npaths ? p->npaths : 1, sizeof(*p->groups));
	p->mq = calloc(p->npaths ? p->npaths : 1, sizeof(*p->mq));
	if (!p->groups || !p->mq) {
		/* no packs then: every path gets blobs of its own */
		free(p->groups);
		free(p->mq);
		p->groups = NULL;
		p->mq = NULL;
		return;
	}
	for (i = 0; i < p->npaths; i++) {
		struct nx_pub_path *pp = &p->paths[i];

		nx_cli_tag(pp->info.store_path + sizeof(NX_STORE_DIR), tag);
		if (pp->info.nar_size > NX_PACK_NAR_MAX || (p->tags_known && has_tag(p, tag)))
			continue;
		if (!g) {
			g = &p->groups[p->ngroups++];
			g->first = i;
		}
		pp->group = g;
		g->last = i;
		g->pending++;
		g->nar += pp->info.nar_size;
		if (g->nar >= NX_PACK_NAR_TARGET || g->pending >= NX_PACK_MEMBERS)
			g = NULL;
	}
	/* a pack of one path saves little and would keep it from older readers */
	for (i = 0; i < p->ngroups; i++)
		if (p->groups[i].pending == 1)
			p->paths[p->groups[i].first].group = NULL;
}

/* Keeps @pp's NAR layer (@blob_size bytes of @fd) and its compressed TOC
 * (*tocz, taken) for its pack. 2, or -errno. */
static int pack_member(struct nx_pub_path *pp, int fd, uint64_t blob_size, uint8_t **tocz,
		       size_t tocz_len)
{
	void *m;

	/* the mapping outlives the file's descriptor, which the caller closes */
	m = mmap(NULL, blob_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (m == MAP_FAILED) {
		int r = -errno;

		nx_log(NX_LOG_ERR, "%s: cannot map its packed NAR layer: %s", pp->info.store_path,
		       strerror(errno));
		return r;
	}
	pp->pk_nar = m;
	pp->pk_nar_len = blob_size;
	pp->pk_toc = *tocz;
	pp->pk_toc_len = tocz_len;
	*tocz = NULL;
	pp->pk_ready = 1;
	return 2;
}

/* Writes the pack of group @g: its members that are ready, in order, each
 * NAR layer followed by its TOC; then queues their manifests. */
static int flush_pack(struct nx_pub *p, struct nx_pub_group *g)
{
	uint8_t digest[NX_SHA256_LEN], *buf;
	uint64_t size = 0, pos = 0;
	size_t i, n = 0;
	int r;

	for (i = g->first; i <= g->last; i++)
		if (p->paths[i].group == g && p->paths[i].pk_ready)
			size += p->paths[i].pk_nar_len + p->paths[i].pk_toc_len;
	if (size == 0)
		return 0; /* every member was there already */
	buf = malloc(size);
	if (!buf)
		return -ENOMEM;
	for (i = g->first; i <= g->last; i++) {
		struct nx_pub_path *pp = &p->paths[i];

		if (pp->group != g || !pp->pk_ready)
			continue;
		pp->pk_nar_off = pos;
		memcpy(buf + pos, pp->pk_nar, pp->pk_nar_len);
		pos += pp->pk_nar_len;
		pp->pk_toc_off = pos;
		memcpy(buf + pos, pp->pk_toc, pp->pk_toc_len);
		pos += pp->pk_toc_len;
		member_nar_free(pp);
	}
	nx_sha256(buf, size, digest);
	r = nx_pub_upload_blob(p, digest, -1, buf, size, p->tags_known ? -1 : 0);
	free(buf);
	if (r < 0) {
		char ds[NX_DIGEST_STRLEN];

		nx_digest_format(digest, ds);
		nx_log(NX_LOG_ERR, "cannot upload pack %s (%llu bytes) to %s", ds,
		       (unsigned long long)size, nx_registry_ref(p->reg));
		return r;
	}
	pthread_mutex_lock(&p->lock);
	for (i = g->first; i <= g->last; i++) {
		struct nx_pub_path *pp = &p->paths[i];

		if (pp->group != g || !pp->pk_ready)
			continue;
		memcpy(pp->pk_digest, digest, NX_SHA256_LEN);
		pp->pk_size = size;
		p->mq[p->mq_tail++] = i;
		n++;
	}
	p->packs++;
	pthread_mutex_unlock(&p->lock);
	nx_log(NX_LOG_DEBUG, "pack of %zu paths, %llu bytes, written", n, (unsigned long long)size);
	return 0;
}

/* The manifest of a packed path whose pack is written. */
static int pack_manifest(struct nx_pub *p, struct nx_pub_path *pp)
{
	const char *base = pp->info.store_path + sizeof(NX_STORE_DIR);
	char tag[NX_HASH_LEN + 1];
	struct sigset s = { 0 };
	struct nx_manifest m;
	int r, changed;

	nx_cli_tag(base, tag);
	memset(&m, 0, sizeof(m));
	m.info = pp->info; /* shallow: pp keeps ownership */
	m.packed = 1;
	memcpy(m.nar.digest, pp->pk_digest, NX_SHA256_LEN);
	m.pack_size = pp->pk_size;
	m.nar.size = pp->pk_nar_len;
	m.nar_off = pp->pk_nar_off;
	nx_sha256(pp->pk_toc, pp->pk_toc_len, m.toc.digest);
	m.toc.size = pp->pk_toc_len;
	m.toc_off = pp->pk_toc_off;
	m.zstd_params = (char *)nx_packer_params();
	m.imports = pp->imports; /* shallow */
	m.nimports = pp->nimports;
	m.elf = pp->elf; /* shallow */
	r = sign_manifest(p, &m, &s, &changed);
	if (r == 0)
		r = put_manifest(p, pp, tag, &m);
	if (r == 0) {
		free(pp->toc); /* for the closure metadata */
		pp->toc = pp->pk_toc;
		pp->toc_len = pp->pk_toc_len;
		pp->pk_toc = NULL;
	}
	sigset_release(&s);
	return r;
}

/* Bytes [off, off + len) of the NAR, from the NAR layer @fd that the
 * TOC @t describes; @fr (NX_FRAME_MAX bytes) keeps the last frame
 * decompressed, frame *frno, for the next file (a frame holds many small
 * .pyc files). */
static int nar_bytes(const struct nx_toc *t, int fd, uint64_t off, uint64_t len, uint8_t *out,
		     uint32_t *frno, uint8_t *fr)
{
	uint32_t a, b;
	int r = nx_toc_frames_for(t, off, len, &a, &b);

	for (uint32_t k = a; r == 0 && k <= b; k++) {
		const struct nx_toc_frame *f = &t->frames[k];
		uint64_t s = off > f->uoff ? off : f->uoff;
		uint64_t e = off + len < f->uoff + f->ulen ? off + len : f->uoff + f->ulen;

		if (*frno != k) {
			uint8_t *z = malloc(f->clen);

			*frno = UINT32_MAX;
			r = z ? nx_pread_all(fd, z, f->clen, (off_t)f->coff) : -ENOMEM;
			if (r == 0)
				r = nx_frame_decompress(z, f->clen, fr, f->ulen);
			free(z);
			if (r < 0)
				break;
			*frno = k;
		}
		memcpy(out + (s - off), fr + (s - f->uoff), e - s);
	}
	return r;
}

/*
 * The import graph of @pp's .pyc files (format.md 2, dev.nixoci.imports):
 * each parsed and resolved against the path's own TOC with the code a
 * mount uses (nx_pyc_edges), from the NAR layer just written to @fd. A
 * mount then fetches a module's whole import closure at once. Best
 * effort: without it a mount parses the .pyc files as they arrive.
 */
static void import_graph(struct nx_pub_path *pp, int fd, const struct nx_toc *t)
{
	uint32_t *e = NULL, out[256], frno = UINT32_MAX;
	uint8_t *buf = NULL, *fr = NULL;
	size_t n = 0, cap = 0;
	char *s = NULL;
	int r;

	for (uint32_t i = 1; i < t->nentries; i++) {
		const struct nx_toc_entry *en = &t->entries[i];
		unsigned k = 0;

		/* named as the mount's rule reads it; nx_pyc_edges checks the magic */
		if (!nx_pyc_named(t, i))
			continue;
		if (!buf) {
			buf = malloc(NX_PYC_MAX_BYTES);
			fr = malloc(NX_FRAME_MAX);
		}
		if (!buf || !fr)
			goto out;
		if (nar_bytes(t, fd, en->off, en->size, buf, &frno, fr) < 0)
			goto out;
		if (nx_pyc_edges(t, i, buf, (size_t)en->size, out, 256, &k) < 0 || !k)
			continue;
		if (!e || n + k > cap) {
			size_t nc = 2 * cap + 1024 + k;
			uint32_t *ne = malloc(nc * 2 * sizeof(*ne));

			if (!ne)
				goto out;
			if (e)
				memcpy(ne, e, n * 2 * sizeof(*ne));
			free(e);
			e = ne;
			cap = nc;
		}
		for (unsigned j = 0; j < k && j < 256; j++) {
			e[2 * n] = i;
			e[2 * n + 1] = out[j];
			n++;
		}
	}
	if (!n)
		goto out;
	r = nx_imports_format(e, n, &s);
	if (r < 0) {
		nx_log(NX_LOG_DEBUG, "%s: its import graph (%zu edges) is over %u bytes: not recorded",
		       pp->info.store_path, n, NX_IMPORTS_MAX);
		goto out;
	}
	nx_log(NX_LOG_DEBUG, "%s: import graph of %zu edges, %zu bytes", pp->info.store_path, n,
	       strlen(s));
	free(pp->imports);
	pp->imports = e;
	pp->nimports = n;
	e = NULL;
out:
	free(s);
	free(e);
	free(fr);
	free(buf);
}

static int local_read(void *ctx, uint64_t off, void *buf, size_t len)
{
	return nx_pread_all(*(int *)ctx, buf, len, (off_t)off);
}

/*
 * What the dynamic sections of @pp's ELF files say (format.md 2,
 * dev.nixoci.elf), read from the local store with the mount's parser
 * (nx_elf_dyn_parse): a mount then resolves a program's libraries, and
 * theirs, before their bytes arrive, instead of one level per round trip.
 * Only executable files and files named like a library (".so") are
 * looked at. Best effort: without it a mount parses the files as they
 * arrive.
 */
static void elf_record(struct nx_pub_path *pp, const struct nx_toc *t)
{
	struct nx_elf_dyn *dyn = malloc(sizeof(*dyn));
	char *rel = malloc(PATH_MAX), *full = malloc(PATH_MAX), *s = NULL;
	struct nx_elf_needs *n = NULL;
	int r;

	if (!dyn || !rel || !full)
		goto out;
	for (uint32_t i = 1; i < t->nentries; i++) {
		const struct nx_toc_entry *en = &t->entries[i];
		const char *names[NX_ELF_NEEDED_MAX];
		uint8_t magic[7];
		size_t nl = 0;
		const char *name = nx_toc_name(t, i, &nl);
		int fd;

		if (en->type != NX_NODE_REGULAR || en->size < 64 || !name ||
		    (!en->executable && !memmem(name, nl, ".so", 3)))
			continue;
		if (nx_toc_path(t, i, rel, PATH_MAX) < 0 ||
		    snprintf(full, PATH_MAX, "%s/%s", pp->info.store_path, rel) >= PATH_MAX)
			continue;
		fd = open(full, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
		if (fd < 0)
			continue;
		r = nx_pread_all(fd, magic, sizeof(magic), 0);
		if (r == 0 && memcmp(magic, "\177ELF\2\1\1", 7) == 0)
			r = nx_elf_dyn_parse(local_read, &fd, en->size, dyn);
		else
			r = -EINVAL;
		close(fd);
		if (r < 0 || !dyn->nneeded)
			continue;
		for (unsigned j = 0; j < dyn->nneeded; j++)
			names[j] = dyn->needed[j];
		/* -EINVAL: a file the format cannot record (a name with '/'):
		 * a mount parses that one as it arrives */
		r = nx_elf_needs_add(&n, i, dyn->runpath, dyn->rpath, names, dyn->nneeded);
		if (r == -ENOMEM)
			goto out;
	}
	if (!n)
		goto out;
	/* the manifest carries it only within the format's cap */
	r = nx_elf_needs_format(n, &s);
	if (r < 0) {
		nx_log(NX_LOG_DEBUG, "%s: its ELF records (%zu files) are %s: not recorded",
		       pp->info.store_path, n->nfiles, r == -E2BIG ? "over 256 KiB" : "not recordable");
		goto out;
	}
	nx_log(NX_LOG_DEBUG, "%s: dynamic sections of %zu ELF files, %zu bytes",
	       pp->info.store_path, n->nfiles, strlen(s));
	nx_elf_needs_free(pp->elf);
	pp->elf = n;
	n = NULL;
out:
	nx_elf_needs_free(n);
	free(s);
	free(full);
	free(rel);
	free(dyn);
}

int nx_pub_commit(struct nx_pub *p, struct nx_pub_path *pp, int fd, struct nx_toc_builder *tb,
		  uint64_t nar_size, uint64_t blob_size, const uint8_t blob_sha[NX_SHA256_LEN])
{
	const char *base = pp->info.store_path + sizeof(NX_STORE_DIR);
	uint8_t *toc = NULL, *tocz = NULL;
	size_t toclen = 0, tocz_len = 0;
	char tag[NX_HASH_LEN + 1];
	struct sigset s = { 0 };
	struct nx_manifest m;
	int r, changed, probe;

	nx_cli_tag(base, tag);
	r = nx_toc_builder_finish(tb, nar_size, blob_size, &toc, &toclen);
	if (r < 0)
		goto out;
	r = nx_zstd_compress(toc, toclen, &tocz, &tocz_len);
	if (r < 0)
		goto out;
	{
		struct nx_toc *t = NULL;

		if (nx_toc_decode(toc, toclen, &t) == 0) {
			import_graph(pp, fd, t);
			if (pp->local)
				elf_record(pp, t);
		}
		nx_toc_free(t);
	}

	if (pp->group) {
		r = pack_member(pp, fd, blob_size, &tocz, tocz_len);
		goto out;
	}
	memset(&m, 0, sizeof(m));
	m.info = pp->info; /* shallow: pp keeps ownership */
	memcpy(m.nar.digest, blob_sha, NX_SHA256_LEN);
	m.nar.size = blob_size;
	nx_sha256(tocz, tocz_len, m.toc.digest);
	m.toc.size = tocz_len;
	m.zstd_params = (char *)nx_packer_params();
	m.imports = pp->imports; /* shallow */
	m.nimports = pp->nimports;
	m.elf = pp->elf; /* shallow */

	/* A path whose tag the tag list lacks was never written here, so its
	 * blobs are sent without asking: what that costs is sending again
	 * the blobs of the few paths an interrupted push had in flight. */
	probe = p->tags_known ? -1 : 0;
	r = nx_pub_upload_blob(p, m.nar.digest, fd, NULL, blob_size, probe);
	if (r < 0)
		goto out;
	r = nx_pub_upload_blob(p, m.toc.digest, -1, tocz, tocz_len, probe);
	if (r < 0)
		goto out;
	r = sign_manifest(p, &m, &s, &changed);
	if (r < 0)
		goto out;
	r = put_manifest(p, pp, tag, &m);
	if (r == 0) {
		r = 2;
		free(pp->toc);
		pp->toc = tocz;
		pp->toc_len = tocz_len;
		tocz = NULL;
	}
out:
	sigset_release(&s);
	free(tocz);
	free(toc);
	return r;
}

/* ------------------------------------------------------------ workers */

/* @pp's worker is done with it (@r from p->one): the last member of a
 * pack writes the pack. p->nflushing counts the paths of packs in work
 * and the packs being written: while it is not 0, idle workers wait for
 * manifests to write instead of leaving. */
static void group_done(struct nx_pub *p, struct nx_pub_path *pp, int r)
{
	struct nx_pub_group *g = pp->group;
	int last;

	if (!g)
		return;
	pthread_mutex_lock(&p->lock);
	last = --g->pending == 0 && !p->failed && r >= 0;
	if (!last) {
		p->nflushing--; /* taken with the path (worker) */
		pthread_cond_broadcast(&p->cond);
	}
	pthread_mutex_unlock(&p->lock);
	if (!last)
		return;
	r = flush_pack(p, g);
	pthread_mutex_lock(&p->lock);
	if (r < 0)
		p->failed = 1;
	p->nflushing--;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

static void *worker(void *arg)
{
	struct nx_pub *p = arg;
	struct nx_pub_path *pp;
	size_t i;
	int r, man;

	for (;;) {
		pthread_mutex_lock(&p->lock);
		for (;;) {
			man = 0;
			if (p->failed) {
				pthread_mutex_unlock(&p->lock);
				return NULL;
			}
			/* manifests of written packs first: their paths are
			 * only readable once these are there */
			if (p->mq_head < p->mq_tail) {
				i = p->mq[p->mq_head++];
				man = 1;
				break;
			}
			if (p->next < p->npaths) {
				i = p->next++;
				/* until its pack is written, its manifest may
				 * still come: the others wait for it */
				if (p->paths[i].group)
					p->nflushing++;
				break;
			}
			if (!p->nflushing) {
				pthread_mutex_unlock(&p->lock);
				return NULL;
			}
			pthread_cond_wait(&p->cond, &p->lock);
		}
		pthread_mutex_unlock(&p->lock);

		pp = &p->paths[i];
		if (man) {
			r = pack_manifest(p, pp);
			if (r < 0) {
				pthread_mutex_lock(&p->lock);
				p->failed = 1;
				progress_clear_locked(p);
				nx_log(NX_LOG_ERR, "%s %s: %s", p->cmd, pp->info.store_path,
				       strerror(-r));
				pthread_cond_broadcast(&p->cond);
				pthread_mutex_unlock(&p->lock);
			}
			continue;
		}
		r = p->one(p, pp);

		pthread_mutex_lock(&p->lock);
		if (r < 0) {
			p->failed = 1;
			pthread_cond_broadcast(&p->cond);
			progress_clear_locked(p);
			nx_log(NX_LOG_ERR, "%s %s: %s", p->cmd, pp->info.store_path, strerror(-r));
		} else {
			p->done++;
			if (r == 2)
				p->uploaded++;
			else
				p->skipped++;
			if (nx_log_get_level() >= NX_LOG_INFO)
				progress_clear_locked(p);
			nx_log(NX_LOG_INFO, "%s %s", r == 2 ? p->done_verb : "skipped",
			       pp->info.store_path);
			progress_locked(p);
		}
		pthread_mutex_unlock(&p->lock);
		group_done(p, pp, r);
	}
}

struct tag_list {
	struct nx_pub *p;
	size_t seen, cap;
};

static int tag_cb(void *ctx, const char *tag)
{
	struct tag_list *l = ctx;
	struct nx_pub *p = l->p;

	/* a repository with far more tags than we push: asking per path
	 * is cheaper than reading them all */
	if (++l->seen > 4 * p->npaths + 4000)
		return 1;
	if (!nx_cli_is_hash_tag(tag))
		return 0;
	if (p->ntags == l->cap) {
		size_t n = l->cap ? 2 * l->cap : 1024;
		void *t = reallocarray(p->tags, n, sizeof(*p->tags));

		if (!t)
			return -ENOMEM;
		p->tags = t;
		l->cap = n;
	}
	memcpy(p->tags[p->ntags++], tag, NX_HASH_LEN + 1);
	return 0;
}

/*
 * One tag list instead of one manifest request per path. The list comes from
 * the registry itself (never a mirror), which answers it from the same
 * storage as the tags; a path missing from it is written, and its manifest
 * request is what is saved.
 */
static void list_tags(struct nx_pub *p)
{
	struct tag_list l = { p, 0, 0 };
	int r;

	r = nx_registry_list_tags(p->reg, tag_cb, &l);
	if (r == -ENOENT) /* no repository yet: no tag */
		r = 0;
	if (r != 0) {
		nx_log(NX_LOG_DEBUG, "%s: no tag list (%s); asking path by path",
		       nx_registry_ref(p->reg), r > 0 ? "too many tags" : strerror(-r));
		free(p->tags);
		p->tags = NULL;
		p->ntags = 0;
		return;
	}
	if (p->ntags > 1)
		qsort(p->tags, p->ntags, sizeof(*p->tags), cmp_tag);
	p->tags_known = 1;
}

int nx_pub_run(struct nx_pub *p, long jobs)
{
	pthread_t *th;
	int r, nthreads;
	long i;

	if (p->npaths > 1)
		list_tags(p);
	if (p->pack)
		plan_packs(p);
	r = config_blob(p);
	if (r < 0)
		return r;

	if ((size_t)jobs > p->npaths)
		jobs = (long)p->npaths;
	if (jobs == 0)
		return 0;
	th = calloc((size_t)jobs, sizeof(*th));
	if (!th)
		return -ENOMEM;
	for (nthreads = 0; nthreads < jobs; nthreads++) {
		r = pthread_create(&th[nthreads], NULL, worker, p);
		if (r) {
			nx_log(NX_LOG_ERR, "cannot start a worker thread: %s", strerror(r));
			pthread_mutex_lock(&p->lock);
			p->failed = 1;
			pthread_mutex_unlock(&p->lock);
			break;
		}
	}
	for (i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	free(th);
	return p->failed || nthreads == 0 ? -EIO : 0;
}

/* --------------------------------------------------------------- index */

/* The closure index JSON for @p's paths (their mdigest) and @meta. */
static int index_json(struct nx_pub *p, char **roots, size_t nroots, const struct nx_desc *meta,
		      const struct nx_desc *blob, char **json, size_t *len)
{
	struct nx_index ix = { 0 };
	size_t i;
	int r;

	ix.entries = calloc(p->npaths, sizeof(*ix.entries));
	if (!ix.entries)
		return -ENOMEM;
	for (i = 0; i < p->npaths; i++) {
		memcpy(ix.entries[i].desc.digest, p->paths[i].mdigest, NX_SHA256_LEN);
		ix.entries[i].desc.size = p->paths[i].msize;
		ix.entries[i].store_path = p->paths[i].info.store_path;
	}
	ix.nentries = p->npaths;
	ix.roots = roots;
	ix.nroots = nroots;
	if (meta) {
		ix.meta = *meta;
		ix.has_meta = 1;
		/* the blob too, so a mount fetches it beside the manifest */
		if (blob && blob->size) {
			ix.meta_blob = *blob;
			ix.has_meta_blob = 1;
		}
	}
	r = nx_index_build(&ix, json, len);
	free(ix.entries); /* shallow: strings belong to p and roots */
	return r;
}

int nx_pub_index(struct nx_pub *p, const char *name, char **roots, size_t nroots)
{
	uint8_t digest[NX_SHA256_LEN], have[NX_SHA256_LEN];
	struct nx_desc meta, meta_blob = { 0 };
	int exists = 0;
	char *json = NULL;
	size_t len = 0;
	int r;

	/* all metadata in one blob, for closure mounts (tools/cmeta.c) */
	r = nx_pub_closure_meta(p, name, &meta, &meta_blob);
	if (r == -E2BIG)
		nx_log(NX_LOG_WARNING, "closure %s: too large for one metadata blob; mounts "
		       "will load its paths one by one", name);
	else if (r < 0)
		return r;
	r = index_json(p, roots, nroots, r == 0 ? &meta : NULL, &meta_blob, &json, &len);
	if (r < 0)
		return r;
	/* an unchanged closure written again writes nothing */
	nx_sha256(json, len, digest);
	if (nx_registry_manifest_exists(p->reg, name, &exists, have) == 0 && exists &&
	    memcmp(have, digest, NX_SHA256_LEN) == 0) {
		free(json);
		return 0;
	}
	if (len > NX_INDEX_MAX) {
		nx_log(NX_LOG_ERR, "closure index for tag %s is %zu bytes, over the %u MiB readers "
		       "accept; write fewer paths under one tag", name, len, NX_INDEX_MAX >> 20);
		free(json);
		return -E2BIG;
	}
	r = nx_registry_put_manifest(p->reg, name, NX_MT_INDEX, json, len);
	if (r == 0)
		p->bytes += len;
	free(json);
	return r;
}

struct blob_buf {
	uint8_t *buf;
	uint64_t size, got;
};

static int blob_buf_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct blob_buf *b = ctx;

	if (off > b->size || len > b->size - off)
		return -EIO;
	memcpy(b->buf + off, buf, len);
	if (off <= b->got && off + len > b->got)
		b->got = off + len;
	return 0;
}

/* The closure metadata blob that @meta (a metadata manifest) names,
 * inflated and checked against its digest: *raw, *items (caller frees). */
static int fetch_meta(struct nx_pub *p, const struct nx_desc *meta, uint8_t **raw,
		      struct nx_cmeta_item **items, size_t *n)
{
	char ref[NX_DIGEST_STRLEN], *body = NULL;
	uint8_t d[NX_SHA256_LEN];
	struct blob_buf b = { 0 };
	struct nx_desc blob;
	size_t len = 0;
	int r;

	nx_digest_format(meta->digest, ref);
	r = nx_registry_get_manifest(p->reg, ref, NX_MANIFEST_MAX, &body, &len, d, NULL);
	if (r < 0)
		return r;
	r = nx_cmeta_manifest_parse(body, len, &blob);
	free(body);
	if (r < 0)
		return r;
	if (blob.size == 0 || blob.size > NX_CMETA_MAX_BYTES)
		return -E2BIG;
	b.size = blob.size;
	b.buf = malloc(b.size);
	if (!b.buf)
		return -ENOMEM;
	r = nx_registry_get_blob(p->reg, blob.digest, 0, b.size, blob_buf_cb, &b);
	if (r == 0 && b.got != b.size)
		r = -EIO;
	if (r == 0) {
		nx_sha256(b.buf, b.size, d);
		if (memcmp(d, blob.digest, NX_SHA256_LEN) != 0)
			r = -EBADMSG;
	}
	if (r == 0)
		r = nx_cmeta_decode(b.buf, b.size, raw, items, n);
	free(b.buf);
	return r;
}

/*
 * Adopts the closure metadata's item for @pp when its manifest is what we
 * would write (the digest and size the old index lists, the same store
 * path, NarHash, NarSize and, with a key, our signatures) and its TOC bytes
 * are the TOC that manifest names: pp->man, pp->toc, pp->mdigest and
 * pp->msize are then set and pp->adopt is 1, so neither the manifest nor the
 * TOC is read again (nx_pub_existing, the new closure metadata). 1 if
 * adopted, 0 if not, -ENOMEM.
 */
/* pp->man and pp->toc are owned by p->paths (NX_ANALYZER_ARRAY_STORE_BEGIN says why) */
NX_ANALYZER_ARRAY_STORE_BEGIN
static int adopt_old(struct nx_pub *p, struct nx_pub_path *pp, const struct nx_desc *want,
		     const struct nx_cmeta_item *it)
{
	uint8_t d[NX_SHA256_LEN];
	struct nx_manifest m;
	int same;

	if (pp->adopt || it->man_len != want->size)
		return 0;
	nx_sha256(it->man, it->man_len, d);
	if (memcmp(d, want->digest, NX_SHA256_LEN) != 0)
		return 0;
	if (nx_manifest_parse((const char *)it->man, it->man_len, &m) < 0)
		return 0;
	same = strcmp(m.info.store_path, pp->info.store_path) == 0 &&
	       memcmp(m.info.nar_hash, pp->info.nar_hash, NX_SHA256_LEN) == 0 &&
	       m.info.nar_size == pp->info.nar_size && signed_by_us(p, &m) &&
	       it->toc_len == m.toc.size;
	if (same) {
		nx_sha256(it->toc, it->toc_len, d);
		same = memcmp(d, m.toc.digest, NX_SHA256_LEN) == 0;
	}
	nx_manifest_release(&m);
	if (!same)
		return 0;
	free(pp->man);
	free(pp->toc);
	pp->toc = NULL;
	pp->man = malloc(it->man_len + 1);
	if (pp->man)
		pp->toc = malloc(it->toc_len);
	if (!pp->man || !pp->toc) {
		free(pp->man);
		pp->man = NULL;
		return -ENOMEM;
	}
	memcpy(pp->man, it->man, it->man_len);
	pp->man[it->man_len] = '\0';
	pp->man_len = it->man_len;
	memcpy(pp->toc, it->toc, it->toc_len);
	pp->toc_len = it->toc_len;
	memcpy(pp->mdigest, want->digest, NX_SHA256_LEN);
	pp->msize = want->size;
	pp->adopt = 1;
	return 1;
}
NX_ANALYZER_ARRAY_STORE_END

int nx_pub_unchanged(struct nx_pub *p, const char *name, char **roots, size_t nroots)
{
	uint8_t have[NX_SHA256_LEN], want[NX_SHA256_LEN];
	struct nx_cmeta_item *items = NULL;
	struct nx_pub_path *pp;
	struct nx_index ix;
	uint8_t *raw = NULL;
	char *body = NULL, *json = NULL;
	size_t i, n = 0, len = 0, adopted = 0;
	int r, same = 0;

	r = nx_registry_get_manifest(p->reg, name, NX_INDEX_MAX, &body, &len, have, NULL);
	if (r < 0)
		return r == -ENOMEM ? r : 0; /* the full path says what is wrong */
	r = nx_index_parse(body, len, &ix);
	free(body);
	if (r < 0)
		return 0;
	if (!ix.has_meta)
		goto out;
	/* whether or not the whole closure is unchanged, the paths it still
	 * has need neither their manifest nor their TOC read again */
	r = fetch_meta(p, &ix.meta, &raw, &items, &n);
	if (r < 0 || n != ix.nentries) {
		nx_log(NX_LOG_DEBUG, "closure %s: its metadata is not usable (%s); checking path "
		       "by path", name, r < 0 ? strerror(-r) : "another number of paths");
		if (r == -ENOMEM)
			same = r;
		goto out;
	}
	for (i = 0; i < n; i++) {
		pp = nx_pub_find(p, ix.entries[i].store_path);
		if (!pp)
			continue;
		r = adopt_old(p, pp, &ix.entries[i].desc, &items[i]);
		if (r < 0) {
			same = r;
			goto out;
		}
		adopted += (size_t)r;
	}
	nx_log(NX_LOG_DEBUG, "closure %s: %zu of its %zu paths are in this push, unchanged", name,
	       adopted, n);
	if (adopted != p->npaths || n != p->npaths)
		goto out;
	/* the roots too: what we would write, byte for byte */
	if (index_json(p, roots, nroots, &ix.meta, ix.has_meta_blob ? &ix.meta_blob : NULL, &json,
		       &len) == 0) {
		nx_sha256(json, len, want);
		same = memcmp(want, have, NX_SHA256_LEN) == 0;
	}
out:
	free(json);
	free(items);
	free(raw);
	nx_index_release(&ix);
	return same;
}

/* ------------------------------------------------------------- options */

int nx_pub_getopt(struct nx_cli *cli, const char *cmd, const char *usage, int argc, char **argv,
		  struct nx_pub_opts *o)
{
	static const struct option lo[] = {
		{ "jobs", required_argument, NULL, 'j' },
		{ "tag", required_argument, NULL, 't' },
		{ "sign-key", required_argument, NULL, 'k' },
		{ "mount-from", required_argument, NULL, 'M' },
		{ "pack", no_argument, NULL, 'P' },
		{ "no-pack", no_argument, NULL, 'N' },
		NX_CLI_LONGOPTS,
		{ NULL, 0, NULL, 0 },
	};
	char *end;
	int c;

	o->jobs = NX_PUB_JOBS;
	/* packs by default: far fewer requests, and every reader since format 2
	 * mounts them; --no-pack is for readers older than that */
	o->pack = 1;
	while ((c = getopt_long(argc, argv, ":hvj:t:k:", lo, NULL)) != -1) {
		switch (c) {
		case 'h':
			fputs(usage, stdout);
			return NX_EXIT_OK;
		case 'j':
			errno = 0;
			o->jobs = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || o->jobs < 1 || o->jobs > 64)
				return nx_cli_usage_error(usage, "bad --jobs '%s': want 1..64",
							  optarg);
			break;
		case 't':
			o->tag = optarg;
			break;
		case 'k':
			o->keyfile = optarg;
			break;
		case 'M':
			o->mount_from = optarg;
			break;
		case 'P':
			o->pack = 1;
			break;
		case 'N': /* the last of --pack and --no-pack counts */
			o->pack = 0;
			break;
		case '?':
			return nx_cli_usage_error(usage, "%s: unknown option '%s'", cmd,
						  argv[optind - 1]);
		case ':':
			return nx_cli_usage_error(usage, "%s: option '%s' needs an argument", cmd,
						  argv[optind - 1]);
		default:
			if (nx_cli_opt(cli, c, optarg) < 0)
				return nx_cli_synopsis(usage);
		}
	}
	if (o->tag && !nx_pub_tag_valid(o->tag))
		return nx_cli_usage_error(usage,
					  "%s: bad --tag '%s': want an OCI tag "
					  "([A-Za-z0-9_][A-Za-z0-9._-]{0,127}) that is not a hash part",
					  cmd, o->tag);
	return -1;
}
