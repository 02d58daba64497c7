/*
 * tests/unit/cache-store.c: the lazy store over an in-memory source.
 *
 * Store paths are packed in-process (nx_nar_dump of a temp tree through the
 * common packer), manifests built with nx_manifest_build, and served by a
 * struct nx_source that can ignore ranges, corrupt a byte and count what it
 * sends per frame.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cache/cache.h"
#include "cache/cache_i.h" /* files.c: limits, evict */
#include "common/common.h"
#include "tests/unit/tap.h"

/* ---------------------------------------------------- in-memory source */

#define MAX_BLOBS 64
#define MAX_MANS 64

struct mem_blob {
	uint8_t digest[NX_SHA256_LEN];
	uint8_t *data;
	size_t len;
};

struct mem_man {
	char ref[80];
	char *body;
	size_t len;
	uint8_t digest[NX_SHA256_LEN];
};

struct memsrc {
	pthread_mutex_t lock;
	struct mem_blob blobs[MAX_BLOBS];
	int nblobs;
	struct mem_man mans[MAX_MANS];
	int nmans;
	int ignore_ranges;
	int corrupt;  /* flip the byte at corrupt_off of corrupt_digest */
	uint8_t corrupt_digest[NX_SHA256_LEN];
	uint64_t corrupt_off;
	uint64_t bytes, requests;
	/* per-frame delivery counts of one blob */
	const struct nx_toc *watch_toc;
	uint8_t watch_digest[NX_SHA256_LEN];
	unsigned *frame_counts;
};

static struct memsrc src;

static void src_reset_counters(void)
{
	pthread_mutex_lock(&src.lock);
	src.bytes = 0;
	src.requests = 0;
	pthread_mutex_unlock(&src.lock);
}

static void src_add_blob(const uint8_t d[NX_SHA256_LEN], const void *buf, size_t len)
{
	struct mem_blob *b = &src.blobs[src.nblobs++];

	memcpy(b->digest, d, NX_SHA256_LEN);
	b->data = malloc(len);
	memcpy(b->data, buf, len);
	b->len = len;
}

static void src_add_manifest(const char *ref, const char *body, size_t len)
{
	struct mem_man *m = &src.mans[src.nmans++];

	snprintf(m->ref, sizeof(m->ref), "%s", ref);
	m->body = malloc(len + 1);
	memcpy(m->body, body, len);
	m->body[len] = '\0';
	m->len = len;
	nx_sha256(body, len, m->digest);
}

static int src_get_manifest(void *ctx, const char *ref, size_t cap, char **body, size_t *len,
			    uint8_t digest[NX_SHA256_LEN])
{
	pthread_mutex_lock(&src.lock);
	src.requests++;
	for (int i = 0; i < src.nmans; i++) {
		struct mem_man *m = &src.mans[i];

		if (strcmp(m->ref, ref) != 0)
			continue;
		src.bytes += m->len;
		pthread_mutex_unlock(&src.lock);
		if (m->len > cap)
			return -E2BIG;
		*body = malloc(m->len + 1);
		memcpy(*body, m->body, m->len + 1);
		*len = m->len;
		memcpy(digest, m->digest, NX_SHA256_LEN);
		return 0;
	}
	pthread_mutex_unlock(&src.lock);
	return -ENOENT;
}

static int src_get_blob(void *ctx, const uint8_t digest[NX_SHA256_LEN], uint64_t off,
			uint64_t len, int (*cb)(void *cbctx, uint64_t off, const void *buf,
						size_t len),
			void *cbctx)
{
	struct mem_blob *b = NULL;
	uint8_t piece[65536];
	uint64_t end;

	for (int i = 0; i < src.nblobs; i++)
		if (memcmp(src.blobs[i].digest, digest, NX_SHA256_LEN) == 0)
			b = &src.blobs[i];
	if (!b)
		return -ENOENT;
	if (src.ignore_ranges) {
		off = 0;
		end = b->len;
	} else {
		if (off > b->len)
			return -EIO;
		end = len ? off + len : b->len;
		if (end > b->len)
			end = b->len;
	}
	pthread_mutex_lock(&src.lock);
	src.requests++;
	src.bytes += end - off;
	if (src.frame_counts && memcmp(digest, src.watch_digest, NX_SHA256_LEN) == 0) {
		for (uint32_t i = 0; i < src.watch_toc->nframes; i++) {
			const struct nx_toc_frame *f = &src.watch_toc->frames[i];

			if (f->coff >= off && f->coff + f->clen <= end)
				src.frame_counts[i]++;
		}
	}
	pthread_mutex_unlock(&src.lock);
	while (off < end) {
		size_t n = end - off < sizeof(piece) ? (size_t)(end - off) : sizeof(piece);
		int rc;

		memcpy(piece, b->data + off, n);
		if (src.corrupt && memcmp(digest, src.corrupt_digest, NX_SHA256_LEN) == 0 &&
		    src.corrupt_off >= off && src.corrupt_off < off + n)
			piece[src.corrupt_off - off] ^= 0x55;
		rc = cb(cbctx, off, piece, n);
		if (rc)
			return rc;
		off += n;
	}
	return 0;
}

static const struct nx_source source = { NULL, src_get_manifest, src_get_blob, NULL, NULL };

/* ------------------------------------------------------- test fixtures */

static char tmpdir[128];

static void write_file(const char *path, const void *buf, size_t len, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

	if (fd < 0 || write(fd, buf, len) != (ssize_t)len) {
		perror(path);
		exit(1);
	}
	close(fd);
}

/* @seed: big.bin's bytes (another seed, another NAR of the same shape) */
static void make_tree(const char *root, uint64_t seed)
{
	char path[PATH_MAX];
	size_t big = 3300000, zeros = 3u << 20, med = 700000;
	uint8_t *buf = malloc(big > zeros ? big : zeros);
	uint64_t x = seed;

	mkdir(root, 0755);
	snprintf(path, sizeof(path), "%s/hello.txt", root);
	write_file(path, "hello world\n", 12, 0644);
	snprintf(path, sizeof(path), "%s/empty", root);
	write_file(path, "", 0, 0644);
	snprintf(path, sizeof(path), "%s/bin", root);
	mkdir(path, 0755);
	for (size_t i = 0; i < 5000; i++)
		buf[i] = (uint8_t)(i * 7);
	snprintf(path, sizeof(path), "%s/bin/tool", root);
	write_file(path, buf, 5000, 0755);
	for (size_t i = 0; i < big; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		buf[i] = (uint8_t)x;
	}
	snprintf(path, sizeof(path), "%s/big.bin", root);
	write_file(path, buf, big, 0644);
	memset(buf, 0, zeros);
	snprintf(path, sizeof(path), "%s/zeros.bin", root);
	write_file(path, buf, zeros, 0644);
	for (size_t i = 0; i < med; i++)
		buf[i] = (uint8_t)("lorem ipsum dolor sit amet\n"[i % 27]);
	snprintf(path, sizeof(path), "%s/medium.txt", root);
	write_file(path, buf, med, 0644);
	snprintf(path, sizeof(path), "%s/lib", root);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/lib/link", root);
	if (symlink("../hello.txt", path) < 0)
		exit(1);
	snprintf(path, sizeof(path), "%s/many", root);
	mkdir(path, 0755);
	for (int i = 0; i < 200; i++) {
		size_t n = 500 + (size_t)(i * 37 % 3000);

		for (size_t j = 0; j < n; j++)
			buf[j] = (uint8_t)(i + j * 3);
		snprintf(path, sizeof(path), "%s/many/f%03d", root, i);
		write_file(path, buf, n, 0644);
	}
	free(buf);
}

enum sign_mode { SIGN_NONE, SIGN_TOC, SIGN_NARINFO, SIGN_NARINFO_BADTOC };

struct tpath {
	char base[NX_BASE_MAX + 1];
	char sp[PATH_MAX];
	struct nx_toc *toc;
	uint8_t nar_digest[NX_SHA256_LEN], toc_digest[NX_SHA256_LEN], man_digest[NX_SHA256_LEN];
	size_t man_len;
};

static struct nx_seckey seckey;
static struct nx_pubkey pubkey, otherkey;

/* Packs @tree as store path "<hash>-@name" and publishes it in the source. */
static void make_path(const char *tree, const char *name, enum sign_mode sign,
		      struct tpath *t)
{
	struct nx_toc_builder *tb;
	struct nx_packer *pk;
	uint64_t nar_size, blob_size;
	uint8_t blob_sha[NX_SHA256_LEN], nar_sha[NX_SHA256_LEN], h[NX_SHA256_LEN];
	uint8_t *tocbuf, *tocz, *blob;
	size_t toclen, toczlen, jlen;
	char hash[NX_HASH_LEN + 1], ref[NX_DIGEST_STRLEN], *json, *fp, *sig = NULL;
	struct nx_manifest m;
	FILE *f = tmpfile();
	int fd = fileno(f);

	if (nx_toc_builder_new(&tb) || nx_packer_new(&pk, fd, tb) ||
	    nx_nar_dump(tree, nx_packer_sink(pk)) ||
	    nx_packer_finish(pk, &nar_size, &blob_size, blob_sha, nar_sha) ||
	    nx_toc_builder_finish(tb, nar_size, blob_size, &tocbuf, &toclen)) {
		printf("Bail out! packing %s failed\n", tree);
		exit(1);
	}
	nx_packer_free(pk);
	nx_toc_builder_free(tb);
	if (sign == SIGN_NARINFO_BADTOC) {
		/* a still well-formed TOC that lies: a plain file made executable */
		uint32_t n = (uint32_t)tocbuf[32] | (uint32_t)tocbuf[33] << 8;

		for (uint32_t i = 1; i < n; i++) {
			uint8_t *e = tocbuf + 64 + 40 * i;

			if (e[12] == NX_NODE_REGULAR && e[13] == 0) {
				e[13] = 1;
				break;
			}
		}
	}
	if (nx_toc_decode(tocbuf, toclen, &t->toc) || nx_zstd_compress(tocbuf, toclen, &tocz,
								      &toczlen)) {
		printf("Bail out! toc\n");
		exit(1);
	}
	blob = malloc(blob_size);
	if (pread(fd, blob, blob_size, 0) != (ssize_t)blob_size)
		exit(1);
	fclose(f);
	nx_sha256(tocz, toczlen, t->toc_digest);
	memcpy(t->nar_digest, blob_sha, NX_SHA256_LEN);

	nx_sha256(name, strlen(name), h);
	nx_nix32_encode(h, 20, hash);
	snprintf(t->base, sizeof(t->base), "%s-%s", hash, name);
	snprintf(t->sp, sizeof(t->sp), "%s/%s", NX_STORE_DIR, t->base);

	memset(&m, 0, sizeof(m));
	m.info.store_path = t->sp;
	memcpy(m.info.nar_hash, nar_sha, NX_SHA256_LEN);
	m.info.nar_size = nar_size;
	m.zstd_params = (char *)nx_packer_params();
	memcpy(m.nar.digest, blob_sha, NX_SHA256_LEN);
	m.nar.size = blob_size;
	memcpy(m.toc.digest, t->toc_digest, NX_SHA256_LEN);
	m.toc.size = toczlen;
	if (sign == SIGN_TOC) {
		nx_toc_fingerprint(t->sp, nar_sha, t->toc_digest, &fp);
		nx_sig_sign(&seckey, fp, strlen(fp), &sig);
		m.toc_sigs = &sig;
		m.ntoc_sigs = 1;
		free(fp);
	} else if (sign == SIGN_NARINFO || sign == SIGN_NARINFO_BADTOC) {
		nx_fingerprint(&m.info, &fp);
		nx_sig_sign(&seckey, fp, strlen(fp), &sig);
		m.info.sigs = &sig;
		m.info.nsigs = 1;
		free(fp);
	}
	if (nx_manifest_build(&m, &json, &jlen)) {
		printf("Bail out! manifest build\n");
		exit(1);
	}
	free(sig);
	nx_sha256(json, jlen, t->man_digest);
	t->man_len = jlen;
	src_add_manifest(hash, json, jlen);
	nx_digest_format(t->man_digest, ref);
	src_add_manifest(ref, json, jlen);
	src_add_blob(blob_sha, blob, blob_size);
	src_add_blob(t->toc_digest, tocz, toczlen);
	free(json);
	free(blob);
	free(tocbuf);
	free(tocz);
}

static void make_keys(void)
{
	uint8_t seed[32];
	size_t len = 32;
	EVP_PKEY *k;

	for (int i = 0; i < 32; i++)
		seed[i] = (uint8_t)(i * 11 + 3);
	snprintf(seckey.name, sizeof(seckey.name), "test-1");
	memcpy(seckey.seed, seed, 32);
	k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, 32);
	EVP_PKEY_get_raw_public_key(k, pubkey.key, &len);
	EVP_PKEY_free(k);
	snprintf(pubkey.name, sizeof(pubkey.name), "test-1");
	seed[0] ^= 1;
	k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, 32);
	len = 32;
	EVP_PKEY_get_raw_public_key(k, otherkey.key, &len);
	EVP_PKEY_free(k);
	snprintf(otherkey.name, sizeof(otherkey.name), "test-1");
}

static int open_store(struct nx_store **st, const char *sub, uint64_t size,
		      const char *closure, const struct nx_pubkey *keys, size_t nkeys)
{
	char dir[PATH_MAX];
	struct nx_store_opts o = { 0 };

	snprintf(dir, sizeof(dir), "%s/%s", tmpdir, sub);
	o.cache_dir = dir;
	o.cache_size = size;
	o.closure = closure;
	o.keys = keys;
	o.nkeys = nkeys;
	return nx_store_open(st, &o, &source);
}

static uint8_t *slurp(const char *path, size_t *len)
{
	struct stat sb;
	uint8_t *b;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &sb) < 0)
		return NULL;
	b = malloc(sb.st_size + 1);
	if (read(fd, b, sb.st_size) != sb.st_size)
		exit(1);
	close(fd);
	*len = sb.st_size;
	return b;
}

/* Entry path relative to the root, built from the TOC's parent links. */
static void entry_path(const struct nx_toc *toc, uint32_t idx, char *out, size_t cap)
{
	size_t nlen, plen;
	const char *name;

	out[0] = '\0';
	if (idx == 0)
		return;
	entry_path(toc, toc->entries[idx].parent, out, cap);
	name = nx_toc_name(toc, idx, &nlen);
	plen = strlen(out);
	if (plen + 1 + nlen >= cap)
		return;
	out[plen] = '/';
	memcpy(out + plen + 1, name, nlen);
	out[plen + 1 + nlen] = '\0';
}

/* Reads entry @idx whole in @step pieces. */
static int read_entry(struct nx_store *st, struct nx_spath *p, uint32_t idx, size_t step,
		      uint8_t **out, size_t *outlen)
{
	const struct nx_toc_entry *e = &nx_spath_toc(p)->entries[idx];
	uint8_t *buf = malloc(e->size + 1);
	uint64_t off = 0;
	int rc;

	while (off < e->size) {
		size_t got;

		rc = nx_store_read(st, p, idx, off, step, buf + off, &got);
		if (rc < 0) {
			free(buf);
			return rc;
		}
		if (got == 0)
			break;
		off += got;
	}
	*out = buf;
	*outlen = off;
	return 0;
}

/* Reads every regular file of @p and compares it with @tree. Returns the
 * number of mismatches. Calls @after_each after every file. */
static int compare_all(struct nx_store *st, struct nx_spath *p, const char *tree, size_t step,
		       void (*after_each)(struct nx_store *st))
{
	const struct nx_toc *toc = nx_spath_toc(p);
	int bad = 0;

	for (uint32_t i = 0; i < toc->nentries; i++) {
		char rel[PATH_MAX], full[PATH_MAX * 2];
		uint8_t *want, *got;
		size_t wlen, glen;
		int rc;

		if (toc->entries[i].type != NX_NODE_REGULAR)
			continue;
		entry_path(toc, i, rel, sizeof(rel));
		snprintf(full, sizeof(full), "%s%s", tree, rel);
		want = slurp(full, &wlen);
		rc = read_entry(st, p, i, step, &got, &glen);
		if (rc < 0 || !want || wlen != glen || memcmp(want, got, wlen) != 0) {
			diag("mismatch in %s (rc %d)", rel, rc);
			bad++;
		}
		if (rc == 0)
			free(got);
		free(want);
		if (after_each)
			after_each(st);
	}
	return bad;
}

static int64_t find_entry(const struct nx_toc *toc, const char *path)
{
	char buf[PATH_MAX], *save, *comp;
	int64_t idx = 0;

	snprintf(buf, sizeof(buf), "%s", path);
	for (comp = strtok_r(buf, "/", &save); comp; comp = strtok_r(NULL, "/", &save)) {
		idx = nx_toc_lookup(toc, (uint32_t)idx, comp, strlen(comp));
		if (idx < 0)
			return idx;
	}
	return idx;
}

static int chunk_exists(const char *sub, const uint8_t d[NX_SHA256_LEN])
{
	char hex[2 * NX_SHA256_LEN + 1], path[PATH_MAX * 2];

	nx_hex(d, NX_SHA256_LEN, hex);
	snprintf(path, sizeof(path), "%s/%s/chunks/%.2s/%s", tmpdir, sub, hex, hex);
	return access(path, F_OK) == 0;
}

static unsigned distinct_frames(const struct nx_toc *toc)
{
	unsigned n = 0;

	for (uint32_t i = 0; i < toc->nframes; i++) {
		int dup = 0;

		for (uint32_t j = 0; j < i && !dup; j++)
			dup = memcmp(toc->frames[i].sha256, toc->frames[j].sha256,
				     NX_SHA256_LEN) == 0;
		n += !dup;
	}
	return n;
}

/* Distinct frames holding some regular file's contents (what reading
 * every file needs). */
static unsigned content_frames(const struct nx_toc *toc)
{
	uint8_t *need = calloc(toc->nframes, 1);
	unsigned n = 0;

	for (uint32_t i = 0; i < toc->nentries; i++) {
		const struct nx_toc_entry *e = &toc->entries[i];
		uint32_t a, b;

		if (e->type != NX_NODE_REGULAR || e->size == 0)
			continue;
		if (nx_toc_frames_for(toc, e->off, e->size, &a, &b) < 0)
			continue;
		for (uint32_t j = a; j <= b; j++)
			need[j] = 1;
	}
	for (uint32_t i = 0; i < toc->nframes; i++) {
		int dup = 0;

		if (!need[i])
			continue;
		for (uint32_t j = 0; j < i && !dup; j++)
			dup = need[j] && memcmp(toc->frames[i].sha256, toc->frames[j].sha256,
						NX_SHA256_LEN) == 0;
		n += !dup;
	}
	free(need);
	return n;
}

/* ------------------------------------------------------------- tests */

static char tree[256];
static struct tpath tp_main, tp_unsigned, tp_tocsig, tp_narsig, tp_other, tp_badtoc, tp_alt;

static int list_main_cb(void *ctx, const char *b)
{
	(*(int *)ctx)++;
	return strcmp(b, tp_main.base) == 0 ? 0 : 1;
}

static int count_cb(void *ctx, const char *b)
{
	(*(int *)ctx)++;
	return 0;
}

static void test_basic(void)
{
	struct nx_store *st;
	struct nx_spath *p, *q;
	struct nx_store_stats s;
	int rc;

	rc = open_store(&st, "c1", 0, NULL, NULL, 0);
	is_int(rc, 0, "open a new cache");
	if (rc)
		return;
	rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
	is_int(rc, 0, "lookup %s", tp_main.base);
	if (rc) {
		nx_store_close(st);
		return;
	}
	ok(strcmp(nx_spath_manifest(p)->info.store_path, tp_main.sp) == 0, "manifest store path");
	ok(nx_spath_toc(p)->nentries == tp_main.toc->nentries, "toc entries");
	ok(strcmp(nx_spath_base(p), tp_main.base) == 0, "base");
	ok(nx_spath_id(p) != 0 && nx_spath_id(p) < (UINT64_C(1) << 40), "id is 40 bits, not 0");
	is_int(nx_store_by_id(st, nx_spath_id(p), &q), 0, "by_id finds it");
	ok(q == p, "by_id gives the same path");
	is_int(nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &q), 0, "lookup again");
	ok(q == p, "same pointer");
	nx_store_stats(st, &s);
	is_int(s.frames_fetched, 0, "lookup fetches no frames");
	is_int(s.paths_loaded, 1, "paths_loaded 1");

	/* negatives */
	{
		char nb[NX_BASE_MAX + 1];

		snprintf(nb, sizeof(nb), "%s", tp_main.base);
		nb[0] = nb[0] == '0' ? '1' : '0';
		is_int(nx_store_lookup(st, nb, strlen(nb), &q), -ENOENT, "unknown hash: ENOENT");
		is_int(nx_store_lookup(st, nb, strlen(nb), &q), -ENOENT, "again (remembered)");
		snprintf(nb, sizeof(nb), "%.32s-othername", tp_main.base);
		is_int(nx_store_lookup(st, nb, strlen(nb), &q), -ENOENT,
		       "same hash, other name: ENOENT");
		is_int(nx_store_lookup(st, "foo", 3, &q), -ENOENT, "invalid name: ENOENT");
		is_int(nx_store_by_id(st, 12345, &q), -ENOENT, "unknown id");
	}

	is_int(compare_all(st, p, tree, 131072, NULL), 0, "every file reads back (128K reads)");
	nx_store_stats(st, &s);
	is_int(s.frames_fetched, content_frames(tp_main.toc), "each needed frame fetched once");
	is_int(s.verify_failures, 0, "no verify failures");
	is_int(compare_all(st, p, tree, 77777, NULL), 0, "every file again (odd read size)");
	nx_store_stats(st, &s);
	is_int(s.frames_fetched, content_frames(tp_main.toc), "second pass fetches nothing");
	ok(s.cache_hits > 0, "cache hits counted");
	{
		int64_t d = find_entry(nx_spath_toc(p), "bin");
		int64_t l = find_entry(nx_spath_toc(p), "lib/link");
		uint8_t b[4];
		size_t got;

		is_int(nx_store_read(st, p, (uint32_t)d, 0, 4, b, &got), -EISDIR, "read dir");
		is_int(nx_store_read(st, p, (uint32_t)l, 0, 4, b, &got), -EINVAL, "read symlink");
		d = find_entry(nx_spath_toc(p), "hello.txt");
		is_int(nx_store_read(st, p, (uint32_t)d, 100, 4, b, &got), 0, "read past end");
		is_int(got, 0, "gets 0 bytes");
		is_int(nx_store_read(st, p, (uint32_t)d, 10, sizeof(b), b, &got) == 0 && got == 2, 1,
		       "short read at end");
	}
	{
		int n = 0;

		is_int(nx_store_list(st, list_main_cb, &n), 0, "list");
		is_int(n, 1, "lists the loaded path");
	}
	nx_store_close(st);

	/* warm reopen: nothing fetched */
	src_reset_counters();
	rc = open_store(&st, "c1", 0, NULL, NULL, 0);
	is_int(rc, 0, "reopen warm cache");
	if (rc)
		return;
	rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
	is_int(rc, 0, "lookup from the warm cache");
	if (rc == 0)
		is_int(compare_all(st, p, tree, 131072, NULL), 0, "every file from the warm cache");
	is_int(src.requests, 0, "warm reopen: 0 requests");
	is_int(src.bytes, 0, "warm reopen: 0 bytes");
	nx_store_stats(st, &s);
	is_int(s.frames_fetched, 0, "warm reopen: 0 frames fetched");
	ok(s.cache_bytes > 0, "cache_bytes counted at open");
	nx_store_close(st);
}

static uint64_t last_done, last_total;
static unsigned progress_calls;

static void progress_cb(void *ctx, uint64_t done, uint64_t total)
{
	last_done = done;
	last_total = total;
	progress_calls++;
}

static void test_prefetch_readonly(void)
{
	struct nx_store *st;
	struct nx_spath *p;
	struct nx_store_stats s;
	struct nx_store_opts o = { 0 };
	char dir[PATH_MAX];
	int rc;

	rc = open_store(&st, "p1", 0, NULL, NULL, 0);
	is_int(rc, 0, "open p1");
	if (rc)
		return;
	rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
	is_int(rc, 0, "lookup");
	if (rc) {
		nx_store_close(st);
		return;
	}
	src_reset_counters();
	is_int(nx_store_prefetch(st, p, progress_cb, NULL), 0, "prefetch");
	ok(last_done == tp_main.toc->nar_size && last_total == last_done,
	   "progress reaches the NAR size");
	is_int(src.requests, 1, "prefetch: one merged request");
	nx_store_stats(st, &s);
	/* repeated digests ride along in the merged request */
	is_int(s.frames_fetched, tp_main.toc->nframes, "every frame fetched");
	is_int(nx_store_prefetch(st, p, NULL, NULL), 0, "prefetch again");
	is_int(src.requests, 1, "prefetch again fetches nothing");
	is_int(compare_all(st, p, tree, 131072, NULL), 0, "reads after prefetch");
	is_int(src.requests, 1, "reads after prefetch fetch nothing");
	nx_store_close(st);

	/* read-only use of a warm cache: nothing fetched, nothing written */
	snprintf(dir, sizeof(dir), "%s/p1", tmpdir);
	o.cache_dir = dir;
	o.readonly_cache = 1;
	src_reset_counters();
	rc = nx_store_open(&st, &o, &source);
	is_int(rc, 0, "open warm cache read-only");
	if (rc == 0) {
		rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
		is_int(rc, 0, "read-only lookup");
		if (rc == 0)
			is_int(compare_all(st, p, tree, 131072, NULL), 0, "read-only reads");
		is_int(src.requests, 0, "read-only warm: nothing fetched");
		nx_store_close(st);
	}

	/* read-only without a cache directory: works, creates nothing */
	snprintf(dir, sizeof(dir), "%s/p2", tmpdir);
	rc = nx_store_open(&st, &o, &source);
	is_int(rc, 0, "open missing cache read-only");
	if (rc == 0) {
		rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
		is_int(rc, 0, "read-only lookup without cache");
		if (rc == 0)
			is_int(compare_all(st, p, tree, 100000, NULL), 0,
			       "read-only reads without cache");
		nx_store_close(st);
	}
	ok(access(dir, F_OK) < 0, "no cache directory created");
}

static void test_corrupt(void)
{
	struct nx_store *st;
	struct nx_spath *p;
	struct nx_store_stats s;
	const struct nx_toc *toc = tp_main.toc;
	int64_t big = find_entry(toc, "big.bin");
	uint32_t first, last;
	uint8_t *buf = malloc(65536);
	size_t got;
	int rc;

	nx_toc_frames_for(toc, toc->entries[big].off + 1500000, 1, &first, &last);
	src.corrupt = 1;
	memcpy(src.corrupt_digest, tp_main.nar_digest, NX_SHA256_LEN);
	src.corrupt_off = toc->frames[first].coff + toc->frames[first].clen / 2;

	rc = open_store(&st, "c2", 0, NULL, NULL, 0);
	is_int(rc, 0, "open c2");
	rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
	is_int(rc, 0, "lookup");
	rc = nx_store_read(st, p, (uint32_t)big, 1500000, 65536, buf, &got);
	is_int(rc, -EIO, "corrupted frame: EIO");
	nx_store_stats(st, &s);
	is_int(s.verify_failures, 1, "verify_failures 1");
	ok(!chunk_exists("c2", toc->frames[first].sha256), "corrupted frame not cached");
	rc = nx_store_read(st, p, (uint32_t)big, 1500000, 65536, buf, &got);
	is_int(rc, -EIO, "still EIO (nothing cached)");
	src.corrupt = 0;
	rc = nx_store_read(st, p, (uint32_t)big, 1500000, 65536, buf, &got);
	is_int(rc, 0, "source fixed: reads");
	ok(chunk_exists("c2", toc->frames[first].sha256), "frame now cached");
	nx_store_close(st);
	free(buf);
}

static void test_ignore_ranges(void)
{
	struct nx_store *st;
	struct nx_spath *p;
	int rc;

	src.ignore_ranges = 1;
	rc = open_store(&st, "c3", 0, NULL, NULL, 0);
	is_int(rc, 0, "open c3");
	rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
	is_int(rc, 0, "lookup with a range-ignoring source");
	if (rc == 0)
		is_int(compare_all(st, p, tree, 131072, NULL), 0,
		       "every file reads back from a range-ignoring source");
	nx_store_close(st);
	src.ignore_ranges = 0;
}

static int evict_over;

static void check_limit(struct nx_store *st)
{
	struct nx_store_stats s;

	nx_store_stats(st, &s);
	if (s.cache_bytes > s.cache_limit)
		evict_over++;
}

static void test_evict(void)
{
	struct nx_store *st;
	struct nx_spath *p;
	struct nx_store_stats s;
	int rc;

	rc = open_store(&st, "c4", 3u << 20, NULL, NULL, 0);
	is_int(rc, 0, "open c4 with a 3 MiB limit");
	rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
	is_int(rc, 0, "lookup");
	if (rc == 0) {
		is_int(compare_all(st, p, tree, 131072, check_limit), 0,
		       "every file reads back under eviction");
		is_int(compare_all(st, p, tree, 131072, check_limit), 0, "and again");
	}
	is_int(evict_over, 0, "cache_bytes never above the limit");
	nx_store_stats(st, &s);
	ok(s.evictions > 0, "evictions happened (%llu)", (unsigned long long)s.evictions);
	ok(s.cache_bytes <= s.cache_limit, "cache_bytes %llu <= limit %llu",
	   (unsigned long long)s.cache_bytes, (unsigned long long)s.cache_limit);
	nx_store_close(st);

	/* the running total is rebuilt at open */
	rc = open_store(&st, "c4", 3u << 20, NULL, NULL, 0);
	nx_store_stats(st, &s);
	ok(rc == 0 && s.cache_bytes <= s.cache_limit, "after reopen cache_bytes %llu",
	   (unsigned long long)s.cache_bytes);
	if (rc == 0)
		nx_store_close(st);

	/* a cache over its limit at open (a smaller cache_size here; a
	 * daemon killed with a copy on its way in t0520) is brought within
	 * it before anything is served */
	rc = open_store(&st, "c4", 1u << 20, NULL, NULL, 0);
	nx_store_stats(st, &s);
	ok(rc == 0 && s.cache_bytes <= s.cache_limit && s.evictions > 0,
	   "reopened with a 1 MiB limit: cache_bytes %llu, %llu evictions at open",
	   (unsigned long long)s.cache_bytes, (unsigned long long)s.evictions);
	if (rc == 0)
		nx_store_close(st);
}

struct reader {
	struct nx_store *st;
	struct nx_spath *p;
	uint32_t idx;
	pthread_barrier_t *bar;
	int rc;
	uint8_t *data;
	size_t len;
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;

	pthread_barrier_wait(r->bar);
	r->rc = read_entry(r->st, r->p, r->idx, 131072, &r->data, &r->len);
	return NULL;
}

static void test_threads_corrupt(void)
{
	struct nx_store *st;
	struct nx_spath *p;
	const struct nx_toc *toc = tp_main.toc;
	int64_t big = find_entry(toc, "big.bin");
	struct reader rd[8];
	pthread_t th[8];
	pthread_barrier_t bar;
	uint32_t first, last;
	int all_eio = 1, cached = 0;

	src.corrupt = 1;
	memcpy(src.corrupt_digest, tp_main.nar_digest, NX_SHA256_LEN);
	nx_toc_frames_for(toc, toc->entries[big].off, 1, &first, &last);
	src.corrupt_off = toc->frames[first].coff + 10;
	if (open_store(&st, "c7", 0, NULL, NULL, 0) ||
	    nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p)) {
		ok(0, "open c7");
		return;
	}
	pthread_barrier_init(&bar, NULL, 8);
	for (int i = 0; i < 8; i++) {
		rd[i] = (struct reader){ .st = st, .p = p, .idx = (uint32_t)big, .bar = &bar };
		pthread_create(&th[i], NULL, reader_main, &rd[i]);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		if (rd[i].rc != -EIO)
			all_eio = 0;
		if (rd[i].rc == 0)
			free(rd[i].data);
	}
	ok(all_eio, "8 threads on a corrupted frame all get EIO");
	for (uint32_t i = 0; i < toc->nframes; i++)
		cached += chunk_exists("c7", toc->frames[i].sha256);
	is_int(cached, 0, "nothing cached from the failed run");
	pthread_barrier_destroy(&bar);
	nx_store_close(st);
	src.corrupt = 0;
}

static void test_threads(void)
{
	struct nx_store *st;
	struct nx_spath *p;
	const struct nx_toc *toc = tp_main.toc;
	int64_t big = find_entry(toc, "big.bin");
	struct reader rd[8];
	pthread_t th[8];
	pthread_barrier_t bar;
	uint32_t first, last;
	char full[PATH_MAX * 2];
	uint8_t *want;
	size_t wlen;
	int rc, good = 1, once = 1;

	src.frame_counts = calloc(toc->nframes, sizeof(unsigned));
	src.watch_toc = toc;
	memcpy(src.watch_digest, tp_main.nar_digest, NX_SHA256_LEN);
	rc = open_store(&st, "c5", 0, NULL, NULL, 0);
	is_int(rc, 0, "open c5");
	rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
	is_int(rc, 0, "lookup");
	if (rc)
		return;
	snprintf(full, sizeof(full), "%s/big.bin", tree);
	want = slurp(full, &wlen);
	pthread_barrier_init(&bar, NULL, 8);
	for (int i = 0; i < 8; i++) {
		rd[i] = (struct reader){ .st = st, .p = p, .idx = (uint32_t)big, .bar = &bar };
		pthread_create(&th[i], NULL, reader_main, &rd[i]);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		if (rd[i].rc || rd[i].len != wlen || memcmp(rd[i].data, want, wlen) != 0)
			good = 0;
		if (rd[i].rc == 0)
			free(rd[i].data);
	}
	ok(good, "8 threads read big.bin correctly");
	nx_toc_frames_for(toc, toc->entries[big].off, toc->entries[big].size, &first, &last);
	for (uint32_t i = first; i <= last; i++) {
		if (src.frame_counts[i] != 1) {
			diag("frame %u fetched %u times", i, src.frame_counts[i]);
			once = 0;
		}
	}
	ok(once, "each of frames %u-%u fetched exactly once", first, last);
	pthread_barrier_destroy(&bar);
	free(want);
	nx_store_close(st);
	free(src.frame_counts);
	src.frame_counts = NULL;
}

struct looker {
	struct nx_store *st;
	pthread_barrier_t *bar;
	struct nx_spath *p;
	int rc;
};

static void *looker_main(void *arg)
{
	struct looker *l = arg;

	pthread_barrier_wait(l->bar);
	l->rc = nx_store_lookup(l->st, tp_other.base, strlen(tp_other.base), &l->p);
	return NULL;
}

static void test_concurrent_lookup(void)
{
	struct nx_store *st;
	struct looker lk[6];
	pthread_t th[6];
	pthread_barrier_t bar;
	struct nx_store_stats s;
	int good = 1;

	if (open_store(&st, "c6", 0, NULL, NULL, 0))
		return;
	src_reset_counters();
	pthread_barrier_init(&bar, NULL, 6);
	for (int i = 0; i < 6; i++) {
		lk[i] = (struct looker){ .st = st, .bar = &bar };
		pthread_create(&th[i], NULL, looker_main, &lk[i]);
	}
	for (int i = 0; i < 6; i++) {
		pthread_join(th[i], NULL);
		if (lk[i].rc || lk[i].p != lk[0].p)
			good = 0;
	}
	ok(good, "6 concurrent lookups give one path");
	nx_store_stats(st, &s);
	is_int(s.paths_loaded, 1, "loaded once");
	is_int(src.requests, 2, "one manifest and one toc request");
	pthread_barrier_destroy(&bar);
	nx_store_close(st);
}

static int open_store_budget(struct nx_store **st, const char *sub, uint64_t budget)
{
	char dir[PATH_MAX];
	struct nx_store_opts o = { 0 };

	snprintf(dir, sizeof(dir), "%s/%s", tmpdir, sub);
	o.cache_dir = dir;
	o.meta_budget = budget;
	return nx_store_open(st, &o, &source);
}

/* A budget smaller than any path: each one is unloaded as soon as it is
 * unreferenced, and comes back by name or by id, from the cache. */
static void test_budget(void)
{
	struct nx_store *st;
	struct nx_spath *p, *q, *r;
	struct nx_store_stats s;
	uint64_t id;
	int rc, type;

	if (open_store_budget(&st, "b1", 1))
		return;
	rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
	is_int(rc, 0, "budget: lookup main");
	if (rc) {
		nx_store_close(st);
		return;
	}
	id = nx_spath_id(p);
	nx_store_stats(st, &s);
	ok(s.meta_bytes > 1, "budget: over the budget while referenced (%llu bytes)",
	   (unsigned long long)s.meta_bytes);
	is_int(s.paths_in_memory, 1, "budget: one path in memory");
	is_int(s.paths_unloaded, 0, "budget: a referenced path stays");
	is_int(compare_all(st, p, tree, 131072, NULL), 0, "budget: main reads while held");
	nx_spath_put(p);
	nx_store_stats(st, &s);
	is_int(s.paths_unloaded, 1, "budget: unloaded at the last put");
	is_int(s.paths_in_memory, 0, "budget: none in memory");
	is_int(nx_store_peek(st, tp_main.base, strlen(tp_main.base), &id, &type, &q), 0,
	       "budget: peek knows it");
	ok(q == NULL && type == NX_NODE_DIRECTORY, "budget: peek does not load it");
	src_reset_counters();
	is_int(nx_store_by_id(st, id, &q), 0, "budget: by id loads it again");
	ok(q == p, "budget: the same header");
	is_int(src.requests, 0, "budget: reloaded from the cache, 0 requests");
	is_int(compare_all(st, q, tree, 77777, NULL), 0, "budget: reads after the reload");
	rc = nx_store_lookup(st, tp_other.base, strlen(tp_other.base), &r);
	is_int(rc, 0, "budget: lookup other while main is held");
	nx_store_stats(st, &s);
	is_int(s.paths_in_memory, 2, "budget: both referenced, both loaded");
	nx_spath_put(q);
	if (rc == 0)
		nx_spath_put(r);
	nx_store_stats(st, &s);
	is_int(s.paths_in_memory, 0, "budget: both unloaded once unreferenced");
	is_int(s.paths_reloaded, 1, "budget: one reload counted");
	is_int(nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &q), 0,
	       "budget: by name again");
	ok(nx_spath_id(q) == id, "budget: same id");
	nx_spath_put(q);
	nx_store_close(st);

	/* no cache at all (a tool's read-only look): a reload fetches the
	 * manifest by the digest it had, never by its tag */
	{
		char dir[PATH_MAX];
		struct nx_store_opts o = { 0 };

		snprintf(dir, sizeof(dir), "%s/none/here", tmpdir);
		o.cache_dir = dir;
		o.readonly_cache = 1;
		o.meta_budget = 1;
		if (nx_store_open(&st, &o, &source) == 0) {
			if (nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p) == 0) {
				id = nx_spath_id(p);
				nx_spath_put(p);
				src_reset_counters();
				is_int(nx_store_by_id(st, id, &q), 0, "budget, no cache: by id");
				is_int(src.requests, 2, "budget, no cache: manifest by digest, toc");
				is_int(compare_all(st, q, tree, 131072, NULL), 0,
				       "budget, no cache: reads after the reload");
				nx_spath_put(q);
			}
			nx_store_close(st);
		}
	}

	/* a budget that holds everything: nothing unloads */
	if (open_store_budget(&st, "b1", 0))
		return;
	if (nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p) == 0)
		nx_spath_put(p);
	nx_store_stats(st, &s);
	is_int(s.paths_in_memory, 1, "default budget: an unreferenced path stays loaded");
	is_int(s.meta_budget, NX_META_BUDGET_DEFAULT, "default budget is 256 MiB");
	nx_store_close(st);
}

struct churner {
	struct nx_store *st;
	uint64_t ids[2];
	int bad;
};

static void *churner_main(void *arg)
{
	struct churner *c = arg;
	const struct tpath *tp[2] = { &tp_main, &tp_other };

	for (int i = 0; i < 200; i++) {
		struct nx_spath *p, *q;
		int k = i % 2, rc;

		if (i % 3 == 0)
			rc = nx_store_by_id(c->st, c->ids[k], &p);
		else
			rc = nx_store_lookup(c->st, tp[k]->base, strlen(tp[k]->base), &p);
		if (rc) {
			c->bad++;
			continue;
		}
		if (nx_spath_toc(p)->nentries != tp[k]->toc->nentries)
			c->bad++;
		nx_spath_get(p);
		q = p;
		if (compare_all(c->st, p, tree, 262144, NULL) != 0)
			c->bad++;
		nx_spath_put(p);
		nx_spath_put(q);
	}
	return NULL;
}

/* Lookups, reads and puts on 4 threads over a budget that unloads at every
 * last put (ThreadSanitizer runs this file too). */
static void test_budget_threads(void)
{
	struct nx_store *st;
	struct churner c[4];
	pthread_t th[4];
	struct nx_spath *p;
	struct nx_store_stats s;
	uint64_t ids[2] = { 0, 0 };
	int bad = 0;

	if (open_store_budget(&st, "b2", 1))
		return;
	if (nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p) == 0) {
		ids[0] = nx_spath_id(p);
		nx_spath_put(p);
	}
	if (nx_store_lookup(st, tp_other.base, strlen(tp_other.base), &p) == 0) {
		ids[1] = nx_spath_id(p);
		nx_spath_put(p);
	}
	for (int i = 0; i < 4; i++) {
		c[i] = (struct churner){ .st = st, .ids = { ids[0], ids[1] } };
		pthread_create(&th[i], NULL, churner_main, &c[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		bad += c[i].bad;
	}
	is_int(bad, 0, "budget: 4 threads x 200 lookups/by-id, reads and puts, all right");
	nx_store_stats(st, &s);
	is_int(s.paths_in_memory, 0, "budget: all unloaded at the end");
	ok(s.paths_reloaded > 0, "budget: reloads happened (%llu, %llu unloads)",
	   (unsigned long long)s.paths_reloaded, (unsigned long long)s.paths_unloaded);
	nx_store_close(st);
}

/* The 40 bits an id starts from, as cache/ takes them (test knob: fewer). */
static uint64_t want_id(const char *base, unsigned bits)
{
	uint8_t h[20];
	uint64_t id = 0;

	nx_nix32_decode(base, NX_HASH_LEN, h, 20);
	for (int i = 0; i < 5; i++)
		id |= (uint64_t)h[i] << (8 * i);
	id &= (UINT64_C(1) << bits) - 1;
	return id ? id : 1;
}

/* Colliding ids are settled once, in the cache: the same in any load
 * order, in a new store, and by id alone. */
static void test_id_collision(void)
{
	const struct tpath *tp[3] = { &tp_main, &tp_unsigned, &tp_other };
	uint64_t first[3] = { 0 }, again[3] = { 0 };
	struct nx_spath *p;
	struct nx_store *st;
	unsigned bits = 0;
	char env[8];
	int good = 1, order[3] = { 2, 0, 1 };

	for (unsigned b = 2; b <= 16 && !bits; b++) {
		uint64_t w0 = want_id(tp[0]->base, b), w1 = want_id(tp[1]->base, b),
			 w2 = want_id(tp[2]->base, b);

		if (w0 == w1 || w0 == w2 || w1 == w2)
			bits = b;
	}
	ok(bits != 0, "ids: %u bits make two of three paths collide", bits);
	if (!bits)
		return;
	snprintf(env, sizeof(env), "%u", bits);
	setenv("NIXOCI_TEST_ID_BITS", env, 1);
	if (open_store(&st, "ids", 0, NULL, NULL, 0) == 0) {
		for (int i = 0; i < 3; i++) {
			if (nx_store_lookup(st, tp[i]->base, strlen(tp[i]->base), &p) == 0) {
				first[i] = nx_spath_id(p);
				nx_spath_put(p);
			}
		}
		nx_store_close(st);
	}
	ok(first[0] && first[1] && first[2] && first[0] != first[1] && first[0] != first[2] &&
	   first[1] != first[2], "ids: three distinct ids (%llx %llx %llx)",
	   (unsigned long long)first[0], (unsigned long long)first[1],
	   (unsigned long long)first[2]);
	ok(first[0] != want_id(tp[0]->base, bits) || first[1] != want_id(tp[1]->base, bits) ||
	   first[2] != want_id(tp[2]->base, bits), "ids: one was probed away from its bits");
	/* a restart, loading in another order */
	if (open_store(&st, "ids", 0, NULL, NULL, 0) == 0) {
		for (int j = 0; j < 3; j++) {
			int i = order[j];

			if (nx_store_lookup(st, tp[i]->base, strlen(tp[i]->base), &p) == 0) {
				again[i] = nx_spath_id(p);
				nx_spath_put(p);
			}
		}
		nx_store_close(st);
	}
	for (int i = 0; i < 3; i++)
		if (again[i] != first[i])
			good = 0;
	ok(good, "ids: the same after a restart in another order");
	/* a successor that never looked them up: by id alone */
	good = 1;
	if (open_store(&st, "ids", 0, NULL, NULL, 0) == 0) {
		for (int i = 2; i >= 0; i--) {
			if (nx_store_by_id(st, first[i], &p) != 0 ||
			    strcmp(nx_spath_base(p), tp[i]->base) != 0)
				good = 0;
			else
				nx_spath_put(p);
		}
		is_int(nx_store_by_id(st, 0, &p), -ENOENT, "ids: 0 is no id");
		nx_store_close(st);
	} else {
		good = 0;
	}
	ok(good, "ids: by id alone in a new store, each the right path");
	unsetenv("NIXOCI_TEST_ID_BITS");
}

static void test_trust(void)
{
	struct nx_store *st;
	struct nx_spath *p;
	struct nx_store_stats s;
	int rc;

	rc = open_store(&st, "t1", 0, NULL, &pubkey, 1);
	is_int(rc, 0, "open with a trusted key");
	if (rc)
		return;
	is_int(nx_store_lookup(st, tp_unsigned.base, strlen(tp_unsigned.base), &p), -EACCES,
	       "unsigned path refused");
	is_int(nx_store_lookup(st, tp_tocsig.base, strlen(tp_tocsig.base), &p), 0,
	       "toc-signed path accepted");
	nx_store_stats(st, &s);
	is_int(s.frames_fetched, 0, "toc-signed: lazy (no frames fetched)");
	is_int(nx_store_lookup(st, tp_narsig.base, strlen(tp_narsig.base), &p), 0,
	       "narinfo-signed path accepted");
	nx_store_stats(st, &s);
	is_int(s.frames_fetched, tp_narsig.toc->nframes,
	       "narinfo-signed: every frame fetched and verified");
	if (nx_store_lookup(st, tp_narsig.base, strlen(tp_narsig.base), &p) == 0)
		is_int(compare_all(st, p, tree, 131072, NULL), 0, "narinfo-signed path reads");
	nx_store_close(st);

	/* verification remembered: a warm reopen does not redo it */
	src_reset_counters();
	rc = open_store(&st, "t1", 0, NULL, &pubkey, 1);
	is_int(nx_store_lookup(st, tp_narsig.base, strlen(tp_narsig.base), &p), 0,
	       "narinfo-signed path accepted again");
	is_int(src.requests, 0, "without fetching anything");
	nx_store_close(st);

	/* a key of the same name but other bytes is not trusted */
	rc = open_store(&st, "t2", 0, NULL, &otherkey, 1);
	is_int(nx_store_lookup(st, tp_tocsig.base, strlen(tp_tocsig.base), &p), -EACCES,
	       "signature by an untrusted key refused (toc)");
	is_int(nx_store_lookup(st, tp_narsig.base, strlen(tp_narsig.base), &p), -EACCES,
	       "signature by an untrusted key refused (narinfo)");
	nx_store_close(st);

	/* narinfo-signed, but the TOC does not describe the NAR */
	rc = open_store(&st, "t4", 0, NULL, &pubkey, 1);
	is_int(nx_store_lookup(st, tp_badtoc.base, strlen(tp_badtoc.base), &p), -EACCES,
	       "narinfo-signed with a lying TOC refused");
	src_reset_counters();
	is_int(nx_store_lookup(st, tp_badtoc.base, strlen(tp_badtoc.base), &p), -EACCES,
	       "refusal remembered");
	is_int(src.requests, 0, "without fetching again");
	nx_store_close(st);

	/* narinfo-signed, but the registry serves a corrupted frame */
	src.corrupt = 1;
	memcpy(src.corrupt_digest, tp_narsig.nar_digest, NX_SHA256_LEN);
	src.corrupt_off = 100;
	rc = open_store(&st, "t3", 0, NULL, &pubkey, 1);
	rc = nx_store_lookup(st, tp_narsig.base, strlen(tp_narsig.base), &p);
	ok(rc == -EIO || rc == -EACCES, "narinfo-signed with a bad frame refused (%d)", rc);
	nx_store_close(st);
	src.corrupt = 0;
}

static void test_closure(void)
{
	struct nx_index ix = { 0 };
	struct nx_index_entry e[2];
	char *json, ref[NX_DIGEST_STRLEN], *roots[1];
	size_t len;
	uint8_t d[NX_SHA256_LEN];
	struct nx_store *st;
	struct nx_spath *p;
	int rc, n = 0;

	memcpy(e[0].desc.digest, tp_unsigned.man_digest, NX_SHA256_LEN);
	e[0].desc.size = tp_unsigned.man_len;
	e[0].store_path = tp_unsigned.sp;
	memcpy(e[1].desc.digest, tp_tocsig.man_digest, NX_SHA256_LEN);
	e[1].desc.size = tp_tocsig.man_len;
	e[1].store_path = tp_tocsig.sp;
	if (strcmp(e[0].store_path, e[1].store_path) > 0) {
		struct nx_index_entry t = e[0];

		e[0] = e[1];
		e[1] = t;
	}
	roots[0] = tp_unsigned.sp;
	ix.entries = e;
	ix.nentries = 2;
	ix.roots = roots;
	ix.nroots = 1;
	rc = nx_index_build(&ix, &json, &len);
	is_int(rc, 0, "build a closure index");
	if (rc)
		return;
	src_add_manifest("myclosure", json, len);
	nx_sha256(json, len, d);
	nx_digest_format(d, ref);
	src_add_manifest(ref, json, len);
	free(json);

	rc = open_store(&st, "k1", 0, ref, &pubkey, 1);
	is_int(rc, 0, "open pinned closure");
	if (rc)
		return;
	is_int(nx_store_lookup(st, tp_unsigned.base, strlen(tp_unsigned.base), &p), 0,
	       "pinned closure: unsigned path accepted");
	is_int(nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p), -ENOENT,
	       "pinned closure: path outside the closure is ENOENT");
	{
		is_int(nx_store_list(st, count_cb, &n), 0, "list closure");
		is_int(n, 2, "lists both closure paths");
	}
	nx_store_close(st);

	rc = open_store(&st, "k2", 0, "myclosure", &pubkey, 1);
	is_int(rc, 0, "open closure by tag");
	if (rc)
		return;
	is_int(nx_store_lookup(st, tp_unsigned.base, strlen(tp_unsigned.base), &p), -EACCES,
	       "closure by tag with keys: unsigned path refused");
	is_int(nx_store_lookup(st, tp_tocsig.base, strlen(tp_tocsig.base), &p), 0,
	       "closure by tag with keys: toc-signed path accepted");
	nx_store_close(st);

	rc = open_store(&st, "k3", 0, "nosuchclosure", NULL, 0);
	is_int(rc, -ENOENT, "missing closure tag: ENOENT");
}

/*
 * Chunks are recorded in LMDB by batch, after an fsync. A process that dies
 * between the rename of its chunk files and their batch's commit must leave a
 * cache that reopens and reads back right; it may fetch again what it had not
 * recorded, but never more than once more.
 */
static void test_crash_before_commit(void)
{
	struct nx_store *st;
	struct nx_store_stats s;
	struct nx_spath *p;
	int rc, status = -1;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		/* the child prints no TAP: it reads, then dies without closing */
		rc = open_store(&st, "c5", 0, NULL, NULL, 0);
		if (rc == 0)
			rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
		if (rc == 0)
			rc = compare_all(st, p, tree, 131072, NULL);
		_exit(rc == 0 ? 0 : 1);
	}
	ok(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	   WEXITSTATUS(status) == 0, "a process reads every file and dies without closing");
	rc = open_store(&st, "c5", 0, NULL, NULL, 0);
	is_int(rc, 0, "the cache it left opens");
	if (rc)
		return;
	rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
	is_int(rc, 0, "lookup");
	if (rc == 0) {
		is_int(compare_all(st, p, tree, 131072, NULL), 0, "every file reads back");
		is_int(compare_all(st, p, tree, 65536, NULL), 0, "and again");
	}
	nx_store_stats(st, &s);
	ok(s.frames_fetched <= content_frames(tp_main.toc),
	   "what was not recorded is fetched once (%llu of %u frames)",
	   (unsigned long long)s.frames_fetched, content_frames(tp_main.toc));
	is_int(s.verify_failures, 0, "no verify failures");
	nx_store_close(st);

	rc = open_store(&st, "c5", 0, NULL, NULL, 0);
	is_int(rc, 0, "reopen after a clean close");
	if (rc)
		return;
	if (nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p) == 0)
		is_int(compare_all(st, p, tree, 131072, NULL), 0, "every file from the cache");
	nx_store_stats(st, &s);
	is_int(s.frames_fetched, 0, "a clean close recorded everything: 0 frames fetched");
	nx_store_close(st);
}

static void test_damaged(void)
{
	char path[PATH_MAX * 2];
	uint8_t junk[8192];
	struct nx_store *st;
	int rc;

	snprintf(path, sizeof(path), "%s/bad", tmpdir);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/bad/index.mdb", tmpdir);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/bad/index.mdb/data.mdb", tmpdir);
	memset(junk, 0x5a, sizeof(junk));
	write_file(path, junk, sizeof(junk), 0644);
	rc = open_store(&st, "bad", 0, NULL, NULL, 0);
	ok(rc < 0, "damaged lmdb: open fails (%d)", rc);
	if (rc == 0)
		nx_store_close(st);

	/* a cache path under a regular file cannot be created */
	snprintf(path, sizeof(path), "%s/afile", tmpdir);
	write_file(path, "x", 1, 0644);
	rc = open_store(&st, "afile/sub", 0, NULL, NULL, 0);
	ok(rc < 0, "uncreatable cache dir: open fails (%d)", rc);
	if (rc == 0)
		nx_store_close(st);
}

/* ---------------------------------------------- files.c: passthrough copies */

/* DIR/files/xx/<manifest hex>-<entry hex>: where files.c keeps the copy. */
static void copy_path(const char *sub, const struct nx_spath *p, uint32_t entry, char *out,
		      size_t cap)
{
	char hex[2 * NX_SHA256_LEN + 1];

	nx_hex(p->man_digest, NX_SHA256_LEN, hex);
	snprintf(out, cap, "%s/%s/files/%.2s/%s-%08x", tmpdir, sub, hex, hex, entry);
}

/* Pins the copy of @entry, waiting up to 10 s for the worker to make it. */
static int pin_wait(struct nx_store *st, struct nx_spath *p, uint32_t entry, int *fd)
{
	for (int i = 0; i < 1000; i++) {
		if (nx_store_file_pin(st, p, entry, fd) == 0)
			return 0;
		usleep(10000);
	}
	return -ETIMEDOUT;
}

/* The copy behind @fd holds exactly the bytes of @rel in the tree. */
static int fd_matches(int fd, const char *rel)
{
	char full[PATH_MAX * 2];
	uint8_t *want, *got;
	size_t wlen;
	int same;

	snprintf(full, sizeof(full), "%s/%s", tree, rel);
	want = slurp(full, &wlen);
	got = malloc(wlen + 1);
	same = want && got && pread(fd, got, wlen + 1, 0) == (ssize_t)wlen &&
	       memcmp(want, got, wlen) == 0;
	free(want);
	free(got);
	return same;
}

static void test_files(void)
{
	char path[PATH_MAX * 2];
	struct nx_store_stats s;
	struct nx_store *st;
	struct nx_spath *p;
	uint8_t *buf;
	size_t len;
	int64_t med, big;
	int fd = -1, fd2 = -1, rc;

	rc = open_store(&st, "f1", 64u << 20, NULL, NULL, 0);
	is_int(rc, 0, "files: open f1 (64 MiB)");
	if (rc)
		return;
	rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
	is_int(rc, 0, "files: lookup");
	if (rc) {
		nx_store_close(st);
		return;
	}
	/* held (nx_spath_put before each close): its TOC is used throughout */
	med = find_entry(p->toc, "medium.txt");
	big = find_entry(p->toc, "big.bin");
	ok(med > 0 && big > 0, "files: the test files are in the TOC");

	/* no frame cached: no copy, and none queued (a copy never fetches) */
	is_int(nx_store_file_pin(st, p, (uint32_t)med, &fd), -ENOENT, "no copy before a read");
	usleep(200000);
	is_int(nx_store_file_pin(st, p, (uint32_t)med, &fd), -ENOENT,
	       "and none made while its frames are not cached");
	nx_store_stats(st, &s);
	is_int(s.copy_bytes, 0, "copy_bytes 0");

	/* read whole: the next pin queues a copy, a later one gets it */
	is_int(read_entry(st, p, (uint32_t)med, 65536, &buf, &len), 0, "read medium.txt");
	free(buf);
	src_reset_counters();
	nx_store_file_want(st, p, (uint32_t)med);
	is_int(pin_wait(st, p, (uint32_t)med, &fd), 0, "a copy is made once every frame is cached");
	ok(fd >= 0 && fd_matches(fd, "medium.txt"), "the copy holds exactly the file's bytes");
	is_int(src.requests, 0, "making it fetched nothing");
	nx_store_stats(st, &s);
	ok(s.copy_bytes >= 700000, "copy_bytes counts it (%llu)", (unsigned long long)s.copy_bytes);

	/* a second copy, unpinned at once */
	is_int(read_entry(st, p, (uint32_t)big, 131072, &buf, &len), 0, "read big.bin");
	free(buf);
	nx_store_file_want(st, p, (uint32_t)big);
	is_int(pin_wait(st, p, (uint32_t)big, &fd2), 0, "big.bin copied too");
	ok(fd2 >= 0 && fd_matches(fd2, "big.bin"), "its copy is right");
	if (fd2 >= 0) {
		close(fd2);
		nx_store_file_unpin(st, p, (uint32_t)big);
	}

	/* eviction: copies go first, but never one an open file uses */
	nx_files_evict(st, 0);
	copy_path("f1", p, (uint32_t)med, path, sizeof(path));
	ok(access(path, F_OK) == 0, "the pinned copy survives eviction");
	ok(fd >= 0 && fd_matches(fd, "medium.txt"), "and its open descriptor reads right");
	copy_path("f1", p, (uint32_t)big, path, sizeof(path));
	ok(access(path, F_OK) != 0, "the unpinned copy was evicted");
	nx_store_stats(st, &s);
	ok(s.copy_bytes >= 700000 && s.copy_bytes < 3300000,
	   "copy_bytes counts only the pinned one (%llu)", (unsigned long long)s.copy_bytes);
	if (fd >= 0) {
		close(fd);
		nx_store_file_unpin(st, p, (uint32_t)med);
	}
	nx_files_evict(st, 0);
	copy_path("f1", p, (uint32_t)med, path, sizeof(path));
	ok(access(path, F_OK) != 0, "unpinned, it goes too");
	is_int(nx_files_bytes(st), 0, "no copy counted");

	/* copied again, then damaged while the store is closed */
	nx_store_file_want(st, p, (uint32_t)med);
	is_int(pin_wait(st, p, (uint32_t)med, &fd), 0, "copied again");
	if (fd >= 0) {
		close(fd);
		nx_store_file_unpin(st, p, (uint32_t)med);
	}
	nx_spath_put(p);
	nx_store_close(st);
	rc = truncate(path, 100);
	is_int(rc, 0, "truncate the copy (a crash, a damaged disk)");
	snprintf(path, sizeof(path), "%s/f1/files/ab", tmpdir);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/f1/files/ab/not-a-copy", tmpdir);
	write_file(path, "junk", 4, 0600);

	rc = open_store(&st, "f1", 64u << 20, NULL, NULL, 0);
	is_int(rc, 0, "reopen f1");
	if (rc)
		return;
	ok(access(path, F_OK) != 0, "a file that is not a copy is removed at open");
	src_reset_counters();
	rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
	is_int(rc, 0, "lookup after reopen");
	if (rc == 0) {
		is_int(nx_store_file_pin(st, p, (uint32_t)med, &fd), -ENOENT,
		       "a copy of the wrong size is not used");
		copy_path("f1", p, (uint32_t)med, path, sizeof(path));
		is_int(pin_wait(st, p, (uint32_t)med, &fd), 0, "it is made again from the chunks");
		ok(fd >= 0 && fd_matches(fd, "medium.txt"), "and is right");
		if (fd >= 0) {
			close(fd);
			nx_store_file_unpin(st, p, (uint32_t)med);
		}
		is_int(src.requests, 0, "warm: nothing fetched");
		nx_spath_put(p);
	}
	nx_store_close(st);

	/* warm reopen: the copy is found by the scan, at once */
	rc = open_store(&st, "f1", 64u << 20, NULL, NULL, 0);
	if (rc == 0 && nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p) == 0) {
		is_int(nx_store_file_pin(st, p, (uint32_t)med, &fd), 0,
		       "warm reopen: the copy is there at the first open");
		if (fd >= 0) {
			close(fd);
			nx_store_file_unpin(st, p, (uint32_t)med);
		}
		nx_store_stats(st, &s);
		ok(s.cache_bytes >= s.copy_bytes && s.copy_bytes >= 700000,
		   "counted in cache_bytes after reopen (%llu of %llu)",
		   (unsigned long long)s.copy_bytes, (unsigned long long)s.cache_bytes);
		nx_spath_put(p);
	} else {
		ok(0, "reopen f1 again");
		ok(0, "counted");
	}
	if (rc == 0)
		nx_store_close(st);

	/* a file over an eighth of the cache keeps the normal read path */
	rc = open_store(&st, "f2", 16u << 20, NULL, NULL, 0);
	is_int(rc, 0, "open f2 (16 MiB)");
	if (rc)
		return;
	if (nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p) == 0) {
		if (read_entry(st, p, (uint32_t)big, 131072, &buf, &len) == 0) {
			free(buf);
			nx_store_file_want(st, p, (uint32_t)big);
			usleep(300000);
			is_int(nx_store_file_pin(st, p, (uint32_t)big, &fd), -ENOENT,
			       "3.3 MB of a 16 MiB cache: no copy");
			nx_store_stats(st, &s);
			is_int(s.copy_bytes, 0, "nothing copied");
		}
		nx_spath_put(p);
	}
	nx_store_close(st);
}

/* warm.c: an open's cached chunks are read ahead; never a fetch, once per
 * file, and a close while it runs joins its threads (ASan/TSan check). */
static void test_warm(void)
{
	struct nx_store_stats s;
	struct nx_store *st;
	struct nx_spath *p;
	uint8_t buf[4096];
	size_t got;
	int64_t big, med;
	int rc, i;

	rc = open_store(&st, "w1", 64u << 20, NULL, NULL, 0);
	is_int(rc, 0, "warm: open w1");
	if (rc)
		return;
	rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
	is_int(rc, 0, "warm: lookup");
	if (rc) {
		nx_store_close(st);
		return;
	}
	big = find_entry(p->toc, "big.bin");
	med = find_entry(p->toc, "medium.txt");
	ok(big > 0 && med > 0, "warm: the test files are in the TOC");
	/* two frames of big.bin cached, its first and one in the middle */
	is_int(nx_store_read(st, p, (uint32_t)big, 0, sizeof(buf), buf, &got), 0, "read its start");
	is_int(nx_store_read(st, p, (uint32_t)big, 2u << 20, sizeof(buf), buf, &got), 0,
	       "read at 2 MiB");
	src_reset_counters();
	nx_store_file_warm(st, p, (uint32_t)big);
	for (i = 0; i < 1000; i++) {
		nx_store_stats(st, &s);
		if (s.warm_frames >= 2)
			break;
		usleep(10000);
	}
	nx_store_stats(st, &s);
	is_int(s.warm_files, 1, "one file warmed");
	is_int(s.warm_frames, 2, "its two cached frames, no other");
	is_int(src.requests, 0, "warming fetched nothing");
	nx_store_file_warm(st, p, (uint32_t)big);
	nx_store_file_warm(st, p, (uint32_t)med); /* nothing of it cached */
	usleep(200000);
	nx_store_stats(st, &s);
	is_int(s.warm_files, 1, "a second open of it, and a file not cached, warm nothing");
	is_int(src.requests, 0, "and fetch nothing");
	nx_spath_put(p);
	nx_store_close(st);

	/* a close right after many opens: queued jobs dropped, threads joined */
	rc = open_store(&st, "w1", 64u << 20, NULL, NULL, 0);
	if (rc == 0 && nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p) == 0) {
		for (uint32_t e = 0; e < p->toc->nentries; e++)
			nx_store_file_warm(st, p, e);
		nx_spath_put(p);
		nx_store_close(st);
		ok(1, "close while warming returns");
	} else {
		ok(0, "reopen w1");
		if (rc == 0)
			nx_store_close(st);
	}
}

/* complete.c: a file read to 3/4 gets its missing frames fetched in the
 * background, then a passthrough copy; a close right after queueing
 * returns (the TSan pass runs this). */
static void test_complete(void)
{
	struct nx_store_stats s;
	struct nx_store *st;
	struct nx_spath *p;
	uint8_t *buf = malloc(4u << 20);
	uint32_t first = 0, last = 0;
	size_t got;
	int64_t big;
	int rc, i, fd = -1;

	rc = buf ? open_store(&st, "cpl1", 64u << 20, NULL, NULL, 0) : -ENOMEM;
	is_int(rc, 0, "complete: open cpl1");
	if (rc) {
		free(buf);
		return;
	}
	rc = nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p);
	is_int(rc, 0, "complete: lookup");
	if (rc) {
		nx_store_close(st);
		free(buf);
		return;
	}
	big = find_entry(p->toc, "big.bin");
	ok(big > 0 && nx_toc_frames_for(p->toc, p->toc->entries[big].off, p->toc->entries[big].size,
					&first, &last) == 0, "complete: big.bin and its frames");
	is_int(nx_store_read(st, p, (uint32_t)big, 0, 2700000, buf, &got), 0, "read 2.7 MB");
	src_reset_counters();
	nx_store_file_want(st, p, (uint32_t)big);
	for (i = 0; i < 1000; i++) {
		nx_store_stats(st, &s);
		if (s.complete_files >= 1 && nx_store_file_pin(st, p, (uint32_t)big, &fd) == 0)
			break;
		usleep(10000);
	}
	nx_store_stats(st, &s);
	is_int(s.complete_files, 1, "big.bin completed");
	ok(s.complete_bytes > 0 && s.complete_bytes < 1000000, "its missing frames fetched (%llu bytes)",
	   (unsigned long long)s.complete_bytes);
	ok(fd >= 0, "and copied for passthrough");
	if (fd >= 0) {
		struct stat sb;

		ok(fstat(fd, &sb) == 0 && sb.st_size == 3300000, "the copy holds the whole file");
		close(fd);
		nx_store_file_unpin(st, p, (uint32_t)big);
	}
	nx_spath_put(p);
	nx_store_close(st);

	/* a close right after queueing: dropped or cancelled, joined */
	rc = open_store(&st, "cpl2", 64u << 20, NULL, NULL, 0);
	if (rc == 0 && nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p) == 0) {
		if (big > 0 && nx_store_read(st, p, (uint32_t)big, 0, 2700000, buf, &got) == 0)
			nx_store_file_want(st, p, (uint32_t)big);
		nx_spath_put(p);
		nx_store_close(st);
		ok(1, "close while completing returns");
	} else {
		ok(0, "open cpl2");
		if (rc == 0)
			nx_store_close(st);
	}
	free(buf);
}

/* Metadata blobs and tag records are saved off the lookup path (db.c):
 * found at once, durable after close. */
static void test_meta_later(void)
{
	static const uint8_t body[] = "a metadata blob, saved without a commit";
	uint8_t d[NX_SHA256_LEN], key[NX_HASH_LEN], val[16] = "tag record", got[16];
	struct nx_store *st;
	uint8_t *b = NULL;
	size_t len = 0, vlen = 0;
	int rc;

	nx_sha256(body, sizeof(body), d);
	memset(key, 'k', sizeof(key));
	rc = open_store(&st, "m1", 0, NULL, NULL, 0);
	is_int(rc, 0, "meta: open m1");
	if (rc)
		return;
	nx_blob_save(st, d, body, sizeof(body));
	nx_db_put_later(st, st->dbi_tags, key, sizeof(key), val, sizeof(val));
	rc = nx_blob_load(st, d, 4096, &b, &len);
	ok(rc == 0 && len == sizeof(body) && memcmp(b, body, len) == 0,
	   "a blob saved a moment ago loads at once");
	free(b);
	b = NULL;
	nx_store_close(st);
	rc = open_store(&st, "m1", 0, NULL, NULL, 0);
	is_int(rc, 0, "reopen m1");
	if (rc)
		return;
	rc = nx_blob_load(st, d, 4096, &b, &len);
	ok(rc == 0 && len == sizeof(body) && memcmp(b, body, len) == 0,
	   "it was recorded by the close");
	free(b);
	rc = nx_db_get(st, st->dbi_tags, key, sizeof(key), got, sizeof(got), &vlen);
	ok(rc == 0 && vlen == sizeof(val) && memcmp(got, val, vlen) == 0,
	   "the deferred record was written by the close");
	nx_store_close(st);
}

/* ------------------------------------------- shared requests (frames.c) */

struct bgwalk {
	struct nx_store *st;
	struct nx_spath *p;
	uint32_t first, last;
	int rc;
};

/* A readahead worker's walk: background, and its requests may be held. */
static void *bgwalk_main(void *arg)
{
	struct bgwalk *b = arg;
	const struct nx_walk_ops ops = { .background = 1 };

	nx_walk_deferrable = 1;
	b->rc = nx_frames_walk(b->st, b->p, b->first, b->last, NX_BATCH_BYTES, &ops, NULL);
	return NULL;
}

struct grab {
	const struct nx_toc *toc;
	uint32_t first;
	uint8_t *buf;
};

static int grab_data(void *ctx, uint32_t i, const uint8_t *buf, size_t len)
{
	struct grab *g = ctx;

	memcpy(g->buf + (g->toc->frames[i].uoff - g->toc->frames[g->first].uoff), buf, len);
	return 0;
}

static int grab_file(void *ctx, uint32_t i, int fd)
{
	struct grab *g = ctx;
	const struct nx_toc_frame *f = &g->toc->frames[i];

	return nx_pread_all(fd, g->buf + (f->uoff - g->toc->frames[g->first].uoff), f->ulen, 0);
}

/* 1 once a walk holds a request (polled: the hold is 5 s here) */
static int wait_held(struct nx_store *st)
{
	for (int n = 0; n < 10000; n++) {
		int held;

		pthread_mutex_lock(&st->lock);
		held = st->sendq != NULL;
		pthread_mutex_unlock(&st->lock);
		if (held)
			return 1;
		usleep(1000);
	}
	return 0;
}

/* A background walk holds its claimed frames [first + 1, last] of big.bin
 * as a request; a read of frame first (a run that ends where the held one
 * begins) joins it in front and has it sent at once: one request for both
 * runs, every frame fetched once, the read's bytes right. With the read's
 * frame corrupted: the read gets EIO (its own retry fails too), the
 * background walk gives up its frames, nothing is cached. */
static void test_shared(int corrupt)
{
	struct nx_store *st;
	struct nx_spath *p;
	const struct nx_toc *toc = tp_main.toc;
	int64_t big = find_entry(toc, "big.bin");
	const struct nx_walk_ops ops = { .data = grab_data, .file = grab_file };
	struct bgwalk b;
	struct grab g;
	struct nx_store_stats s;
	pthread_t th;
	uint32_t first, last;
	uint64_t req0;
	char full[PATH_MAX * 2], sub[8];
	uint8_t *want;
	size_t wlen;
	int rc, cached = 0, once = 1;

	nx_toc_frames_for(toc, toc->entries[big].off, toc->entries[big].size, &first, &last);
	if (last < first + 2) {
		ok(0, "big.bin has at least three frames");
		return;
	}
	snprintf(sub, sizeof(sub), "c1%d", corrupt);
	setenv("NIXOCI_TEST_SEND_HOLD_MS", "5000", 1);
	if (corrupt) {
		src.corrupt = 1;
		memcpy(src.corrupt_digest, tp_main.nar_digest, NX_SHA256_LEN);
		src.corrupt_off = toc->frames[first].coff + 10;
	}
	src.frame_counts = calloc(toc->nframes, sizeof(unsigned));
	src.watch_toc = toc;
	memcpy(src.watch_digest, tp_main.nar_digest, NX_SHA256_LEN);
	if (open_store(&st, sub, 0, NULL, NULL, 0) ||
	    nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &p)) {
		ok(0, "open %s", sub);
		return;
	}
	req0 = src.requests;
	b = (struct bgwalk){ .st = st, .p = p, .first = first + 1, .last = last };
	pthread_create(&th, NULL, bgwalk_main, &b);
	ok(wait_held(st), "%s: the background walk holds its run", sub);
	g = (struct grab){ .toc = toc, .first = first, .buf = malloc(toc->frames[first].ulen) };
	rc = nx_frames_walk(st, p, first, first, NX_BATCH_BYTES, &ops, &g);
	pthread_join(th, NULL);
	nx_store_stats(st, &s);
	snprintf(full, sizeof(full), "%s/big.bin", tree);
	want = slurp(full, &wlen);
	if (!corrupt) {
		uint64_t skip = toc->entries[big].off - toc->frames[first].uoff;

		is_int(rc, 0, "%s: the read joins the held request", sub);
		ok(rc == 0 && memcmp(g.buf + skip, want, toc->frames[first].ulen - skip) == 0,
		   "%s: its bytes are right", sub);
		is_int(b.rc, 0, "%s: the background walk succeeds", sub);
		is_int((int)(src.requests - req0), 1, "%s: two runs, one request", sub);
		is_int((int)s.runs_shared, 1, "%s: one run handed to another's request", sub);
		for (uint32_t i = first; i <= last; i++) {
			if (src.frame_counts[i] != 1) {
				diag("frame %u fetched %u times", i, src.frame_counts[i]);
				once = 0;
			}
		}
		ok(once, "%s: each of frames %u-%u fetched exactly once", sub, first, last);
	} else {
		is_int(rc, -EIO, "%s: the read of the corrupted frame gets EIO", sub);
		for (uint32_t i = first; i <= last; i++)
			cached += chunk_exists(sub, toc->frames[i].sha256);
		is_int(cached, 0, "%s: nothing cached from the failed request", sub);
		is_int((int)s.verify_failures, 2, "%s: the shared request and the read's retry failed",
		       sub);
	}
	free(want);
	free(g.buf);
	nx_spath_put(p);
	nx_store_close(st);
	free(src.frame_counts);
	src.frame_counts = NULL;
	src.corrupt = 0;
	unsetenv("NIXOCI_TEST_SEND_HOLD_MS");
}

/* n requests held at once (polled: the hold is 5 s here) */
static int wait_nheld(struct nx_store *st, unsigned want)
{
	for (int k = 0; k < 10000; k++) {
		unsigned n = 0;

		pthread_mutex_lock(&st->lock);
		for (const struct nx_sendq *q = st->sendq; q; q = q->next)
			n++;
		pthread_mutex_unlock(&st->lock);
		if (n >= want)
			return 1;
		usleep(1000);
	}
	return 0;
}

/* A run that fills the gap between a held request of its path and one of
 * another path (same frame numbers, another TOC) joins its own only: the
 * other path's request goes out on its own and its walker gets its frame.
 * (Taking it in lost its claims: that walker waited forever, a78a043.) */
static void test_shared_paths(void)
{
	struct nx_store *st;
	struct nx_spath *a = NULL, *b = NULL;
	const struct nx_toc *toc = tp_main.toc;
	int64_t big = find_entry(toc, "big.bin");
	struct bgwalk w[3];
	pthread_t th[3];
	struct nx_store_stats s;
	uint32_t first, last;
	uint64_t req0;
	int started = 0;

	nx_toc_frames_for(toc, toc->entries[big].off, toc->entries[big].size, &first, &last);
	if (last < first + 2 || tp_alt.toc->nframes != toc->nframes ||
	    memcmp(tp_alt.toc->frames[first + 2].sha256, toc->frames[first + 2].sha256,
		   NX_SHA256_LEN) == 0) {
		ok(0, "two paths of one shape, frames of their own");
		return;
	}
	setenv("NIXOCI_TEST_SEND_HOLD_MS", "5000", 1);
	if (open_store(&st, "c2", 0, NULL, NULL, 0) ||
	    nx_store_lookup(st, tp_main.base, strlen(tp_main.base), &a) ||
	    nx_store_lookup(st, tp_alt.base, strlen(tp_alt.base), &b)) {
		ok(0, "open c2");
		return;
	}
	req0 = src.requests;
	w[0] = (struct bgwalk){ .st = st, .p = a, .first = first, .last = first };
	w[1] = (struct bgwalk){ .st = st, .p = b, .first = first + 2, .last = first + 2 };
	w[2] = (struct bgwalk){ .st = st, .p = a, .first = first + 1, .last = first + 1 };
	for (int i = 0; i < 3; i++) {
		if (pthread_create(&th[i], NULL, bgwalk_main, &w[i]) != 0)
			break;
		started++;
		if (i < 2 && !wait_nheld(st, (unsigned)i + 1))
			break;
	}
	is_int(started, 3, "paths: two held requests, then the run between them");
	for (int i = 0; i < started; i++) {
		struct timespec until;

		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 60;
		if (pthread_timedjoin_np(th[i], NULL, &until) != 0) {
			/* the bug: a walker waiting forever; nothing to clean up */
			printf("Bail out! paths: walk %d still waits after 60 s\n", i);
			fflush(stdout);
			_exit(1);
		}
	}
	nx_store_stats(st, &s);
	ok(w[0].rc == 0 && w[1].rc == 0 && w[2].rc == 0, "paths: every walk succeeds (%d %d %d)",
	   w[0].rc, w[1].rc, w[2].rc);
	is_int((int)s.runs_shared, 1, "paths: only the path's own run joined");
	is_int((int)(src.requests - req0), 2, "paths: one request per path");
	ok(chunk_exists("c2", tp_alt.toc->frames[first + 2].sha256) &&
	   chunk_exists("c2", toc->frames[first + 1].sha256) &&
	   chunk_exists("c2", toc->frames[first].sha256), "paths: each path's frames cached");
	nx_spath_put(a);
	nx_spath_put(b);
	nx_store_close(st);
	unsetenv("NIXOCI_TEST_SEND_HOLD_MS");
}

int main(void)
{
	char cmd[PATH_MAX + 16], alt[300];

	snprintf(tmpdir, sizeof(tmpdir), "/tmp/cache-store-XXXXXX");
	if (!mkdtemp(tmpdir)) {
		printf("Bail out! mkdtemp\n");
		return 1;
	}
	if (getenv("NX_TEST_DEBUG"))
		nx_log_set_level(NX_LOG_DEBUG);
	pthread_mutex_init(&src.lock, NULL);
	make_keys();
	snprintf(tree, sizeof(tree), "%s/tree", tmpdir);
	make_tree(tree, 88172645463325252ull);
	make_path(tree, "main-1.0", SIGN_NONE, &tp_main);
	make_path(tree, "unsigned-1.0", SIGN_NONE, &tp_unsigned);
	make_path(tree, "tocsig-1.0", SIGN_TOC, &tp_tocsig);
	make_path(tree, "narsig-1.0", SIGN_NARINFO, &tp_narsig);
	make_path(tree, "other-1.0", SIGN_NONE, &tp_other);
	make_path(tree, "badtoc-1.0", SIGN_NARINFO_BADTOC, &tp_badtoc);
	snprintf(alt, sizeof(alt), "%s/tree-alt", tmpdir);
	make_tree(alt, 0x9e3779b97f4a7c15ull);
	make_path(alt, "alt-1.0", SIGN_NONE, &tp_alt);
	diag("main path: %u entries, %u frames (%u distinct)", tp_main.toc->nentries,
	     tp_main.toc->nframes, distinct_frames(tp_main.toc));

	test_basic();
	test_prefetch_readonly();
	test_corrupt();
	test_ignore_ranges();
	test_evict();
	test_threads();
	test_threads_corrupt();
	test_shared(0);
	test_shared(1);
	test_shared_paths();
	test_concurrent_lookup();
	test_budget();
	test_budget_threads();
	test_id_collision();
	test_trust();
	test_closure();
	test_damaged();
	test_crash_before_commit();
	test_files();
	test_warm();
	test_complete();
	test_meta_later();

	nx_toc_free(tp_main.toc);
	nx_toc_free(tp_unsigned.toc);
	nx_toc_free(tp_tocsig.toc);
	nx_toc_free(tp_narsig.toc);
	nx_toc_free(tp_other.toc);
	nx_toc_free(tp_badtoc.toc);
	nx_toc_free(tp_alt.toc);
	for (int i = 0; i < src.nblobs; i++)
		free(src.blobs[i].data);
	for (int i = 0; i < src.nmans; i++)
		free(src.mans[i].body);
	if (!getenv("NX_TEST_KEEP")) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
		if (system(cmd) != 0)
			diag("cannot remove %s", tmpdir);
	}
	return done_testing();
}
