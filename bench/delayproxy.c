/*
 * bench/delayproxy.c: the benchmarks' network link. A TCP proxy in front of
 * the registry that adds round-trip time without limiting bandwidth and
 * costs the host almost no CPU, so that a cold start measured through it
 * competes with nothing but the daemon, the registry and the program (the
 * Python proxy of the tests, tests/lib/faultproxy.py, cost 0.08-0.18
 * CPU-seconds per cold start on 2 cores: docs/benchmarks.md).
 *
 *	delayproxy --upstream HOST:PORT --port-file FILE [--control FILE]
 *		   [--log FILE] [--delay MS] [--handshake N] [--port N]
 *
 * Listens on a free 127.0.0.1 port (written to --port-file once it
 * accepts) and forwards each connection to --upstream. One thread, epoll,
 * level-triggered; bytes are copied through user space in 256 KiB pieces.
 *
 * The delay: every byte from the client is held DELAY ms before it goes to
 * the registry; answers are passed on at once. For a request/response
 * protocol that is DELAY ms of added round-trip time per request, the same
 * as faultproxy's delay=MS (which holds every request DELAY ms before
 * forwarding it), so the figures stay comparable; unlike faultproxy a large
 * body is streamed, never stored first. DELAY comes from --delay or from
 * the control file's "delay=MS" word (faultproxy's format; "mode=pass" is
 * accepted, any other word is ignored with a line on stderr: this proxy
 * only delays).
 *
 * Connection set-up: the proxy accepts at once (loopback), so by default a
 * new connection costs nothing, as with faultproxy. With --handshake N (or
 * the control file's "handshake=N", 0-3) a connection's first bytes leave
 * no earlier than (1 + N) x DELAY after it was accepted: N round trips of
 * set-up before the request's own, as on a real link (1: TCP; 2: TCP and
 * TLS 1.3; 3: TLS 1.2). While N > 0 each accepted connection is logged as
 * "<time> connect n=<connections so far>". The control file is looked at (stat) at every request head and
 * read again when it changed, so the bench changes the delay between rows
 * by rewriting it.
 *
 * The log, one line per request, in faultproxy's format (the bench scripts
 * count and parse these lines):
 *
 *	<time> <method> <target> range=<Range or -> -> <status> pass bytes=<body bytes>
 *	<time> begin <method> <target> inflight=<n>      (only while DELAY > 0)
 *
 * written when the response's last byte came from the registry, before it
 * is passed on (so a client that got its answer finds its line). "begin"
 * is written when the request head arrives; n counts the requests held on
 * the link at that moment, this one included. A request whose answer never
 * completed (a side closed the connection) is logged at the close with
 * "cut" instead of "pass". For this the proxy follows HTTP/1.1 on both
 * streams: request heads and bodies (Content-Length or chunked), response
 * heads (1xx skipped) and bodies (Content-Length, chunked, none for HEAD,
 * 204 and 304, or up to the close). A stream it cannot parse is still
 * forwarded, only no longer logged (one line says so).
 *
 * SIGTERM or SIGINT: closes every connection and exits 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SEG_SIZE (256 * 1024)
/* bytes queued in one direction before the proxy stops reading the sender:
 * the held direction needs bandwidth x delay (64 MiB: 1.6 GB/s at 40 ms);
 * the other only buffers for a slow reader, as a socket buffer would */
#define CAP_HELD (64u << 20)
#define CAP_PASS (4u << 20)
#define HEAD_MAX (64 * 1024)
#define LINE_MAX_ 1024
#define TARGET_MAX 2048
#define FIELD_MAX 256
#define SPARE_MAX 32

struct seg {
	struct seg *next;
	int64_t due_us;		/* CLOCK_MONOTONIC: when it may be written */
	size_t off, len;
	size_t cap;		/* SEG_SIZE, or len once shrunk to it */
	char data[];
};

/* one request: from its head to the end of its response */
struct req {
	struct req *next;
	char method[16];
	char target[TARGET_MAX];
	char range[FIELD_MAX];
	int status;		/* 0 until the response head came */
	long long bytes;	/* response body bytes so far */
};

enum pstate { P_HEAD, P_LEN, P_CHUNK_SIZE, P_CHUNK_DATA, P_CHUNK_END, P_TRAILER, P_EOF, P_RAW };

/* the HTTP/1.1 framing of one stream */
struct parser {
	enum pstate st;
	size_t hlen;		/* P_HEAD: bytes in head; lines: bytes in line */
	long long left;		/* P_LEN, P_CHUNK_DATA: body bytes still to come */
	char head[HEAD_MAX];
	char line[LINE_MAX_];
};

struct conn;

/* one socket of a connection; epoll's data.ptr points here */
struct end {
	struct conn *c;
	int fd;
	uint32_t ev;		/* events registered with epoll */
};

/* one direction: what was read from "from" and is owed to "to" */
struct dir {
	struct end *from, *to;
	struct seg *head, *tail;
	size_t queued;
	size_t cap;
	bool eof;		/* the sender closed its side */
	bool shut;		/* ... and that was passed on (shutdown SHUT_WR) */
	bool blocked;		/* the last write would block: wait for EPOLLOUT */
	struct parser p;
};

struct conn {
	struct conn *prev, *next;
	struct end cl, up;
	bool connecting;	/* the upstream connect is in progress */
	int64_t born_us;	/* CLOCK_MONOTONIC: when it was accepted */
	bool dead;
	struct dir c2u, u2c;
	struct req *rq_head, *rq_tail;	/* requests seen, oldest first */
	struct req *cur;	/* the request whose head/body is being read */
};

static int epfd = -1;
static int logfd = 2;
static struct conn *conns;
static struct seg *spare;
static int nspare;
static struct sockaddr_storage up_addr;
static socklen_t up_len;
static const char *ctl_path;
static struct stat ctl_st;
static bool ctl_seen;
static int64_t delay_us;
static int handshake, handshake_cli;	/* round trips of connection set-up */
static unsigned long long nconnects;
/* due times of the requests held on the link (for "inflight") */
static int64_t *held;
static size_t nheld, held_cap;

static int64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* one line to FD, one write(2): lines of concurrent requests never mix */
static void vline(int fd, const char *fmt, va_list ap)
{
	char buf[TARGET_MAX + 1024];
	struct timespec ts;
	int n, m;

	clock_gettime(CLOCK_REALTIME, &ts);
	n = snprintf(buf, sizeof(buf), "%lld.%03ld ", (long long)ts.tv_sec, ts.tv_nsec / 1000000);
	m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	if (m < 0)
		return;
	n += m;
	if ((size_t)n > sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(fd, buf, (size_t)n) < 0) {
		/* nowhere left to say it */
	}
}

/* a line of the request log */
__attribute__((format(printf, 1, 2)))
static void logf_(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vline(logfd, fmt, ap);
	va_end(ap);
}

/* a line on stderr: what the scripts that count log lines must not see
 * (faultproxy logs nothing when its control file changes) */
__attribute__((format(printf, 1, 2)))
static void note(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vline(2, fmt, ap);
	va_end(ap);
}

/* ------------------------------------------------------------ control */

static void ctl_apply(char *text)
{
	int64_t d = 0;
	int h = handshake_cli;
	char *save = NULL, *w;

	for (w = strtok_r(text, " \t\r\n", &save); w; w = strtok_r(NULL, " \t\r\n", &save)) {
		if (!strncmp(w, "delay=", 6)) {
			char *end;
			long v = strtol(w + 6, &end, 10);

			if (*end || v < 0 || v > 600000)
				note("control: ignoring %s (say delay=MS)", w);
			else
				d = (int64_t)v * 1000;
		} else if (!strncmp(w, "handshake=", 10)) {
			char *end;
			long v = strtol(w + 10, &end, 10);

			if (*end || v < 0 || v > 3)
				note("control: ignoring %s (say handshake=0..3)", w);
			else
				h = (int)v;
		} else if (strcmp(w, "mode=pass") != 0) {
			note("control: ignoring %s (delayproxy only delays; faults need tests/lib/faultproxy.py)", w);
		}
	}
	if (d != delay_us)
		note("delay %lld ms", (long long)(d / 1000));
	delay_us = d;
	if (h != handshake)
		note("handshake %d round trips", h);
	handshake = h;
}

/* the control file again if it changed since it was last read */
static void ctl_check(void)
{
	struct stat st;
	char text[4096];
	ssize_t n;
	int fd;

	if (!ctl_path)
		return;
	if (stat(ctl_path, &st) < 0) {
		if (ctl_seen)
			ctl_seen = false, delay_us = 0, handshake = handshake_cli;
		return;
	}
	if (ctl_seen && st.st_ino == ctl_st.st_ino && st.st_size == ctl_st.st_size &&
	    st.st_mtim.tv_sec == ctl_st.st_mtim.tv_sec && st.st_mtim.tv_nsec == ctl_st.st_mtim.tv_nsec)
		return;
	fd = open(ctl_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	n = read(fd, text, sizeof(text) - 1);
	close(fd);
	if (n < 0)
		return;
	text[n] = '\0';
	ctl_st = st;
	ctl_seen = true;
	ctl_apply(text);
}

/* requests held on the link now, after adding one due at DUE */
static size_t held_add(int64_t now, int64_t due)
{
	size_t i, j = 0;

	for (i = 0; i < nheld; i++)
		if (held[i] > now)
			held[j++] = held[i];
	nheld = j;
	if (nheld == held_cap) {
		size_t nc = held_cap ? held_cap * 2 : 256;
		int64_t *nh = realloc(held, nc * sizeof(*nh));

		if (!nh)
			return nheld + 1;	/* only the count suffers */
		held = nh;
		held_cap = nc;
	}
	held[nheld++] = due;
	return nheld;
}

/* ------------------------------------------------------------ HTTP */

/* the value of header NAME in a head (lines end in CRLF), copied to OUT */
static bool header(const char *head, const char *name, char *out, size_t outsz)
{
	size_t nl = strlen(name);
	const char *p = strstr(head, "\r\n");

	while (p && p[2]) {
		const char *l = p + 2, *e = strstr(l, "\r\n");
		size_t len;

		if (!e)
			e = l + strlen(l);
		if ((size_t)(e - l) > nl && l[nl] == ':' && !strncasecmp(l, name, nl)) {
			const char *v = l + nl + 1;

			while (v < e && (*v == ' ' || *v == '\t'))
				v++;
			len = (size_t)(e - v);
			while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
				len--;
			if (len >= outsz)
				len = outsz - 1;
			memcpy(out, v, len);
			out[len] = '\0';
			return true;
		}
		p = *e ? e : NULL;
	}
	return false;
}

static bool is_chunked(const char *head)
{
	char v[FIELD_MAX];

	/* chunked is always the last coding (RFC 9112 6.1) */
	if (!header(head, "Transfer-Encoding", v, sizeof(v)))
		return false;
	size_t n = strlen(v);
	return n >= 7 && !strcasecmp(v + n - 7, "chunked");
}

/* Content-Length of a head: the value, -1 when absent, -2 when bad */
static long long content_length(const char *head)
{
	char v[FIELD_MAX], *end;
	long long n;

	if (!header(head, "Content-Length", v, sizeof(v)))
		return -1;
	errno = 0;
	n = strtoll(v, &end, 10);
	if (errno || end == v || *end || n < 0)
		return -2;
	return n;
}

static void req_log(struct req *r, const char *what)
{
	char st[16];

	if (r->status)
		snprintf(st, sizeof(st), "%d", r->status);
	else
		snprintf(st, sizeof(st), "-");
	logf_("%s %s range=%s -> %s %s bytes=%lld", r->method, r->target, r->range, st, what, r->bytes);
}

static void give_up(struct conn *c, struct parser *p, const char *side, const char *why)
{
	logf_("%s stream not followed any more (%s): its requests are not logged", side, why);
	p->st = P_RAW;
	(void)c;
}

/* A request head is complete (NUL-terminated in p->head). */
static void request_head(struct conn *c, struct parser *p)
{
	struct req *r = calloc(1, sizeof(*r));
	char *sp1, *sp2;
	long long cl;

	if (!r) {
		give_up(c, p, "request", "out of memory");
		return;
	}
	sp1 = strchr(p->head, ' ');
	sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
	if (!sp1 || !sp2 || (size_t)(sp1 - p->head) >= sizeof(r->method)) {
		free(r);
		give_up(c, p, "request", "no request line");
		return;
	}
	memcpy(r->method, p->head, (size_t)(sp1 - p->head));
	snprintf(r->target, sizeof(r->target), "%.*s", (int)(sp2 - sp1 - 1), sp1 + 1);
	if (!header(p->head, "Range", r->range, sizeof(r->range)))
		snprintf(r->range, sizeof(r->range), "-");
	if (c->rq_tail)
		c->rq_tail->next = r;
	else
		c->rq_head = r;
	c->rq_tail = r;

	ctl_check();
	if (delay_us > 0) {
		int64_t now = mono_us();

		logf_("begin %s %s inflight=%zu", r->method, r->target, held_add(now, now + delay_us));
	}
	if (is_chunked(p->head)) {
		p->st = P_CHUNK_SIZE;
	} else if ((cl = content_length(p->head)) == -2) {
		give_up(c, p, "request", "bad Content-Length");
	} else if (cl > 0) {
		p->st = P_LEN;
		p->left = cl;
	} else {
		p->st = P_HEAD;		/* a request without a length has no body */
	}
}

static void response_done(struct conn *c, struct parser *p)
{
	struct req *r = c->rq_head;

	req_log(r, "pass");
	c->rq_head = r->next;
	if (!c->rq_head)
		c->rq_tail = NULL;
	free(r);
	p->st = P_HEAD;
}

/* A response head is complete. */
static void response_head(struct conn *c, struct parser *p)
{
	struct req *r = c->rq_head;
	long long cl;
	int status;

	if (strncmp(p->head, "HTTP/1.", 7) || sscanf(p->head + 8, " %3d", &status) != 1) {
		give_up(c, p, "response", "no status line");
		return;
	}
	if (status == 101) {
		give_up(c, p, "response", "protocol switch");
		return;
	}
	if (status < 200)
		return;		/* interim (100 Continue): the real head follows */
	if (!r) {
		give_up(c, p, "response", "an answer without a request");
		return;
	}
	r->status = status;
	if (!strcmp(r->method, "HEAD") || status == 204 || status == 304) {
		response_done(c, p);
	} else if (is_chunked(p->head)) {
		p->st = P_CHUNK_SIZE;
	} else if ((cl = content_length(p->head)) == -2) {
		give_up(c, p, "response", "bad Content-Length");
	} else if (cl >= 0) {
		p->left = cl;
		p->st = P_LEN;
		if (!cl)
			response_done(c, p);
	} else {
		p->st = P_EOF;	/* the body ends with the connection */
	}
}

/* the body of the current message of this stream ended */
static void body_done(struct conn *c, struct parser *p, bool response)
{
	if (response)
		response_done(c, p);
	else
		p->st = P_HEAD;
}

/* A line of chunked framing is complete (in p->line, CRLF stripped). */
static void chunk_line(struct conn *c, struct parser *p, bool response)
{
	char *end;
	long long n;

	switch (p->st) {
	case P_CHUNK_SIZE:
		errno = 0;
		n = strtoll(p->line, &end, 16);
		if (errno || end == p->line || n < 0 || (*end && *end != ';' && *end != ' ' && *end != '\t')) {
			give_up(c, p, response ? "response" : "request", "bad chunk size");
			return;
		}
		p->left = n;
		p->st = n ? P_CHUNK_DATA : P_TRAILER;
		break;
	case P_CHUNK_END:
		if (p->line[0]) {
			give_up(c, p, response ? "response" : "request", "no CRLF after a chunk");
			return;
		}
		p->st = P_CHUNK_SIZE;
		break;
	case P_TRAILER:
		if (!p->line[0])
			body_done(c, p, response);
		break;
	default:
		break;
	}
}

/* Follows the framing over BUF[0..N) of one stream. */
static void parse(struct conn *c, struct parser *p, bool response, const char *buf, size_t n)
{
	size_t i = 0;

	while (i < n) {
		switch (p->st) {
		case P_RAW:
		case P_EOF:
			if (response && p->st == P_EOF && c->rq_head)
				c->rq_head->bytes += (long long)(n - i);
			return;
		case P_HEAD:
			if (!p->hlen && (buf[i] == '\r' || buf[i] == '\n')) {
				i++;	/* stray CRLF between messages */
				break;
			}
			if (p->hlen == sizeof(p->head) - 1) {
				give_up(c, p, response ? "response" : "request", "head over 64 KiB");
				return;
			}
			p->head[p->hlen++] = buf[i++];
			if (p->hlen >= 4 && !memcmp(p->head + p->hlen - 4, "\r\n\r\n", 4)) {
				p->head[p->hlen - 2] = '\0';	/* keep the last CRLF for header() */
				p->hlen = 0;
				if (response)
					response_head(c, p);
				else
					request_head(c, p);
			}
			break;
		case P_LEN:
		case P_CHUNK_DATA: {
			size_t take = n - i;

			if ((long long)take > p->left)
				take = (size_t)p->left;
			p->left -= (long long)take;
			i += take;
			if (response && c->rq_head)
				c->rq_head->bytes += (long long)take;
			if (p->left)
				break;
			if (p->st == P_LEN)
				body_done(c, p, response);
			else
				p->st = P_CHUNK_END, p->hlen = 0;
			break;
		}
		case P_CHUNK_SIZE:
		case P_CHUNK_END:
		case P_TRAILER: {
			char ch = buf[i++];

			if (ch == '\n') {
				if (p->hlen && p->line[p->hlen - 1] == '\r')
					p->hlen--;
				p->line[p->hlen] = '\0';
				p->hlen = 0;
				chunk_line(c, p, response);
			} else if (p->hlen == sizeof(p->line) - 1) {
				give_up(c, p, response ? "response" : "request", "chunk line over 1 KiB");
				return;
			} else {
				p->line[p->hlen++] = ch;
			}
			break;
		}
		}
	}
}

/* ------------------------------------------------------------ connections */

static struct seg *seg_get(void)
{
	struct seg *s = spare;

	if (s) {
		spare = s->next;
		nspare--;
	} else if (!(s = malloc(sizeof(*s) + SEG_SIZE))) {
		return NULL;
	}
	s->cap = SEG_SIZE;
	s->next = NULL;
	s->off = s->len = 0;
	return s;
}

static void seg_put(struct seg *s)
{
	if (nspare < SPARE_MAX && s->cap == SEG_SIZE) {
		s->next = spare;
		spare = s;
		nspare++;
	} else {
		free(s);
	}
}

static void conn_free(struct conn *c)
{
	struct dir *ds[2] = { &c->c2u, &c->u2c };
	struct req *r;

	while ((r = c->rq_head)) {
		c->rq_head = r->next;
		if (c->u2c.p.st != P_RAW)
			req_log(r, "cut");
		free(r);
	}
	for (int i = 0; i < 2; i++) {
		struct seg *s;

		while ((s = ds[i]->head)) {
			ds[i]->head = s->next;
			seg_put(s);
		}
	}
	if (c->cl.fd >= 0)
		close(c->cl.fd);
	if (c->up.fd >= 0)
		close(c->up.fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c);
}

#define EV_GONE UINT32_MAX	/* the end is no longer in the epoll set */

/* E waits for EV; IN is the direction read from E, OUT the one written to it */
static void set_events(struct end *e, const struct dir *in, const struct dir *out, uint32_t ev)
{
	struct epoll_event x = { .events = ev, .data.ptr = e };

	if (e->ev == EV_GONE)
		return;
	if (in->eof && out->shut) {
		/* both ways closed: epoll would report EPOLLHUP for it (which
		 * cannot be masked) at every wait until the other end is done */
		epoll_ctl(epfd, EPOLL_CTL_DEL, e->fd, NULL);
		e->ev = EV_GONE;
		return;
	}
	if (ev == e->ev)
		return;
	if (epoll_ctl(epfd, EPOLL_CTL_MOD, e->fd, &x) < 0)
		logf_("epoll_ctl: %s", strerror(errno));
	e->ev = ev;
}

/* Writes what is due in D. Returns 0 or -errno (the connection is done). */
static int dir_flush(struct conn *c, struct dir *d, int64_t now)
{
	struct seg *s;

	if (d == &c->c2u && c->connecting)
		return 0;
	while ((s = d->head) && s->due_us <= now && !d->blocked) {
		ssize_t w = send(d->to->fd, s->data + s->off, s->len - s->off, MSG_NOSIGNAL);

		if (w < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				d->blocked = true;
				break;
			}
			if (errno == EINTR)
				continue;
			return -errno;
		}
		s->off += (size_t)w;
		d->queued -= (size_t)w;
		if (s->off == s->len) {
			d->head = s->next;
			if (!d->head)
				d->tail = NULL;
			seg_put(s);
		}
	}
	if (!d->head && d->eof && !d->shut) {
		shutdown(d->to->fd, SHUT_WR);
		d->shut = true;
	}
	return 0;
}

/* Reads what the sender of D has (one piece). Returns 0 or -errno. */
static int dir_read(struct conn *c, struct dir *d, int64_t now)
{
	struct seg *s = seg_get();
	bool response = d == &c->u2c;
	ssize_t n;

	if (!s)
		return -ENOMEM;
	do
		n = recv(d->from->fd, s->data, s->cap, 0);
	while (n < 0 && errno == EINTR);
	if (n <= 0) {
		int e = n < 0 ? errno : 0;

		seg_put(s);
		if (n < 0)
			return e == EAGAIN || e == EWOULDBLOCK ? 0 : -e;
		d->eof = true;
		if (response && d->p.st == P_EOF && c->rq_head)
			response_done(c, &d->p);
		return 0;
	}
	s->len = (size_t)n;
	/* parsed before it is stamped: a request head may change the delay */
	parse(c, &d->p, response, s->data, s->len);
	s->due_us = response ? now : now + delay_us;
	if (!response && handshake > 0 && s->due_us < c->born_us + (1 + handshake) * delay_us)
		s->due_us = c->born_us + (1 + handshake) * delay_us; /* still shaking hands */
	if (s->due_us > now && s->len < SEG_SIZE / 2) {
		/* held with little in it (a request head; a client that
		 * sends 16-64 KiB at a time): a copy of just its bytes is
		 * held, so that memory follows the bytes on the link, not the
		 * number of reads, and the full piece goes back to the spares */
		struct seg *t = malloc(sizeof(*s) + s->len);

		if (t) {
			memcpy(t, s, sizeof(*s) + s->len);
			t->cap = t->len;
			seg_put(s);
			s = t;
		}
	}
	if (d->tail && d->tail->due_us > s->due_us)
		s->due_us = d->tail->due_us;	/* the delay shrank: keep the order */
	if (d->tail)
		d->tail->next = s;
	else
		d->head = s;
	d->tail = s;
	d->queued += s->len;
	return 0;
}

/* what C's sockets should wait for, given its queues */
static void conn_update(struct conn *c)
{
	uint32_t cl = 0, up = 0;

	if (!c->c2u.eof && c->c2u.queued < c->c2u.cap)
		cl |= EPOLLIN;
	if (!c->u2c.eof && c->u2c.queued < c->u2c.cap && !c->connecting)
		up |= EPOLLIN;
	if (c->u2c.blocked)
		cl |= EPOLLOUT;
	if (c->c2u.blocked || c->connecting)
		up |= EPOLLOUT;
	set_events(&c->cl, &c->c2u, &c->u2c, cl);
	set_events(&c->up, &c->u2c, &c->c2u, up);
}

static bool conn_finished(struct conn *c)
{
	return c->c2u.shut && c->u2c.shut;
}

static void conn_fail(struct conn *c, const char *what, int err)
{
	/* a peer that closes or resets is ordinary: only other errors are news */
	if (err != ECONNRESET && err != EPIPE)
		logf_("connection: %s: %s", what, strerror(err));
	c->dead = true;
}

static void on_event(struct end *e, uint32_t ev, int64_t now)
{
	struct conn *c = e->c;
	bool is_up = e == &c->up;
	struct dir *in = is_up ? &c->u2c : &c->c2u;	/* read from e */
	struct dir *out = is_up ? &c->c2u : &c->u2c;	/* written to e */
	int r;

	if (c->dead)
		return;
	if (is_up && c->connecting && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
		int err = 0;
		socklen_t len = sizeof(err);

		getsockopt(c->up.fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err) {
			logf_("cannot connect to the upstream: %s", strerror(err));
			c->dead = true;
			return;
		}
		c->connecting = false;
	}
	if (ev & EPOLLERR) {
		int err = 0;
		socklen_t len = sizeof(err);

		getsockopt(e->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		conn_fail(c, is_up ? "upstream" : "client", err ? err : ECONNRESET);
		return;
	}
	if (ev & EPOLLOUT)
		out->blocked = false;
	if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !in->eof && in->queued < in->cap) {
		if ((r = dir_read(c, in, now)) < 0) {
			conn_fail(c, "read", -r);
			return;
		}
	}
	if ((r = dir_flush(c, in, now)) < 0 || (r = dir_flush(c, out, now)) < 0) {
		conn_fail(c, "write", -r);
		return;
	}
}

static void on_accept(int lfd)
{
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), ufd, one = 1;
		struct epoll_event ev;
		struct conn *c;

		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
				logf_("accept: %s", strerror(errno));
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return;
		}
		ufd = socket(up_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		c = calloc(1, sizeof(*c));
		if (ufd < 0 || !c) {
			logf_("no socket or memory for a connection: %s", strerror(errno));
			free(c);
			if (ufd >= 0)
				close(ufd);
			close(fd);
			continue;
		}
		/* requests and answers are written whole: no Nagle wait */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		setsockopt(ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c->born_us = mono_us();
		ctl_check(); /* the set-up to model is the one asked for now */
		++nconnects;
		if (handshake > 0)
			logf_("connect n=%llu", nconnects);
		c->cl = (struct end){ c, fd, 0 };
		c->up = (struct end){ c, ufd, 0 };
		c->c2u = (struct dir){ .from = &c->cl, .to = &c->up, .cap = CAP_HELD };
		c->u2c = (struct dir){ .from = &c->up, .to = &c->cl, .cap = CAP_PASS };
		c->next = conns;
		if (conns)
			conns->prev = c;
		conns = c;
		if (connect(ufd, (struct sockaddr *)&up_addr, up_len) < 0) {
			if (errno != EINPROGRESS) {
				logf_("cannot connect to the upstream: %s", strerror(errno));
				conn_free(c);
				continue;
			}
			c->connecting = true;
		}
		ev = (struct epoll_event){ .events = 0, .data.ptr = &c->cl };
		if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			logf_("epoll_ctl: %s", strerror(errno));
			conn_free(c);
			continue;
		}
		ev.data.ptr = &c->up;
		if (epoll_ctl(epfd, EPOLL_CTL_ADD, ufd, &ev) < 0) {
			logf_("epoll_ctl: %s", strerror(errno));
			conn_free(c);
			continue;
		}
		conn_update(c);
	}
}

/* ------------------------------------------------------------ main */

static void usage(void)
{
	fprintf(stderr, "usage: delayproxy --upstream HOST:PORT --port-file FILE "
		"[--control FILE] [--log FILE] [--delay MS] [--handshake 0-3] [--port N]\n");
	exit(2);
}

static int resolve(const char *hp)
{
	char host[256];
	const char *colon = strrchr(hp, ':');
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai;
	int e;

	if (!colon || (size_t)(colon - hp) >= sizeof(host))
		return -EINVAL;
	snprintf(host, sizeof(host), "%.*s", (int)(colon - hp), hp);
	if ((e = getaddrinfo(host, colon + 1, &hints, &ai)) != 0) {
		fprintf(stderr, "delayproxy: upstream %s: %s\n", hp, gai_strerror(e));
		return -EINVAL;
	}
	memcpy(&up_addr, ai->ai_addr, ai->ai_addrlen);
	up_len = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

static int write_port_file(const char *path, int port)
{
	char tmp[4096], txt[32];
	int fd, n;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	n = snprintf(txt, sizeof(txt), "%d\n", port);
	if (write(fd, txt, (size_t)n) != n) {
		int e = errno;

		close(fd);
		return -e;
	}
	close(fd);
	/* renamed into place: a reader never sees half a number */
	return rename(tmp, path) < 0 ? -errno : 0;
}

int main(int argc, char **argv)
{
	const char *upstream = NULL, *port_file = NULL, *log_path = NULL;
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sin);
	struct epoll_event ev, evs[64];
	struct rlimit rl;
	sigset_t sigs;
	int lfd, sfd, one = 1;
	bool running = true;
	struct end lend = { NULL, -1, 0 }, send_ = { NULL, -1, 0 };

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!v)
			usage();
		if (!strcmp(a, "--upstream"))
			upstream = v;
		else if (!strcmp(a, "--port-file"))
			port_file = v;
		else if (!strcmp(a, "--control"))
			ctl_path = v;
		else if (!strcmp(a, "--log"))
			log_path = v;
		else if (!strcmp(a, "--delay"))
			delay_us = (int64_t)atoi(v) * 1000;
		else if (!strcmp(a, "--handshake") && atoi(v) >= 0 && atoi(v) <= 3)
			handshake = handshake_cli = atoi(v);
		else if (!strcmp(a, "--port"))
			sin.sin_port = htons((uint16_t)atoi(v));
		else
			usage();
		i++;
	}
	if (!upstream || !port_file)
		usage();
	/* pieces (256 KiB) from the heap, not one mmap and munmap each */
	mallopt(M_MMAP_THRESHOLD, 4 * SEG_SIZE);
	if (resolve(upstream) < 0)
		return 1;
	if (log_path && (logfd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0) {
		fprintf(stderr, "delayproxy: %s: %s\n", log_path, strerror(errno));
		return 1;
	}
	/* two descriptors per connection: allow as many as the system lets us */
	if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (sfd < 0 || lfd < 0 || epfd < 0) {
		fprintf(stderr, "delayproxy: %s\n", strerror(errno));
		return 1;
	}
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(lfd, 1024) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&sin, &sl) < 0) {
		fprintf(stderr, "delayproxy: cannot listen on 127.0.0.1: %s\n", strerror(errno));
		return 1;
	}
	lend.fd = lfd;
	send_.fd = sfd;
	ev = (struct epoll_event){ .events = EPOLLIN, .data.ptr = &lend };
	epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
	ev.data.ptr = &send_;
	epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev);
	ctl_check();
	{
		int e = write_port_file(port_file, ntohs(sin.sin_port));

		if (e < 0) {
			fprintf(stderr, "delayproxy: %s: %s\n", port_file, strerror(-e));
			return 1;
		}
	}
	logf_("listening on 127.0.0.1:%d, upstream %s, delay %lld ms", ntohs(sin.sin_port), upstream,
	      (long long)(delay_us / 1000));

	while (running) {
		int64_t now = mono_us(), next = -1;
		struct timespec ts, *tp = NULL;
		struct conn *c, *cn;
		int n;

		/* the earliest held piece decides how long to sleep (one that
		 * came due since the last flush: not at all) */
		for (c = conns; c; c = c->next) {
			struct seg *s = c->c2u.head;

			if (s && !c->c2u.blocked && !c->connecting && (next < 0 || s->due_us < next))
				next = s->due_us;
		}
		if (next >= 0) {
			if (next < now)
				next = now;
			ts.tv_sec = (next - now) / 1000000;
			ts.tv_nsec = (long)((next - now) % 1000000) * 1000;
			tp = &ts;
		}
		n = epoll_pwait2(epfd, evs, 64, tp, NULL);
		if (n < 0 && errno != EINTR) {
			logf_("epoll_wait: %s", strerror(errno));
			return 1;
		}
		now = mono_us();
		for (int i = 0; i < n; i++) {
			struct end *e = evs[i].data.ptr;

			if (e == &lend)
				on_accept(lfd);
			else if (e == &send_)
				running = false;
			else
				on_event(e, evs[i].events, now);
		}
		/* held pieces that came due; connections that ended */
		for (c = conns; c; c = cn) {
			int r;

			cn = c->next;
			if (!c->dead && (r = dir_flush(c, &c->c2u, now)) < 0)
				conn_fail(c, "write", -r);
			if (c->dead || conn_finished(c)) {
				conn_free(c);
				continue;
			}
			conn_update(c);
		}
	}
	while (conns)
		conn_free(conns);
	while (spare) {
		struct seg *s = spare;

		spare = s->next;
		free(s);
	}
	free(held);
	logf_("stopped");
	close(lfd);
	close(sfd);
	close(epfd);
	if (log_path)
		close(logfd);
	return 0;
}
