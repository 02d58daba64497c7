/*
 * fetch/fetch_i.h: private to fetch/. The registry handle, the request
 * engine (http.c), reference parsing (ref.c) and authentication (auth.c).
 */
#ifndef NIXOCI_FETCH_I_H
#define NIXOCI_FETCH_I_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>

#include "fetch/fetch.h"

/* ---------------------------------------------------------------- ref.c */

#define NX_HOSTPORT_MAX 262 /* "[" + host + "]:" + 5 digits */
#define NX_REPO_MAX 255     /* distribution's RepositoryNameTotalLengthMax */
/* "repository:DST:pull,push repository:SRC:pull" */
#define NX_SCOPE_MAX (2 * NX_REPO_MAX + 64)
#define NX_TAG_MAX 128

struct nx_ref {
	char hostport[NX_HOSTPORT_MAX]; /* as given: "h", "h:5000", "[::1]:5000" */
	char host[NX_HOSTPORT_MAX];     /* without brackets and port */
	unsigned port;                  /* 0 when absent */
	char repo[NX_REPO_MAX + 1];
	int loopback;
	int scheme;                     /* NX_SCHEME_*: from an explicit prefix */
};

enum { NX_SCHEME_DEFAULT, NX_SCHEME_HTTPS, NX_SCHEME_HTTP };

/* "[https://|http://]HOST[:PORT]/REPO". Quiet: 0 or -EINVAL. */
int nx_ref_parse(const char *s, struct nx_ref *out);
/* 1 for localhost, 127.0.0.0/8, ::1 (and ::ffff:127.x); @host has no brackets. */
int nx_host_is_loopback(const char *host);
/* Repository name grammar (path components of [a-z0-9]+ with separators). */
int nx_repo_valid(const char *s);
/* Tag grammar [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}. */
int nx_tag_valid(const char *s);
/* A tag or "sha256:<64 lower hex>": safe to put in a URL path. */
int nx_manifest_ref_valid(const char *s);

/* ----------------------------------------------------------- registry */

/* A cached bearer token for the requests of one (realm, service, scope). */
struct nx_token {
	struct nx_token *next;
	char *key;        /* "realm\nservice\nscopes": the requests' scope, normalized */
	char *header;     /* "Authorization: Bearer .."; never logged */
	char *scope;      /* the scope asked of the token server, for renewals */
	uint64_t renew;   /* nx_now_ns() after which it is renewed */
	unsigned serial;  /* names this header in nx_auth_answer() */
	int push;         /* the scope asked for push */
};

enum { NX_AUTH_NONE, NX_AUTH_BASIC, NX_AUTH_BEARER };

struct nx_auth {
	pthread_mutex_t mu;       /* guards the fields below but the credentials */
	pthread_mutex_t fetch_mu; /* one credential load / token request at a time;
				   * guards the credentials (written once) */
	int mode;                 /* NX_AUTH_*: what the registry last asked for */
	char *basic_header;       /* mode BASIC: "Authorization: Basic .." */
	unsigned basic_serial;
	char realm[1024];         /* mode BEARER: the last challenge */
	char service[256];
	struct nx_token *tokens;
	unsigned serial;          /* last serial handed out */
	uint64_t token_requests;  /* for tests and stats */

	int creds_loaded;
	char *basic;              /* base64(user:pass) from a credential source, or NULL */
	char *identity;           /* identity (refresh) token from a helper, or NULL */
	char creds_src[320];      /* where they came from, for messages */
};

struct nx_mxfer; /* http.c: one attempt handed to the event thread */

struct nx_registry {
	char *ref; /* as given */
	struct nx_ref id;
	char *base;         /* "https://host:port" */
	size_t base_len;
	int timeout_s;
	int quiet_404;
	int insecure;
	int tls;            /* base is https:// */
	/* nx_registry_mount_source: a repository that push tokens also ask
	 * pull access to, so that a mount from it needs no second token */
	char mount_src[NX_REPO_MAX + 1];

	/* pull-through mirrors, tried in order before this registry */
	struct nx_registry **mirrors;
	size_t nmirrors;
	int is_mirror;              /* fail fast and quietly: the caller falls through */
	_Atomic uint64_t down_until; /* nx_now_ns(): skip this mirror until then */

	/* CA bundle assembled at open (system + cafile + certs.d), or none */
	char *ca_buf;
	size_t ca_len;

	CURLSH *share;
	pthread_mutex_t share_mu[CURL_LOCK_DATA_LAST];

	pthread_mutex_t pool_mu;
	pthread_cond_t pool_cv;
	CURL **pool;    /* idle handles */
	int npool;      /* idle count */
	int ncreated;   /* handles alive */
	int max;

	/* HTTP/2 multiplexing (https registries): every attempt's easy handle
	 * joins one multi handle, driven by one event thread (started on first
	 * use, joined at close) so concurrent transfers share a connection */
	CURLM *multi;
	pthread_mutex_t mx_mu;
	pthread_t mx_thread;
	int mx_running, mx_stop;   /* under mx_mu */
	struct nx_mxfer *mx_pending; /* under mx_mu: handles to add */

	struct nx_auth auth;

	/* the registry answered a single-request upload (POST ?digest= with
	 * the body) with 202 or an error: POST then PUT from now on */
	atomic_int no_single_post;
	/* a multi-range read was answered with anything but multipart/
	 * byteranges (a whole blob, one range, 416, a malformed body): one
	 * request per range from now on (logged once, fetch/registry.c) */
	atomic_int no_multirange;

	atomic_uint_fast64_t st_requests, st_bytes, st_errors, st_retries;
	struct nx_hist st_latency; /* of each request, transfer included */
	atomic_uint_fast64_t st_connections, st_h2;
};

/* --------------------------------------------------------------- http.c */

enum {
	NX_REQ_QUIET_404 = 1 << 0, /* a 404 is expected: debug log only */
	NX_REQ_NO_AUTH = 1 << 1,   /* no Authorization, no challenge handling */
	NX_REQ_PUSH = 1 << 2,      /* needs push scope */
	NX_REQ_FOLLOW = 1 << 3,    /* follow redirects (GET/HEAD) */
	NX_REQ_NO_DEADLINE = 1 << 4, /* body transfer: bounded by stall detection */
	NX_REQ_QUIET = 1 << 5,     /* failures logged at debug (the caller logs) */
};

struct nx_req {
	/* in */
	const char *method; /* "GET", "HEAD", "POST", "PUT" */
	const char *url;
	const char *what;   /* object for log lines: "manifest latest" */
	const char *accept;
	const char *content_type;
	const char *auth_header; /* explicit "Authorization: ..." (token requests) */
	const char *post_body;   /* POST body (form), or NULL for an empty POST */
	unsigned flags;
	long ok[3]; /* accepted statuses, 0-terminated; default {200} */

	/* request body (PUT, or POST when post_body is NULL) */
	int upload;
	int up_fd;
	const void *up_buf;
	uint64_t up_size;

	/* response body into a buffer (when cap > 0) */
	size_t cap;

	/* or streamed blob bytes */
	nx_blob_cb cb;
	void *cbctx;
	uint64_t off, len;
	/* or several ranges of a blob (cb unused): each attempt asks for what
	 * is still missing of them; rset->cb gets the bytes */
	struct nx_rset *rset;
	int mr_kind;          /* out: NX_MR_* of the first answer with a body */
	char mr_why[96];      /* out: why a multipart answer was unusable */

	/* out, caller frees with nx_req_release */
	long status;
	char *body; /* NUL-terminated */
	size_t body_len;
	char *content_type_out;
	char *location;
	char *docker_digest;
	char *link;
};

void nx_req_release(struct nx_req *q);
/* Runs @q with retries, auth and the error mapping; logs on failure. */
int nx_http_do(struct nx_registry *r, struct nx_req *q);
/* Resolves @ref (absolute, or relative to @against) into *out (caller frees). */
int nx_url_resolve(const char *against, const char *ref, char **out);

/* ---------------------------------------------------------- multipart.c */

/* Which bytes of a sorted list of ranges were delivered (nx_registry_get_ranges). */
struct nx_rset {
	const struct nx_range *v;
	size_t n;
	uint64_t *next;  /* next[i]: the next byte of range i to deliver */
	nx_range_cb cb;
	void *ctx;
	uint64_t got;    /* bytes delivered */
	int cb_failed;   /* cb returned an error: stop everything */
};
/* -EINVAL when @v is empty, unsorted, overlapping, or has an empty or
 * overflowing range; -ENOMEM. */
int nx_rset_init(struct nx_rset *s, const struct nx_range *v, size_t n, nx_range_cb cb,
		 void *ctx);
void nx_rset_release(struct nx_rset *s);
/* Blob bytes [off, off+len) from any answer: hands @cb what continues a
 * range exactly where it stands; the rest is dropped. @cb's error. */
int nx_rset_deliver(struct nx_rset *s, uint64_t off, const void *buf, size_t len);
int nx_rset_done(const struct nx_rset *s);
/* 1 if a range still wants bytes that a stream now at @pos reaches within
 * @gap bytes: whether reading on through an answer is worth it. */
int nx_rset_wanted_near(const struct nx_rset *s, uint64_t pos, uint64_t gap);
/* "a-b,c-d" of what is missing, for a Range header; -ENOENT if nothing
 * is, -E2BIG if @cap is too small. */
int nx_rset_format(const struct nx_rset *s, char *buf, size_t cap);

enum { NX_MR_NONE, NX_MR_MULTIPART, NX_MR_SINGLE, NX_MR_WHOLE };
/* A single-range or whole-blob answer to a multi-range request is read on
 * while a wanted byte lies within this many bytes ahead (cheaper than a
 * round trip of its own); past that it is stopped */
#define NX_MR_GAP (256u << 10)

#define NX_MP_LINE_MAX 512
#define NX_MP_HEADERS_MAX 16
#define NX_MP_PARTS_MAX (4 * NX_RANGES_MAX)
#define NX_MP_PREAMBLE_MAX 1024
#define NX_MP_EPILOGUE_MAX 1024

/* A streaming multipart/byteranges parser (registry input: bounded). */
struct nx_mpart {
	char delim[80]; /* "--" boundary */
	size_t dlen;
	int state;
	char line[NX_MP_LINE_MAX + 1];
	size_t llen;
	uint64_t first, last; /* the current part's Content-Range */
	int have_range;
	uint64_t pos, left;   /* next data byte's blob offset, data bytes left */
	unsigned parts, hdrs;
	size_t preamble, epilogue;
	char why[96];         /* the first malformation, for the log line */
};
/* From the answer's Content-Type: -EINVAL (why set) unless it is
 * multipart/byteranges with a valid boundary. */
int nx_mpart_init(struct nx_mpart *m, const char *ctype);
/* Feeds body bytes; @cb gets each part's data with blob offsets. -EIO on a
 * malformation (m->why says which), or @cb's error. */
int nx_mpart_feed(struct nx_mpart *m, const char *buf, size_t n, nx_blob_cb cb, void *ctx);
/* At the end of the body: 0 if the closing delimiter was seen, else -EIO. */
int nx_mpart_end(struct nx_mpart *m);

/* --------------------------------------------------------------- auth.c */

struct nx_challenge {
	int bearer; /* else basic */
	char realm[1024];
	char service[256];
	char scope[512];
	char error[64]; /* error="insufficient_scope" etc. */
};
/* Parses one WWW-Authenticate value; quiet: 0 or -EINVAL. */
int nx_challenge_parse(const char *v, struct nx_challenge *c);
/*
 * The Authorization line for a request to the registry itself (caller wipes
 * and frees; NULL when none is due) and the serial that names it. A bearer
 * token that is about to expire is renewed here, before the request.
 */
int nx_auth_header(struct nx_registry *r, int push, char **header, unsigned *serial);
/* Answers the 401 challenge @c to a request that carried @serial (0: none).
 * 0 (retry the request) or -EACCES with a log line. */
int nx_auth_answer(struct nx_registry *r, const struct nx_challenge *c, unsigned serial, int push);
/* Logs the one line for a 401 that is final. */
void nx_auth_log_rejected(struct nx_registry *r, int level);
void nx_auth_release(struct nx_auth *a);

/* Normalizes a token scope: space-separated "type:name:actions" items, the
 * actions and then the items sorted and de-duplicated. Quiet: 0, -E2BIG. */
int nx_scope_normalize(const char *in, char *out, size_t cap);
/* Seconds a token response is good for, from expires_in (default 60) and
 * issued_at (RFC 3339) as seen at wall-clock @now. */
long nx_token_lifetime(long expires_in, const char *issued_at, long now);
/* 1 if the JWT @tok grants @action on repository @repo, 0 if it does not,
 * -EINVAL when it is not a readable JWT (opaque tokens: nothing to check). */
int nx_jwt_grants(const char *tok, const char *repo, const char *action);
/*
 * Runs "docker-credential-@helper get" with @server on stdin (never argv),
 * no shell, bounded time and output. On 0, *user and *secret (caller wipes
 * and frees). -ENOENT: the helper has no credentials for @server (quiet);
 * -ENOEXEC: no such helper in PATH; -EIO: it failed (both logged).
 */
int nx_cred_helper_get(const char *helper, const char *server, char **user, char **secret);

#endif
