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
