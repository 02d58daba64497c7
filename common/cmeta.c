/*
 * common/cmeta.c: the closure metadata blob (docs/format.md 5.1), the
 * manifest and TOC blob of every path of a closure in one zstd frame, so a
 * closure mount pays one fetch instead of two round trips per path.
 *
 * Layout (inflated, little-endian):
 *   header (32 bytes): magic "NIXOCMET", version 1, flags 0, nitems,
 *                      12 reserved zero bytes
 *   items (nitems x 16): off (8), man_len (4), toc_len (4)
 *   data: item i's manifest bytes then its TOC blob, at off, back to back
 *
 * The items tile the data exactly (item 0 starts right after the table,
 * each next one where the previous ended, the last one ends the blob), so
 * there is one valid encoding and no byte goes unchecked. Nothing here is
 * trusted: the reader hashes every manifest and TOC and keeps only those
 * that the closure index (manifests) and the manifests (TOCs) name.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

#define CM_MAGIC "NIXOCMET"
#define CM_VERSION 1
#define CM_HDR 32
#define CM_ITEM 16
/* more paths than any index can list (NX_INDEX_MAX / ~250 bytes each) */
#define CM_MAX_ITEMS (1u << 20)

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

int nx_cmeta_encode(const struct nx_cmeta_item *items, size_t n, uint8_t **blob, size_t *len)
{
	uint64_t total = CM_HDR + (uint64_t)CM_ITEM * n, off;
	uint8_t *raw;
	int r;

	if (n == 0 || n > CM_MAX_ITEMS)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (items[i].man_len == 0 || items[i].toc_len == 0 ||
		    items[i].man_len > UINT32_MAX || items[i].toc_len > UINT32_MAX)
			return -EINVAL;
		total += items[i].man_len + items[i].toc_len;
	}
	if (total > NX_CMETA_MAX_INFLATED) {
		nx_log(NX_LOG_ERR, "closure metadata: %llu bytes, over the readers' cap of %llu",
		       (unsigned long long)total, (unsigned long long)NX_CMETA_MAX_INFLATED);
		return -E2BIG;
	}
	raw = calloc(1, (size_t)total);
	if (!raw)
		return -ENOMEM;
	memcpy(raw, CM_MAGIC, 8);
	put32(raw + 8, CM_VERSION);
	put32(raw + 12, 0);
	put32(raw + 16, (uint32_t)n);
	off = CM_HDR + (uint64_t)CM_ITEM * n;
	for (size_t i = 0; i < n; i++) {
		uint8_t *it = raw + CM_HDR + CM_ITEM * i;

		put64(it, off);
		put32(it + 8, (uint32_t)items[i].man_len);
		put32(it + 12, (uint32_t)items[i].toc_len);
		memcpy(raw + off, items[i].man, items[i].man_len);
		memcpy(raw + off + items[i].man_len, items[i].toc, items[i].toc_len);
		off += items[i].man_len + items[i].toc_len;
	}
	r = nx_zstd_compress(raw, (size_t)total, blob, len);
	free(raw);
	return r;
}

int nx_cmeta_decode(const uint8_t *blob, size_t len, uint8_t **raw, struct nx_cmeta_item **items,
		    size_t *n)
{
	struct nx_cmeta_item *it = NULL;
	uint8_t *b = NULL;
	size_t blen = 0;
	uint64_t off;
	uint32_t cnt;
	int r;

	*raw = NULL;
	*items = NULL;
	*n = 0;
	r = nx_zstd_decompress(blob, len, (size_t)NX_CMETA_MAX_INFLATED, &b, &blen);
	if (r < 0) {
		nx_log(NX_LOG_ERR, "closure metadata: not one zstd frame within %llu MiB",
		       (unsigned long long)(NX_CMETA_MAX_INFLATED >> 20));
		return -EINVAL;
	}
	r = -EINVAL;
	if (blen < CM_HDR || memcmp(b, CM_MAGIC, 8) != 0) {
		nx_log(NX_LOG_ERR, "closure metadata: bad magic");
		goto fail;
	}
	if (get32(b + 8) != CM_VERSION || get32(b + 12) != 0) {
		nx_log(NX_LOG_ERR, "closure metadata: version %u flags %u not supported",
		       get32(b + 8), get32(b + 12));
		goto fail;
	}
	for (int i = 20; i < CM_HDR; i++) {
		if (b[i]) {
			nx_log(NX_LOG_ERR, "closure metadata: reserved header bytes are not zero");
			goto fail;
		}
	}
	cnt = get32(b + 16);
	if (cnt == 0 || cnt > CM_MAX_ITEMS || CM_HDR + (uint64_t)CM_ITEM * cnt > blen) {
		nx_log(NX_LOG_ERR, "closure metadata: %u items do not fit", cnt);
		goto fail;
	}
	it = calloc(cnt, sizeof(*it));
	if (!it) {
		r = -ENOMEM;
		goto fail;
	}
	off = CM_HDR + (uint64_t)CM_ITEM * cnt;
	for (uint32_t i = 0; i < cnt; i++) {
		const uint8_t *p = b + CM_HDR + (size_t)CM_ITEM * i;
		uint64_t o = get64(p);
		uint32_t ml = get32(p + 8), tl = get32(p + 12);

		if (o != off || ml == 0 || tl == 0 || ml > NX_MANIFEST_MAX ||
		    (uint64_t)ml + tl > blen - off) {
			nx_log(NX_LOG_ERR, "closure metadata: item %u is out of place", i);
			goto fail;
		}
		it[i].man = b + off;
		it[i].man_len = ml;
		it[i].toc = b + off + ml;
		it[i].toc_len = tl;
		off += (uint64_t)ml + tl;
	}
	if (off != blen) {
		nx_log(NX_LOG_ERR, "closure metadata: %llu trailing bytes",
		       (unsigned long long)(blen - off));
		goto fail;
	}
	*raw = b;
	*items = it;
	*n = cnt;
	return 0;
fail:
	free(it);
	free(b);
	return r;
}
