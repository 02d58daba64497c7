/*
 * tests/unit/common-profile.c: startup profiles (format.md §5.2): the
 * profile text, the artifact manifest and the referrers index.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tests/unit/tap.h"

#define H "i9pmrzmpshapij2kin22pff6fc2adavx"
#define D "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static const struct {
	const char *text;
	int rc;
	size_t n;
} cases[] = {
	{ "nixoci-profile 1\n", 0, 0 },
	{ "nixoci-profile 1\n" H "-python3 " D "\n", 0, 1 },
	{ "nixoci-profile 1\n" H "-python3 " D "\n" H "-b " D "\n", 0, 2 },
	{ "", -EINVAL, 0 },
	{ "nixoci-profile 2\n", -EINVAL, 0 },
	{ "nixoci-profile 1", -EINVAL, 0 },
	{ "nixoci-profile 1\n" H "-python3 " D, -EINVAL, 0 },          /* no newline */
	{ "nixoci-profile 1\n" H "-python3  " D "\n", -EINVAL, 0 },    /* two spaces */
	{ "nixoci-profile 1\n" H " " D "\n", -EINVAL, 0 },             /* no name */
	{ "nixoci-profile 1\n" "x/y-python3 " D "\n", -EINVAL, 0 },    /* bad base */
	{ "nixoci-profile 1\n" H "-python3 " D "0\n", -EINVAL, 0 },    /* long digest */
	{ "nixoci-profile 1\n" H "-python3 sha256:XYZ\n", -EINVAL, 0 },
	{ "nixoci-profile 1\n\n", -EINVAL, 0 },
	{ "nixoci-profile 1\n" H "-a\0b " D "\n", -EINVAL, 0 },
};

int main(void)
{
	struct nx_profile *pr;
	struct nx_desc blob = { .size = 123 }, subj = { .size = 456 }, b2, s2, pick, hint;
	char *json, *idx, *idx2, line[400];
	size_t len, ilen, ilen2;
	int rc;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t l = strlen(cases[i].text);

		if (i == sizeof(cases) / sizeof(cases[0]) - 1)
			l = sizeof("nixoci-profile 1\n" H "-a\0b " D "\n") - 1;
		rc = nx_profile_parse(cases[i].text, l, &pr);
		is_int(rc, cases[i].rc, "parse case %zu", i);
		if (rc == 0) {
			is_int(pr->n, cases[i].n, "case %zu: entries", i);
			nx_profile_free(pr);
		}
	}
	/* what the recorder writes, the parser reads */
	nx_digest_parse(D, blob.digest);
	rc = nx_profile_line(H "-python3", blob.digest, line, sizeof(line));
	ok(rc > 0 && strcmp(line, H "-python3 " D "\n") == 0, "line format");
	ok(nx_profile_line(H "-python3", blob.digest, line, 20) == -ENAMETOOLONG, "line cap");

	/* the manifest: built, parsed back */
	memset(subj.digest, 0xab, sizeof(subj.digest));
	ok(nx_profile_manifest_build(&blob, &subj, "w", &json, &len) == 0, "manifest build");
	ok(strstr(json, "\"subject\"") && strstr(json, NX_AT_PROFILE) &&
		   strstr(json, "\"dev.nixoci.profile.name\":\"w\"") &&
		   strstr(json, "\"" NX_ANN_PROFILE_BLOB "\":\"" D "\"") &&
		   strstr(json, "\"" NX_ANN_PROFILE_BLOB_SIZE "\":\"123\""),
	   "manifest has subject, artifactType, name, its layer announced");
	ok(nx_profile_manifest_parse(json, len, &b2, &s2) == 0 &&
		   memcmp(b2.digest, blob.digest, NX_SHA256_LEN) == 0 && b2.size == 123 &&
		   memcmp(s2.digest, subj.digest, NX_SHA256_LEN) == 0,
	   "manifest parses back");
	ok(nx_profile_manifest_parse("{}", 2, &b2, &s2) == -EINVAL, "an empty object is refused");
	ok(nx_profile_manifest_parse("[", 1, &b2, &s2) == -EINVAL, "garbage is refused");

	/* the referrers index: created, extended, same name replaced */
	ok(nx_referrers_add(NULL, 0, &blob, "a", NULL, &idx, &ilen) == 0, "new referrers index");
	ok(nx_referrers_pick(idx, ilen, "a", &pick, &hint) == 0 && pick.size == 123 && hint.size == 0,
	   "pick by name; no layer announced");
	ok(nx_referrers_pick(idx, ilen, "b", &pick, NULL) == -ENOENT, "no such name");
	subj.size = 7;
	ok(nx_referrers_add(idx, ilen, &subj, "b", &blob, &idx2, &ilen2) == 0, "second profile");
	ok(nx_referrers_pick(idx2, ilen2, NULL, &pick, &hint) == 0 && pick.size == 7,
	   "auto picks the last listed");
	ok(hint.size == 123 && memcmp(hint.digest, blob.digest, NX_SHA256_LEN) == 0,
	   "the layer its annotations announce");
	free(idx);
	ok(nx_referrers_add(idx2, ilen2, &subj, "a", NULL, &idx, &ilen) == 0, "replace a");
	ok(nx_referrers_pick(idx, ilen, "a", &pick, NULL) == 0 && pick.size == 7, "a replaced");
	{
		const char *p = idx;
		int n = 0;

		while ((p = strstr(p, "\"dev.nixoci.profile.name\"")))
			n++, p++;
		is_int(n, 2, "two profiles listed after the replacement");
	}
	ok(nx_referrers_pick("{\"manifests\":3}", 15, NULL, &pick, NULL) == -EINVAL, "bad index");
	{
		/* a malformed announcement is no hint, the pick still stands */
		static const char bad[] =
			"{\"manifests\":[{\"mediaType\":\"" NX_MT_MANIFEST "\",\"digest\":\"" D
			"\",\"size\":5,\"artifactType\":\"" NX_AT_PROFILE "\",\"annotations\":"
			"{\"" NX_ANN_PROFILE_BLOB "\":\"" D "\",\"" NX_ANN_PROFILE_BLOB_SIZE
			"\":\"12x\"}}]}";

		hint.size = 1;
		ok(nx_referrers_pick(bad, sizeof(bad) - 1, NULL, &pick, &hint) == 0 &&
			   pick.size == 5 && hint.size == 0,
		   "a malformed layer size announces nothing");
	}
	free(idx2);
	ok(nx_referrers_add("{}", 2, &subj, "a", NULL, &idx2, &ilen2) == -EINVAL,
	   "an index without manifests is refused");
	free(idx);
	free(json);
	return done_testing();
}
