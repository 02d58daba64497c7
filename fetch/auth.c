/*
 * fetch/auth.c: answering a registry's 401 challenge.
 *
 * Bearer (distribution's token spec): GET <realm>?service=..&scope=.., with
 * Basic credentials when we have some, else anonymously (or a POST with an
 * identity token from a credential helper). Tokens are cached per (realm,
 * service, sorted scopes) until shortly before they expire, renewed then and
 * whenever the registry answers 401 to one. Basic: the stored credentials
 * are sent directly.
 *
 * Credentials come from the first of these files that has some for
 * HOST[:PORT]: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
 * ~/.config/containers/auth.json ($XDG_CONFIG_HOME), ~/.docker/config.json
 * ($DOCKER_CONFIG). In each: credHelpers[host] first, then auths[host]
 * (auth = base64 user:password, or identitytoken), then credsStore - the
 * helpers are run as "docker-credential-NAME get" with the host on stdin.
 *
 * Tokens and credentials are secrets: they are never logged, never put in
 * argv, and wiped before their memory is freed.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "fetch/fetch_i.h"

#define NX_TOKEN_BODY_MAX (1u << 20)
#define NX_TOKEN_MAX 16384
#define NX_TOKEN_DEFAULT_LIFETIME 60
#define NX_HELPER_OUT_MAX 65536
#define NX_HELPER_TIMEOUT_MS 10000
#define NX_SECRET_MAX 4096
#define B64_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
#define TOKEN_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/="

extern char **environ;

static void wipe_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

static void token_free(struct nx_token *t)
{
	free(t->key);
	free(t->scope);
	wipe_free(t->header);
	free(t);
}

void nx_auth_release(struct nx_auth *a)
{
	struct nx_token *t, *n;

	for (t = a->tokens; t; t = n) {
		n = t->next;
		token_free(t);
	}
	a->tokens = NULL;
	wipe_free(a->basic_header);
	wipe_free(a->basic);
	wipe_free(a->identity);
	a->basic_header = a->basic = a->identity = NULL;
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
		else if (strcasecmp(key, "error") == 0 && vn < sizeof(c->error))
			memcpy(c->error, val, vn + 1);
	}
	if (c->bearer && !c->realm[0])
		return -EINVAL;
	return 0;
}

/* ------------------------------------------------------------ scopes */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorts and de-duplicates @n strings in place; returns the new count. */
static size_t sort_uniq(char **v, size_t n)
{
	size_t i, k = 0;

	qsort(v, n, sizeof(*v), cmp_str);
	for (i = 0; i < n; i++)
		if (k == 0 || strcmp(v[k - 1], v[i]) != 0)
			v[k++] = v[i];
	return k;
}

int nx_scope_normalize(const char *in, char *out, size_t cap)
{
	char buf[512], items[16][512], *item[16], *save, *tok;
	size_t n = 0, i, used = 0;

	if (strlen(in) >= sizeof(buf))
		return -E2BIG;
	memcpy(buf, in, strlen(in) + 1);
	for (tok = strtok_r(buf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		char *colon = strrchr(tok, ':'), *acts[16], abuf[512], *as, *a;
		size_t na = 0, k, w;

		if (n == 16)
			return -E2BIG;
		if (!colon) {
			snprintf(items[n], sizeof(items[n]), "%s", tok);
		} else {
			/* "repository:name:pull,push": sort the actions */
			snprintf(abuf, sizeof(abuf), "%s", colon + 1);
			for (a = strtok_r(abuf, ",", &as); a && na < 16; a = strtok_r(NULL, ",", &as))
				acts[na++] = a;
			na = sort_uniq(acts, na);
			w = (size_t)snprintf(items[n], sizeof(items[n]), "%.*s:", (int)(colon - tok),
					     tok);
			for (k = 0; k < na && w < sizeof(items[n]); k++)
				w += (size_t)snprintf(items[n] + w, sizeof(items[n]) - w, "%s%s",
						      k ? "," : "", acts[k]);
		}
		item[n] = items[n];
		n++;
	}
	n = sort_uniq(item, n);
	if (cap == 0)
		return -E2BIG;
	out[0] = 0;
	for (i = 0; i < n; i++) {
		size_t l = strlen(item[i]) + (i ? 1 : 0);

		if (used + l + 1 > cap)
			return -E2BIG;
		snprintf(out + used, cap - used, "%s%s", i ? " " : "", item[i]);
		used += l;
	}
	return 0;
}

long nx_token_lifetime(long expires_in, const char *issued_at, long now)
{
	struct tm tm;
	const char *end;
	long life = expires_in > 0 ? expires_in : NX_TOKEN_DEFAULT_LIFETIME, left;

	if (!issued_at || !*issued_at)
		return life;
	memset(&tm, 0, sizeof(tm));
	end = strptime(issued_at, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!end)
		return life;
	/* fractions and a "Z" are fine; an offset other than UTC is trusted
	 * less than our own clock: fall back to the full lifetime */
	while (*end == '.' || (*end >= '0' && *end <= '9'))
		end++;
	if (*end != 'Z' && *end != 0 && strncmp(end, "+00:00", 6) != 0)
		return life;
	left = (long)timegm(&tm) + life - now;
	/* a clock that disagrees with the token server's must not make a
	 * token look immortal or dead on arrival */
	if (left > life)
		return life;
	if (left < 1)
		return life;
	return left;
}

/* The JWT's payload claims, decoded, or NULL. */
static json_t *jwt_claims(const char *tok)
{
	const char *dot1 = strchr(tok, '.'), *dot2;
	char *b64;
	uint8_t *raw;
	size_t n, i;
	ssize_t got;
	json_t *j = NULL;

	if (!dot1 || !(dot2 = strchr(dot1 + 1, '.')))
		return NULL;
	n = (size_t)(dot2 - dot1 - 1);
	if (n == 0 || n > NX_TOKEN_MAX)
		return NULL;
	b64 = strndup(dot1 + 1, n);
	raw = malloc(3 * (n / 4 + 1) + 1);
	if (b64 && raw) {
		/* base64url to base64 */
		for (i = 0; i < n; i++)
			b64[i] = b64[i] == '-' ? '+' : b64[i] == '_' ? '/' : b64[i];
		got = nx_base64_decode(b64, n, raw, 3 * (n / 4 + 1));
		if (got > 0)
			j = json_loadb((const char *)raw, (size_t)got, 0, NULL);
	}
	free(b64);
	free(raw);
	return j;
}

int nx_jwt_grants(const char *tok, const char *repo, const char *action)
{
	json_t *j = jwt_claims(tok), *access, *e, *acts, *a;
	size_t i, k;
	int ok = 0;

	if (!j)
		return -EINVAL;
	access = json_object_get(j, "access");
	if (!access || json_is_null(access)) {
		ok = 0;
	} else if (!json_is_array(access)) {
		ok = -EINVAL;
	} else {
		json_array_foreach(access, i, e) {
			const char *type = json_string_value(json_object_get(e, "type"));
			const char *name = json_string_value(json_object_get(e, "name"));

			if (!type || !name || strcmp(type, "repository") != 0 ||
			    strcmp(name, repo) != 0)
				continue;
			acts = json_object_get(e, "actions");
			json_array_foreach(acts, k, a) {
				const char *s = json_string_value(a);

				if (s && (strcmp(s, action) == 0 || strcmp(s, "*") == 0))
					ok = 1;
			}
		}
	}
	json_decref(j);
	return ok;
}

/* ------------------------------------------------------------ helpers */

static const struct nx_helper_runner *helper_runner;

void nx_cred_helper_set_runner(const struct nx_helper_runner *r)
{
	helper_runner = r;
}

int nx_cred_helper_get(const char *helper, const char *server, char **user, char **secret)
{
	char prog[128], *argv[3], *out = NULL;
	int in_sv[2] = { -1, -1 }, out_p[2] = { -1, -1 }, status = 0, rc;
	posix_spawn_file_actions_t fa;
	size_t len = 0, slen = strlen(server);
	uint64_t deadline = nx_now_ns() + (uint64_t)NX_HELPER_TIMEOUT_MS * 1000000ull;
	json_t *j = NULL;
	const char *u, *s;
	pid_t pid = -1;
	long handle = 0;

	*user = *secret = NULL;
	/* the name comes from a config file: it must stay a program name */
	if (!*helper || strlen(helper) > 64 || strspn(helper, "abcdefghijklmnopqrstuvwxyz"
			     "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != strlen(helper)) {
		nx_log(NX_LOG_ERR, "credential helper name \"%.64s\" is not valid", helper);
		return -EIO;
	}
	snprintf(prog, sizeof(prog), "docker-credential-%s", helper);
	argv[0] = prog;
	argv[1] = (char *)"get";
	argv[2] = NULL;
	/* a socket for stdin: writing to a helper that exited must not raise
	 * SIGPIPE in a daemon (send() takes MSG_NOSIGNAL, write() on a pipe
	 * has no such flag) */
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in_sv) < 0 ||
	    pipe2(out_p, O_CLOEXEC) < 0) {
		rc = -errno;
		nx_log(NX_LOG_ERR, "credential helper %s: %s", prog, strerror(errno));
		goto out;
	}
	out = malloc(NX_HELPER_OUT_MAX + 1);
	if (!out || posix_spawn_file_actions_init(&fa) != 0) {
		rc = -ENOMEM;
		goto out;
	}
	posix_spawn_file_actions_adddup2(&fa, in_sv[1], 0);
	posix_spawn_file_actions_adddup2(&fa, out_p[1], 1);
	posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	/* the helper gets stdin, stdout, stderr and nothing else, even a
	 * descriptor some library opened without close-on-exec (every one of
	 * ours has it: the cache's files, sockets, pipes) */
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
	if (helper_runner)
		rc = helper_runner->start(prog, in_sv[1], out_p[1], &handle);
	else
		rc = posix_spawnp(&pid, prog, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(in_sv[1]);
	close(out_p[1]);
	in_sv[1] = out_p[1] = -1;
	if (rc != 0) {
		if (rc == ENOENT || rc == EACCES) {
			nx_log(NX_LOG_ERR,
			       "credential helper %s not found in PATH: install it or remove "
			       "\"%s\" from credHelpers/credsStore",
			       prog, helper);
			rc = -ENOEXEC;
		} else {
			nx_log(NX_LOG_ERR, "credential helper %s: cannot run it: %s", prog,
			       strerror(rc));
			rc = -EIO;
		}
		goto out;
	}
	/* the server on stdin, then EOF; a short helper output is read below */
	if (send(in_sv[0], server, slen, MSG_NOSIGNAL) < 0 && errno != EPIPE)
		nx_log(NX_LOG_DEBUG, "credential helper %s: writing stdin: %s", prog,
		       strerror(errno));
	close(in_sv[0]);
	in_sv[0] = -1;
	rc = 0;
	for (;;) {
		struct pollfd pf = { out_p[0], POLLIN, 0 };
		uint64_t now = nx_now_ns();
		ssize_t n;
		int pr;

		if (now >= deadline) {
			rc = -ETIMEDOUT;
			break;
		}
		pr = poll(&pf, 1, (int)((deadline - now) / 1000000) + 1);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr <= 0) {
			rc = pr < 0 ? -errno : -ETIMEDOUT;
			break;
		}
		n = read(out_p[0], out + len, NX_HELPER_OUT_MAX - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		if (len == NX_HELPER_OUT_MAX) {
			rc = -E2BIG;
			break;
		}
	}
	out[len] = 0;
	if (helper_runner) {
		if (helper_runner->finish(handle, rc < 0, &status) < 0)
			status = 1 << 8; /* the runner lost it: as an exit status of 1 */
	} else {
		if (rc < 0)
			kill(pid, SIGKILL);
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
	}
	if (rc == -ETIMEDOUT) {
		nx_log(NX_LOG_ERR, "credential helper %s: no answer within %d s", prog,
		       NX_HELPER_TIMEOUT_MS / 1000);
		rc = -EIO;
		goto out;
	}
	if (rc < 0) {
		nx_log(NX_LOG_ERR, "credential helper %s: output unreadable or too long", prog);
		rc = -EIO;
		goto out;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		/* docker's helpers say so on stdout; the text is not a secret */
		if (strstr(out, "credentials not found") || strstr(out, "not found")) {
			rc = -ENOENT;
			goto out;
		}
		out[strcspn(out, "\r\n")] = 0;
		nx_log(NX_LOG_ERR, "credential helper %s failed for %s: %.200s", prog, server,
		       out[0] ? out : "no message");
		rc = -EIO;
		goto out;
	}
	j = json_loadb(out, len, 0, NULL);
	u = json_string_value(json_object_get(j, "Username"));
	s = json_string_value(json_object_get(j, "Secret"));
	if (!u || !s || !*s || strlen(u) > NX_SECRET_MAX || strlen(s) > NX_SECRET_MAX) {
		nx_log(NX_LOG_ERR, "credential helper %s: answer for %s is not "
		       "{\"Username\", \"Secret\"} json", prog, server);
		rc = -EIO;
		goto out;
	}
	*user = strdup(u);
	*secret = strdup(s);
	if (!*user || !*secret) {
		wipe_free(*user);
		wipe_free(*secret);
		*user = *secret = NULL;
		rc = -ENOMEM;
	}
out:
	if (j) {
		/* jansson keeps its own copies of the strings: wipe them too */
		json_t *v = json_object_get(j, "Secret");

		if (json_is_string(v))
			explicit_bzero((char *)json_string_value(v), json_string_length(v));
		json_decref(j);
	}
	if (out) {
		explicit_bzero(out, NX_HELPER_OUT_MAX + 1);
		free(out);
	}
	if (in_sv[0] >= 0)
		close(in_sv[0]);
	if (in_sv[1] >= 0)
		close(in_sv[1]);
	if (out_p[0] >= 0)
		close(out_p[0]);
	if (out_p[1] >= 0)
		close(out_p[1]);
	return rc;
}

/* ------------------------------------------------------------ credential files */

/* Stores user:secret (or an identity token for user "<token>") in @a. */
static int creds_set(struct nx_auth *a, const char *user, const char *secret, const char *src)
{
	size_t ul = strlen(user), sl = strlen(secret);
	char *plain;

	snprintf(a->creds_src, sizeof(a->creds_src), "%s", src);
	if (strcmp(user, "<token>") == 0) {
		a->identity = strdup(secret);
		return a->identity ? 0 : -ENOMEM;
	}
	plain = malloc(ul + sl + 2);
	a->basic = malloc(4 * ((ul + sl + 1 + 2) / 3) + 1);
	if (!plain || !a->basic) {
		free(plain);
		free(a->basic);
		a->basic = NULL;
		return -ENOMEM;
	}
	memcpy(plain, user, ul);
	plain[ul] = ':';
	memcpy(plain + ul + 1, secret, sl + 1);
	nx_base64_encode((const uint8_t *)plain, ul + sl + 1, a->basic);
	explicit_bzero(plain, ul + sl + 1);
	free(plain);
	return 0;
}

/* The entry of @obj whose key is @hostport, "https://hostport[/..]" or
 * "http://hostport[/..]". */
static json_t *host_entry(json_t *obj, const char *hostport)
{
	static const char *const prefixes[] = { "", "https://", "http://" };
	size_t i, hl = strlen(hostport);

	for (i = 0; i < 3 && json_is_object(obj); i++) {
		const char *key;
		json_t *e;

		json_object_foreach(obj, key, e) {
			size_t pl = strlen(prefixes[i]);

			if (strncmp(key, prefixes[i], pl) == 0 &&
			    strncmp(key + pl, hostport, hl) == 0 &&
			    (key[pl + hl] == 0 || key[pl + hl] == '/'))
				return e;
		}
	}
	return NULL;
}

static int helper_creds(struct nx_auth *a, const char *helper, const char *hostport,
			const char *file)
{
	char *user = NULL, *secret = NULL, src[320];
	int rc;

	rc = nx_cred_helper_get(helper, hostport, &user, &secret);
	if (rc < 0)
		return rc;
	snprintf(src, sizeof(src), "docker-credential-%s (%s)", helper, file);
	rc = creds_set(a, user, secret, src);
	wipe_free(user);
	wipe_free(secret);
	return rc < 0 ? rc : 1;
}

/* 1 when @file had credentials for @hostport (now in @a), 0 when not. */
static int authfile_lookup(struct nx_auth *a, const char *file, const char *hostport)
{
	json_t *j, *e, *v;
	int rc = 0;

	j = json_load_file(file, JSON_REJECT_DUPLICATES, NULL);
	if (!j)
		return 0; /* missing or unreadable: not ours to complain about */
	v = json_string_value(host_entry(json_object_get(j, "credHelpers"), hostport)) ?
		    host_entry(json_object_get(j, "credHelpers"), hostport) :
		    NULL;
	if (v) {
		rc = helper_creds(a, json_string_value(v), hostport, file);
		if (rc != 0)
			goto out;
	}
	e = host_entry(json_object_get(j, "auths"), hostport);
	v = json_object_get(e, "auth");
	if (json_is_string(v) && json_string_length(v) > 0 &&
	    json_string_length(v) < NX_SECRET_MAX &&
	    strspn(json_string_value(v), B64_CHARS) == json_string_length(v)) {
		a->basic = strdup(json_string_value(v));
		snprintf(a->creds_src, sizeof(a->creds_src), "%s", file);
		rc = a->basic ? 1 : -ENOMEM;
		goto out;
	}
	v = json_object_get(e, "identitytoken");
	if (json_is_string(v) && json_string_length(v) > 0 &&
	    json_string_length(v) < NX_TOKEN_MAX) {
		rc = creds_set(a, "<token>", json_string_value(v), file);
		rc = rc < 0 ? rc : 1;
		goto out;
	}
	v = json_object_get(j, "credsStore");
	if (json_is_string(v) && json_string_length(v) > 0)
		rc = helper_creds(a, json_string_value(v), hostport, file);
out:
	json_decref(j);
	/* a helper that has nothing for this host: look further */
	return rc == -ENOENT ? 0 : rc;
}

/* Called with fetch_mu held. */
static void creds_load(struct nx_registry *r)
{
	const char *env, *home = getenv("HOME");
	const char *hp = r->id.hostport;
	struct nx_auth *a = &r->auth;
	char path[4096];

	a->creds_loaded = 1;
	if ((env = getenv("REGISTRY_AUTH_FILE")) && *env && authfile_lookup(a, env, hp))
		return;
	if ((env = getenv("XDG_RUNTIME_DIR")) && *env) {
		snprintf(path, sizeof(path), "%s/containers/auth.json", env);
		if (authfile_lookup(a, path, hp))
			return;
	}
	if ((env = getenv("XDG_CONFIG_HOME")) && *env)
		snprintf(path, sizeof(path), "%s/containers/auth.json", env);
	else if (home)
		snprintf(path, sizeof(path), "%s/.config/containers/auth.json", home);
	else
		path[0] = 0;
	if (path[0] && authfile_lookup(a, path, hp))
		return;
	if ((env = getenv("DOCKER_CONFIG")) && *env)
		snprintf(path, sizeof(path), "%s/config.json", env);
	else if (home)
		snprintf(path, sizeof(path), "%s/.docker/config.json", home);
	else
		return;
	authfile_lookup(a, path, hp);
}

static void log_missing(struct nx_registry *r, const char *what)
{
	nx_log(NX_LOG_ERR,
	       "registry %s: %scredentials missing for %s: run `docker login %s` or set "
	       "REGISTRY_AUTH_FILE",
	       r->ref, what, r->id.hostport, r->id.hostport);
}

static void log_rejected(struct nx_registry *r, const char *by)
{
	nx_log(NX_LOG_ERR,
	       "registry %s: credentials rejected%s for %s (from %s): run `docker login %s` "
	       "or set REGISTRY_AUTH_FILE",
	       r->ref, by, r->id.hostport, r->auth.creds_src, r->id.hostport);
}

void nx_auth_log_rejected(struct nx_registry *r, int level)
{
	int have;

	/* the credentials are written under fetch_mu, once */
	pthread_mutex_lock(&r->auth.fetch_mu);
	have = r->auth.basic || r->auth.identity;
	pthread_mutex_unlock(&r->auth.fetch_mu);
	if (level != NX_LOG_ERR)
		nx_log(level, "registry %s: credentials missing or rejected for %s", r->ref,
		       r->id.hostport);
	else if (have)
		log_rejected(r, "");
	else
		log_missing(r, "");
}

/* ------------------------------------------------------------ tokens */

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

static void default_scope(const struct nx_registry *r, int push, char *out, size_t cap)
{
	if (push && r->mount_src[0])
		snprintf(out, cap, "repository:%s:pull,push repository:%s:pull", r->id.repo,
			 r->mount_src);
	else
		snprintf(out, cap, "repository:%s:%s", r->id.repo, push ? "pull,push" : "pull");
}

static char *token_key(const char *realm, const char *service, const char *scope)
{
	char norm[512], *k;

	if (nx_scope_normalize(scope, norm, sizeof(norm)) < 0)
		snprintf(norm, sizeof(norm), "%s", scope);
	if (asprintf(&k, "%s\n%s\n%s", realm, service, norm) < 0)
		return NULL;
	return k;
}

/* Called with auth.mu held. */
static struct nx_token *token_find(struct nx_auth *a, const char *key)
{
	struct nx_token *t;

	for (t = a->tokens; t; t = t->next)
		if (strcmp(t->key, key) == 0)
			return t;
	return NULL;
}

/* Called with auth.mu held. */
static void token_drop(struct nx_auth *a, const char *key)
{
	struct nx_token **pp, *t;

	for (pp = &a->tokens; (t = *pp); pp = &t->next) {
		if (strcmp(t->key, key) == 0) {
			*pp = t->next;
			token_free(t);
			return;
		}
	}
}

/* The token request itself. *tok (caller wipes and frees) and its lifetime. */
static int token_request(struct nx_registry *r, const char *realm, const char *service,
			 const char *scope, int push, char **tok_out, long *life)
{
	char *url = NULL, *esc_svc = NULL, *esc_scope = NULL, *auth = NULL, *form = NULL;
	char *esc_id = NULL;
	struct nx_req q = { 0 };
	const char *tok, *issued;
	json_t *j = NULL, *t;
	int rc, loopback_http, secure, have_creds;
	long expires_in = 0;

	*tok_out = NULL;
	if (!realm_safe(realm, &loopback_http)) {
		nx_log(NX_LOG_ERR, "registry %s: token realm is not an http(s) url", r->ref);
		return -EACCES;
	}
	secure = strncmp(realm, "https://", 8) == 0 || loopback_http;
	esc_svc = curl_easy_escape(NULL, service, 0);
	esc_scope = curl_easy_escape(NULL, scope, 0);
	if (!esc_svc || !esc_scope) {
		rc = -ENOMEM;
		goto out;
	}
	have_creds = secure && (r->auth.basic || r->auth.identity);
	if (secure && r->auth.identity) {
		/* an identity token is an OAuth2 refresh token: POST the form */
		esc_id = curl_easy_escape(NULL, r->auth.identity, 0);
		if (!esc_id || asprintf(&form,
					"grant_type=refresh_token&client_id=nixoci&service=%s&"
					"scope=%s&refresh_token=%s",
					esc_svc, esc_scope, esc_id) < 0) {
			form = NULL;
			rc = -ENOMEM;
			goto out;
		}
		url = strdup(realm);
	} else if (asprintf(&url, "%s%cservice=%s&scope=%s", realm,
			    strchr(realm, '?') ? '&' : '?', esc_svc, esc_scope) < 0) {
		url = NULL;
	}
	if (!url) {
		rc = -ENOMEM;
		goto out;
	}
	if (secure && r->auth.basic && !form &&
	    asprintf(&auth, "Authorization: Basic %s", r->auth.basic) < 0) {
		auth = NULL;
		rc = -ENOMEM;
		goto out;
	}
	q.method = form ? "POST" : "GET";
	q.url = url;
	q.what = "token request";
	q.flags = NX_REQ_NO_AUTH | NX_REQ_FOLLOW | NX_REQ_QUIET;
	q.auth_header = auth;
	q.post_body = form;
	q.content_type = form ? "application/x-www-form-urlencoded" : NULL;
	q.cap = NX_TOKEN_BODY_MAX;
	pthread_mutex_lock(&r->auth.mu);
	r->auth.token_requests++;
	pthread_mutex_unlock(&r->auth.mu);
	rc = nx_http_do(r, &q);
	if (rc < 0) {
		if (q.status == 401 || q.status == 403) {
			if (have_creds)
				log_rejected(r, " by the token server");
			else
				log_missing(r, "token server refused anonymous access: ");
		} else if (q.status) {
			nx_log(NX_LOG_ERR, "registry %s: token server %.200s answered %ld", r->ref,
			       realm, q.status);
		} else {
			nx_log(NX_LOG_ERR, "registry %s: token server %.200s: %s", r->ref, realm,
			       strerror(-rc));
		}
		goto out;
	}
	j = json_loadb(q.body, q.body_len, 0, NULL);
	t = json_object_get(j, "access_token");
	if (!json_is_string(t) || json_string_length(t) == 0)
		t = json_object_get(j, "token");
	tok = json_is_string(t) ? json_string_value(t) : NULL;
	/* the token goes into a header line: no spaces or control bytes */
	if (!tok || !*tok || strlen(tok) > NX_TOKEN_MAX ||
	    strspn(tok, TOKEN_CHARS) != strlen(tok)) {
		nx_log(NX_LOG_ERR, "registry %s: token server answered without a usable token",
		       r->ref);
		rc = -EACCES;
		goto out;
	}
	if (push && nx_jwt_grants(tok, r->id.repo, "push") == 0) {
		if (have_creds)
			nx_log(NX_LOG_ERR,
			       "registry %s: permission denied: the credentials for %s (from %s) "
			       "do not allow pushing to %s",
			       r->ref, r->id.hostport, r->auth.creds_src, r->id.repo);
		else
			log_missing(r, "push needs credentials: ");
		rc = -EACCES;
		goto out;
	}
	if (json_is_integer(json_object_get(j, "expires_in")))
		expires_in = (long)json_integer_value(json_object_get(j, "expires_in"));
	issued = json_string_value(json_object_get(j, "issued_at"));
	*life = nx_token_lifetime(expires_in, issued, (long)time(NULL));
	*tok_out = strdup(tok);
	rc = *tok_out ? 0 : -ENOMEM;
out:
	if (rc < 0 && rc != -ENOMEM)
		rc = -EACCES;
	if (j) {
		t = json_object_get(j, "access_token");
		if (json_is_string(t))
			explicit_bzero((char *)json_string_value(t), json_string_length(t));
		t = json_object_get(j, "token");
		if (json_is_string(t))
			explicit_bzero((char *)json_string_value(t), json_string_length(t));
		json_decref(j);
	}
	if (q.body)
		explicit_bzero(q.body, q.body_len);
	nx_req_release(&q);
	wipe_free(auth);
	wipe_free(form);
	if (esc_id) {
		explicit_bzero(esc_id, strlen(esc_id));
		curl_free(esc_id);
	}
	curl_free(esc_svc);
	curl_free(esc_scope);
	free(url);
	return rc;
}

/*
 * Makes sure a fresh token for requests of scope @key_scope is cached,
 * asking the token server for @req_scope (the challenge's words, or
 * @key_scope; NULL: what the entry asked last time). Called with fetch_mu
 * held, so only one thread asks the token server; @stale is the serial a
 * 401 was answered to (0: none), which must not be kept.
 */
static int token_ensure(struct nx_registry *r, const char *realm, const char *service,
			const char *key_scope, const char *req_scope, int push, unsigned stale)
{
	struct nx_auth *a = &r->auth;
	struct nx_token *t;
	char *key, *tok = NULL, *ask;
	long life = 0;
	uint64_t margin;
	int rc;

	key = token_key(realm, service, key_scope);
	if (!key)
		return -ENOMEM;
	pthread_mutex_lock(&a->mu);
	t = token_find(a, key);
	if (t && t->serial != stale && nx_now_ns() < t->renew) {
		/* another thread renewed it while we waited for fetch_mu */
		pthread_mutex_unlock(&a->mu);
		free(key);
		return 0;
	}
	ask = strdup(req_scope ? req_scope : t ? t->scope : key_scope);
	pthread_mutex_unlock(&a->mu);
	if (!ask) {
		free(key);
		return -ENOMEM;
	}

	rc = token_request(r, realm, service, ask, push, &tok, &life);
	if (rc < 0) {
		free(ask);
		free(key);
		return rc;
	}
	t = calloc(1, sizeof(*t));
	if (!t || asprintf(&t->header, "Authorization: Bearer %s", tok) < 0) {
		free(t);
		wipe_free(tok);
		free(ask);
		free(key);
		return -ENOMEM;
	}
	wipe_free(tok);
	t->key = key;
	t->scope = ask;
	t->push = push;
	/* renew a little early so a token does not expire in flight */
	margin = (uint64_t)life * 1000000000ull / 10;
	if (margin > 10000000000ull)
		margin = 10000000000ull;
	t->renew = nx_now_ns() + (uint64_t)life * 1000000000ull - margin;
	pthread_mutex_lock(&a->mu);
	token_drop(a, key);
	t->serial = ++a->serial;
	t->next = a->tokens;
	a->tokens = t;
	pthread_mutex_unlock(&a->mu);
	nx_log(NX_LOG_DEBUG, "registry %s: new token for %s, renewed in %ld s", r->ref, ask,
	       life);
	return 0;
}

int nx_auth_header(struct nx_registry *r, int push, char **header, unsigned *serial)
{
	struct nx_auth *a = &r->auth;
	char scope[NX_SCOPE_MAX], realm[sizeof(a->realm)], service[sizeof(a->service)];
	char *key = NULL, *key2 = NULL;
	struct nx_token *t;
	int rc = 0, renew = 0;

	*header = NULL;
	*serial = 0;
	pthread_mutex_lock(&a->mu);
	if (a->mode == NX_AUTH_BASIC && a->basic_header) {
		*header = strdup(a->basic_header);
		*serial = a->basic_serial;
		pthread_mutex_unlock(&a->mu);
		return *header ? 0 : -ENOMEM;
	}
	if (a->mode != NX_AUTH_BEARER) {
		pthread_mutex_unlock(&a->mu);
		return 0;
	}
	memcpy(realm, a->realm, sizeof(realm));
	memcpy(service, a->service, sizeof(service));
	pthread_mutex_unlock(&a->mu);

	default_scope(r, push, scope, sizeof(scope));
	key = token_key(realm, service, scope);
	if (!key)
		return -ENOMEM;
	if (!push) {
		/* a pull,push token serves reads too */
		char both[sizeof(scope)];

		default_scope(r, 1, both, sizeof(both));
		key2 = token_key(realm, service, both);
	}
	for (;;) {
		uint64_t now = nx_now_ns();

		pthread_mutex_lock(&a->mu);
		t = token_find(a, key);
		if ((!t || now >= t->renew) && key2) {
			struct nx_token *t2 = token_find(a, key2);

			if (t2 && now < t2->renew)
				t = t2;
		}
		if (t && now < t->renew) {
			*header = strdup(t->header);
			*serial = t->serial;
			rc = *header ? 0 : -ENOMEM;
			pthread_mutex_unlock(&a->mu);
			break;
		}
		pthread_mutex_unlock(&a->mu);
		if (renew) {
			/* the renewal failed (and was logged): let the registry say */
			break;
		}
		/* expired, or this scope never asked for: get one before the
		 * request instead of after its 401 */
		renew = 1;
		pthread_mutex_lock(&a->fetch_mu);
		rc = token_ensure(r, realm, service, scope, NULL, push, 0);
		pthread_mutex_unlock(&a->fetch_mu);
		if (rc < 0)
			break;
	}
	free(key);
	free(key2);
	return rc;
}

int nx_auth_answer(struct nx_registry *r, const struct nx_challenge *c, unsigned serial, int push)
{
	struct nx_auth *a = &r->auth;
	char scope[sizeof(c->scope) + NX_SCOPE_MAX], *header = NULL;
	int rc;

	pthread_mutex_lock(&a->fetch_mu);
	if (!a->creds_loaded)
		creds_load(r);

	if (c->bearer) {
		char def[NX_SCOPE_MAX], src[NX_REPO_MAX + 16];

		default_scope(r, push, def, sizeof(def));
		snprintf(src, sizeof(src), "repository:%s:", r->mount_src);
		if (!c->scope[0] || (push && !strstr(c->scope, "push")))
			/* a pull scope in the challenge of a push request is not enough */
			snprintf(scope, sizeof(scope), "%s", def);
		else if (push && r->mount_src[0] && !strstr(c->scope, src))
			/* the challenge's words and the mount source, as the
			 * cache key (def) promises */
			snprintf(scope, sizeof(scope), "%s %spull", c->scope, src);
		else
			snprintf(scope, sizeof(scope), "%s", c->scope);
		pthread_mutex_lock(&a->mu);
		a->mode = NX_AUTH_BEARER;
		snprintf(a->realm, sizeof(a->realm), "%s", c->realm);
		snprintf(a->service, sizeof(a->service), "%s", c->service);
		pthread_mutex_unlock(&a->mu);
		/* cached under the scope of our requests, asked in the words of
		 * the challenge */
		rc = token_ensure(r, c->realm, c->service, def, scope, push, serial);
		pthread_mutex_unlock(&a->fetch_mu);
		return rc;
	}

	pthread_mutex_lock(&a->mu);
	if (a->mode == NX_AUTH_BASIC && a->basic_header && a->basic_serial != serial) {
		/* another thread answered meanwhile: use its answer */
		pthread_mutex_unlock(&a->mu);
		pthread_mutex_unlock(&a->fetch_mu);
		return 0;
	}
	pthread_mutex_unlock(&a->mu);
	if (!a->basic) {
		log_missing(r, "");
		rc = -EACCES;
	} else if (serial) {
		log_rejected(r, "");
		rc = -EACCES;
	} else if (!r->tls && !r->id.loopback && !r->insecure) {
		nx_log(NX_LOG_ERR, "registry %s: refusing to send credentials over plain http",
		       r->ref);
		rc = -EACCES;
	} else {
		rc = asprintf(&header, "Authorization: Basic %s", a->basic) < 0 ? -ENOMEM : 0;
		if (rc < 0)
			header = NULL;
	}
	if (rc == 0) {
		pthread_mutex_lock(&a->mu);
		wipe_free(a->basic_header);
		a->basic_header = header;
		a->basic_serial = ++a->serial;
		a->mode = NX_AUTH_BASIC;
		pthread_mutex_unlock(&a->mu);
	}
	pthread_mutex_unlock(&a->fetch_mu);
	return rc;
}
