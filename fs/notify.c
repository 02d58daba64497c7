/*
 * fs/notify.c: the service manager's readiness protocol (sd_notify(3)),
 * spoken by hand: one datagram on the unix socket named by $NOTIFY_SOCKET
 * (a path, or an abstract name written with a leading '@'). Without that
 * variable nothing is sent, so the daemon behaves the same outside systemd.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "fs/fs_i.h"

int nx_fs_notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa;
	socklen_t salen;
	size_t n;
	int fd, r = 0;

	if (!path || !*path)
		return 0;
	n = strlen(path);
	if ((path[0] != '/' && path[0] != '@') || n >= sizeof(sa.sun_path)) {
		nx_log(NX_LOG_WARNING, "NOTIFY_SOCKET=%s is not a unix socket path; not notifying",
		       path);
		return -EINVAL;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, path, n);
	if (path[0] == '@')
		sa.sun_path[0] = '\0'; /* abstract namespace */
	salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);

	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen) < 0) {
		r = -errno;
		nx_log(NX_LOG_WARNING, "cannot notify the service manager on %s: %s", path,
		       strerror(errno));
	}
	close(fd);
	return r;
}
