/*
 * tests/unit/fetch-mock.c: fetch/ against a misbehaving in-process HTTP
 * server on loopback, for what a well-behaved registry never shows:
 * 503 then success, 429 with Retry-After, Range ignored (200), a body cut
 * short (resume from the next byte), bearer-token challenges, a 307 to
 * another host (Authorization must not follow), Link pagination, a stall.
 *
 * The server is one accept thread on 127.0.0.1 (and one on 127.0.0.2 as
 * "the storage host"), a thread per connection, Connection: close. The
 * repository name in the path selects the scenario.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fetch/fetch.h"
#include "tests/unit/tap.h"

#define BLOB_SIZE 200000u

static uint8_t blob[BLOB_SIZE];
static uint8_t blob_digest[NX_SHA256_LEN];
static char blob_ds[NX_DIGEST_STRLEN];
static int port, port2;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int n_flaky, n_ratelimit, n_drop, n_token, n_unauth, storage_saw_auth, n_storage;
static char drop_second_range[64];

static void send_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t w = send(fd, p, len, MSG_NOSIGNAL);

		if (w <= 0)
			return;
		p += w;
		len -= (size_t)w;
	}
}

static void reply(int fd, const char *status, const char *headers, const void *body, size_t len)
{
	char head[2048];
	int n = snprintf(head, sizeof(head),
			 "HTTP/1.1 %s\r\nContent-Length: %zu\r\nConnection: close\r\n%s\r\n",
			 status, len, headers ? headers : "");

	send_all(fd, head, (size_t)n);
	if (body && len)
		send_all(fd, body, len);
}

static void replys(int fd, const char *status, const char *headers, const char *body)
{
	reply(fd, status, headers, body, strlen(body));
}

static int hdr(const char *req, const char *name, char *out, size_t cap)
{
	const char *p = req;
	size_t n = strlen(name);

	while ((p = strstr(p, "\r\n"))) {
		p += 2;
		if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
			const char *v = p + n + 1, *e = strstr(v, "\r\n");

			while (*v == ' ')
				v++;
			snprintf(out, cap, "%.*s", (int)(e - v), v);
			return 1;
		}
	}
	return 0;
}

/* Serves [a, b] of the blob as 206, or the whole blob as 200 without a Range. */
static void serve_blob(int fd, const char *req, int honour_range, size_t cut)
{
	char range[64], extra[256];
	unsigned long a = 0, b = BLOB_SIZE - 1;

	if (honour_range && hdr(req, "Range", range, sizeof(range))) {
		char *dash;

		a = strtoul(range + 6, &dash, 10);
		if (dash[1])
			b = strtoul(dash + 1, NULL, 10);
		if (b >= BLOB_SIZE)
			b = BLOB_SIZE - 1;
		snprintf(extra, sizeof(extra), "Content-Range: bytes %lu-%lu/%u\r\n", a, b,
			 BLOB_SIZE);
		if (cut) {
			/* announce the whole range, send part of it, hang up */
			char head[512];
			int n = snprintf(head, sizeof(head),
					 "HTTP/1.1 206 Partial Content\r\nContent-Length: %lu\r\n"
					 "Connection: close\r\n%s\r\n",
					 b - a + 1, extra);

			send_all(fd, head, (size_t)n);
			send_all(fd, blob + a, cut);
			return;
		}
		reply(fd, "206 Partial Content", extra, blob + a, b - a + 1);
		return;
	}
	reply(fd, "200 OK", NULL, blob, BLOB_SIZE);
}

static void handle(int fd, const char *req)
{
	char method[8], path[1024], auth[512], h[512];
	const char *repo;

	if (sscanf(req, "%7s %1023s", method, path) != 2)
		return;
	if (strncmp(path, "/data/", 6) == 0) { /* the "storage host" */
		pthread_mutex_lock(&mu);
		n_storage++;
		storage_saw_auth |= hdr(req, "Authorization", auth, sizeof(auth));
		pthread_mutex_unlock(&mu);
		serve_blob(fd, req, 1, 0);
		return;
	}
	if (strncmp(path, "/token?", 7) == 0) {
		pthread_mutex_lock(&mu);
		n_token++;
		pthread_mutex_unlock(&mu);
		if (!strstr(path, "service=mock") ||
		    !strstr(path, "scope=repository%3Aauth%3Apull")) {
			replys(fd, "400 Bad Request", NULL, "bad token request");
			return;
		}
		replys(fd, "200 OK", "Content-Type: application/json\r\n",
		       "{\"token\":\"tok123\",\"expires_in\":300}");
		return;
	}
	if (strcmp(path, "/v2/") == 0) {
		replys(fd, "200 OK", NULL, "{}");
		return;
	}
	if (strncmp(path, "/v2/", 4) != 0)
		goto notfound;
	repo = path + 4;

	if (strncmp(repo, "flaky/", 6) == 0) {
		int n;

		pthread_mutex_lock(&mu);
		n = ++n_flaky;
		pthread_mutex_unlock(&mu);
		if (n <= 2) {
			replys(fd, "503 Service Unavailable", NULL, "busy");
			return;
		}
		serve_blob(fd, req, 1, 0);
		return;
	}
	if (strncmp(repo, "ratelimit/", 10) == 0) {
		int n;

		pthread_mutex_lock(&mu);
		n = ++n_ratelimit;
		pthread_mutex_unlock(&mu);
		if (n == 1) {
			replys(fd, "429 Too Many Requests", "Retry-After: 1\r\n",
			       "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"slow "
			       "down\"}]}");
			return;
		}
		replys(fd, "200 OK", "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n",
		       "{}");
		return;
	}
	if (strncmp(repo, "norange/", 8) == 0) {
		serve_blob(fd, req, 0, 0);
		return;
	}
	if (strncmp(repo, "drop/", 5) == 0) {
		int n;

		pthread_mutex_lock(&mu);
		n = ++n_drop;
		if (n == 2)
			hdr(req, "Range", drop_second_range, sizeof(drop_second_range));
		pthread_mutex_unlock(&mu);
		serve_blob(fd, req, 1, n == 1 ? 30000 : 0);
		return;
	}
	if (strncmp(repo, "auth/", 5) == 0 || strncmp(repo, "redir/", 6) == 0) {
		if (!hdr(req, "Authorization", auth, sizeof(auth)) ||
		    strcmp(auth, "Bearer tok123") != 0) {
			char ch[512];

			pthread_mutex_lock(&mu);
			n_unauth++;
			pthread_mutex_unlock(&mu);
			snprintf(ch, sizeof(ch),
				 "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:%d/token\","
				 "service=\"mock\",scope=\"repository:auth:pull\"\r\n",
				 port);
			replys(fd, "401 Unauthorized", ch,
			       "{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"token\"}]}");
			return;
		}
		if (strncmp(repo, "redir/", 6) == 0) {
			snprintf(h, sizeof(h), "Location: http://127.0.0.2:%d/data/blob\r\n",
				 port2);
			reply(fd, "307 Temporary Redirect", h, NULL, 0);
			return;
		}
		replys(fd, "200 OK", "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n",
		       "{\"auth\":1}");
		return;
	}
	if (strncmp(repo, "tags/tags/list", 14) == 0) {
		const char *q = strchr(path, '?');

		if (q && strstr(q, "last=b")) {
			snprintf(h, sizeof(h),
				 "Link: </v2/tags/tags/list?last=d&n=2>; rel=\"next\"\r\n");
			replys(fd, "200 OK", h, "{\"name\":\"tags\",\"tags\":[\"c\",\"d\"]}");
		} else if (q && strstr(q, "last=d")) {
			replys(fd, "200 OK", NULL, "{\"name\":\"tags\",\"tags\":[\"e\"]}");
		} else {
			snprintf(h, sizeof(h),
				 "Link: <http://127.0.0.1:%d/v2/tags/tags/list?last=b&n=2>; "
				 "rel=\"next\"\r\n",
				 port);
			replys(fd, "200 OK", h, "{\"name\":\"tags\",\"tags\":[\"a\",\"b\"]}");
		}
		return;
	}
	if (strncmp(repo, "basic/", 6) == 0) {
		if (!hdr(req, "Authorization", auth, sizeof(auth)) ||
		    strcmp(auth, "Basic dXNlcjpwYXNz") != 0) {
			replys(fd, "401 Unauthorized", "WWW-Authenticate: Basic realm=\"mock\"\r\n",
			       "{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"login\"}]}");
			return;
		}
		replys(fd, "200 OK", "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n",
		       "{\"basic\":1}");
		return;
	}
	if (strncmp(repo, "stall/", 6) == 0) {
		char head[] = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";

		send_all(fd, head, sizeof(head) - 1);
		sleep(4);
		return;
	}
	if (strncmp(repo, "broken/", 7) == 0) {
		replys(fd, "500 Internal Server Error", NULL, "<html>oops</html>");
		return;
	}
notfound:
	replys(fd, "404 Not Found", "Content-Type: application/json\r\n",
	       "{\"errors\":[{\"code\":\"NAME_UNKNOWN\",\"message\":\"repository name not known "
	       "to registry\"}]}");
}

static void *conn_main(void *arg)
{
	int fd = (int)(intptr_t)arg;
	char req[16384];
	size_t n = 0;

	while (n + 1 < sizeof(req)) {
		ssize_t r = recv(fd, req + n, sizeof(req) - 1 - n, 0);

		if (r <= 0)
			break;
		n += (size_t)r;
		req[n] = 0;
		if (strstr(req, "\r\n\r\n")) {
			handle(fd, req);
			break;
		}
	}
	close(fd);
	return NULL;
}

static void *accept_main(void *arg)
{
	int ls = (int)(intptr_t)arg;

	for (;;) {
		int fd = accept(ls, NULL, NULL);
		pthread_t t;

		if (fd < 0)
			continue;
		if (pthread_create(&t, NULL, conn_main, (void *)(intptr_t)fd) == 0)
			pthread_detach(t);
		else
			close(fd);
	}
	return NULL;
}

static int listen_on(const char *ip, int *out_port)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	socklen_t al = sizeof(a);
	pthread_t t;
	int s = socket(AF_INET, SOCK_STREAM, 0);

	inet_pton(AF_INET, ip, &a.sin_addr);
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s, 64) < 0 ||
	    getsockname(s, (struct sockaddr *)&a, &al) < 0)
		return -1;
	*out_port = ntohs(a.sin_port);
	pthread_create(&t, NULL, accept_main, (void *)(intptr_t)s);
	pthread_detach(t);
	return 0;
}

struct collect {
	uint8_t buf[BLOB_SIZE];
	uint64_t first, got;
	int seen, bad;
};

static int collect_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct collect *c = ctx;

	if (!c->seen) {
		c->seen = 1;
		c->first = off;
	} else if (off != c->first + c->got) {
		c->bad = 1;
	}
	if (off + len > BLOB_SIZE)
		return -EIO;
	memcpy(c->buf + off, buf, len);
	c->got += len;
	return 0;
}

static struct nx_registry *open_repo(const char *repo, int timeout)
{
	struct nx_regopts o = {.timeout_s = timeout, .max_transfers = 2};
	struct nx_registry *r = NULL;
	char ref[128];

	snprintf(ref, sizeof(ref), "127.0.0.1:%d/%s", port, repo);
	if (nx_registry_open(&r, ref, &o) < 0)
		return NULL;
	return r;
}

struct tl {
	char s[16];
	int n;
};

static int tag_cb(void *ctx, const char *tag)
{
	struct tl *tl = ctx;
	size_t n = strlen(tl->s);

	if (n + strlen(tag) < sizeof(tl->s))
		memcpy(tl->s + n, tag, strlen(tag) + 1);
	tl->n++;
	return 0;
}

static int covers(struct collect *c, uint64_t off, uint64_t len)
{
	return !c->bad && c->seen && c->first <= off && c->first + c->got >= off + len &&
	       memcmp(c->buf + off, blob + off, len) == 0;
}

int main(void)
{
	struct nx_registry *r;
	struct nx_fetch_stats st;
	struct collect *c = calloc(1, sizeof(*c));
	char *body = NULL;
	uint8_t d[NX_SHA256_LEN];
	size_t len, i;
	uint64_t t0;
	int rc;

	if (getenv("NIXOCI_TEST_DEBUG"))
		nx_log_set_level(NX_LOG_DEBUG);
	else
		nx_log_set_level(NX_LOG_ERR - 1);
	for (i = 0; i < BLOB_SIZE; i++)
		blob[i] = (uint8_t)((i * 2654435761u) >> 11);
	nx_sha256(blob, BLOB_SIZE, blob_digest);
	nx_digest_format(blob_digest, blob_ds);
	if (!c || listen_on("127.0.0.1", &port) < 0)
		skip_all("cannot listen on 127.0.0.1");
	if (listen_on("127.0.0.2", &port2) < 0)
		skip_all("cannot listen on 127.0.0.2");
	if (nx_fetch_global_init() < 0)
		return 1;

	/* 503, 503, then 206 */
	r = open_repo("flaky", 10);
	rc = nx_registry_get_blob(r, blob_digest, 10, 100, collect_cb, c);
	ok(rc == 0 && covers(c, 10, 100) && c->first == 10, "503 twice, then the range");
	nx_registry_stats(r, &st);
	is_int(st.retries, 2, "two retries counted");
	nx_registry_close(r);

	/* 429 with Retry-After: 1 */
	r = open_repo("ratelimit", 10);
	t0 = nx_now_ns();
	rc = nx_registry_get_manifest(r, "latest", 0, &body, &len, d, NULL);
	ok(rc == 0 && len == 2, "429 then the manifest");
	ok(nx_now_ns() - t0 >= 900000000ull, "waited for Retry-After (%.2f s)",
	   (double)(nx_now_ns() - t0) / 1e9);
	free(body);
	nx_registry_close(r);

	/* Range ignored: bytes from offset 0 */
	r = open_repo("norange", 10);
	memset(c, 0, sizeof(*c));
	rc = nx_registry_get_blob(r, blob_digest, 1000, 100, collect_cb, c);
	ok(rc == 0 && c->first == 0 && covers(c, 0, 1100), "200 delivers from offset 0");
	nx_registry_close(r);

	/* cut short: resumes at the next byte */
	r = open_repo("drop", 10);
	memset(c, 0, sizeof(*c));
	rc = nx_registry_get_blob(r, blob_digest, 5000, 100000, collect_cb, c);
	ok(rc == 0 && c->first == 5000 && c->got == 100000 && covers(c, 5000, 100000),
	   "resumed after a cut (rc %d, got %llu)", rc, (unsigned long long)c->got);
	ok(strcmp(drop_second_range, "bytes=35000-104999") == 0, "second request Range %s",
	   drop_second_range);
	nx_registry_close(r);

	/* bearer token */
	r = open_repo("auth", 10);
	rc = nx_registry_get_manifest(r, "latest", 0, &body, &len, d, NULL);
	ok(rc == 0 && len == 10 && memcmp(body, "{\"auth\":1}", 10) == 0, "token then manifest");
	if (rc == 0)
		free(body);
	rc = nx_registry_get_manifest(r, "latest", 0, &body, &len, d, NULL);
	ok(rc == 0, "token reused");
	if (rc == 0)
		free(body);
	is_int(n_token, 1, "one token request");
	is_int(n_unauth, 1, "one 401");
	nx_registry_close(r);

	/* redirect to another host: Range kept, Authorization dropped */
	r = open_repo("redir", 10);
	memset(c, 0, sizeof(*c));
	rc = nx_registry_get_blob(r, blob_digest, 7, 1000, collect_cb, c);
	ok(rc == 0 && c->first == 7 && covers(c, 7, 1000), "307 followed with the range");
	is_int(n_storage, 1, "storage host asked once");
	is_int(storage_saw_auth, 0, "no Authorization sent to the storage host");
	nx_registry_close(r);

	/* pagination with relative and absolute Link */
	{
		struct tl tl = {"", 0};

		r = open_repo("tags", 10);
		rc = nx_registry_list_tags(r, tag_cb, &tl);
		ok(rc == 0 && strcmp(tl.s, "abcde") == 0, "tags over 3 pages: %s", tl.s);
		nx_registry_close(r);
	}

	/* errors */
	r = open_repo("missing", 10);
	is_int(nx_registry_list_tags(r, NULL, NULL), -ENOENT, "unknown repository");
	nx_registry_close(r);
	r = open_repo("broken", 2);
	t0 = nx_now_ns();
	is_int(nx_registry_get_manifest(r, "x", 0, &body, &len, d, NULL), -EAGAIN,
	       "500 after retries");
	ok(nx_now_ns() - t0 < 3000000000ull, "retries bounded by the deadline");
	nx_registry_close(r);
	r = open_repo("stall", 2);
	t0 = nx_now_ns();
	memset(c, 0, sizeof(*c));
	is_int(nx_registry_get_blob(r, blob_digest, 0, 0, collect_cb, c), -ETIMEDOUT,
	       "stalled transfer");
	ok(nx_now_ns() - t0 < 6000000000ull, "stall detected in %.2f s",
	   (double)(nx_now_ns() - t0) / 1e9);
	nx_registry_close(r);

	/* Basic, from $DOCKER_CONFIG/config.json */
	r = open_repo("basic", 10);
	rc = nx_registry_get_manifest(r, "latest", 0, &body, &len, d, NULL);
	is_int(rc, -EACCES, "basic challenge without credentials");
	nx_registry_close(r);
	{
		char dir[] = "/tmp/nixoci-fetch-mock-XXXXXX", file[64];
		FILE *f;

		ok(mkdtemp(dir) != NULL, "config dir");
		snprintf(file, sizeof(file), "%s/config.json", dir);
		f = fopen(file, "w");
		fprintf(f, "{\"auths\":{\"other:1\":{\"auth\":\"eDp5\"},"
			   "\"http://127.0.0.1:%d\":{\"auth\":\"dXNlcjpwYXNz\"}}}",
			port);
		fclose(f);
		unsetenv("REGISTRY_AUTH_FILE");
		unsetenv("XDG_RUNTIME_DIR");
		setenv("XDG_CONFIG_HOME", dir, 1);
		setenv("DOCKER_CONFIG", dir, 1);
		r = open_repo("basic", 10);
		rc = nx_registry_get_manifest(r, "latest", 0, &body, &len, d, NULL);
		ok(rc == 0 && len == 11, "basic credentials from config.json");
		if (rc == 0)
			free(body);
		nx_registry_close(r);
		unlink(file);
		rmdir(dir);
	}

	free(c);
	nx_fetch_global_cleanup();
	return done_testing();
}
