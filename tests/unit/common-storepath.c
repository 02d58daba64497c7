/*
 * tests/unit/common-storepath.c: store path names and NarHash strings.
 */
#include <errno.h>
#include <string.h>

#include "common/common.h"
#include "tests/unit/tap.h"

#define H "i9pmrzmpshapij2kin22pff6fc2adavx"

static const char *good_bases[] = {
	H "-hello.txt",
	H "-hello-2.12.1",
	H "-a",
	H "-.a",
	H "-..a",
	H "-.hidden-file",
	H "-a+b-c.d_e?f=g",
	H "-ABC",
	H "-foo.drv",
	H "-a..",
	H "-...",
};

static const char *bad_bases[] = {
	H,
	H "-",
	H "_hello",
	"i9pmrzmpshapij2kin22pff6fc2adav-hello",    /* 31 chars */
	"i9pmrzmpshapij2kin22pff6fc2adavxx-hello",  /* 33 chars */
	"e9pmrzmpshapij2kin22pff6fc2adavx-hello",   /* e */
	"o9pmrzmpshapij2kin22pff6fc2adavx-hello",   /* o */
	"u9pmrzmpshapij2kin22pff6fc2adavx-hello",   /* u */
	"t9pmrzmpshapij2kin22pff6fc2adavx-hello",   /* t */
	"I9pmrzmpshapij2kin22pff6fc2adavx-hello",   /* upper case hash */
	H "-.",
	H "-..",
	H "-.-foo",
	H "-..-foo",
	H "-hello world",
	H "-hello/x",
	H "-caf\xc3\xa9",
	H "-a:b",
	H "-a@b",
	H "-a~b",
	"",
};

static void test_bases(void)
{
	char name[NX_BASE_MAX + 8];
	const char *base;

	for (size_t i = 0; i < sizeof(good_bases) / sizeof(good_bases[0]); i++)
		is_int(nx_storepath_check_base(good_bases[i], strlen(good_bases[i])), 0,
		       "good base '%s'", good_bases[i]);
	for (size_t i = 0; i < sizeof(bad_bases) / sizeof(bad_bases[0]); i++)
		is_int(nx_storepath_check_base(bad_bases[i], strlen(bad_bases[i])), -EINVAL,
		       "bad base '%s'", bad_bases[i]);

	/* name length limit: 211 ok, 212 not */
	memcpy(name, H "-", 33);
	memset(name + 33, 'a', NX_NAME_MAX);
	name[33 + NX_NAME_MAX] = '\0';
	is_int(nx_storepath_check_base(name, strlen(name)), 0, "name of 211 chars");
	name[33 + NX_NAME_MAX] = 'a';
	name[34 + NX_NAME_MAX] = '\0';
	is_int(nx_storepath_check_base(name, strlen(name)), -EINVAL, "name of 212 chars");

	/* @len is honoured: an embedded NUL is not a terminator */
	is_int(nx_storepath_check_base(H "-ab", 34), 0, "len cuts the name");
	is_int(nx_storepath_check_base(H "-a\0b", 36), -EINVAL, "NUL inside the name");

	is_int(nx_storepath_check("/nix/store/" H "-hello.txt", &base), 0, "full path");
	ok(base && strcmp(base, H "-hello.txt") == 0, "base points into the path");
	is_int(nx_storepath_check("/nix/store/" H "-hello.txt/", &base), -EINVAL,
	       "trailing slash");
	is_int(nx_storepath_check("/nix/store/" H "-hello.txt/bin", &base), -EINVAL,
	       "sub path");
	is_int(nx_storepath_check("/nix/store//" H "-hello.txt", &base), -EINVAL,
	       "double slash");
	is_int(nx_storepath_check("/nix/store" H "-hello.txt", &base), -EINVAL, "no slash");
	is_int(nx_storepath_check(H "-hello.txt", &base), -EINVAL, "base name only");
	is_int(nx_storepath_check("/gnu/store/" H "-hello.txt", &base), -EINVAL,
	       "other store");
	is_int(nx_storepath_check("/nix/store/", &base), -EINVAL, "store dir only");
	is_int(nx_storepath_check("/nix/store/" H "-hello.txt", NULL), 0, "base may be NULL");
}

static const char hello_hex[] = "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13";
static const char hello_nix32[] = "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw";

static void test_narhash(void)
{
	uint8_t want[NX_SHA256_LEN], got[NX_SHA256_LEN];
	char s[NX_NARHASH_STRLEN], b64[64], buf[128], hex[65];

	for (size_t i = 0; i < NX_SHA256_LEN; i++) {
		unsigned v;

		sscanf(hello_hex + 2 * i, "%2x", &v);
		want[i] = (uint8_t)v;
	}
	nx_narhash_format(want, s);
	ok(strcmp(s, "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw") == 0,
	   "format %s", s);
	is_int(strlen(s), NX_NARHASH_STRLEN - 1, "formatted length");

	snprintf(buf, sizeof(buf), "sha256:%s", hello_nix32);
	memset(got, 0, sizeof(got));
	is_int(nx_narhash_parse(buf, got), 0, "parse nix32");
	ok(memcmp(got, want, sizeof(got)) == 0, "nix32 bytes");

	snprintf(buf, sizeof(buf), "sha256:%s", hello_hex);
	memset(got, 0, sizeof(got));
	is_int(nx_narhash_parse(buf, got), 0, "parse hex");
	ok(memcmp(got, want, sizeof(got)) == 0, "hex bytes");
	nx_hex(got, sizeof(got), hex);
	ok(strcmp(hex, hello_hex) == 0, "hex <-> nix32 agree");

	nx_base64_encode(want, sizeof(want), b64);
	is_int(strlen(b64), 44, "base64 is 44 chars");
	snprintf(buf, sizeof(buf), "sha256:%s", b64);
	memset(got, 0, sizeof(got));
	is_int(nx_narhash_parse(buf, got), 0, "parse base64 %s", buf);
	ok(memcmp(got, want, sizeof(got)) == 0, "base64 bytes");

	snprintf(buf, sizeof(buf), "sha256-%s", b64);
	memset(got, 0, sizeof(got));
	is_int(nx_narhash_parse(buf, got), 0, "parse SRI %s", buf);
	ok(memcmp(got, want, sizeof(got)) == 0, "SRI bytes");

	/* bad forms */
	snprintf(buf, sizeof(buf), "sha256-%.43s", b64);
	is_int(nx_narhash_parse(buf, got), -EINVAL, "SRI unpadded");
	snprintf(buf, sizeof(buf), "sha256:%.51s", hello_nix32);
	is_int(nx_narhash_parse(buf, got), -EINVAL, "nix32 51 chars");
	snprintf(buf, sizeof(buf), "sha256:%se", hello_nix32 + 1);
	is_int(nx_narhash_parse(buf, got), -EINVAL, "nix32 bad char");
	snprintf(buf, sizeof(buf), "sha256:2%s", hello_nix32 + 1);
	is_int(nx_narhash_parse(buf, got), -EINVAL, "nix32 overflow");
	snprintf(buf, sizeof(buf), "sha256:%.63sg", hello_hex);
	is_int(nx_narhash_parse(buf, got), -EINVAL, "hex bad char");
	snprintf(buf, sizeof(buf), "sha512:%s", hello_nix32);
	is_int(nx_narhash_parse(buf, got), -EINVAL, "sha512 prefix");
	is_int(nx_narhash_parse(hello_nix32, got), -EINVAL, "no prefix");
	is_int(nx_narhash_parse("sha256:", got), -EINVAL, "empty hash");
	is_int(nx_narhash_parse("", got), -EINVAL, "empty string");
	snprintf(buf, sizeof(buf), "sha256:%s ", hello_nix32);
	is_int(nx_narhash_parse(buf, got), -EINVAL, "trailing space");
	snprintf(buf, sizeof(buf), "sha256:%s", "e30=");
	is_int(nx_narhash_parse(buf, got), -EINVAL, "short base64");

	/* a failed parse leaves the output alone */
	memcpy(got, want, sizeof(got));
	nx_narhash_parse("sha256:zzzz", got);
	ok(memcmp(got, want, sizeof(got)) == 0, "output untouched on error");
}

int main(void)
{
	test_bases();
	test_narhash();
	return done_testing();
}
