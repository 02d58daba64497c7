/*
 * tests/unit/common-nix32.c: nixbase32 against the vectors of specs.md §6.1.
 */
#include <errno.h>
#include <string.h>

#include "common/common.h"
#include "tests/unit/tap.h"

static void unhex(const char *s, uint8_t *out)
{
	size_t n = strlen(s) / 2;

	for (size_t i = 0; i < n; i++) {
		unsigned v;

		sscanf(s + 2 * i, "%2x", &v);
		out[i] = (uint8_t)v;
	}
}

static const struct {
	const char *hex, *nix32;
} vectors[] = {
	{ "b3a24de97a8fdbc835b9833169501030b8977031bcb54b3b3ac13740f846ab30",
	  "0c5b8vw40dy178xlpddw65q9gf1h2186jcc3p4swinwggbllv8mk" },
	{ "8a12321522fd91efbd60ebb2481af88580f61600", "00bgd045z0d4icpbc2yyz4gx48ak44la" },
	{ "1f", "0z" },
	{ "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13",
	  "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw" },
	{ "", "" },
};

int main(void)
{
	uint8_t in[64], out[64];
	char s[128];

	is_int(nx_nix32_len(0), 0, "len 0");
	is_int(nx_nix32_len(1), 2, "len 1");
	is_int(nx_nix32_len(20), 32, "len 20");
	is_int(nx_nix32_len(32), 52, "len 32");

	for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
		size_t n = strlen(vectors[i].hex) / 2;

		unhex(vectors[i].hex, in);
		nx_nix32_encode(in, n, s);
		ok(strcmp(s, vectors[i].nix32) == 0, "encode vector %zu: %s", i, s);
		memset(out, 0xaa, sizeof(out));
		is_int(nx_nix32_decode(vectors[i].nix32, strlen(vectors[i].nix32), out, n), 0,
		       "decode vector %zu", i);
		ok(memcmp(out, in, n) == 0, "decode vector %zu bytes", i);
	}

	/* round trips over every length up to 40 with varied bytes */
	{
		int good = 1;

		for (size_t n = 1; n <= 40; n++) {
			for (size_t k = 0; k < n; k++)
				in[k] = (uint8_t)(k * 37 + n * 11 + 0xf0);
			nx_nix32_encode(in, n, s);
			if (strlen(s) != nx_nix32_len(n) ||
			    nx_nix32_decode(s, strlen(s), out, n) != 0 || memcmp(in, out, n))
				good = 0;
			memset(in, 0xff, n);
			nx_nix32_encode(in, n, s);
			if (nx_nix32_decode(s, strlen(s), out, n) != 0 || memcmp(in, out, n))
				good = 0;
		}
		ok(good, "round trips for lengths 1..40");
	}

	/* bad inputs */
	is_int(nx_nix32_decode("zz", 2, out, 1), -EINVAL, "'zz' overflows one byte");
	is_int(nx_nix32_decode("7z", 2, out, 1), 0, "'7z' is 0xff");
	is_int(out[0], 0xff, "'7z' value");
	is_int(nx_nix32_decode("8z", 2, out, 1), -EINVAL, "'8z' overflows one byte");
	is_int(nx_nix32_decode("0e", 2, out, 1), -EINVAL, "'e' is not in the alphabet");
	is_int(nx_nix32_decode("0o", 2, out, 1), -EINVAL, "'o' is not in the alphabet");
	is_int(nx_nix32_decode("0u", 2, out, 1), -EINVAL, "'u' is not in the alphabet");
	is_int(nx_nix32_decode("0t", 2, out, 1), -EINVAL, "'t' is not in the alphabet");
	is_int(nx_nix32_decode("0Z", 2, out, 1), -EINVAL, "upper case is refused");
	is_int(nx_nix32_decode("0\0", 2, out, 1), -EINVAL, "NUL is refused");
	is_int(nx_nix32_decode("000", 3, out, 1), -EINVAL, "wrong length (long)");
	is_int(nx_nix32_decode("0", 1, out, 1), -EINVAL, "wrong length (short)");
	is_int(nx_nix32_decode("00bgd045z0d4icpbc2yyz4gx48ak44l", 31, out, 20), -EINVAL,
	       "31 chars for 20 bytes");
	/* 160 bits are exactly 32 digits: no spare bits, 'z' everywhere is fine */
	is_int(nx_nix32_decode("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", 32, out, 20), 0,
	       "32 'z' is 20 bytes of 0xff");
	/* 52 digits carry 260 bits: the first may only be '0' or '1' */
	is_int(nx_nix32_decode("1c5b8vw40dy178xlpddw65q9gf1h2186jcc3p4swinwggbllv8mk", 52, out,
			       32),
	       0, "first digit '1' sets bit 255");
	is_int(nx_nix32_decode("2c5b8vw40dy178xlpddw65q9gf1h2186jcc3p4swinwggbllv8mk", 52, out,
			       32),
	       -EINVAL, "first digit '2' sets bit 256");
	return done_testing();
}
