/*
 * tests/fuzz/fuzz-toc.c: nx_toc_decode over hostile bytes; on success every
 * accessor is walked, since the lazy reader trusts a decoded TOC.
 */
#include "common/common.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nx_toc *toc;
	volatile char sink;
	uint32_t i, first, last;
	size_t len;

	fuzz_init_log();
	if (nx_toc_decode(data, size, &toc) < 0)
		return 0;
	for (i = 0; i < toc->nentries; i++) {
		const struct nx_toc_entry *e = &toc->entries[i];
		const char *s = nx_toc_name(toc, i, &len);

		if (len)
			sink = s[len - 1];
		if (e->type == NX_NODE_SYMLINK) {
			s = nx_toc_target(toc, i, &len);
			if (!len)
				__builtin_trap(); /* empty targets are refused */
			sink = s[len - 1];
		} else if (e->type == NX_NODE_DIRECTORY && e->nchildren) {
			const char *n = nx_toc_name(toc, e->first_child, &len);

			if (nx_toc_lookup(toc, i, n, len) != (int64_t)e->first_child)
				__builtin_trap();
		} else if (e->type == NX_NODE_REGULAR && e->size) {
			if (nx_toc_frames_for(toc, e->off, e->size, &first, &last) < 0 ||
			    first > last || last >= toc->nframes)
				__builtin_trap();
		}
	}
	(void)sink;
	(void)nx_toc_lookup(toc, 0, "a", 1);
	nx_toc_free(toc);
	return 0;
}
