/*
 * fetch/get.c: plain GETs of URLs that are not an OCI registry: a Nix binary
 * cache over http://, https:// or file:// (nixoci import). No
 * authentication, no Range, no mirrors: one easy handle per call, so calls
 * from any number of threads are independent. The errors are the table of
 * fetch.h, translated here once, with one log line.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "fetch/fetch.h"

#define GET_ATTEMPTS 3
#define GET_BACKOFF_MS 300
#define GET_DEFAULT_TIMEOUT 30

struct get_ctx {
	nx_blob_cb cb;
	void *cbctx;
	uint64_t off; /* bytes delivered */
	int rc;       /* the callback's error */
};

static size_t on_write(char *buf, size_t sz, size_t n, void *arg)
{
	struct get_ctx *g = arg;
	size_t len = sz * n;

	if (g->cb) {
		g->rc = g->cb(g->cbctx, g->off, buf, len);
		if (g->rc < 0)
			return 0; /* aborts the transfer */
	}
	g->off += len;
	return len;
}

static int map_curl(CURLcode c)
{
	switch (c) {
	case CURLE_COULDNT_RESOLVE_HOST:
		return -EHOSTUNREACH;
	case CURLE_COULDNT_CONNECT:
		return -ECONNREFUSED;
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
		return -EPROTO;
	case CURLE_FILE_COULDNT_READ_FILE:
		return -ENOENT;
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_URL_MALFORMAT:
		return -EINVAL;
	default:
		return -EIO;
	}
}

static int map_status(long st)
{
	if (st == 401 || st == 403)
		return -EACCES;
	if (st == 404 || st == 410)
		return -ENOENT;
	if (st == 429 || st >= 500)
		return -EAGAIN;
	return -EIO;
}

static int get_once(const char *url, const struct nx_get_opts *o, struct get_ctx *g, long *status,
		    char *errbuf)
{
	CURL *h = curl_easy_init();
	CURLcode c;
	int timeout = o && o->timeout_s > 0 ? o->timeout_s : GET_DEFAULT_TIMEOUT;

	if (!h)
		return -ENOMEM;
	*status = 0;
	errbuf[0] = '\0';
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "nixoci/1");
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https,file");
	curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(h, CURLOPT_MAXREDIRS, 5L);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
	/* bodies may be large: a stall ends a transfer, not its length */
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)timeout);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, g);
	curl_easy_setopt(h, CURLOPT_FAILONERROR, 0L);
	if (o && o->cafile)
		curl_easy_setopt(h, CURLOPT_CAINFO, o->cafile);
	if (o && o->insecure) {
		curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	c = curl_easy_perform(h);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
	curl_easy_cleanup(h);
	if (c == CURLE_WRITE_ERROR && g->rc < 0)
		return g->rc;
	if (c != CURLE_OK)
		return map_curl(c);
	/* file:// has no status; http must say 200 */
	if (strncmp(url, "file:", 5) != 0 && *status != 200)
		return map_status(*status);
	return 0;
}

int nx_url_get(const char *url, const struct nx_get_opts *o, nx_blob_cb cb, void *ctx)
{
	struct get_ctx g = { cb, ctx, 0, 0 };
	char errbuf[CURL_ERROR_SIZE] = "";
	long status = 0;
	int rc = -EIO, attempt;

	for (attempt = 1; attempt <= GET_ATTEMPTS; attempt++) {
		rc = get_once(url, o, &g, &status, errbuf);
		if (rc == 0 || g.rc < 0)
			break;
		/* only what can pass, and only while the caller saw nothing */
		if (g.off > 0 || (rc != -EAGAIN && rc != -ECONNREFUSED && rc != -ETIMEDOUT &&
				  rc != -EIO))
			break;
		if (attempt < GET_ATTEMPTS)
			usleep((useconds_t)GET_BACKOFF_MS * 1000u * (unsigned)attempt);
	}
	if (rc == 0 || g.rc < 0)
		return rc;
	if (rc == -ENOENT && o && o->quiet_404)
		nx_log(NX_LOG_DEBUG, "%s: not found", url);
	else if (status && strncmp(url, "file:", 5) != 0 && rc != -EIO)
		nx_log(NX_LOG_ERR, "%s: HTTP status %ld", url, status);
	else if (status >= 300 && strncmp(url, "file:", 5) != 0)
		nx_log(NX_LOG_ERR, "%s: unexpected HTTP status %ld", url, status);
	else
		nx_log(NX_LOG_ERR, "%s: %s", url, errbuf[0] ? errbuf : strerror(-rc));
	return rc;
}

struct buf_ctx {
	char *buf;
	size_t len, cap, max;
};

static int buf_cb(void *arg, uint64_t off, const void *data, size_t len)
{
	struct buf_ctx *b = arg;

	if (b->len + len > b->max)
		return -E2BIG;
	if (b->len + len + 1 > b->cap) {
		size_t ncap = b->cap ? b->cap : 4096;
		char *nb;

		while (ncap < b->len + len + 1)
			ncap *= 2;
		nb = realloc(b->buf, ncap);
		if (!nb)
			return -ENOMEM;
		b->buf = nb;
		b->cap = ncap;
	}
	memcpy(b->buf + b->len, data, len);
	b->len += len;
	return 0;
}

int nx_url_get_buf(const char *url, const struct nx_get_opts *o, size_t cap, char **body,
		   size_t *len)
{
	struct buf_ctx b = { NULL, 0, 0, cap };
	int rc;

	*body = NULL;
	*len = 0;
	rc = nx_url_get(url, o, buf_cb, &b);
	if (rc == -E2BIG)
		nx_log(NX_LOG_ERR, "%s: body over %zu bytes", url, cap);
	if (rc == 0 && !b.buf) {
		b.buf = malloc(1);
		if (!b.buf)
			rc = -ENOMEM;
	}
	if (rc < 0) {
		free(b.buf);
		return rc;
	}
	b.buf[b.len] = '\0';
	*body = b.buf;
	*len = b.len;
	return 0;
}
