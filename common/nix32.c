/*
 * common/nix32.c: Nix's base-32 ("nixbase32"), reference/specs.md §6.1.
 *
 * The string is the little-endian number formed by the bytes, printed most
 * significant digit first: character k holds the 5 bits at bit offset
 * (n-1-k)*5, where bit b is bit b%8 of byte b/8. Not RFC 4648.
 */
#include <errno.h>
#include <string.h>

#include "common/common.h"

static const char nix32_chars[33] = "0123456789abcdfghijklmnpqrsvwxyz";

size_t nx_nix32_len(size_t n)
{
	return n ? (n * 8 - 1) / 5 + 1 : 0;
}

void nx_nix32_encode(const uint8_t *in, size_t len, char *out)
{
	size_t n = nx_nix32_len(len);

	for (size_t k = 0; k < n; k++) {
		size_t b = (n - 1 - k) * 5, i = b / 8, j = b % 8;
		unsigned c = (unsigned)in[i] >> j;

		if (i + 1 < len)
			c |= (unsigned)in[i + 1] << (8 - j);
		out[k] = nix32_chars[c & 0x1f];
	}
	out[n] = '\0';
}

static int nix32_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	for (int i = 10; i < 32; i++)
		if (nix32_chars[i] == c)
			return i;
	return -1;
}

int nx_nix32_decode(const char *s, size_t slen, uint8_t *out, size_t outlen)
{
	if (slen != nx_nix32_len(outlen))
		return -EINVAL;
	memset(out, 0, outlen);
	for (size_t k = 0; k < slen; k++) {
		int v = nix32_value(s[slen - 1 - k]);
		size_t b = k * 5, i = b / 8, j = b % 8;
		unsigned d, carry;

		if (v < 0)
			return -EINVAL;
		d = (unsigned)v;
		out[i] |= (uint8_t)(d << j);
		carry = d >> (8 - j);
		if (carry) {
			/* bits past the last byte: not the encoding of any value */
			if (i + 1 >= outlen)
				return -EINVAL;
			out[i + 1] |= (uint8_t)carry;
		}
	}
	return 0;
}
