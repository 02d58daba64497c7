/*
 * tools/stats.c: `nixoci stats MOUNTPOINT` prints the counters a nixoci-fs
 * mount exposes as the extended attribute user.nixoci.stats of its root
 * ("key value\n" lines), as they are or as one JSON object (--json); with
 * --prometheus, the daemon's metrics (user.nixoci.metrics: the counters and
 * the latency histograms, in the Prometheus text format).
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

#include "tools/tools_i.h"

#define STATS_XATTR "user.nixoci.stats"
#define METRICS_XATTR "user.nixoci.metrics"
#define STATS_MAX (64u << 10)

static const char usage_stats[] =
	"usage: nixoci stats [--json | --prometheus] MOUNTPOINT\n"
	"\n"
	"Prints the counters of the nixoci-fs mount at MOUNTPOINT, one \"key value\"\n"
	"per line.\n"
	"\n"
	"options:\n"
	"  --json                one JSON object {\"key\": value, ...}\n"
	"  --prometheus          the daemon's metrics in the Prometheus text format:\n"
	"                        the counters and the latency histograms of registry\n"
	"                        requests and FUSE operations\n";

/* "key value" lines -> {"key": value}; values are unsigned integers. */
static int print_json(const char *mnt, char *text)
{
	json_t *o = json_object();
	char *line, *save = NULL;
	int r = 0;

	if (!o)
		return -ENOMEM;
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *sp = strchr(line, ' '), *end;
		unsigned long long v;

		if (!sp)
			continue;
		*sp = '\0';
		errno = 0;
		v = strtoull(sp + 1, &end, 10);
		if (errno || *end || end == sp + 1) {
			nx_log(NX_LOG_ERR, "stats %s: unexpected value '%s' of %s", mnt, sp + 1,
			       line);
			r = -EINVAL;
			break;
		}
		if (json_object_set_new(o, line, json_integer((json_int_t)v)) < 0) {
			r = -ENOMEM;
			break;
		}
	}
	if (r == 0)
		r = nx_cli_print_json(o);
	json_decref(o);
	return r;
}

int nx_cmd_stats(struct nx_cli *cli, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "json", no_argument, NULL, NX_OPT_FIRST_PRIVATE },
		{ "prometheus", no_argument, NULL, NX_OPT_FIRST_PRIVATE + 1 },
		NX_CLI_LONGOPTS,
		{ NULL, 0, NULL, 0 },
	};
	const char *mnt, *attr;
	int c, json = 0, prom = 0, ret = NX_EXIT_ERR;
	char *buf;
	ssize_t n;

	while ((c = getopt_long(argc, argv, ":hv", lo, NULL)) != -1) {
		if (c == 'h') {
			fputs(usage_stats, stdout);
			return NX_EXIT_OK;
		} else if (c == NX_OPT_FIRST_PRIVATE) {
			json = 1;
		} else if (c == NX_OPT_FIRST_PRIVATE + 1) {
			prom = 1;
		} else if (c == '?' || c == ':') {
			return nx_cli_usage_error(usage_stats, "stats: %s '%s'",
						  c == '?' ? "unknown option"
							   : "missing argument to",
						  argv[optind - 1]);
		} else if (nx_cli_opt(cli, c, optarg) < 0) {
			return nx_cli_synopsis(usage_stats);
		}
	}
	if (json && prom)
		return nx_cli_usage_error(usage_stats, "stats: --json and --prometheus exclude "
					  "each other");
	if (argc - optind != 1)
		return nx_cli_usage_error(usage_stats, optind >= argc
						  ? "stats: missing MOUNTPOINT"
						  : "stats: unexpected argument '%s'",
					  argv[argc - 1]);
	mnt = argv[optind];
	attr = prom ? METRICS_XATTR : STATS_XATTR;
	buf = malloc(STATS_MAX + 1);
	if (!buf)
		return NX_EXIT_ERR;
	n = getxattr(mnt, attr, buf, STATS_MAX);
	if (n < 0) {
		int e = errno;

		if (e == ENODATA || e == ENOTSUP)
			nx_log(NX_LOG_ERR, "stats %s: no %s attribute; is it a nixoci-fs mount?",
			       mnt, attr);
		else
			nx_log(NX_LOG_ERR, "stats %s: %s", mnt, strerror(e));
		goto out;
	}
	buf[n] = '\0';
	if (json) {
		if (print_json(mnt, buf) < 0)
			goto out;
	} else {
		fwrite(buf, 1, (size_t)n, stdout);
		if (n > 0 && buf[n - 1] != '\n')
			putchar('\n');
	}
	ret = NX_EXIT_OK;
out:
	free(buf);
	return ret;
}
