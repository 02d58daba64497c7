/*
 * common/sig.c: Nix-compatible Ed25519 keys and signatures (OpenSSL 3 EVP).
 *
 * Ed25519 here is PureEdDSA, which OpenSSL only offers through the one-shot
 * EVP_DigestSign/EVP_DigestVerify with a NULL digest. Keys, signatures and
 * the two fingerprints follow Nix (specs 7.3, 7.4) and docs/format.md 6.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/common.h"

#define ED_PUB 32
#define ED_SIG 64
#define SECKEY_FILE_MAX 4096

/* "name:base64" -> name and decoded bytes; exactly @want bytes. Quiet. */
static int split_key(const char *s, size_t len, char name[128], uint8_t *out, size_t want)
{
	const char *colon = memchr(s, ':', len);
	uint8_t buf[3 * (256 / 4 + 1)];
	size_t nlen, blen;
	ssize_t d;

	if (!colon)
		return -EINVAL;
	nlen = (size_t)(colon - s);
	blen = len - nlen - 1;
	if (nlen == 0 || nlen >= 128 || blen == 0 || blen > 256)
		return -EINVAL;
	d = nx_base64_decode(colon + 1, blen, buf, sizeof(buf));
	if (d < 0 || (size_t)d != want) {
		OPENSSL_cleanse(buf, sizeof(buf));
		return -EINVAL;
	}
	memcpy(name, s, nlen);
	name[nlen] = '\0';
	memcpy(out, buf, want);
	OPENSSL_cleanse(buf, sizeof(buf));
	return 0;
}

int nx_pubkeys_parse(const char *list, struct nx_pubkey **keys, size_t *n)
{
	struct nx_pubkey *v = NULL;
	size_t cnt = 0, cap = 0;
	const char *p = list;
	static const char seps[] = " \t\r\n,";

	*keys = NULL;
	*n = 0;
	for (;;) {
		size_t len;

		p += strspn(p, seps);
		if (!*p)
			break;
		len = strcspn(p, seps);
		if (cnt == cap) {
			size_t ncap = cap ? cap * 2 : 4;
			struct nx_pubkey *nv = realloc(v, ncap * sizeof(*nv));

			if (!nv) {
				free(v);
				return -ENOMEM;
			}
			v = nv;
			cap = ncap;
		}
		if (split_key(p, len, v[cnt].name, v[cnt].key, ED_PUB) < 0) {
			nx_log(NX_LOG_ERR, "public key '%.*s' is not name:base64 of 32 bytes",
			       (int)(len > 200 ? 200 : len), p);
			free(v);
			return -EINVAL;
		}
		cnt++;
		p += len;
	}
	*keys = v;
	*n = cnt;
	return 0;
}

int nx_seckey_load(const char *file, struct nx_seckey *out)
{
	char buf[SECKEY_FILE_MAX + 1];
	uint8_t raw[64], pub[ED_PUB];
	size_t len = 0, plen = sizeof(pub);
	EVP_PKEY *pk = NULL;
	int fd, r = -EINVAL;

	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		nx_log(NX_LOG_ERR, "secret key %s: %s", file, strerror(-r));
		return r;
	}
	while (len < sizeof(buf)) {
		ssize_t k = read(fd, buf + len, sizeof(buf) - len);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			r = -errno;
			nx_log(NX_LOG_ERR, "secret key %s: %s", file, strerror(-r));
			close(fd);
			goto out;
		}
		if (k == 0)
			break;
		len += (size_t)k;
	}
	close(fd);
	if (len > SECKEY_FILE_MAX) {
		nx_log(NX_LOG_ERR, "secret key %s: file is too large", file);
		r = -EINVAL;
		goto out;
	}
	while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ' ||
			   buf[len - 1] == '\t'))
		len--;
	if (split_key(buf, len, out->name, raw, sizeof(raw)) < 0) {
		nx_log(NX_LOG_ERR, "secret key %s: not name:base64 of 64 bytes (generate one with "
				   "nix-store --generate-binary-cache-key)", file);
		r = -EINVAL;
		goto out;
	}
	/* The file holds seed || public key; make sure they belong together. */
	pk = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, raw, 32);
	if (!pk || EVP_PKEY_get_raw_public_key(pk, pub, &plen) != 1 || plen != ED_PUB ||
	    memcmp(pub, raw + 32, ED_PUB) != 0) {
		nx_log(NX_LOG_ERR, "secret key %s: the public half does not match the seed", file);
		r = -EINVAL;
		goto out;
	}
	memcpy(out->seed, raw, 32);
	r = 0;
out:
	EVP_PKEY_free(pk);
	OPENSSL_cleanse(raw, sizeof(raw));
	OPENSSL_cleanse(buf, sizeof(buf));
	return r;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int nx_fingerprint(const struct nx_pathinfo *pi, char **out)
{
	char nh[NX_NARHASH_STRLEN], head[NX_NARHASH_STRLEN + 32];
	const char **refs = NULL;
	size_t len, pos, plen = strlen(NX_STORE_DIR "/");
	char *s;

	if (!pi->store_path || pi->nar_size == 0) {
		nx_log(NX_LOG_ERR, "fingerprint: store path or nar size missing");
		return -EINVAL;
	}
	nx_narhash_format(pi->nar_hash, nh);
	snprintf(head, sizeof(head), ";%s;%llu;", nh, (unsigned long long)pi->nar_size);
	len = 2 + strlen(pi->store_path) + strlen(head) + 1;
	/* at least one slot, so refs is never NULL where the loop reads it */
	refs = calloc(pi->nrefs ? pi->nrefs : 1, sizeof(*refs));
	if (!refs)
		return -ENOMEM;
	if (pi->nrefs) {
		memcpy(refs, pi->refs, pi->nrefs * sizeof(*refs));
		/* Base names sort like the full paths: same prefix. */
		qsort(refs, pi->nrefs, sizeof(*refs), cmp_str);
		for (size_t i = 0; i < pi->nrefs; i++)
			len += plen + strlen(refs[i]) + 1;
	}
	s = malloc(len);
	if (!s) {
		free(refs);
		return -ENOMEM;
	}
	pos = (size_t)snprintf(s, len, "1;%s%s", pi->store_path, head);
	for (size_t i = 0; i < pi->nrefs; i++)
		pos += (size_t)snprintf(s + pos, len - pos, "%s%s%s", i ? "," : "",
					NX_STORE_DIR "/", refs[i]);
	free(refs);
	*out = s;
	return 0;
}

int nx_toc_fingerprint(const char *store_path, const uint8_t nar_hash[NX_SHA256_LEN],
		       const uint8_t toc_digest[NX_SHA256_LEN], char **out)
{
	char nh[NX_NARHASH_STRLEN], td[NX_DIGEST_STRLEN];

	nx_narhash_format(nar_hash, nh);
	nx_digest_format(toc_digest, td);
	if (asprintf(out, "nixoci-toc-1;%s;%s;%s", store_path, nh, td) < 0)
		return -ENOMEM;
	return 0;
}

int nx_sig_verify(const struct nx_pubkey *keys, size_t nkeys, const char *sig, const char *msg,
		  size_t len)
{
	char name[128];
	uint8_t raw[ED_SIG];
	const struct nx_pubkey *k = NULL;
	EVP_PKEY *pk;
	EVP_MD_CTX *ctx;
	int ok;

	if (split_key(sig, strlen(sig), name, raw, ED_SIG) < 0)
		return 0;
	for (size_t i = 0; i < nkeys && !k; i++)
		if (strcmp(keys[i].name, name) == 0)
			k = &keys[i];
	if (!k)
		return 0;
	pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, k->key, ED_PUB);
	if (!pk)
		return 0; /* e.g. a key that is not a curve point */
	ctx = EVP_MD_CTX_new();
	if (!ctx) {
		EVP_PKEY_free(pk);
		return -ENOMEM;
	}
	ok = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pk) == 1 &&
	     EVP_DigestVerify(ctx, raw, ED_SIG, (const unsigned char *)msg, len) == 1;
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(pk);
	return ok;
}

int nx_sig_sign(const struct nx_seckey *key, const char *msg, size_t len, char **sig)
{
	uint8_t raw[ED_SIG];
	char b64[4 * ((ED_SIG + 2) / 3) + 1];
	size_t slen = sizeof(raw);
	EVP_PKEY *pk;
	EVP_MD_CTX *ctx = NULL;
	int r = -EINVAL;

	pk = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, key->seed, 32);
	if (!pk) {
		nx_log(NX_LOG_ERR, "sign: cannot load secret key '%s'", key->name);
		return -EINVAL;
	}
	ctx = EVP_MD_CTX_new();
	if (!ctx) {
		r = -ENOMEM;
		goto out;
	}
	if (EVP_DigestSignInit(ctx, NULL, NULL, NULL, pk) != 1 ||
	    EVP_DigestSign(ctx, raw, &slen, (const unsigned char *)msg, len) != 1 ||
	    slen != ED_SIG) {
		nx_log(NX_LOG_ERR, "sign: ed25519 signing with key '%s' failed", key->name);
		goto out;
	}
	nx_base64_encode(raw, ED_SIG, b64);
	if (asprintf(sig, "%s:%s", key->name, b64) < 0) {
		r = -ENOMEM;
		goto out;
	}
	r = 0;
out:
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(pk);
	return r;
}
