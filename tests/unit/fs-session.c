/*
 * tests/unit/fs-session.c: the INIT and OPEN rewriting of fs/session.c on
 * synthetic messages: kernels of several protocol minors and offers, the
 * reply split across iovecs as libfuse sends it, and the fallbacks.
 */
#include <errno.h>
#include <linux/fuse.h>
#include <stddef.h>
#include <string.h>

#include "fs/fs_i.h"
#include "tests/unit/tap.h"

#define PASSTHROUGH_BIT (1ULL << 37) /* FUSE_PASSTHROUGH, protocol 7.40 */

struct init_req {
	struct fuse_in_header h;
	struct fuse_init_in in;
};

struct init_reply {
	struct fuse_out_header h;
	struct fuse_init_out out;
};

static void make_req(struct init_req *r, uint32_t minor, uint64_t flags, uint64_t unique)
{
	memset(r, 0, sizeof(*r));
	r->h.len = sizeof(*r);
	r->h.opcode = FUSE_INIT;
	r->h.unique = unique;
	r->in.major = 7;
	r->in.minor = minor;
	r->in.max_readahead = 131072;
	r->in.flags = (uint32_t)flags;
	r->in.flags2 = (uint32_t)(flags >> 32);
}

/* What libfuse 3.14 sends: header and body in two iovecs, INIT_EXT echoed
 * when the kernel offered it. */
static void make_reply(struct init_reply *r, uint64_t unique, uint32_t flags)
{
	memset(r, 0, sizeof(*r));
	r->h.len = sizeof(*r);
	r->h.unique = unique;
	r->out.major = 7;
	r->out.minor = 38;
	r->out.flags = flags;
}

static uint64_t sent_flags(const struct init_reply *r)
{
	uint64_t f = r->out.flags;

	if (f & FUSE_INIT_EXT)
		f |= (uint64_t)r->out.flags2 << 32;
	return f;
}

/* One INIT exchange; returns the rewritten reply. */
static void exchange(struct nx_session *s, uint32_t minor, uint64_t offer, uint32_t lib_flags,
		     struct init_reply *rep)
{
	struct init_req req;
	struct iovec iov[2];

	make_req(&req, minor, offer, 42);
	nx_session_note_request(s, &req, sizeof(req));
	make_reply(rep, 42, lib_flags);
	iov[0].iov_base = &rep->h;
	iov[0].iov_len = sizeof(rep->h);
	iov[1].iov_base = &rep->out;
	iov[1].iov_len = sizeof(rep->out);
	nx_session_patch_reply(s, iov, 2);
}

static uint32_t stack_depth(const struct init_reply *r)
{
	uint32_t v;

	memcpy(&v, (const uint8_t *)&r->out + offsetof(struct fuse_init_out, flags2) + 4,
	       sizeof(v));
	return v;
}

int main(void)
{
	struct nx_session s;
	struct init_reply rep;
	const uint64_t modern = FUSE_ASYNC_READ | FUSE_PARALLEL_DIROPS | FUSE_INIT_EXT |
				PASSTHROUGH_BIT;

	/* 6.18-like kernel, root: both flags */
	nx_session_init(&s, NX_PT_AUTO);
	s.pt_capable = 1;
	exchange(&s, 44, modern, FUSE_ASYNC_READ | FUSE_INIT_EXT, &rep);
	ok(s.init_done, "init reply recognised");
	is_int(s.kminor, 44, "kernel minor recorded");
	ok((sent_flags(&rep) & FUSE_PARALLEL_DIROPS) != 0, "parallel dirops added");
	ok(s.parallel_dirops, "parallel dirops negotiated");
	ok((sent_flags(&rep) & PASSTHROUGH_BIT) != 0, "passthrough added in flags2");
	is_int(stack_depth(&rep), 1, "max_stack_depth 1");
	ok(s.pt_negotiated && !s.pt_why, "passthrough negotiated");
	ok((sent_flags(&rep) & FUSE_ASYNC_READ) != 0, "libfuse's own flags kept");
	is_int(rep.out.minor, 38, "libfuse's minor untouched");
	is_int(s.flags_out, sent_flags(&rep), "sent flags recorded");

	/* a later reply with the same unique is not an INIT again */
	{
		struct init_reply again;
		struct iovec iov = { &again, sizeof(again) };

		make_reply(&again, 42, 0);
		nx_session_patch_reply(&s, &iov, 1);
		is_int(again.out.flags, 0, "only the first INIT reply is rewritten");
	}

	/* passthrough=off: parallel dirops only */
	nx_session_init(&s, NX_PT_OFF);
	s.pt_capable = 1;
	exchange(&s, 44, modern, FUSE_ASYNC_READ | FUSE_INIT_EXT, &rep);
	ok((sent_flags(&rep) & FUSE_PARALLEL_DIROPS) != 0, "off: parallel dirops added");
	ok(!(sent_flags(&rep) & PASSTHROUGH_BIT), "off: no passthrough");
	is_int(stack_depth(&rep), 0, "off: max_stack_depth untouched");
	ok(s.pt_why && strstr(s.pt_why, "passthrough=off"), "off: reason says so");

	/* not capable (a rootless mount) */
	nx_session_init(&s, NX_PT_AUTO);
	exchange(&s, 44, modern, FUSE_ASYNC_READ | FUSE_INIT_EXT, &rep);
	ok(!(sent_flags(&rep) & PASSTHROUGH_BIT), "rootless: no passthrough");
	ok(s.pt_why && strstr(s.pt_why, "CAP_SYS_ADMIN"), "rootless: reason names the capability");
	ok((sent_flags(&rep) & FUSE_PARALLEL_DIROPS) != 0, "rootless: parallel dirops still added");

	/* kernel 7.38 (no passthrough): fallback, no flags2 bits invented */
	nx_session_init(&s, NX_PT_AUTO);
	s.pt_capable = 1;
	exchange(&s, 38, (modern & ~PASSTHROUGH_BIT), FUSE_ASYNC_READ | FUSE_INIT_EXT, &rep);
	ok(!(sent_flags(&rep) & PASSTHROUGH_BIT), "7.38: no passthrough");
	ok(s.pt_why && strstr(s.pt_why, "does not offer"), "7.38: reason is the kernel");
	ok((sent_flags(&rep) & FUSE_PARALLEL_DIROPS) != 0, "7.38: parallel dirops");

	/* a kernel that offers passthrough bits with a minor below 40 is not
	 * believed */
	nx_session_init(&s, NX_PT_AUTO);
	s.pt_capable = 1;
	exchange(&s, 39, modern, FUSE_INIT_EXT, &rep);
	ok(!(sent_flags(&rep) & PASSTHROUGH_BIT), "7.39 claiming passthrough: refused");

	/* old kernel without parallel dirops nor INIT_EXT */
	nx_session_init(&s, NX_PT_AUTO);
	s.pt_capable = 1;
	exchange(&s, 24, FUSE_ASYNC_READ, FUSE_ASYNC_READ, &rep);
	ok(!(sent_flags(&rep) & FUSE_PARALLEL_DIROPS), "7.24: no parallel dirops");
	ok(!(rep.out.flags & FUSE_INIT_EXT), "7.24: INIT_EXT not invented");
	is_int(rep.out.flags2, 0, "7.24: flags2 untouched");

	/* an offer without PARALLEL_DIROPS is never widened */
	nx_session_init(&s, NX_PT_AUTO);
	exchange(&s, 44, FUSE_INIT_EXT, FUSE_INIT_EXT, &rep);
	ok(!(sent_flags(&rep) & FUSE_PARALLEL_DIROPS), "not offered: not added");

	/* an INIT error reply is left alone */
	{
		struct init_req req;
		struct init_reply r;
		struct iovec iov = { &r, sizeof(struct fuse_out_header) };

		nx_session_init(&s, NX_PT_AUTO);
		make_req(&req, 44, modern, 7);
		nx_session_note_request(&s, &req, sizeof(req));
		memset(&r, 0, sizeof(r));
		r.h.len = sizeof(r.h);
		r.h.error = -EPROTO;
		r.h.unique = 7;
		nx_session_patch_reply(&s, &iov, 1);
		ok(!s.init_done, "error reply: not treated as the init reply");
	}

	/* a truncated INIT request is ignored, a short buffer too */
	{
		struct init_req req;

		nx_session_init(&s, NX_PT_AUTO);
		make_req(&req, 44, modern, 9);
		nx_session_note_request(&s, &req, sizeof(struct fuse_in_header) + 8);
		ok(!s.init_seen, "truncated init request ignored");
		nx_session_note_request(&s, &req, 3);
		is_int(s.nreq[FUSE_INIT], 1, "requests counted by opcode");
	}

	/* a reply split at an odd place across three iovecs */
	{
		struct init_req req;
		struct init_reply r;
		struct iovec iov[3];
		uint8_t *b = (uint8_t *)&r;

		nx_session_init(&s, NX_PT_AUTO);
		s.pt_capable = 1;
		make_req(&req, 44, modern, 11);
		nx_session_note_request(&s, &req, sizeof(req));
		make_reply(&r, 11, FUSE_INIT_EXT);
		iov[0].iov_base = b;
		iov[0].iov_len = 10;
		iov[1].iov_base = b + 10;
		iov[1].iov_len = 21;
		iov[2].iov_base = b + 31;
		iov[2].iov_len = sizeof(r) - 31;
		nx_session_patch_reply(&s, iov, 3);
		ok((sent_flags(&r) & (FUSE_PARALLEL_DIROPS | PASSTHROUGH_BIT)) ==
			   (FUSE_PARALLEL_DIROPS | PASSTHROUGH_BIT),
		   "split reply rewritten");
	}

	/* OPEN replies are untouched without a backing id */
	{
		struct {
			struct fuse_out_header h;
			struct fuse_open_out o;
		} op;
		struct iovec iov[2] = { { &op.h, sizeof(op.h) }, { &op.o, sizeof(op.o) } };

		memset(&op, 0, sizeof(op));
		op.h.unique = 99;
		op.o.open_flags = FOPEN_KEEP_CACHE;
		nx_session_patch_reply(&s, iov, 2);
		is_int(op.o.open_flags, FOPEN_KEEP_CACHE, "open reply without id untouched");
		is_int(op.o.padding, 0, "no backing id");
	}

	return done_testing();
}
