/*
 * tests/unit/fetch-registry.c: fetch/ against a real registry.
 *
 * Starts nothing: skips unless NIXOCI_TEST_REGISTRY=HOST:PORT/REPO names a
 * running registry (docker-registry / distribution or zot) it may push to.
 * Covers push (blob from a buffer and from a file, manifest), HEAD, ranged
 * and whole blob reads, a callback error, 404s, caps, pagination of the tag
 * list, parallel reads through a small handle pool, and a refused
 * connection (which must fail fast).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fetch/fetch.h"
#include "tests/unit/tap.h"

#define BLOB_SIZE (3u << 20)

static uint8_t *blob;

struct collect {
	uint8_t *buf;
	uint64_t want_off, want_len;
	uint64_t first_off; /* offset of the first byte delivered */
	uint64_t got;
	int seen;
	int bad;
	int fail_after; /* >0: return -ECANCELED once this many bytes arrived */
};

/* Stores delivered bytes at their absolute offset; checks they are contiguous. */
static int collect_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct collect *c = ctx;

	if (!c->seen) {
		c->seen = 1;
		c->first_off = off;
	} else if (off != c->first_off + c->got) {
		c->bad = 1;
	}
	if (off + len > BLOB_SIZE) {
		c->bad = 1;
		return -EIO;
	}
	memcpy(c->buf + off, buf, len);
	c->got += len;
	if (c->fail_after && c->got >= (uint64_t)c->fail_after)
		return -ECANCELED;
	return 0;
}

/* Whether [off, off+len) arrived and matches the source blob. */
static int range_ok(struct collect *c, uint64_t off, uint64_t len)
{
	if (c->bad || !c->seen || c->first_off > off || c->first_off + c->got < off + len)
		return 0;
	return memcmp(c->buf + off, blob + off, len) == 0;
}

static int get_range(struct nx_registry *r, const uint8_t d[NX_SHA256_LEN], uint64_t off,
		     uint64_t len, struct collect *c)
{
	memset(c, 0, sizeof(*c));
	c->buf = calloc(1, BLOB_SIZE);
	if (!c->buf)
		return -ENOMEM;
	return nx_registry_get_blob(r, d, off, len, collect_cb, c);
}

struct tags {
	char names[64][32];
	int n;
};

static int tag_cb(void *ctx, const char *tag)
{
	struct tags *t = ctx;

	if (t->n < 64)
		snprintf(t->names[t->n], sizeof(t->names[0]), "%s", tag);
	t->n++;
	return 0;
}

static int stop_cb(void *ctx, const char *tag)
{
	return 42;
}

struct par {
	struct nx_registry *r;
	const uint8_t *digest;
	int idx;
	int ok;
};

static void *par_main(void *arg)
{
	struct par *p = arg;
	struct collect c;
	uint64_t off = (uint64_t)p->idx * 65521 % (BLOB_SIZE - 70000);
	int i, good = 1;

	for (i = 0; i < 4; i++) {
		int rc = get_range(p->r, p->digest, off + (uint64_t)i, 65536, &c);

		good &= rc == 0 && range_ok(&c, off + (uint64_t)i, 65536);
		free(c.buf);
	}
	p->ok = good;
	return NULL;
}

/* Several ranges: each byte delivered once, in order within its range. */
struct mcollect {
	uint8_t *buf;
	const struct nx_range *v;
	size_t n;
	uint64_t next[80];
	int bad;
};

static int mcollect_cb(void *ctx, size_t i, uint64_t off, const void *buf, size_t len)
{
	struct mcollect *m = ctx;

	if (i >= m->n || off != m->next[i] || off + len > m->v[i].off + m->v[i].len) {
		m->bad = 1;
		return -EIO;
	}
	memcpy(m->buf + off, buf, len);
	m->next[i] += len;
	return 0;
}

static int get_multi(struct nx_registry *r, const uint8_t d[NX_SHA256_LEN],
		     const struct nx_range *v, size_t n)
{
	struct mcollect m = { .v = v, .n = n };
	int rc;

	m.buf = calloc(1, BLOB_SIZE);
	if (!m.buf)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		m.next[i] = v[i].off;
	rc = nx_registry_get_ranges(r, d, v, n, mcollect_cb, &m);
	for (size_t i = 0; rc == 0 && i < n; i++)
		if (m.next[i] != v[i].off + v[i].len ||
		    memcmp(m.buf + v[i].off, blob + v[i].off, v[i].len) != 0)
			rc = -EBADMSG;
	if (m.bad)
		rc = -EPROTO;
	free(m.buf);
	return rc;
}

int main(void)
{
	const char *ref = getenv("NIXOCI_TEST_REGISTRY");
	struct nx_regopts o = { .timeout_s = 10, .max_transfers = 3, .quiet_404 = 1 };
	uint8_t d_blob[NX_SHA256_LEN], d_small[NX_SHA256_LEN], d_empty[NX_SHA256_LEN];
	uint8_t d_missing[NX_SHA256_LEN], d_man[NX_SHA256_LEN], got[NX_SHA256_LEN];
	char ds_blob[NX_DIGEST_STRLEN], ds_empty[NX_DIGEST_STRLEN], ds_man[NX_DIGEST_STRLEN];
	char fname[] = "/tmp/nixoci-fetch-test-XXXXXX", *manifest = NULL, *body, *mt;
	struct nx_registry *r, *dead;
	struct nx_fetch_stats st;
	struct collect c;
	struct tags tg;
	struct par par[8];
	pthread_t th[8];
	size_t len, i;
	uint64_t t0;
	int rc, fd, exists, all;

	if (!ref || !*ref)
		skip_all("NIXOCI_TEST_REGISTRY=HOST:PORT/REPO not set");
	/* several cases fail on purpose and log; NIXOCI_TEST_DEBUG=1 shows all */
	nx_log_set_level(getenv("NIXOCI_TEST_DEBUG") ? NX_LOG_DEBUG : NX_LOG_ERR - 1);
	if (nx_fetch_global_init() < 0)
		return 1;
	rc = nx_registry_open(&r, ref, &o);
	is_int(rc, 0, "open %s", ref);
	if (rc)
		return done_testing();
	is_int(nx_registry_ping(r), 0, "ping");

	/* a pseudo-random blob, so every range is distinguishable */
	blob = malloc(BLOB_SIZE);
	if (!blob)
		return 1;
	for (i = 0; i < BLOB_SIZE; i++)
		blob[i] = (uint8_t)((i * 2654435761u) >> 13);
	nx_sha256(blob, BLOB_SIZE, d_blob);
	nx_digest_format(d_blob, ds_blob);
	nx_sha256("{}", 2, d_empty);
	nx_digest_format(d_empty, ds_empty);
	nx_sha256("small blob", 10, d_small);
	memset(d_missing, 0x5a, sizeof(d_missing));

	/* push */
	fd = mkstemp(fname);
	ok(fd >= 0 && write(fd, blob, BLOB_SIZE) == (ssize_t)BLOB_SIZE, "temp file");
	is_int(nx_registry_put_blob(r, d_blob, fd, NULL, BLOB_SIZE), 0, "put blob from a file");
	close(fd);
	unlink(fname);
	is_int(nx_registry_put_blob(r, d_small, -1, "small blob", 10), 0, "put blob from memory");
	is_int(nx_registry_put_blob(r, d_empty, -1, "{}", 2), 0, "put empty descriptor blob");
	is_int(nx_registry_put_blob(r, d_missing, -1, "not this", 8), -EIO,
	       "put blob with a wrong digest fails (400 DIGEST_INVALID)");

	/* another repository of the same registry: mount, or upload when the
	 * source lacks the blob */
	{
		const char *repo = strchr(nx_registry_ref(r), '/') + 1;
		uint8_t d_other[NX_SHA256_LEN];
		struct nx_registry *r2;
		char *ref2 = NULL;
		int how = -1;

		nx_sha256("not mounted", 11, d_other);
		ok(asprintf(&ref2, "%s-mnt", ref) > 0, "sibling reference");
		is_int(nx_registry_open(&r2, ref2, &o), 0, "open %s", ref2);
		is_int(nx_registry_push_blob(r2, d_small, -1, "small blob", 10, repo, &how), 0,
		       "push with a mount source");
		is_int(how, NX_BLOB_MOUNTED, "the blob was mounted, not sent");
		exists = -1;
		is_int(nx_registry_blob_exists(r2, d_small, &exists), 0, "head mounted blob");
		is_int(exists, 1, "the mounted blob is in the other repository");
		how = -1;
		is_int(nx_registry_push_blob(r2, d_other, -1, "not mounted", 11, "nothere/x", &how),
		       0, "mount source without the blob: uploaded instead");
		ok(how == NX_BLOB_PUT || how == NX_BLOB_SINGLE, "sent (how %d)", how);
		exists = -1;
		is_int(nx_registry_blob_exists(r2, d_other, &exists), 0, "head uploaded blob");
		is_int(exists, 1, "the uploaded blob is there");
		is_int(nx_registry_push_blob(r2, d_other, -1, "not mounted", 11, "Bad Name", NULL),
		       -EINVAL, "a mount source that is no repository name: -EINVAL");
		how = -1;
		is_int(nx_registry_push_blob(r2, d_missing, -1, "not this", 8, NULL, &how), -EIO,
		       "single-request path: a wrong digest still fails");
		nx_registry_close(r2);
		free(ref2);
	}

	exists = -1;
	is_int(nx_registry_blob_exists(r, d_blob, &exists), 0, "head blob");
	is_int(exists, 1, "blob exists");
	exists = -1;
	is_int(nx_registry_blob_exists(r, d_missing, &exists), 0, "head missing blob");
	is_int(exists, 0, "missing blob does not exist");

	/* reads */
	rc = get_range(r, d_blob, 0, 0, &c);
	ok(rc == 0 && c.got == BLOB_SIZE && range_ok(&c, 0, BLOB_SIZE), "whole blob");
	free(c.buf);
	rc = get_range(r, d_blob, 100, 1000, &c);
	ok(rc == 0 && c.first_off == 100 && c.got == 1000 && range_ok(&c, 100, 1000),
	   "range 100+1000 (rc %d, first %llu, got %llu)", rc, (unsigned long long)c.first_off,
	   (unsigned long long)c.got);
	free(c.buf);
	rc = get_range(r, d_blob, BLOB_SIZE - 10, 0, &c);
	ok(rc == 0 && c.first_off == BLOB_SIZE - 10 && c.got == 10 &&
		   range_ok(&c, BLOB_SIZE - 10, 10),
	   "tail range to the end");
	free(c.buf);
	rc = get_range(r, d_blob, BLOB_SIZE - 1, 1, &c);
	ok(rc == 0 && c.got == 1 && range_ok(&c, BLOB_SIZE - 1, 1), "last byte");
	free(c.buf);
	rc = get_range(r, d_blob, BLOB_SIZE, 10, &c);
	is_int(rc, -EIO, "range past the end (416)");
	free(c.buf);
	memset(&c, 0, sizeof(c));
	c.buf = calloc(1, BLOB_SIZE);
	c.fail_after = 100000;
	rc = nx_registry_get_blob(r, d_blob, 0, 0, collect_cb, &c);
	is_int(rc, -ECANCELED, "callback error aborts and is returned");
	free(c.buf);
	rc = get_range(r, d_missing, 0, 10, &c);
	is_int(rc, -ENOENT, "missing blob");
	free(c.buf);

	/* several ranges in one request: distribution answers multipart */
	{
		struct nx_range v[70];
		uint64_t req0;

		for (i = 0; i < 70; i++)
			v[i] = (struct nx_range){ 1000 + i * 40000, 1 + i * 97 };
		nx_registry_stats(r, &st);
		req0 = st.requests;
		is_int(get_multi(r, d_blob, v, 5), 0, "5 ranges: each byte once, right bytes");
		nx_registry_stats(r, &st);
		is_int((int)(st.requests - req0), 1, "5 ranges: one request");
		ok(nx_registry_multirange(r), "the registry answers multi-range");
		req0 = st.requests;
		is_int(get_multi(r, d_blob, v, 70), 0, "70 ranges: every byte right");
		nx_registry_stats(r, &st);
		is_int((int)(st.requests - req0), (70 + NX_RANGES_MAX - 1) / NX_RANGES_MAX,
		       "70 ranges: split into bounded requests");
		v[0] = (struct nx_range){ 0, 1 };
		v[1] = (struct nx_range){ BLOB_SIZE - 1, 1 };
		is_int(get_multi(r, d_blob, v, 2), 0, "first and last byte");
		v[1] = (struct nx_range){ 0, 5 };
		is_int(get_multi(r, d_blob, v, 2), -EINVAL, "overlapping ranges: -EINVAL");
		v[0] = (struct nx_range){ 10, 5 };
		v[1] = (struct nx_range){ BLOB_SIZE + 10, 5 };
		is_int(get_multi(r, d_blob, v, 2), -EIO, "a range past the end: -EIO");
		v[0] = (struct nx_range){ 10, 5 };
		v[1] = (struct nx_range){ 100, 5 };
		is_int(get_multi(r, d_missing, v, 2), -ENOENT, "ranges of a missing blob");
	}

	/* manifests */
	rc = asprintf(&manifest,
		      "{\"schemaVersion\":2,\"mediaType\":\"%s\",\"artifactType\":"
		      "\"application/vnd.nixoci.test\",\"config\":{\"mediaType\":\"%s\","
		      "\"digest\":\"%s\",\"size\":2},\"layers\":[{\"mediaType\":"
		      "\"application/octet-stream\",\"digest\":\"%s\",\"size\":%u}]}",
		      NX_MT_MANIFEST, NX_MT_EMPTY, ds_empty, ds_blob, BLOB_SIZE);
	ok(rc > 0, "manifest json");
	nx_sha256(manifest, strlen(manifest), d_man);
	nx_digest_format(d_man, ds_man);
	is_int(nx_registry_put_manifest(r, "t1", NX_MT_MANIFEST, manifest, strlen(manifest)), 0,
	       "put manifest by tag");
	is_int(nx_registry_put_manifest(r, ds_man, NX_MT_MANIFEST, manifest, strlen(manifest)), 0,
	       "put manifest by digest");
	exists = -1;
	memset(got, 0, sizeof(got));
	is_int(nx_registry_manifest_exists(r, "t1", &exists, got), 0, "head manifest");
	ok(exists == 1 && memcmp(got, d_man, NX_SHA256_LEN) == 0, "manifest exists with digest");
	exists = -1;
	is_int(nx_registry_manifest_exists(r, "nope", &exists, got), 0, "head missing manifest");
	is_int(exists, 0, "missing manifest does not exist");

	mt = NULL;
	rc = nx_registry_get_manifest(r, "t1", 0, &body, &len, got, &mt);
	ok(rc == 0 && len == strlen(manifest) && memcmp(body, manifest, len) == 0 && !body[len],
	   "get manifest by tag");
	ok(rc == 0 && memcmp(got, d_man, NX_SHA256_LEN) == 0, "digest of the manifest");
	ok(rc == 0 && mt && strcmp(mt, NX_MT_MANIFEST) == 0, "media type %s", mt ? mt : "(null)");
	if (rc == 0)
		free(body);
	free(mt);
	rc = nx_registry_source_manifest(r, ds_man, 0, &body, &len, got);
	ok(rc == 0 && len == strlen(manifest), "get manifest by digest (source adapter)");
	if (rc == 0)
		free(body);
	is_int(nx_registry_get_manifest(r, "t1", 100, &body, &len, got, NULL), -E2BIG,
	       "manifest over the cap");
	is_int(nx_registry_get_manifest(r, "missing", 0, &body, &len, got, NULL), -ENOENT,
	       "missing manifest (quiet)");
	is_int(nx_registry_get_manifest(r, "../x", 0, &body, &len, got, NULL), -EINVAL,
	       "bad manifest reference");
	{
		char *bad = NULL;

		rc = asprintf(&bad,
			      "{\"schemaVersion\":2,\"mediaType\":\"%s\",\"config\":{"
			      "\"mediaType\":\"%s\",\"digest\":\"sha256:%064d\",\"size\":2},"
			      "\"layers\":[]}",
			      NX_MT_MANIFEST, NX_MT_EMPTY, 7);
		ok(rc > 0, "bad manifest json");
		is_int(nx_registry_put_manifest(r, "bad", NX_MT_MANIFEST, bad, strlen(bad)), -EIO,
		       "manifest with a missing blob refused (400 MANIFEST_BLOB_UNKNOWN)");
		free(bad);
	}

	/* tags, paginated with a page of 3 */
	for (i = 2; i <= 7; i++) {
		char tag[16];

		snprintf(tag, sizeof(tag), "t%zu", i);
		rc = nx_registry_put_manifest(r, tag, NX_MT_MANIFEST, manifest, strlen(manifest));
		if (rc)
			break;
	}
	is_int(rc, 0, "tags t2..t7");
	setenv("NIXOCI_TAGS_PAGE_SIZE", "3", 1);
	memset(&tg, 0, sizeof(tg));
	rc = nx_registry_list_tags(r, tag_cb, &tg);
	is_int(rc, 0, "list tags in pages of 3");
	for (all = 1, i = 1; i <= 7; i++) {
		char tag[16];
		int k, found = 0;

		snprintf(tag, sizeof(tag), "t%zu", i);
		for (k = 0; k < tg.n && k < 64; k++)
			found |= strcmp(tg.names[k], tag) == 0;
		all &= found;
	}
	ok(all && tg.n >= 7, "all 7 tags listed once each (%d listed)", tg.n);
	unsetenv("NIXOCI_TAGS_PAGE_SIZE");
	memset(&tg, 0, sizeof(tg));
	is_int(nx_registry_list_tags(r, tag_cb, &tg), 0, "list tags in one page");
	ok(tg.n >= 7, "one page has them all");
	is_int(nx_registry_list_tags(r, stop_cb, NULL), 42, "callback stops the listing");

	/* parallel ranged reads through a pool of 3 handles */
	for (i = 0; i < 8; i++) {
		par[i] = (struct par){ r, d_blob, (int)i, 0 };
		pthread_create(&th[i], NULL, par_main, &par[i]);
	}
	for (all = 1, i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		all &= par[i].ok;
	}
	ok(all, "8 threads x 4 ranged reads");

	nx_registry_stats(r, &st);
	ok(st.requests > 20 && st.bytes >= BLOB_SIZE, "stats: %llu requests, %llu bytes",
	   (unsigned long long)st.requests, (unsigned long long)st.bytes);
	diag("errors %llu retries %llu", (unsigned long long)st.errors,
	     (unsigned long long)st.retries);

	/* nothing listens on port 1: refused, quickly */
	is_int(nx_registry_open(&dead, "127.0.0.1:1/x", &o), 0, "open a dead registry");
	t0 = nx_now_ns();
	is_int(nx_registry_ping(dead), -ECONNREFUSED, "refused");
	ok(nx_now_ns() - t0 < 3000000000ull, "refused within 3 s (%.2f s)",
	   (double)(nx_now_ns() - t0) / 1e9);
	nx_registry_close(dead);

	nx_registry_close(r);
	free(manifest);
	free(blob);
	nx_fetch_global_cleanup();
	return done_testing();
}
