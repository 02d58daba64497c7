/*
 * tests/fuzz/fuzz-nar.c: the streaming NAR parser over hostile bytes. The
 * first input byte picks how the rest is split into feeds, so the parser's
 * state machine is exercised across every token boundary.
 */
#include <string.h>

#include "common/common.h"
#include "tests/fuzz/fuzz.h"

struct count {
	uint64_t bytes;
	uint64_t nodes;
};

static int on_write(void *ctx, const void *buf, size_t len)
{
	struct count *c = ctx;

	(void)buf;
	c->bytes += len;
	return 0;
}

static int on_node(void *ctx, const struct nx_nar_node *n)
{
	struct count *c = ctx;
	volatile char sink;

	/* touch what the parser hands out: path/name must be valid for their lengths */
	if (n->path_len)
		sink = n->path[n->path_len - 1];
	if (n->name_len)
		sink = n->name[n->name_len - 1];
	if (n->type == NX_NODE_SYMLINK && n->size)
		sink = n->target[n->size - 1];
	(void)sink;
	c->nodes++;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct count c = { 0, 0 };
	struct nx_nar_sink sink = { &c, on_write, on_node };
	struct nx_nar_parser *p;
	size_t step, off;
	int rc = 0;

	fuzz_init_log();
	if (size < 1)
		return 0;
	step = data[0] ? data[0] : size;
	data++;
	size--;
	if (nx_nar_parser_new(&p, &sink) < 0)
		return 0;
	for (off = 0; off < size && rc == 0; off += step) {
		size_t n = size - off < step ? size - off : step;

		rc = nx_nar_parser_feed(p, data + off, n);
	}
	if (rc == 0)
		rc = nx_nar_parser_finish(p);
	if (rc == 0 && c.bytes != size)
		__builtin_trap(); /* accepted, but did not pass every byte on */
	nx_nar_parser_free(p);
	return 0;
}
