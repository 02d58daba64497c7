/*
 * fs/mountcheck.c: the checks that keep a mount from hurting what is
 * already there, made before mounting so their errors reach the user:
 *
 * - a mountpoint that is not an empty directory would be hidden by the
 *   mount (-o nonempty says that is wanted);
 * - a mountpoint that already carries nixoci-fs would stack a second
 *   daemon on it;
 * - a cache directory is served by one daemon at a time: DIR/lock carries
 *   an exclusive flock(2) for the daemon's life (the descriptor crosses
 *   fuse_daemonize()'s fork, and the lock with it), and the holder's pid
 *   and mountpoint, so the refusal can say who holds it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/fs_i.h"

/* mountinfo escapes space, tab, newline and backslash as \ooo */
static void unescape_octal(char *s)
{
	char *w = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*w++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*w++ = *s;
		}
	}
	*w = '\0';
}

int nx_fs_mounted_here(const char *mp, char *source, size_t cap)
{
	char real[PATH_MAX], *line = NULL;
	size_t len = 0;
	FILE *f;
	int found = 0;

	if (!realpath(mp, real))
		return -errno;
	f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return -errno;
	while (getline(&line, &len, f) > 0) {
		/* id parent maj:min root MOUNTPOINT opts [optional...] - TYPE SOURCE super */
		char *fields[5], *sep, *save = NULL, *type, *src;
		int i;

		sep = strstr(line, " - ");
		if (!sep)
			continue;
		*sep = '\0';
		fields[0] = strtok_r(line, " ", &save);
		for (i = 1; i < 5 && fields[i - 1]; i++)
			fields[i] = strtok_r(NULL, " ", &save);
		if (i < 5 || !fields[4])
			continue;
		unescape_octal(fields[4]);
		if (strcmp(fields[4], real) != 0)
			continue;
		save = NULL;
		type = strtok_r(sep + 3, " ", &save);
		src = strtok_r(NULL, " ", &save);
		if (type && (strcmp(type, "fuse.nixoci-fs") == 0 || strcmp(type, "fuse.nixoci") == 0)) {
			found = 1;
			if (source && cap) {
				snprintf(source, cap, "%s", src ? src : "?");
				unescape_octal(source);
			}
		}
	}
	free(line);
	fclose(f);
	return found;
}

static int dir_is_empty(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int empty = 1;

	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
			empty = 0;
			break;
		}
	}
	closedir(d);
	return empty;
}

int nx_fs_check_mountpoint(const char *mp, int nonempty)
{
	char source[512];
	struct stat st;
	int r;

	if (stat(mp, &st) < 0) {
		if (errno == ENOENT)
			nx_log(NX_LOG_ERR, "mountpoint %s does not exist", mp);
		else if (errno == ENOTCONN)
			nx_log(NX_LOG_ERR,
			       "mountpoint %s: transport endpoint is not connected "
			       "(a dead mount? run fusermount3 -u %s)",
			       mp, mp);
		else
			nx_log(NX_LOG_ERR, "mountpoint %s: %s", mp, strerror(errno));
		return -EINVAL;
	}
	if (!S_ISDIR(st.st_mode)) {
		nx_log(NX_LOG_ERR, "mountpoint %s is not a directory", mp);
		return -ENOTDIR;
	}
	/* before reading it: a directory of a live mount is answered by its daemon */
	r = nx_fs_mounted_here(mp, source, sizeof(source));
	if (r > 0) {
		nx_log(NX_LOG_ERR, "mountpoint %s already carries nixoci-fs (%s); unmount it first "
		       "with fusermount3 -u %s", mp, source, mp);
		return -EBUSY;
	}
	if (nonempty)
		return 0;
	r = dir_is_empty(mp);
	if (r < 0) {
		nx_log(NX_LOG_ERR, "mountpoint %s: %s", mp, strerror(-r));
		return r;
	}
	if (!r) {
		nx_log(NX_LOG_ERR, "mountpoint %s is not empty: the mount would hide its files "
		       "(give -o nonempty if that is what you want)", mp);
		return -ENOTEMPTY;
	}
	return 0;
}

int nx_fs_cache_lock(const char *dir, int *fdp)
{
	char path[PATH_MAX], holder[PATH_MAX + 32];
	struct stat st;
	ssize_t n;
	int fd, r;

	*fdp = -1;
	r = nx_mkdir_p(dir, 0700);
	if (r < 0) {
		nx_log(NX_LOG_ERR, "cache directory %s: %s (choose one with -o cache=DIR)", dir,
		       strerror(-r));
		return r;
	}
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		nx_log(NX_LOG_ERR, "cache directory %s is not a directory", dir);
		return -ENOTDIR;
	}
	if (access(dir, W_OK | X_OK) < 0) {
		nx_log(NX_LOG_ERR, "cache directory %s is not writable (choose one with -o cache=DIR)",
		       dir);
		return -EACCES;
	}
	if ((size_t)snprintf(path, sizeof(path), "%s/lock", dir) >= sizeof(path))
		return -ENAMETOOLONG;
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		r = -errno;
		nx_log(NX_LOG_ERR, "cache directory %s: cannot open %s: %s", dir, path, strerror(-r));
		return r;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		r = errno == EWOULDBLOCK ? -EBUSY : -errno;
		n = pread(fd, holder, sizeof(holder) - 1, 0);
		holder[n > 0 ? n : 0] = '\0';
		holder[strcspn(holder, "\n")] = '\0';
		if (r == -EBUSY)
			nx_log(NX_LOG_ERR, "cache directory %s is in use by another nixoci-fs (%s); "
			       "give each mount its own -o cache=DIR", dir,
			       holder[0] ? holder : "pid unknown");
		else
			nx_log(NX_LOG_ERR, "cache directory %s: cannot lock %s: %s", dir, path,
			       strerror(-r));
		close(fd);
		return r;
	}
	*fdp = fd;
	return 0;
}

void nx_fs_cache_lock_note(int fd, const char *mountpoint)
{
	char buf[PATH_MAX + 32];
	int n;

	if (fd < 0)
		return;
	n = snprintf(buf, sizeof(buf), "pid %ld, mounted on %s\n", (long)getpid(), mountpoint);
	if (n < 0 || (size_t)n >= sizeof(buf))
		return;
	/* only informative: a failure costs the refusal its detail, nothing more */
	if (ftruncate(fd, 0) == 0 && pwrite(fd, buf, (size_t)n, 0) < 0)
		nx_log(NX_LOG_DEBUG, "cannot note the holder in the cache lock: %s", strerror(errno));
}
