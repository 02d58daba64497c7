/*
 * tests/unit/common-pack.c: the zstd seekable NAR layer against the real
 * zstd CLI, the seek table, per-frame digests and the frame decoder's
 * refusal of bombs and short frames.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "common/common.h"
#include "tests/unit/tap.h"

static char tmpdir[] = "/tmp/nixoci-pack-XXXXXX";

struct membuf {
	uint8_t *p;
	size_t len, cap;
};

static int mem_write(void *ctx, const void *buf, size_t len)
{
	struct membuf *m = ctx;

	if (m->len + len > m->cap) {
		size_t ncap = m->cap ? m->cap : 4096;

		while (ncap < m->len + len)
			ncap *= 2;
		m->p = realloc(m->p, ncap);
		if (!m->p)
			return -ENOMEM;
		m->cap = ncap;
	}
	memcpy(m->p + m->len, buf, len);
	m->len += len;
	return 0;
}

static void write_file(const char *path, const void *buf, size_t len, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

	if (fd < 0 || write(fd, buf, len) != (ssize_t)len)
		diag("cannot write %s", path);
	close(fd);
}

static void fill(uint8_t *b, size_t len, unsigned seed)
{
	/* half random, half text: realistic compression ratio */
	for (size_t i = 0; i < len; i++) {
		seed = seed * 1103515245u + 12345u;
		b[i] = (i / 4096) % 2 ? (uint8_t)(seed >> 16) : (uint8_t)('a' + (i % 26));
	}
}

static void make_tree(const char *root)
{
	char p[512];
	uint8_t *big = malloc(3 << 20);

	snprintf(p, sizeof(p), "%s/bin", root);
	mkdir(root, 0755);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/bin/hello", root);
	write_file(p, "#!/bin/sh\necho hi\n", 18, 0755);
	snprintf(p, sizeof(p), "%s/empty", root);
	write_file(p, "", 0, 0644);
	snprintf(p, sizeof(p), "%s/lib", root);
	if (symlink("bin", p) < 0)
		diag("symlink failed");
	snprintf(p, sizeof(p), "%s/share", root);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/share/emptydir", root);
	mkdir(p, 0755);
	/* 600 KiB then 900 KiB: the second cannot share the first frame */
	fill(big, 600 << 10, 1);
	snprintf(p, sizeof(p), "%s/share/a-600k", root);
	write_file(p, big, 600 << 10, 0644);
	fill(big, 900 << 10, 2);
	snprintf(p, sizeof(p), "%s/share/b-900k", root);
	write_file(p, big, 900 << 10, 0644);
	fill(big, 3 << 20, 3);
	snprintf(p, sizeof(p), "%s/share/c-3m", root);
	write_file(p, big, 3 << 20, 0644);
	for (int i = 0; i < 50; i++) {
		char txt[64];
		int n = snprintf(txt, sizeof(txt), "small file %d\n", i);

		snprintf(p, sizeof(p), "%s/share/s%02d", root, i);
		write_file(p, txt, (size_t)n, 0644);
	}
	free(big);
}

static uint8_t *read_all(const char *path, size_t *len)
{
	struct stat st;
	uint8_t *b;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &st) < 0) {
		close(fd);
		return NULL;
	}
	b = malloc((size_t)st.st_size + 1);
	if (read(fd, b, (size_t)st.st_size) != st.st_size) {
		free(b);
		b = NULL;
	}
	close(fd);
	*len = (size_t)st.st_size;
	return b;
}

static int pack(const char *tree, const char *out, uint8_t **toc, size_t *toclen,
		uint64_t *nar_size, uint64_t *blob_size, uint8_t blob_sha[32], uint8_t nar_sha[32])
{
	struct nx_toc_builder *b = NULL;
	struct nx_packer *p = NULL;
	int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	int r;

	if (fd < 0)
		return -errno;
	r = nx_toc_builder_new(&b);
	if (r == 0)
		r = nx_packer_new(&p, fd, b);
	if (r == 0)
		r = nx_nar_dump(tree, nx_packer_sink(p));
	if (r == 0)
		r = nx_packer_finish(p, nar_size, blob_size, blob_sha, nar_sha);
	if (r == 0)
		r = nx_toc_builder_finish(b, *nar_size, *blob_size, toc, toclen);
	nx_packer_free(p);
	nx_toc_builder_free(b);
	close(fd);
	return r;
}

static void test_pack(void)
{
	char tree[256], blob[256], cmd[600];
	uint8_t *toc = NULL, *data = NULL, blob_sha[32], nar_sha[32], h[32];
	size_t toclen = 0, dlen = 0;
	uint64_t nar_size = 0, blob_size = 0;
	struct membuf nar = { 0 };
	struct nx_nar_sink ms = { &nar, mem_write, NULL };
	struct nx_toc *t = NULL;
	uint32_t *sizes = NULL, n = 0;
	int good;

	snprintf(tree, sizeof(tree), "%s/tree", tmpdir);
	snprintf(blob, sizeof(blob), "%s/blob.zst", tmpdir);
	make_tree(tree);
	is_int(nx_nar_dump(tree, &ms), 0, "reference nar dump");
	is_int(pack(tree, blob, &toc, &toclen, &nar_size, &blob_size, blob_sha, nar_sha), 0,
	       "pack the tree");
	is_int(nar_size, nar.len, "nar_size equals the dump's length");
	nx_sha256(nar.p, nar.len, h);
	ok(memcmp(h, nar_sha, 32) == 0, "nar sha256 matches the dump");
	data = read_all(blob, &dlen);
	ok(data && dlen == blob_size, "blob file has blob_size bytes");
	if (!data)
		return;
	nx_sha256(data, dlen, h);
	ok(memcmp(h, blob_sha, 32) == 0, "blob sha256 matches the file");
	ok(dlen >= 4 && data[dlen - 4] == 0xb1 && data[dlen - 3] == 0xea &&
	   data[dlen - 2] == 0x92 && data[dlen - 1] == 0x8f, "file ends with the seekable magic");

	/* the stock zstd CLI decodes the whole blob to the NAR */
	snprintf(cmd, sizeof(cmd), "zstd -q -d -c < %s > %s/out.nar", blob, tmpdir);
	if (system(cmd) == 0) {
		size_t olen = 0;
		uint8_t *o;

		snprintf(cmd, sizeof(cmd), "%s/out.nar", tmpdir);
		o = read_all(cmd, &olen);
		ok(o && olen == nar.len && memcmp(o, nar.p, olen) == 0,
		   "zstd -d reproduces the nar exactly");
		free(o);
	} else {
		ok(0, "zstd -d ran");
	}
	/* and so does nix-store --dump, when nix is there */
	snprintf(cmd, sizeof(cmd), "nix-store --dump %s > %s/nix.nar 2>/dev/null", tree, tmpdir);
	if (system(cmd) == 0) {
		size_t olen = 0;
		uint8_t *o;

		snprintf(cmd, sizeof(cmd), "%s/nix.nar", tmpdir);
		o = read_all(cmd, &olen);
		ok(o && olen == nar.len && memcmp(o, nar.p, olen) == 0,
		   "nix-store --dump agrees with the packed nar");
		free(o);
	}

	is_int(nx_toc_decode(toc, toclen, &t), 0, "toc decodes");
	if (!t)
		goto out;
	is_int(nx_seektable_decode(data, dlen, &sizes, &n), 0, "seek table decodes");
	is_int(n, t->nframes, "seek table frame count equals the toc's");
	good = 1;
	for (uint32_t i = 0; i < n && i < t->nframes; i++)
		good &= sizes[2 * i] == t->frames[i].clen && sizes[2 * i + 1] == t->frames[i].ulen;
	ok(good, "seek table sizes equal the toc frames");
	ok(t->nframes >= 5, "several frames (%u)", t->nframes);

	good = 1;
	for (uint32_t i = 0; i < t->nframes; i++) {
		const struct nx_toc_frame *f = &t->frames[i];
		uint8_t *u = malloc(f->ulen);

		nx_sha256(data + f->coff, f->clen, h);
		good &= memcmp(h, f->sha256, 32) == 0;
		good &= f->ulen <= NX_FRAME_TARGET;
		good &= nx_frame_decompress(data + f->coff, f->clen, u, f->ulen) == 0;
		good &= memcmp(u, nar.p + f->uoff, f->ulen) == 0;
		good &= ZSTD_getFrameContentSize(data + f->coff, f->clen) == f->ulen;
		free(u);
	}
	ok(good, "every frame: sha256, <= 256 KiB, decompresses to its nar slice");

	good = 1;
	for (uint32_t i = 0; i < t->nentries; i++) {
		const struct nx_toc_entry *e = &t->entries[i];
		uint32_t f0, f1;

		if (e->type != NX_NODE_REGULAR || e->size == 0)
			continue;
		if (nx_toc_frames_for(t, e->off, e->size, &f0, &f1) < 0) {
			good = 0;
			continue;
		}
		if (e->size <= NX_FRAME_TARGET && f0 != f1) {
			size_t l;
			const char *nm = nx_toc_name(t, i, &l);

			diag("file %.*s straddles frames %u..%u", (int)l, nm, f0, f1);
			good = 0;
		}
		if (e->size > NX_FRAME_TARGET && t->frames[f0].uoff != e->off)
			good = 0; /* a big file starts its own frame */
	}
	ok(good, "files up to 256 KiB never straddle frames; big files start a frame");
	{
		int64_t share = nx_toc_lookup(t, 0, "share", 5), c3;

		c3 = share >= 0 ? nx_toc_lookup(t, (uint32_t)share, "c-3m", 4) : -1;
		ok(c3 > 0 && t->entries[c3].size == 3 << 20, "toc finds share/c-3m");
	}

	/* determinism: the same tree packs to the same bytes */
	{
		uint8_t *toc2 = NULL, bs2[32], ns2[32];
		size_t toclen2 = 0;
		uint64_t n2, b2;

		snprintf(cmd, sizeof(cmd), "%s/blob2.zst", tmpdir);
		is_int(pack(tree, cmd, &toc2, &toclen2, &n2, &b2, bs2, ns2), 0, "pack again");
		ok(memcmp(bs2, blob_sha, 32) == 0 && toclen2 == toclen &&
		   memcmp(toc2, toc, toclen) == 0, "second pack is byte-identical (blob and toc)");
		free(toc2);
	}

	/* bombs and damaged frames */
	{
		const struct nx_toc_frame *f = &t->frames[0];
		uint8_t *u = malloc(f->ulen + 16), *c = malloc(f->clen + 1);

		is_int(nx_frame_decompress(data + f->coff, f->clen, u, f->ulen - 1), -EINVAL,
		       "frame with a smaller expected ulen is refused");
		is_int(nx_frame_decompress(data + f->coff, f->clen, u, f->ulen + 1), -EINVAL,
		       "frame with a larger expected ulen is refused");
		is_int(nx_frame_decompress(data + f->coff, f->clen - 1, u, f->ulen), -EINVAL,
		       "truncated frame is refused");
		memcpy(c, data + f->coff, f->clen);
		c[f->clen] = 0;
		is_int(nx_frame_decompress(c, f->clen + 1, u, f->ulen), -EINVAL,
		       "frame with a trailing byte is refused");
		c[f->clen / 2] ^= 0xff;
		is_int(nx_frame_decompress(c, f->clen, u, f->ulen), -EINVAL,
		       "frame with a damaged body is refused");
		is_int(nx_frame_decompress(data + dlen - nx_seektable_size(n), nx_seektable_size(n),
					   u, f->ulen), -EINVAL, "the skippable frame is refused");
		free(u);
		free(c);
	}
out:
	nx_toc_free(t);
	free(sizes);
	free(data);
	free(toc);
	free(nar.p);
}

static void test_bomb_and_oneshot(void)
{
	size_t big = 8 << 20, clen, olen;
	uint8_t *zeros = calloc(1, big), *c = NULL, *o = NULL, small[4096];
	ZSTD_CCtx *cc = ZSTD_createCCtx();
	uint8_t unk[4096];
	size_t ulen;

	is_int(nx_zstd_compress(zeros, big, &c, &clen), 0, "compress 8 MiB of zeros");
	ok(clen < 4096, "compresses small (%zu)", clen);
	is_int(nx_frame_decompress(c, clen, small, sizeof(small)), -EINVAL,
	       "bomb: 8 MiB frame into a 4 KiB slot is refused");
	is_int(nx_zstd_decompress(c, clen, 1 << 20, &o, &olen), -E2BIG,
	       "one-shot: content size over the cap is refused");
	is_int(nx_zstd_decompress(c, clen, big, &o, &olen), 0, "one-shot at the cap works");
	ok(o && olen == big && memcmp(o, zeros, big) == 0, "one-shot round trip");
	free(o);
	o = NULL;
	is_int(nx_zstd_decompress(c, clen - 1, big, &o, &olen), -EINVAL, "one-shot truncated");
	free(c);

	/* a frame without a content size */
	ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
	ulen = ZSTD_compress2(cc, unk, sizeof(unk), "hello hello hello", 17);
	ok(!ZSTD_isError(ulen), "frame without content size made");
	is_int(nx_zstd_decompress(unk, ulen, 1 << 20, &o, &olen), -EINVAL,
	       "one-shot: unknown content size refused");
	is_int(nx_frame_decompress(unk, ulen, small, 17), -EINVAL,
	       "frame: unknown content size refused");
	ZSTD_freeCCtx(cc);
	is_int(nx_zstd_decompress("garbage!", 8, 100, &o, &olen), -EINVAL, "one-shot garbage");
	is_int(nx_zstd_compress("", 0, &c, &clen), 0, "compress empty");
	is_int(nx_zstd_decompress(c, clen, 100, &o, &olen), 0, "decompress empty");
	is_int(olen, 0, "empty round trip");
	free(c);
	free(o);
	free(zeros);
}

static void test_seektable(void)
{
	struct nx_toc_frame f[3];
	uint8_t st[17 + 24], bad[17 + 24];
	uint32_t *s = NULL, n = 0;

	memset(f, 0, sizeof(f));
	for (int i = 0; i < 3; i++) {
		f[i].clen = 100 + (uint32_t)i;
		f[i].ulen = 1000 + (uint32_t)i;
	}
	is_int(nx_seektable_size(3), 41, "seek table size for 3 frames");
	nx_seektable_encode(f, 3, st);
	ok(st[0] == 0x5e && st[1] == 0x2a && st[2] == 0x4d && st[3] == 0x18,
	   "skippable magic 0x184D2A5E");
	is_int(st[4], 8 * 3 + 9, "frame size field");
	is_int(nx_seektable_decode(st, sizeof(st), &s, &n), 0, "decode");
	ok(n == 3 && s[0] == 100 && s[1] == 1000 && s[4] == 102 && s[5] == 1002, "values");
	free(s);
	memcpy(bad, st, sizeof(st));
	bad[sizeof(bad) - 1] ^= 1;
	ok(nx_seektable_decode(bad, sizeof(bad), &s, &n) < 0, "bad footer magic");
	memcpy(bad, st, sizeof(st));
	bad[0] ^= 1;
	ok(nx_seektable_decode(bad, sizeof(bad), &s, &n) < 0, "bad skippable magic");
	memcpy(bad, st, sizeof(st));
	bad[sizeof(bad) - 9] = 200;
	ok(nx_seektable_decode(bad, sizeof(bad), &s, &n) < 0, "frame count beyond the data");
	memcpy(bad, st, sizeof(st));
	bad[sizeof(bad) - 5] = 0x04;
	ok(nx_seektable_decode(bad, sizeof(bad), &s, &n) < 0, "reserved descriptor bits");
	ok(nx_seektable_decode(st, 8, &s, &n) < 0, "too short");
	ok(nx_seektable_decode(st + 1, sizeof(st) - 1, &s, &n) < 0, "table cut at the front");
}

static void test_params(void)
{
	char want[160];

	snprintf(want, sizeof(want),
		 "zstd=%s;level=3;frame-max=262144;checksum=1;pledged=1;workers=0",
		 ZSTD_versionString());
	ok(strcmp(nx_packer_params(), want) == 0, "params: %s", nx_packer_params());
}

static void test_empty_nar(void)
{
	struct nx_packer *p = NULL;
	uint64_t a, b;
	uint8_t h1[32], h2[32];
	int fd = open("/dev/null", O_WRONLY);

	is_int(nx_packer_new(&p, fd, NULL), 0, "packer without a toc");
	ok(nx_packer_finish(p, &a, &b, h1, h2) < 0, "an empty nar is refused");
	nx_packer_free(p);
	close(fd);
}

int main(void)
{
	char cmd[128];

	nx_log_set_level(NX_LOG_ERR - 1); /* the rejection cases log by design */
	if (!mkdtemp(tmpdir))
		skip_all("no temp dir");
	test_params();
	test_seektable();
	test_bomb_and_oneshot();
	test_empty_nar();
	test_pack();
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	if (system(cmd) != 0)
		diag("cleanup of %s failed", tmpdir);
	return done_testing();
}
