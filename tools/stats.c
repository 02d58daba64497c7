/*
 * tools/stats.c: `nixoci stats MOUNTPOINT` prints the counters a nixoci-fs
 * mount exposes as the extended attribute user.nixoci.stats of its root
 * ("key value\n" lines).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

#include "tools/tools_i.h"

#define STATS_XATTR "user.nixoci.stats"
#define STATS_MAX (64u << 10)

static const char usage_stats[] =
	"usage: nixoci stats MOUNTPOINT\n"
	"\n"
	"Prints the counters of the nixoci-fs mount at MOUNTPOINT.\n";

int nx_cmd_stats(struct nx_cli *cli, int argc, char **argv)
{
	static const struct option lo[] = { NX_CLI_LONGOPTS, { NULL, 0, NULL, 0 } };
	const char *mnt;
	char *buf;
	ssize_t n;
	int c;

	while ((c = getopt_long(argc, argv, ":hv", lo, NULL)) != -1) {
		if (c == 'h') {
			fputs(usage_stats, stdout);
			return NX_EXIT_OK;
		} else if (c == '?' || c == ':') {
			return nx_cli_usage_error(usage_stats, "stats: %s '%s'",
						  c == '?' ? "unknown option"
							   : "missing argument to",
						  argv[optind - 1]);
		} else if (nx_cli_opt(cli, c, optarg) < 0) {
			return nx_cli_synopsis(usage_stats);
		}
	}
	if (argc - optind != 1)
		return nx_cli_usage_error(usage_stats, optind >= argc
						  ? "stats: missing MOUNTPOINT"
						  : "stats: unexpected argument '%s'",
					  argv[argc - 1]);
	mnt = argv[optind];
	buf = malloc(STATS_MAX);
	if (!buf)
		return NX_EXIT_ERR;
	n = getxattr(mnt, STATS_XATTR, buf, STATS_MAX);
	if (n < 0) {
		int e = errno;

		if (e == ENODATA || e == ENOTSUP)
			nx_log(NX_LOG_ERR, "stats %s: no %s attribute; is it a nixoci-fs mount?",
			       mnt, STATS_XATTR);
		else
			nx_log(NX_LOG_ERR, "stats %s: %s", mnt, strerror(e));
		free(buf);
		return NX_EXIT_ERR;
	}
	fwrite(buf, 1, (size_t)n, stdout);
	if (n > 0 && buf[n - 1] != '\n')
		putchar('\n');
	free(buf);
	return NX_EXIT_OK;
}
