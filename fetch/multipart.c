/*
 * fetch/multipart.c: the pieces of a multi-range blob read that do not
 * touch the network, kept apart so the unit tests can feed them anything.
 *
 *  - struct nx_rset: which bytes of which ranges were delivered. Bytes of
 *    the blob arrive from any answer (a multipart part, a single range, a
 *    whole blob); only those that continue a range exactly where it stands
 *    reach the caller, so each byte is delivered once and in order within
 *    its range, whatever the server sent, repeated or out of order. A
 *    range with a hole left is asked for again later (fetch/registry.c).
 *
 *  - struct nx_mpart: a streaming parser of a multipart/byteranges body
 *    (RFC 9110 §14.6, RFC 2046 §5.1). It trusts each part's Content-Range
 *    for its length instead of scanning the body for the boundary, so part
 *    data is never searched; everything around the data (delimiters,
 *    header lines) must be exactly as the grammar says, within small
 *    bounds (line length, headers per part, parts per body, preamble and
 *    epilogue size): this is registry input.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fetch/fetch_i.h"

/* --------------------------------------------------------------- rset */

int nx_rset_init(struct nx_rset *s, const struct nx_range *v, size_t n, nx_range_cb cb,
		 void *ctx)
{
	memset(s, 0, sizeof(*s));
	if (!n)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (!v[i].len || v[i].off + v[i].len < v[i].off)
			return -EINVAL;
		if (i && v[i].off < v[i - 1].off + v[i - 1].len)
			return -EINVAL; /* unsorted or overlapping */
	}
	s->next = malloc(n * sizeof(*s->next));
	if (!s->next)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		s->next[i] = v[i].off;
	s->v = v;
	s->n = n;
	s->cb = cb;
	s->ctx = ctx;
	return 0;
}

void nx_rset_release(struct nx_rset *s)
{
	free(s->next);
	s->next = NULL;
}

static uint64_t rend(const struct nx_rset *s, size_t i)
{
	return s->v[i].off + s->v[i].len;
}

/* The first range that ends after @off. */
static size_t rfind(const struct nx_rset *s, uint64_t off)
{
	size_t lo = 0, hi = s->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (rend(s, mid) <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int nx_rset_deliver(struct nx_rset *s, uint64_t off, const void *buf, size_t len)
{
	const uint8_t *b = buf;
	uint64_t end = off + len;

	for (size_t i = rfind(s, off); i < s->n && s->v[i].off < end; i++) {
		uint64_t from = s->next[i], to = rend(s, i);
		int rc;

		if (from >= to || from < off || from >= end)
			continue; /* complete, a hole before this piece, or behind it */
		if (to > end)
			to = end;
		rc = s->cb(s->ctx, i, from, b + (from - off), (size_t)(to - from));
		if (rc < 0) {
			s->cb_failed = 1;
			return rc;
		}
		s->next[i] = to;
		s->got += to - from;
	}
	return 0;
}

int nx_rset_done(const struct nx_rset *s)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->next[i] < rend(s, i))
			return 0;
	return 1;
}

int nx_rset_wanted_near(const struct nx_rset *s, uint64_t pos, uint64_t gap)
{
	for (size_t i = rfind(s, pos); i < s->n; i++) {
		if (s->next[i] >= rend(s, i))
			continue;
		if (s->next[i] < pos)
			continue; /* its next byte went by: this stream cannot help */
		return s->next[i] - pos <= gap;
	}
	return 0;
}

int nx_rset_format(const struct nx_rset *s, char *buf, size_t cap)
{
	size_t used = 0;
	int any = 0;

	if (cap)
		buf[0] = 0;
	for (size_t i = 0; i < s->n; i++) {
		int k;

		if (s->next[i] >= rend(s, i))
			continue;
		k = snprintf(buf + used, cap - used, "%s%" PRIu64 "-%" PRIu64, any ? "," : "",
			     s->next[i], rend(s, i) - 1);
		if (k < 0 || (size_t)k >= cap - used)
			return -E2BIG;
		used += (size_t)k;
		any = 1;
	}
	return any ? 0 : -ENOENT;
}

/* -------------------------------------------------------------- mpart */

enum { MP_PREAMBLE, MP_HEADERS, MP_BODY, MP_AFTER, MP_DELIM, MP_EPILOGUE, MP_FAILED };

static int mp_fail(struct nx_mpart *m, const char *why)
{
	if (m->state != MP_FAILED)
		snprintf(m->why, sizeof(m->why), "%s", why);
	m->state = MP_FAILED;
	return -EIO;
}

/* RFC 2046's bchars, at most 70 of them. */
static int bchar_ok(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       strchr("'()+_,-./:=? ", c) != NULL;
}

int nx_mpart_init(struct nx_mpart *m, const char *ctype)
{
	const char *p, *b = NULL;
	size_t n = 0;

	memset(m, 0, sizeof(*m));
	m->state = MP_FAILED;
	if (!ctype || strncasecmp(ctype, "multipart/byteranges", 20) != 0) {
		snprintf(m->why, sizeof(m->why), "not a multipart/byteranges answer");
		return -EINVAL;
	}
	/* the boundary parameter: boundary=TOKEN or boundary="QUOTED" */
	for (p = ctype + 20; *p; p++) {
		const char *q = p + 1;

		if (*p != ';')
			continue;
		while (*q == ' ' || *q == '\t')
			q++;
		if (strncasecmp(q, "boundary=", 9) == 0) {
			b = q + 9;
			break;
		}
	}
	if (!b) {
		snprintf(m->why, sizeof(m->why), "multipart answer without a boundary");
		return -EINVAL;
	}
	if (*b == '"') {
		b++;
		while (b[n] && b[n] != '"')
			n++;
		if (b[n] != '"')
			n = 0;
	} else {
		while (b[n] && b[n] != ';' && b[n] != ' ' && b[n] != '\t')
			n++;
	}
	if (n == 0 || n > 70 || b[n - 1] == ' ') {
		snprintf(m->why, sizeof(m->why), "multipart answer with a malformed boundary");
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		if (!bchar_ok(b[i])) {
			snprintf(m->why, sizeof(m->why),
				 "multipart answer with a malformed boundary");
			return -EINVAL;
		}
	}
	m->delim[0] = m->delim[1] = '-';
	memcpy(m->delim + 2, b, n);
	m->dlen = n + 2;
	m->delim[m->dlen] = 0;
	m->state = MP_PREAMBLE;
	return 0;
}

/* "bytes FIRST-LAST/TOTAL" (TOTAL may be "*"): 0, or -1. */
static int parse_crange(const char *v, uint64_t *first, uint64_t *last)
{
	uint64_t a = 0, b = 0, t = 0;
	const char *p;
	int digits;

	if (strncasecmp(v, "bytes", 5) != 0)
		return -1;
	p = v + 5;
	if (*p != ' ' && *p != '\t')
		return -1;
	while (*p == ' ' || *p == '\t')
		p++;
#define NUM(x)                                                                                     \
	do {                                                                                       \
		digits = 0;                                                                        \
		while (*p >= '0' && *p <= '9') {                                                   \
			if ((x) > (UINT64_MAX - 9) / 10)                                           \
				return -1;                                                         \
			(x) = (x) * 10 + (uint64_t)(*p++ - '0');                                   \
			digits++;                                                                  \
		}                                                                                  \
		if (!digits)                                                                       \
			return -1;                                                                 \
	} while (0)
	NUM(a);
	if (*p++ != '-')
		return -1;
	NUM(b);
	if (*p++ != '/')
		return -1;
	if (*p == '*') {
		p++;
		t = UINT64_MAX;
	} else {
		NUM(t);
		if (b >= t)
			return -1;
	}
#undef NUM
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p || a > b)
		return -1;
	*first = a;
	*last = b;
	return 0;
}

/* A complete line (without its CRLF or LF) in the current state. */
static int mp_line(struct nx_mpart *m, char *l, size_t n)
{
	while (n && (l[n - 1] == ' ' || l[n - 1] == '\t'))
		n--; /* RFC 2046's transport padding after a delimiter */
	l[n] = 0;
	switch (m->state) {
	case MP_PREAMBLE:
		if (n == m->dlen && memcmp(l, m->delim, n) == 0) {
			m->state = MP_HEADERS;
			return 0;
		}
		if (n == m->dlen + 2 && memcmp(l, m->delim, m->dlen) == 0 &&
		    memcmp(l + m->dlen, "--", 2) == 0)
			return mp_fail(m, "multipart answer without a part");
		return 0; /* preamble: ignored */
	case MP_HEADERS: {
		char *colon;

		if (n == 0) {
			if (!m->have_range)
				return mp_fail(m, "multipart part without a Content-Range");
			m->left = m->last - m->first + 1;
			m->pos = m->first;
			m->state = MP_BODY;
			return 0;
		}
		if (++m->hdrs > NX_MP_HEADERS_MAX)
			return mp_fail(m, "multipart part with too many header lines");
		colon = strchr(l, ':');
		if (!colon || colon == l)
			return mp_fail(m, "multipart part with a malformed header line");
		if ((size_t)(colon - l) == 13 && strncasecmp(l, "content-range", 13) == 0) {
			const char *v = colon + 1;

			while (*v == ' ' || *v == '\t')
				v++;
			if (m->have_range)
				return mp_fail(m, "multipart part with two Content-Ranges");
			if (parse_crange(v, &m->first, &m->last) < 0)
				return mp_fail(m, "multipart part with a malformed Content-Range");
			m->have_range = 1;
		}
		return 0;
	}
	case MP_AFTER:
		/* the CRLF that ends the data belongs to the next delimiter */
		if (n != 0)
			return mp_fail(m, "multipart part longer than its Content-Range");
		m->state = MP_DELIM;
		return 0;
	case MP_DELIM:
		if (n == m->dlen && memcmp(l, m->delim, n) == 0) {
			m->state = MP_HEADERS;
			return 0;
		}
		if (n == m->dlen + 2 && memcmp(l, m->delim, m->dlen) == 0 &&
		    memcmp(l + m->dlen, "--", 2) == 0) {
			m->state = MP_EPILOGUE;
			return 0;
		}
		return mp_fail(m, "multipart part longer than its Content-Range");
	default:
		return mp_fail(m, "multipart parser misused");
	}
}

int nx_mpart_feed(struct nx_mpart *m, const char *buf, size_t n, nx_blob_cb cb, void *ctx)
{
	while (n) {
		if (m->state == MP_FAILED)
			return -EIO;
		if (m->state == MP_EPILOGUE) {
			m->epilogue += n;
			if (m->epilogue > NX_MP_EPILOGUE_MAX)
				return mp_fail(m, "multipart answer goes on after its end");
			return 0;
		}
		if (m->state == MP_BODY) {
			size_t k = n < m->left ? n : (size_t)m->left;
			int rc = cb(ctx, m->pos, buf, k);

			if (rc < 0)
				return rc; /* the caller's: the parser can go on */
			m->pos += k;
			m->left -= k;
			buf += k;
			n -= k;
			if (m->left == 0) {
				m->state = MP_AFTER;
				m->have_range = 0;
				m->hdrs = 0;
				if (++m->parts > NX_MP_PARTS_MAX)
					return mp_fail(m, "multipart answer with too many parts");
			}
			continue;
		}
		/* a line: up to LF, bounded */
		{
			const char *lf = memchr(buf, '\n', n);
			size_t k = lf ? (size_t)(lf - buf) : n;

			if (m->state == MP_PREAMBLE) {
				m->preamble += k + (lf ? 1 : 0);
				if (m->preamble > NX_MP_PREAMBLE_MAX)
					return mp_fail(m, "multipart answer without a first delimiter");
			}
			if (m->llen + k > NX_MP_LINE_MAX)
				return mp_fail(m, "multipart answer with an over-long line");
			memcpy(m->line + m->llen, buf, k);
			m->llen += k;
			buf += k;
			n -= k;
			if (!lf)
				return 0;
			buf++;
			n--;
			if (m->llen && m->line[m->llen - 1] == '\r')
				m->llen--;
			k = m->llen;
			m->llen = 0;
			if (mp_line(m, m->line, k) < 0)
				return -EIO;
		}
	}
	return m->state == MP_FAILED ? -EIO : 0;
}

int nx_mpart_end(struct nx_mpart *m)
{
	if (m->state == MP_EPILOGUE)
		return 0;
	if (m->state != MP_FAILED)
		mp_fail(m, m->state == MP_BODY ? "multipart answer ends inside a part" :
						 "multipart answer ends before its closing delimiter");
	return -EIO;
}
