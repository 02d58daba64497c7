/*
 * common/digest.c: SHA-256 (OpenSSL EVP), hex, OCI digest strings, base64.
 */
#include <errno.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/common.h"

int nx_sha256_init(struct nx_sha256 *h)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();

	h->md = NULL;
	if (!ctx) {
		nx_log(NX_LOG_ERR, "sha256: out of memory");
		return -ENOMEM;
	}
	if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(ctx);
		nx_log(NX_LOG_ERR, "sha256: cannot initialise the openssl digest");
		return -EIO;
	}
	h->md = ctx;
	return 0;
}

void nx_sha256_update(struct nx_sha256 *h, const void *buf, size_t len)
{
	if (len)
		EVP_DigestUpdate(h->md, buf, len);
}

void nx_sha256_final(struct nx_sha256 *h, uint8_t out[NX_SHA256_LEN])
{
	unsigned int n = 0;

	EVP_DigestFinal_ex(h->md, out, &n);
	EVP_MD_CTX_free(h->md);
	h->md = NULL;
}

void nx_sha256_release(struct nx_sha256 *h)
{
	EVP_MD_CTX_free(h->md);
	h->md = NULL;
}

void nx_sha256(const void *buf, size_t len, uint8_t out[NX_SHA256_LEN])
{
	unsigned int n = 0;

	EVP_Digest(buf, len, out, &n, EVP_sha256(), NULL);
}

void nx_hex(const uint8_t *buf, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[buf[i] >> 4];
		out[2 * i + 1] = digits[buf[i] & 0xf];
	}
	out[2 * len] = '\0';
}

static int lower_hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int nx_digest_parse(const char *s, uint8_t out[NX_SHA256_LEN])
{
	static const char prefix[] = "sha256:";
	const size_t plen = sizeof(prefix) - 1;

	if (!s || strncmp(s, prefix, plen) != 0 || strlen(s) != plen + 2 * NX_SHA256_LEN)
		return -EINVAL;
	s += plen;
	/* OCI allows only lower-case hex for sha256 */
	for (size_t i = 0; i < NX_SHA256_LEN; i++) {
		int hi = lower_hex_value(s[2 * i]), lo = lower_hex_value(s[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

void nx_digest_format(const uint8_t d[NX_SHA256_LEN], char out[NX_DIGEST_STRLEN])
{
	memcpy(out, "sha256:", 7);
	nx_hex(d, NX_SHA256_LEN, out + 7);
}

void nx_base64_encode(const uint8_t *in, size_t len, char *out)
{
	/* EVP_EncodeBlock takes an int length: go in chunks of whole triples */
	const size_t chunk = 3 * 16384;

	while (len > chunk) {
		out += EVP_EncodeBlock((unsigned char *)out, in, (int)chunk);
		in += chunk;
		len -= chunk;
	}
	out += EVP_EncodeBlock((unsigned char *)out, in, (int)len);
	*out = '\0';
}

static int is_b64_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '+' || c == '/';
}

ssize_t nx_base64_decode(const char *in, size_t len, uint8_t *out, size_t cap)
{
	/* decoded through a bounce buffer so @cap is honoured to the byte */
	unsigned char tmp[3 * 256];
	char quad[4 * 256];
	size_t data = len, pad, total, done = 0, pos = 0;

	/*
	 * EVP_DecodeBlock decodes '=' anywhere as a zero sextet and trims
	 * whitespace, so the strict shape is checked here: alphabet characters,
	 * then at most two '=' (or none, unpadded), nothing after them.
	 */
	while (data > 0 && in[data - 1] == '=' && len - data < 2)
		data--;
	pad = len - data;
	for (size_t i = 0; i < data; i++)
		if (!is_b64_char(in[i]))
			return -EINVAL;
	if (pad && len % 4 != 0)
		return -EINVAL;
	if (data % 4 == 1)
		return -EINVAL;
	total = data / 4 * 3 + (data % 4 ? data % 4 - 1 : 0);
	if (total > cap)
		return -EINVAL;

	while (pos < data) {
		size_t n = data - pos, got, want, q;
		int r;

		if (n > sizeof(quad))
			n = sizeof(quad);
		memcpy(quad, in + pos, n);
		/* re-pad a short last group, as EVP_DecodeBlock wants whole quads */
		q = n;
		while (q % 4)
			quad[q++] = '=';
		r = EVP_DecodeBlock(tmp, (const unsigned char *)quad, (int)q);
		if (r < 0)
			return -EINVAL;
		got = (size_t)r;
		/* EVP_DecodeBlock counts each '=' as a decoded zero byte */
		want = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
		if (got < want)
			return -EINVAL;
		memcpy(out + done, tmp, want);
		done += want;
		pos += n;
	}
	return (ssize_t)done;
}
