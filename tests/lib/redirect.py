#!/usr/bin/python3
"""tests/lib/redirect.py: a registry front that sends blob GETs to "object storage".

  redirect.py --registry 127.0.0.1:PORT --storage-dir DIR --port-file F --log L

Listens on 127.0.0.1 (the registry front) and on 127.0.0.2 (the storage
host), both on ports of their own, written to F as "FRONT STORAGE". The
front proxies GET/HEAD to the registry, Authorization included, except blob
GETs that the registry would serve (checked with a HEAD carrying the
client's Authorization): those get a 307 to the storage host with a
"signature" counter. The storage host serves the blob from the registry's
storage directory (Range supported) and refuses the first signature issued
for each blob with 403, as an expired signed URL. Every storage request is
logged with whether it carried an Authorization header (it never should).
"""
import argparse
import http.client
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

ap = argparse.ArgumentParser()
ap.add_argument("--registry", required=True)
ap.add_argument("--storage-dir", required=True)
ap.add_argument("--port-file", required=True)
ap.add_argument("--log", required=True)
args = ap.parse_args()

LOCK = threading.Lock()
SIGS = {}  # digest -> signatures issued
STORAGE_PORT = [0]
BLOB_RE = re.compile(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$")
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate", "content-length"}


def log(line):
    with LOCK, open(args.log, "a") as f:
        f.write(line + "\n")


class Front(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        pass

    def forward(self, method, drop=()):
        c = http.client.HTTPConnection(args.registry, timeout=30)
        hdrs = {k: v for k, v in self.headers.items()
                if k.lower() not in HOP | {"host"} | set(drop)}
        c.request(method, self.path, headers=hdrs)
        return c, c.getresponse()

    def relay(self, method):
        c, r = self.forward(method)
        body = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if method != "HEAD" else
                                               r.getheader("Content-Length", "0")))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)
        c.close()

    def do_HEAD(self):
        self.relay("HEAD")

    def do_GET(self):
        m = BLOB_RE.match(urlparse(self.path).path)
        if not m:
            self.relay("GET")
            return
        c, r = self.forward("HEAD", drop=("range",))
        r.read()
        c.close()
        log("front blob GET %s auth=%s head=%d" % (
            m.group(2), "yes" if "Authorization" in self.headers else "no", r.status))
        if r.status != 200:
            self.relay("GET")  # 401 challenge, 404: the registry's own answer
            return
        with LOCK:
            n = SIGS.get(m.group(2), 0) + 1
            SIGS[m.group(2)] = n
        self.send_response(307)
        self.send_header("Location", "http://127.0.0.2:%d/bucket/%s?sig=%d" % (
            STORAGE_PORT[0], m.group(2), n))
        self.send_header("Content-Length", "0")
        self.end_headers()


class Storage(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        u = urlparse(self.path)
        auth = "yes" if "Authorization" in self.headers else "no"
        digest = u.path.rsplit("/", 1)[-1]
        sig = parse_qs(u.query).get("sig", ["0"])[0]
        if not re.match(r"^sha256:[0-9a-f]{64}$", digest):
            log("storage GET bad-path authorization=%s" % auth)
            self.reply(404)
            return
        if sig == "1":
            log("storage GET %s sig=%s authorization=%s status=403" % (digest, sig, auth))
            self.reply(403, b"<Error><Code>AccessDenied</Code>"
                            b"<Message>Request has expired</Message></Error>")
            return
        hexd = digest[7:]
        path = os.path.join(args.storage_dir, "docker/registry/v2/blobs/sha256",
                            hexd[:2], hexd, "data")
        with open(path, "rb") as f:
            data = f.read()
        rng = self.headers.get("Range")
        m = re.match(r"^bytes=(\d+)-(\d*)$", rng or "")
        if m:
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) else len(data) - 1
            b = min(b, len(data) - 1)
            part = data[a:b + 1]
            log("storage GET %s sig=%s authorization=%s status=206" % (digest, sig, auth))
            self.reply(206, part, [("Content-Range", "bytes %d-%d/%d" % (a, b, len(data)))])
        else:
            log("storage GET %s sig=%s authorization=%s status=200" % (digest, sig, auth))
            self.reply(200, data)


front = ThreadingHTTPServer(("127.0.0.1", 0), Front)
storage = ThreadingHTTPServer(("127.0.0.2", 0), Storage)
STORAGE_PORT[0] = storage.server_address[1]
threading.Thread(target=storage.serve_forever, daemon=True).start()
with open(args.port_file + ".tmp", "w") as f:
    f.write("%d %d" % (front.server_address[1], STORAGE_PORT[0]))
os.rename(args.port_file + ".tmp", args.port_file)
front.serve_forever()
