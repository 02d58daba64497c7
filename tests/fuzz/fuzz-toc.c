/*
 * tests/fuzz/fuzz-toc.c: nx_toc_decode over hostile bytes; on success every
 * accessor is walked, since the lazy reader trusts a decoded TOC.
 */
#include "common/common.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nx_toc *toc;

	fuzz_init_log();
	if (nx_toc_decode(data, size, &toc) < 0)
		return 0;
	fuzz_walk_toc(toc);
	nx_toc_free(toc);
	return 0;
}
