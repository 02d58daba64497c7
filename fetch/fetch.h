/*
 * fetch/fetch.h: the OCI distribution client. The only folder that includes
 * <curl/curl.h>. It moves bytes; it does not interpret manifests (common/
 * does) and knows nothing of the cache.
 *
 * Errors: every function returns 0 or a negative errno, and logs one line
 * naming the registry, the object and the cause where the error happens.
 * The mapping, applied once in fetch/:
 *   unknown host          -EHOSTUNREACH   connection refused  -ECONNREFUSED
 *   timeout / stall       -ETIMEDOUT      TLS failure         -EPROTO
 *   401 / 403             -EACCES         404                 -ENOENT
 *   429 / 5xx (after retries) -EAGAIN     digest mismatch     -EBADMSG
 *   body over cap         -E2BIG          other protocol errors -EIO
 *
 * Thread rules: one struct nx_registry is shared by all threads; every
 * function may be called concurrently. Internally a bounded pool of curl easy
 * handles (max_transfers) limits parallel transfers; callers block for a free
 * one. An https registry also runs one event thread (started on first use,
 * joined by nx_registry_close) that multiplexes transfers over HTTP/2: close
 * a registry before fork(). nx_fetch_global_init() must run before any
 * thread starts.
 */
#ifndef NIXOCI_FETCH_H
#define NIXOCI_FETCH_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

int nx_fetch_global_init(void);
void nx_fetch_global_cleanup(void);
/*
 * Shutdown: every transfer in progress, in any registry handle, ends within
 * about a second (libcurl's progress callback runs at least once a second,
 * also while a connection is silent), and every later request fails at once;
 * both with -ECANCELED, without a log line and without a retry. Not undone.
 * Async-signal-safe: a SIGTERM handler calls it, so that a stalled registry
 * cannot hold the daemon's exit for the timeout.
 */
void nx_fetch_cancel_all(void);

/*
 * How credential helpers (docker-credential-NAME get) are started. Without
 * a runner, by posix_spawnp in this process. A sandboxed daemon installs
 * one (fs/privs.c) that has a process outside its sandbox start them, so a
 * helper may write its own state wherever it keeps it.
 *  - start: runs @prog (a bare name, looked up in PATH) with the argument
 *    "get", @fd0 as its stdin, @fd1 as its stdout, /dev/null as its stderr
 *    and no other descriptor. 0 and *handle, or a positive errno as
 *    posix_spawnp returns it (ENOENT, EACCES: not found in PATH). The
 *    caller keeps and closes @fd0 and @fd1.
 *  - finish: kills it first when @kill, waits for it, stores its wait
 *    status (as waitpid's) and releases @handle. 0 or a negative errno.
 * Both are called from any thread. Set once, before any registry is opened;
 * @r must outlive every registry (NULL: back to posix_spawnp).
 */
struct nx_helper_runner {
	int (*start)(const char *prog, int fd0, int fd1, long *handle);
	int (*finish)(long handle, int kill, int *status);
};
void nx_cred_helper_set_runner(const struct nx_helper_runner *r);

struct nx_regopts {
	const char *cafile;     /* extra CA bundle, or NULL */
	int timeout_s;          /* per-request deadline; 0 = default 30 */
	int max_transfers;      /* parallel transfers; 0 = default 8 */
	int insecure;           /* allow plain HTTP / unverified TLS for this registry */
	/* with insecure: only the registry or mirror whose HOST[:PORT] is
	 * this ("-o insecure=HOST"); NULL = the registry of the reference */
	const char *insecure_host;
	int quiet_404;          /* 404 on a manifest is expected: log at debug level */
	/* pull-through mirrors "[https://|http://]HOST[:PORT]", tried in order
	 * before the registry for manifests, blobs and tags (same repository
	 * path); pushes go to the registry only */
	const char *const *mirrors;
	size_t nmirrors;
};

struct nx_registry;

/*
 * Parses "HOST[:PORT]/REPO" (REPO lower-case, distribution's grammar) and
 * prepares a client. Loopback hosts (127.0.0.0/8, localhost, [::1]) use
 * http://, every other host https:// with verification; an explicit
 * "https://" prefix (TLS on loopback) or "http://" (needs insecure off
 * loopback) overrides that. No network I/O.
 * -EINVAL with a message naming the reference when it is malformed.
 */
int nx_registry_open(struct nx_registry **out, const char *ref, const struct nx_regopts *o);
void nx_registry_close(struct nx_registry *r);
/* "HOST[:PORT]/REPO" as given; valid while @r lives. */
const char *nx_registry_ref(const struct nx_registry *r);
/* Base URL in use, "http://HOST:PORT" (loopback) or "https://HOST[:PORT]";
 * valid while @r lives. The registry's own, not a mirror's. */
const char *nx_registry_url(const struct nx_registry *r);

/*
 * Pushes through @r may mount blobs from repository @repo of the same
 * registry: the tokens of push requests then also ask for pull access to
 * @repo, which a mount needs (distribution checks it), so the first mount
 * is not refused with a 401 that costs a round trip and a token request.
 * Call before the first request. -EINVAL (logged) if @repo is not a
 * repository name; @repo equal to @r's own repository changes nothing.
 */
int nx_registry_mount_source(struct nx_registry *r, const char *repo);

/* GET /v2/ : checks the registry answers. */
int nx_registry_ping(struct nx_registry *r);

/*
 * GET /v2/<repo>/manifests/<ref>. @ref is a tag or "sha256:..". The body is
 * capped at @cap. *body (caller frees, NUL-terminated), *len, *digest (sha256
 * of the body; if @ref is a digest the body must match it or -EBADMSG) and
 * *media_type (caller frees, may be NULL on input to skip).
 */
int nx_registry_get_manifest(struct nx_registry *r, const char *ref, size_t cap, char **body,
			     size_t *len, uint8_t digest[NX_SHA256_LEN], char **media_type);

/*
 * Streams blob bytes [off, off+len) to @cb. The callback receives absolute
 * blob offsets. If the registry ignores Range and sends the whole blob, @cb
 * gets every byte from offset 0 and must skip what it does not want (it may
 * also keep it). @len 0 means to the end. @cb returns 0 or a negative errno
 * that aborts the transfer and is returned. Retries (when nothing was
 * delivered yet) are internal.
 */
typedef int (*nx_blob_cb)(void *ctx, uint64_t off, const void *buf, size_t len);
int nx_registry_get_blob(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN], uint64_t off,
			 uint64_t len, nx_blob_cb cb, void *ctx);

/*
 * Several ranges of one blob in as few requests as the registry allows: one
 * request with a multi-range header (Range: bytes=a-b,c-d,...), answered
 * 206 multipart/byteranges by distribution's Go http.ServeContent. @v is
 * sorted by offset, without overlaps or empty ranges (else -EINVAL). @cb
 * gets exactly the bytes asked for, each once: those of range @i in order
 * from v[i].off, with absolute blob offsets; ranges may arrive in any order
 * and interleaved (a server may send parts in any order). Whatever the
 * answer (parts coalesced, repeated, out of order, one range only, the
 * whole blob, 416, a malformed multipart body), what is still missing is
 * asked for again, per range, so the caller only ever sees the bytes it
 * asked for; bytes are not verified here (the caller checks digests). A
 * registry that does not answer multipart (or has mirrors) is asked one
 * range per request from then on, for the life of @r, with one log line.
 * More than NX_RANGES_MAX ranges or NX_RANGES_BYTES bytes go in several
 * requests, one after the other: a caller that wants them in parallel
 * splits the list itself. @cb's negative return aborts everything and is
 * returned; otherwise errors as nx_registry_get_blob.
 */
#define NX_RANGES_MAX 32
#define NX_RANGES_BYTES (8u << 20)
typedef int (*nx_range_cb)(void *ctx, size_t i, uint64_t off, const void *buf, size_t len);
int nx_registry_get_ranges(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN],
			   const struct nx_range *v, size_t n, nx_range_cb cb, void *ctx);
/* 1 while @r answers multi-range requests as far as we know, 0 once it did not. */
int nx_registry_multirange(struct nx_registry *r);

/*
 * Plain GETs of a URL that is not a registry (a Nix binary cache):
 * http://, https:// (verified unless @insecure; @cafile adds a CA bundle)
 * or file://. Redirects are followed; connection errors and 5xx are retried
 * while no byte was delivered. nx_url_get streams the body to @cb (offsets
 * from 0; a negative return aborts and is returned). nx_url_get_buf
 * collects it, NUL-terminated, into *body (caller frees); over @cap bytes is
 * -E2BIG. Errors follow the table above (a missing file is -ENOENT); one log
 * line, at debug level for -ENOENT with @quiet_404. Thread-safe.
 */
struct nx_get_opts {
	const char *cafile;
	int timeout_s; /* stall time in seconds; 0 = 30 */
	int insecure;
	int quiet_404;
};
int nx_url_get(const char *url, const struct nx_get_opts *o, nx_blob_cb cb, void *ctx);
int nx_url_get_buf(const char *url, const struct nx_get_opts *o, size_t cap, char **body,
		   size_t *len);

/*
 * GET /v2/<repo>/referrers/<digest> (OCI distribution 1.1): the image index
 * of the manifests whose subject is @digest (caller frees *body). -ENOENT
 * (logged at debug level) when the registry has no referrers API: the
 * caller then reads the tag fallback `sha256-<hex>` with
 * nx_registry_get_manifest. Same signature as struct nx_source's
 * get_referrers, with @r as its ctx (nx_registry_source_referrers).
 */
int nx_registry_get_referrers(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN],
			      size_t cap, char **body, size_t *len);
int nx_registry_source_referrers(void *ctx, const uint8_t digest[NX_SHA256_LEN], size_t cap,
				 char **body, size_t *len);

/* HEAD a blob: *exists = 1 on 200, 0 on 404. */
int nx_registry_blob_exists(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN],
			    int *exists);
/* Monolithic upload (POST + PUT ?digest=) of @size bytes read from @fd at
 * offset 0 (pread), or from @buf when @fd < 0: nx_registry_push_blob
 * without a mount source. */
int nx_registry_put_blob(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN], int fd,
			 const void *buf, uint64_t size);
/*
 * Stores a blob in as few requests as the registry allows:
 *  - with @mount_from (a repository name of the same registry), first
 *    POST ?mount=&from=: 201 means mounted, nothing is sent; 202 (or a
 *    refusal) goes on with an upload;
 *  - a blob of at most NX_SINGLE_POST_MAX bytes goes in one POST ?digest=
 *    with the body, until the registry answers that with 202 or an error
 *    once: then POST + PUT for the rest of this handle's life;
 *  - otherwise POST, then PUT ?digest= with the body.
 * No existence check (HEAD) here: the caller decides whether one pays.
 * *how (may be NULL) gets NX_BLOB_MOUNTED, NX_BLOB_SINGLE or NX_BLOB_PUT.
 * A registry's Docker-Content-Digest other than @digest is -EBADMSG;
 * a @mount_from that is not a repository name -EINVAL.
 */
#define NX_SINGLE_POST_MAX (1u << 20)
enum { NX_BLOB_PUT, NX_BLOB_SINGLE, NX_BLOB_MOUNTED };
int nx_registry_push_blob(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN], int fd,
			  const void *buf, uint64_t size, const char *mount_from, int *how);
/* HEAD a manifest: *exists and, when it exists, *digest. */
int nx_registry_manifest_exists(struct nx_registry *r, const char *ref, int *exists,
				uint8_t digest[NX_SHA256_LEN]);
/* PUT /v2/<repo>/manifests/<ref> with Content-Type @media_type. */
int nx_registry_put_manifest(struct nx_registry *r, const char *ref, const char *media_type,
			     const char *body, size_t len);

/* The URL of a blob for a client without credentials (a redirect target):
 * -EACCES (quiet) when this registry asked us for credentials so far, else
 * 0 and *url (caller frees). Valid only after a request went through. */
int nx_registry_public_blob_url(struct nx_registry *r, const uint8_t digest[NX_SHA256_LEN],
				char **url);

/* Every tag of the repository, following pagination (Link rel=next). @cb
 * gets one tag at a time; a non-zero return stops and is returned. */
int nx_registry_list_tags(struct nx_registry *r, int (*cb)(void *ctx, const char *tag),
			  void *ctx);

/*
 * Adapters with exactly the signatures of struct nx_source (cache/cache.h),
 * so main() can wire a registry into a store without fetch/ including
 * cache.h:  struct nx_source src = { reg, nx_registry_source_manifest,
 *                                     nx_registry_source_blob };
 * @ctx is the struct nx_registry *.
 */
int nx_registry_source_manifest(void *ctx, const char *ref, size_t cap, char **body, size_t *len,
				uint8_t digest[NX_SHA256_LEN]);
int nx_registry_source_blob(void *ctx, const uint8_t digest[NX_SHA256_LEN], uint64_t off,
			    uint64_t len, nx_blob_cb cb, void *cbctx);
int nx_registry_source_ranges(void *ctx, const uint8_t digest[NX_SHA256_LEN],
			      const struct nx_range *v, size_t n, nx_range_cb cb, void *cbctx);

/* Counters since open (for `nixoci stats` and tests). */
struct nx_fetch_stats {
	uint64_t requests;
	uint64_t bytes;   /* body bytes received */
	uint64_t errors;
	uint64_t retries;
	uint64_t connections; /* TCP connections opened (CURLINFO_NUM_CONNECTS) */
	uint64_t h2_requests; /* responses that came over HTTP/2 */
	struct nx_hist latency; /* of each request (mirrors included), from its
				 * start to its last byte or failure */
};
/* Fills *out (overwritten, latency included) with the counters of @r and its
 * mirrors. */
void nx_registry_stats(struct nx_registry *r, struct nx_fetch_stats *out);

#endif
