/*
 * tests/fuzz/fuzz-common.c: helpers every fuzz target links.
 */
#include <stdlib.h>
#include <string.h>

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

void fuzz_elf_needs_same(const struct nx_elf_needs *a, const struct nx_elf_needs *b)
{
	if (!a || !b) {
		if (a != b)
			__builtin_trap();
		return;
	}
	if (a->nfiles != b->nfiles || a->nnames != b->nnames || a->nsearch != b->nsearch)
		__builtin_trap();
	for (size_t i = 0; i < a->nsearch; i++)
		if (strcmp(a->search[i], b->search[i]) != 0)
			__builtin_trap();
	for (size_t i = 0; i < a->nfiles; i++) {
		const struct nx_elf_need *f = &a->files[i], *g = &b->files[i];

		if (f->entry != g->entry || f->search != g->search || f->rpath != g->rpath ||
		    f->nnames != g->nnames)
			__builtin_trap();
		/* each through its own name0: the two need not lay names out alike */
		for (uint32_t k = 0; k < f->nnames; k++)
			if (strcmp(a->names[f->name0 + k], b->names[g->name0 + k]) != 0)
				__builtin_trap();
	}
}
