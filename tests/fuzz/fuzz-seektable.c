/*
 * tests/fuzz/fuzz-seektable.c: the zstd seekable seek table decoder.
 */
#include <stdlib.h>

#include "common/common.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint32_t *sizes = NULL, n = 0, i;
	volatile uint64_t sum = 0;

	fuzz_init_log();
	if (nx_seektable_decode(data, size, &sizes, &n) == 0) {
		for (i = 0; i < n; i++)
			sum += (uint64_t)sizes[2 * i] + sizes[2 * i + 1];
		free(sizes);
	}
	(void)sum;
	return 0;
}
