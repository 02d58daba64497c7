/*
 * tests/fuzz/fuzz-cmeta.c: the closure metadata blob decoder (format.md
 * 5.1); an accepted blob must encode again to one that decodes the same.
 */
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nx_cmeta_item *it = NULL, *it2 = NULL;
	uint8_t *raw = NULL, *raw2 = NULL, *z = NULL;
	size_t n = 0, n2 = 0, zlen = 0;

	fuzz_init_log();
	if (nx_cmeta_decode(data, size, &raw, &it, &n) == 0) {
		if (nx_cmeta_encode(it, n, &z, &zlen) == 0) {
			if (nx_cmeta_decode(z, zlen, &raw2, &it2, &n2) != 0 || n2 != n)
				__builtin_trap();
			for (size_t i = 0; i < n; i++)
				if (it2[i].man_len != it[i].man_len || it2[i].toc_len != it[i].toc_len ||
				    memcmp(it2[i].man, it[i].man, it[i].man_len) != 0)
					__builtin_trap();
			free(it2);
			free(raw2);
			free(z);
		}
		free(it);
		free(raw);
	}
	return 0;
}
