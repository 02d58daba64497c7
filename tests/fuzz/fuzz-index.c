/*
 * tests/fuzz/fuzz-index.c: the closure index parser; an accepted index must
 * serialize again.
 */
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nx_index ix, ix2;
	char *json, *again = NULL;
	size_t len = 0;

	fuzz_init_log();
	json = malloc(size + 1);
	if (!json)
		return 0;
	memcpy(json, data, size);
	json[size] = 0;
	memset(&ix, 0, sizeof(ix));
	if (nx_index_parse(json, size, &ix) == 0) {
		if (nx_index_build(&ix, &again, &len) == 0) {
			memset(&ix2, 0, sizeof(ix2));
			if (nx_index_parse(again, len, &ix2) != 0 ||
			    ix2.nentries != ix.nentries)
				__builtin_trap();
			nx_index_release(&ix2);
			free(again);
		}
		nx_index_release(&ix);
	}
	free(json);
	return 0;
}
