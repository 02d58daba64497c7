/*
 * tests/fuzz/replay.c: runs a fuzz target's LLVMFuzzerTestOneInput over
 * files, without libFuzzer (plain gcc build, optionally with sanitizers), as
 * TAP: "ok N - FILE" per input. Arguments are files or directories (every
 * regular file inside, sorted, no recursion). A crash ends the process, which
 * prove reports as a failure.
 *
 *   replay-<target> tests/fuzz/corpus/<target> tests/fuzz/crashers/<target>
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/common.h"
#include "tests/fuzz/fuzz.h"

static int count;

static int run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	long len;

	if (!f) {
		printf("not ok %d - %s: %s\n", ++count, path, strerror(errno));
		return 1;
	}
	if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
		goto bad;
	/* malloc(len) exactly, so ASan catches a read one past the input */
	buf = malloc(len ? (size_t)len : 1);
	if (!buf || (len && fread(buf, 1, (size_t)len, f) != (size_t)len))
		goto bad;
	fclose(f);
	fflush(stdout);
	LLVMFuzzerTestOneInput(buf, (size_t)len);
	free(buf);
	printf("ok %d - %s\n", ++count, path);
	fflush(stdout);
	return 0;
bad:
	free(buf);
	fclose(f);
	printf("not ok %d - %s: cannot read\n", ++count, path);
	return 1;
}

static int cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* each name is owned by names (NX_ANALYZER_ARRAY_STORE_BEGIN in common.h says why) */
NX_ANALYZER_ARRAY_STORE_BEGIN
static int run_arg(const char *arg)
{
	struct stat st;
	struct dirent *de;
	char **names = NULL, path[4096];
	size_t n = 0, cap = 0, i;
	DIR *d;
	int bad = 0;

	if (stat(arg, &st) != 0)
		return 0; /* a target without crashers has no directory */
	if (!S_ISDIR(st.st_mode))
		return run_file(arg);
	d = opendir(arg);
	if (!d)
		return 1;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (n == cap) {
			char **nn = reallocarray(names, (cap = cap ? 2 * cap : 64), sizeof(*names));

			if (!nn)
				abort();
			names = nn;
		}
		names[n] = strdup(de->d_name);
		if (!names[n])
			abort();
		n++;
	}
	closedir(d);
	if (n)
		qsort(names, n, sizeof(*names), cmp);
	for (i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/%s", arg, names[i]);
		if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
			bad |= run_file(path);
		free(names[i]);
	}
	free(names);
	return bad;
}
NX_ANALYZER_ARRAY_STORE_END

int main(int argc, char **argv)
{
	int i, bad = 0;

	for (i = 1; i < argc; i++)
		bad |= run_arg(argv[i]);
	if (count == 0)
		printf("ok 1 # SKIP no inputs\n"), count = 1;
	printf("1..%d\n", count);
	return bad;
}
