/*
 * tests/unit/fetch-auth.c: the pure parts of fetch/auth.c: scope keys for
 * the token cache, token lifetimes, the JWT "access" check, and a
 * credential helper run as a real child process.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fetch/fetch_i.h"
#include "tests/unit/tap.h"

/* base64url without padding of @s */
static void b64url(const char *s, char *out)
{
	char *p;

	nx_base64_encode((const uint8_t *)s, strlen(s), out);
	for (p = out; *p; p++)
		*p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
	while (p > out && p[-1] == '=')
		*--p = 0;
}

static void jwt(const char *claims, char *out, size_t cap)
{
	char h[256], c[1024];

	b64url("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", h);
	b64url(claims, c);
	snprintf(out, cap, "%s.%s.c2ln", h, c);
}

int main(void)
{
	char buf[512], tok[2048], dir[] = "/tmp/nixoci-fetch-auth.XXXXXX", path[600];
	char *user = NULL, *secret = NULL, *oldpath;
	FILE *f;

	nx_log_set_level(NX_LOG_ERR - 1);

	ok(nx_scope_normalize("repository:a/b:push,pull", buf, sizeof(buf)) == 0 &&
		   strcmp(buf, "repository:a/b:pull,push") == 0,
	   "actions sorted: %s", buf);
	ok(nx_scope_normalize("repository:z:pull repository:a:pull,pull", buf, sizeof(buf)) == 0 &&
		   strcmp(buf, "repository:a:pull repository:z:pull") == 0,
	   "scopes sorted and actions de-duplicated: %s", buf);
	ok(nx_scope_normalize("registry:catalog:*", buf, sizeof(buf)) == 0 &&
		   strcmp(buf, "registry:catalog:*") == 0,
	   "registry scope kept");
	ok(nx_scope_normalize("repository:host:5000/x:pull", buf, sizeof(buf)) == 0 &&
		   strcmp(buf, "repository:host:5000/x:pull") == 0,
	   "a name with a colon keeps it");

	is_int(nx_token_lifetime(0, NULL, 1000), 60, "no expires_in: 60 s");
	is_int(nx_token_lifetime(300, NULL, 1000), 300, "expires_in honoured");
	is_int(nx_token_lifetime(300, "1970-01-01T00:15:00Z", 1000), 200,
	       "issued_at 100 s ago leaves 200 s");
	is_int(nx_token_lifetime(300, "1970-01-01T00:15:00.123456789Z", 1000), 200,
	       "fractional seconds accepted");
	is_int(nx_token_lifetime(300, "garbage", 1000), 300, "bad issued_at: full lifetime");
	is_int(nx_token_lifetime(300, "1970-01-01T00:00:00Z", 100000), 300,
	       "a skewed clock never makes a token dead on arrival");

	jwt("{\"access\":[{\"type\":\"repository\",\"name\":\"a/b\",\"actions\":[\"pull\","
	    "\"push\"]}]}", tok, sizeof(tok));
	is_int(nx_jwt_grants(tok, "a/b", "push"), 1, "push granted");
	is_int(nx_jwt_grants(tok, "a/c", "push"), 0, "another repository: not granted");
	jwt("{\"access\":[{\"type\":\"repository\",\"name\":\"a/b\",\"actions\":[\"pull\"]}]}",
	    tok, sizeof(tok));
	is_int(nx_jwt_grants(tok, "a/b", "push"), 0, "pull only: push not granted");
	jwt("{\"access\":[]}", tok, sizeof(tok));
	is_int(nx_jwt_grants(tok, "a/b", "pull"), 0, "empty access: nothing granted");
	is_int(nx_jwt_grants("opaque-token", "a/b", "push"), -EINVAL, "opaque token: unknown");

	/* a credential helper: host on stdin, JSON on stdout, never argv */
	if (!mkdtemp(dir))
		skip_all("mkdtemp failed");
	snprintf(path, sizeof(path), "%s/docker-credential-unit", dir);
	f = fopen(path, "w");
	fprintf(f, "#!/bin/sh\n[ \"$1\" = get ] || exit 3\nread -r s\n"
		   "[ \"$s\" = reg.example:5000 ] || { echo credentials not found; exit 1; }\n"
		   "echo '{\"ServerURL\":\"x\",\"Username\":\"bob\",\"Secret\":\"pw\"}'\n");
	fclose(f);
	chmod(path, 0755);
	oldpath = strdup(getenv("PATH"));
	snprintf(path, sizeof(path), "%s:%s", dir, oldpath);
	setenv("PATH", path, 1);
	ok(nx_cred_helper_get("unit", "reg.example:5000", &user, &secret) == 0 && user &&
		   secret && strcmp(user, "bob") == 0 && strcmp(secret, "pw") == 0,
	   "helper answered");
	free(user);
	free(secret);
	is_int(nx_cred_helper_get("unit", "other:1", &user, &secret), -ENOENT,
	       "helper without credentials for the host");
	is_int(nx_cred_helper_get("nonexistent-xyz", "h", &user, &secret), -ENOEXEC,
	       "missing helper");
	is_int(nx_cred_helper_get("../evil", "h", &user, &secret), -EIO, "bad helper name");
	setenv("PATH", oldpath, 1);
	free(oldpath);
	snprintf(path, sizeof(path), "%s/docker-credential-unit", dir);
	unlink(path);
	rmdir(dir);
	return done_testing();
}
