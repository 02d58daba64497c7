/*
 * tools/serve.c: `nixoci serve`, a read-only Nix binary cache over a
 * registry repository (libmicrohttpd, one thread per connection).
 *
 *   GET /nix-cache-info              StoreDir /nix/store
 *   GET /<hash>.narinfo              from the manifest under tag <hash>
 *   GET /nar/<manifest hex>.nar.zst  the NAR layer's zstd frames
 *
 * The narinfo is the manifest's annotations (docs/format.md section 2), with
 * the signatures Nix made or imported, so Nix checks them with its own keys.
 * Its URL names the manifest by digest, so the NAR served is the one of the
 * manifest that narinfo came from.
 *
 * Nothing unverified is served. A NAR body is the NAR layer blob without
 * its seek table: the zstd frames, a valid .nar.zst with no recompression.
 * The TOC (verified against the manifest's layer digest) lists each frame's
 * SHA-256; frames are fetched in batches, and each one is checked before a
 * byte of it is sent. On a mismatch the response is aborted (the connection
 * closes short of its Content-Length), so a tampered registry blob makes
 * Nix's download fail and never hands it wrong bytes. The seek table is left
 * out because no frame digest covers it and Nix does not need it.
 *
 * --redirect sends Nix to the registry's blob URL instead, when the
 * registry asked for no credentials. Those bytes are then checked only by
 * Nix (NarHash), and include the seek table, a zstd skippable frame.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "tools/tools_i.h"

static const char usage_serve[] =
	"usage: nixoci serve [OPTIONS] REGISTRY/REPO\n"
	"\n"
	"Serves the repository as a read-only Nix binary cache over HTTP until\n"
	"SIGINT or SIGTERM: nix copy --from http://ADDR:PORT, or a substituter.\n"
	"Every NAR byte is checked against the TOC's frame digests before it is sent.\n"
	"\n"
	"options:\n"
	"  -l, --listen ADDR:PORT   where to listen (default 127.0.0.1:8380; port 0\n"
	"                           picks one); [::1]:PORT for IPv6\n"
	"  --priority N             Priority in nix-cache-info (default 40)\n"
	"  --redirect               send NAR requests to the registry when it needs no\n"
	"                           credentials (Nix alone then checks the bytes)\n"
	"  --max-connections N      default 64\n"
	"  --cafile FILE, --insecure, --timeout SECONDS, -v   as for every command\n"
	"\n"
	"It prints \"serving REF at http://ADDR:PORT\" on standard output once it listens.\n";

#define BATCH_MAX (8u << 20) /* compressed bytes fetched per registry request */
#define NARINFO_PREFIX "/nar/"

struct serve {
	struct nx_registry *reg;
	int priority;
	int redirect;
};

/* ---------------------------------------------------------- responses */

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
			     const char *body)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result reply_err(struct MHD_Connection *c, int err)
{
	if (err == -ENOENT)
		return reply(c, MHD_HTTP_NOT_FOUND, "text/plain", "not found\n");
	if (err == -ENOMEM)
		return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain", "out of memory\n");
	return reply(c, MHD_HTTP_BAD_GATEWAY, "text/plain",
		     "the registry failed or sent bad data; see nixoci serve's log\n");
}

/* ------------------------------------------------------------ narinfo */

/* Appends to a growing string; *s NULL-safe. */
static int cat(char **s, const char *fmt, ...) NX_PRINTF(2, 3);
static int cat(char **s, const char *fmt, ...)
{
	char *add = NULL, *n;
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vasprintf(&add, fmt, ap);
	va_end(ap);
	if (r < 0)
		return -ENOMEM;
	r = asprintf(&n, "%s%s", *s ? *s : "", add);
	free(add);
	if (r < 0)
		return -ENOMEM;
	free(*s);
	*s = n;
	return 0;
}

static int narinfo_text(const struct nx_manifest *m, const uint8_t mdigest[NX_SHA256_LEN],
			char **out)
{
	const struct nx_pathinfo *pi = &m->info;
	char nh[NX_NARHASH_STRLEN], hex[2 * NX_SHA256_LEN + 1];
	char *s = NULL;
	size_t i;
	int r;

	nx_narhash_format(pi->nar_hash, nh);
	nx_hex(mdigest, NX_SHA256_LEN, hex);
	r = cat(&s, "StorePath: %s\nURL: nar/%s.nar.zst\nCompression: zstd\nNarHash: %s\n"
		    "NarSize: %llu\nReferences: ",
		pi->store_path, hex, nh, (unsigned long long)pi->nar_size);
	/* "References: " even when empty: Nix reads the value after ": " */
	for (i = 0; r == 0 && i < pi->nrefs; i++)
		r = cat(&s, i ? " %s" : "%s", pi->refs[i]);
	if (r == 0)
		r = cat(&s, "\n");
	if (r == 0 && pi->deriver)
		r = cat(&s, "Deriver: %s\n", pi->deriver);
	for (i = 0; r == 0 && i < pi->nsigs; i++)
		r = cat(&s, "Sig: %s\n", pi->sigs[i]);
	if (r == 0 && pi->ca)
		r = cat(&s, "CA: %s\n", pi->ca);
	if (r < 0) {
		free(s);
		return r;
	}
	*out = s;
	return 0;
}

static enum MHD_Result serve_narinfo(struct serve *sv, struct MHD_Connection *c,
				     const char *hash)
{
	struct nx_manifest m = { 0 };
	uint8_t digest[NX_SHA256_LEN];
	char *body = NULL, *text = NULL;
	const char *base;
	size_t len = 0;
	enum MHD_Result ret;
	int r;

	r = nx_registry_get_manifest(sv->reg, hash, NX_MANIFEST_MAX, &body, &len, digest, NULL);
	if (r < 0)
		return reply_err(c, r);
	r = nx_manifest_parse(body, len, &m);
	free(body);
	if (r < 0) {
		nx_log(NX_LOG_ERR, "%s: tag %s holds no valid nixoci manifest",
		       nx_registry_ref(sv->reg), hash);
		return reply_err(c, -EBADMSG);
	}
	if (nx_storepath_check(m.info.store_path, &base) < 0 ||
	    strncmp(base, hash, NX_HASH_LEN) != 0) {
		nx_log(NX_LOG_ERR, "%s: tag %s holds the manifest of %s",
		       nx_registry_ref(sv->reg), hash, m.info.store_path);
		nx_manifest_release(&m);
		return reply_err(c, -EBADMSG);
	}
	r = narinfo_text(&m, digest, &text);
	nx_manifest_release(&m);
	if (r < 0)
		return reply_err(c, r);
	ret = reply(c, MHD_HTTP_OK, "text/x-nix-narinfo", text);
	free(text);
	return ret;
}

/* ---------------------------------------------------------- NAR bodies */

struct nar_stream {
	struct serve *sv;
	struct nx_manifest m;
	struct nx_toc *toc;
	uint32_t next;     /* first frame not yet in buf */
	uint8_t *buf;      /* verified frames [bstart, next) */
	uint64_t bstart;   /* blob offset of buf[0] */
	size_t blen, bcap; /* bytes in buf; allocated */
	uint64_t want_off, want_len; /* the range being fetched */
};

static void nar_stream_free(void *cls)
{
	struct nar_stream *st = cls;

	if (!st)
		return;
	nx_manifest_release(&st->m);
	nx_toc_free(st->toc);
	free(st->buf);
	free(st);
}

struct collect {
	uint8_t *buf;
	uint64_t off, len;
	uint64_t got;
};

/* Keeps bytes [off, off+len) of the blob, whatever the registry sends. */
static int collect_cb(void *ctx, uint64_t off, const void *buf, size_t len)
{
	struct collect *cl = ctx;
	uint64_t s = off, e = off + len;

	if (e <= cl->off || s >= cl->off + cl->len)
		return 0;
	if (s < cl->off) {
		buf = (const uint8_t *)buf + (cl->off - s);
		s = cl->off;
	}
	if (e > cl->off + cl->len)
		e = cl->off + cl->len;
	memcpy(cl->buf + (s - cl->off), buf, e - s);
	if (e - cl->off > cl->got)
		cl->got = e - cl->off;
	return 0;
}

/* Fetches and verifies the next batch of frames into st->buf. */
static int fill(struct nar_stream *st)
{
	const struct nx_toc_frame *f = st->toc->frames;
	struct collect cl = { 0 };
	struct nx_window w = { .cb = collect_cb, .ctx = &cl };
	uint32_t i, end = st->next;
	uint64_t len = 0;
	int r;

	while (end < st->toc->nframes && (len == 0 || len + f[end].clen <= BATCH_MAX))
		len += f[end++].clen;
	if (len > st->bcap) {
		uint8_t *nb = realloc(st->buf, len);

		if (!nb)
			return -ENOMEM;
		st->buf = nb;
		st->bcap = len;
	}
	cl.buf = st->buf;
	cl.off = f[st->next].coff;
	cl.len = len;
	/* format 2: the NAR layer is a range of the pack at nar_off */
	w.base = st->m.nar_off;
	w.len = st->m.nar.size;
	r = nx_registry_get_blob(st->sv->reg, st->m.nar.digest, w.base + cl.off, len, nx_window_cb,
				 &w);
	if (r < 0)
		return r;
	if (cl.got != len) {
		nx_log(NX_LOG_ERR, "%s: the registry sent %llu of %llu bytes of the NAR blob",
		       st->m.info.store_path, (unsigned long long)cl.got,
		       (unsigned long long)len);
		return -EIO;
	}
	for (i = st->next; i < end; i++) {
		uint8_t d[NX_SHA256_LEN];

		nx_sha256(st->buf + (f[i].coff - cl.off), f[i].clen, d);
		if (memcmp(d, f[i].sha256, NX_SHA256_LEN) != 0) {
			char bd[NX_DIGEST_STRLEN];

			nx_digest_format(st->m.nar.digest, bd);
			nx_log(NX_LOG_ERR,
			       "%s: frame %u of NAR blob %s does not match its TOC digest; "
			       "aborting the response (the registry's copy is damaged)",
			       st->m.info.store_path, i, bd);
			return -EBADMSG;
		}
	}
	st->bstart = cl.off;
	st->blen = len;
	st->next = end;
	return 0;
}

static ssize_t nar_read(void *cls, uint64_t pos, char *out, size_t max)
{
	struct nar_stream *st = cls;
	size_t n;

	if (pos >= st->bstart + st->blen) {
		if (st->next >= st->toc->nframes)
			return MHD_CONTENT_READER_END_OF_STREAM;
		if (fill(st) < 0)
			return MHD_CONTENT_READER_END_WITH_ERROR;
	}
	if (pos < st->bstart)
		return MHD_CONTENT_READER_END_WITH_ERROR; /* MHD reads forward only */
	n = st->bstart + st->blen - pos;
	if (n > max)
		n = max;
	memcpy(out, st->buf + (pos - st->bstart), n);
	return (ssize_t)n;
}

/* The manifest @hex names, its TOC fetched and verified. */
static int nar_open(struct serve *sv, const char *hex, struct nar_stream **out)
{
	struct nar_stream *st;
	uint8_t d[NX_SHA256_LEN];
	char ref[NX_DIGEST_STRLEN], *body = NULL, *what = NULL;
	size_t len = 0;
	int r;

	snprintf(ref, sizeof(ref), "sha256:%.64s", hex);
	st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	st->sv = sv;
	r = nx_registry_get_manifest(sv->reg, ref, NX_MANIFEST_MAX, &body, &len, d, NULL);
	if (r == 0) {
		r = nx_manifest_parse(body, len, &st->m);
		if (r < 0)
			nx_log(NX_LOG_ERR, "%s: manifest %s is not a valid nixoci manifest",
			       nx_registry_ref(sv->reg), ref);
	}
	free(body);
	if (r < 0)
		goto fail;
	r = nx_cli_get_toc(sv->reg, &st->m, &st->toc, &what);
	if (r < 0 && r != -EINVAL && r != -E2BIG) /* those the TOC reader logged */
		nx_log(NX_LOG_ERR, "%s: %s", st->m.info.store_path, what ? what : strerror(-r));
	free(what);
	if (r == -E2BIG)
		r = -EBADMSG; /* a malformed layer like any other */
	if (r < 0)
		goto fail;
	*out = st;
	return 0;
fail:
	nar_stream_free(st);
	return r;
}

static enum MHD_Result serve_nar(struct serve *sv, struct MHD_Connection *c, const char *hex)
{
	struct MHD_Response *resp;
	struct nar_stream *st = NULL;
	uint64_t size;
	enum MHD_Result ret;
	int r;

	r = nar_open(sv, hex, &st);
	if (r < 0)
		return reply_err(c, r == -EBADMSG || r == -EINVAL ? -EBADMSG : r);
	/* a pack holds other paths too: a redirect would send them all */
	if (sv->redirect && !st->m.packed) {
		char *url = NULL;

		if (nx_registry_public_blob_url(sv->reg, st->m.nar.digest, &url) == 0) {
			nar_stream_free(st);
			resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
			if (!resp) {
				free(url);
				return MHD_NO;
			}
			MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, url);
			free(url);
			ret = MHD_queue_response(c, MHD_HTTP_FOUND, resp);
			MHD_destroy_response(resp);
			return ret;
		}
	}
	size = st->m.nar.size - nx_seektable_size(st->toc->nframes);
	resp = MHD_create_response_from_callback(size, 256 * 1024, nar_read, st, nar_stream_free);
	if (!resp) {
		nar_stream_free(st);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/zstd");
	ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* ------------------------------------------------------------ routing */

static int is_hash(const char *s, size_t len)
{
	uint8_t raw[20];

	return len == NX_HASH_LEN && nx_nix32_decode(s, NX_HASH_LEN, raw, 20) == 0;
}

static int is_hex64(const char *s)
{
	size_t i;

	for (i = 0; i < 64; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return 1;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
			      const char *method, const char *version, const char *upload,
			      size_t *upload_len, void **con_cls)
{
	struct serve *sv = cls;
	size_t n = strlen(url);
	char buf[128];

	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain",
			     "read-only: GET and HEAD only\n");
	nx_log(NX_LOG_INFO, "%s %s", method, url);
	if (strcmp(url, "/nix-cache-info") == 0) {
		snprintf(buf, sizeof(buf), "StoreDir: %s\nWantMassQuery: 1\nPriority: %d\n",
			 NX_STORE_DIR, sv->priority);
		return reply(c, MHD_HTTP_OK, "text/x-nix-cache-info", buf);
	}
	if (n == 1 + NX_HASH_LEN + 8 && strcmp(url + 1 + NX_HASH_LEN, ".narinfo") == 0 &&
	    is_hash(url + 1, NX_HASH_LEN)) {
		memcpy(buf, url + 1, NX_HASH_LEN);
		buf[NX_HASH_LEN] = '\0';
		return serve_narinfo(sv, c, buf);
	}
	if (n == strlen(NARINFO_PREFIX) + 64 + 8 &&
	    strncmp(url, NARINFO_PREFIX, strlen(NARINFO_PREFIX)) == 0 &&
	    is_hex64(url + strlen(NARINFO_PREFIX)) && strcmp(url + n - 8, ".nar.zst") == 0) {
		memcpy(buf, url + strlen(NARINFO_PREFIX), 64);
		buf[64] = '\0';
		return serve_nar(sv, c, buf);
	}
	return reply_err(c, -ENOENT);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512];
	size_t n;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n && msg[n - 1] == '\n')
		msg[--n] = '\0';
	/* a client that goes away mid-body is routine: keep it out of error logs */
	nx_log(NX_LOG_INFO, "http: %s", msg);
}

/* ---------------------------------------------------------------- main */

static int parse_listen(const char *arg, struct sockaddr_storage *ss)
{
	char host[256];
	const char *colon;
	struct addrinfo hints = { 0 }, *ai = NULL;
	size_t hl;

	if (arg[0] == '[') {
		const char *rb = strchr(arg, ']');

		if (!rb || rb[1] != ':')
			return -EINVAL;
		hl = (size_t)(rb - arg - 1);
		if (hl >= sizeof(host))
			return -EINVAL;
		memcpy(host, arg + 1, hl);
		colon = rb + 1;
	} else {
		colon = strrchr(arg, ':');
		if (!colon)
			return -EINVAL;
		hl = (size_t)(colon - arg);
		if (hl == 0 || hl >= sizeof(host))
			return -EINVAL;
		memcpy(host, arg, hl);
	}
	host[hl] = '\0';
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host, colon + 1, &hints, &ai) != 0 || !ai)
		return -EINVAL;
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	freeaddrinfo(ai);
	return 0;
}

int nx_cmd_serve(struct nx_cli *cli, int argc, char **argv)
{
	enum { O_PRIORITY = NX_OPT_FIRST_PRIVATE, O_REDIRECT, O_MAXCONN };
	static const struct option lo[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "priority", required_argument, NULL, O_PRIORITY },
		{ "redirect", no_argument, NULL, O_REDIRECT },
		{ "max-connections", required_argument, NULL, O_MAXCONN },
		NX_CLI_LONGOPTS,
		{ NULL, 0, NULL, 0 },
	};
	struct serve sv = { .priority = 40 };
	const char *listen = "127.0.0.1:8380", *ref;
	struct sockaddr_storage ss = { 0 };
	struct MHD_Daemon *d = NULL;
	const union MHD_DaemonInfo *di;
	char host[INET6_ADDRSTRLEN], *end;
	unsigned flags;
	sigset_t set;
	long maxconn = 64, v;
	int c, sig, ret = NX_EXIT_ERR;

	while ((c = getopt_long(argc, argv, ":hvl:", lo, NULL)) != -1) {
		switch (c) {
		case 'h':
			fputs(usage_serve, stdout);
			return NX_EXIT_OK;
		case 'l':
			listen = optarg;
			break;
		case O_REDIRECT:
			sv.redirect = 1;
			break;
		case O_PRIORITY:
		case O_MAXCONN:
			errno = 0;
			v = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || v < (c == O_PRIORITY ? 0 : 1) ||
			    v > 10000)
				return nx_cli_usage_error(usage_serve, "serve: bad %s '%s'",
							  c == O_PRIORITY ? "--priority"
									  : "--max-connections",
							  optarg);
			if (c == O_PRIORITY)
				sv.priority = (int)v;
			else
				maxconn = v;
			break;
		case '?':
			return nx_cli_usage_error(usage_serve, "serve: unknown option '%s'",
						  argv[optind - 1]);
		case ':':
			return nx_cli_usage_error(usage_serve, "serve: option '%s' needs an argument",
						  argv[optind - 1]);
		default:
			if (nx_cli_opt(cli, c, optarg) < 0)
				return nx_cli_synopsis(usage_serve);
		}
	}
	if (argc - optind != 1)
		return nx_cli_usage_error(usage_serve, "serve: %s",
					  optind >= argc ? "missing REGISTRY/REPO"
							 : "one REGISTRY/REPO only");
	ref = argv[optind];
	if (parse_listen(listen, &ss) < 0)
		return nx_cli_usage_error(usage_serve,
					  "serve: bad --listen '%s': want ADDR:PORT with a numeric "
					  "address (127.0.0.1:8380, [::1]:8380)",
					  listen);
	if (nx_cli_registry(cli, ref, 1, &sv.reg) < 0)
		return NX_EXIT_ERR;
	if (nx_registry_ping(sv.reg) < 0)
		goto out;

	/* the connection threads inherit this mask; only this thread waits */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
		MHD_USE_ERROR_LOG;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	d = MHD_start_daemon(flags, 0, NULL, NULL, handle, &sv, MHD_OPTION_SOCK_ADDR, &ss,
			     MHD_OPTION_CONNECTION_LIMIT, (unsigned)maxconn,
			     MHD_OPTION_CONNECTION_TIMEOUT, 120u, MHD_OPTION_EXTERNAL_LOGGER,
			     mhd_log, NULL, MHD_OPTION_END);
	if (!d) {
		nx_log(NX_LOG_ERR, "serve: cannot listen on %s (address in use or not local?)",
		       listen);
		goto out;
	}
	di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	if (ss.ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof(host));
	else
		inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof(host));
	printf("serving %s at http://%s%s%s:%u\n", ref, ss.ss_family == AF_INET6 ? "[" : "", host,
	       ss.ss_family == AF_INET6 ? "]" : "", di ? (unsigned)di->port : 0);
	fflush(stdout);
	if (sigwait(&set, &sig) == 0)
		nx_log(NX_LOG_INFO, "serve: %s, stopping", strsignal(sig));
	ret = NX_EXIT_OK;
out:
	if (d)
		MHD_stop_daemon(d);
	nx_registry_close(sv.reg);
	return ret;
}
