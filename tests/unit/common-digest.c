/*
 * tests/unit/common-digest.c: SHA-256, hex, OCI digest strings, base64,
 * sizes and the log line format.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "tests/unit/tap.h"

static const char empty_hex[] = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

static void test_sha256(void)
{
	uint8_t d[NX_SHA256_LEN], d2[NX_SHA256_LEN];
	char hex[2 * NX_SHA256_LEN + 1], s[NX_DIGEST_STRLEN];
	struct nx_sha256 h;

	nx_sha256("{}", 2, d);
	nx_hex(d, sizeof(d), hex);
	ok(strcmp(hex, empty_hex) == 0, "sha256({}) = %s", hex);
	nx_digest_format(d, s);
	ok(strcmp(s, NX_EMPTY_DIGEST) == 0, "digest format %s", s);
	is_int(strlen(s), NX_DIGEST_STRLEN - 1, "digest string length");

	is_int(nx_sha256_init(&h), 0, "init");
	nx_sha256_update(&h, "{", 1);
	nx_sha256_update(&h, "", 0);
	nx_sha256_update(&h, "}", 1);
	nx_sha256_final(&h, d2);
	ok(memcmp(d, d2, sizeof(d)) == 0, "streaming = one-shot");
	ok(h.md == NULL, "final releases the context");
	is_int(nx_sha256_init(&h), 0, "init again");
	nx_sha256_update(&h, "x", 1);
	nx_sha256_release(&h);
	ok(h.md == NULL, "release");

	nx_sha256("", 0, d);
	nx_hex(d, sizeof(d), hex);
	ok(strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0,
	   "sha256 of nothing");
}

static void test_digest_parse(void)
{
	uint8_t d[NX_SHA256_LEN];
	char s[NX_DIGEST_STRLEN];
	static const char *bad[] = {
		"sha256:44136FA355B3678A1146AD16F7E8649E94FB4FC21FE77E8310C060F61CAAFF8A",
		"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8",
		"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a0",
		"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8g",
		"sha512:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
		"SHA256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
		"44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
		"sha256: 44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8",
		"sha256:",
		"",
	};

	is_int(nx_digest_parse(NX_EMPTY_DIGEST, d), 0, "parse the empty digest");
	nx_digest_format(d, s);
	ok(strcmp(s, NX_EMPTY_DIGEST) == 0, "parse/format round trip");
	ok(d[0] == 0x44 && d[31] == 0x8a, "parsed bytes");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		is_int(nx_digest_parse(bad[i], d), -EINVAL, "reject digest #%zu '%s'", i, bad[i]);
	is_int(nx_digest_parse(NULL, d), -EINVAL, "reject NULL");
}

static void test_base64(void)
{
	uint8_t in[300], out[3 * (sizeof(in) * 4 / 3 / 4 + 4)];
	char enc[4 * ((sizeof(in) + 2) / 3) + 1];
	int good = 1;
	static const struct {
		const char *s;
		const char *want;
		ssize_t len;
	} dec[] = {
		{ "e30=", "{}", 2 },
		{ "e30", "{}", 2 },
		{ "aGVsbG8=", "hello", 5 },
		{ "aGVsbG8", "hello", 5 },
		{ "aGVsbA==", "hell", 4 },
		{ "aGVsbA", "hell", 4 },
		{ "aGVs", "hel", 3 },
		{ "", "", 0 },
		{ "aGVsbA=", NULL, -EINVAL },
		{ "aGVsbA===", NULL, -EINVAL },
		{ "aGVsb", NULL, -EINVAL },
		{ "aG=sbA==", NULL, -EINVAL },
		{ "aGVs bA==", NULL, -EINVAL },
		{ " aGVsbA==", NULL, -EINVAL },
		{ "aGVsbA==\n", NULL, -EINVAL },
		{ "aGVs-A==", NULL, -EINVAL },
		{ "=", NULL, -EINVAL },
		{ "==", NULL, -EINVAL },
	};

	for (size_t i = 0; i < sizeof(dec) / sizeof(dec[0]); i++) {
		ssize_t r = nx_base64_decode(dec[i].s, strlen(dec[i].s), out, sizeof(out));

		is_int(r, dec[i].len, "base64 decode #%zu", i);
		if (r > 0)
			ok(memcmp(out, dec[i].want, (size_t)r) == 0, "base64 decode #%zu bytes", i);
	}
	nx_base64_encode((const uint8_t *)"{}", 2, enc);
	ok(strcmp(enc, "e30=") == 0, "encode {}");
	nx_base64_encode((const uint8_t *)"", 0, enc);
	ok(strcmp(enc, "") == 0, "encode nothing");

	/* a cap smaller than the output is refused, an exact cap is fine */
	is_int(nx_base64_decode("aGVsbG8=", 8, out, 4), -EINVAL, "cap too small");
	is_int(nx_base64_decode("aGVsbG8=", 8, out, 5), 5, "exact cap");

	for (size_t n = 0; n <= sizeof(in); n++) {
		ssize_t r;

		for (size_t k = 0; k < n; k++)
			in[k] = (uint8_t)(k * 131 + n);
		nx_base64_encode(in, n, enc);
		if (strlen(enc) != 4 * ((n + 2) / 3))
			good = 0;
		r = nx_base64_decode(enc, strlen(enc), out, sizeof(out));
		if (r != (ssize_t)n || memcmp(in, out, n))
			good = 0;
		/* unpadded */
		r = nx_base64_decode(enc, strcspn(enc, "="), out, sizeof(out));
		if (r != (ssize_t)n || memcmp(in, out, n))
			good = 0;
	}
	ok(good, "base64 round trips, padded and unpadded, lengths 0..300");
}

static void test_size(void)
{
	uint64_t v = 0;

	is_int(nx_parse_size("4096", &v), 0, "4096");
	is_int(v, 4096, "4096 value");
	is_int(nx_parse_size("1K", &v), 0, "1K");
	is_int(v, 1024, "1K value");
	is_int(nx_parse_size("512M", &v), 0, "512M");
	is_int(v, 512ull << 20, "512M value");
	is_int(nx_parse_size("10G", &v), 0, "10G");
	is_int(v, 10ull << 30, "10G value");
	is_int(nx_parse_size("10g", &v), 0, "10g");
	is_int(nx_parse_size("0", &v), 0, "0");
	is_int(nx_parse_size("18446744073709551615", &v), 0, "UINT64_MAX");
	ok(v == UINT64_MAX, "UINT64_MAX value");
	is_int(nx_parse_size("18446744073709551616", &v), -EINVAL, "overflow");
	is_int(nx_parse_size("17179869184G", &v), -EINVAL, "overflow by unit");
	is_int(nx_parse_size("", &v), -EINVAL, "empty");
	is_int(nx_parse_size("G", &v), -EINVAL, "unit only");
	is_int(nx_parse_size("-1", &v), -EINVAL, "negative");
	is_int(nx_parse_size(" 1", &v), -EINVAL, "leading space");
	is_int(nx_parse_size("1 G", &v), -EINVAL, "inner space");
	v = 0;
	is_int(nx_parse_size("10GB", &v), 0, "10GB");
	is_int(v, 10ull << 30, "10GB value: powers of 1024 too");
	v = 0;
	is_int(nx_parse_size("10GiB", &v), 0, "10GiB");
	is_int(v, 10ull << 30, "10GiB value");
	is_int(nx_parse_size("512mb", &v), 0, "512mb");
	is_int(v, 512ull << 20, "512mb value");
	is_int(nx_parse_size("10GBB", &v), -EINVAL, "GBB");
	is_int(nx_parse_size("10Gi", &v), -EINVAL, "Gi without B");
	is_int(nx_parse_size("10B", &v), -EINVAL, "B alone");
	is_int(nx_parse_size("10X", &v), -EINVAL, "unknown unit");
	is_int(nx_parse_size("1.5G", &v), -EINVAL, "fraction");
	{
		uint64_t a = nx_now_ns(), b = nx_now_ns();

		ok(a > 0 && b >= a, "monotonic clock");
	}
}

static void test_log(void)
{
	int fds[2], saved = dup(2);
	char buf[256] = "";
	ssize_t n;

	if (pipe(fds) < 0 || saved < 0) {
		ok(0, "pipe");
		return;
	}
	dup2(fds[1], 2);
	nx_log_set_prog("unit");
	nx_log_set_level(NX_LOG_NOTICE);
	nx_log(NX_LOG_ERR, "thing %s failed", "x");
	nx_log(NX_LOG_DEBUG, "dropped");
	nx_log_set_level(NX_LOG_DEBUG);
	nx_log(NX_LOG_DEBUG, "kept %d", 7);
	errno = 42;
	nx_log(NX_LOG_ERR, "errno kept");
	is_int(errno, 42, "nx_log preserves errno");
	dup2(saved, 2);
	close(saved);
	close(fds[1]);
	n = read(fds[0], buf, sizeof(buf) - 1);
	close(fds[0]);
	buf[n > 0 ? n : 0] = '\0';
	ok(strcmp(buf, "unit: thing x failed\nunit: kept 7\nunit: errno kept\n") == 0,
	   "log lines");
	is_int(nx_log_get_level(), NX_LOG_DEBUG, "level");
	nx_log_set_level(NX_LOG_NOTICE);
}

/* Strings from a registry reach the log escaped: no extra line, no
 * terminal escape (ESC, C1 CSI, raw 0x9b), UTF-8 kept. */
static void test_log_escapes(void)
{
	int fds[2], saved = dup(2);
	char buf[512] = "";
	ssize_t n;

	if (pipe(fds) < 0 || saved < 0) {
		ok(0, "pipe");
		return;
	}
	dup2(fds[1], 2);
	nx_log_set_prog("unit");
	nx_log(NX_LOG_ERR, "tag '%s' refused", "x\nunit: forged line\r\x1b[2Jy");
	nx_log(NX_LOG_ERR, "name %s", "caf\xc3\xa9 \xc2\x9b" "31m \x9b" "1m \x7f \xff\xfe \xed\xa0\x80");
	nx_log(NX_LOG_ERR, "trailing newlines dropped\n\n");
	dup2(saved, 2);
	close(saved);
	close(fds[1]);
	n = read(fds[0], buf, sizeof(buf) - 1);
	close(fds[0]);
	buf[n > 0 ? n : 0] = '\0';
	ok(strcmp(buf, "unit: tag 'x\\x0aunit: forged line\\x0d\\x1b[2Jy' refused\n"
		       "unit: name caf\xc3\xa9 \\xc2\\x9b31m \\x9b1m \\x7f \\xff\\xfe "
		       "\\xed\\xa0\\x80\n"
		       "unit: trailing newlines dropped\n") == 0,
	   "log lines escape control characters, C1 controls and bytes that are not UTF-8");
}

static void *log_thread(void *arg)
{
	for (int i = 0; i < 100; i++)
		nx_log(NX_LOG_ERR, "thread %ld line %03d %s", (long)(intptr_t)arg, i,
		       "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
	return NULL;
}

/* Lines from concurrent threads come out whole: one write(2) per line. */
static void test_log_threads(void)
{
	int fds[2], saved = dup(2), good = 1, lines = 0;
	pthread_t th[4];
	static char buf[1 << 16];
	size_t len = 0;
	ssize_t n;

	if (pipe(fds) < 0 || saved < 0) {
		ok(0, "pipe");
		return;
	}
	dup2(fds[1], 2);
	for (long i = 0; i < 4; i++)
		pthread_create(&th[i], NULL, log_thread, (void *)(intptr_t)i);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	dup2(saved, 2);
	close(saved);
	close(fds[1]);
	while ((n = read(fds[0], buf + len, sizeof(buf) - 1 - len)) > 0)
		len += (size_t)n;
	close(fds[0]);
	buf[len] = '\0';
	for (char *line = buf, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
		long t;
		int k, used = 0;

		*nl = '\0';
		if (sscanf(line, "unit: thread %ld line %d %*s%n", &t, &k, &used) != 2 ||
		    (size_t)used != strlen(line))
			good = 0;
		lines++;
	}
	ok(good && lines == 400, "400 concurrent log lines intact (%d)", lines);
}

int main(void)
{
	test_sha256();
	test_digest_parse();
	test_base64();
	test_size();
	test_log();
	test_log_escapes();
	test_log_threads();
	return done_testing();
}
