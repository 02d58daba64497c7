/*
 * tests/unit/common-manifest.c: store-path manifest and closure index JSON
 * (docs/format.md sections 2 and 5): round trips, determinism, rejection.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tests/unit/tap.h"

#define SP "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin"
#define NH "sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0"
#define R1 "0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0"
#define R2 "6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115"
#define SIG "cache.nixos.org-1:TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ=="
#define D64 "1111111111111111111111111111111111111111111111111111111111111111"

static char *xstrdup(const char *s)
{
	return strdup(s);
}

static void make_manifest(struct nx_manifest *m)
{
	memset(m, 0, sizeof(*m));
	m->info.store_path = xstrdup(SP);
	nx_narhash_parse(NH, m->info.nar_hash);
	m->info.nar_size = 196040;
	m->info.nrefs = 2;
	m->info.refs = calloc(2, sizeof(char *));
	m->info.refs[0] = xstrdup(R2); /* unsorted on purpose */
	m->info.refs[1] = xstrdup(R1);
	m->info.deriver = xstrdup("z0aq3kdq5b3y4kk1fc9ccvlhfh1j2hkn-curl-7.82.0.drv");
	m->info.nsigs = 1;
	m->info.sigs = calloc(1, sizeof(char *));
	m->info.sigs[0] = xstrdup(SIG);
	m->info.ca = NULL;
	memset(m->nar.digest, 0x11, 32);
	m->nar.size = 81234;
	memset(m->toc.digest, 0x22, 32);
	m->toc.size = 1234;
	m->ntoc_sigs = 2;
	m->toc_sigs = calloc(2, sizeof(char *));
	m->toc_sigs[0] = xstrdup("k1:AAAA");
	m->toc_sigs[1] = xstrdup("k2:BBBB");
	m->zstd_params = xstrdup(nx_packer_params());
}

static const char *golden =
	"{\"annotations\":{\"dev.nixoci.deriver\":\"z0aq3kdq5b3y4kk1fc9ccvlhfh1j2hkn-curl-7.82.0.drv\","
	"\"dev.nixoci.format\":\"1\","
	"\"dev.nixoci.nar-hash\":\"" NH "\","
	"\"dev.nixoci.nar-size\":\"196040\","
	"\"dev.nixoci.references\":\"" R1 " " R2 "\","
	"\"dev.nixoci.sigs\":\"" SIG "\","
	"\"dev.nixoci.store-path\":\"" SP "\","
	"\"dev.nixoci.toc-sigs\":\"k1:AAAA k2:BBBB\","
	"\"dev.nixoci.zstd\":\"zstd=1.5.4;level=3;frame-max=262144;checksum=1;pledged=1;workers=0\"},"
	"\"artifactType\":\"application/vnd.nixoci.store-path.v1\","
	"\"config\":{\"digest\":\"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\","
	"\"mediaType\":\"application/vnd.oci.empty.v1+json\",\"size\":2},"
	"\"layers\":[{\"digest\":\"sha256:" D64 "\","
	"\"mediaType\":\"application/vnd.nixoci.nar.v1.zstd-seekable\",\"size\":81234},"
	"{\"digest\":\"sha256:2222222222222222222222222222222222222222222222222222222222222222\","
	"\"mediaType\":\"application/vnd.nixoci.toc.v1+zstd\",\"size\":1234}],"
	"\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"schemaVersion\":2}";

static int lists_equal(char **a, size_t na, char **b, size_t nb)
{
	if (na != nb)
		return 0;
	for (size_t i = 0; i < na; i++)
		if (strcmp(a[i], b[i]) != 0)
			return 0;
	return 1;
}

static void test_manifest_roundtrip(void)
{
	struct nx_manifest m, p, q;
	char *j1 = NULL, *j2 = NULL, *j3 = NULL;
	size_t l1 = 0, l2 = 0, l3 = 0;

	make_manifest(&m);
	is_int(nx_manifest_build(&m, &j1, &l1), 0, "build");
	is_int(nx_manifest_build(&m, &j2, &l2), 0, "build again");
	ok(j1 && j2 && l1 == l2 && memcmp(j1, j2, l1) == 0, "deterministic bytes");
	if (strstr(nx_packer_params(), "zstd=1.5.4;"))
		ok(j1 && strcmp(j1, golden) == 0, "matches the golden manifest");
	is_int(nx_manifest_parse(j1, l1, &p), 0, "parse what we built");
	ok(p.info.store_path && strcmp(p.info.store_path, SP) == 0, "store path");
	ok(memcmp(p.info.nar_hash, m.info.nar_hash, 32) == 0, "nar hash");
	is_int(p.info.nar_size, 196040, "nar size");
	ok(p.info.nrefs == 2 && strcmp(p.info.refs[0], R1) == 0 && strcmp(p.info.refs[1], R2) == 0,
	   "refs come back sorted");
	ok(p.info.deriver && strcmp(p.info.deriver, m.info.deriver) == 0, "deriver");
	ok(lists_equal(p.info.sigs, p.info.nsigs, m.info.sigs, m.info.nsigs), "sigs");
	ok(p.info.ca == NULL, "no ca");
	ok(lists_equal(p.toc_sigs, p.ntoc_sigs, m.toc_sigs, m.ntoc_sigs), "toc sigs");
	ok(strcmp(p.zstd_params, m.zstd_params) == 0, "zstd params");
	ok(memcmp(p.nar.digest, m.nar.digest, 32) == 0 && p.nar.size == 81234, "nar layer");
	ok(memcmp(p.toc.digest, m.toc.digest, 32) == 0 && p.toc.size == 1234, "toc layer");
	is_int(nx_manifest_build(&p, &j3, &l3), 0, "rebuild from parsed");
	ok(j3 && l3 == l1 && memcmp(j3, j1, l1) == 0, "build(parse(x)) == x");
	nx_manifest_release(&p);
	ok(p.info.store_path == NULL && p.toc_sigs == NULL, "release clears the struct");
	free(j2);
	free(j3);

	/* minimal: no refs, no optional fields, with ca */
	nx_manifest_release(&m);
	memset(&m, 0, sizeof(m));
	m.info.store_path = xstrdup("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt");
	m.info.nar_size = 120;
	m.info.ca = xstrdup("fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw");
	m.nar.size = 1;
	m.toc.size = 1;
	m.zstd_params = xstrdup("x");
	is_int(nx_manifest_build(&m, &j2, &l2), 0, "build minimal");
	ok(j2 && strstr(j2, "\"dev.nixoci.references\":\"\""), "empty references present");
	ok(j2 && !strstr(j2, "dev.nixoci.sigs") && !strstr(j2, "deriver"), "optional keys absent");
	is_int(nx_manifest_parse(j2, l2, &q), 0, "parse minimal");
	ok(q.info.nrefs == 0 && q.info.nsigs == 0 && q.ntoc_sigs == 0 && !q.info.deriver &&
	   q.info.ca && strcmp(q.info.ca, m.info.ca) == 0, "minimal fields");
	nx_manifest_release(&q);
	free(j2);
	nx_manifest_release(&m);
	memset(&m, 0, sizeof(m));
	ok(nx_manifest_build(&m, &j2, &l2) == -EINVAL, "build refuses an empty struct");
	make_manifest(&m);
	free(m.info.refs[1]);
	m.info.refs[1] = xstrdup("glibc");
	ok(nx_manifest_build(&m, &j2, &l2) == -EINVAL, "build refuses an invalid reference");
	nx_manifest_release(&m);
	make_manifest(&m);
	free(m.toc_sigs[1]);
	m.toc_sigs[1] = xstrdup("nocolon");
	ok(nx_manifest_build(&m, &j2, &l2) == -EINVAL, "build refuses a malformed toc sig");
	nx_manifest_release(&m);
	make_manifest(&m);
	m.nar.size = 1ull << 53;
	ok(nx_manifest_build(&m, &j2, &l2) == -EINVAL, "build refuses a size of 2^53");
	nx_manifest_release(&m);
	free(j1);
}

/* Returns a copy of golden with the first @from replaced by @to. */
static char *patch(const char *from, const char *to)
{
	const char *at = strstr(golden, from);
	size_t n = strlen(golden) - strlen(from) + strlen(to) + 1;
	char *s;

	if (!at)
		return NULL;
	s = malloc(n);
	snprintf(s, n, "%.*s%s%s", (int)(at - golden), golden, to, at + strlen(from));
	return s;
}

static void test_manifest_rejects(void)
{
	static const struct {
		const char *name, *from, *to;
	} tab[] = {
		{ "wrong mediaType", "image.manifest.v1+json\",\"schemaVersion",
		  "image.index.v1+json\",\"schemaVersion" },
		{ "wrong artifactType", "nixoci.store-path.v1", "nixoci.other.v1" },
		{ "schemaVersion 1", "\"schemaVersion\":2", "\"schemaVersion\":1" },
		{ "schemaVersion string", "\"schemaVersion\":2", "\"schemaVersion\":\"2\"" },
		{ "format 2", "\"dev.nixoci.format\":\"1\"", "\"dev.nixoci.format\":\"2\"" },
		{ "format missing", "\"dev.nixoci.format\":\"1\"", "\"dev.nixoci.formatx\":\"1\"" },
		{ "store-path missing", "\"dev.nixoci.store-path\"", "\"dev.nixoci.store-pat\"" },
		{ "store-path invalid", "/nix/store/syd87l2", "/nix/stor/syd87l2" },
		{ "nar-hash missing", "\"dev.nixoci.nar-hash\"", "\"dev.nixoci.narhash\"" },
		{ "nar-hash hex form", NH,
		  "sha256:1111111111111111111111111111111111111111111111111111111111111111" },
		{ "nar-hash short", "sha256:1b4sb93", "sha256:1b4sb9" },
		{ "nar-size missing", "\"dev.nixoci.nar-size\"", "\"dev.nixoci.nar_size\"" },
		{ "nar-size 0", "\"196040\"", "\"0\"" },
		{ "nar-size negative", "\"196040\"", "\"-196040\"" },
		{ "nar-size leading zero", "\"196040\"", "\"0196040\"" },
		{ "nar-size overflow", "\"196040\"", "\"18446744073709551616\"" },
		{ "nar-size number", "\"196040\"", "196040" },
		{ "references missing", "\"dev.nixoci.references\"", "\"dev.nixoci.refs\"" },
		{ "references unsorted", R1 " " R2, R2 " " R1 },
		{ "references duplicate", R1 " " R2, R1 " " R1 },
		{ "references double space", R1 " " R2, R1 "  " R2 },
		{ "reference invalid", R1 " " R2, R1 " glibc" },
		{ "deriver invalid", "z0aq3kdq5b3y4kk1fc9ccvlhfh1j2hkn-curl", "curl" },
		{ "sig without colon", "k1:AAAA", "k1AAAA" },
		{ "zstd missing", "\"dev.nixoci.zstd\"", "\"dev.nixoci.zst\"" },
		{ "annotations missing", "\"annotations\"", "\"annotationz\"" },
		{ "annotation not a string", "\"dev.nixoci.format\":\"1\"", "\"dev.nixoci.format\":1" },
		{ "config wrong media type", "vnd.oci.empty.v1+json", "vnd.oci.image.config.v1+json" },
		{ "config wrong size", "\"size\":2}", "\"size\":3}" },
		{ "config wrong digest", "sha256:44136fa", "sha256:54136fa" },
		{ "bad layer digest", "sha256:" D64, "sha256:" D64 "1" },
		{ "upper-case layer digest", "sha256:1111111111111111111111111111111111111111111111111111111111111111",
		  "sha256:111111111111111111111111111111111111111111111111111111111111111A" },
		{ "md5 layer digest", "sha256:" D64, "md5:" D64 },
		{ "layer size 0", "\"size\":81234", "\"size\":0" },
		{ "layer size negative", "\"size\":81234", "\"size\":-5" },
		{ "layer size 2^53", "\"size\":81234", "\"size\":9007199254740992" },
		{ "layer size float", "\"size\":81234", "\"size\":81234.0" },
		{ "layers swapped", "vnd.nixoci.nar.v1.zstd-seekable", "vnd.nixoci.toc.v1+zstd" },
		{ "one layer", ",{\"digest\":\"sha256:2222222222222222222222222222222222222222222222222222222222222222\","
			       "\"mediaType\":\"application/vnd.nixoci.toc.v1+zstd\",\"size\":1234}", "" },
		{ "duplicate key", "\"schemaVersion\":2", "\"schemaVersion\":2,\"schemaVersion\":2" },
		{ "trailing garbage", "\"schemaVersion\":2}", "\"schemaVersion\":2}x" },
		{ "not an object", "{\"annotations\"", "[{\"annotations\"" },
	};
	struct nx_manifest m;
	char *big;

	for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++) {
		char *s = patch(tab[i].from, tab[i].to);

		if (!s) {
			ok(0, "reject %s: pattern not found", tab[i].name);
			continue;
		}
		ok(nx_manifest_parse(s, strlen(s), &m) < 0 && m.info.store_path == NULL,
		   "reject %s", tab[i].name);
		free(s);
	}
	ok(nx_manifest_parse("not json", 8, &m) == -EINVAL, "reject not json");
	ok(nx_manifest_parse("", 0, &m) == -EINVAL, "reject empty");
	ok(nx_manifest_parse(golden, strlen(golden) - 1, &m) == -EINVAL, "reject truncated");
	big = malloc(NX_MANIFEST_MAX + 2);
	memset(big, ' ', NX_MANIFEST_MAX + 1);
	memcpy(big, golden, strlen(golden));
	ok(nx_manifest_parse(big, NX_MANIFEST_MAX + 1, &m) == -E2BIG, "reject over 4 MiB");
	free(big);
	/* unknown keys are fine (OCI) */
	{
		char *s = patch("\"dev.nixoci.format\"", "\"org.example.x\":\"y\",\"dev.nixoci.format\"");

		is_int(nx_manifest_parse(s, strlen(s), &m), 0, "unknown annotation is ignored");
		nx_manifest_release(&m);
		free(s);
	}
}

#define P1 "/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0"
#define P2 "/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115"

static void test_index(void)
{
	struct nx_index ix, p;
	char *j = NULL, *j2 = NULL;
	size_t l = 0, l2 = 0;
	char *roots[] = { (char *)P1 };

	memset(&ix, 0, sizeof(ix));
	ix.nentries = 2;
	ix.entries = calloc(2, sizeof(*ix.entries));
	ix.entries[0].store_path = (char *)P2; /* unsorted: build sorts */
	memset(ix.entries[0].desc.digest, 0xaa, 32);
	ix.entries[0].desc.size = 555;
	ix.entries[1].store_path = (char *)P1;
	memset(ix.entries[1].desc.digest, 0xbb, 32);
	ix.entries[1].desc.size = 666;
	ix.roots = roots;
	ix.nroots = 1;
	is_int(nx_index_build(&ix, &j, &l), 0, "index build");
	is_int(nx_index_build(&ix, &j2, &l2), 0, "index build again");
	ok(l == l2 && memcmp(j, j2, l) == 0, "index is deterministic");
	free(j2);
	ok(strstr(j, "\"artifactType\":\"application/vnd.nixoci.closure.v1\"") != NULL,
	   "index has the closure artifactType");
	ok(strstr(j, P1) < strstr(j, P2), "manifests sorted by store path");
	is_int(nx_index_parse(j, l, &p), 0, "index parse");
	ok(p.nentries == 2 && strcmp(p.entries[0].store_path, P1) == 0 &&
	   p.entries[0].desc.size == 666 && p.entries[0].desc.digest[0] == 0xbb &&
	   strcmp(p.entries[1].store_path, P2) == 0 && p.entries[1].desc.size == 555,
	   "index entries round trip");
	ok(p.nroots == 1 && strcmp(p.roots[0], P1) == 0, "index roots round trip");
	nx_index_release(&p);

	/* skopeo copy --all drops artifactType */
	{
		char *s = strdup(j), *a;

		while ((a = strstr(s, "\"artifactType\":\"application/vnd.nixoci.")) != NULL) {
			/* a + 16 is the value; skip it, its closing quote and the comma */
			char *end = strchr(a + 16, '"') + 2;

			memmove(a, end, strlen(end) + 1);
		}
		ok(!strstr(s, "artifactType"), "artifactType stripped");
		is_int(nx_index_parse(s, strlen(s), &p), 0, "index without artifactType parses");
		is_int(p.nentries, 2, "still 2 entries");
		nx_index_release(&p);
		free(s);
	}
	{
		char *s = strdup(j), *a = strstr(s, "\"dev.nixoci.closure\":\"1\"");

		a[strlen("\"dev.nixoci.closure\":\"")] = '2';
		ok(nx_index_parse(s, strlen(s), &p) == -EINVAL, "closure=2 is not a closure");
		memcpy(a, "\"dev.nixoci.closurx", 19);
		ok(nx_index_parse(s, strlen(s), &p) == -EINVAL, "index without closure annotation");
		free(s);
	}
	{
		char *s = strdup(j), *a = strstr(s, "\"annotations\":{\"dev.nixoci.store-path\"");

		memcpy(a + strlen("\"annotations\":{\"dev.nixoci.store-pat"), "x", 1);
		ok(nx_index_parse(s, strlen(s), &p) == -EINVAL, "entry without store path");
		free(s);
	}
	{
		const char *pl = "{\"annotations\":{\"dev.nixoci.closure\":\"1\",\"dev.nixoci.roots\":\"\"},"
				 "\"manifests\":[],\"schemaVersion\":2}";

		is_int(nx_index_parse(pl, strlen(pl), &p), 0, "empty closure parses");
		is_int(p.nentries, 0, "no entries");
		nx_index_release(&p);
	}
	{
		const char *dup = "{\"annotations\":{\"dev.nixoci.closure\":\"1\",\"dev.nixoci.roots\":\"\"},"
				  "\"manifests\":[{\"annotations\":{\"dev.nixoci.store-path\":\"" P1 "\"},"
				  "\"digest\":\"sha256:" D64 "\",\"mediaType\":\"" NX_MT_MANIFEST "\",\"size\":1},"
				  "{\"annotations\":{\"dev.nixoci.store-path\":\"" P1 "\"},"
				  "\"digest\":\"sha256:" D64 "\",\"mediaType\":\"" NX_MT_MANIFEST "\",\"size\":1}],"
				  "\"schemaVersion\":2}";

		ok(nx_index_parse(dup, strlen(dup), &p) == -EINVAL, "duplicate store path refused");
	}
	ok(nx_index_parse(golden, strlen(golden), &p) == -EINVAL, "a manifest is not an index");
	ix.entries[0].store_path = (char *)P1;
	ok(nx_index_build(&ix, &j2, &l2) == -EINVAL, "index build refuses duplicate paths");
	free(j);
	free(ix.entries);
}

/* Format 2 (docs/format.md 2.1): one pack layer placing the NAR layer and
 * the TOC; round trip, then each placement rule broken once. */
static char *repl(const char *in, const char *from, const char *to)
{
	const char *at = strstr(in, from);
	size_t n;
	char *s;

	if (!at)
		return NULL;
	n = strlen(in) - strlen(from) + strlen(to) + 1;
	s = malloc(n);
	snprintf(s, n, "%.*s%s%s", (int)(at - in), in, to, at + strlen(from));
	return s;
}

static void test_packed(void)
{
	static const struct {
		const char *name, *from, *to;
	} tab[] = {
		{ "toc past the pack", "\"dev.nixoci.toc-offset\":\"81234\"",
		  "\"dev.nixoci.toc-offset\":\"98767\"" },
		{ "nar past the pack", "\"dev.nixoci.nar-offset\":\"0\"",
		  "\"dev.nixoci.nar-offset\":\"18767\"" },
		{ "nar and toc overlap", "\"dev.nixoci.nar-offset\":\"0\"",
		  "\"dev.nixoci.nar-offset\":\"1\"" },
		{ "nar-length 0", "\"dev.nixoci.nar-length\":\"81234\"",
		  "\"dev.nixoci.nar-length\":\"0\"" },
		{ "toc-length missing", "\"dev.nixoci.toc-length\"", "\"dev.nixoci.toc-len\"" },
		{ "offset leading zero", "\"dev.nixoci.toc-offset\":\"81234\"",
		  "\"dev.nixoci.toc-offset\":\"081234\"" },
		{ "offset 2^64", "\"dev.nixoci.toc-offset\":\"81234\"",
		  "\"dev.nixoci.toc-offset\":\"18446744073709551616\"" },
		{ "offset a number", "\"dev.nixoci.toc-offset\":\"81234\"",
		  "\"dev.nixoci.toc-offset\":81234" },
		{ "toc-digest missing", "\"dev.nixoci.toc-digest\"", "\"dev.nixoci.toc-dig\"" },
		{ "toc-digest malformed", "\"sha256:2222", "\"sha256:X222" },
		{ "pack annotations missing", "\"annotations\":{\"dev.nixoci.nar-length",
		  "\"annotationz\":{\"dev.nixoci.nar-length" },
		{ "pack media type", "vnd.nixoci.pack.v1", "vnd.nixoci.nar.v1.zstd-seekable" },
		{ "format 1 with the v2 type", "\"dev.nixoci.format\":\"2\"",
		  "\"dev.nixoci.format\":\"1\"" },
		{ "format 2 with the v1 type", "nixoci.store-path.v2", "nixoci.store-path.v1" },
		{ "format 3", "\"dev.nixoci.format\":\"2\"", "\"dev.nixoci.format\":\"3\"" },
		{ "two layers", "\"layers\":[", "\"layers\":[{\"digest\":\"sha256:" D64 "\","
		  "\"mediaType\":\"application/vnd.nixoci.toc.v1+zstd\",\"size\":1}," },
	};
	struct nx_manifest m, p;
	char *j1 = NULL, *j2 = NULL;
	size_t l1 = 0, l2 = 0;

	make_manifest(&m);
	m.packed = 1;
	m.pack_size = 100000;
	m.nar_off = 0;
	m.toc_off = 81234;
	is_int(nx_manifest_build(&m, &j1, &l1), 0, "packed: build");
	ok(j1 && strstr(j1, "\"artifactType\":\"application/vnd.nixoci.store-path.v2\"") &&
	   strstr(j1, "\"dev.nixoci.format\":\"2\"") &&
	   strstr(j1, "\"mediaType\":\"application/vnd.nixoci.pack.v1\",\"size\":100000}]"),
	   "packed: v2 artifact type, format 2, one pack layer of the pack's size");
	is_int(nx_manifest_parse(j1, l1, &p), 0, "packed: parse");
	ok(p.packed && p.pack_size == 100000 && p.nar_off == 0 && p.nar.size == 81234 &&
	   p.toc_off == 81234 && p.toc.size == 1234 && memcmp(p.nar.digest, m.nar.digest, 32) == 0 &&
	   memcmp(p.toc.digest, m.toc.digest, 32) == 0, "packed: placement and digests");
	{
		const uint8_t *at;
		uint64_t off;

		nx_manifest_toc_at(&p, &at, &off);
		ok(memcmp(at, m.nar.digest, 32) == 0 && off == 81234, "packed: the TOC is in the pack");
	}
	is_int(nx_manifest_build(&p, &j2, &l2), 0, "packed: rebuild");
	ok(j2 && l2 == l1 && memcmp(j1, j2, l1) == 0, "packed: build(parse(x)) == x");
	nx_manifest_release(&p);
	free(j2);
	for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++) {
		char *s = repl(j1, tab[i].from, tab[i].to);

		if (!s) {
			ok(0, "packed: reject %s: pattern not found", tab[i].name);
			continue;
		}
		ok(nx_manifest_parse(s, strlen(s), &p) < 0 && p.info.store_path == NULL,
		   "packed: reject %s", tab[i].name);
		free(s);
	}
	m.toc_off = 81000; /* overlaps the NAR layer */
	ok(nx_manifest_build(&m, &j2, &l2) == -EINVAL, "packed: build refuses overlapping ranges");
	nx_manifest_release(&m);
	free(j1);
}

/* The window callback passes on only its range, rebased. */
struct wsink {
	char buf[16];
	uint64_t got;
};

static int wsink_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct wsink *k = ctx;

	if (off != k->got || off + len > sizeof(k->buf))
		return -EIO;
	memcpy(k->buf + off, buf, len);
	k->got += len;
	return 0;
}

static void test_window(void)
{
	struct wsink k = { { 0 }, 0 };
	struct nx_window w = { .cb = wsink_cb, .ctx = &k, .base = 5, .len = 6 };
	const char *all = "0123456789abcdef";

	/* a whole-blob answer in uneven pieces */
	is_int(nx_window_cb(&w, 0, all, 3), 0, "window: before the range");
	is_int(nx_window_cb(&w, 3, all + 3, 4), 0, "window: across the start");
	is_int(nx_window_cb(&w, 7, all + 7, 5), 0, "window: across the end");
	is_int(nx_window_cb(&w, 12, all + 12, 4), 0, "window: after the range");
	ok(k.got == 6 && memcmp(k.buf, "56789a", 6) == 0, "window: exactly the range, rebased");
}

/* dev.nixoci.imports (format.md 2): the encoding, strict parse, the cap,
 * and a manifest that carries it (a bad one is ignored, the rest parses). */
static void test_imports(void)
{
	static const uint32_t e[] = { 3, 7, 3, 9, 10, 3, 4294967294u, 0 };
	static const char *const bad[] = {
		"", "v", "v2", "v2;1:2", "v1;", "v1;1", "v1;1:", "v1;1:2,", "v1;1:2;",
		"v1;1:2,2", "v1;1:3,2", "v1;2:1;1:3", "v1;2:1;2:3", "v1;01:2", "v1;1:02",
		"v1;1:1", "v1;-1:2", "v1;+1:2", "v1;1:2 ", "v1; 1:2", "v1;1:4294967295",
		"v1;1:99999999999999999999", "v1;1:2;3:4,x", "v1:1:2", "v11;1:2",
	};
	struct nx_manifest m, p;
	uint32_t *got = NULL;
	size_t n = 0, l = 0, big_n;
	char *s = NULL, *j = NULL, *big;

	ok(nx_imports_format(e, 4, &s) == 0 && s && strcmp(s, "v1;3:7,9;10:3;4294967294:0") == 0,
	   "imports: format groups edges by importer");
	ok(s && nx_imports_parse(s, &got, &n) == 0 && n == 4 && memcmp(got, e, sizeof(e)) == 0,
	   "imports: parse(format(x)) == x");
	free(got);
	free(s);
	ok(nx_imports_parse("v1", &got, &n) == -EINVAL && !got && n == 0, "imports: no edges");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ok(nx_imports_parse(bad[i], &got, &n) == -EINVAL && !got && n == 0,
		   "imports: reject '%s'", bad[i]);
		free(got);
	}
	/* over the cap: 256 KiB of edges "v1;1:2,3,4,..." */
	big = malloc(NX_IMPORTS_MAX + 64);
	l = (size_t)sprintf(big, "v1;1:2");
	for (big_n = 3; l < NX_IMPORTS_MAX; big_n++)
		l += (size_t)sprintf(big + l, ",%zu", big_n);
	ok(nx_imports_parse(big, &got, &n) == -E2BIG && !got, "imports: reject over 256 KiB");
	big[NX_IMPORTS_MAX - 8] = 0;
	big[strrchr(big, ',') - big] = 0;
	ok(nx_imports_parse(big, &got, &n) == 0 && n > 30000, "imports: just under the cap");
	free(got);
	free(big);

	make_manifest(&m);
	m.imports = malloc(sizeof(e));
	memcpy(m.imports, e, sizeof(e));
	m.nimports = 4;
	ok(nx_manifest_build(&m, &j, &l) == 0 && j &&
	   strstr(j, "\"dev.nixoci.imports\":\"v1;3:7,9;10:3;4294967294:0\""),
	   "imports: built into the manifest");
	ok(j && nx_manifest_parse(j, l, &p) == 0 && p.nimports == 4 &&
	   memcmp(p.imports, e, sizeof(e)) == 0, "imports: parsed from the manifest");
	nx_manifest_release(&p);
	if (j) {
		char *at = strstr(j, "v1;3:7");

		at[1] = '9'; /* "v9;...": not this version */
		ok(nx_manifest_parse(j, l, &p) == 0 && p.nimports == 0 && !p.imports &&
		   p.info.store_path, "imports: a bad one is ignored, the manifest parses");
		nx_manifest_release(&p);
	}
	free(j);
	nx_manifest_release(&m);
}

/* dev.nixoci.elf (format.md 2): round trip, strict parse, the cap, and a
 * manifest that carries it (a bad one is ignored, the rest parses). */
static void test_elf_needs(void)
{
	static const char good[] =
		"{\"files\":[[5,-1,0,\"libm.so.6\",\"libc.so.6\"],[9,0,1,\"liba.so\"],"
		"[4294967294,1,0,\"libb.so.1\"]],\"search\":[\"$ORIGIN/../lib\",\"/nix/store/x/lib\"],"
		"\"v\":1}";
	static const char *const bad[] = {
		"", "{}", "[]", "{\"v\":1}", "{\"files\":[],\"search\":[],\"v\":1}",
		"{\"files\":[[5,-1,0,\"a\"]],\"search\":[],\"v\":2}",
		"{\"files\":[[5,-1,0,\"a\"]],\"search\":[],\"v\":1,\"x\":0}",
		"{\"files\":[[5,-1,0]],\"search\":[],\"v\":1}",
		"{\"files\":[[0,-1,0,\"a\"]],\"search\":[],\"v\":1}",
		"{\"files\":[[-5,-1,0,\"a\"]],\"search\":[],\"v\":1}",
		"{\"files\":[[4294967295,-1,0,\"a\"]],\"search\":[],\"v\":1}",
		"{\"files\":[[6,-1,0,\"a\"],[5,-1,0,\"b\"]],\"search\":[],\"v\":1}",
		"{\"files\":[[5,-1,0,\"a\"],[5,-1,0,\"b\"]],\"search\":[],\"v\":1}",
		"{\"files\":[[5,0,0,\"a\"]],\"search\":[],\"v\":1}",
		"{\"files\":[[5,-2,0,\"a\"]],\"search\":[\"/x\"],\"v\":1}",
		"{\"files\":[[5,-1,1,\"a\"]],\"search\":[],\"v\":1}",
		"{\"files\":[[5,0,2,\"a\"]],\"search\":[\"/x\"],\"v\":1}",
		"{\"files\":[[5,-1,0,\"a/b\"]],\"search\":[],\"v\":1}",
		"{\"files\":[[5,-1,0,\"\"]],\"search\":[],\"v\":1}",
		"{\"files\":[[5,-1,0,\"a\\u0000b\"]],\"search\":[],\"v\":1}",
		"{\"files\":[[5,-1,0,7]],\"search\":[],\"v\":1}",
		"{\"files\":[[5,0,0,\"a\"]],\"search\":[\"\"],\"v\":1}",
		"{\"files\":[[5,-1,0,\"a\"]],\"search\":[3],\"v\":1}",
		"{\"files\":[[5.5,-1,0,\"a\"]],\"search\":[],\"v\":1}",
		"{\"files\":[[5,-1,0,\"a\"]],\"files\":[],\"search\":[],\"v\":1}",
		"{\"files\":[[5,-1,0,\"a\"]],\"search\":[],\"v\":1} x",
	};
	struct nx_elf_needs *n = NULL;
	const struct nx_elf_need *f;
	struct nx_manifest m, p;
	char *s = NULL, *j = NULL, *big, name[300];
	size_t l = 0;

	ok(nx_elf_needs_parse(good, &n) == 0 && n && n->nfiles == 3 && n->nsearch == 2 &&
	   n->nnames == 4, "elf: parse");
	f = nx_elf_needs_find(n, 9);
	ok(f && f->search == 0 && f->rpath == 1 && f->nnames == 1 &&
	   strcmp(n->names[f->name0], "liba.so") == 0, "elf: find an entry");
	ok(!nx_elf_needs_find(n, 6) && !nx_elf_needs_find(n, 0) && !nx_elf_needs_find(NULL, 5),
	   "elf: no record, no entry");
	f = nx_elf_needs_find(n, 5);
	ok(f && f->search == -1 && f->nnames == 2 && strcmp(n->names[f->name0 + 1], "libc.so.6") == 0,
	   "elf: names in order");
	ok(nx_elf_needs_format(n, &s) == 0 && s && strcmp(s, good) == 0, "elf: format(parse(x)) == x");
	free(s);
	s = NULL;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct nx_elf_needs *b = NULL;

		ok(nx_elf_needs_parse(bad[i], &b) == -EINVAL && !b, "elf: reject '%s'", bad[i]);
		nx_elf_needs_free(b);
	}
	/* a name of NX_ELF_NAME_MAX bytes is one, one more is not */
	memset(name, 'a', sizeof(name));
	name[NX_ELF_NAME_MAX + 1] = 0;
	big = malloc(NX_ELF_NEEDS_MAX + 1024);
	sprintf(big, "{\"files\":[[5,-1,0,\"%s\"]],\"search\":[],\"v\":1}", name);
	{
		struct nx_elf_needs *b = NULL;

		ok(nx_elf_needs_parse(big, &b) == -EINVAL && !b, "elf: reject a name over 255 bytes");
		name[NX_ELF_NAME_MAX] = 0;
		sprintf(big, "{\"files\":[[5,-1,0,\"%s\"]],\"search\":[],\"v\":1}", name);
		ok(nx_elf_needs_parse(big, &b) == 0 && b, "elf: a name of 255 bytes");
		nx_elf_needs_free(b);
		b = NULL;
		/* over the cap */
		l = (size_t)sprintf(big, "{\"files\":[[5,-1,0,\"a\"");
		while (l < NX_ELF_NEEDS_MAX)
			l += (size_t)sprintf(big + l, ",\"%s\"", name);
		sprintf(big + l, "]],\"search\":[],\"v\":1}");
		ok(nx_elf_needs_parse(big, &b) == -E2BIG && !b, "elf: reject over 256 KiB");
	}
	free(big);

	make_manifest(&m);
	m.elf = n;
	n = NULL;
	ok(nx_manifest_build(&m, &j, &l) == 0 && j && strstr(j, "\"dev.nixoci.elf\":\"{"),
	   "elf: built into the manifest");
	ok(j && nx_manifest_parse(j, l, &p) == 0 && p.elf && p.elf->nfiles == 3 &&
	   nx_elf_needs_find(p.elf, 4294967294u), "elf: parsed from the manifest");
	nx_manifest_release(&p);
	if (j) {
		char *at = strstr(j, "\\\"v\\\":1}");

		if (at)
			at[6] = '7'; /* "v":7: not this version */
		ok(at && nx_manifest_parse(j, l, &p) == 0 && !p.elf && p.info.store_path,
		   "elf: a bad one is ignored, the manifest parses");
		nx_manifest_release(&p);
	}
	free(j);
	nx_manifest_release(&m);
}

/* nx_elf_needs_add, what the pusher builds with: the same bytes as the
 * reader's own parse of them, and the same limits. */
static void test_elf_needs_add(void)
{
	static const char want[] =
		"{\"files\":[[5,-1,0,\"libm.so.6\",\"libc.so.6\"],[9,0,1,\"liba.so\"],"
		"[12,1,0,\"libb.so.1\"],[13,0,0,\"libc.so.6\"]],"
		"\"search\":[\"$ORIGIN/../lib\",\"/nix/store/x/lib\"],\"v\":1}";
	const char *n5[] = { "libm.so.6", "libc.so.6" }, *na[] = { "liba.so" },
		   *nb[] = { "libb.so.1" }, *nc[] = { "libc.so.6" }, *slash[] = { "a/b" },
		   *empty[] = { "" };
	struct nx_elf_needs *n = NULL, *back = NULL;
	char *s = NULL;

	ok(nx_elf_needs_add(&n, 5, "", 1, n5, 2) == 0 && n && n->nfiles == 1 &&
	   n->files[0].search == -1 && n->files[0].rpath == 0,
	   "elf add: no search path, so no rpath");
	ok(nx_elf_needs_add(&n, 9, "$ORIGIN/../lib", 1, na, 1) == 0, "elf add: an rpath");
	ok(nx_elf_needs_add(&n, 12, "/nix/store/x/lib", 0, nb, 1) == 0, "elf add: a runpath");
	ok(nx_elf_needs_add(&n, 13, "$ORIGIN/../lib", 0, nc, 1) == 0 && n->nsearch == 2,
	   "elf add: a search path seen before is shared");
	ok(nx_elf_needs_add(&n, 13, NULL, 0, nc, 1) == -EINVAL &&
	   nx_elf_needs_add(&n, 7, NULL, 0, nc, 1) == -EINVAL, "elf add: entries ascending");
	ok(nx_elf_needs_add(&n, 20, NULL, 0, slash, 1) == -EINVAL &&
	   nx_elf_needs_add(&n, 20, NULL, 0, empty, 1) == -EINVAL &&
	   nx_elf_needs_add(&n, 20, NULL, 0, nc, 0) == -EINVAL &&
	   nx_elf_needs_add(&n, 0, NULL, 0, nc, 1) == -EINVAL && n->nfiles == 4 && n->nnames == 5,
	   "elf add: bad names, no names, entry 0 rejected, nothing added");
	ok(nx_elf_needs_format(n, &s) == 0 && s && strcmp(s, want) == 0, "elf add: formats as built");
	ok(s && nx_elf_needs_parse(s, &back) == 0 && back && back->nfiles == 4 &&
	   nx_elf_needs_find(back, 13) && nx_elf_needs_find(back, 13)->search == 0,
	   "elf add: the reader takes it");
	nx_elf_needs_free(back);
	nx_elf_needs_free(n);
	free(s);
}

int main(void)
{
	nx_log_set_level(NX_LOG_ERR - 1); /* the rejection cases log by design */
	test_manifest_roundtrip();
	test_manifest_rejects();
	test_index();
	test_packed();
	test_window();
	test_imports();
	test_elf_needs();
	test_elf_needs_add();
	return done_testing();
}
