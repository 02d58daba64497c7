/*
 * tests/fuzz/fuzz-narinfo.c: nx_narinfo_parse over hostile narinfo bytes
 * (what `nixoci import` reads from a binary cache). An accepted narinfo must
 * have what the parser promises: a store path, a relative URL, NarSize > 0,
 * sorted unique references, and a Nix fingerprint.
 */
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nx_narinfo ni;
	const char *base;
	char *fp = NULL;
	size_t i;

	fuzz_init_log();
	if (nx_narinfo_parse("fuzz", (size & 1) ? NULL : "y0cqwlxmpv2nad3kbdjmv2zcfrhip6gq",
			     (const char *)data, size, &ni) != 0)
		return 0;
	if (!ni.info.store_path || nx_storepath_check(ni.info.store_path, &base) != 0 ||
	    !ni.url || ni.url[0] == '/' || ni.info.nar_size == 0)
		__builtin_trap();
	for (i = 1; i < ni.info.nrefs; i++)
		if (strcmp(ni.info.refs[i - 1], ni.info.refs[i]) >= 0)
			__builtin_trap();
	if (nx_fingerprint(&ni.info, &fp) != 0)
		__builtin_trap();
	free(fp);
	nx_narinfo_release(&ni);
	return 0;
}
