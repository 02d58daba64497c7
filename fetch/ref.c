/*
 * fetch/ref.c: "HOST[:PORT]/REPO" references, tags and manifest references.
 *
 * Everything that ends up in a URL path passes one of these checks first,
 * so a reference can never smuggle "..", "?", "#" or "%" into a request.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "fetch/fetch_i.h"

static int is_lower_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int is_alnum(char c)
{
	return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

/*
 * One path component: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*  (distribution's
 * grammar): separators sit between alphanumerics, "__" is the only doubled
 * one besides runs of '-'.
 */
static int repo_component_valid(const char *s, size_t n)
{
	size_t i = 0;

	for (;;) {
		size_t run = 0;

		while (i < n && is_lower_alnum(s[i])) {
			i++;
			run++;
		}
		if (run == 0)
			return 0;
		if (i == n)
			return 1;
		if (s[i] == '.') {
			i++;
		} else if (s[i] == '_') {
			i++;
			if (i < n && s[i] == '_')
				i++;
		} else if (s[i] == '-') {
			while (i < n && s[i] == '-')
				i++;
		} else {
			return 0;
		}
	}
}

int nx_repo_valid(const char *s)
{
	size_t n = strlen(s);
	const char *p = s;

	if (n == 0 || n > NX_REPO_MAX)
		return 0;
	for (;;) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);

		if (!repo_component_valid(p, len))
			return 0;
		if (!slash)
			return 1;
		p = slash + 1;
	}
}

/* Domain components: [a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9], dot-separated. */
static int hostname_valid(const char *s, size_t n)
{
	size_t i = 0;

	if (n == 0 || n > 253)
		return 0;
	for (;;) {
		size_t start = i;

		while (i < n && (is_alnum(s[i]) || s[i] == '-'))
			i++;
		if (i == start || s[start] == '-' || s[i - 1] == '-')
			return 0;
		if (i == n)
			return 1;
		if (s[i] != '.')
			return 0;
		i++;
	}
}

int nx_host_is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;

	if (strcasecmp(host, "localhost") == 0)
		return 1;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1) {
		if (IN6_IS_ADDR_LOOPBACK(&a6))
			return 1;
		return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
	}
	return 0;
}

int nx_ref_parse(const char *s, struct nx_ref *out)
{
	const char *slash, *hp_end, *port = NULL;
	size_t hlen;

	memset(out, 0, sizeof(*out));
	/* an explicit scheme: how a TLS registry on loopback is addressed */
	if (strncmp(s, "https://", 8) == 0) {
		out->scheme = NX_SCHEME_HTTPS;
		s += 8;
	} else if (strncmp(s, "http://", 7) == 0) {
		out->scheme = NX_SCHEME_HTTP;
		s += 7;
	}
	slash = strchr(s, '/');
	if (!slash || slash == s)
		return -EINVAL;
	hp_end = slash;
	if ((size_t)(hp_end - s) >= sizeof(out->hostport))
		return -EINVAL;

	if (s[0] == '[') {
		const char *rb = memchr(s, ']', (size_t)(hp_end - s));
		struct in6_addr a6;

		if (!rb)
			return -EINVAL;
		hlen = (size_t)(rb - s - 1);
		if (hlen == 0 || hlen >= sizeof(out->host))
			return -EINVAL;
		memcpy(out->host, s + 1, hlen);
		out->host[hlen] = 0;
		if (inet_pton(AF_INET6, out->host, &a6) != 1)
			return -EINVAL;
		if (rb + 1 < hp_end) {
			if (rb[1] != ':')
				return -EINVAL;
			port = rb + 2;
		}
	} else {
		const char *colon = memchr(s, ':', (size_t)(hp_end - s));

		hlen = (size_t)((colon ? colon : hp_end) - s);
		if (!hostname_valid(s, hlen))
			return -EINVAL;
		memcpy(out->host, s, hlen);
		out->host[hlen] = 0;
		if (colon)
			port = colon + 1;
	}
	if (port) {
		unsigned long v = 0;
		const char *p;

		if (port == hp_end || hp_end - port > 5)
			return -EINVAL;
		for (p = port; p < hp_end; p++) {
			if (*p < '0' || *p > '9')
				return -EINVAL;
			v = v * 10 + (unsigned long)(*p - '0');
		}
		if (v == 0 || v > 65535)
			return -EINVAL;
		out->port = (unsigned)v;
	}
	memcpy(out->hostport, s, (size_t)(hp_end - s));
	out->hostport[hp_end - s] = 0;

	if (!nx_repo_valid(slash + 1))
		return -EINVAL;
	memcpy(out->repo, slash + 1, strlen(slash + 1) + 1);
	out->loopback = nx_host_is_loopback(out->host);
	return 0;
}

int nx_tag_valid(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0 || n > NX_TAG_MAX)
		return 0;
	if (!is_alnum(s[0]) && s[0] != '_')
		return 0;
	for (i = 1; i < n; i++)
		if (!is_alnum(s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
			return 0;
	return 1;
}

int nx_manifest_ref_valid(const char *s)
{
	uint8_t d[NX_SHA256_LEN];

	if (strchr(s, ':'))
		return nx_digest_parse(s, d) == 0;
	return nx_tag_valid(s);
}
