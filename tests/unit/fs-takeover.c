/*
 * tests/unit/fs-takeover.c: the pieces of fs/takeover.c that need no
 * kernel: the handover message over a real socketpair (with a descriptor
 * attached, and malformed ones refused) and the file handle generation
 * tags. The replayed INIT and the stop without a lost request need a live
 * connection: tests/integ/t0700-restart.t.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/fs_i.h"
#include "tests/unit/tap.h"

static void test_messages(void)
{
	struct nx_ho_msg *m = calloc(1, sizeof(*m)), *got = calloc(1, sizeof(*got));
	struct stat a, b;
	int sv[2], fd = -1, pipefd[2];

	if (!m || !got || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) < 0 || pipe(pipefd) < 0) {
		ok(0, "setup");
		return;
	}
	nx_ho_msg_init(m, NX_HO_STATE);
	m->gen = 7;
	m->init_in_len = 4;
	memcpy(m->init_in, "\x07\x00\x00\x00", 4);
	memcpy(m->argv, "nixoci-fs\0-f\0", 13);
	m->argc = 2;
	m->argv_len = 13;
	is_int(nx_ho_send(sv[0], m, pipefd[0]), 0, "a state message with a descriptor is sent");
	is_int(nx_ho_recv(sv[1], got, &fd), 0, "...and received");
	ok(fd >= 0 && fstat(fd, &a) == 0 && fstat(pipefd[0], &b) == 0 && a.st_ino == b.st_ino,
	   "the descriptor arrives and is the same file");
	is_int(got->kind, NX_HO_STATE, "kind");
	is_int(got->gen, 7, "generation");
	ok(got->argc == 2 && strcmp(got->argv, "nixoci-fs") == 0 &&
	   strcmp(got->argv + 10, "-f") == 0, "command line");
	if (fd >= 0)
		close(fd);

	/* malformed: wrong magic, argv not terminated, wrong version */
	nx_ho_msg_init(m, NX_HO_TAKE);
	m->magic[0] = 'X';
	nx_ho_send(sv[0], m, -1);
	is_int(nx_ho_recv(sv[1], got, &fd), -EPROTO, "a wrong magic is refused");
	nx_ho_msg_init(m, NX_HO_TAKE);
	m->argv_len = 3;
	memcpy(m->argv, "abc", 3);
	nx_ho_send(sv[0], m, pipefd[1]);
	is_int(nx_ho_recv(sv[1], got, &fd), -EPROTO, "an unterminated command line is refused");
	is_int(fd, -1, "...and its descriptor is closed, not returned");
	nx_ho_msg_init(m, NX_HO_TAKE);
	m->version = 99;
	nx_ho_send(sv[0], m, -1);
	is_int(nx_ho_recv(sv[1], got, &fd), -EPROTONOSUPPORT, "another version is refused");
	close(sv[0]);
	is_int(nx_ho_recv(sv[1], got, &fd), -ECONNRESET, "end of stream");
	close(sv[1]);
	close(pipefd[0]);
	close(pipefd[1]);
	free(m);
	free(got);
}

static void test_fh(void)
{
	int x, foreign = 0;
	uint64_t fh = nx_fh_pack(&x);

	ok(nx_fh_unpack(fh, &foreign) == &x && !foreign, "a handle of this daemon unpacks");
	ok(nx_fh_unpack(fh ^ (UINT64_C(3) << 48), &foreign) == NULL && foreign,
	   "a handle of another generation is foreign and never dereferenced");
	ok(nx_fh_pack(NULL) == 0 && nx_fh_unpack(0, &foreign) == NULL && !foreign,
	   "0 stays \"no handle\"");
}

int main(void)
{
	test_messages();
	test_fh();
	return done_testing();
}
