/*
 * fetch/auth.c: answering a registry's 401 challenge.
 *
 * Bearer (distribution's token spec): GET <realm>?service=..&scope=.., with
 * Basic credentials when we have some, else anonymously; the token becomes
 * "Authorization: Bearer .." on every later request to the registry host.
 * Basic: send the stored credentials directly.
 *
 * Credentials come from the first file that has an "auths" entry for
 * HOST[:PORT]: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
 * ~/.config/containers/auth.json, $DOCKER_CONFIG/config.json or
 * ~/.docker/config.json. Credential helpers are not run.
 *
 * Tokens and credentials are secrets: they are never logged, and they are
 * wiped before their memory is freed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fetch/fetch_i.h"

#define NX_TOKEN_BODY_MAX (1u << 20)
#define NX_TOKEN_MAX 16384
#define B64_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="

static void wipe_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

void nx_auth_release(struct nx_auth *a)
{
	wipe_free(a->header);
	wipe_free(a->basic);
	a->header = a->basic = NULL;
}

/* RFC 7235: scheme 1*SP auth-param *( "," auth-param ); values token or quoted */
int nx_challenge_parse(const char *v, struct nx_challenge *c)
{
	const char *p = v;

	memset(c, 0, sizeof(*c));
	if (strncasecmp(p, "bearer", 6) == 0 && (p[6] == ' ' || p[6] == 0)) {
		c->bearer = 1;
		p += 6;
	} else if (strncasecmp(p, "basic", 5) == 0 && (p[5] == ' ' || p[5] == 0)) {
		p += 5;
	} else {
		return -EINVAL;
	}
	while (*p) {
		char key[32], val[1024];
		size_t kn = 0, vn = 0;

		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (!*p)
			break;
		while (*p && *p != '=' && *p != ' ' && *p != ',') {
			if (kn + 1 < sizeof(key))
				key[kn++] = *p;
			p++;
		}
		key[kn] = 0;
		while (*p == ' ')
			p++;
		if (*p != '=')
			return -EINVAL;
		p++;
		while (*p == ' ')
			p++;
		if (*p == '"') {
			p++;
			while (*p && *p != '"') {
				if (*p == '\\' && p[1])
					p++;
				if (vn + 1 >= sizeof(val))
					return -EINVAL;
				val[vn++] = *p++;
			}
			if (*p != '"')
				return -EINVAL;
			p++;
		} else {
			while (*p && *p != ',' && *p != ' ') {
				if (vn + 1 >= sizeof(val))
					return -EINVAL;
				val[vn++] = *p++;
			}
		}
		val[vn] = 0;
		if (strcasecmp(key, "realm") == 0 && vn < sizeof(c->realm))
			memcpy(c->realm, val, vn + 1);
		else if (strcasecmp(key, "service") == 0 && vn < sizeof(c->service))
			memcpy(c->service, val, vn + 1);
		else if (strcasecmp(key, "scope") == 0 && vn < sizeof(c->scope))
			memcpy(c->scope, val, vn + 1);
	}
	if (c->bearer && !c->realm[0])
		return -EINVAL;
	return 0;
}

/* The "auth" value (base64 user:pass) for @hostport in one auth file. */
static char *authfile_lookup(const char *file, const char *hostport)
{
	static const char *const prefixes[] = { "", "https://", "http://" };
	json_t *j, *auths;
	char *out = NULL;
	size_t i;

	j = json_load_file(file, JSON_REJECT_DUPLICATES, NULL);
	if (!j)
		return NULL; /* missing or unreadable: not ours to complain about */
	auths = json_object_get(j, "auths");
	for (i = 0; i < 3 && json_is_object(auths) && !out; i++) {
		const char *key;
		json_t *e, *a;

		json_object_foreach(auths, key, e) {
			size_t pl = strlen(prefixes[i]), hl = strlen(hostport);

			if (strncmp(key, prefixes[i], pl) != 0 ||
			    strncmp(key + pl, hostport, hl) != 0 ||
			    (key[pl + hl] != 0 && key[pl + hl] != '/'))
				continue;
			a = json_object_get(e, "auth");
			if (json_is_string(a) && json_string_length(a) > 0 &&
			    json_string_length(a) < 4096 &&
			    strspn(json_string_value(a), B64_CHARS) == json_string_length(a))
				out = strdup(json_string_value(a));
			break;
		}
	}
	json_decref(j);
	return out;
}

static void creds_load(struct nx_registry *r)
{
	const char *env, *home = getenv("HOME");
	char path[4096];

	r->auth.creds_loaded = 1;
	if ((env = getenv("REGISTRY_AUTH_FILE")) && *env &&
	    (r->auth.basic = authfile_lookup(env, r->id.hostport)))
		return;
	if ((env = getenv("XDG_RUNTIME_DIR")) && *env) {
		snprintf(path, sizeof(path), "%s/containers/auth.json", env);
		if ((r->auth.basic = authfile_lookup(path, r->id.hostport)))
			return;
	}
	if ((env = getenv("XDG_CONFIG_HOME")) && *env)
		snprintf(path, sizeof(path), "%s/containers/auth.json", env);
	else if (home)
		snprintf(path, sizeof(path), "%s/.config/containers/auth.json", home);
	else
		path[0] = 0;
	if (path[0] && (r->auth.basic = authfile_lookup(path, r->id.hostport)))
		return;
	if ((env = getenv("DOCKER_CONFIG")) && *env)
		snprintf(path, sizeof(path), "%s/config.json", env);
	else if (home)
		snprintf(path, sizeof(path), "%s/.docker/config.json", home);
	else
		return;
	r->auth.basic = authfile_lookup(path, r->id.hostport);
}

/* Credentials may travel only over TLS, or to a loopback token server. */
static int realm_safe(const char *realm, int *loopback_http)
{
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL;
	int ok = 0;

	*loopback_http = 0;
	if (!u)
		return 0;
	if (curl_url_set(u, CURLUPART_URL, realm, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
		size_t hl = strlen(host);

		if (hl > 2 && host[0] == '[' && host[hl - 1] == ']') {
			memmove(host, host + 1, hl - 2);
			host[hl - 2] = 0;
		}
		if (strcmp(scheme, "https") == 0)
			ok = 1;
		else if (strcmp(scheme, "http") == 0) {
			*loopback_http = nx_host_is_loopback(host);
			ok = 1;
		}
	}
	curl_free(scheme);
	curl_free(host);
	curl_url_cleanup(u);
	return ok;
}

static int token_fetch(struct nx_registry *r, const struct nx_challenge *c, const char *basic,
		       int push, char **header)
{
	char scope[600], *url = NULL, *esc_svc = NULL, *esc_scope = NULL, *auth = NULL;
	struct nx_req q = { 0 };
	const char *tok;
	json_t *j = NULL, *t;
	int rc, loopback_http;

	*header = NULL;
	if (!realm_safe(c->realm, &loopback_http)) {
		nx_log(NX_LOG_ERR, "registry %s: token realm is not an http(s) url", r->ref);
		return -EACCES;
	}
	if (c->scope[0])
		snprintf(scope, sizeof(scope), "%s", c->scope);
	else
		snprintf(scope, sizeof(scope), "repository:%s:%s", r->id.repo,
			 push ? "pull,push" : "pull");
	esc_svc = curl_easy_escape(NULL, c->service, 0);
	esc_scope = curl_easy_escape(NULL, scope, 0);
	if (!esc_svc || !esc_scope ||
	    asprintf(&url, "%s%cservice=%s&scope=%s", c->realm, strchr(c->realm, '?') ? '&' : '?',
		     esc_svc, esc_scope) < 0) {
		url = NULL;
		rc = -ENOMEM;
		goto out;
	}
	if (basic && (strncmp(c->realm, "https://", 8) == 0 || loopback_http)) {
		if (asprintf(&auth, "Authorization: Basic %s", basic) < 0) {
			auth = NULL;
			rc = -ENOMEM;
			goto out;
		}
	}
	q.method = "GET";
	q.url = url;
	q.what = "token request";
	q.flags = NX_REQ_NO_AUTH | NX_REQ_FOLLOW;
	q.auth_header = auth;
	q.cap = NX_TOKEN_BODY_MAX;
	rc = nx_http_do(r, &q);
	if (rc < 0)
		goto out;
	j = json_loadb(q.body, q.body_len, 0, NULL);
	t = json_object_get(j, "access_token");
	if (!json_is_string(t) || json_string_length(t) == 0)
		t = json_object_get(j, "token");
	tok = json_is_string(t) ? json_string_value(t) : NULL;
	/* the token goes into a header line: no spaces or control bytes */
	if (!tok || !*tok || strlen(tok) > NX_TOKEN_MAX ||
	    strspn(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
			"-._~+/=") != strlen(tok)) {
		nx_log(NX_LOG_ERR, "registry %s: token server answered without a usable token",
		       r->ref);
		rc = -EACCES;
		goto out;
	}
	if (asprintf(header, "Authorization: Bearer %s", tok) < 0) {
		*header = NULL;
		rc = -ENOMEM;
	}
out:
	if (rc < 0 && rc != -ENOMEM)
		rc = -EACCES;
	json_decref(j);
	if (q.body)
		explicit_bzero(q.body, q.body_len);
	nx_req_release(&q);
	wipe_free(auth);
	curl_free(esc_svc);
	curl_free(esc_scope);
	free(url);
	return rc;
}

int nx_auth_answer(struct nx_registry *r, const struct nx_challenge *c, unsigned gen, int push)
{
	char *basic = NULL, *header = NULL;
	int rc, was_basic;

	pthread_mutex_lock(&r->auth.mu);
	if (r->auth.gen != gen) {
		/* another thread answered a challenge meanwhile: use its answer */
		pthread_mutex_unlock(&r->auth.mu);
		return 0;
	}
	if (!r->auth.creds_loaded)
		creds_load(r);
	was_basic = r->auth.header && strncmp(r->auth.header, "Authorization: Basic ", 21) == 0;
	if (r->auth.basic && !(basic = strdup(r->auth.basic))) {
		pthread_mutex_unlock(&r->auth.mu);
		return -ENOMEM;
	}
	pthread_mutex_unlock(&r->auth.mu);

	if (c->bearer) {
		rc = token_fetch(r, c, basic, push, &header);
	} else if (!basic) {
		nx_log(NX_LOG_ERR,
		       "registry %s: authentication required: no credentials for %s "
		       "(docker login / podman login)",
		       r->ref, r->id.hostport);
		rc = -EACCES;
	} else if (was_basic) {
		nx_log(NX_LOG_ERR, "registry %s: credentials for %s were rejected", r->ref,
		       r->id.hostport);
		rc = -EACCES;
	} else if ((strncmp(r->base, "https://", 8) != 0 || atomic_load(&r->plain_http)) &&
		   !r->id.loopback && !r->insecure) {
		nx_log(NX_LOG_ERR, "registry %s: refusing to send credentials over plain http",
		       r->ref);
		rc = -EACCES;
	} else {
		rc = asprintf(&header, "Authorization: Basic %s", basic) < 0 ? -ENOMEM : 0;
		if (rc < 0)
			header = NULL;
	}
	wipe_free(basic);
	if (rc < 0)
		return rc;

	pthread_mutex_lock(&r->auth.mu);
	if (r->auth.gen == gen) {
		wipe_free(r->auth.header);
		r->auth.header = header;
		r->auth.gen++;
		header = NULL;
	}
	pthread_mutex_unlock(&r->auth.mu);
	wipe_free(header);
	return 0;
}
