/*
 * tests/fuzz/fuzz-elfneeds.c: the dev.nixoci.elf record parser
 * (nx_elf_needs_parse, format.md 2) on its own; the manifest target reaches
 * it only through a JSON string inside the manifest, which mutations rarely
 * keep well-formed. An accepted record must hold what the parser promises
 * the mount (cache/elf.c trusts it: indices in range, names without a
 * slash, within the limits), format, and parse again to the same record,
 * whose format is the same bytes.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tests/fuzz/fuzz.h"

/* Traps unless @n is a record nx_elf_needs_parse may return. */
static void check_record(const struct nx_elf_needs *n)
{
	size_t names = 0;

	if (!n->nfiles)
		__builtin_trap();
	for (size_t i = 0; i < n->nsearch; i++) {
		size_t len = strlen(n->search[i]);

		if (!len || len > NX_ELF_RUNPATH_MAX)
			__builtin_trap();
	}
	for (size_t i = 0; i < n->nfiles; i++) {
		const struct nx_elf_need *f = &n->files[i];

		if (!f->entry || (i && f->entry <= n->files[i - 1].entry) || f->search < -1 ||
		    (f->search >= 0 && (size_t)f->search >= n->nsearch) ||
		    (f->rpath != 0 && f->rpath != 1) || (f->rpath && f->search < 0) || !f->nnames ||
		    f->nnames > NX_ELF_NEEDED_MAX || f->name0 > n->nnames ||
		    f->nnames > n->nnames - f->name0 || nx_elf_needs_find(n, f->entry) != f)
			__builtin_trap();
		for (uint32_t k = 0; k < f->nnames; k++) {
			const char *s = n->names[f->name0 + k];
			size_t len = strlen(s);

			if (!len || len > NX_ELF_NAME_MAX || strchr(s, '/'))
				__builtin_trap();
		}
		names += f->nnames;
	}
	if (names != n->nnames)
		__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nx_elf_needs *n = NULL, *n2 = NULL;
	char *s, *out = NULL, *out2 = NULL;
	int r;

	fuzz_init_log();
	/* the manifest hands over the annotation as a NUL-terminated string */
	s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = 0;
	if (nx_elf_needs_parse(s, &n) == 0) {
		check_record(n);
		/* the format is never longer than any text that parses to it
		 * (compact, no escapes the input could avoid), so it fits the cap */
		r = nx_elf_needs_format(n, &out);
		if (r == 0) {
			if (nx_elf_needs_parse(out, &n2) != 0)
				__builtin_trap();
			fuzz_elf_needs_same(n, n2);
			if (nx_elf_needs_format(n2, &out2) != 0 || strcmp(out, out2) != 0)
				__builtin_trap();
		} else if (r != -ENOMEM) {
			__builtin_trap();
		}
		free(out2);
		free(out);
		nx_elf_needs_free(n2);
		nx_elf_needs_free(n);
	} else if (n) {
		__builtin_trap(); /* a rejected record leaves nothing behind */
	}
	free(s);
	return 0;
}
