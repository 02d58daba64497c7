/*
 * tests/unit/fetch-multipart.c: the multipart/byteranges parser and the
 * range bookkeeping of multi-range reads (fetch/multipart.c), fed good and
 * malformed bodies whole and one byte at a time. No network I/O.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fetch/fetch.h"
#include "fetch/fetch_i.h"
#include "tests/unit/tap.h"

#define BLOB 4096

static char blob[BLOB];

/* What the rset handed on: bytes by offset, and order checks. */
struct sink {
	char buf[BLOB];
	uint64_t next[8];
	const struct nx_range *v;
	size_t n;
	int bad, calls, fail_at;
};

static int sink_cb(void *ctx, size_t i, uint64_t off, const void *buf, size_t len)
{
	struct sink *k = ctx;

	if (k->fail_at && ++k->calls >= k->fail_at)
		return -ECANCELED;
	if (i >= k->n || off != k->next[i] || off + len > k->v[i].off + k->v[i].len ||
	    off + len > BLOB) {
		k->bad = 1;
		return 0;
	}
	memcpy(k->buf + off, buf, len);
	k->next[i] += len;
	return 0;
}

static int part_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	return nx_rset_deliver(ctx, off, buf, len);
}

/* A body of parts [a, b] (inclusive) with CRLF (or LF) line ends. */
static size_t body(char *out, size_t cap, const char *bnd, const uint64_t (*p)[2], size_t np,
		   const char *eol, int close)
{
	size_t n = 0;

	for (size_t i = 0; i < np; i++) {
		n += (size_t)snprintf(out + n, cap - n,
				      "%s--%s%sContent-Type: application/octet-stream%s"
				      "Content-Range: bytes %llu-%llu/%d%s%s",
				      i ? eol : "", bnd, eol, eol, (unsigned long long)p[i][0],
				      (unsigned long long)p[i][1], BLOB, eol, eol);
		memcpy(out + n, blob + p[i][0], p[i][1] - p[i][0] + 1);
		n += p[i][1] - p[i][0] + 1;
	}
	if (close)
		n += (size_t)snprintf(out + n, cap - n, "%s--%s--%s", eol, bnd, eol);
	return n;
}

/* Parses @b (in chunks of @step bytes; 0: whole) for ranges @v: 0 when the
 * parser accepted it and every range arrived right, else the error. */
static int run(const char *ctype, const char *b, size_t len, size_t step,
	       const struct nx_range *v, size_t n, struct sink *k, char *why, size_t whycap)
{
	struct nx_mpart m;
	struct nx_rset s;
	int rc;

	memset(k, 0, sizeof(*k));
	k->v = v;
	k->n = n;
	for (size_t i = 0; i < n; i++)
		k->next[i] = v[i].off;
	rc = nx_rset_init(&s, v, n, sink_cb, k);
	if (rc < 0)
		return rc;
	rc = nx_mpart_init(&m, ctype);
	for (size_t o = 0; rc == 0 && o < len;) {
		size_t c = step && step < len - o ? step : len - o;

		rc = nx_mpart_feed(&m, b + o, c, part_cb, &s);
		o += c;
	}
	if (rc == 0)
		rc = nx_mpart_end(&m);
	if (why)
		snprintf(why, whycap, "%s", rc == -EIO || rc == -EINVAL ? m.why : "");
	if (rc == 0 && !nx_rset_done(&s))
		rc = -ENODATA;
	if (rc == 0 && k->bad)
		rc = -EPROTO;
	for (size_t i = 0; rc == 0 && i < n; i++)
		if (memcmp(k->buf + v[i].off, blob + v[i].off, v[i].len) != 0)
			rc = -EBADMSG;
	nx_rset_release(&s);
	return rc;
}

int main(void)
{
	static char b[3 * BLOB];
	const char *ct = "multipart/byteranges; boundary=XyZ0123";
	const struct nx_range v[3] = { { 10, 20 }, { 100, 50 }, { 4000, 96 } };
	const uint64_t parts[3][2] = { { 10, 29 }, { 100, 149 }, { 4000, 4095 } };
	struct sink k;
	char why[128];
	size_t n;
	int rc;

	for (int i = 0; i < BLOB; i++)
		blob[i] = (char)(i * 7 + 3);

	/* good answers */
	n = body(b, sizeof(b), "XyZ0123", parts, 3, "\r\n", 1);
	is_int(run(ct, b, n, 0, v, 3, &k, NULL, 0), 0, "three parts, whole body");
	is_int(run(ct, b, n, 1, v, 3, &k, NULL, 0), 0, "three parts, one byte at a time");
	is_int(run(ct, b, n, 7, v, 3, &k, NULL, 0), 0, "three parts, 7 bytes at a time");
	{
		const uint64_t rev[3][2] = { { 4000, 4095 }, { 10, 29 }, { 100, 149 } };

		n = body(b, sizeof(b), "XyZ0123", rev, 3, "\r\n", 1);
		is_int(run(ct, b, n, 3, v, 3, &k, NULL, 0), 0, "parts in another order");
	}
	{
		const uint64_t co[2][2] = { { 0, 199 }, { 3990, 4095 } };

		n = body(b, sizeof(b), "XyZ0123", co, 2, "\r\n", 1);
		is_int(run(ct, b, n, 5, v, 3, &k, NULL, 0), 0,
		       "coalesced parts wider than asked: only the asked bytes");
	}
	{
		const uint64_t dup[4][2] = { { 10, 29 }, { 10, 29 }, { 100, 149 }, { 4000, 4095 } };

		n = body(b, sizeof(b), "XyZ0123", dup, 4, "\r\n", 1);
		is_int(run(ct, b, n, 0, v, 3, &k, NULL, 0), 0, "a repeated part: delivered once");
	}
	{
		/* a part that starts inside a range leaves the hole for later */
		const uint64_t late[3][2] = { { 15, 29 }, { 100, 149 }, { 4000, 4095 } };

		n = body(b, sizeof(b), "XyZ0123", late, 3, "\r\n", 1);
		is_int(run(ct, b, n, 0, v, 3, &k, NULL, 0), -ENODATA,
		       "a part starting inside a range: that range stays missing");
		is_int((int)k.next[0], 10, "nothing of it delivered out of order");
	}
	n = body(b, sizeof(b), "XyZ0123", parts, 3, "\n", 1);
	is_int(run(ct, b, n, 2, v, 3, &k, NULL, 0), 0, "LF line ends");
	{
		char *p = b;

		n = (size_t)sprintf(p, "preamble text\r\n\r\n");
		n += body(b + n, sizeof(b) - n, "XyZ0123", parts, 3, "\r\n", 1);
		n += (size_t)sprintf(b + n, "epilogue\r\n");
		is_int(run(ct, b, n, 1, v, 3, &k, NULL, 0), 0, "preamble and epilogue ignored");
	}
	is_int(run("multipart/byteranges;boundary=\"XyZ0123\"", b, 0, 0, v, 3, &k, NULL, 0) ==
		       -EIO,
	       1, "quoted boundary accepted (empty body: truncated)");
	n = body(b, sizeof(b), "a b", parts, 3, "\r\n", 1);
	is_int(run("Multipart/ByteRanges; charset=x; boundary=\"a b\"", b, n, 0, v, 3, &k, NULL, 0),
	       0, "case-insensitive type, other parameters, quoted boundary with a space");

	/* a callback error stops the parse and is returned */
	{
		struct nx_mpart m;
		struct nx_rset s;

		n = body(b, sizeof(b), "XyZ0123", parts, 3, "\r\n", 1);
		memset(&k, 0, sizeof(k));
		k.v = v;
		k.n = 3;
		k.fail_at = 2;
		for (int i = 0; i < 3; i++)
			k.next[i] = v[i].off;
		nx_rset_init(&s, v, 3, sink_cb, &k);
		nx_mpart_init(&m, ct);
		rc = nx_mpart_feed(&m, b, n, part_cb, &s);
		is_int(rc, -ECANCELED, "callback error returned");
		ok(s.cb_failed, "and noted");
		nx_rset_release(&s);
	}

	/* malformed */
	n = body(b, sizeof(b), "XyZ0123", parts, 3, "\r\n", 1);
	is_int(run("multipart/byteranges", b, n, 0, v, 3, &k, why, sizeof(why)), -EINVAL,
	       "missing boundary: %s", why);
	is_int(run("multipart/byteranges;", b, n, 0, v, 3, &k, why, sizeof(why)), -EINVAL,
	       "a parameter list that ends at a semicolon: %s", why);
	is_int(run("multipart/byteranges; boundary=", b, n, 0, v, 3, &k, why, sizeof(why)),
	       -EINVAL, "empty boundary: %s", why);
	is_int(run("multipart/byteranges; boundary=a\x01z", b, n, 0, v, 3, &k, why, sizeof(why)),
	       -EINVAL, "boundary with a control character: %s", why);
	is_int(run("multipart/byteranges; boundary=\"unterminated", b, n, 0, v, 3, &k, why,
		   sizeof(why)),
	       -EINVAL, "unterminated quoted boundary: %s", why);
	is_int(run("application/octet-stream", b, n, 0, v, 3, &k, why, sizeof(why)), -EINVAL,
	       "not multipart: %s", why);
	is_int(run(ct, b, n - 30, 1, v, 3, &k, why, sizeof(why)), -EIO, "truncated part: %s",
	       why);
	is_int(run(ct, b, n - 4, 0, v, 3, &k, why, sizeof(why)), -EIO,
	       "truncated closing delimiter: %s", why);
	n = body(b, sizeof(b), "Other", parts, 3, "\r\n", 1);
	is_int(run(ct, b, n, 0, v, 3, &k, why, sizeof(why)), -EIO, "another boundary: %s", why);
	n = (size_t)sprintf(b, "--XyZ0123\r\nContent-Type: x\r\n\r\nabc\r\n--XyZ0123--\r\n");
	is_int(run(ct, b, n, 0, v, 3, &k, why, sizeof(why)), -EIO,
	       "part without Content-Range: %s", why);
	{
		static const char *bad[] = {
			"bytes 30-10/4096",        /* last before first */
			"bytes 10-29/20",          /* past the total */
			"bytes 10-29",             /* no total */
			"bytes -29/4096",          /* no first */
			"bytes 10-/4096",          /* no last */
			"items 10-29/4096",        /* another unit */
			"bytes 99999999999999999999-1/4096", /* overflow */
			"bytes 10-29/4096 junk",
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			n = (size_t)sprintf(b, "--XyZ0123\r\nContent-Range: %s\r\n\r\n", bad[i]);
			memcpy(b + n, blob + 10, 20);
			n += 20;
			n += (size_t)sprintf(b + n, "\r\n--XyZ0123--\r\n");
			is_int(run(ct, b, n, 0, v, 3, &k, why, sizeof(why)), -EIO,
			       "Content-Range \"%s\": %s", bad[i], why);
		}
	}
	/* a part whose Content-Range says less than it carries */
	n = (size_t)sprintf(b, "--XyZ0123\r\nContent-Range: bytes 10-19/4096\r\n\r\n");
	memcpy(b + n, blob + 10, 20);
	n += 20;
	n += (size_t)sprintf(b + n, "\r\n--XyZ0123--\r\n");
	is_int(run(ct, b, n, 0, v, 3, &k, why, sizeof(why)), -EIO,
	       "part longer than its Content-Range: %s", why);
	/* two Content-Ranges in one part */
	n = (size_t)sprintf(b, "--XyZ0123\r\nContent-Range: bytes 10-29/4096\r\n"
			       "Content-Range: bytes 100-119/4096\r\n\r\n");
	memcpy(b + n, blob + 10, 20);
	n += 20;
	n += (size_t)sprintf(b + n, "\r\n--XyZ0123--\r\n");
	is_int(run(ct, b, n, 0, v, 3, &k, why, sizeof(why)), -EIO, "two Content-Ranges: %s", why);
	/* an over-long header line, too many headers, an endless preamble */
	memset(b, 'h', 2000);
	n = (size_t)sprintf(b, "--XyZ0123\r\nX-");
	memset(b + n, 'h', 1000);
	n += 1000;
	n += (size_t)sprintf(b + n, ": v\r\n\r\n");
	is_int(run(ct, b, n, 0, v, 3, &k, why, sizeof(why)), -EIO, "over-long header line: %s",
	       why);
	n = (size_t)sprintf(b, "--XyZ0123\r\n");
	for (int i = 0; i < 40; i++)
		n += (size_t)sprintf(b + n, "X-%d: v\r\n", i);
	n += (size_t)sprintf(b + n, "\r\n");
	is_int(run(ct, b, n, 0, v, 3, &k, why, sizeof(why)), -EIO, "too many headers: %s", why);
	n = 0;
	for (int i = 0; i < 200; i++)
		n += (size_t)sprintf(b + n, "line %d\r\n", i);
	is_int(run(ct, b, n, 0, v, 3, &k, why, sizeof(why)), -EIO, "endless preamble: %s", why);
	n = (size_t)sprintf(b, "--XyZ0123--\r\n");
	is_int(run(ct, b, n, 0, v, 3, &k, why, sizeof(why)), -EIO, "no part at all: %s", why);
	n = body(b, sizeof(b), "XyZ0123", parts, 3, "\r\n", 1);
	memset(b + n, 'e', 2000);
	is_int(run(ct, b, n + 2000, 0, v, 3, &k, why, sizeof(why)), -EIO,
	       "endless epilogue: %s", why);
	{
		/* more parts than any answer needs */
		static char big[64 * 1024];
		size_t m = 0;

		for (int i = 0; i < NX_MP_PARTS_MAX + 2; i++)
			m += (size_t)sprintf(big + m, "%s--XyZ0123\r\nContent-Range: bytes 0-0/4096"
						      "\r\n\r\nx",
					     i ? "\r\n" : "");
		m += (size_t)sprintf(big + m, "\r\n--XyZ0123--\r\n");
		is_int(run(ct, big, m, 0, v, 3, &k, why, sizeof(why)), -EIO, "too many parts: %s",
		       why);
	}

	/* the range bookkeeping */
	{
		struct nx_rset s;
		const struct nx_range bad1[2] = { { 10, 5 }, { 12, 5 } };
		const struct nx_range bad2[2] = { { 20, 5 }, { 10, 5 } };
		const struct nx_range bad3[1] = { { 10, 0 } };
		const struct nx_range bad4[1] = { { UINT64_MAX - 2, 5 } };
		char fmt[64];

		is_int(nx_rset_init(&s, bad1, 2, sink_cb, &k), -EINVAL, "overlapping ranges");
		is_int(nx_rset_init(&s, bad2, 2, sink_cb, &k), -EINVAL, "unsorted ranges");
		is_int(nx_rset_init(&s, bad3, 1, sink_cb, &k), -EINVAL, "empty range");
		is_int(nx_rset_init(&s, bad4, 1, sink_cb, &k), -EINVAL, "overflowing range");
		is_int(nx_rset_init(&s, v, 0, sink_cb, &k), -EINVAL, "no range");
		memset(&k, 0, sizeof(k));
		k.v = v;
		k.n = 3;
		for (int i = 0; i < 3; i++)
			k.next[i] = v[i].off;
		is_int(nx_rset_init(&s, v, 3, sink_cb, &k), 0, "three ranges");
		is_int(nx_rset_format(&s, fmt, sizeof(fmt)), 0, "format");
		ok(strcmp(fmt, "10-29,100-149,4000-4095") == 0, "Range of all three" " (%s)", fmt);
		/* a whole-blob stream, in pieces */
		nx_rset_deliver(&s, 0, blob, 20);
		ok(nx_rset_wanted_near(&s, 20, 100), "range 0 wanted ahead");
		nx_rset_deliver(&s, 20, blob + 20, 100);
		is_int(nx_rset_format(&s, fmt, sizeof(fmt)), 0, "format after some");
		ok(strcmp(fmt, "120-149,4000-4095") == 0, "Range of what is missing" " (%s)", fmt);
		ok(!nx_rset_wanted_near(&s, 150, 1000), "4000 is beyond a gap of 1000");
		ok(nx_rset_wanted_near(&s, 150, 4000), "but within 4000");
		nx_rset_deliver(&s, 120, blob + 120, 30);
		nx_rset_deliver(&s, 3990, blob + 3990, 106);
		ok(nx_rset_done(&s) && !k.bad, "all delivered, in order");
		is_int(nx_rset_format(&s, fmt, sizeof(fmt)), -ENOENT, "nothing missing");
		is_int(nx_rset_format(&s, fmt, 4), 0 - ENOENT, "nothing missing, small buffer");
		nx_rset_release(&s);
		k.next[0] = 10;
		is_int(nx_rset_init(&s, v, 3, sink_cb, &k), 0, "again");
		is_int(nx_rset_format(&s, fmt, 8), -E2BIG, "Range too long for the buffer");
		nx_rset_release(&s);
	}
	return done_testing();
}
