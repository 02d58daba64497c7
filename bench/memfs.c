/*
 * bench/memfs: the ceiling for sequential reads through FUSE on this machine.
 *
 *   memfs MOUNTPOINT SIZE
 *
 * Serves one read-only file, MOUNTPOINT/data, of SIZE bytes held in memory
 * (a byte pattern, filled before mounting), with the same kernel settings as
 * nixoci-fs (low-level API, multi-threaded loop, keep_cache, long timeouts,
 * splice writes). Whatever nixoci-fs does beyond this costs throughput; this
 * program only measures what FUSE itself allows. Stays in the foreground;
 * fusermount3 -u MOUNTPOINT ends it with status 0.
 */
#define FUSE_USE_VERSION 35
#include <errno.h>
#include <fuse_lowlevel.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define DATA_INO 2
#define TIMEOUT 86400.0

static unsigned char *data;
static size_t data_size;

static void fill_attr(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)data_size;
		st->st_blocks = (blkcnt_t)((data_size + 511) / 512);
	}
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	unsigned int want = FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;

	conn->want |= want & conn->capable;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;

	if (parent != FUSE_ROOT_ID || strcmp(name, "data") != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = DATA_INO;
	e.attr_timeout = TIMEOUT;
	e.entry_timeout = TIMEOUT;
	fill_attr(DATA_INO, &e.attr);
	fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	if (ino != FUSE_ROOT_ID && ino != DATA_INO) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_attr(ino, &st);
	fuse_reply_attr(req, &st, TIMEOUT);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != DATA_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EROFS);
		return;
	}
	/* the same as nixoci-fs: the kernel may keep the pages */
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	size_t o = (size_t)off;

	if (off < 0 || o >= data_size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > data_size - o)
		size = data_size - o;
	fuse_reply_buf(req, (const char *)data + o, size);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	static const char *const names[] = { ".", "..", "data" };
	static const fuse_ino_t inos[] = { FUSE_ROOT_ID, FUSE_ROOT_ID, DATA_INO };
	char buf[512];
	size_t used = 0;
	off_t i;

	if (ino != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (size > sizeof(buf))
		size = sizeof(buf);
	for (i = off; i < 3; i++) {
		struct stat st;
		size_t n;

		fill_attr(inos[i], &st);
		n = fuse_add_direntry(req, buf + used, size - used, names[i], &st, i + 1);
		if (n > size - used)
			break;
		used += n;
	}
	fuse_reply_buf(req, buf, used);
}

static const struct fuse_lowlevel_ops ops = {
	.init = op_init,
	.lookup = op_lookup,
	.getattr = op_getattr,
	.open = op_open,
	.read = op_read,
	.readdir = op_readdir,
};

int main(int argc, char **argv)
{
	char *fargv[] = { argv[0], "-o", "ro,fsname=memfs,subtype=memfs", NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
	struct fuse_loop_config *cfg = NULL;
	struct fuse_session *se = NULL;
	unsigned long long n;
	char *end;
	size_t i;
	int ret = 1;

	if (argc != 3) {
		fprintf(stderr, "usage: memfs MOUNTPOINT SIZE\n");
		return 2;
	}
	errno = 0;
	n = strtoull(argv[2], &end, 10);
	if (errno || *end || n == 0 || n > SIZE_MAX / 2) {
		fprintf(stderr, "memfs: bad size %s\n", argv[2]);
		return 2;
	}
	data_size = (size_t)n;
	data = malloc(data_size);
	if (!data) {
		fprintf(stderr, "memfs: cannot allocate %zu bytes\n", data_size);
		return 1;
	}
	/* touch every page now, so reads never fault in fresh memory */
	for (i = 0; i < data_size; i++)
		data[i] = (unsigned char)(i * 131 + (i >> 12));
	se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	if (!se)
		goto out;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_se;
	if (fuse_session_mount(se, argv[1]) != 0)
		goto out_sig;
	cfg = fuse_loop_cfg_create();
	if (!cfg)
		goto out_umount;
	fuse_loop_cfg_set_max_threads(cfg, 10);
	ret = fuse_session_loop_mt(se, cfg) ? 1 : 0;
	fuse_loop_cfg_destroy(cfg);
out_umount:
	fuse_session_unmount(se);
out_sig:
	fuse_remove_signal_handlers(se);
out_se:
	fuse_session_destroy(se);
out:
	free(data);
	return ret;
}
