/*
 * tests/unit/common-sig.c: Nix keys, fingerprints and Ed25519 signatures
 * against the vectors of specs 7.3 and 11.3.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "tests/unit/tap.h"

#define SECRET "test-1:nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2DXWpgBgrEKt9VL/tPJZAc6DuFy89qmIyWvAhpo9wdRGg=="
#define PUBLIC "test-1:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
#define HELLO_FP "1;/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt;sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw;120;"
#define HELLO_SIG "test-1:dWmlAkbYsx/AvQj0VCI9L4NZdLG5hN92TlyEIlbU301t7zQ1AfZVavGn2EmIw8XVMSCAYiDwNd66a1K4a0OrDg=="

#define CURL_FP "1;/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin;sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0;196040;/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0,/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115,/nix/store/j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12,/nix/store/yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n"
#define CURL_KEY "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
#define CURL_SIG "cache.nixos.org-1:TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ=="

static int write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	if (!f)
		return -1;
	fputs(text, f);
	return fclose(f);
}

static void test_hello(void)
{
	char path[] = "/tmp/nixoci-sig-XXXXXX";
	struct nx_pathinfo pi;
	struct nx_seckey sk;
	struct nx_pubkey *pk = NULL;
	size_t npk = 0;
	char *fp = NULL, *sig = NULL;
	int fd = mkstemp(path);

	ok(fd >= 0, "temp key file");
	close(fd);
	write_file(path, SECRET "\n");
	is_int(nx_seckey_load(path, &sk), 0, "load the RFC 8032 test key");
	ok(strcmp(sk.name, "test-1") == 0, "secret key name");

	memset(&pi, 0, sizeof(pi));
	pi.store_path = (char *)"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt";
	is_int(nx_narhash_parse("sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
				pi.nar_hash), 0, "narhash parses");
	pi.nar_size = 120;
	is_int(nx_fingerprint(&pi, &fp), 0, "fingerprint");
	ok(fp && strcmp(fp, HELLO_FP) == 0, "fingerprint matches Nix's: %s", fp ? fp : "");
	is_int(nx_sig_sign(&sk, fp, strlen(fp), &sig), 0, "sign");
	ok(sig && strcmp(sig, HELLO_SIG) == 0, "signature is bit-exact: %s", sig ? sig : "");

	is_int(nx_pubkeys_parse(PUBLIC, &pk, &npk), 0, "parse public key");
	is_int(npk, 1, "one key");
	is_int(nx_sig_verify(pk, npk, HELLO_SIG, fp, strlen(fp)), 1, "hello signature verifies");
	fp[5] ^= 1;
	is_int(nx_sig_verify(pk, npk, HELLO_SIG, fp, strlen(fp)), 0, "flipped fingerprint fails");
	fp[5] ^= 1;

	/* a mismatched public half in the secret file is refused */
	{
		char bad[] = SECRET;

		bad[strlen(bad) - 4] = bad[strlen(bad) - 4] == 'A' ? 'B' : 'A';
		write_file(path, bad);
		ok(nx_seckey_load(path, &sk) < 0, "secret key with wrong public half refused");
		write_file(path, "test-1:AAAA");
		ok(nx_seckey_load(path, &sk) < 0, "short secret key refused");
		write_file(path, "nocolon");
		ok(nx_seckey_load(path, &sk) < 0, "secret key without name refused");
	}
	ok(nx_seckey_load("/nonexistent/key", &sk) == -ENOENT, "missing key file is -ENOENT");
	unlink(path);
	free(fp);
	free(sig);
	free(pk);
}

static void test_curl(void)
{
	static char *refs[] = {
		(char *)"yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n",
		(char *)"0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0",
		(char *)"j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12",
		(char *)"6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115",
	};
	struct nx_pathinfo pi;
	struct nx_pubkey *pk = NULL;
	size_t npk = 0;
	char *fp = NULL, sig[] = CURL_SIG;

	memset(&pi, 0, sizeof(pi));
	pi.store_path = (char *)"/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin";
	nx_narhash_parse("sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0",
			 pi.nar_hash);
	pi.nar_size = 196040;
	pi.refs = refs; /* deliberately unsorted: the fingerprint sorts */
	pi.nrefs = 4;
	is_int(nx_fingerprint(&pi, &fp), 0, "curl fingerprint");
	ok(fp && strcmp(fp, CURL_FP) == 0, "curl fingerprint matches");
	is_int(nx_pubkeys_parse("  other-1:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=,"
				CURL_KEY "\t", &pk, &npk), 0, "parse a key list");
	is_int(npk, 2, "two keys");
	is_int(nx_sig_verify(pk, npk, CURL_SIG, fp, strlen(fp)), 1,
	       "cache.nixos.org signature verifies");
	fp[strlen(fp) - 1] ^= 0x20;
	is_int(nx_sig_verify(pk, npk, CURL_SIG, fp, strlen(fp)), 0, "flipped fingerprint byte");
	fp[strlen(fp) - 1] ^= 0x20;
	sig[30] = sig[30] == 'A' ? 'B' : 'A';
	is_int(nx_sig_verify(pk, npk, sig, fp, strlen(fp)), 0, "flipped signature byte");
	is_int(nx_sig_verify(pk, 1, CURL_SIG, fp, strlen(fp)), 0, "unknown key name");
	is_int(nx_sig_verify(pk, npk, "cache.nixos.org-1", fp, strlen(fp)), 0, "no colon");
	is_int(nx_sig_verify(pk, npk, "cache.nixos.org-1:", fp, strlen(fp)), 0, "empty sig");
	is_int(nx_sig_verify(pk, npk, ":abcd", fp, strlen(fp)), 0, "empty name");
	is_int(nx_sig_verify(pk, npk, "cache.nixos.org-1:AAAA", fp, strlen(fp)), 0, "short sig");
	is_int(nx_sig_verify(pk, npk, "cache.nixos.org-1:!!!!", fp, strlen(fp)), 0,
	       "bad base64");
	is_int(nx_sig_verify(NULL, 0, CURL_SIG, fp, strlen(fp)), 0, "no keys");
	free(fp);
	free(pk);
}

static void test_pubkeys_bad(void)
{
	struct nx_pubkey *pk = NULL;
	size_t n = 99;

	is_int(nx_pubkeys_parse("", &pk, &n), 0, "empty key list");
	is_int(n, 0, "no keys");
	ok(nx_pubkeys_parse("name:AAAA", &pk, &n) == -EINVAL, "short public key refused");
	ok(nx_pubkeys_parse("justname", &pk, &n) == -EINVAL, "key without colon refused");
	ok(nx_pubkeys_parse(":11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", &pk, &n) == -EINVAL,
	   "key without name refused");
}

static void test_toc_fp(void)
{
	uint8_t nh[NX_SHA256_LEN], td[NX_SHA256_LEN];
	char *s = NULL;

	nx_narhash_parse("sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw", nh);
	memset(td, 0xab, sizeof(td));
	is_int(nx_toc_fingerprint("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt", nh, td,
				  &s), 0, "toc fingerprint");
	ok(s && strcmp(s, "nixoci-toc-1;/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt;"
			  "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw;sha256:"
			  "abababababababababababababababababababababababababababababababab") == 0,
	   "toc fingerprint text: %s", s ? s : "");
	free(s);
}

int main(void)
{
	nx_log_set_level(NX_LOG_ERR - 1); /* the rejection cases log by design */
	test_hello();
	test_curl();
	test_pubkeys_bad();
	test_toc_fp();
	return done_testing();
}
