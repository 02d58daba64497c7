/*
 * tests/fuzz/fuzz-manifest.c: the store-path manifest parser; an accepted
 * manifest must serialize again and parse to the same store path, import
 * graph and ELF record.
 */
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nx_manifest m, m2;
	char *json, *again = NULL;
	size_t len = 0;

	fuzz_init_log();
	/* the parser takes a length, but callers hold a NUL-terminated body */
	json = malloc(size + 1);
	if (!json)
		return 0;
	memcpy(json, data, size);
	json[size] = 0;
	memset(&m, 0, sizeof(m));
	if (nx_manifest_parse(json, size, &m) == 0) {
		if (nx_manifest_build(&m, &again, &len) == 0) {
			memset(&m2, 0, sizeof(m2));
			if (nx_manifest_parse(again, len, &m2) != 0 ||
			    strcmp(m.info.store_path, m2.info.store_path) != 0 ||
			    memcmp(m.nar.digest, m2.nar.digest, NX_SHA256_LEN) != 0 ||
			    m.nimports != m2.nimports ||
			    (m.nimports && memcmp(m.imports, m2.imports,
						  m.nimports * 2 * sizeof(*m.imports)) != 0))
				__builtin_trap();
			fuzz_elf_needs_same(m.elf, m2.elf);
			nx_manifest_release(&m2);
			free(again);
		}
		nx_manifest_release(&m);
	}
	free(json);
	return 0;
}
