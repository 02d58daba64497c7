/*
 * tests/fuzz/fuzz-pyc.c: the .pyc parser of import prediction (cache/pyc.c,
 * nx_pyc_parse, private header cache/cache_i.h). The input is the file;
 * an accepted result must name only bytes inside it: at most
 * NX_PYC_ITEMS_MAX imports, each an identifier (dotted) of at most
 * NX_PYC_NAME_MAX bytes, or empty with a level.
 */
#include <string.h>

#include "cache/cache_i.h"
#include "tests/fuzz/fuzz.h"

static int ident(const uint8_t *s, size_t n, int dotted)
{
	for (size_t i = 0; i < n; i++)
		if (!(s[i] == '_' || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || (dotted && s[i] == '.')))
			return 0;
	return n <= NX_PYC_NAME_MAX;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct nx_pyc_imports imp;

	fuzz_init_log();
	if (nx_pyc_parse(data, size, &imp) != 0) {
		if (imp.n != 0)
			__builtin_trap();
		return 0;
	}
	if (imp.n > NX_PYC_ITEMS_MAX)
		__builtin_trap();
	for (unsigned i = 0; i < imp.n; i++) {
		const struct nx_pyc_item *it = &imp.item[i];

		if (it->name_off > size || it->name_len > size - it->name_off ||
		    it->sub_off > size || it->sub_len > size - it->sub_off ||
		    it->level > NX_PYC_LEVEL_MAX || (!it->name_len && !it->level) ||
		    !ident(data + it->name_off, it->name_len, 1) ||
		    !ident(data + it->sub_off, it->sub_len, 0))
			__builtin_trap();
	}
	return 0;
}
