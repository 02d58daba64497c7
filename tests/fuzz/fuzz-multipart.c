/*
 * tests/fuzz/fuzz-multipart.c: the multipart/byteranges parser and the range
 * bookkeeping of multi-range reads (fetch/multipart.c, private header
 * fetch/fetch_i.h). Input: a Content-Type line, then the body; the first
 * byte of the input also sets how the body is split into feeds. Whatever
 * the body says, the caller must only see bytes of the ranges it asked
 * for, each once, in order within its range.
 */
#include <stdlib.h>
#include <string.h>

#include "fetch/fetch_i.h"
#include "tests/fuzz/fuzz.h"

static const struct nx_range ranges[3] = { { 0, 100 }, { 200, 50 }, { 1000, 4000 } };

struct seen {
	uint64_t next[3];
};

static int seen_cb(void *ctx, size_t i, uint64_t off, const void *buf, size_t len)
{
	struct seen *s = ctx;

	if (i >= 3 || off != s->next[i] || len == 0 ||
	    off + len > ranges[i].off + ranges[i].len)
		__builtin_trap();
	s->next[i] += len;
	return 0;
}

static int part_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	return nx_rset_deliver(ctx, off, buf, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct seen s = { { 0, 200, 1000 } };
	struct nx_mpart m;
	struct nx_rset rs;
	const uint8_t *nl;
	char *ct;
	size_t step, ctlen;

	fuzz_init_log();
	if (size < 1 || size > 262144)
		return 0;
	step = (size_t)data[0] + 1;
	data++;
	size--;
	nl = memchr(data, '\n', size);
	ctlen = nl ? (size_t)(nl - data) : size;
	ct = malloc(ctlen + 1);
	if (!ct)
		return 0;
	memcpy(ct, data, ctlen);
	ct[ctlen] = 0;
	data += nl ? ctlen + 1 : ctlen;
	size -= nl ? ctlen + 1 : ctlen;
	if (nx_rset_init(&rs, ranges, 3, seen_cb, &s) < 0) {
		free(ct);
		return 0;
	}
	if (nx_mpart_init(&m, ct) == 0) {
		for (size_t o = 0; o < size;) {
			size_t c = step < size - o ? step : size - o;

			if (nx_mpart_feed(&m, (const char *)data + o, c, part_cb, &rs) < 0)
				break;
			o += c;
		}
		nx_mpart_end(&m);
	}
	if (nx_rset_done(&rs) != (s.next[0] == 100 && s.next[1] == 250 && s.next[2] == 5000))
		__builtin_trap();
	nx_rset_release(&rs);
	free(ct);
	return 0;
}
