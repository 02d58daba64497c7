/*
 * tests/unit/cache-pyc.c: the .pyc parser of import prediction (cache/pyc.c,
 * nx_pyc_parse) against the real CPython: the interpreter compiles every
 * module of its own standard library and a file with every kind of import
 * to .pyc files, and reports with `dis` (its own reading of the code
 * object, its constants and names, and its exception table) the
 * module-level IMPORT_NAMEs the rule takes; the parser must find exactly
 * those. Then every truncation, and corruptions, of real files parse
 * without harm.
 *
 * The interpreters: $NIXOCI_TEST_PYTHONS (colon-separated; default
 * /usr/bin/python3), each of 3.11 to 3.13; one that is missing is skipped.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache_i.h"
#include "tests/unit/tap.h"

/* Writes DIR/N.pyc for each source file named on stdin (or the cases
 * file), then per file: "FILE path", one line per import
 * "level name sub" ("-" for empty), "END". The rule as the parser applies
 * it, but read through dis. */
static const char oracle[] =
	"import sys, dis, py_compile, os, glob\n"
	"out = sys.argv[1]\n"
	"def ok(s, dotted):\n"
	"    if not s or len(s) > 255 or not s.isascii(): return False\n"
	"    parts = s.split('.') if dotted else [s]\n"
	"    return all(p.isidentifier() for p in parts)\n"
	"def items(co):\n"
	"    ents = dis._parse_exception_table(co)\n"
	"    ins = [i for i in dis.get_instructions(co) if i.opname != 'EXTENDED_ARG']\n"
	"    res = []\n"
	"    skip = 0\n"
	"    plat = ('win32', 'cygwin', 'msys', 'nt', 'darwin', 'ios', 'android', 'emscripten', 'wasi', 'java')\n"
	"    for k, i in enumerate(ins):\n"
	"        if i.opname == 'LOAD_CONST' and type(i.argval) is str and i.argval in plat and k + 2 < len(ins) and ins[k+1].opname == 'COMPARE_OP' and ins[k+1].argval == '==' and ins[k+2].opname in ('POP_JUMP_IF_FALSE', 'POP_JUMP_FORWARD_IF_FALSE'): skip = max(skip, ins[k+2].argval)\n"
	"        if i.opname == 'IMPORT_NAME' and i.offset < skip: continue\n"
	"        if i.opname == 'LOAD_CONST' and k and ins[k-1].opname == 'LOAD_NAME' and ins[k-1].argval == '__name__' and i.argval == '__main__': break\n"
	"        if i.opname != 'IMPORT_NAME' or k < 2: continue\n"
	"        a, b = ins[k-2], ins[k-1]\n"
	"        if a.opname != 'LOAD_CONST' or b.opname != 'LOAD_CONST': continue\n"
	"        if any(e.lasti and e.start <= i.offset < e.end for e in ents): continue\n"
	"        lvl, fl, name = a.argval, b.argval, i.argval\n"
	"        if type(lvl) is not int or lvl < 0 or lvl > 32: continue\n"
	"        if not (lvl > 0 if name == '' else ok(name, True)): continue\n"
	"        if name: res.append((lvl, name, '-'))\n"
	"        if type(fl) is tuple:\n"
	"            for s in fl:\n"
	"                if type(s) is str and ok(s, False): res.append((lvl, name or '-', s))\n"
	"    return res\n"
	"srcs = [l.strip() for l in sys.stdin if l.strip()]\n"
	"if not srcs:\n"
	"    d = os.path.dirname(os.__file__)\n"
	"    srcs = [p for p in glob.glob(d + '/**/*.py', recursive=True) if '/test' not in p and '/site-packages/' not in p and '/dist-packages/' not in p]\n"
	"for n, src in enumerate(srcs):\n"
	"    try:\n"
	"        co = compile(open(src, 'rb').read(), src, 'exec')\n"
	"    except Exception:\n"
	"        continue\n"
	"    pyc = '%s/%d.pyc' % (out, n)\n"
	"    py_compile.compile(src, cfile=pyc, doraise=True)\n"
	"    print('SRC', src)\n"
	"    print('FILE', pyc)\n"
	"    for l, nm, s in items(co)[:256]: print(l, nm or '-', s)\n"
	"    print('END')\n";

/* Every kind of import, for the interpreter to compile. */
static const char cases[] =
	"import os.path, json\n"
	"import a.b.c as abc\n"
	"from . import r1, r2\n"
	"from .. m2 import n2, n3 as x\n"
	"from .pkg import *\n"
	"from x import (y)\n"
	"try:\n    import t1\nexcept ImportError:\n    import h1\nelse:\n    import e1\n"
	"finally:\n    import f1\n"
	"with open('x') as f:\n    import w1\n"
	"if len('x') > 2:\n    import cond1\n"
	"import sys\n"
	"if sys.platform == 'win32':\n    import winonly\nelse:\n    import notwin\n"
	"if sys.platform != 'win32':\n    import notwin2\n"
	"class C:\n    import inclass\n"
	"def f():\n    import infunc\n"
	"for i in range(3):\n    import inloop\n"
	"v = [%s]\n"
	"import late\n";

static uint8_t *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *b = NULL;
	long n;

	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
		b = malloc((size_t)n + 1);
		if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
			free(b);
			b = NULL;
		}
		*len = (size_t)n;
	}
	fclose(f);
	return b;
}

static void fmt_item(const uint8_t *b, const struct nx_pyc_item *it, char *out, size_t cap)
{
	snprintf(out, cap, "%u %.*s %.*s", it->level, it->name_len ? (int)it->name_len : 1,
		 it->name_len ? (const char *)b + it->name_off : "-",
		 it->sub_len ? (int)it->sub_len : 1, it->sub_len ? (const char *)b + it->sub_off : "-");
}

/* Truncations and byte flips of a real file: no crash, no read outside. */
static void mangle(const uint8_t *b, size_t len, struct nx_pyc_imports *imp, const char *what)
{
	uint8_t *c = malloc(len);
	unsigned bad = 0;

	if (!c)
		return;
	for (size_t n = 0; n < len; n += 1 + n / 64) {
		memcpy(c, b, n);
		bad += nx_pyc_parse(c, n, imp) == 0 && n < len; /* a cut file is never whole */
	}
	ok(bad == 0, "%s: every truncation is refused", what);
	for (size_t i = 0; i < len; i += 1 + i / 128) {
		memcpy(c, b, len);
		c[i] ^= 0x5a;
		(void)nx_pyc_parse(c, len, imp);
		bad += imp->n > NX_PYC_ITEMS_MAX;
	}
	ok(bad == 0, "%s: byte flips parse within bounds", what);
	free(c);
}

static void run_python(const char *py, const char *tmp)
{
	char cmd[4096], line[1024], srcf[512], src[1024] = "";
	uint8_t *b = NULL;
	size_t len = 0;
	struct nx_pyc_imports *imp = malloc(sizeof(*imp));
	unsigned files = 0, wrong = 0, k = 0, mangled = 0, found = 0;
	FILE *f, *pipe;
	int rc = 0;

	if (!imp)
		return;
	/* the cases file: with a long constant list, so the import after it
	 * needs EXTENDED_ARG for its names */
	snprintf(srcf, sizeof(srcf), "%s/cases.py", tmp);
	f = fopen(srcf, "w");
	if (!f) {
		free(imp);
		return;
	}
	{
		char *big = malloc(400 * 12 + sizeof(cases));
		size_t o = 0;

		for (int i = 0; big && i < 400; i++)
			o += (size_t)sprintf(big + o, "'c%d',", i);
		if (big)
			fprintf(f, cases, big);
		for (int i = 0; i < 300; i++)
			fprintf(f, "n%d = %d\n", i, i);
		fprintf(f, "import after_many_names\n");
		fprintf(f, "if __name__ == '__main__':\n    import mainonly\nimport after_main\n");
		free(big);
	}
	fclose(f);
	snprintf(cmd, sizeof(cmd), "%s/oracle.py", tmp);
	f = fopen(cmd, "w");
	if (!f) {
		free(imp);
		return;
	}
	fputs(oracle, f);
	fclose(f);
	for (int pass = 0; pass < 2; pass++) {
		/* pass 0: the cases file; pass 1: the whole standard library */
		snprintf(cmd, sizeof(cmd), "%s%s%s | %s %s/oracle.py %s", pass ? "true" : "echo ",
			 pass ? "" : srcf, "", py, tmp, tmp);
		pipe = popen(cmd, "r");
		if (!pipe)
			break;
		while (fgets(line, sizeof(line), pipe)) {
			char got[600];

			line[strcspn(line, "\n")] = 0;
			if (strncmp(line, "SRC ", 4) == 0) {
				snprintf(src, sizeof(src), "%s", line + 4);
				continue;
			}
			if (strncmp(line, "FILE ", 5) == 0) {
				free(b);
				b = slurp(line + 5, &len);
				rc = b ? nx_pyc_parse(b, len, imp) : -EIO;
				k = 0;
				files++;
				if (rc != 0) {
					wrong++;
					diag("%s: %s", line + 5, strerror(-rc));
				}
				if (pass == 0 && b && rc == 0) {
					for (unsigned i = 0; i < imp->n; i++) {
						fmt_item(b, &imp->item[i], got, sizeof(got));
						diag("%s", got);
					}
				}
				continue;
			}
			if (strcmp(line, "END") == 0) {
				if (b && rc == 0 && k != imp->n) {
					wrong++;
					diag("%s: %u imports found, %u by dis", src, imp->n, k);
				}
				if (b && rc == 0 && mangled < (pass ? 2 : 1) && len > 200) {
					mangle(b, len, imp, pass ? "a library module" : "the cases");
					mangled++;
				}
				continue;
			}
			if (!b || rc != 0)
				continue;
			if (k < imp->n) {
				fmt_item(b, &imp->item[k], got, sizeof(got));
				if (strcmp(got, line) != 0) {
					wrong++;
					diag("import %u: %s, dis: %s", k, got, line);
				}
				found++;
			}
			k++;
		}
		pclose(pipe);
		if (pass == 0)
			ok(files == 1 && wrong == 0 && found >= 10, "%s: the cases file: imports as dis reads them",
			   py);
	}
	ok(files > 100 && wrong == 0, "%s: %u files of its standard library: imports as dis reads them (%u imports)",
	   py, files, found);
	free(b);
	free(imp);
}

int main(void)
{
	const char *list = getenv("NIXOCI_TEST_PYTHONS");
	char *pys = strdup(list && *list ? list : "/usr/bin/python3"), *save = NULL;
	char tmp[] = "/tmp/nixoci-pyc-XXXXXX";
	struct nx_pyc_imports *imp = malloc(sizeof(*imp));
	static const uint8_t junk[64] = { 0xa7, 0x0d, '\r', '\n' };
	unsigned ran = 0;

	if (!pys || !imp || !mkdtemp(tmp))
		return 1;
	/* no prediction without a known magic number */
	is_int(nx_pyc_parse((const uint8_t *)"\x42\x0d\r\n", 4, imp), -EINVAL, "too short");
	{
		uint8_t b[32] = { 0x6f, 0x0d, '\r', '\n' }; /* 3.10 */

		b[16] = 'c';
		is_int(nx_pyc_parse(b, sizeof(b), imp), -ENOTSUP, "another version: -ENOTSUP");
	}
	is_int(nx_pyc_parse(junk, sizeof(junk), imp), -EINVAL, "no code object: -EINVAL");
	for (char *py = strtok_r(pys, ":", &save); py; py = strtok_r(NULL, ":", &save)) {
		if (access(py, X_OK) != 0) {
			diag("%s: not here, skipped", py);
			continue;
		}
		run_python(py, tmp);
		ran++;
	}
	ok(ran > 0, "at least one interpreter ran");
	{
		char cmd[600];

		snprintf(cmd, sizeof(cmd), "rm -rf %s", tmp);
		if (system(cmd) != 0)
			diag("could not remove %s", tmp);
	}
	free(pys);
	free(imp);
	return done_testing();
}
