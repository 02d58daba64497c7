/*
 * tests/unit/tap.h: a minimal TAP producer for the C unit tests, read by
 * prove. Header-only so each test is one file.
 *
 *   ok(cond, "name %d", i);   is_int(got, want, "name");   done_testing();
 *
 * Exit status is non-zero when any test failed.
 */
#ifndef NIXOCI_TAP_H
#define NIXOCI_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int tap_n, tap_failed;

__attribute__((format(printf, 2, 3), unused)) static int ok(int cond, const char *fmt, ...)
{
	va_list ap;
	tap_n++;
	printf("%sok %d - ", cond ? "" : "not ", tap_n);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	if (!cond)
		tap_failed++;
	return cond;
}

#define is_int(got, want, ...)                                                         \
	do {                                                                           \
		long long g_ = (long long)(got), w_ = (long long)(want);               \
		if (!ok(g_ == w_, __VA_ARGS__))                                        \
			printf("#   got %lld, want %lld\n", g_, w_);                 \
	} while (0)

__attribute__((format(printf, 1, 2), unused)) static void diag(const char *fmt, ...)
{
	va_list ap;
	printf("# ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

/* Skip the whole file (exit 0 with a TAP skip plan). */
__attribute__((unused, noreturn)) static void skip_all(const char *why)
{
	printf("1..0 # SKIP %s\n", why);
	exit(0);
}

__attribute__((unused)) static int done_testing(void)
{
	printf("1..%d\n", tap_n);
	return tap_failed ? 1 : 0;
}

#endif
