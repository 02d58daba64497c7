/*
 * common/decompress.c: streaming decompression of the NAR files of a Nix
 * binary cache (xz, zstd, bzip2 or none), for `nixoci import`. Input is
 * untrusted: the output is handed on in pieces of at most 256 KiB and never
 * accumulated, so a bomb costs CPU, not memory; the consumer caps the total
 * (the narinfo's NarSize). A stream must end exactly: a truncated file or
 * bytes after the end of the compressed stream are -EINVAL.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <bzlib.h>
#include <lzma.h>
#include <zstd.h>

#include "common/common.h"

#define OUT_CHUNK (256u << 10)

struct nx_decomp {
	enum nx_comp kind;
	int (*out)(void *ctx, const void *buf, size_t len);
	void *ctx;
	uint8_t *buf; /* OUT_CHUNK */
	int ended;    /* the compressed stream reached its end */
	int started;  /* zstd: a frame is in progress */
	lzma_stream xz;
	bz_stream bz;
	ZSTD_DStream *zs;
};

int nx_decomp_new(struct nx_decomp **out, enum nx_comp kind,
		  int (*fn)(void *ctx, const void *buf, size_t len), void *ctx)
{
	struct nx_decomp *d = calloc(1, sizeof(*d));
	int r = 0;

	*out = NULL;
	if (!d)
		return -ENOMEM;
	d->kind = kind;
	d->out = fn;
	d->ctx = ctx;
	d->buf = malloc(OUT_CHUNK);
	if (!d->buf) {
		free(d);
		return -ENOMEM;
	}
	switch (kind) {
	case NX_COMP_NONE:
		break;
	case NX_COMP_XZ: {
		lzma_stream init = LZMA_STREAM_INIT;

		d->xz = init;
		if (lzma_stream_decoder(&d->xz, UINT64_MAX, LZMA_CONCATENATED) != LZMA_OK)
			r = -ENOMEM;
		break;
	}
	case NX_COMP_BZIP2:
		if (BZ2_bzDecompressInit(&d->bz, 0, 0) != BZ_OK)
			r = -ENOMEM;
		break;
	case NX_COMP_ZSTD:
		d->zs = ZSTD_createDStream();
		if (!d->zs)
			r = -ENOMEM;
		break;
	default:
		r = -EINVAL;
	}
	if (r < 0) {
		free(d->buf);
		free(d);
		return r;
	}
	*out = d;
	return 0;
}

static int feed_xz(struct nx_decomp *d, const void *in, size_t len, int finish)
{
	lzma_ret ret;
	int r;

	d->xz.next_in = in;
	d->xz.avail_in = len;
	do {
		d->xz.next_out = d->buf;
		d->xz.avail_out = OUT_CHUNK;
		ret = lzma_code(&d->xz, finish ? LZMA_FINISH : LZMA_RUN);
		if (d->xz.next_out != d->buf) {
			r = d->out(d->ctx, d->buf, (size_t)(d->xz.next_out - d->buf));
			if (r < 0)
				return r;
		}
		if (ret == LZMA_STREAM_END) {
			d->ended = 1;
			if (d->xz.avail_in)
				goto bad;
			return 0;
		}
		if (ret == LZMA_BUF_ERROR && finish)
			goto bad; /* truncated */
		if (ret != LZMA_OK)
			goto bad;
	} while (d->xz.avail_in || d->xz.avail_out == 0 || finish);
	return 0;
bad:
	nx_log(NX_LOG_ERR, "xz stream is %s", ret == LZMA_BUF_ERROR ? "truncated" : "corrupt");
	return -EINVAL;
}

static int feed_bz(struct nx_decomp *d, const void *in, size_t len, int finish)
{
	int ret, r;

	if (d->ended) {
		if (len)
			goto trailing;
		return 0;
	}
	if (finish) {
		nx_log(NX_LOG_ERR, "bzip2 stream is truncated");
		return -EINVAL;
	}
	d->bz.next_in = (char *)in;
	d->bz.avail_in = (unsigned)len;
	do {
		d->bz.next_out = (char *)d->buf;
		d->bz.avail_out = OUT_CHUNK;
		ret = BZ2_bzDecompress(&d->bz);
		if ((uint8_t *)d->bz.next_out != d->buf) {
			r = d->out(d->ctx, d->buf, (size_t)((uint8_t *)d->bz.next_out - d->buf));
			if (r < 0)
				return r;
		}
		if (ret == BZ_STREAM_END) {
			d->ended = 1;
			if (d->bz.avail_in)
				goto trailing;
			return 0;
		}
		if (ret != BZ_OK) {
			nx_log(NX_LOG_ERR, "bzip2 stream is corrupt (%d)", ret);
			return -EINVAL;
		}
	} while (d->bz.avail_in || d->bz.avail_out == 0);
	return 0;
trailing:
	nx_log(NX_LOG_ERR, "bytes after the end of the bzip2 stream");
	return -EINVAL;
}

static int feed_zstd(struct nx_decomp *d, const void *in, size_t len, int finish)
{
	ZSTD_inBuffer ib = { in, len, 0 };
	size_t ret;
	int r;

	if (finish) {
		if (d->started) {
			nx_log(NX_LOG_ERR, "zstd stream is truncated");
			return -EINVAL;
		}
		return 0;
	}
	while (ib.pos < ib.size) {
		ZSTD_outBuffer ob = { d->buf, OUT_CHUNK, 0 };

		ret = ZSTD_decompressStream(d->zs, &ob, &ib);
		if (ZSTD_isError(ret)) {
			nx_log(NX_LOG_ERR, "zstd stream is corrupt: %s", ZSTD_getErrorName(ret));
			return -EINVAL;
		}
		if (ob.pos) {
			r = d->out(d->ctx, d->buf, ob.pos);
			if (r < 0)
				return r;
		}
		d->started = ret != 0;
		/* output buffer full: more may be pending with no input left */
		while (ob.pos == ob.size && ib.pos == ib.size && ret != 0) {
			ob.pos = 0;
			ret = ZSTD_decompressStream(d->zs, &ob, &ib);
			if (ZSTD_isError(ret)) {
				nx_log(NX_LOG_ERR, "zstd stream is corrupt: %s",
				       ZSTD_getErrorName(ret));
				return -EINVAL;
			}
			if (ob.pos) {
				r = d->out(d->ctx, d->buf, ob.pos);
				if (r < 0)
					return r;
			}
			d->started = ret != 0;
		}
	}
	return 0;
}

int nx_decomp_feed(struct nx_decomp *d, const void *buf, size_t len)
{
	switch (d->kind) {
	case NX_COMP_NONE:
		return len ? d->out(d->ctx, buf, len) : 0;
	case NX_COMP_XZ:
		if (d->ended) {
			if (!len)
				return 0;
			nx_log(NX_LOG_ERR, "bytes after the end of the xz stream");
			return -EINVAL;
		}
		return len ? feed_xz(d, buf, len, 0) : 0;
	case NX_COMP_BZIP2:
		return feed_bz(d, buf, len, 0);
	case NX_COMP_ZSTD:
		return feed_zstd(d, buf, len, 0);
	}
	return -EINVAL;
}

int nx_decomp_finish(struct nx_decomp *d)
{
	switch (d->kind) {
	case NX_COMP_NONE:
		return 0;
	case NX_COMP_XZ:
		return d->ended ? 0 : feed_xz(d, NULL, 0, 1);
	case NX_COMP_BZIP2:
		return feed_bz(d, NULL, 0, !d->ended);
	case NX_COMP_ZSTD:
		return feed_zstd(d, NULL, 0, 1);
	}
	return -EINVAL;
}

void nx_decomp_free(struct nx_decomp *d)
{
	if (!d)
		return;
	if (d->kind == NX_COMP_XZ)
		lzma_end(&d->xz);
	else if (d->kind == NX_COMP_BZIP2)
		BZ2_bzDecompressEnd(&d->bz);
	else if (d->kind == NX_COMP_ZSTD)
		ZSTD_freeDStream(d->zs);
	free(d->buf);
	free(d);
}
