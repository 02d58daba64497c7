/*
 * tests/unit/fetch-ref.c: registry references (good, bad, ports, IPv6,
 * loopback => http), tags and manifest references, and WWW-Authenticate
 * challenge parsing. No network I/O.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "fetch/fetch.h"
#include "fetch/fetch_i.h"
#include "tests/unit/tap.h"

static const struct {
	const char *ref;
	int rc;
	const char *url; /* expected base URL when rc == 0 */
	const char *repo;
} refs[] = {
	{ "127.0.0.1:5000/foo", 0, "http://127.0.0.1:5000", "foo" },
	{ "127.1.2.3:5000/a/b/c", 0, "http://127.1.2.3:5000", "a/b/c" },
	{ "localhost:5000/nix", 0, "http://localhost:5000", "nix" },
	{ "LOCALHOST/nix", 0, "http://LOCALHOST", "nix" },
	{ "[::1]:5000/repo", 0, "http://[::1]:5000", "repo" },
	{ "[::1]/repo", 0, "http://[::1]", "repo" },
	{ "[::ffff:127.0.0.1]:80/repo", 0, "http://[::ffff:127.0.0.1]:80", "repo" },
	{ "[2001:db8::1]:5000/repo", 0, "https://[2001:db8::1]:5000", "repo" },
	{ "ghcr.io/myorg/nix", 0, "https://ghcr.io", "myorg/nix" },
	{ "registry.example.com:443/a-b/c__d/e.f/g--h", 0, "https://registry.example.com:443",
	  "a-b/c__d/e.f/g--h" },
	{ "my-host/x", 0, "https://my-host", "x" },
	{ "128.0.0.1:5000/foo", 0, "https://128.0.0.1:5000", "foo" },
	{ "10.0.0.1/foo", 0, "https://10.0.0.1", "foo" },
	{ "localhost.example.com/foo", 0, "https://localhost.example.com", "foo" },
	{ "h:65535/r", 0, "https://h:65535", "r" },

	{ "", -EINVAL, NULL, NULL },
	{ "foo", -EINVAL, NULL, NULL },
	{ "/foo", -EINVAL, NULL, NULL },
	{ "host/", -EINVAL, NULL, NULL },
	{ "host/Foo", -EINVAL, NULL, NULL },
	{ "host/FOO/bar", -EINVAL, NULL, NULL },
	{ "host/foo/", -EINVAL, NULL, NULL },
	{ "host//foo", -EINVAL, NULL, NULL },
	{ "host/-foo", -EINVAL, NULL, NULL },
	{ "host/foo-", -EINVAL, NULL, NULL },
	{ "host/foo..bar", -EINVAL, NULL, NULL },
	{ "host/foo___bar", -EINVAL, NULL, NULL },
	{ "host/foo.-bar", -EINVAL, NULL, NULL },
	{ "host/foo:tag", -EINVAL, NULL, NULL },
	{ "host/foo@sha256:00", -EINVAL, NULL, NULL },
	{ "host/foo bar", -EINVAL, NULL, NULL },
	{ "host/foo?x=1", -EINVAL, NULL, NULL },
	{ "host/../foo", -EINVAL, NULL, NULL },
	{ "host:0/foo", -EINVAL, NULL, NULL },
	{ "host:65536/foo", -EINVAL, NULL, NULL },
	{ "host:123456/foo", -EINVAL, NULL, NULL },
	{ "host:/foo", -EINVAL, NULL, NULL },
	{ "host:12a/foo", -EINVAL, NULL, NULL },
	{ "-host/foo", -EINVAL, NULL, NULL },
	{ "host-/foo", -EINVAL, NULL, NULL },
	{ "ho_st/foo", -EINVAL, NULL, NULL },
	{ "host..com/foo", -EINVAL, NULL, NULL },
	{ "user@host/foo", -EINVAL, NULL, NULL },
	{ "[::1/foo", -EINVAL, NULL, NULL },
	{ "[::1]x/foo", -EINVAL, NULL, NULL },
	{ "[]:5000/foo", -EINVAL, NULL, NULL },
	{ "[zz::1]:5000/foo", -EINVAL, NULL, NULL },
	{ "::1:5000/foo", -EINVAL, NULL, NULL },
	{ "http://host/foo", -EINVAL, NULL, NULL },
};

static const struct {
	const char *s;
	int tag, mref;
} tags[] = {
	{ "latest", 1, 1 },
	{ "_x", 1, 1 },
	{ "v1.2-3_4", 1, 1 },
	{ "0123456789abcdfghijklmnpqrsvwxyz", 1, 1 },
	{ "", 0, 0 },
	{ ".x", 0, 0 },
	{ "-x", 0, 0 },
	{ "a/b", 0, 0 },
	{ "a?b", 0, 0 },
	{ "a%2f", 0, 0 },
	{ "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", 0, 1 },
	{ "sha256:44136FA355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", 0, 0 },
	{ "sha256:44136fa3", 0, 0 },
	{ "sha512:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", 0, 0 },
};

static int test_open_silent(struct nx_registry **r, const char *ref)
{
	struct nx_regopts o = { 0 };

	return nx_registry_open(r, ref, &o);
}

int main(void)
{
	char long_tag[200], long_repo[400];
	struct nx_challenge c;
	struct nx_registry *r;
	size_t i;

	nx_log_set_level(NX_LOG_ERR - 1); /* the bad references log; keep TAP clean */
	if (nx_fetch_global_init() < 0)
		return 1;

	for (i = 0; i < sizeof(refs) / sizeof(refs[0]); i++) {
		int rc = test_open_silent(&r, refs[i].ref);

		is_int(rc, refs[i].rc, "open \"%s\"", refs[i].ref);
		if (rc == 0) {
			const char *want = refs[i].url;

			ok(strcmp(nx_registry_url(r), want) == 0, "url of %s is %s (got %s)",
			   refs[i].ref, want, nx_registry_url(r));
			ok(strcmp(nx_registry_ref(r), refs[i].ref) == 0, "ref kept");
			nx_registry_close(r);
		}
	}

	/* loopback detection directly */
	ok(nx_host_is_loopback("127.0.0.1"), "127.0.0.1 loopback");
	ok(nx_host_is_loopback("127.255.255.254"), "127.255.255.254 loopback");
	ok(nx_host_is_loopback("::1"), "::1 loopback");
	ok(nx_host_is_loopback("localhost"), "localhost loopback");
	ok(!nx_host_is_loopback("126.0.0.1"), "126.0.0.1 not loopback");
	ok(!nx_host_is_loopback("::2"), "::2 not loopback");
	ok(!nx_host_is_loopback("localhost.localdomain"), "localhost.localdomain not loopback");
	ok(!nx_host_is_loopback("127.0.0.1.nip.io"), "127.0.0.1.nip.io not loopback");

	/* lengths */
	memset(long_repo, 'a', sizeof(long_repo));
	memcpy(long_repo, "h/", 2);
	long_repo[2 + 255] = 0;
	is_int(test_open_silent(&r, long_repo), 0, "255-char repository accepted");
	nx_registry_close(r);
	long_repo[2 + 255] = 'a';
	long_repo[2 + 256] = 0;
	is_int(test_open_silent(&r, long_repo), -EINVAL, "256-char repository refused");

	for (i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
		is_int(nx_tag_valid(tags[i].s), tags[i].tag, "tag \"%s\"", tags[i].s);
		is_int(nx_manifest_ref_valid(tags[i].s), tags[i].mref, "manifest ref \"%s\"",
		       tags[i].s);
	}
	memset(long_tag, 'a', sizeof(long_tag));
	long_tag[128] = 0;
	ok(nx_tag_valid(long_tag), "128-char tag");
	long_tag[128] = 'a';
	long_tag[129] = 0;
	ok(!nx_tag_valid(long_tag), "129-char tag refused");

	/* challenges */
	is_int(nx_challenge_parse("Bearer realm=\"https://auth.docker.io/token\",service="
				  "\"registry.docker.io\",scope=\"repository:samalba/my-app:pull,"
				  "push\"",
				  &c),
	       0, "bearer challenge");
	ok(c.bearer && strcmp(c.realm, "https://auth.docker.io/token") == 0 &&
		   strcmp(c.service, "registry.docker.io") == 0 &&
		   strcmp(c.scope, "repository:samalba/my-app:pull,push") == 0,
	   "bearer fields");
	is_int(nx_challenge_parse("bearer realm=https://a/t, service=\"s\\\"q\"", &c), 0,
	       "token values, escapes, blanks");
	ok(c.bearer && strcmp(c.realm, "https://a/t") == 0 && strcmp(c.service, "s\"q") == 0 &&
		   c.scope[0] == 0,
	   "fields of the second challenge");
	is_int(nx_challenge_parse("Basic realm=\"x\"", &c), 0, "basic challenge");
	ok(!c.bearer, "basic is not bearer");
	is_int(nx_challenge_parse("Bearer service=\"s\"", &c), -EINVAL, "bearer without realm");
	is_int(nx_challenge_parse("Negotiate abc", &c), -EINVAL, "unknown scheme");
	is_int(nx_challenge_parse("Bearer realm=\"unterminated", &c), -EINVAL, "unterminated");

	nx_fetch_global_cleanup();
	return done_testing();
}
