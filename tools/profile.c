/*
 * tools/profile.c: `nixoci profile push` publishes a startup profile
 * (docs/format.md §5.2) that a nixoci-fs mount recorded with
 * -o profile_record=FILE, as an OCI artifact whose subject is the closure
 * index, and lists it where a mount with -o profile= looks: the registry's
 * referrers API when it has one, else the distribution spec's tag fallback
 * `sha256-<hex of the closure index digest>` (an image index of referrers,
 * which this command reads, extends and writes back; two pushes at the same
 * moment may lose one of the two entries, never corrupt the index).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tools/tools_i.h"

static const char usage_profile[] =
	"usage: nixoci profile push [--name NAME] REGISTRY/REPO CLOSURE FILE\n"
	"\n"
	"Pushes the startup profile FILE (written by a nixoci-fs mount with\n"
	"-o profile_record=FILE) for the closure index CLOSURE (a tag or sha256:<hex>),\n"
	"as an OCI artifact whose subject is that index. A mount with\n"
	"-o closure=CLOSURE,profile=NAME (or profile=auto, the newest) prefetches\n"
	"its frames. A profile of the same NAME replaces the one listed before.\n"
	"\n"
	"  --name NAME    the profile's name (default: default)\n";

static int read_file(const char *path, char **buf, size_t *len)
{
	struct stat sb;
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		rc = -EINVAL;
		goto out;
	}
	if ((uint64_t)sb.st_size > NX_PROFILE_MAX_BYTES) {
		rc = -EFBIG;
		goto out;
	}
	*len = (size_t)sb.st_size;
	*buf = malloc(*len + 1);
	if (!*buf) {
		rc = -ENOMEM;
		goto out;
	}
	rc = nx_pread_all(fd, *buf, *len, 0);
	if (rc < 0) {
		free(*buf);
		*buf = NULL;
	}
out:
	close(fd);
	return rc;
}

static int name_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 128 || strcmp(s, "auto") == 0)
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' || *s == '.'))
			return 0;
	return 1;
}

static int push_blob(struct nx_registry *reg, const uint8_t d[NX_SHA256_LEN], const void *buf,
		     size_t len)
{
	int exists = 0, rc;

	rc = nx_registry_blob_exists(reg, d, &exists);
	if (rc < 0)
		return rc;
	return exists ? 0 : nx_registry_put_blob(reg, d, -1, buf, len);
}

static int profile_push(struct nx_registry *reg, const char *closure, const char *file,
			const char *name)
{
	struct nx_profile *pr = NULL;
	struct nx_desc blob, subject, man;
	uint8_t empty[NX_SHA256_LEN];
	char *buf = NULL, *idx = NULL, *mj = NULL, *ref_body = NULL, *out = NULL;
	char mref[NX_DIGEST_STRLEN], tag[NX_DIGEST_STRLEN + 8];
	size_t len = 0, idx_len = 0, mj_len = 0, ref_len = 0, out_len = 0;
	uint8_t got[NX_SHA256_LEN];
	int rc;

	rc = read_file(file, &buf, &len);
	if (rc < 0) {
		nx_log(NX_LOG_ERR, "profile %s: cannot read it: %s", file, strerror(-rc));
		return rc;
	}
	rc = nx_profile_parse(buf, len, &pr);
	if (rc < 0) {
		nx_log(NX_LOG_ERR, "profile %s: not a nixoci profile (format.md §5.2); record one "
		       "with nixoci-fs -o profile_record=FILE", file);
		goto out;
	}
	rc = nx_registry_get_manifest(reg, closure, NX_INDEX_MAX, &idx, &idx_len, subject.digest,
				      NULL);
	if (rc < 0) {
		nx_log(NX_LOG_ERR, "closure %s: %s in %s", closure,
		       rc == -ENOENT ? "not found" : "cannot be read", nx_registry_ref(reg));
		goto out;
	}
	subject.size = idx_len;
	nx_sha256(buf, len, blob.digest);
	blob.size = len;
	if (nx_digest_parse(NX_EMPTY_DIGEST, empty) < 0) {
		rc = -EINVAL;
		goto out;
	}
	rc = push_blob(reg, empty, "{}", 2);
	if (rc == 0)
		rc = push_blob(reg, blob.digest, buf, len);
	if (rc == 0)
		rc = nx_profile_manifest_build(&blob, &subject, name, &mj, &mj_len);
	if (rc < 0)
		goto out;
	nx_sha256(mj, mj_len, man.digest);
	man.size = mj_len;
	nx_digest_format(man.digest, mref);
	rc = nx_registry_put_manifest(reg, mref, NX_MT_MANIFEST, mj, mj_len);
	if (rc < 0)
		goto out;
	/* A registry with the referrers API indexes the subject itself. */
	rc = nx_registry_get_referrers(reg, subject.digest, NX_INDEX_MAX, &ref_body, &ref_len);
	if (rc == 0) {
		printf("pushed profile %s (%zu frames) for closure %s: %s (referrers API)\n", name,
		       pr->n, closure, mref);
		goto out;
	}
	/* The tag fallback: read, extend, write back. */
	nx_digest_format(subject.digest, tag);
	tag[6] = '-'; /* sha256:<hex> -> sha256-<hex> */
	rc = nx_registry_get_manifest(reg, tag, NX_INDEX_MAX, &ref_body, &ref_len, got, NULL);
	if (rc < 0 && rc != -ENOENT) {
		nx_log(NX_LOG_ERR, "profile %s: cannot read the referrers tag %s", name, tag);
		goto out;
	}
	rc = nx_referrers_add(rc == 0 ? ref_body : NULL, ref_len, &man, name, &blob, &out,
			      &out_len);
	if (rc == -EINVAL)
		nx_log(NX_LOG_ERR, "profile %s: the tag %s is not an image index; remove it", name,
		       tag);
	if (rc == 0)
		rc = nx_registry_put_manifest(reg, tag, NX_MT_INDEX, out, out_len);
	if (rc == 0)
		printf("pushed profile %s (%zu frames) for closure %s: %s (listed under tag %s)\n",
		       name, pr->n, closure, mref, tag);
out:
	nx_profile_free(pr);
	free(buf);
	free(idx);
	free(mj);
	free(ref_body);
	free(out);
	return rc;
}

int nx_cmd_profile(struct nx_cli *cli, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "name", required_argument, NULL, NX_OPT_FIRST_PRIVATE },
		NX_CLI_LONGOPTS,
		{ NULL, 0, NULL, 0 },
	};
	const char *name = "default";
	struct nx_registry *reg = NULL;
	int c, rc;

	if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
		fputs(usage_profile, stdout);
		return NX_EXIT_OK;
	}
	if (argc < 2 || strcmp(argv[1], "push") != 0)
		return nx_cli_usage_error(usage_profile, argc < 2 ? "profile: missing subcommand" :
						  "profile: unknown subcommand '%s'", argv[argc < 2 ? 0 : 1]);
	argc--;
	argv++;
	while ((c = getopt_long(argc, argv, ":hv", lo, NULL)) != -1) {
		if (c == 'h') {
			fputs(usage_profile, stdout);
			return NX_EXIT_OK;
		} else if (c == NX_OPT_FIRST_PRIVATE) {
			name = optarg;
		} else if (c == '?' || c == ':') {
			return nx_cli_usage_error(usage_profile, "profile push: %s '%s'",
						  c == '?' ? "unknown option" : "missing argument to",
						  argv[optind - 1]);
		} else if (nx_cli_opt(cli, c, optarg) < 0) {
			return nx_cli_synopsis(usage_profile);
		}
	}
	if (!name_ok(name))
		return nx_cli_usage_error(usage_profile, "profile push: bad --name '%s': letters, "
					  "digits, '-', '_', '.', at most 128, not 'auto'", name);
	if (argc - optind != 3)
		return nx_cli_usage_error(usage_profile, "profile push: expected REGISTRY/REPO "
					  "CLOSURE FILE");
	if (nx_cli_registry(cli, argv[optind], 1, &reg) < 0)
		return NX_EXIT_ERR;
	rc = profile_push(reg, argv[optind + 1], argv[optind + 2], name);
	nx_registry_close(reg);
	return rc < 0 ? NX_EXIT_ERR : NX_EXIT_OK;
}
