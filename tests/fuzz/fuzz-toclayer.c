/*
 * tests/fuzz/fuzz-toclayer.c: the streaming TOC reader (nx_toc_reader) over
 * a hostile TOC layer, pushed in pieces. The first byte picks the piece
 * size (low 7 bits + 1) and, with bit 7, that the reader hashes the layer
 * against its (matching) digest; the rest is the layer. On success every
 * accessor is walked, as for the plain decoder.
 */
#include <errno.h>

#include "common/common.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nx_toc_reader *r = NULL;
	struct nx_toc *toc = NULL;
	uint8_t d[NX_SHA256_LEN];
	size_t step;
	int rc;

	fuzz_init_log();
	if (size < 1)
		return 0;
	step = (size_t)(data[0] & 0x7f) + 1;
	if (data[0] & 0x80)
		nx_sha256(data + 1, size - 1, d);
	/* a small cap: the fuzzer must not spend its memory on valid bombs */
	if (nx_toc_reader_new(&r, "toc of fuzz", size - 1, data[0] & 0x80 ? d : NULL, 64u << 20) < 0)
		return 0;
	rc = 0;
	for (size_t off = 1; rc == 0 && off < size; off += step)
		rc = nx_toc_reader_feed(r, data + off, size - off < step ? size - off : step);
	if (rc == 0)
		rc = nx_toc_reader_finish(r, &toc);
	nx_toc_reader_free(r);
	if (rc == -EBADMSG)
		__builtin_trap(); /* the digest matched */
	if (rc == 0) {
		fuzz_walk_toc(toc);
		nx_toc_free(toc);
	}
	return 0;
}
