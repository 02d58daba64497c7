/*
 * bench/pstat.c: stat(2) of every argument, all at once or one after the
 * other, and the seconds it took. For the session benchmark's first
 * lookups: the threads are started first and released by one barrier, so
 * what is timed is the lookups, not thread start-up (Python threads, which
 * also queue for the interpreter lock, spread 8 stat calls over up to a
 * second on a loaded machine).
 *
 *	pstat all|seq PATH...
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static pthread_barrier_t go;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *one(void *arg)
{
	struct stat sb;

	pthread_barrier_wait(&go);
	if (stat(arg, &sb) < 0)
		perror((const char *)arg);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t *t;
	struct stat sb;
	double t0;
	int i, n = argc - 2;

	if (argc < 3 || (strcmp(argv[1], "all") && strcmp(argv[1], "seq"))) {
		fprintf(stderr, "usage: pstat all|seq PATH...\n");
		return 2;
	}
	if (strcmp(argv[1], "seq") == 0) {
		t0 = now();
		for (i = 0; i < n; i++)
			if (stat(argv[i + 2], &sb) < 0)
				perror(argv[i + 2]);
		printf("%.4f\n", now() - t0);
		return 0;
	}
	t = calloc((size_t)n, sizeof(*t));
	if (!t || pthread_barrier_init(&go, NULL, (unsigned)n + 1) != 0)
		return 1;
	for (i = 0; i < n; i++)
		if (pthread_create(&t[i], NULL, one, argv[i + 2]) != 0)
			return 1;
	pthread_barrier_wait(&go);
	t0 = now();
	for (i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	printf("%.4f\n", now() - t0);
	return 0;
}
