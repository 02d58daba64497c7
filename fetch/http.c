/*
 * fetch/http.c: the libcurl plumbing under every registry call.
 *
 * One struct nx_registry owns a CURLSH (DNS cache, connection cache and TLS
 * sessions shared by all its easy handles, guarded by one mutex per lock
 * class) and a bounded pool of easy handles. A call takes a handle for one
 * attempt and gives it back before sleeping or authenticating, so a thread
 * never holds a handle while it waits and the pool cannot deadlock.
 *
 * HTTP/2: for an https registry one attempt does not run curl_easy_perform
 * on the caller's thread. The easy handle is handed to the registry's one
 * CURLM (CURLPIPE_MULTIPLEX, CURLOPT_PIPEWAIT), driven by one event thread,
 * so concurrent transfers share one connection when the registry speaks h2.
 * The event thread only copies body bytes into a bounded per-attempt buffer
 * (pausing the transfer when it is full); the caller's thread drains it and
 * runs the caller's callback, so hashing, decompression and fsync never run
 * on the thread that serves every transfer. Plain-HTTP registries and
 * uploads from a file keep curl_easy_perform on the caller's thread.
 * NIXOCI_FETCH_MULTI=1/0 forces the multi path on or off (tests).
 *
 * nx_http_do() is the edge where libcurl's and HTTP's errors become negative
 * errnos (fetch.h has the table) and where the one log line is written.
 *
 * Retries: connection errors, stalls, 5xx and 429 are retried with
 * exponential backoff and jitter (429 honours Retry-After), bounded by the
 * call's deadline, and only while the caller has not seen any byte - except
 * blob reads, which resume by asking for the bytes not yet delivered.
 * A refused connection is retried only twice within a second: a registry
 * that is not running should be reported at once, not after 30 s.
 */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/x509.h>

#include "fetch/fetch_i.h"

#define NX_DEFAULT_TIMEOUT 30
#define NX_DEFAULT_TRANSFERS 8
#define NX_MAX_TRANSFERS 64
#define NX_LOW_SPEED_BYTES 1024L /* a transfer below 1 KiB/s ... */
#define NX_LOW_SPEED_SECS 10L    /* ... for 10 s (or a third of the timeout) is stalled */
#define NX_CONNECT_SECS 10L
#define NX_MAX_ATTEMPTS 6
#define NX_REFUSED_ATTEMPTS 3
#define NX_MIRROR_ATTEMPTS 2   /* a mirror fails fast: the next source is there */
#define NX_MIRROR_DOWN_SECS 30 /* a mirror that cannot be reached is skipped this long */
#define NX_REDIRECT_RENEWALS 2 /* expired signed URLs asked for again */
#define NX_BACKOFF_MS 200
#define NX_BACKOFF_MAX_MS 5000
#define NX_ERRBODY_MAX 8192
#define NX_CA_MAX (32u << 20)
#define NX_HDR_MAX 4096

/* ------------------------------------------------------------ global */

int nx_fetch_global_init(void)
{
	CURLcode c = curl_global_init(CURL_GLOBAL_DEFAULT);

	if (c != CURLE_OK) {
		nx_log(NX_LOG_ERR, "libcurl initialisation failed: %s", curl_easy_strerror(c));
		return -EIO;
	}
	return 0;
}

void nx_fetch_global_cleanup(void)
{
	curl_global_cleanup();
}

/* Set once by nx_fetch_cancel_all (from a signal handler): lock-free. */
static atomic_int fetch_cancelled;

void nx_fetch_cancel_all(void)
{
	atomic_store(&fetch_cancelled, 1);
}

static int cancelled(void)
{
	return atomic_load_explicit(&fetch_cancelled, memory_order_relaxed);
}

/* ------------------------------------------------------------ CA bundle */

/* Appends the file to the buffer; missing files are fine when @optional. */
static int ca_append(char **buf, size_t *len, const char *path, int optional)
{
	struct stat st;
	char *nb;
	ssize_t n;
	size_t got = 0;
	int fd, e;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		e = errno;
		if (optional && e == ENOENT)
			return 0;
		nx_log(NX_LOG_ERR, "ca file %s: %s", path, strerror(e));
		return -e;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > NX_CA_MAX ||
	    *len + (size_t)st.st_size + 2 > NX_CA_MAX) {
		nx_log(NX_LOG_ERR, "ca file %s: not a regular file of at most %u bytes", path,
		       NX_CA_MAX);
		close(fd);
		return -EINVAL;
	}
	nb = realloc(*buf, *len + (size_t)st.st_size + 2);
	if (!nb) {
		close(fd);
		return -ENOMEM;
	}
	*buf = nb;
	while (got < (size_t)st.st_size) {
		n = read(fd, nb + *len + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			e = errno;
			nx_log(NX_LOG_ERR, "ca file %s: %s", path, strerror(e));
			close(fd);
			return -e;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	*len += got;
	/* PEM files need not end with a newline; the next one must start a line */
	nb[(*len)++] = '\n';
	nb[*len] = 0;
	return 0;
}

/*
 * CURLOPT_CAINFO takes one file, but a private registry's CA (cafile=, or
 * the *.crt files in docker's and podman's certs.d/HOST:PORT) must be
 * trusted *in addition* to the system roots, because a redirect may go to a
 * public storage host. So when there is anything extra, build one PEM blob:
 * system bundle + extras.
 */
static int ca_build(struct nx_registry *r, const char *cafile)
{
	static const char *const dirs[] = { "/etc/containers/certs.d", "/etc/docker/certs.d" };
	curl_version_info_data *vi = curl_version_info(CURLVERSION_NOW);
	const char *sys = vi->cainfo ? vi->cainfo : "/etc/ssl/certs/ca-certificates.crt";
	char *buf = NULL;
	size_t len = 0, i, k;
	int extra = 0, rc;

	for (i = 0; i < 2; i++) {
		char pat[NX_HOSTPORT_MAX + 64];
		glob_t g;

		snprintf(pat, sizeof(pat), "%s/%s/*.crt", dirs[i], r->id.hostport);
		if (glob(pat, GLOB_NOSORT | GLOB_NOESCAPE, NULL, &g) != 0)
			continue;
		for (k = 0; k < g.gl_pathc; k++) {
			if (!extra) {
				rc = ca_append(&buf, &len, sys, 1);
				if (rc < 0)
					goto fail_glob;
				extra = 1;
			}
			rc = ca_append(&buf, &len, g.gl_pathv[k], 0);
			if (rc < 0)
				goto fail_glob;
		}
		globfree(&g);
		continue;
fail_glob:
		globfree(&g);
		free(buf);
		return rc;
	}
	if (cafile) {
		if (!extra) {
			rc = ca_append(&buf, &len, sys, 1);
			if (rc < 0)
				goto fail;
		}
		rc = ca_append(&buf, &len, cafile, 0);
		if (rc < 0)
			goto fail;
		extra = 1;
	}
	r->ca_buf = buf;
	r->ca_len = extra ? len : 0;
	return 0;
fail:
	free(buf);
	return rc;
}

/* ------------------------------------------------------------ multiplexing */

/*
 * HTTP/2 carries many transfers on one connection, but only transfers of one
 * multi handle can share a connection that way: a thread running
 * curl_easy_perform() on its own handle opens a connection of its own. So an
 * https registry drives every attempt's easy handle from one event thread
 * over one CURLM (CURLOPT_PIPEWAIT makes a new transfer wait for a
 * connection in progress rather than open another).
 *
 * Callbacks then run on the event thread, which serves every transfer: they
 * only copy bytes. A blob's bytes go to a bounded per-attempt buffer that
 * the calling thread drains and delivers (the caller's callback hashes,
 * decompresses and writes the cache); a full buffer pauses the transfer until
 * the caller has drained it. The calling thread never touches the easy
 * handle while it is in the multi handle: it asks the event thread (flags
 * under mu, then curl_multi_wakeup) to resume or to abort it.
 */
#define NX_MX_BUF_CAP (512u << 10)

struct nx_mxfer {
	struct nx_mxfer *next; /* in r->mx_pending, then the event thread's list */
	CURL *h;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	/* under mu */
	char *buf;            /* blob bytes the caller has not taken yet */
	size_t len, alloc;
	int paused;           /* on_write paused the transfer: buffer full */
	int unpause;          /* the caller drained it: resume */
	int abort;            /* the caller's delivery failed: remove the handle */
	int oom;
	int done;
	CURLcode result;
	char errbuf[CURL_ERROR_SIZE]; /* curl's, apart from xfer's curl_msg */
};

/* Ends @t (already out of the multi handle); the caller may free it at once. */
static void mx_finish(struct nx_mxfer *t, CURLcode res)
{
	pthread_mutex_lock(&t->mu);
	t->result = res;
	t->done = 1;
	pthread_cond_signal(&t->cv);
	pthread_mutex_unlock(&t->mu);
}

static void mx_unlink(struct nx_mxfer **list, struct nx_mxfer *t)
{
	struct nx_mxfer **p;

	for (p = list; *p; p = &(*p)->next) {
		if (*p == t) {
			*p = t->next;
			return;
		}
	}
}

static void *mx_loop(void *ud)
{
	struct nx_registry *r = ud;
	struct nx_mxfer *active = NULL, *t, *n;
	int running, left, stop;
	CURLMsg *m;

	for (;;) {
		pthread_mutex_lock(&r->mx_mu);
		stop = r->mx_stop;
		t = r->mx_pending;
		r->mx_pending = NULL;
		pthread_mutex_unlock(&r->mx_mu);
		for (; t; t = n) {
			n = t->next;
			if (curl_multi_add_handle(r->multi, t->h) != CURLM_OK) {
				mx_finish(t, CURLE_OUT_OF_MEMORY);
				continue;
			}
			t->next = active;
			active = t;
		}
		for (t = active; t; t = n) {
			int ab, up;

			n = t->next;
			pthread_mutex_lock(&t->mu);
			ab = t->abort;
			up = t->unpause && !ab;
			if (up)
				t->unpause = t->paused = 0;
			pthread_mutex_unlock(&t->mu);
			if (ab) {
				mx_unlink(&active, t);
				curl_multi_remove_handle(r->multi, t->h);
				mx_finish(t, CURLE_WRITE_ERROR);
			} else if (up) {
				/* may call on_write at once: no lock held here */
				curl_easy_pause(t->h, CURLPAUSE_CONT);
			}
		}
		if (stop && !active)
			break; /* close: every call has returned */
		curl_multi_perform(r->multi, &running);
		while ((m = curl_multi_info_read(r->multi, &left))) {
			CURL *h = m->easy_handle;
			CURLcode res = m->data.result;
			char *priv = NULL;

			if (m->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(h, CURLINFO_PRIVATE, &priv);
			t = (struct nx_mxfer *)(void *)priv;
			mx_unlink(&active, t);
			curl_multi_remove_handle(r->multi, h); /* m is gone after this */
			mx_finish(t, res);
		}
		curl_multi_poll(r->multi, NULL, 0, 1000, NULL);
	}
	return NULL;
}

/* https registries multiplex; NIXOCI_FETCH_MULTI=1 (tests) makes every
 * registry use the event thread, =0 none. */
static int mx_open(struct nx_registry *r)
{
	const char *e = getenv("NIXOCI_FETCH_MULTI");
	int want = e && *e ? strcmp(e, "0") != 0 : r->tls;

	if (!want)
		return 0;
	r->multi = curl_multi_init();
	if (!r->multi)
		return -ENOMEM;
	curl_multi_setopt(r->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
	return 0;
}

static void mx_close(struct nx_registry *r)
{
	int running;

	if (!r->multi)
		return;
	pthread_mutex_lock(&r->mx_mu);
	running = r->mx_running;
	r->mx_stop = 1;
	pthread_mutex_unlock(&r->mx_mu);
	if (running) {
		curl_multi_wakeup(r->multi);
		pthread_join(r->mx_thread, NULL);
	}
	curl_multi_cleanup(r->multi);
	r->multi = NULL;
}

/* Hands @t to the event thread, starting it on first use; -errno if it
 * cannot start (the caller then performs the attempt itself). */
static int mx_submit(struct nx_registry *r, struct nx_mxfer *t)
{
	int e;

	pthread_mutex_lock(&r->mx_mu);
	if (!r->mx_running) {
		e = pthread_create(&r->mx_thread, NULL, mx_loop, r);
		if (e) {
			pthread_mutex_unlock(&r->mx_mu);
			return -e;
		}
		r->mx_running = 1;
	}
	t->next = r->mx_pending;
	r->mx_pending = t;
	pthread_mutex_unlock(&r->mx_mu);
	curl_multi_wakeup(r->multi);
	return 0;
}

/* ------------------------------------------------------------ open/close */

static void share_lock(CURL *h, curl_lock_data d, curl_lock_access a, void *ud)
{
	struct nx_registry *r = ud;

	if ((unsigned)d < CURL_LOCK_DATA_LAST)
		pthread_mutex_lock(&r->share_mu[d]);
}

static void share_unlock(CURL *h, curl_lock_data d, void *ud)
{
	struct nx_registry *r = ud;

	if ((unsigned)d < CURL_LOCK_DATA_LAST)
		pthread_mutex_unlock(&r->share_mu[d]);
}

/*
 * Each mirror is a registry of its own (connections, credentials, TLS) for
 * the same repository path, as registries.conf mirrors are.
 */
static int mirrors_open(struct nx_registry *r, const struct nx_regopts *o)
{
	struct nx_regopts mo = *o;
	size_t i;
	int rc;

	if (!o->nmirrors)
		return 0;
	r->mirrors = calloc(o->nmirrors, sizeof(*r->mirrors));
	if (!r->mirrors)
		return -ENOMEM;
	mo.mirrors = NULL;
	mo.nmirrors = 0;
	for (i = 0; i < o->nmirrors; i++) {
		const char *m = o->mirrors[i], *p = m;
		char *mref;

		if (strncmp(p, "https://", 8) == 0)
			p += 8;
		else if (strncmp(p, "http://", 7) == 0)
			p += 7;
		if (!*p || strchr(p, '/')) {
			nx_log(NX_LOG_ERR, "mirror %s: want HOST[:PORT], without a path", m);
			return -EINVAL;
		}
		if (asprintf(&mref, "%s/%s", m, r->id.repo) < 0)
			return -ENOMEM;
		rc = nx_registry_open(&r->mirrors[i], mref, &mo);
		free(mref);
		if (rc < 0)
			return rc;
		r->mirrors[i]->is_mirror = 1;
		r->nmirrors++;
	}
	return 0;
}

int nx_registry_open(struct nx_registry **out, const char *ref, const struct nx_regopts *o)
{
	static const struct nx_regopts defaults;
	struct nx_registry *r;
	int rc, i, insecure;

	*out = NULL;
	if (!o)
		o = &defaults;
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	for (i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_init(&r->share_mu[i], NULL);
	pthread_mutex_init(&r->pool_mu, NULL);
	pthread_cond_init(&r->pool_cv, NULL);
	pthread_mutex_init(&r->mx_mu, NULL);
	pthread_mutex_init(&r->auth.mu, NULL);
	pthread_mutex_init(&r->auth.fetch_mu, NULL);

	if (nx_ref_parse(ref, &r->id) < 0) {
		nx_log(NX_LOG_ERR,
		       "registry reference %s: malformed, want HOST[:PORT]/REPO with a "
		       "lower-case repository name",
		       ref);
		rc = -EINVAL;
		goto fail;
	}
	insecure = o->insecure &&
		   (!o->insecure_host || strcmp(o->insecure_host, r->id.hostport) == 0);
	if (r->id.scheme == NX_SCHEME_HTTP && !r->id.loopback && !insecure) {
		nx_log(NX_LOG_ERR,
		       "registry reference %s: plain http to a host that is not loopback needs "
		       "insecure",
		       ref);
		rc = -EINVAL;
		goto fail;
	}
	/* loopback defaults to plain http (a test or a local proxy); an
	 * explicit https:// prefix asks for TLS, verified as everywhere */
	r->tls = r->id.scheme == NX_SCHEME_HTTPS ||
		 (r->id.scheme == NX_SCHEME_DEFAULT && !r->id.loopback);
	r->ref = strdup(ref);
	if (!r->ref || asprintf(&r->base, "%s://%s", r->tls ? "https" : "http",
				r->id.hostport) < 0) {
		r->base = NULL;
		rc = -ENOMEM;
		goto fail;
	}
	r->base_len = strlen(r->base);
	r->timeout_s = o->timeout_s > 0 ? o->timeout_s : NX_DEFAULT_TIMEOUT;
	r->max = o->max_transfers > 0 ? o->max_transfers : NX_DEFAULT_TRANSFERS;
	if (r->max > NX_MAX_TRANSFERS)
		r->max = NX_MAX_TRANSFERS;
	r->quiet_404 = o->quiet_404;
	r->insecure = insecure;
	/* also for a plain-http registry: a redirect may lead to https */
	rc = ca_build(r, o->cafile);
	if (rc < 0)
		goto fail;
	r->pool = calloc((size_t)r->max, sizeof(*r->pool));
	r->share = curl_share_init();
	if (!r->pool || !r->share) {
		rc = -ENOMEM;
		goto fail;
	}
	curl_share_setopt(r->share, CURLSHOPT_LOCKFUNC, share_lock);
	curl_share_setopt(r->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
	curl_share_setopt(r->share, CURLSHOPT_USERDATA, r);
	curl_share_setopt(r->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
	curl_share_setopt(r->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
	curl_share_setopt(r->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
	rc = mx_open(r);
	if (rc < 0)
		goto fail;
	rc = mirrors_open(r, o);
	if (rc < 0)
		goto fail;
	*out = r;
	return 0;
fail:
	nx_registry_close(r);
	return rc;
}

void nx_registry_close(struct nx_registry *r)
{
	int i;

	if (!r)
		return;
	for (i = 0; i < (int)r->nmirrors; i++)
		nx_registry_close(r->mirrors[i]);
	free(r->mirrors);
	mx_close(r);
	/* every call has returned: all handles are idle */
	for (i = 0; i < r->npool; i++)
		curl_easy_cleanup(r->pool[i]);
	if (r->share)
		curl_share_cleanup(r->share);
	free(r->pool);
	nx_auth_release(&r->auth);
	pthread_mutex_destroy(&r->auth.mu);
	pthread_mutex_destroy(&r->auth.fetch_mu);
	pthread_cond_destroy(&r->pool_cv);
	pthread_mutex_destroy(&r->pool_mu);
	pthread_mutex_destroy(&r->mx_mu);
	for (i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_destroy(&r->share_mu[i]);
	free(r->ca_buf);
	free(r->base);
	free(r->ref);
	free(r);
}

const char *nx_registry_ref(const struct nx_registry *r)
{
	return r->ref;
}

const char *nx_registry_url(const struct nx_registry *r)
{
	return r->base;
}

void nx_registry_stats(struct nx_registry *r, struct nx_fetch_stats *out)
{
	size_t i;

	memset(&out->latency, 0, sizeof(out->latency));
	nx_hist_add(&out->latency, &r->st_latency);
	out->requests = atomic_load(&r->st_requests);
	out->bytes = atomic_load(&r->st_bytes);
	out->errors = atomic_load(&r->st_errors);
	out->retries = atomic_load(&r->st_retries);
	out->connections = atomic_load(&r->st_connections);
	out->h2_requests = atomic_load(&r->st_h2);
	for (i = 0; i < r->nmirrors; i++) {
		struct nx_fetch_stats m;

		nx_registry_stats(r->mirrors[i], &m);
		out->requests += m.requests;
		out->bytes += m.bytes;
		out->errors += m.errors;
		out->retries += m.retries;
		out->connections += m.connections;
		out->h2_requests += m.h2_requests;
		nx_hist_add(&out->latency, &m.latency);
	}
}

/* ------------------------------------------------------------ pool */

static CURL *pool_get(struct nx_registry *r)
{
	CURL *h = NULL;

	pthread_mutex_lock(&r->pool_mu);
	while (r->npool == 0 && r->ncreated >= r->max)
		pthread_cond_wait(&r->pool_cv, &r->pool_mu);
	if (r->npool > 0) {
		h = r->pool[--r->npool];
		pthread_mutex_unlock(&r->pool_mu);
		return h;
	}
	r->ncreated++;
	pthread_mutex_unlock(&r->pool_mu);
	h = curl_easy_init();
	if (!h) {
		pthread_mutex_lock(&r->pool_mu);
		r->ncreated--;
		pthread_cond_signal(&r->pool_cv);
		pthread_mutex_unlock(&r->pool_mu);
	}
	return h;
}

static void pool_put(struct nx_registry *r, CURL *h)
{
	/* options must not leak into the next request; the share (and so the
	 * connection cache) survives, it is set again on every use */
	curl_easy_reset(h);
	pthread_mutex_lock(&r->pool_mu);
	r->pool[r->npool++] = h;
	pthread_cond_signal(&r->pool_cv);
	pthread_mutex_unlock(&r->pool_mu);
}

/*
 * A stalled transfer is given up after a third of the request timeout (half
 * a second to 10 s), so a read that stalls once or twice can still resume and
 * finish inside its deadline. on_xferinfo checks 100 ms early: libcurl calls
 * it about once a second while nothing moves, so a silence of exactly this
 * long would be seen a callback late, up to a second per stall.
 */
static uint64_t stall_ms(const struct nx_registry *r)
{
	uint64_t t = (uint64_t)r->timeout_s * 1000 / 3;

	if (t < 500)
		t = 500;
	return t < NX_LOW_SPEED_SECS * 1000 ? t : NX_LOW_SPEED_SECS * 1000;
}

/* ------------------------------------------------------------ one attempt */

struct xfer {
	struct nx_registry *r;
	struct nx_req *q;

	/* headers of the current response (reset on every status line) */
	long status;
	char ctype[256];
	char location[NX_HDR_MAX];
	char digest[160];
	char link[NX_HDR_MAX];
	char challenge[2048];
	int challenge_bearer;
	uint64_t crange_start, crange_last, crange_total;
	int have_crange, have_total;
	char retry_after[64];
	int hdr_too_long;

	/* buffered body (q->cap) or error body */
	char *body;
	size_t body_len, body_alloc;
	char errbody[NX_ERRBODY_MAX + 1];
	size_t errbody_len;

	/* streamed blob state, kept across attempts */
	uint64_t want_start; /* start of the Range sent in this attempt */
	uint64_t next;       /* first absolute offset not yet delivered */
	int delivered;       /* the callback has seen bytes */
	int started;         /* this response's first body byte arrived */
	uint64_t pos;        /* absolute offset of the next byte of this response */
	int done_early;      /* a 200 passed off+len: stopped on purpose */
	uint64_t progress;   /* bytes delivered in this attempt */

	/* several ranges (q->rset): the Range of this attempt, the body's
	 * parser when it is multipart, and a bound on its size */
	char *mr_range;
	size_t mr_range_cap;
	struct nx_mpart mp;
	int mr_multi;
	uint64_t mr_body, mr_cap;

	uint64_t up_pos;
	/* stall detection: curl's low-speed check averages over several
	 * seconds, so a burst followed by silence is noticed late; this
	 * notices "no byte either way for stall_ms()" itself */
	uint64_t last_move_ns;
	curl_off_t last_dl, last_ul;
	int stalled;
	int err;           /* from a callback: the reason of CURLE_*_ERROR */
	int cb_err;        /* the caller's callback failed: no log, no retry */
	char curl_msg[CURL_ERROR_SIZE];
	struct nx_mxfer *mx; /* this attempt runs on the event thread */
};

/* An upload whose body is all sent waits for the registry to check and
 * store it (hash a large blob, move it into place) before the answer: silence
 * then is work, not a stall, and is given the whole request timeout. */
static int upload_sent(const struct xfer *x, curl_off_t ultotal, curl_off_t ulnow)
{
	return x->q->upload && x->q->up_size > 0 && ulnow > 0 &&
	       (uint64_t)ulnow >= x->q->up_size && (ultotal <= 0 || ulnow >= ultotal);
}

static uint64_t upload_wait_ms(const struct nx_registry *r)
{
	uint64_t t = (uint64_t)(r->timeout_s > 0 ? r->timeout_s : 30) * 1000;

	return t > stall_ms(r) ? t : stall_ms(r);
}

/* libcurl calls this about once a second, and whenever data moves. */
static int on_xferinfo(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
		       curl_off_t ulnow)
{
	struct xfer *x = ud;
	uint64_t now = nx_now_ns();
	int paused = 0;

	if (cancelled())
		return 1; /* CURLE_ABORTED_BY_CALLBACK: nx_http_do sees the flag */
	if (x->mx) {
		pthread_mutex_lock(&x->mx->mu);
		paused = x->mx->paused;
		pthread_mutex_unlock(&x->mx->mu);
	}
	/* paused for a slow consumer is not a stalled registry */
	if (paused || dlnow != x->last_dl || ulnow != x->last_ul) {
		x->last_dl = dlnow;
		x->last_ul = ulnow;
		x->last_move_ns = now;
		return 0;
	}
	if (now - x->last_move_ns >= (upload_sent(x, ultotal, ulnow) ? upload_wait_ms(x->r)
									  : stall_ms(x->r) - 100) *
					    1000000) {
		x->stalled = 1;
		return 1; /* CURLE_ABORTED_BY_CALLBACK, reported as a stall */
	}
	return 0;
}

static void copy_hdr(char *dst, size_t cap, const char *v, size_t n, int *too_long)
{
	if (n >= cap) {
		*too_long = 1;
		n = cap - 1;
	}
	memcpy(dst, v, n);
	dst[n] = 0;
}

static int hdr_is(const char *name, size_t n, const char *want)
{
	return strlen(want) == n && strncasecmp(name, want, n) == 0;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud)
{
	struct xfer *x = ud;
	size_t len = size * nitems, n = len, nl;
	const char *colon, *v;

	while (n > 0 && (buf[n - 1] == '\r' || buf[n - 1] == '\n'))
		n--;
	if (n >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
		const char *sp = memchr(buf, ' ', n);

		x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
		x->ctype[0] = x->location[0] = x->digest[0] = x->link[0] = 0;
		x->challenge[0] = x->retry_after[0] = 0;
		x->challenge_bearer = x->have_crange = x->have_total = 0;
		x->hdr_too_long = 0;
		return len;
	}
	colon = memchr(buf, ':', n);
	if (!colon)
		return len;
	nl = (size_t)(colon - buf);
	v = colon + 1;
	while (v < buf + n && (*v == ' ' || *v == '\t'))
		v++;
	n = (size_t)(buf + n - v);
	while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
		n--;

	if (hdr_is(buf, nl, "content-type")) {
		copy_hdr(x->ctype, sizeof(x->ctype), v, n, &x->hdr_too_long);
	} else if (hdr_is(buf, nl, "location")) {
		copy_hdr(x->location, sizeof(x->location), v, n, &x->hdr_too_long);
	} else if (hdr_is(buf, nl, "docker-content-digest")) {
		copy_hdr(x->digest, sizeof(x->digest), v, n, &x->hdr_too_long);
	} else if (hdr_is(buf, nl, "link")) {
		/* keep the one that names the next page */
		if (memmem(v, n, "next", 4))
			copy_hdr(x->link, sizeof(x->link), v, n, &x->hdr_too_long);
	} else if (hdr_is(buf, nl, "retry-after")) {
		int ignored = 0;

		copy_hdr(x->retry_after, sizeof(x->retry_after), v, n, &ignored);
	} else if (hdr_is(buf, nl, "www-authenticate")) {
		int ignored = 0, bearer = n >= 7 && strncasecmp(v, "bearer ", 7) == 0;

		/* prefer Bearer over Basic when both are offered */
		if (!x->challenge[0] || (bearer && !x->challenge_bearer)) {
			copy_hdr(x->challenge, sizeof(x->challenge), v, n, &ignored);
			x->challenge_bearer = bearer;
		}
	} else if (hdr_is(buf, nl, "content-range")) {
		char tmp[128], *end;
		int ignored = 0;

		/* "bytes <first>-<last>/<total or *>" */
		copy_hdr(tmp, sizeof(tmp), v, n, &ignored);
		if (strncmp(tmp, "bytes ", 6) == 0 && tmp[6] >= '0' && tmp[6] <= '9') {
			errno = 0;
			x->crange_start = strtoull(tmp + 6, &end, 10);
			x->have_crange = errno == 0 && *end == '-';
			x->crange_last = x->have_crange ? strtoull(end + 1, NULL, 10) : 0;
			if (x->crange_last < x->crange_start)
				x->have_crange = 0;
			end = strchr(tmp, '/');
			if (end && end[1] >= '0' && end[1] <= '9') {
				x->crange_total = strtoull(end + 1, NULL, 10);
				x->have_total = 1;
			}
		}
	}
	return len;
}

static int mr_part_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	return nx_rset_deliver(ctx, off, buf, len);
}

/* A multi-range answer's body: multipart, one range, or the whole blob,
 * whatever the server chose; the rset keeps what was asked for. */
static size_t mr_deliver(struct xfer *x, const char *buf, size_t n)
{
	struct nx_req *q = x->q;
	uint64_t before = q->rset->got;
	int rc, kind;

	if (!x->started) {
		x->started = 1;
		x->mr_multi = 0;
		if (x->status == 206 && !x->have_crange) {
			if (nx_mpart_init(&x->mp, x->ctype) < 0) {
				snprintf(q->mr_why, sizeof(q->mr_why), "%s", x->mp.why);
				snprintf(x->curl_msg, sizeof(x->curl_msg), "%s", x->mp.why);
				x->err = -EIO;
				return CURL_WRITEFUNC_ERROR;
			}
			x->mr_multi = 1;
			kind = NX_MR_MULTIPART;
		} else if (x->status == 206) {
			x->pos = x->crange_start;
			kind = NX_MR_SINGLE;
		} else {
			x->pos = 0; /* a 200: the whole blob */
			kind = NX_MR_WHOLE;
		}
		if (!q->mr_kind)
			q->mr_kind = kind;
	}
	x->mr_body += n;
	if (x->mr_multi && x->mr_body > x->mr_cap) {
		snprintf(q->mr_why, sizeof(q->mr_why),
			 "multipart answer far larger than the ranges asked for");
		snprintf(x->curl_msg, sizeof(x->curl_msg), "%s", q->mr_why);
		x->err = -EIO;
		return CURL_WRITEFUNC_ERROR;
	}
	if (x->mr_multi) {
		rc = nx_mpart_feed(&x->mp, buf, n, mr_part_cb, q->rset);
	} else {
		rc = nx_rset_deliver(q->rset, x->pos, buf, n);
		x->pos += n;
	}
	x->progress += q->rset->got - before;
	if (q->rset->got > before)
		x->delivered = 1;
	if (rc < 0 && q->rset->cb_failed) {
		x->err = rc;
		x->cb_err = 1;
		return CURL_WRITEFUNC_ERROR;
	}
	if (rc < 0) {
		snprintf(q->mr_why, sizeof(q->mr_why), "%s", x->mp.why);
		snprintf(x->curl_msg, sizeof(x->curl_msg), "%s", x->mp.why);
		x->err = -EIO;
		return CURL_WRITEFUNC_ERROR;
	}
	/* one range or a whole blob: read on only while a range still
	 * wants bytes a little way ahead; the rest is asked for apart */
	if (!x->mr_multi && !nx_rset_wanted_near(q->rset, x->pos, NX_MR_GAP)) {
		x->done_early = 1;
		return CURL_WRITEFUNC_ERROR;
	}
	return 1;
}

static size_t blob_deliver(struct xfer *x, const char *buf, size_t n)
{
	struct nx_req *q = x->q;
	uint64_t skip_to;
	int rc;

	if (q->rset)
		return mr_deliver(x, buf, n);

	if (!x->started) {
		x->started = 1;
		if (x->status == 206) {
			if (!x->have_crange || x->crange_start != x->want_start) {
				snprintf(x->curl_msg, sizeof(x->curl_msg),
					 "range response starts at %" PRIu64 ", asked for %" PRIu64,
					 x->have_crange ? x->crange_start : 0, x->want_start);
				x->err = -EIO;
				return CURL_WRITEFUNC_ERROR;
			}
			x->pos = x->crange_start;
		} else {
			/*
			 * A 200 is the whole blob: the registry (or a pull-through
			 * proxy on a miss) ignored Range. fetch.h promises the bytes
			 * from offset 0 rather than silently skipping to @off, so
			 * the caller can keep a prefix it will want later instead
			 * of this transfer being thrown away and repeated for every
			 * range of a registry that never honours Range.
			 */
			x->pos = 0;
		}
	}
	skip_to = x->delivered ? x->next : 0;
	if (x->pos < skip_to) {
		uint64_t k = skip_to - x->pos;

		if (k > n)
			k = n;
		buf += k;
		n -= (size_t)k;
		x->pos += k;
	}
	if (n == 0)
		return 1; /* any non-error value; the caller ignores it */
	rc = q->cb(q->cbctx, x->pos, buf, n);
	if (rc < 0) {
		x->err = rc;
		x->cb_err = 1;
		return CURL_WRITEFUNC_ERROR;
	}
	x->pos += n;
	x->next = x->pos;
	x->delivered = 1;
	x->progress += n;
	/* a whole-blob answer past what was asked: stop instead of reading on */
	if (x->status != 206 && q->len && x->pos >= q->off + q->len) {
		x->done_early = 1;
		return CURL_WRITEFUNC_ERROR;
	}
	return 1;
}

/* On the event thread: queue blob bytes for the calling thread. */
static size_t mx_enqueue(struct nx_mxfer *t, const char *buf, size_t n)
{
	size_t ret = n;

	pthread_mutex_lock(&t->mu);
	if (t->abort) {
		ret = CURL_WRITEFUNC_ERROR;
	} else if (t->len && t->len + n > NX_MX_BUF_CAP) {
		t->paused = 1; /* curl keeps these bytes and offers them again */
		ret = CURL_WRITEFUNC_PAUSE;
	} else {
		if (t->len + n > t->alloc) {
			size_t want = t->len + n < NX_MX_BUF_CAP ? NX_MX_BUF_CAP : t->len + n;
			char *nb = realloc(t->buf, want);

			if (!nb) {
				t->oom = 1;
				pthread_mutex_unlock(&t->mu);
				return CURL_WRITEFUNC_ERROR;
			}
			t->buf = nb;
			t->alloc = want;
		}
		memcpy(t->buf + t->len, buf, n);
		t->len += n;
		pthread_cond_signal(&t->cv);
	}
	pthread_mutex_unlock(&t->mu);
	return ret;
}

static size_t on_write(char *buf, size_t size, size_t nitems, void *ud)
{
	struct xfer *x = ud;
	struct nx_req *q = x->q;
	size_t n = size * nitems;

	if ((q->cb || q->rset) && x->mx && x->status >= 200 && x->status < 300) {
		size_t ret = mx_enqueue(x->mx, buf, n);

		if (ret == n) /* a paused chunk is offered again */
			atomic_fetch_add(&x->r->st_bytes, n);
		return ret;
	}
	atomic_fetch_add(&x->r->st_bytes, n);
	if (x->status >= 200 && x->status < 300) {
		if (q->cb || q->rset) {
			if (blob_deliver(x, buf, n) == CURL_WRITEFUNC_ERROR)
				return CURL_WRITEFUNC_ERROR;
			return n;
		}
		if (!q->cap)
			return n;
		if (n > q->cap - x->body_len) {
			x->err = -E2BIG;
			return CURL_WRITEFUNC_ERROR;
		}
		if (x->body_len + n + 1 > x->body_alloc) {
			/* grow geometrically, never past the cap */
			size_t want = x->body_alloc ? x->body_alloc : 65536;
			char *nb;

			while (want < x->body_len + n + 1)
				want *= 2;
			if (want > q->cap + 1)
				want = q->cap + 1;
			nb = realloc(x->body, want);
			if (!nb) {
				x->err = -ENOMEM;
				return CURL_WRITEFUNC_ERROR;
			}
			x->body = nb;
			x->body_alloc = want;
		}
		memcpy(x->body + x->body_len, buf, n);
		x->body_len += n;
		x->body[x->body_len] = 0;
		return n;
	}
	if (x->status >= 400) {
		size_t k = NX_ERRBODY_MAX - x->errbody_len;

		if (k > n)
			k = n;
		memcpy(x->errbody + x->errbody_len, buf, k);
		x->errbody_len += k;
		x->errbody[x->errbody_len] = 0;
	}
	return n; /* 1xx/3xx bodies are dropped */
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *ud)
{
	struct xfer *x = ud;
	struct nx_req *q = x->q;
	size_t want = size * nitems;
	uint64_t left = q->up_size - x->up_pos;
	ssize_t n;

	if (left < want)
		want = (size_t)left;
	if (want == 0)
		return 0;
	if (q->up_fd < 0) {
		memcpy(buf, (const char *)q->up_buf + x->up_pos, want);
		x->up_pos += want;
		return want;
	}
	do
		n = pread(q->up_fd, buf, want, (off_t)x->up_pos);
	while (n < 0 && errno == EINTR);
	if (n <= 0) {
		x->err = n < 0 ? -errno : -EIO;
		snprintf(x->curl_msg, sizeof(x->curl_msg), "reading the upload: %s",
			 n < 0 ? strerror(errno) : "file shrank");
		return CURL_READFUNC_ABORT;
	}
	x->up_pos += (uint64_t)n;
	return (size_t)n;
}

static int on_seek(void *ud, curl_off_t off, int origin)
{
	struct xfer *x = ud;

	if (origin != SEEK_SET || off < 0 || (uint64_t)off > x->q->up_size)
		return CURL_SEEKFUNC_CANTSEEK;
	x->up_pos = (uint64_t)off;
	return CURL_SEEKFUNC_OK;
}

/* "https://HOSTPORT/..." or "http://HOSTPORT/...": the registry itself */
static int same_origin(const struct nx_registry *r, const char *url)
{
	const char *p;
	size_t n = strlen(r->id.hostport);

	if (strncmp(url, "https://", 8) == 0)
		p = url + 8;
	else if (strncmp(url, "http://", 7) == 0)
		p = url + 7;
	else
		return 0;
	return strncmp(p, r->id.hostport, n) == 0 && p[n] == '/';
}

static int status_ok(const struct nx_req *q, long st)
{
	int i;

	if (!q->ok[0])
		return st == 200;
	for (i = 0; i < 3 && q->ok[i]; i++)
		if (q->ok[i] == st)
			return 1;
	return 0;
}

static int status_errno(long st)
{
	if (st == 401 || st == 403)
		return -EACCES;
	if (st == 404)
		return -ENOENT;
	if (st == 429 || st >= 500)
		return -EAGAIN;
	return -EIO;
}

/* Printable, single-line, bounded copy of registry text for a log line. */
static void sanitize(char *dst, size_t cap, const char *s)
{
	size_t i = 0;

	for (; *s && i + 1 < cap; s++)
		dst[i++] = (*s >= 0x20 && *s < 0x7f) ? *s : ' ';
	dst[i] = 0;
}

static const char *reason(long st)
{
	switch (st) {
	case 400:
		return "bad request";
	case 401:
	case 403:
		return "access denied";
	case 404:
		return "not found";
	case 405:
		return "method not allowed";
	case 413:
		return "too large";
	case 416:
		return "range not satisfiable";
	case 429:
		return "too many requests";
	default:
		return st >= 500 ? "server error" : "unexpected status";
	}
}

/* "404 MANIFEST_UNKNOWN manifest unknown" from the status and error body */
static void describe_status(const struct xfer *x, char *out, size_t cap)
{
	char code[64] = "", msg[200] = "";
	json_t *j = NULL, *e, *v;

	if (x->errbody_len)
		j = json_loadb(x->errbody, x->errbody_len, 0, NULL);
	e = j ? json_array_get(json_object_get(j, "errors"), 0) : NULL;
	if (e) {
		v = json_object_get(e, "code");
		if (json_is_string(v))
			sanitize(code, sizeof(code), json_string_value(v));
		v = json_object_get(e, "message");
		if (json_is_string(v))
			sanitize(msg, sizeof(msg), json_string_value(v));
	}
	json_decref(j);
	if (code[0])
		snprintf(out, cap, "%ld %s%s%s", x->status, code, msg[0] ? " " : "", msg);
	else
		snprintf(out, cap, "%ld %s", x->status, reason(x->status));
}

/* Retry-After in ms (delta-seconds or an HTTP date), or -1 */
static long retry_after_ms(const char *v)
{
	char *end;
	long s;
	time_t t;

	if (!v[0])
		return -1;
	s = strtol(v, &end, 10);
	if (end != v && *end == 0)
		return s < 0 ? 0 : (s > 3600 ? 3600000 : s * 1000);
	t = curl_getdate(v, NULL);
	if (t < 0)
		return -1;
	t -= time(NULL);
	return t < 0 ? 0 : (t > 3600 ? 3600000 : (long)t * 1000);
}

static unsigned jitter_ms(unsigned ms)
{
	static _Thread_local uint64_t seed;
	uint64_t s = seed;

	if (!s)
		s = nx_now_ns() ^ (uint64_t)(uintptr_t)&seed ^ (uint64_t)pthread_self();
	s ^= s << 13;
	s ^= s >> 7;
	s ^= s << 17;
	seed = s ? s : 1;
	/* full jitter on the upper half: [ms/2, ms] */
	return ms / 2 + (unsigned)(s % (ms / 2 + 1));
}

/* Sleeps @ms, in slices so that nx_fetch_cancel_all ends a backoff too. */
static void sleep_ms(unsigned ms)
{
	while (ms > 0 && !cancelled()) {
		unsigned slice = ms < 100 ? ms : 100;
		struct timespec ts = { 0, (long)slice * 1000000L };

		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
		ms -= slice;
	}
}

/* libcurl's sockets, close-on-exec from the start: credential helpers are
 * spawned while transfers run in other threads. */
static curl_socket_t open_socket(void *ctx, curlsocktype purpose, struct curl_sockaddr *a)
{
	return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

static int setup(CURL *h, struct nx_registry *r, struct xfer *x, const char *url,
		 struct curl_slist **hdrs, long timeout_ms, const char *range, const char *auth)
{
	struct nx_req *q = x->q;
	struct curl_slist *l = NULL, *t;
	char line[320];

#define ADD(s)                                                                                     \
	do {                                                                                       \
		t = curl_slist_append(l, (s));                                                     \
		if (!t)                                                                            \
			goto nomem;                                                                \
		l = t;                                                                             \
	} while (0)

	if (q->accept) {
		snprintf(line, sizeof(line), "Accept: %s", q->accept);
		ADD(line);
	}
	if (q->content_type) {
		snprintf(line, sizeof(line), "Content-Type: %s", q->content_type);
		ADD(line);
	} else if (strcmp(q->method, "POST") == 0) {
		ADD("Content-Type:"); /* no form-urlencoded default */
	}
	if (q->upload)
		ADD("Expect:"); /* no 100-continue round trip */
	if (auth)
		ADD(auth);
#undef ADD
	*hdrs = l;

	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_SHARE, r->share);
	/* curl_easy_perform gives its own multi handle this as the size of
	 * the connection cache, which the share makes one for all handles:
	 * at libcurl's default of 5, every transfer that ends while more
	 * than 5 connections exist closes one, and under load nearly every
	 * request opened a new connection (t0420: 4,095 for 4,267) */
	curl_easy_setopt(h, CURLOPT_MAXCONNECTS, (long)(2 * r->max));
	curl_easy_setopt(h, CURLOPT_USERAGENT, "nixoci/1");
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, open_socket);
	/* an https registry's redirects stay on https, blobs included: a
	 * downgrade would expose the request (and anything sent after it) to
	 * the network; a storage host that only speaks http is refused */
	curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, r->tls ? "https" : "http,https");
	curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, x->curl_msg);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
			 timeout_ms && timeout_ms < NX_CONNECT_SECS * 1000 ? timeout_ms
									  : NX_CONNECT_SECS * 1000);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, NX_LOW_SPEED_BYTES);
	/* a backstop to on_xferinfo; whole seconds only (an upload may wait
	 * longer for its answer, see upload_sent) */
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME,
			 (long)(((q->upload ? upload_wait_ms(r) : stall_ms(r)) + 999) / 1000));
	x->last_move_ns = nx_now_ns();
	x->last_dl = x->last_ul = 0;
	x->stalled = 0;
	curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_xferinfo);
	curl_easy_setopt(h, CURLOPT_XFERINFODATA, x);
	if (timeout_ms)
		curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
	if (q->flags & NX_REQ_FOLLOW) {
		curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
		curl_easy_setopt(h, CURLOPT_MAXREDIRS, 5L);
		/* Authorization never follows a redirect to another host */
		curl_easy_setopt(h, CURLOPT_UNRESTRICTED_AUTH, 0L);
	}
	/* verification is on unless insecure was given for this registry;
	 * loopback is not an exception once https is asked for */
	if (r->insecure) {
		curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
	} else if (r->ca_len) {
		struct curl_blob b = { r->ca_buf, r->ca_len, CURL_BLOB_NOCOPY };

		curl_easy_setopt(h, CURLOPT_CAINFO_BLOB, &b);
	}
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
	if (range)
		curl_easy_setopt(h, CURLOPT_RANGE, range);

	if (strcmp(q->method, "HEAD") == 0) {
		curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
	} else if (strcmp(q->method, "POST") == 0 && q->upload) {
		/* a body streamed like a PUT's: a single-request blob upload */
		curl_easy_setopt(h, CURLOPT_POST, 1L);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, NULL);
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->up_size);
		curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(h, CURLOPT_READDATA, x);
		curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, on_seek);
		curl_easy_setopt(h, CURLOPT_SEEKDATA, x);
	} else if (strcmp(q->method, "POST") == 0) {
		curl_easy_setopt(h, CURLOPT_POST, 1L);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, q->post_body ? q->post_body : "");
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE,
				 q->post_body ? (long)strlen(q->post_body) : 0L);
	} else if (strcmp(q->method, "PUT") == 0) {
		curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)q->up_size);
		curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(h, CURLOPT_READDATA, x);
		curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, on_seek);
		curl_easy_setopt(h, CURLOPT_SEEKDATA, x);
	} else if (strcmp(q->method, "GET") != 0) {
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, q->method);
	}
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, l);
	return 0;
nomem:
	curl_slist_free_all(l);
	return -ENOMEM;
}

static int curl_errno(CURLcode c, long os_errno)
{
	switch (c) {
	case CURLE_COULDNT_RESOLVE_HOST:
		return -EHOSTUNREACH;
	case CURLE_COULDNT_CONNECT:
		if (os_errno == ECONNREFUSED)
			return -ECONNREFUSED;
		if (os_errno == ETIMEDOUT)
			return -ETIMEDOUT;
		return -EHOSTUNREACH;
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
	case CURLE_SSL_ENGINE_INITFAILED:
	case CURLE_SSL_CRL_BADFILE:
	case CURLE_SSL_SHUTDOWN_FAILED:
	case CURLE_USE_SSL_FAILED:
		return -EPROTO;
	case CURLE_OUT_OF_MEMORY:
		return -ENOMEM;
	default:
		return -EIO;
	}
}

static int curl_retryable(CURLcode c)
{
	switch (c) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		return 1;
	default:
		return 0;
	}
}

static char *dup_or_null(const char *s)
{
	return s[0] ? strdup(s) : NULL;
}

void nx_req_release(struct nx_req *q)
{
	free(q->body);
	free(q->content_type_out);
	free(q->location);
	free(q->docker_digest);
	free(q->link);
	q->body = q->content_type_out = q->location = q->docker_digest = q->link = NULL;
	q->body_len = 0;
}

/*
 * The URL of an attempt: the request's own. A failed TLS handshake is never
 * answered by trying plain HTTP, insecure or not: that would send the
 * request, and then Basic credentials, in clear to whoever broke the
 * handshake. A registry that speaks plain HTTP is named http://HOST/REPO
 * (refused for a host that is not loopback unless insecure is given).
 */
static char *attempt_url(struct nx_registry *r, const char *url)
{
	return strdup(url);
}

/* The Range of a multi-range attempt: what is still missing of each range
 * (a retry asks only for that). NULL with x->err on failure. */
static const char *attempt_ranges(struct xfer *x)
{
	struct nx_rset *s = x->q->rset;
	uint64_t asked = 0;
	size_t cap = 48 * s->n + 8;

	if (x->mr_range_cap < cap) {
		char *nb = realloc(x->mr_range, cap);

		if (!nb) {
			x->err = -ENOMEM;
			return NULL;
		}
		x->mr_range = nb;
		x->mr_range_cap = cap;
	}
	if (nx_rset_format(s, x->mr_range, x->mr_range_cap) < 0) {
		x->err = -EINVAL; /* nothing missing: the caller does not ask */
		return NULL;
	}
	for (size_t i = 0; i < s->n; i++)
		asked += s->v[i].off + s->v[i].len - s->next[i];
	/* parts' headers and a server's coalescing of near ranges cost a
	 * little; a body twice what was asked is not that */
	x->mr_cap = 2 * asked + (1u << 20);
	x->mr_body = 0;
	return x->mr_range;
}

/* Sets the Range of this attempt: what is still missing of [off, off+len). */
static const char *attempt_range(struct xfer *x, char *buf, size_t cap)
{
	struct nx_req *q = x->q;
	uint64_t from = x->delivered ? x->next : q->off;

	x->want_start = from;
	if (!from && !q->len)
		return NULL; /* the whole blob: no Range at all */
	if (q->len)
		snprintf(buf, cap, "%" PRIu64 "-%" PRIu64, from, q->off + q->len - 1);
	else
		snprintf(buf, cap, "%" PRIu64 "-", from);
	return buf;
}

/* The Authorization line for this attempt (caller wipes and frees), and the
 * serial that names it for nx_auth_answer(). */
static int attempt_auth(struct nx_registry *r, const struct nx_req *q, const char *url,
			char **auth, unsigned *serial)
{
	*auth = NULL;
	*serial = 0;
	if (q->auth_header) {
		*auth = strdup(q->auth_header);
		return *auth ? 0 : -ENOMEM;
	}
	/* Authorization goes to the registry only, never to a storage host */
	if ((q->flags & NX_REQ_NO_AUTH) || !same_origin(r, url))
		return 0;
	return nx_auth_header(r, (q->flags & NX_REQ_PUSH) != 0, auth, serial);
}

/*
 * Runs the prepared handle @h on the event thread and delivers the blob
 * bytes it queues from this thread. -errno when the event thread cannot
 * take it (nothing was sent: the caller performs it itself).
 */
static int mx_perform(struct nx_registry *r, struct xfer *x, CURL *h, CURLcode *cc)
{
	struct nx_mxfer *t;
	char *spare = NULL;
	size_t spare_alloc = 0, n, k;
	int failed = 0, wake, rc;

	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->h = h;
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->cv, NULL);
	curl_easy_setopt(h, CURLOPT_PRIVATE, (char *)t);
	curl_easy_setopt(h, CURLOPT_PIPEWAIT, 1L);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, t->errbuf);
	x->mx = t;
	rc = mx_submit(r, t);
	if (rc < 0) {
		curl_easy_setopt(h, CURLOPT_ERRORBUFFER, x->curl_msg);
		x->mx = NULL;
		goto out;
	}
	pthread_mutex_lock(&t->mu);
	for (;;) {
		char *b;

		while (!t->done && !t->len)
			pthread_cond_wait(&t->cv, &t->mu);
		if (!t->len)
			break; /* done, and every byte taken */
		/* swap buffers: the event thread fills the other meanwhile */
		b = t->buf;
		n = t->len;
		k = t->alloc;
		t->buf = spare;
		t->alloc = spare_alloc;
		t->len = 0;
		spare = b;
		spare_alloc = k;
		wake = t->paused && !t->unpause;
		if (wake)
			t->unpause = 1;
		pthread_mutex_unlock(&t->mu);
		if (wake)
			curl_multi_wakeup(r->multi);
		if (!failed && blob_deliver(x, spare, n) == CURL_WRITEFUNC_ERROR) {
			/* the caller's error, a bad range or enough bytes: stop */
			failed = 1;
			pthread_mutex_lock(&t->mu);
			t->abort = 1;
			pthread_mutex_unlock(&t->mu);
			curl_multi_wakeup(r->multi);
		}
		pthread_mutex_lock(&t->mu);
	}
	*cc = failed ? CURLE_WRITE_ERROR : t->result;
	if (t->oom && !x->err) {
		x->err = -ENOMEM;
		*cc = CURLE_WRITE_ERROR;
	}
	pthread_mutex_unlock(&t->mu);
	if (!x->curl_msg[0])
		snprintf(x->curl_msg, sizeof(x->curl_msg), "%s", t->errbuf);
	x->mx = NULL;
out:
	free(spare);
	free(t->buf);
	pthread_cond_destroy(&t->cv);
	pthread_mutex_destroy(&t->mu);
	free(t);
	return rc;
}

/* One request on a pooled handle; *cc is curl's verdict, x holds the rest. */
static int run_attempt(struct nx_registry *r, struct xfer *x, uint64_t deadline, unsigned *gen,
		       CURLcode *cc, long *os_errno, long *redirects, long *verify)
{
	struct nx_req *q = x->q;
	struct curl_slist *hdrs = NULL;
	char range[64], *url, *auth;
	const char *range_p = NULL;
	long timeout_ms = 0;
	CURL *h;
	int rc;

	x->status = 0;
	x->body_len = x->errbody_len = 0;
	x->errbody[0] = 0;
	x->started = x->done_early = x->err = 0;
	x->progress = x->up_pos = 0;
	x->curl_msg[0] = 0;
	*os_errno = *redirects = *verify = 0;

	if (q->rset) {
		range_p = attempt_ranges(x);
		if (!range_p)
			return x->err;
	} else if (q->cb) {
		range_p = attempt_range(x, range, sizeof(range));
	}
	if (!(q->flags & NX_REQ_NO_DEADLINE)) {
		uint64_t now = nx_now_ns();

		timeout_ms = now < deadline ? (long)((deadline - now) / 1000000) : 0;
		if (timeout_ms < 1)
			timeout_ms = 1;
	}
	url = attempt_url(r, q->url);
	if (!url)
		return -ENOMEM;
	rc = attempt_auth(r, q, url, &auth, gen);
	if (rc < 0) {
		free(url);
		return rc;
	}
	h = pool_get(r);
	if (h) {
		rc = setup(h, r, x, url, &hdrs, timeout_ms, range_p, auth);
		if (rc == 0) {
			long nconn = 0, ver = 0;
			uint64_t t0 = nx_now_ns();

			atomic_fetch_add(&r->st_requests, 1);
			*cc = CURLE_FAILED_INIT;
			/* a streamed upload from a file preads in on_read: not on
			 * the event thread that serves everyone */
			if (!r->multi ||
			    (q->upload && q->up_fd >= 0) || mx_perform(r, x, h, cc) < 0)
				*cc = curl_easy_perform(h);
			nx_hist_observe(&r->st_latency, nx_now_ns() - t0);
			curl_easy_getinfo(h, CURLINFO_OS_ERRNO, os_errno);
			curl_easy_getinfo(h, CURLINFO_REDIRECT_COUNT, redirects);
			curl_easy_getinfo(h, CURLINFO_SSL_VERIFYRESULT, verify);
			curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &nconn);
			curl_easy_getinfo(h, CURLINFO_HTTP_VERSION, &ver);
			atomic_fetch_add(&r->st_connections, (uint64_t)(nconn > 0 ? nconn : 0));
			if (ver == CURL_HTTP_VERSION_2_0)
				atomic_fetch_add(&r->st_h2, 1);
		}
		pool_put(r, h);
	} else {
		rc = -ENOMEM;
	}
	curl_slist_free_all(hdrs);
	if (auth) {
		explicit_bzero(auth, strlen(auth));
		free(auth);
	}
	free(url);
	return rc;
}

/* The cause of a transport failure, for the log line. */
static void curl_cause(const struct xfer *x, CURLcode cc, int rc, long os_errno, long verify,
		       char *out, size_t cap)
{
	const struct nx_req *q = x->q;
	const char *detail = x->curl_msg[0] ? x->curl_msg : curl_easy_strerror(cc);

	if (rc == -ECONNREFUSED)
		snprintf(out, cap, "connection refused: is the registry running?");
	else if (cc == CURLE_UNSUPPORTED_PROTOCOL && x->r->tls)
		snprintf(out, cap, "%s: refusing a redirect from https to plain http (%s)", q->what,
			 detail);
	else if (rc == -EPROTO && cc == CURLE_SSL_CONNECT_ERROR && x->r->insecure)
		snprintf(out, cap, "tls handshake failed (%s); plain http is never tried in its "
			 "place: if the registry speaks http, name it http://%s/...", detail,
			 x->r->id.hostport);
	else if (rc == -EHOSTUNREACH && cc == CURLE_COULDNT_RESOLVE_HOST)
		snprintf(out, cap, "unknown host: check the registry name");
	else if (rc == -EHOSTUNREACH)
		snprintf(out, cap, "cannot connect: %s",
			 os_errno ? strerror((int)os_errno) : "host unreachable");
	else if (rc == -ETIMEDOUT && (q->flags & NX_REQ_NO_DEADLINE))
		snprintf(out, cap, "%s: no progress (under %ld bytes/s for %.1f s)", q->what,
			 NX_LOW_SPEED_BYTES, (double)stall_ms(x->r) / 1000);
	else if (rc == -ETIMEDOUT)
		snprintf(out, cap, "%s: timed out after %d s", q->what, x->r->timeout_s);
	else if (rc == -EPROTO && cc == CURLE_PEER_FAILED_VERIFICATION && verify != 0)
		/* name the certificate problem in openssl's words */
		snprintf(out, cap,
			 "tls certificate verification failed: %s: give the registry's CA "
			 "with cafile=FILE (--cafile) or in /etc/containers/certs.d/%s/",
			 X509_verify_cert_error_string(verify), x->r->id.hostport);
	else if (rc == -EPROTO && cc == CURLE_PEER_FAILED_VERIFICATION)
		snprintf(out, cap, "tls certificate verification failed: %s", detail);
	else if (rc == -EPROTO && cc == CURLE_SSL_CONNECT_ERROR)
		snprintf(out, cap, "tls handshake failed: %s (a plain http registry needs "
			 "insecure, or address it as http://)", detail);
	else if (rc == -EPROTO)
		snprintf(out, cap, "tls: %s (a private CA needs cafile= or certs.d)", detail);
	else
		snprintf(out, cap, "%s: %s", q->what, detail);
}

static void log_failure(struct nx_registry *r, const struct nx_req *q, int rc, const char *cause,
			int attempts)
{
	const char *more = attempts > 1 ? " (gave up after retries)" : "";
	int level = NX_LOG_ERR;

	if (rc == -ENOENT && (q->flags & NX_REQ_QUIET_404))
		level = NX_LOG_DEBUG; /* an answer the caller expects, not an error */
	else
		atomic_fetch_add(&r->st_errors, 1);
	if ((q->flags & NX_REQ_QUIET) || r->is_mirror)
		level = NX_LOG_DEBUG; /* the caller logs (or falls through to another source) */
	if (rc == -ECONNREFUSED || rc == -EHOSTUNREACH || rc == -EPROTO)
		nx_log(level, "registry %s: %s", r->id.hostport, cause);
	else if (strncmp(cause, q->what, strlen(q->what)) == 0)
		nx_log(level, "registry %s: %s%s", r->ref, cause, more);
	else
		nx_log(level, "registry %s: %s: %s%s", r->ref, q->what, cause, more);
}

/* The cause of an HTTP error status, in words a user can act on. */
static void explain_status(const struct xfer *x, char *out, size_t cap)
{
	const struct nx_registry *r = x->r;
	char st[300];

	describe_status(x, st, sizeof(st));
	if (x->status == 403)
		snprintf(out, cap, "access denied (%s): the credentials for %s do not allow this "
			 "on %s", st, r->id.hostport, r->id.repo);
	else if (x->status == 404 && strstr(st, "NAME_UNKNOWN"))
		snprintf(out, cap, "repository %s not found on %s (%s)", r->id.repo,
			 r->id.hostport, st);
	else if (x->status == 404 && strstr(st, "MANIFEST_UNKNOWN"))
		snprintf(out, cap, "no such tag or manifest in repository %s (%s)", r->id.repo,
			 st);
	else if (x->status == 404 && strstr(st, "BLOB_UNKNOWN"))
		snprintf(out, cap, "no such blob in repository %s (%s)", r->id.repo, st);
	else if (x->status == 404)
		snprintf(out, cap, "not found (%s)", st);
	else if (x->status == 429)
		snprintf(out, cap, "rate limited by the registry (%s)", st);
	else if (x->status >= 500)
		snprintf(out, cap, "registry server error (%s)", st);
	else
		snprintf(out, cap, "%s", st);
}

/* Hands the successful attempt's body and headers to @q. */
static int take_result(struct xfer *x, struct nx_req *q)
{
	q->body = x->body;
	q->body_len = x->body_len;
	x->body = NULL;
	if (q->cap && !q->body && !(q->body = calloc(1, 1)))
		return -ENOMEM;
	q->content_type_out = dup_or_null(x->ctype);
	q->location = dup_or_null(x->location);
	q->docker_digest = dup_or_null(x->digest);
	q->link = dup_or_null(x->link);
	if ((x->ctype[0] && !q->content_type_out) || (x->location[0] && !q->location) ||
	    (x->digest[0] && !q->docker_digest) || (x->link[0] && !q->link)) {
		nx_req_release(q);
		return -ENOMEM;
	}
	return 0;
}

int nx_http_do(struct nx_registry *r, struct nx_req *q)
{
	const uint64_t span = (uint64_t)r->timeout_s * 1000000000ull;
	uint64_t deadline = nx_now_ns() + span;
	/* Retries of a streamed read restart the deadline after progress, so a
	 * registry that trickles a few bytes and stalls again could hold a
	 * reader for many timeouts; no new attempt starts after twice the
	 * timeout, so such a read fails within about 2.3 timeouts. */
	const uint64_t hard_deadline = deadline + span;
	int attempt = 0, auth_rounds = 0, renewals = 0, rc = 0, quiet = 0;
	int max_attempts = r->is_mirror ? NX_MIRROR_ATTEMPTS : NX_MAX_ATTEMPTS;
	int max_refused = r->is_mirror ? 1 : NX_REFUSED_ATTEMPTS;
	char cause[1024] = "";
	struct xfer *x;

	x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	x->r = r;
	x->q = q;
	q->status = 0;

	for (;;) {
		CURLcode cc = CURLE_OK;
		unsigned serial, delay = 0;
		long os_errno, ra = -1, redirects, verify;

		if (cancelled()) {
			rc = -ECANCELED; /* shutting down: not the registry's fault */
			quiet = 1;
			break;
		}
		rc = run_attempt(r, x, deadline, &serial, &cc, &os_errno, &redirects, &verify);
		if (rc < 0) {
			quiet = 1; /* out of memory, or the auth layer logged why */
			break;
		}
		attempt++;
		if (cancelled()) {
			rc = -ECANCELED;
			quiet = 1;
			break;
		}

		if (cc == CURLE_WRITE_ERROR && x->done_early)
			cc = CURLE_OK;
		if (cc == CURLE_ABORTED_BY_CALLBACK && x->stalled)
			cc = CURLE_OPERATION_TIMEDOUT;
		if (x->cb_err) {
			rc = x->err; /* the caller's own error: it logs */
			quiet = 1;
			break;
		}
		if (cc != CURLE_OK && x->err) {
			rc = x->err;
			if (q->rset && q->mr_why[0]) {
				quiet = 1; /* unusable multipart: the caller falls back */
				break;
			}
			if (rc == -E2BIG)
				snprintf(cause, sizeof(cause), "response larger than %zu bytes",
					 q->cap);
			else
				snprintf(cause, sizeof(cause), "%s",
					 x->curl_msg[0] ? x->curl_msg : strerror(-rc));
			break;
		}
		if (cc != CURLE_OK && x->status >= 400) {
			/* the status says more than the broken body after it (Go's
			 * ServeContent announces the blob's length on a 416) */
			cc = CURLE_OK;
		}

		if (cc != CURLE_OK) {
			rc = curl_errno(cc, os_errno);
			curl_cause(x, cc, rc, os_errno, verify, cause, sizeof(cause));
			if (!curl_retryable(cc))
				break;
			if (rc == -ECONNREFUSED && attempt >= max_refused)
				break;
		} else if (x->status == 401 && !(q->flags & NX_REQ_NO_AUTH) && x->challenge[0] &&
			   redirects == 0 && auth_rounds < 2) {
			struct nx_challenge c;

			auth_rounds++;
			describe_status(x, cause, sizeof(cause));
			rc = -EACCES;
			if (nx_challenge_parse(x->challenge, &c) < 0)
				break;
			rc = nx_auth_answer(r, &c, serial, (q->flags & NX_REQ_PUSH) != 0);
			if (rc < 0) {
				quiet = 1; /* nx_auth_answer logged why */
				break;
			}
			attempt--; /* answering a challenge is not a retry */
			continue;
		} else if (x->status == 401 && !(q->flags & NX_REQ_NO_AUTH) && redirects == 0) {
			/* a challenge we cannot answer, or one answered twice */
			rc = -EACCES;
			if (!(q->flags & NX_REQ_QUIET) && !r->is_mirror)
				nx_auth_log_rejected(r, NX_LOG_ERR);
			quiet = 1;
			break;
		} else if ((x->status == 403 || x->status == 401 || x->status == 400) &&
			   redirects > 0 && renewals < NX_REDIRECT_RENEWALS) {
			/*
			 * The storage host refused the URL the registry sent us
			 * to: a signed URL that expired while we waited or
			 * retried. The registry signs a new one on request.
			 */
			renewals++;
			nx_log(NX_LOG_DEBUG, "registry %s: %s: redirect target answered %ld, "
			       "asking the registry again", r->ref, q->what, x->status);
			attempt--;
			continue;
		} else if (x->hdr_too_long) {
			rc = -EIO;
			snprintf(cause, sizeof(cause), "%s: response header too long", q->what);
			break;
		} else if (status_ok(q, x->status)) {
			rc = take_result(x, q);
			break;
		} else {
			rc = status_errno(x->status);
			explain_status(x, cause, sizeof(cause));
			if (rc != -EAGAIN)
				break;
			ra = retry_after_ms(x->retry_after);
		}

		/* retry, resuming a blob read after the bytes already delivered */
		if (x->progress)
			deadline = nx_now_ns() + span;
		if (q->rset && nx_rset_done(q->rset)) {
			rc = 0; /* everything asked for arrived before the error */
			break;
		}
		if (q->cb && !q->rset && x->delivered &&
		    ((q->len && x->next >= q->off + q->len) ||
		     (x->have_total && x->next >= x->crange_total))) {
			rc = 0; /* everything asked for arrived before the error */
			break;
		}
		if (attempt >= max_attempts)
			break;
		delay = NX_BACKOFF_MS << (attempt - 1);
		if (delay > NX_BACKOFF_MAX_MS)
			delay = NX_BACKOFF_MAX_MS;
		delay = jitter_ms(delay);
		if (ra > 0 && (unsigned long)ra > delay)
			delay = (unsigned)ra; /* the server's word, no jitter below it */
		if (nx_now_ns() + (uint64_t)delay * 1000000ull >= deadline)
			break;
		if ((q->cb || q->rset) &&
		    nx_now_ns() + (uint64_t)delay * 1000000ull >= hard_deadline)
			break;
		atomic_fetch_add(&r->st_retries, 1);
		nx_log(NX_LOG_DEBUG, "registry %s: %s: retrying in %u ms (%s)", r->ref, q->what,
		       delay, cause);
		sleep_ms(delay);
	}

	q->status = x->status;
	if (r->is_mirror && (rc == -ECONNREFUSED || rc == -EHOSTUNREACH || rc == -ETIMEDOUT ||
			     rc == -EPROTO || rc == -EAGAIN)) {
		/* a mirror that is down costs every read a failed attempt:
		 * skip it for a while */
		atomic_store(&r->down_until,
			     nx_now_ns() + (uint64_t)NX_MIRROR_DOWN_SECS * 1000000000ull);
	}
	if (rc < 0 && !quiet)
		log_failure(r, q, rc, cause, attempt);
	else if (rc < 0)
		atomic_fetch_add(&r->st_errors, 1);
	free(x->body);
	free(x->mr_range);
	free(x);
	return rc;
}

int nx_url_resolve(const char *against, const char *ref, char **out)
{
	CURLU *u = curl_url();
	char *s = NULL;
	int rc = -EINVAL;

	*out = NULL;
	if (!u)
		return -ENOMEM;
	if (curl_url_set(u, CURLUPART_URL, against, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_URL, ref, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_URL, &s, 0) == CURLUE_OK) {
		*out = strdup(s);
		rc = *out ? 0 : -ENOMEM;
		curl_free(s);
	}
	curl_url_cleanup(u);
	return rc;
}
