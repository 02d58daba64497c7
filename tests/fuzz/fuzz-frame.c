/*
 * tests/fuzz/fuzz-frame.c: zstd frame decompression as the reader does it
 * (exact ulen, a bomb must be refused), and the TOC blob's capped one-shot
 * decompression. The first 4 bytes give ulen (at most NX_FRAME_MAX).
 */
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint32_t ulen;
	uint8_t *dst, *out = NULL;
	size_t outlen = 0;

	fuzz_init_log();
	if (size < 4)
		return 0;
	memcpy(&ulen, data, 4);
	ulen = ulen % NX_FRAME_MAX + 1;
	data += 4;
	size -= 4;
	dst = malloc(ulen);
	if (!dst)
		return 0;
	(void)nx_frame_decompress(data, size, dst, ulen);
	free(dst);
	/* the TOC layer: capped at 1 MiB here (the reader uses 256 MiB) */
	if (nx_zstd_decompress(data, size, 1u << 20, &out, &outlen) == 0) {
		if (outlen > (1u << 20))
			__builtin_trap();
		free(out);
	}
	return 0;
}
