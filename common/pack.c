/*
 * common/pack.c: the zstd seekable NAR layer (docs/format.md section 3) and
 * the zstd helpers for single-frame blobs and untrusted frames.
 *
 * Frame cutting: NAR bytes collect in an NX_FRAME_TARGET buffer. A file node arms a
 * cut at its contents offset; when the stream reaches that offset, the
 * frame is closed if the file does not fit in what is left of it and the
 * frame is not empty. The buffer is also closed whenever it is full. Cutting
 * at the offset, rather than when the node event arrives, keeps the frames
 * independent of whether the NAR writer emits the 8-byte length before or
 * after the event.
 *
 * Every frame is compressed on its own with a pledged size (so the header
 * carries Frame_Content_Size) and a content checksum, then written straight
 * to the fd; its SHA-256 goes to the TOC, its sizes to the seek table.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

#include "common/common.h"

#define SEEK_SKIPPABLE_MAGIC 0x184D2A5Eu
#define SEEK_FOOTER_MAGIC 0x8F92EAB1u
#define SEEK_FOOTER 9

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Header and footer of the seek-table skippable frame; entries go at 8 + 8*i. */
static void st_frame(uint8_t *out, uint32_t n)
{
	size_t len = 8 + 8 * (size_t)n + SEEK_FOOTER;

	put32(out, SEEK_SKIPPABLE_MAGIC);
	put32(out + 4, (uint32_t)(len - 8));
	put32(out + len - 9, n);
	out[len - 5] = 0; /* no checksums */
	put32(out + len - 4, SEEK_FOOTER_MAGIC);
}

struct nx_packer {
	int fd;
	struct nx_toc_builder *toc;
	struct nx_nar_sink sink;
	ZSTD_CCtx *cctx;
	uint8_t *buf; /* current frame, NX_FRAME_TARGET bytes */
	size_t cur;
	uint8_t *cbuf; /* compressed frame */
	size_t ccap;
	uint64_t nar_off; /* NAR bytes seen */
	uint64_t blob_off; /* bytes written to fd */
	int cut_armed;
	uint64_t cut_at, cut_size;
	uint32_t *sizes; /* (clen, ulen) pairs for the seek table */
	uint32_t nframes, sizes_cap;
	struct nx_sha256 nar_h, blob_h;
	int hashing; /* both hash contexts live */
	int no_blob_hash; /* nx_packer_no_blob_hash */
	int err;     /* sticky */
};

static int emit(struct nx_packer *p, const void *buf, size_t len)
{
	int r = nx_write_all(p->fd, buf, len);

	if (r < 0) {
		nx_log(NX_LOG_ERR, "pack: write of the nar layer failed: %s", strerror(-r));
		return r;
	}
	if (!p->no_blob_hash)
		nx_sha256_update(&p->blob_h, buf, len);
	p->blob_off += len;
	return 0;
}

static int flush_frame(struct nx_packer *p)
{
	struct nx_toc_frame f;
	size_t z;
	int r;

	if (p->cur == 0)
		return 0;
	if (p->nframes >= NX_TOC_MAX_FRAMES) {
		nx_log(NX_LOG_ERR, "pack: nar needs more than %u frames", NX_TOC_MAX_FRAMES);
		return -E2BIG;
	}
	z = ZSTD_CCtx_reset(p->cctx, ZSTD_reset_session_only);
	if (!ZSTD_isError(z))
		z = ZSTD_CCtx_setPledgedSrcSize(p->cctx, p->cur);
	if (!ZSTD_isError(z))
		z = ZSTD_compress2(p->cctx, p->cbuf, p->ccap, p->buf, p->cur);
	if (ZSTD_isError(z)) {
		nx_log(NX_LOG_ERR, "pack: zstd compression failed: %s", ZSTD_getErrorName(z));
		return -EIO;
	}
	if (z > UINT32_MAX)
		return -E2BIG;
	memset(&f, 0, sizeof(f));
	f.coff = p->blob_off;
	f.uoff = p->nar_off - p->cur;
	f.clen = (uint32_t)z;
	f.ulen = (uint32_t)p->cur;
	nx_sha256(p->cbuf, z, f.sha256);
	if (p->nframes == p->sizes_cap) {
		uint32_t ncap = p->sizes_cap ? p->sizes_cap * 2 : 64;
		uint32_t *s = realloc(p->sizes, (size_t)ncap * 2 * sizeof(*s));

		if (!s)
			return -ENOMEM;
		p->sizes = s;
		p->sizes_cap = ncap;
	}
	r = emit(p, p->cbuf, z);
	if (r < 0)
		return r;
	if (p->toc) {
		r = nx_toc_builder_add_frame(p->toc, &f);
		if (r < 0)
			return r;
	}
	p->sizes[2 * p->nframes] = f.clen;
	p->sizes[2 * p->nframes + 1] = f.ulen;
	p->nframes++;
	p->cur = 0;
	return 0;
}

static int sink_write(void *ctx, const void *buf, size_t len)
{
	struct nx_packer *p = ctx;
	const uint8_t *s = buf;
	int r;

	if (p->err)
		return p->err;
	nx_sha256_update(&p->nar_h, buf, len);
	while (len > 0) {
		size_t room = NX_FRAME_TARGET - p->cur, n;

		if (p->cut_armed && p->nar_off == p->cut_at) {
			p->cut_armed = 0;
			if (p->cur > 0 && p->cut_size > room) {
				r = flush_frame(p);
				if (r < 0)
					return p->err = r;
				room = NX_FRAME_TARGET;
			}
		}
		n = len < room ? len : room;
		if (p->cut_armed && p->cut_at > p->nar_off && p->cut_at - p->nar_off < n)
			n = (size_t)(p->cut_at - p->nar_off);
		memcpy(p->buf + p->cur, s, n);
		p->cur += n;
		p->nar_off += n;
		s += n;
		len -= n;
		if (p->cur == NX_FRAME_TARGET) {
			r = flush_frame(p);
			if (r < 0)
				return p->err = r;
		}
	}
	return 0;
}

static int sink_node(void *ctx, const struct nx_nar_node *n)
{
	struct nx_packer *p = ctx;
	int r;

	if (p->err)
		return p->err;
	if (n->type == NX_NODE_REGULAR && n->size > 0 && n->contents_off >= p->nar_off) {
		p->cut_armed = 1;
		p->cut_at = n->contents_off;
		p->cut_size = n->size;
	}
	if (p->toc) {
		r = nx_toc_builder_node(p->toc, n);
		if (r < 0)
			return p->err = r;
	}
	return 0;
}

int nx_packer_new(struct nx_packer **out, int fd, struct nx_toc_builder *toc)
{
	struct nx_packer *p;
	size_t z;
	int r;

	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->fd = fd;
	p->toc = toc;
	p->sink.ctx = p;
	p->sink.write = sink_write;
	p->sink.node = sink_node;
	p->ccap = ZSTD_compressBound(NX_FRAME_TARGET);
	p->buf = malloc(NX_FRAME_TARGET);
	p->cbuf = malloc(p->ccap);
	p->cctx = ZSTD_createCCtx();
	if (!p->buf || !p->cbuf || !p->cctx) {
		r = -ENOMEM;
		goto fail;
	}
	z = ZSTD_CCtx_setParameter(p->cctx, ZSTD_c_compressionLevel, NX_ZSTD_LEVEL);
	if (!ZSTD_isError(z))
		z = ZSTD_CCtx_setParameter(p->cctx, ZSTD_c_checksumFlag, 1);
	if (!ZSTD_isError(z))
		z = ZSTD_CCtx_setParameter(p->cctx, ZSTD_c_contentSizeFlag, 1);
	if (!ZSTD_isError(z))
		z = ZSTD_CCtx_setParameter(p->cctx, ZSTD_c_nbWorkers, 0);
	if (ZSTD_isError(z)) {
		nx_log(NX_LOG_ERR, "pack: cannot set zstd parameters: %s", ZSTD_getErrorName(z));
		r = -EINVAL;
		goto fail;
	}
	r = nx_sha256_init(&p->nar_h);
	if (r < 0)
		goto fail;
	r = nx_sha256_init(&p->blob_h);
	if (r < 0) {
		nx_sha256_release(&p->nar_h);
		goto fail;
	}
	p->hashing = 1;
	*out = p;
	return 0;
fail:
	nx_packer_free(p);
	return r;
}

void nx_packer_no_blob_hash(struct nx_packer *p)
{
	p->no_blob_hash = 1;
}

const struct nx_nar_sink *nx_packer_sink(struct nx_packer *p)
{
	return &p->sink;
}

int nx_packer_finish(struct nx_packer *p, uint64_t *nar_size, uint64_t *blob_size,
		     uint8_t blob_sha256[NX_SHA256_LEN], uint8_t nar_sha256[NX_SHA256_LEN])
{
	uint8_t *st = NULL;
	size_t stlen;
	int r;

	if (p->err)
		return p->err;
	if (!p->hashing)
		return -EINVAL;
	if (p->nar_off == 0) {
		nx_log(NX_LOG_ERR, "pack: the nar is empty");
		return p->err = -EINVAL;
	}
	r = flush_frame(p);
	if (r < 0)
		return p->err = r;
	stlen = nx_seektable_size(p->nframes);
	st = malloc(stlen);
	if (!st)
		return p->err = -ENOMEM;
	st_frame(st, p->nframes);
	for (uint32_t i = 0; i < p->nframes; i++) {
		put32(st + 8 + 8 * (size_t)i, p->sizes[2 * i]);
		put32(st + 12 + 8 * (size_t)i, p->sizes[2 * i + 1]);
	}
	r = emit(p, st, stlen);
	free(st);
	if (r < 0)
		return p->err = r;
	nx_sha256_final(&p->nar_h, nar_sha256);
	nx_sha256_final(&p->blob_h, blob_sha256);
	if (p->no_blob_hash)
		memset(blob_sha256, 0, NX_SHA256_LEN);
	p->hashing = 0;
	p->err = -EINVAL; /* finished: only free is allowed */
	*nar_size = p->nar_off;
	*blob_size = p->blob_off;
	return 0;
}

void nx_packer_free(struct nx_packer *p)
{
	if (!p)
		return;
	if (p->hashing) {
		nx_sha256_release(&p->nar_h);
		nx_sha256_release(&p->blob_h);
	}
	ZSTD_freeCCtx(p->cctx);
	free(p->buf);
	free(p->cbuf);
	free(p->sizes);
	free(p);
}

static pthread_once_t params_once = PTHREAD_ONCE_INIT;
static char params[128];

static void params_init(void)
{
	snprintf(params, sizeof(params),
		 "zstd=%s;level=%d;frame-max=%u;checksum=1;pledged=1;workers=0",
		 ZSTD_versionString(), NX_ZSTD_LEVEL, NX_FRAME_TARGET);
}

const char *nx_packer_params(void)
{
	pthread_once(&params_once, params_init);
	return params;
}

/* ---------------------------------------------------------- seek table */

size_t nx_seektable_size(uint32_t nframes)
{
	return 8 + 8 * (size_t)nframes + SEEK_FOOTER;
}

void nx_seektable_encode(const struct nx_toc_frame *f, uint32_t n, uint8_t *out)
{
	st_frame(out, n);
	for (uint32_t i = 0; i < n; i++) {
		put32(out + 8 + 8 * (size_t)i, f[i].clen);
		put32(out + 12 + 8 * (size_t)i, f[i].ulen);
	}
}

int nx_seektable_decode(const void *tail, size_t len, uint32_t **sizes, uint32_t *n)
{
	const uint8_t *end = (const uint8_t *)tail + len, *t;
	uint32_t nf, *s;
	uint8_t desc;
	size_t esize, tlen;

	if (len < SEEK_FOOTER || get32(end - 4) != SEEK_FOOTER_MAGIC) {
		nx_log(NX_LOG_ERR, "seek table: footer magic not found");
		return -EINVAL;
	}
	nf = get32(end - 9);
	desc = end[-5];
	if (desc & 0x7c) {
		nx_log(NX_LOG_ERR, "seek table: reserved descriptor bits set (0x%02x)", desc);
		return -EINVAL;
	}
	if (nf > NX_TOC_MAX_FRAMES) {
		nx_log(NX_LOG_ERR, "seek table: %u frames exceeds the limit", nf);
		return -E2BIG;
	}
	esize = (desc & 0x80) ? 12 : 8;
	tlen = 8 + esize * nf + SEEK_FOOTER;
	if (tlen > len) {
		nx_log(NX_LOG_ERR, "seek table: %u frames do not fit in %zu bytes", nf, len);
		return -EINVAL;
	}
	t = end - tlen;
	if (get32(t) != SEEK_SKIPPABLE_MAGIC || get32(t + 4) != tlen - 8) {
		nx_log(NX_LOG_ERR, "seek table: bad skippable frame header");
		return -EINVAL;
	}
	s = malloc(nf ? 2 * (size_t)nf * sizeof(*s) : 1);
	if (!s)
		return -ENOMEM;
	for (uint32_t i = 0; i < nf; i++) {
		s[2 * i] = get32(t + 8 + esize * i);
		s[2 * i + 1] = get32(t + 12 + esize * i);
	}
	*sizes = s;
	*n = nf;
	return 0;
}

/* ---------------------------------------------------------- zstd frames */

int nx_frame_decompress(const void *src, size_t clen, void *dst, size_t ulen)
{
	unsigned long long fcs;
	size_t z;

	fcs = ZSTD_getFrameContentSize(src, clen);
	if (fcs == ZSTD_CONTENTSIZE_ERROR || fcs == ZSTD_CONTENTSIZE_UNKNOWN || fcs != ulen) {
		nx_log(NX_LOG_ERR, "zstd frame: content size does not match the expected %zu bytes",
		       ulen);
		return -EINVAL;
	}
	z = ZSTD_findFrameCompressedSize(src, clen);
	if (ZSTD_isError(z) || z != clen) {
		nx_log(NX_LOG_ERR, "zstd frame: compressed size is not the expected %zu bytes",
		       clen);
		return -EINVAL;
	}
	z = ZSTD_decompress(dst, ulen, src, clen);
	if (ZSTD_isError(z) || z != ulen) {
		nx_log(NX_LOG_ERR, "zstd frame: decompression failed: %s",
		       ZSTD_isError(z) ? ZSTD_getErrorName(z) : "short output");
		return -EINVAL;
	}
	return 0;
}

int nx_zstd_compress(const void *src, size_t len, uint8_t **out, size_t *outlen)
{
	ZSTD_CCtx *c;
	uint8_t *buf;
	size_t cap = ZSTD_compressBound(len), z;

	if (ZSTD_isError(cap))
		return -E2BIG;
	c = ZSTD_createCCtx();
	buf = malloc(cap);
	if (!c || !buf) {
		ZSTD_freeCCtx(c);
		free(buf);
		return -ENOMEM;
	}
	z = ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, NX_ZSTD_LEVEL);
	if (!ZSTD_isError(z))
		z = ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
	if (!ZSTD_isError(z))
		z = ZSTD_CCtx_setPledgedSrcSize(c, len);
	if (!ZSTD_isError(z))
		z = ZSTD_compress2(c, buf, cap, src, len);
	ZSTD_freeCCtx(c);
	if (ZSTD_isError(z)) {
		nx_log(NX_LOG_ERR, "zstd: compression failed: %s", ZSTD_getErrorName(z));
		free(buf);
		return -EIO;
	}
	*out = buf;
	*outlen = z;
	return 0;
}

int nx_zstd_decompress(const void *src, size_t len, size_t cap, uint8_t **out, size_t *outlen)
{
	unsigned long long fcs;
	uint8_t *buf;
	size_t z;

	fcs = ZSTD_getFrameContentSize(src, len);
	if (fcs == ZSTD_CONTENTSIZE_ERROR || fcs == ZSTD_CONTENTSIZE_UNKNOWN) {
		nx_log(NX_LOG_ERR, "zstd: not a single frame with a declared content size");
		return -EINVAL;
	}
	if (fcs > cap) {
		nx_log(NX_LOG_ERR, "zstd: content size %llu exceeds the limit of %zu bytes", fcs,
		       cap);
		return -E2BIG;
	}
	z = ZSTD_findFrameCompressedSize(src, len);
	if (ZSTD_isError(z) || z != len) {
		nx_log(NX_LOG_ERR, "zstd: input is not exactly one frame");
		return -EINVAL;
	}
	buf = malloc(fcs ? (size_t)fcs : 1);
	if (!buf)
		return -ENOMEM;
	z = ZSTD_decompress(buf, (size_t)fcs, src, len);
	if (ZSTD_isError(z) || z != fcs) {
		nx_log(NX_LOG_ERR, "zstd: decompression failed: %s",
		       ZSTD_isError(z) ? ZSTD_getErrorName(z) : "short output");
		free(buf);
		return -EINVAL;
	}
	*out = buf;
	*outlen = (size_t)fcs;
	return 0;
}
