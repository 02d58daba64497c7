/*
 * common/metrics.c: latency histograms and the Prometheus text exposition
 * format (version 0.0.4) they and the counters are written in.
 *
 * A histogram is a fixed array of cumulative-at-export bucket counters
 * updated with relaxed atomics: an observation costs two atomic adds and a
 * short scan, and a reader may see a count without its sum (scrapes are
 * approximate by nature; no lock is worth that on the read path).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/common.h"

/* Upper bounds in nanoseconds: 0.5 ms to 30 s, covering a cached FUSE
 * reply and a registry request that runs into its deadline. */
const uint64_t nx_hist_bounds_ns[NX_HIST_BUCKETS] = {
	500000ull,     1000000ull,    2500000ull,     5000000ull,     10000000ull,
	25000000ull,   50000000ull,   100000000ull,   250000000ull,   500000000ull,
	1000000000ull, 2500000000ull, 5000000000ull,  10000000000ull, 30000000000ull,
};

void nx_hist_observe(struct nx_hist *h, uint64_t ns)
{
	unsigned i = 0;

	while (i < NX_HIST_BUCKETS && ns > nx_hist_bounds_ns[i])
		i++;
	__atomic_fetch_add(&h->count[i], 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&h->sum_ns, ns, __ATOMIC_RELAXED);
}

void nx_hist_add(struct nx_hist *dst, const struct nx_hist *src)
{
	unsigned i;

	for (i = 0; i <= NX_HIST_BUCKETS; i++)
		dst->count[i] += __atomic_load_n(&src->count[i], __ATOMIC_RELAXED);
	dst->sum_ns += __atomic_load_n(&src->sum_ns, __ATOMIC_RELAXED);
}

void nx_prom_init(struct nx_prom *p, char *buf, size_t cap)
{
	p->buf = buf;
	p->cap = cap;
	p->len = 0;
	p->err = 0;
	if (cap)
		buf[0] = '\0';
}

static void prom_printf(struct nx_prom *p, const char *fmt, ...) NX_PRINTF(2, 3);
static void prom_printf(struct nx_prom *p, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (p->err)
		return;
	va_start(ap, fmt);
	n = vsnprintf(p->buf + p->len, p->cap - p->len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= p->cap - p->len) {
		p->err = -E2BIG;
		p->buf[p->len] = '\0';
		return;
	}
	p->len += (size_t)n;
}

int nx_prom_label_escape(const char *in, char *out, size_t cap)
{
	size_t o = 0;

	for (; *in; in++) {
		const char *rep = NULL;
		char c[2] = { *in, 0 };

		if (*in == '\\')
			rep = "\\\\";
		else if (*in == '"')
			rep = "\\\"";
		else if (*in == '\n')
			rep = "\\n";
		else
			rep = c;
		if (o + strlen(rep) + 1 > cap)
			return -E2BIG;
		memcpy(out + o, rep, strlen(rep));
		o += strlen(rep);
	}
	if (o + 1 > cap)
		return -E2BIG;
	out[o] = '\0';
	return 0;
}

void nx_prom_help(struct nx_prom *p, const char *name, const char *type, const char *help)
{
	prom_printf(p, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void nx_prom_value(struct nx_prom *p, const char *name, const char *labels, uint64_t v)
{
	prom_printf(p, "%s{%s} %" PRIu64 "\n", name, labels, v);
}

void nx_prom_hist(struct nx_prom *p, const char *name, const char *labels, const struct nx_hist *h)
{
	uint64_t cum = 0;
	unsigned i;

	for (i = 0; i < NX_HIST_BUCKETS; i++) {
		cum += h->count[i];
		prom_printf(p, "%s_bucket{%s%sle=\"%g\"} %" PRIu64 "\n", name, labels,
			    *labels ? "," : "", (double)nx_hist_bounds_ns[i] / 1e9, cum);
	}
	cum += h->count[NX_HIST_BUCKETS];
	prom_printf(p, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name, labels, *labels ? "," : "",
		    cum);
	prom_printf(p, "%s_sum{%s} %.9f\n", name, labels, (double)h->sum_ns / 1e9);
	prom_printf(p, "%s_count{%s} %" PRIu64 "\n", name, labels, cum);
}
