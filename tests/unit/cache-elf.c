/*
 * tests/unit/cache-elf.c: the dynamic-section parser of library prediction
 * (cache/elf.c, nx_elf_dyn_parse) over ELF files built here: names and
 * RUNPATH found, RUNPATH over RPATH, bounds on names, counts and offsets,
 * every truncation and every single-byte corruption of a good file parsed
 * without reading outside it, and the reader's errors passed on.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_i.h"
#include "tests/unit/tap.h"

#define CAP 65536

struct img {
	uint8_t b[CAP];
	size_t len;
	size_t dyn_off; /* of the dynamic section */
	int fail;       /* the reader's error, if any */
	size_t reads;
};

static void put(uint8_t *p, uint64_t v, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* A shared object: header, PT_LOAD over the whole file, PT_DYNAMIC, the
 * string table, then the dynamic section (@needed names, then DT_RPATH
 * @rpath and DT_RUNPATH @runpath when not NULL). */
static void build(struct img *m, const char *const *needed, unsigned n, const char *runpath,
		  const char *rpath)
{
	uint8_t *b = m->b;
	size_t strtab = 64 + 2 * 56, s = strtab + 1, dyn, k;
	uint64_t offs[80], rp = 0, rn = 0;

	memset(m, 0, sizeof(*m));
	memcpy(b, "\177ELF\2\1\1", 7);
	put(b + 16, 3, 2);  /* ET_DYN */
	put(b + 18, 62, 2); /* x86-64 */
	put(b + 20, 1, 4);
	put(b + 32, 64, 8); /* phoff */
	put(b + 52, 64, 2);
	put(b + 54, 56, 2);
	put(b + 56, 2, 2);
	for (unsigned i = 0; i < n; i++) {
		offs[i] = s - strtab;
		memcpy(b + s, needed[i], strlen(needed[i]) + 1);
		s += strlen(needed[i]) + 1;
	}
	if (rpath) {
		rp = s - strtab;
		memcpy(b + s, rpath, strlen(rpath) + 1);
		s += strlen(rpath) + 1;
	}
	if (runpath) {
		rn = s - strtab;
		memcpy(b + s, runpath, strlen(runpath) + 1);
		s += strlen(runpath) + 1;
	}
	dyn = (s + 7) & ~(size_t)7;
	k = dyn;
	for (unsigned i = 0; i < n; i++, k += 16)
		put(b + k, 1, 8), put(b + k + 8, offs[i], 8);
	if (rpath)
		put(b + k, 15, 8), put(b + k + 8, rp, 8), k += 16;
	if (runpath)
		put(b + k, 29, 8), put(b + k + 8, rn, 8), k += 16;
	put(b + k, 5, 8), put(b + k + 8, 0x10000 + strtab, 8), k += 16; /* vaddr */
	put(b + k, 10, 8), put(b + k + 8, dyn - strtab, 8), k += 16;
	k += 16; /* DT_NULL */
	m->len = k;
	m->dyn_off = dyn;
	/* PT_LOAD: file 0.. at vaddr 0x10000 */
	put(b + 64, 1, 4);
	put(b + 64 + 8, 0, 8);
	put(b + 64 + 16, 0x10000, 8);
	put(b + 64 + 32, k, 8);
	put(b + 64 + 40, k, 8);
	/* PT_DYNAMIC */
	put(b + 120, 2, 4);
	put(b + 120 + 8, dyn, 8);
	put(b + 120 + 16, 0x10000 + dyn, 8);
	put(b + 120 + 32, k - dyn, 8);
}

static int rd(void *ctx, uint64_t off, void *buf, size_t len)
{
	struct img *m = ctx;

	m->reads++;
	if (m->fail)
		return m->fail;
	/* the parser must stay inside the file it was told about */
	if (off > m->len || len > m->len - off) {
		fprintf(stderr, "read outside the file: %llu+%zu of %zu\n",
			(unsigned long long)off, len, m->len);
		abort();
	}
	memcpy(buf, m->b + off, len);
	return 0;
}

static struct nx_elf_dyn dyn;

int main(void)
{
	static struct img m, g;
	static const char *const two[] = { "libfoo.so.1", "libc.so.6" };
	const char *many[80];
	char longname[300];
	int rc;

	build(&m, two, 2, "$ORIGIN/../lib:/nix/store/aaaa-x/lib", NULL);
	rc = nx_elf_dyn_parse(rd, &m, m.len, &dyn);
	is_int(rc, 0, "a good file parses");
	is_int(dyn.nneeded, 2, "two libraries");
	ok(strcmp(dyn.needed[0], "libfoo.so.1") == 0 && strcmp(dyn.needed[1], "libc.so.6") == 0,
	   "their names, in order");
	ok(strcmp(dyn.runpath, "$ORIGIN/../lib:/nix/store/aaaa-x/lib") == 0, "its RUNPATH");

	build(&m, two, 2, "/run", "/rp");
	is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), 0, "RUNPATH and RPATH");
	ok(strcmp(dyn.runpath, "/run") == 0 && !dyn.rpath, "RUNPATH wins, as in ld.so");
	build(&m, two, 2, NULL, "/rp");
	is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), 0, "RPATH alone");
	ok(strcmp(dyn.runpath, "/rp") == 0 && dyn.rpath, "RPATH is used without RUNPATH (marked)");
	build(&m, two, 2, NULL, NULL);
	is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), 0, "no search path");
	ok(dyn.runpath[0] == 0, "an empty one");

	build(&m, NULL, 0, "/run", NULL);
	is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), -ENOENT, "no DT_NEEDED: -ENOENT");

	for (unsigned i = 0; i < 80; i++) {
		static char names[80][16];

		snprintf(names[i], sizeof(names[i]), "lib%u.so", i);
		many[i] = names[i];
	}
	build(&m, many, 80, NULL, NULL);
	is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), 0, "80 libraries");
	is_int(dyn.nneeded, NX_ELF_NEEDED_MAX, "capped at NX_ELF_NEEDED_MAX");

	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	{
		const char *v[] = { longname, "a/b.so", "", "libok.so" };

		build(&m, v, 4, NULL, NULL);
		is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), 0, "odd names");
		is_int(dyn.nneeded, 1, "too long, with a slash, empty: skipped");
		ok(strcmp(dyn.needed[0], "libok.so") == 0, "the good one kept");
	}

	build(&m, two, 2, "/r", NULL);
	m.b[4] = 1;
	is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), -EINVAL, "32-bit: -EINVAL");
	build(&m, two, 2, "/r", NULL);
	m.b[5] = 2;
	is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), -EINVAL, "big-endian: -EINVAL");
	build(&m, two, 2, "/r", NULL);
	put(m.b + 56, 65535, 2);
	is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), -EINVAL, "65535 program headers: -EINVAL");
	build(&m, two, 2, "/r", NULL);
	put(m.b + 120, 7, 4);
	is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), -ENOENT, "no PT_DYNAMIC (static): -ENOENT");
	build(&m, two, 2, "/r", NULL);
	put(m.b + 120 + 8, UINT64_MAX - 8, 8);
	is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), -EINVAL, "PT_DYNAMIC past the end: -EINVAL");
	build(&m, two, 2, "/r", NULL);
	put(m.b + m.dyn_off + 3 * 16 + 8, UINT64_MAX, 8); /* DT_STRTAB */
	is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), -EINVAL, "DT_STRTAB mapped by no PT_LOAD: -EINVAL");
	build(&m, two, 2, "/r", NULL);
	put(m.b + m.dyn_off + 8, UINT64_MAX - 2, 8); /* first DT_NEEDED */
	is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), 0, "a name outside the table");
	is_int(dyn.nneeded, 1, "is skipped");
	build(&m, two, 2, "/r", NULL);
	put(m.b + m.dyn_off + 4 * 16 + 8, 3, 8); /* DT_STRSZ: cuts the names */
	is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), -ENOENT, "names cut by DT_STRSZ: none left");

	build(&m, two, 2, "/r", NULL);
	m.fail = -EIO;
	is_int(nx_elf_dyn_parse(rd, &m, m.len, &dyn), -EIO, "the reader's error is passed on");

	/* every prefix of a good file, as a file of that size */
	build(&g, two, 2, "/nix/store/aaaa-x/lib", "/rp");
	{
		int bad = 0;

		for (size_t n = 0; n <= g.len; n++) {
			m = g;
			m.len = n;
			rc = nx_elf_dyn_parse(rd, &m, m.len, &dyn);
			if (n < g.len && rc == 0 && dyn.nneeded > 2)
				bad++;
		}
		ok(!bad, "every truncation of a good file: parsed inside it (%zu sizes)", g.len + 1);
	}
	/* every byte of the header, program headers and dynamic section set to
	 * each of a few hostile values */
	{
		static const uint8_t vals[] = { 0, 1, 0x7f, 0x80, 0xff };
		unsigned runs = 0;

		for (size_t i = 0; i < g.len; i++)
			for (size_t v = 0; v < sizeof(vals); v++) {
				m = g;
				m.b[i] = vals[v];
				(void)nx_elf_dyn_parse(rd, &m, m.len, &dyn);
				runs++;
			}
		ok(1, "%u single-byte corruptions parsed inside the file", runs);
	}
	return done_testing();
}
