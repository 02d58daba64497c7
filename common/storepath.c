/*
 * common/storepath.c: store path names and NarHash strings
 * (reference/specs.md §6.2, docs/format.md).
 */
#include <errno.h>
#include <string.h>

#include "common/common.h"

static int is_nix32_char(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z' && c != 'e' && c != 'o' &&
					  c != 'u' && c != 't');
}

static int is_name_char(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       c == '+' || c == '-' || c == '.' || c == '_' || c == '?' || c == '=';
}

int nx_storepath_check_base(const char *base, size_t len)
{
	const char *name = base + NX_HASH_LEN + 1;
	size_t nlen;

	if (!base || len < NX_HASH_LEN + 2 || len > NX_BASE_MAX)
		return -EINVAL;
	for (size_t i = 0; i < NX_HASH_LEN; i++)
		if (!is_nix32_char(base[i]))
			return -EINVAL;
	if (base[NX_HASH_LEN] != '-')
		return -EINVAL;
	nlen = len - NX_HASH_LEN - 1;
	for (size_t i = 0; i < nlen; i++)
		if (!is_name_char(name[i]))
			return -EINVAL;
	/* Nix ≥ 2.21: not "." or "..", and no ".-" / "..-" prefix */
	if (name[0] == '.') {
		size_t dots = (nlen > 1 && name[1] == '.') ? 2 : 1;

		if (nlen == dots || name[dots] == '-')
			return -EINVAL;
	}
	return 0;
}

int nx_storepath_check(const char *path, const char **base)
{
	static const char dir[] = NX_STORE_DIR "/";
	const size_t dlen = sizeof(dir) - 1;
	const char *b;

	if (!path || strncmp(path, dir, dlen) != 0)
		return -EINVAL;
	b = path + dlen;
	if (nx_storepath_check_base(b, strnlen(b, NX_BASE_MAX + 1)) < 0)
		return -EINVAL;
	if (base)
		*base = b;
	return 0;
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int parse_hex32(const char *s, uint8_t out[NX_SHA256_LEN])
{
	for (size_t i = 0; i < NX_SHA256_LEN; i++) {
		int hi = hex_value(s[2 * i]), lo = hex_value(s[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

static int parse_b64_32(const char *s, size_t len, uint8_t out[NX_SHA256_LEN])
{
	uint8_t tmp[3 * (44 / 4 + 1)];

	/* Nix wants the padded 44-character form for sha256 */
	if (len != 44 || nx_base64_decode(s, len, tmp, sizeof(tmp)) != NX_SHA256_LEN)
		return -EINVAL;
	memcpy(out, tmp, NX_SHA256_LEN);
	return 0;
}

int nx_narhash_parse(const char *s, uint8_t out[NX_SHA256_LEN])
{
	uint8_t h[NX_SHA256_LEN];
	size_t len;
	int r;

	if (!s)
		return -EINVAL;
	if (strncmp(s, "sha256-", 7) == 0) {
		s += 7;
		r = parse_b64_32(s, strlen(s), h);
	} else if (strncmp(s, "sha256:", 7) == 0) {
		s += 7;
		len = strlen(s);
		/* Nix tells the encodings apart by length */
		if (len == 2 * NX_SHA256_LEN)
			r = parse_hex32(s, h);
		else if (len == nx_nix32_len(NX_SHA256_LEN))
			r = nx_nix32_decode(s, len, h, sizeof(h));
		else
			r = parse_b64_32(s, len, h);
	} else {
		r = -EINVAL;
	}
	if (r < 0)
		return -EINVAL;
	memcpy(out, h, NX_SHA256_LEN);
	return 0;
}

void nx_narhash_format(const uint8_t h[NX_SHA256_LEN], char out[NX_NARHASH_STRLEN])
{
	memcpy(out, "sha256:", 7);
	nx_nix32_encode(h, NX_SHA256_LEN, out + 7);
}
