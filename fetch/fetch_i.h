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
#define NX_TAG_MAX 128

struct nx_ref {
	char hostport[NX_HOSTPORT_MAX]; /* as given: "h", "h:5000", "[::1]:5000" */
	char host[NX_HOSTPORT_MAX];     /* without brackets and port */
	unsigned port;                  /* 0 when absent */
	char repo[NX_REPO_MAX + 1];
	int loopback;
};

/* "HOST[:PORT]/REPO". Quiet: 0 or -EINVAL. */
int nx_ref_parse(const char *s, struct nx_ref *out);
/* 1 for localhost, 127.0.0.0/8, ::1 (and ::ffff:127.x); @host has no brackets. */
int nx_host_is_loopback(const char *host);
/* Tag grammar [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}. */
int nx_tag_valid(const char *s);
/* A tag or "sha256:<64 lower hex>": safe to put in a URL path. */
int nx_manifest_ref_valid(const char *s);

/* ----------------------------------------------------------- registry */

struct nx_auth {
	pthread_mutex_t mu;
	char *header;      /* "Authorization: ..." or NULL; never logged */
	unsigned gen;      /* bumped on every change of @header */
	int creds_loaded;
	char *basic;       /* base64(user:pass) from a credentials file, or NULL */
};

struct nx_registry {
	char *ref; /* as given */
	struct nx_ref id;
	char *base;         /* "https://host:port" */
	size_t base_len;
	int timeout_s;
	int quiet_404;
	int insecure;
	atomic_int plain_http; /* insecure registry found to speak plain HTTP */

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

	struct nx_auth auth;

	atomic_uint_fast64_t st_requests, st_bytes, st_errors, st_retries;
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
	unsigned flags;
	long ok[3]; /* accepted statuses, 0-terminated; default {200} */

	/* request body (PUT) */
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

/* --------------------------------------------------------------- auth.c */

struct nx_challenge {
	int bearer; /* else basic */
	char realm[1024];
	char service[256];
	char scope[512];
};
/* Parses one WWW-Authenticate value; quiet: 0 or -EINVAL. */
int nx_challenge_parse(const char *v, struct nx_challenge *c);
/* Answers @c: sets r->auth.header (unless another thread already moved on
 * from generation @gen). 0 or -EACCES with a log line. */
int nx_auth_answer(struct nx_registry *r, const struct nx_challenge *c, unsigned gen, int push);
void nx_auth_release(struct nx_auth *a);

#endif
