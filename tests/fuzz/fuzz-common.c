/*
 * tests/fuzz/fuzz-common.c: helpers every fuzz target links.
 */
#include <stdlib.h>

#include "common/common.h"
#include "tests/fuzz/fuzz.h"

void fuzz_init_log(void)
{
	static int done;
	const char *q;

	if (done)
		return;
	done = 1;
	nx_log_set_prog("fuzz");
	q = getenv("NIXOCI_FUZZ_QUIET");
	if (q && *q == '1')
		nx_log_set_level(0);
}

void fuzz_walk_toc(const struct nx_toc *toc)
{
	volatile char sink;
	uint32_t i, first, last;
	size_t len;

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
}
