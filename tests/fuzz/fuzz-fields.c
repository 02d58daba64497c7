/*
 * tests/fuzz/fuzz-fields.c: the small parsers of annotation and narinfo
 * fields. The first byte selects the parser; the rest is the field value.
 */
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tests/fuzz/fuzz.h"

/* a fixed key, so that signature parsing reaches the verify step */
static const char test_key[] = "test-1:cvrdXZnHAr0TKBOi0Iw8ZlTgbi9i5GhkN7C5Xc9CDW0=";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t h[NX_SHA256_LEN], buf[4096];
	char *s, out[NX_NARHASH_STRLEN];
	const char *base;
	struct nx_pubkey *keys = NULL;
	size_t nkeys = 0;
	uint64_t u;
	int sel;

	fuzz_init_log();
	if (size < 1 || size > 8192)
		return 0;
	sel = data[0];
	s = malloc(size);
	if (!s)
		return 0;
	memcpy(s, data + 1, size - 1);
	s[size - 1] = 0;
	switch (sel % 9) {
	case 0:
		if (nx_narhash_parse(s, h) == 0) {
			uint8_t h2[NX_SHA256_LEN];

			nx_narhash_format(h, out);
			if (nx_narhash_parse(out, h2) != 0 || memcmp(h, h2, sizeof(h)) != 0)
				__builtin_trap();
		}
		break;
	case 1:
		if (nx_storepath_check(s, &base) == 0 &&
		    nx_storepath_check_base(base, strlen(base)) != 0)
			__builtin_trap();
		break;
	case 2:
		(void)nx_storepath_check_base(s, size - 1); /* length includes any NUL */
		break;
	case 3:
		if (nx_pubkeys_parse(s, &keys, &nkeys) == 0)
			free(keys);
		break;
	case 4:
		if (nx_pubkeys_parse(test_key, &keys, &nkeys) == 0) {
			(void)nx_sig_verify(keys, nkeys, s, "msg", 3);
			free(keys);
		}
		break;
	case 5:
		(void)nx_digest_parse(s, h);
		break;
	case 6:
		(void)nx_nix32_decode(s, strlen(s), h, sizeof(h));
		break;
	case 7:
		if (strlen(s) < 4 * (sizeof(buf) / 3 - 1))
			(void)nx_base64_decode(s, strlen(s), buf, sizeof(buf));
		break;
	default:
		(void)nx_parse_size(s, &u);
		break;
	}
	free(s);
	return 0;
}
