/*
 * tests/fuzz/fuzz-elf.c: the dynamic-section parser of library prediction
 * (cache/elf.c, nx_elf_dyn_parse, private header cache/cache_i.h). The
 * input is the file; the reader traps on any read outside it, and an
 * accepted result must hold NUL-terminated names without a slash.
 */
#include <string.h>

#include "cache/cache_i.h"
#include "tests/fuzz/fuzz.h"

struct img {
	const uint8_t *b;
	size_t len;
};

static int rd(void *ctx, uint64_t off, void *buf, size_t len)
{
	const struct img *m = ctx;

	if (off > m->len || len > m->len - off)
		__builtin_trap();
	memcpy(buf, m->b + off, len);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct nx_elf_dyn dyn;
	struct img m = { data, size };

	fuzz_init_log();
	if (nx_elf_dyn_parse(rd, &m, size, &dyn) != 0)
		return 0;
	if (dyn.nneeded == 0 || dyn.nneeded > NX_ELF_NEEDED_MAX ||
	    !memchr(dyn.runpath, 0, sizeof(dyn.runpath)))
		__builtin_trap();
	for (unsigned i = 0; i < dyn.nneeded; i++)
		if (!memchr(dyn.needed[i], 0, sizeof(dyn.needed[i])) || !dyn.needed[i][0] ||
		    strchr(dyn.needed[i], '/'))
			__builtin_trap();
	return 0;
}
