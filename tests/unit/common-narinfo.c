/*
 * tests/unit/common-narinfo.c: the narinfo parser (good and bad narinfo
 * files, table-driven) and the binary-cache decompressors (xz, bzip2, zstd,
 * none: round trips in odd splits, truncation, trailing garbage).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <bzlib.h>
#include <lzma.h>
#include <zstd.h>

#include "common/common.h"
#include "tests/unit/tap.h"

#define H "sha256:1dp0lp8yqph0b7b5a27lyjyi3lybz60wr0g3i90dvzhl8c48gd8r"
#define P "y0cqwlxmpv2nad3kbdjmv2zcfrhip6gq"
#define R1 "3qhd453w97nqxf7744wvhv6hgizjbnf4-hello-note.txt"
#define R2 "5040xyihxrhqb78ds8kl3cv54cs4hl45-hello-data-1.0"

static const char good[] =
	"StorePath: /nix/store/" P "-hello-2.12\n"
	"URL: nar/0prsd95h10m6kbb2ibbkfgnxzwqdv8imvwk5v7vwa1lp6frs37i7.nar.xz\n"
	"Compression: xz\n"
	"FileHash: " H "\n"
	"FileSize: 644\n"
	"NarHash: " H "\n"
	"NarSize: 1656\n"
	"References: " R2 " " R1 "\n"
	"Deriver: ahch8rdljaddp4yi2rqy0m3ri9kg31fa-hello-2.12.drv\n"
	"System: x86_64-linux\n"
	"Sig: cache-1:8RW1BGy85KBMKEhxn6r1wkfP5uSLqmwVA1OH/f48wz4acdFrGy4u8rk1E2Kwo4XQ5BGALgirJBVxxy5Kq5CWBw==\n"
	"Sig: other-1:8RW1BGy85KBMKEhxn6r1wkfP5uSLqmwVA1OH/f48wz4acdFrGy4u8rk1E2Kwo4XQ5BGALgirJBVxxy5Kq5CWBw==\n";

/* good with one line replaced (or removed when @with is "") */
static char *variant(const char *key, const char *with)
{
	const char *s = strstr(good, key), *e;
	char *out;

	if (!s)
		return strdup(good);
	e = strchr(s, '\n') + 1;
	if (asprintf(&out, "%.*s%s%s", (int)(s - good), good, with, e) < 0)
		return NULL;
	return out;
}

static void test_narinfo(void)
{
	static const struct {
		const char *key, *with, *name;
	} bad[] = {
		{ "StorePath: ", "", "no StorePath" },
		{ "StorePath: ", "StorePath: /nix/store/" R1 "\n", "StorePath of another hash" },
		{ "StorePath: ", "StorePath: /tmp/" P "-x\n", "StorePath outside the store" },
		{ "URL: ", "", "no URL" },
		{ "URL: ", "URL: ../../etc/passwd\n", "URL with .." },
		{ "URL: ", "URL: /etc/passwd\n", "absolute URL" },
		{ "URL: ", "URL: http://elsewhere/x.nar\n", "URL with a scheme" },
		{ "Compression: ", "Compression: lz4\n", "unknown compression" },
		{ "NarHash: ", "", "no NarHash" },
		{ "NarHash: ", "NarHash: sha256:xyz\n", "malformed NarHash" },
		{ "NarHash: ", "NarHash: md5:d41d8cd98f00b204e9800998ecf8427e\n", "NarHash not sha256" },
		{ "NarSize: ", "", "no NarSize" },
		{ "NarSize: ", "NarSize: 0\n", "NarSize 0" },
		{ "NarSize: ", "NarSize: -1\n", "negative NarSize" },
		{ "NarSize: ", "NarSize: 12x\n", "NarSize with junk" },
		{ "FileSize: ", "FileSize: 99999999999999999999\n", "FileSize overflow" },
		{ "References: ", "", "no References" },
		{ "References: ", "References: " R1 " " R1 "\n", "a reference twice" },
		{ "References: ", "References: not-a-path\n", "a malformed reference" },
		{ "Deriver: ", "Deriver: /nix/store/x.drv\n", "deriver as a full path" },
		{ "Sig: cache", "Sig: nocolon\n", "malformed Sig" },
		{ "System: ", "NarSize: 1656\n", "NarSize twice" },
		{ "System: ", "no colon here\n", "a line that is not Key: value" },
	};
	struct nx_narinfo ni;
	size_t i;
	int r;

	r = nx_narinfo_parse("good", P, good, strlen(good), &ni);
	is_int(r, 0, "good narinfo parses");
	if (r == 0) {
		ok(strcmp(ni.info.store_path, "/nix/store/" P "-hello-2.12") == 0, "StorePath");
		ok(ni.comp == NX_COMP_XZ, "Compression xz");
		is_int(ni.info.nar_size, 1656, "NarSize");
		is_int(ni.file_size, 644, "FileSize");
		ok(ni.have_file_hash, "FileHash");
		is_int(ni.info.nrefs, 2, "two references");
		ok(ni.info.nrefs == 2 && strcmp(ni.info.refs[0], R1) == 0 &&
			   strcmp(ni.info.refs[1], R2) == 0,
		   "references sorted");
		is_int(ni.info.nsigs, 2, "two signatures, in order");
		ok(ni.info.deriver && strcmp(ni.info.deriver,
					     "ahch8rdljaddp4yi2rqy0m3ri9kg31fa-hello-2.12.drv") == 0,
		   "Deriver");
		nx_narinfo_release(&ni);
	}
	r = nx_narinfo_parse("good", NULL, good, strlen(good), &ni);
	is_int(r, 0, "no hash wanted: parses");
	nx_narinfo_release(&ni);
	{
		char *v = variant("Compression: ", "");
		r = nx_narinfo_parse("nocomp", P, v, strlen(v), &ni);
		ok(r == 0 && ni.comp == NX_COMP_BZIP2, "no Compression means bzip2, as Nix");
		nx_narinfo_release(&ni);
		free(v);
		v = variant("References: ", "References: \n");
		r = nx_narinfo_parse("norefs", P, v, strlen(v), &ni);
		ok(r == 0 && ni.info.nrefs == 0, "empty References");
		nx_narinfo_release(&ni);
		free(v);
		v = variant("System: ", "CA: fixed:r:sha256:1dp0lp8yqph0b7b5a27lyjyi3lybz60wr0g3i90dvzhl8c48gd8r\nFutureField: whatever\n");
		r = nx_narinfo_parse("ca", P, v, strlen(v), &ni);
		ok(r == 0 && ni.info.ca && strncmp(ni.info.ca, "fixed:r:", 8) == 0,
		   "CA kept, unknown fields ignored");
		nx_narinfo_release(&ni);
		free(v);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *v = variant(bad[i].key, bad[i].with);

		r = nx_narinfo_parse(bad[i].name, P, v, strlen(v), &ni);
		is_int(r, -EINVAL, "refused: %s", bad[i].name);
		free(v);
	}
	r = nx_narinfo_parse("nul", P, "StorePath: \0x", 14, &ni);
	is_int(r, -EINVAL, "refused: a NUL byte");
}

/* ------------------------------------------------------- decompression */

struct sink {
	uint8_t *buf;
	size_t len, cap;
};

static int sink_cb(void *ctx, const void *buf, size_t len)
{
	struct sink *s = ctx;

	if (s->len + len > s->cap)
		return -E2BIG;
	memcpy(s->buf + s->len, buf, len);
	s->len += len;
	return 0;
}

static size_t compress(enum nx_comp kind, const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
	switch (kind) {
	case NX_COMP_NONE:
		memcpy(out, in, len);
		return len;
	case NX_COMP_XZ: {
		size_t pos = 0;

		if (lzma_easy_buffer_encode(6, LZMA_CHECK_CRC64, NULL, in, len, out, &pos, cap) !=
		    LZMA_OK)
			return 0;
		return pos;
	}
	case NX_COMP_BZIP2: {
		unsigned int n = (unsigned int)cap;

		if (BZ2_bzBuffToBuffCompress((char *)out, &n, (char *)in, (unsigned)len, 9, 0,
					     0) != BZ_OK)
			return 0;
		return n;
	}
	case NX_COMP_ZSTD: {
		size_t n = ZSTD_compress(out, cap, in, len, 3);

		return ZSTD_isError(n) ? 0 : n;
	}
	}
	return 0;
}

/* Decompresses @c[0..clen) fed in pieces of @step into @s; feed/finish result. */
static int run(enum nx_comp kind, const uint8_t *c, size_t clen, size_t step, struct sink *s)
{
	struct nx_decomp *d = NULL;
	size_t off;
	int r;

	s->len = 0;
	r = nx_decomp_new(&d, kind, sink_cb, s);
	if (r < 0)
		return r;
	for (off = 0; off < clen && r == 0; off += step)
		r = nx_decomp_feed(d, c + off, clen - off < step ? clen - off : step);
	if (r == 0)
		r = nx_decomp_finish(d);
	nx_decomp_free(d);
	return r;
}

static void test_decompress(void)
{
	static const char *const kname[] = { "none", "xz", "zstd", "bzip2" };
	const size_t n = 3u << 20; /* several output chunks */
	uint8_t *in = malloc(n), *c = malloc(n + 65536), *bad = malloc(n + 65536 + 8);
	struct sink s = { malloc(n), 0, n };
	size_t i, clen;
	int k;

	enum nx_comp kind;
	ok(nx_comp_parse("zstd", &kind) == 0 && kind == NX_COMP_ZSTD, "comp name zstd");
	ok(nx_comp_parse("gzip", &kind) == -EINVAL, "comp name gzip refused");
	for (i = 0; i < n; i++) /* compressible but not trivial */
		in[i] = (uint8_t)((i * 2654435761u) >> 13) % 17 + (i % 4096 < 100 ? 'a' : 0);
	for (k = NX_COMP_NONE; k <= NX_COMP_BZIP2; k++) {
		size_t steps[] = { 1 << 20, 4093, 1 };
		size_t si;

		clen = compress((enum nx_comp)k, in, n, c, n + 65536);
		ok(clen > 0, "%s: test data compressed (%zu bytes)", kname[k], clen);
		for (si = 0; si < 3; si++) {
			if (steps[si] == 1 && clen > 200000)
				continue;
			ok(run((enum nx_comp)k, c, clen, steps[si], &s) == 0 && s.len == n &&
				   memcmp(s.buf, in, n) == 0,
			   "%s: round trip in pieces of %zu", kname[k], steps[si]);
		}
		if (k == NX_COMP_NONE)
			continue;
		ok(run((enum nx_comp)k, c, clen / 2, 65536, &s) == -EINVAL,
		   "%s: truncated stream refused", kname[k]);
		ok(run((enum nx_comp)k, c, clen - 1, 65536, &s) == -EINVAL,
		   "%s: stream one byte short refused", kname[k]);
		memcpy(bad, c, clen);
		memcpy(bad + clen, "garbage!", 8);
		ok(run((enum nx_comp)k, bad, clen + 8, 65536, &s) == -EINVAL,
		   "%s: bytes after the stream refused", kname[k]);
		memcpy(bad, c, clen);
		bad[clen / 2] ^= 0x55;
		ok(run((enum nx_comp)k, bad, clen, 65536, &s) != 0,
		   "%s: corrupt stream refused", kname[k]);
		s.cap = n / 2;
		ok(run((enum nx_comp)k, c, clen, 65536, &s) == -E2BIG,
		   "%s: the consumer's cap stops it", kname[k]);
		s.cap = n;
	}
	free(in);
	free(c);
	free(bad);
	free(s.buf);
}

int main(void)
{
	nx_log_set_level(NX_LOG_ERR - 1); /* the refusals' lines are expected */
	test_narinfo();
	test_decompress();
	return done_testing();
}
