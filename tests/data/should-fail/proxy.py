#!/usr/bin/python3
"""tests/data/should-fail/proxy.py PORT UPSTREAM OVERRIDES.json: a hostile
registry front (test only, loopback). Every request is forwarded to the real
registry at UPSTREAM (host:port), except paths listed in OVERRIDES.json (read
again on every request), which get a canned answer:
    {"/v2/repo/manifests/TAG": {"status": 200, "type": "text/html",
                                "file": "/path/body", "digest": "sha256:..."}}
"digest" (optional) becomes Docker-Content-Digest. Prints "ready" when
listening.
"""
import http.client
import http.server
import json
import sys

PORT, UPSTREAM, OVERRIDES = int(sys.argv[1]), sys.argv[2], sys.argv[3]
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("proxy: %s %s\n" % (self.command, self.path))

    def canned(self):
        try:
            with open(OVERRIDES) as f:
                ov = json.load(f)
        except (OSError, ValueError):
            return False
        o = ov.get(self.path.split("?")[0])
        if not o:
            return False
        with open(o["file"], "rb") as f:
            body = f.read()
        self.send_response(o.get("status", 200))
        self.send_header("Content-Type", o.get("type", "application/octet-stream"))
        self.send_header("Content-Length", str(len(body)))
        if o.get("digest"):
            self.send_header("Docker-Content-Digest", o["digest"])
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return True

    def forward(self):
        if self.canned():
            return
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in HOP | {"host"}}
        c = http.client.HTTPConnection(UPSTREAM, timeout=60)
        try:
            c.request(self.command, self.path, body=body, headers=hdrs)
            r = c.getresponse()
            data = r.read()
        except OSError as e:
            self.send_error(502, str(e))
            return
        finally:
            c.close()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", r.getheader("Content-Length", "0"))
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = forward


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


s = Server(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
s.serve_forever()
