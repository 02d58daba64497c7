/*
 * tests/fuzz/fuzz-wwwauth.c: the WWW-Authenticate parser of fetch/auth.c
 * (private API, fetch/fetch_i.h).
 */
#include <stdlib.h>
#include <string.h>

#include "fetch/fetch_i.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nx_challenge c;
	char *v;

	fuzz_init_log();
	if (size > 65536)
		return 0;
	v = malloc(size + 1);
	if (!v)
		return 0;
	memcpy(v, data, size);
	v[size] = 0;
	if (nx_challenge_parse(v, &c) == 0) {
		if (strnlen(c.realm, sizeof(c.realm)) == sizeof(c.realm) ||
		    strnlen(c.service, sizeof(c.service)) == sizeof(c.service) ||
		    strnlen(c.scope, sizeof(c.scope)) == sizeof(c.scope))
			__builtin_trap(); /* fields must stay NUL-terminated */
	}
	free(v);
	return 0;
}
