/*
 * fetch/registry.c: the OCI distribution endpoints on top of nx_http_do().
 *
 * Every reference that goes into a URL is checked first (ref.c), every
 * response body is capped, and manifests are hashed here so callers get the
 * digest of exactly the bytes they were given.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fetch/fetch_i.h"

#define NX_ACCEPT_MANIFESTS                                                                        \
	"application/vnd.oci.image.manifest.v1+json, "                                             \
	"application/vnd.oci.image.index.v1+json, "                                                \
	"application/vnd.docker.distribution.manifest.v2+json, "                                   \
	"application/vnd.docker.distribution.manifest.list.v2+json"
#define NX_TAGS_PAGE 1000
#define NX_TAGS_BODY_MAX (32u << 20)
/* A tag list ends within these bounds or is refused with one line saying
 * the registry keeps paging: pages (10 million tags at 1000 a page), pages in
 * a row that bring no new tag, and wall time. */
#define NX_TAGS_PAGES_MAX 10000
#define NX_TAGS_IDLE_PAGES 10
#define NX_TAGS_TIME_MAX_NS (UINT64_C(300) * 1000000000)

static char *repo_url(const struct nx_registry *r, const char *kind, const char *obj)
{
	char *u;

	if (asprintf(&u, "%s/v2/%s/%s%s", r->base, r->id.repo, kind, obj) < 0)
		return NULL;
	return u;
}

static int check_manifest_ref(struct nx_registry *r, const char *ref)
{
	if (nx_manifest_ref_valid(ref))
		return 0;
	nx_log(NX_LOG_ERR, "registry %s: manifest reference \"%.140s\" is neither a tag nor a "
	       "sha256 digest", r->ref, ref);
	return -EINVAL;
}

int nx_registry_mount_source(struct nx_registry *r, const char *repo)
{
	if (!nx_repo_valid(repo)) {
		nx_log(NX_LOG_ERR, "registry %s: cannot mount blobs from \"%.140s\": not a "
		       "repository name", r->ref, repo);
		return -EINVAL;
	}
	if (strcmp(repo, r->id.repo) != 0)
		snprintf(r->mount_src, sizeof(r->mount_src), "%s", repo);
	return 0;
}

int nx_registry_ping(struct nx_registry *r)
{
	struct nx_req q = { 0 };
	char *url = NULL;
	int rc;

	if (asprintf(&url, "%s/v2/", r->base) < 0)
		return -ENOMEM;
	/* 401 is an answer too: "a registry is here, and it wants a token" */
	q.method = "GET";
	q.url = url;
	q.what = "api check (GET /v2/)";
	q.flags = NX_REQ_NO_AUTH;
	q.ok[0] = 200;
	q.ok[1] = 401;
	q.cap = 65536;
	rc = nx_http_do(r, &q);
	nx_req_release(&q);
	free(url);
	return rc;
}

/* Content-Type without parameters or surrounding blanks. */
static char *media_type_of(const char *ct)
{
	size_t n;

	if (!ct)
		return NULL;
	n = strcspn(ct, ";");
	while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
		n--;
	return n ? strndup(ct, n) : NULL;
}

/* Docker-Content-Digest, when present and sha256, must name the body. */
static int check_header_digest(struct nx_registry *r, const char *what, const char *hdr,
			       const uint8_t digest[NX_SHA256_LEN])
{
	uint8_t d[NX_SHA256_LEN];
	char got[NX_DIGEST_STRLEN];

	if (!hdr || strncmp(hdr, "sha256:", 7) != 0)
		return 0; /* absent, or another algorithm: our own hash stands */
	if (nx_digest_parse(hdr, d) == 0 && memcmp(d, digest, NX_SHA256_LEN) == 0)
		return 0;
	nx_digest_format(digest, got);
	nx_log(NX_LOG_ERR, "registry %s: %s: Docker-Content-Digest %.80s does not match %s", r->ref,
	       what, hdr, got);
	return -EBADMSG;
}

static int get_manifest_one(struct nx_registry *r, const char *ref, size_t cap, char **body,
			    size_t *len, uint8_t digest[NX_SHA256_LEN], char **media_type)
{
	struct nx_req q = { 0 };
	char what[200], *url;
	uint8_t want[NX_SHA256_LEN];
	int rc;

	*body = NULL;
	*len = 0;
	if (media_type)
		*media_type = NULL;
	rc = check_manifest_ref(r, ref);
	if (rc < 0)
		return rc;
	url = repo_url(r, "manifests/", ref);
	if (!url)
		return -ENOMEM;
	snprintf(what, sizeof(what), "manifest %s", ref);
	q.method = "GET";
	q.url = url;
	q.what = what;
	q.accept = NX_ACCEPT_MANIFESTS;
	q.flags = NX_REQ_FOLLOW | (r->quiet_404 ? NX_REQ_QUIET_404 : 0);
	q.cap = cap ? cap : NX_MANIFEST_MAX;
	rc = nx_http_do(r, &q);
	if (rc < 0)
		goto out;
	nx_sha256(q.body, q.body_len, digest);
	if (nx_digest_parse(ref, want) == 0 && memcmp(want, digest, NX_SHA256_LEN) != 0) {
		nx_log(NX_LOG_ERR, "registry %s: %s: body does not match the digest", r->ref, what);
		rc = -EBADMSG;
		goto out;
	}
	rc = check_header_digest(r, what, q.docker_digest, digest);
	if (rc < 0)
		goto out;
	if (media_type && q.content_type_out) {
		*media_type = media_type_of(q.content_type_out);
		if (!*media_type) {
			rc = -ENOMEM;
			goto out;
		}
	}
	*body = q.body;
	*len = q.body_len;
	q.body = NULL;
out:
	nx_req_release(&q);
	free(url);
	return rc;
}

/* A GET of a blob (whole or in ranges): followed through redirects, and
 * with no overall deadline, since a big blob may take longer than it;
 * stalls still end it. */
static void blob_get_init(struct nx_req *q, const char *url, const char *what)
{
	q->method = "GET";
	q->url = url;
	q->what = what;
	q->flags = NX_REQ_FOLLOW | NX_REQ_NO_DEADLINE;
	q->ok[0] = 200;
	q->ok[1] = 206;
}

static int get_blob_one(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN], uint64_t off,
			uint64_t len, nx_blob_cb cb, void *ctx)
{
	struct nx_req q = { 0 };
	char d[NX_DIGEST_STRLEN], what[100], *url;
	int rc;

	nx_digest_format(digest, d);
	snprintf(what, sizeof(what), "blob %s", d);
	if (len && off + len < off) {
		nx_log(NX_LOG_ERR, "registry %s: %s: range overflows", r->ref, what);
		return -EINVAL;
	}
	url = repo_url(r, "blobs/", d);
	if (!url)
		return -ENOMEM;
	blob_get_init(&q, url, what);
	q.cb = cb;
	q.cbctx = ctx;
	q.off = off;
	q.len = len;
	rc = nx_http_do(r, &q);
	nx_req_release(&q);
	free(url);
	return rc;
}

int nx_registry_blob_exists(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN],
			    int *exists)
{
	struct nx_req q = { 0 };
	char d[NX_DIGEST_STRLEN], what[100], *url;
	int rc;

	*exists = 0;
	nx_digest_format(digest, d);
	snprintf(what, sizeof(what), "blob %s", d);
	url = repo_url(r, "blobs/", d);
	if (!url)
		return -ENOMEM;
	q.method = "HEAD";
	q.url = url;
	q.what = what;
	q.flags = NX_REQ_FOLLOW | NX_REQ_QUIET_404;
	rc = nx_http_do(r, &q);
	if (rc == 0)
		*exists = 1;
	else if (rc == -ENOENT)
		rc = 0;
	nx_req_release(&q);
	free(url);
	return rc;
}

/* A 201 to an upload: the registry's Docker-Content-Digest, when it gives a
 * sha256 one, must be ours. */
static int check_stored_digest(struct nx_registry *r, const char *what, const struct nx_req *q,
			       const uint8_t digest[NX_SHA256_LEN])
{
	uint8_t got[NX_SHA256_LEN];

	if (q->docker_digest && strncmp(q->docker_digest, "sha256:", 7) == 0 &&
	    (nx_digest_parse(q->docker_digest, got) < 0 || memcmp(got, digest, NX_SHA256_LEN))) {
		nx_log(NX_LOG_ERR, "registry %s: %s: registry stored digest %.80s", r->ref, what,
		       q->docker_digest);
		return -EBADMSG;
	}
	return 0;
}

/* Answers after which another way of starting the upload may still work:
 * the registry said no to this request, the link is fine. */
static int upload_refused(int rc)
{
	return rc == -EIO || rc == -ENOENT || rc == -EAGAIN;
}

/*
 * Starts an upload session with POST @url (a body from @src when it has
 * one): 1 when the registry already answered 201 (the blob is stored), 0
 * with *loc (caller frees) the session to PUT to, or -errno. @quiet: the
 * caller has a fallback, so a refusal is logged at debug level only.
 */
static int upload_start(struct nx_registry *r, const char *url, const char *what,
			const struct nx_req *src, const uint8_t digest[NX_SHA256_LEN], int quiet,
			char **loc)
{
	struct nx_req q = { 0 };
	int rc;

	*loc = NULL;
	q.method = "POST";
	q.url = url;
	q.what = what;
	q.flags = NX_REQ_PUSH | (quiet ? NX_REQ_QUIET : 0);
	q.ok[0] = 202;
	q.ok[1] = 201;
	if (src) {
		q.content_type = "application/octet-stream";
		q.upload = 1;
		q.up_fd = src->up_fd;
		q.up_buf = src->up_buf;
		q.up_size = src->up_size;
	}
	rc = nx_http_do(r, &q);
	if (rc < 0)
		goto out;
	if (q.status == 201) {
		rc = check_stored_digest(r, what, &q, digest);
		if (rc == 0)
			rc = 1;
		goto out;
	}
	/* Location may be relative or absolute and carry state (_state=..) we
	 * must keep: resolve it, then the PUT appends the digest */
	if (!q.location || nx_url_resolve(url, q.location, loc) < 0) {
		nx_log(NX_LOG_ERR, "registry %s: %s: upload session without a usable Location",
		       r->ref, what);
		rc = -EIO;
	}
out:
	nx_req_release(&q);
	return rc;
}

/*
 * The PUT that ends an upload failed, but it may have stored the blob: an
 * answer lost on the way, or a retry that found the session already used up
 * by the first attempt. The registry, asked by digest, knows: 0 if it has the
 * blob, else @rc.
 */
static int stored_anyway(struct nx_registry *r, const char *what,
			 const uint8_t digest[NX_SHA256_LEN], int rc)
{
	int exists = 0;

	if (nx_registry_blob_exists(r, digest, &exists) == 0 && exists) {
		nx_log(NX_LOG_NOTICE, "registry %s: %s: the registry has the blob after all; "
		       "going on", r->ref, what);
		return 0;
	}
	return rc;
}

int nx_registry_push_blob(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN], int fd,
			  const void *buf, uint64_t size, const char *mount_from, int *how)
{
	struct nx_req p = { 0 }, body = { 0 };
	char d[NX_DIGEST_STRLEN], hex[2 * NX_SHA256_LEN + 1], what[100];
	char *base = NULL, *url = NULL, *loc = NULL, *put_url = NULL;
	int rc = 0, got = 0;

	if (how)
		*how = NX_BLOB_PUT;
	nx_digest_format(digest, d);
	nx_hex(digest, NX_SHA256_LEN, hex);
	snprintf(what, sizeof(what), "upload of blob %s", d);
	if (fd < 0 && !buf && size) {
		nx_log(NX_LOG_ERR, "registry %s: %s: no data source", r->ref, what);
		return -EINVAL;
	}
	if (mount_from && !nx_repo_valid(mount_from)) {
		nx_log(NX_LOG_ERR, "registry %s: cannot mount blobs from \"%.140s\": not a "
		       "repository name", r->ref, mount_from);
		return -EINVAL;
	}
	base = repo_url(r, "blobs/uploads/", "");
	if (!base)
		return -ENOMEM;
	body.up_fd = fd;
	body.up_buf = buf;
	body.up_size = size;

	/* 1. a mount from another repository of the registry: 201 is done,
	 * 202 opens an ordinary upload session (spec: continue there) */
	if (mount_from) {
		if (asprintf(&url, "%s?mount=sha256%%3A%s&from=%s", base, hex, mount_from) < 0) {
			url = NULL;
			rc = -ENOMEM;
			goto out;
		}
		got = upload_start(r, url, what, NULL, digest, 1, &loc);
		if (got == 1 && how)
			*how = NX_BLOB_MOUNTED;
		if (got < 0 && !upload_refused(got)) {
			rc = got;
			goto out;
		}
		if (got < 0)
			nx_log(NX_LOG_DEBUG, "registry %s: mount of %s from %s refused; uploading",
			       r->ref, d, mount_from);
	}
	/* 2. a small blob in one request, where the registry stores it from
	 * the POST (spec: a registry MAY; Debian's docker-registry answers 202
	 * and drops the body, so it is tried once per registry handle) */
	if (!loc && got != 1 && size <= NX_SINGLE_POST_MAX && !atomic_load(&r->no_single_post)) {
		free(url);
		if (asprintf(&url, "%s?digest=sha256%%3A%s", base, hex) < 0) {
			url = NULL;
			rc = -ENOMEM;
			goto out;
		}
		got = upload_start(r, url, what, &body, digest, 1, &loc);
		if (got == 1 && how)
			*how = NX_BLOB_SINGLE;
		if (got == 0 || (got < 0 && upload_refused(got))) {
			if (!atomic_exchange(&r->no_single_post, 1))
				nx_log(NX_LOG_DEBUG, "registry %s: no single-request uploads (%s); "
				       "POST then PUT", r->ref, got == 0 ? "202" : strerror(-got));
		} else if (got < 0) {
			rc = got;
			goto out;
		}
	}
	/* 3. POST for a session, unless an earlier step opened one */
	if (!loc && got != 1) {
		got = upload_start(r, base, what, NULL, digest, 0, &loc);
		if (got < 0) {
			rc = got;
			goto out;
		}
	}
	if (got == 1)
		goto out;
	if (asprintf(&put_url, "%s%cdigest=sha256%%3A%s", loc, strchr(loc, '?') ? '&' : '?', hex) <
	    0) {
		put_url = NULL;
		rc = -ENOMEM;
		goto out;
	}
	p.method = "PUT";
	p.url = put_url;
	p.what = what;
	p.content_type = "application/octet-stream";
	p.flags = NX_REQ_PUSH | NX_REQ_NO_DEADLINE;
	p.ok[0] = 201;
	p.upload = 1;
	p.up_fd = fd;
	p.up_buf = buf;
	p.up_size = size;
	rc = nx_http_do(r, &p);
	if (rc == 0)
		rc = check_stored_digest(r, what, &p, digest);
	else if (rc != -ECANCELED && rc != -ENOMEM && rc != -EBADMSG)
		rc = stored_anyway(r, what, digest, rc);
out:
	nx_req_release(&p);
	free(loc);
	free(put_url);
	free(url);
	free(base);
	return rc;
}

int nx_registry_put_blob(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN], int fd,
			 const void *buf, uint64_t size)
{
	return nx_registry_push_blob(r, digest, fd, buf, size, NULL, NULL);
}

int nx_registry_manifest_exists(struct nx_registry *r, const char *ref, int *exists,
				uint8_t digest[NX_SHA256_LEN])
{
	struct nx_req q = { 0 };
	char what[200], *url, *body;
	size_t len;
	int rc;

	*exists = 0;
	rc = check_manifest_ref(r, ref);
	if (rc < 0)
		return rc;
	url = repo_url(r, "manifests/", ref);
	if (!url)
		return -ENOMEM;
	snprintf(what, sizeof(what), "manifest %s", ref);
	q.method = "HEAD";
	q.url = url;
	q.what = what;
	q.accept = NX_ACCEPT_MANIFESTS;
	q.flags = NX_REQ_FOLLOW | NX_REQ_QUIET_404;
	rc = nx_http_do(r, &q);
	if (rc == -ENOENT) {
		rc = 0;
		goto out;
	}
	if (rc < 0)
		goto out;
	*exists = 1;
	if (nx_digest_parse(ref, digest) == 0)
		goto out;
	if (q.docker_digest && nx_digest_parse(q.docker_digest, digest) == 0)
		goto out;
	/* no (sha256) Docker-Content-Digest: hash the body ourselves */
	rc = nx_registry_get_manifest(r, ref, NX_MANIFEST_MAX > NX_INDEX_MAX ? NX_MANIFEST_MAX
									     : NX_INDEX_MAX,
				      &body, &len, digest, NULL);
	if (rc == 0)
		free(body);
	else if (rc == -ENOENT)
		*exists = 0, rc = 0;
out:
	nx_req_release(&q);
	free(url);
	return rc;
}

int nx_registry_put_manifest(struct nx_registry *r, const char *ref, const char *media_type,
			     const char *body, size_t len)
{
	struct nx_req q = { 0 };
	char what[200], *url;
	uint8_t digest[NX_SHA256_LEN];
	size_t i;
	int rc;

	rc = check_manifest_ref(r, ref);
	if (rc < 0)
		return rc;
	for (i = 0; media_type[i]; i++)
		if (media_type[i] < 0x21 || media_type[i] > 0x7e || i > 200)
			break;
	if (i == 0 || media_type[i]) {
		nx_log(NX_LOG_ERR, "registry %s: manifest %s: bad media type", r->ref, ref);
		return -EINVAL;
	}
	url = repo_url(r, "manifests/", ref);
	if (!url)
		return -ENOMEM;
	snprintf(what, sizeof(what), "upload of manifest %s", ref);
	q.method = "PUT";
	q.url = url;
	q.what = what;
	q.content_type = media_type;
	q.flags = NX_REQ_PUSH;
	q.ok[0] = 201;
	q.upload = 1;
	q.up_fd = -1;
	q.up_buf = body;
	q.up_size = len;
	rc = nx_http_do(r, &q);
	if (rc == 0) {
		nx_sha256(body, len, digest);
		rc = check_header_digest(r, what, q.docker_digest, digest);
	}
	nx_req_release(&q);
	free(url);
	return rc;
}

/* The target of rel="next" in a Link header value, resolved; NULL if none. */
static int link_next(const char *link, const char *against, char **out)
{
	const char *p = link;

	*out = NULL;
	while (p && *p) {
		const char *lt = strchr(p, '<'), *gt, *seg_end;
		size_t plen;

		if (!lt || !(gt = strchr(lt, '>')))
			return 0;
		seg_end = strchr(gt, ',');
		plen = seg_end ? (size_t)(seg_end - gt) : strlen(gt);
		if (memmem(gt, plen, "rel=\"next\"", 10) || memmem(gt, plen, "rel=next", 8)) {
			char *target = strndup(lt + 1, (size_t)(gt - lt - 1));
			int rc;

			if (!target)
				return -ENOMEM;
			rc = nx_url_resolve(against, target, out);
			free(target);
			return rc;
		}
		p = seg_end ? seg_end + 1 : NULL;
	}
	return 0;
}

static int tags_page_size(void)
{
	/* test knob: exercise pagination without pushing 1000 tags */
	const char *e = getenv("NIXOCI_TAGS_PAGE_SIZE");
	long n = e ? strtol(e, NULL, 10) : 0;

	return n > 0 && n <= NX_TAGS_PAGE ? (int)n : NX_TAGS_PAGE;
}

static uint64_t url_hash(const char *s)
{
	uint64_t h = UINT64_C(14695981039346656037);

	for (; *s; s++) {
		h ^= (uint8_t)*s;
		h *= UINT64_C(1099511628211);
	}
	return h;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Whether @url was read already (then 1), else records it. Pages are
 * bounded by NX_TAGS_PAGES_MAX, so a linear scan is cheap enough. */
static int url_seen(uint64_t **seen, size_t *n, const char *url)
{
	uint64_t h = url_hash(url), *s;

	for (size_t i = 0; i < *n; i++)
		if ((*seen)[i] == h)
			return 1;
	/* reallocarray: overflow-checked, and gcc 12's analyzer (make analyze)
	 * takes realloc of the NULL *seen for a free of the other NULL-initialized
	 * buffers of list_tags_one (a double free report there) */
	s = reallocarray(*seen, *n + 1, sizeof(**seen));
	if (!s)
		return -ENOMEM;
	s[(*n)++] = h;
	*seen = s;
	return 0;
}

static int list_tags_one(struct nx_registry *r, int (*cb)(void *ctx, const char *tag), void *ctx)
{
	int page = tags_page_size(), pages = 0, idle = 0, rc = 0;
	char *url = NULL, *next = NULL, *last = NULL, first[32];
	uint64_t *seen = NULL, t0 = nx_now_ns();
	/* the previous page's tags (hashes, sorted) and this page's */
	uint64_t *prev = NULL, *cur = NULL;
	size_t nseen = 0, nprev = 0, ncur = 0;
	const char *why = NULL;

	snprintf(first, sizeof(first), "list?n=%d", page);
	url = repo_url(r, "tags/", first);
	if (!url)
		return -ENOMEM;
	while (url) {
		struct nx_req q = { 0 };
		json_t *j, *tags, *t;
		size_t i, count;
		int fresh = 0; /* this page brought a tag the previous one did not */

		rc = url_seen(&seen, &nseen, url);
		if (rc < 0)
			break;
		if (rc > 0)
			why = "its next-page link points back at a page already read";
		else if (pages > NX_TAGS_PAGES_MAX)
			why = "more pages than any repository has";
		else if (idle >= NX_TAGS_IDLE_PAGES)
			why = "pages in a row bring no new tag";
		else if (nx_now_ns() - t0 > NX_TAGS_TIME_MAX_NS)
			why = "it is still paging after 300 s";
		if (why) {
			nx_log(NX_LOG_ERR, "registry %s: tag list: the registry keeps paging (%s, "
			       "after %d pages); giving up", r->ref, why, pages + 1);
			rc = -EIO;
			break;
		}

		q.method = "GET";
		q.url = url;
		q.what = "tag list";
		q.flags = NX_REQ_FOLLOW | (r->quiet_404 ? NX_REQ_QUIET_404 : 0);
		q.cap = NX_TAGS_BODY_MAX;
		rc = nx_http_do(r, &q);
		if (rc < 0) {
			nx_req_release(&q);
			break;
		}
		j = json_loadb(q.body, q.body_len, 0, NULL);
		tags = json_object_get(j, "tags");
		if (!j || (!json_is_array(tags) && !json_is_null(tags) && tags)) {
			nx_log(NX_LOG_ERR, "registry %s: tag list: malformed json", r->ref);
			json_decref(j);
			nx_req_release(&q);
			rc = -EIO;
			break;
		}
		count = json_is_array(tags) ? json_array_size(tags) : 0;
		free(cur);
		ncur = 0;
		cur = malloc((count ? count : 1) * sizeof(*cur));
		if (!cur) {
			json_decref(j);
			nx_req_release(&q);
			rc = -ENOMEM;
			break;
		}
		json_array_foreach(tags, i, t) {
			const char *s = json_string_value(t);

			if (!s || !nx_tag_valid(s)) {
				nx_log(NX_LOG_DEBUG, "registry %s: tag list: skipping a bad tag",
				       r->ref);
				continue;
			}
			/* a tag of the previous page again: a registry that
			 * ignores last= repeats its page (tags are not always
			 * in lexical order, so only this is a sure repeat) */
			cur[ncur] = url_hash(s);
			if (nprev && bsearch(&cur[ncur], prev, nprev, sizeof(*prev), cmp_u64))
				continue;
			ncur++;
			rc = cb(ctx, s);
			if (rc)
				break;
			fresh = 1;
			free(last);
			last = strdup(s);
			if (!last) {
				rc = -ENOMEM;
				break;
			}
		}
		json_decref(j);
		idle = fresh ? 0 : idle + 1;
		if (fresh) {
			uint64_t *tmp = prev;

			qsort(cur, ncur, sizeof(*cur), cmp_u64);
			prev = cur;
			nprev = ncur;
			cur = tmp;
		}
		if (rc == 0 && q.link)
			rc = link_next(q.link, url, &next);
		else if (rc == 0 && count == (size_t)page && last) {
			/* a registry that honours n but predates Link: ask for what
			 * follows @last (more than n means n was ignored: all done) */
			char buf[64 + NX_TAG_MAX];

			snprintf(buf, sizeof(buf), "list?n=%d&last=%s", page, last);
			next = repo_url(r, "tags/", buf);
			if (!next)
				rc = -ENOMEM;
		}
		nx_req_release(&q);
		if (rc)
			break;
		if (next && (strcmp(next, url) == 0 || strncmp(next, r->base, r->base_len) != 0)) {
			nx_log(NX_LOG_ERR, "registry %s: tag list: bad next-page link", r->ref);
			rc = -EIO;
			break;
		}
		free(url);
		url = next;
		next = NULL;
		pages++;
	}
	free(seen);
	free(prev);
	free(cur);
	free(next);
	free(url);
	free(last);
	return rc;
}

/* ------------------------------------------------------------ mirrors */

/*
 * Mirrors are trusted for bytes, never for names. What is asked by digest
 * (blobs, manifests pinned by sha256:) tries each mirror in order, then the
 * registry, the way registries.conf mirrors work: the bytes are checked
 * against the digest whatever their source, so a mirror can make a read
 * slower, never wrong. What is asked by name (a tag, the tag list) goes to
 * the registry only: without trusted keys the manifest a tag names is the
 * root of trust, and a mirror answering for a tag could substitute any
 * content. A mirror that fails in any way - down, 5xx, 404 (a pull-through
 * cache that lacks the object), bad bytes - only costs a debug line (a
 * warning when it becomes unreachable): the next source is asked.
 */
static int mirror_usable(struct nx_registry *m)
{
	return nx_now_ns() >= atomic_load(&m->down_until);
}

static void mirror_failed(struct nx_registry *m, const char *what, int rc, int was_up)
{
	if (was_up && !mirror_usable(m))
		nx_log(NX_LOG_WARNING,
		       "mirror %s: %s: %s; skipping this mirror for a while, using the next "
		       "source",
		       m->id.hostport, what, strerror(-rc));
	else
		nx_log(NX_LOG_DEBUG, "mirror %s: %s: %s; trying the next source",
		       m->id.hostport, what, strerror(-rc));
}

/* Errors that no other source can cure. */
static int fatal_for_all(int rc)
{
	return rc == -ENOMEM || rc == -EINVAL;
}

int nx_registry_get_manifest(struct nx_registry *r, const char *ref, size_t cap, char **body,
			     size_t *len, uint8_t digest[NX_SHA256_LEN], char **media_type)
{
	uint8_t pinned[NX_SHA256_LEN];
	size_t i;
	int rc;

	/* a tag is a name: the registry's word only */
	for (i = 0; nx_digest_parse(ref, pinned) == 0 && i < r->nmirrors; i++) {
		struct nx_registry *m = r->mirrors[i];
		char what[200];

		if (!mirror_usable(m))
			continue;
		/* get_manifest_one checks the body against the pinned digest */
		rc = get_manifest_one(m, ref, cap, body, len, digest, media_type);
		if (rc == 0 || fatal_for_all(rc))
			return rc;
		snprintf(what, sizeof(what), "manifest %s", ref);
		mirror_failed(m, what, rc, 1);
	}
	return get_manifest_one(r, ref, cap, body, len, digest, media_type);
}

/* Delivers each blob byte to the caller once, in order, whichever source
 * it came from: a source that fails half way is followed by the next one
 * from the first byte not yet delivered. */
struct once_ctx {
	nx_blob_cb cb;
	void *ctx;
	uint64_t next; /* first offset not yet delivered */
	int any;
	int cb_failed; /* the caller's callback said stop: no other source */
};

static int once_cb(void *c, uint64_t off, const void *buf, size_t len)
{
	struct once_ctx *o = c;
	int rc;

	if (o->any && off < o->next) {
		uint64_t k = o->next - off;

		if (k >= len)
			return 0;
		buf = (const char *)buf + k;
		off += k;
		len -= (size_t)k;
	}
	rc = o->cb(o->ctx, off, buf, len);
	if (rc < 0) {
		o->cb_failed = 1;
		return rc;
	}
	o->any = 1;
	o->next = off + len;
	return 0;
}

int nx_registry_get_blob(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN], uint64_t off,
			 uint64_t len, nx_blob_cb cb, void *ctx)
{
	struct once_ctx o = { cb, ctx, off, 0, 0 };
	size_t i;
	int rc;

	if (!r->nmirrors)
		return get_blob_one(r, digest, off, len, cb, ctx);
	for (i = 0; i < r->nmirrors; i++) {
		struct nx_registry *m = r->mirrors[i];
		uint64_t from = o.any && o.next > off ? o.next : off;
		char what[100], d[NX_DIGEST_STRLEN];

		if (!mirror_usable(m))
			continue;
		if (len && from >= off + len)
			return 0;
		rc = get_blob_one(m, digest, from, len ? off + len - from : 0, once_cb, &o);
		if (rc == 0 || o.cb_failed || fatal_for_all(rc))
			return rc;
		nx_digest_format(digest, d);
		snprintf(what, sizeof(what), "blob %s", d);
		mirror_failed(m, what, rc, 1);
	}
	{
		uint64_t from = o.any && o.next > off ? o.next : off;

		if (len && from >= off + len)
			return 0;
		return get_blob_one(r, digest, from, len ? off + len - from : 0, once_cb, &o);
	}
}

/* ---------------------------------------------------- several ranges */

static int rset_blob_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	return nx_rset_deliver(ctx, off, buf, len);
}

int nx_registry_multirange(struct nx_registry *r)
{
	return !r->nmirrors && !atomic_load(&r->no_multirange);
}

static void multirange_off(struct nx_registry *r, const char *why)
{
	if (atomic_exchange(&r->no_multirange, 1) == 0)
		nx_log(NX_LOG_NOTICE,
		       "registry %s: a multi-range read was answered with %s; reading one range "
		       "per request from now on", r->ref, why);
}

/* Ranges @v[0..n) (within the bounds of one request) into @cb. */
static int get_ranges_one(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN],
			  const struct nx_range *v, size_t n, nx_range_cb cb, void *ctx)
{
	struct nx_rset s;
	const char *why = NULL;
	int rc;

	rc = nx_rset_init(&s, v, n, cb, ctx);
	if (rc < 0) {
		if (rc == -EINVAL)
			nx_log(NX_LOG_ERR, "registry %s: ranges of a blob must be sorted, "
			       "non-empty and apart", r->ref);
		return rc;
	}
	if (n > 1 && nx_registry_multirange(r)) {
		struct nx_req q = { 0 };
		char d[NX_DIGEST_STRLEN], what[NX_DIGEST_STRLEN + 48], *url;

		nx_digest_format(digest, d);
		snprintf(what, sizeof(what), "blob %s (%zu ranges)", d, n);
		url = repo_url(r, "blobs/", d);
		if (!url) {
			rc = -ENOMEM;
			goto out;
		}
		blob_get_init(&q, url, what);
		q.ok[2] = 416; /* some servers refuse several ranges so */
		q.rset = &s;
		rc = nx_http_do(r, &q);
		free(url);
		if (s.cb_failed || (rc < 0 && !q.mr_why[0])) {
			nx_req_release(&q);
			goto out; /* the caller's error, or the registry's (logged) */
		}
		if (q.mr_why[0])
			multirange_off(r, q.mr_why); /* malformed: no doubt */
		else if (q.status == 416)
			why = "416 (range not satisfiable)";
		else if (q.mr_kind == NX_MR_WHOLE)
			why = "the whole blob (200)";
		else if (q.mr_kind == NX_MR_SINGLE && !nx_rset_done(&s))
			why = "a single range";
		else if (q.mr_kind == NX_MR_MULTIPART && !nx_rset_done(&s))
			why = "a multipart body that lacks some of them";
		nx_req_release(&q);
		rc = 0;
	}
	/* what is still missing, one range per request */
	for (size_t i = 0; i < n && rc == 0; i++) {
		uint64_t end = v[i].off + v[i].len;

		if (s.next[i] >= end)
			continue;
		rc = nx_registry_get_blob(r, digest, s.next[i], end - s.next[i], rset_blob_cb, &s);
		if (rc == 0 && s.next[i] < end) {
			char d[NX_DIGEST_STRLEN];

			nx_digest_format(digest, d);
			nx_log(NX_LOG_ERR, "registry %s: blob %s: short answer at offset %llu",
			       r->ref, d, (unsigned long long)s.next[i]);
			rc = -EIO;
		}
	}
	/* only when each range alone is answered: a range past the blob's
	 * end (a wrong TOC) also makes a server send 416, or one range */
	if (rc == 0 && why)
		multirange_off(r, why);
out:
	nx_rset_release(&s);
	return rc;
}

struct ranges_base {
	nx_range_cb cb;
	void *ctx;
	size_t base;
};

static int ranges_base_cb(void *c, size_t i, uint64_t off, const void *buf, size_t len)
{
	struct ranges_base *b = c;

	return b->cb(b->ctx, b->base + i, off, buf, len);
}

int nx_registry_get_ranges(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN],
			   const struct nx_range *v, size_t n, nx_range_cb cb, void *ctx)
{
	size_t i = 0;
	int rc = 0;

	if (!n) {
		nx_log(NX_LOG_ERR, "registry %s: no ranges asked for", r->ref);
		return -EINVAL;
	}
	/* bounded requests, one after the other: the caller parallelizes */
	while (i < n && rc == 0) {
		struct ranges_base b = { cb, ctx, i };
		uint64_t bytes = v[i].len;
		size_t j = i + 1;

		while (j < n && j - i < NX_RANGES_MAX && bytes + v[j].len <= NX_RANGES_BYTES)
			bytes += v[j++].len;
		rc = get_ranges_one(r, digest, v + i, j - i, ranges_base_cb, &b);
		i = j;
	}
	return rc;
}

int nx_registry_source_ranges(void *ctx, const uint8_t digest[NX_SHA256_LEN],
			      const struct nx_range *v, size_t n, nx_range_cb cb, void *cbctx)
{
	return nx_registry_get_ranges(ctx, digest, v, n, cb, cbctx);
}

/* Tags are names: from the registry only, never a mirror. */
int nx_registry_list_tags(struct nx_registry *r, int (*cb)(void *ctx, const char *tag), void *ctx)
{
	return list_tags_one(r, cb, ctx);
}

int nx_registry_source_manifest(void *ctx, const char *ref, size_t cap, char **body, size_t *len,
				uint8_t digest[NX_SHA256_LEN])
{
	return nx_registry_get_manifest(ctx, ref, cap, body, len, digest, NULL);
}

int nx_registry_source_blob(void *ctx, const uint8_t digest[NX_SHA256_LEN], uint64_t off,
			    uint64_t len, nx_blob_cb cb, void *cbctx)
{
	return nx_registry_get_blob(ctx, digest, off, len, cb, cbctx);
}

int nx_registry_get_referrers(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN],
			      size_t cap, char **body, size_t *len)
{
	struct nx_req q = { 0 };
	char d[NX_DIGEST_STRLEN], what[120], *url;
	int rc;

	*body = NULL;
	*len = 0;
	nx_digest_format(digest, d);
	url = repo_url(r, "referrers/", d);
	if (!url)
		return -ENOMEM;
	snprintf(what, sizeof(what), "referrers of %s", d);
	q.method = "GET";
	q.url = url;
	q.what = what;
	q.accept = "application/vnd.oci.image.index.v1+json";
	/* a registry without the API (distribution 2.8) answers 404 */
	q.flags = NX_REQ_FOLLOW | NX_REQ_QUIET_404;
	q.cap = cap ? cap : NX_INDEX_MAX;
	rc = nx_http_do(r, &q);
	if (rc == 0) {
		*body = q.body;
		*len = q.body_len;
		q.body = NULL;
	}
	nx_req_release(&q);
	free(url);
	return rc;
}

int nx_registry_source_referrers(void *ctx, const uint8_t digest[NX_SHA256_LEN], size_t cap,
				 char **body, size_t *len)
{
	return nx_registry_get_referrers(ctx, digest, cap, body, len);
}

int nx_registry_public_blob_url(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN],
				char **url)
{
	char d[NX_DIGEST_STRLEN];
	int mode;

	*url = NULL;
	pthread_mutex_lock(&r->auth.mu);
	mode = r->auth.mode;
	pthread_mutex_unlock(&r->auth.mu);
	if (mode != NX_AUTH_NONE)
		return -EACCES;
	nx_digest_format(digest, d);
	*url = repo_url(r, "blobs/", d);
	return *url ? 0 : -ENOMEM;
}
