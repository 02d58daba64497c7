/*
 * tests/fuzz/fuzz-profile.c: the startup profile parsers over hostile
 * bytes (what a mount with profile= reads from the registry): the profile
 * text, the profile manifest and the referrers index. An accepted profile
 * has what the parser promises: valid base names, at most
 * NX_PROFILE_MAX_ENTRIES entries; its lines written back parse again.
 */
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nx_profile *pr = NULL;
	struct nx_desc a, b;
	char line[NX_BASE_MAX + NX_DIGEST_STRLEN + 4];

	fuzz_init_log();
	(void)nx_profile_manifest_parse((const char *)data, size, &a, &b);
	(void)nx_referrers_pick((const char *)data, size, (size & 1) ? "w" : NULL, &a, &b);
	if (nx_profile_parse((const char *)data, size, &pr) != 0)
		return 0;
	if (pr->n > NX_PROFILE_MAX_ENTRIES)
		__builtin_trap();
	for (size_t i = 0; i < pr->n; i++) {
		if (nx_storepath_check_base(pr->ents[i].base, strlen(pr->ents[i].base)) != 0 ||
		    nx_profile_line(pr->ents[i].base, pr->ents[i].digest, line, sizeof(line)) < 0)
			__builtin_trap();
	}
	nx_profile_free(pr);
	return 0;
}
