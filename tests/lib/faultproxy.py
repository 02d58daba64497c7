#!/usr/bin/python3
"""tests/lib/faultproxy.py: a fault-injecting HTTP/1.1 proxy for the tests.

    faultproxy.py --upstream HOST:PORT --control FILE --port-file FILE [--log FILE]

Listens on a free loopback port (written to --port-file once it accepts)
and forwards every request to the real registry at --upstream. What it does
to the traffic is read from --control at every request, so a test changes
the fault at run time by replacing that file (write a temporary file, then
rename it over the control file: the proxy never sees half a line).

The control file holds one line of KEY=VALUE words:

    mode=pass|refuse|rst|reset|truncate|stall|status|corrupt
    match=SUBSTRING   only requests whose path contains it get the fault
                      (e.g. /blobs/ or /manifests/); others pass
    digest=HEX        only requests for the blob or manifest with this
                      sha256 (64 hex digits, with or without "sha256:"): one
                      object fails while every other one is served
    method=GET        only this method gets the fault (default: any)
    every=N           fault every Nth matching request (default 1: all)
    count=N           only the first N faults, then pass (default 0: no limit)
    after=BYTES       reset, truncate, stall: body bytes sent first (default 0;
                      a value < 0 means half of the body)
    code=N            status: the code sent (default 503)
    retry_after=N     status: add "Retry-After: N"
    at=BYTE           corrupt: which body byte to flip (default: the middle);
                      at=part: in a multipart/byteranges body, a byte of the
                      first part's data (elsewhere the middle)
    link=loop|endless tag lists (GETs of .../tags/list) that never end, whatever
                      the mode: "loop" points every page's Link rel="next" at
                      one of two URLs in turn (the registry answers both), so
                      the pages cycle; "endless" at a new URL every time
                      (last=zzzz<counter>: empty pages, forever)
    ranges=whole|first|416
                      (any mode) a server without multi-range support: a
                      Range header naming several ranges is dropped (the
                      registry answers 200 with the whole blob), cut to its
                      first range (206 with that one), or answered 416
                      without asking the registry; logged as
                      range=<as sent>:<what>
    delay=MS          hold every request MS milliseconds before forwarding it
                      (any mode): a link with that much added round-trip time.
                      While set, the start of each request is logged too, as
                      "<time> begin <method> <path> inflight=<n>" where n
                      counts the requests held on the link at that moment,
                      this one included: the registry-side view of
                      concurrency

Modes:
    pass      forward untouched
    refuse    close the listening socket: new connections are refused
              (ECONNREFUSED); a kept-alive connection is closed with RST at
              its next request. The port is bound again when the mode changes.
    rst       accept the request, then close the connection with RST
    reset     send the headers and AFTER body bytes, then RST
    truncate  send the headers (Content-Length intact) and AFTER body bytes,
              then a clean close (FIN)
    stall     send the headers and AFTER body bytes, then send nothing more
              until the mode changes or the client gives up; then close
    status    answer CODE (503 unless code= says otherwise) without asking
              the registry, with Retry-After when retry_after= is set
    corrupt   flip one byte of the body (the status and length are intact)

The fault counter ("every", "count") restarts whenever the control file's
contents change. Every request is logged as one line:

    <time> <method> <path> range=<range> -> <status> <what> bytes=<n>

where <what> is "pass" or "fault:<mode>". Tests grep the log to check that a
fault was really injected. Debian's python3 only: no third-party modules.
"""

import argparse
import http.client
import os
import select
import socket
import struct
import sys
import threading
import time

MAX_HEADER = 64 * 1024
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade"}


class Control:
    """The current fault, re-read from the control file at every request."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.text = None
        self.conf = {"mode": "pass"}
        self.matched = 0
        self.faults = 0

    def _load(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError:
            text = ""
        if text == self.text:
            return
        conf = {"mode": "pass"}
        for word in text.split():
            if "=" in word:
                k, v = word.split("=", 1)
                conf[k] = v
        self.text = text
        self.conf = conf
        self.matched = 0
        self.faults = 0

    def mode(self):
        with self.lock:
            self._load()
            return self.conf.get("mode", "pass")

    def link(self):
        with self.lock:
            self._load()
            return self.conf.get("link", "")

    def ranges(self):
        with self.lock:
            self._load()
            return self.conf.get("ranges", "")

    def delay(self):
        with self.lock:
            self._load()
            return int(self.conf.get("delay", "0")) / 1000.0

    def decide(self, method, path):
        """The fault for this request: a dict (conf) or None to pass."""
        with self.lock:
            self._load()
            c = self.conf
            if c.get("mode", "pass") == "pass":
                return None
            if c.get("match") and c["match"] not in path:
                return None
            if c.get("digest"):
                want = "sha256:" + c["digest"].split(":")[-1]
                if not path.split("?")[0].endswith("/" + want):
                    return None
            if c.get("method") and c["method"].upper() != method:
                return None
            self.matched += 1
            every = max(1, int(c.get("every", "1")))
            if self.matched % every:
                return None
            limit = int(c.get("count", "0"))
            if limit and self.faults >= limit:
                return None
            self.faults += 1
            return dict(c)


class Proxy:
    def __init__(self, args):
        self.pages = 0  # tag-list pages rewritten (link=endless numbers them)
        self.args = args
        uh, up = args.upstream.rsplit(":", 1)
        self.upstream = (uh, int(up))
        self.ctl = Control(args.control)
        self.log_lock = threading.Lock()
        self.logf = open(args.log, "a", buffering=1, encoding="utf-8") if args.log else None
        self.port = 0
        self.lsock = None
        self.inflight = 0

    def log(self, msg):
        line = "%.3f %s\n" % (time.time(), msg)
        with self.log_lock:
            if self.logf:
                self.logf.write(line)
            else:
                sys.stderr.write(line)

    def bind(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self.lsock = s

    def serve(self):
        self.bind()
        tmp = self.args.port_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("%d\n" % self.port)
        os.rename(tmp, self.args.port_file)
        self.log("listening on 127.0.0.1:%d, upstream %s:%d" % ((self.port,) + self.upstream))
        while True:
            if self.ctl.mode() == "refuse":
                if self.lsock:
                    self.lsock.close()
                    self.lsock = None
                    self.log("refuse: listening socket closed")
                time.sleep(0.05)
                continue
            if not self.lsock:
                try:
                    self.bind()
                except OSError as e:
                    self.log("cannot bind port %d again: %s" % (self.port, e))
                    time.sleep(0.1)
                    continue
                self.log("listening again on port %d" % self.port)
            r, _, _ = select.select([self.lsock], [], [], 0.1)
            if not r:
                continue
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self.connection, args=(conn,), daemon=True)
            t.start()

    # ------------------------------------------------------------ client side

    @staticmethod
    def rst_close(conn):
        """Close with RST instead of FIN (SO_LINGER with a zero timeout)."""
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        conn.close()

    @staticmethod
    def read_head(conn, buf):
        """Read up to the blank line; returns (head bytes, rest) or (None, _)."""
        while b"\r\n\r\n" not in buf:
            if len(buf) > MAX_HEADER:
                return None, b""
            data = conn.recv(65536)
            if not data:
                return None, b""
            buf += data
        head, rest = buf.split(b"\r\n\r\n", 1)
        return head, rest

    @staticmethod
    def read_exact(conn, n, buf):
        # pieces joined once: "buf += data" copies everything read so far
        # for every piece, quadratic in the size of a large blob upload
        parts, have = [buf], len(buf)
        while have < n:
            data = conn.recv(min(1 << 20, n - have))
            if not data:
                raise ConnectionError("client closed during request body")
            parts.append(data)
            have += len(data)
        buf = b"".join(parts)
        return buf[:n], buf[n:]

    def read_chunked(self, conn, buf):
        body = []
        while True:
            while b"\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    raise ConnectionError("client closed during chunked body")
                buf += data
            line, buf = buf.split(b"\r\n", 1)
            size = int(line.split(b";")[0], 16)
            chunk, buf = self.read_exact(conn, size + 2, buf)
            if size == 0:
                # trailers end with an empty line; we sent none, assume none
                return b"".join(body), buf
            body.append(chunk[:-2])

    def connection(self, conn):
        up = None
        buf = b""
        try:
            while True:
                head, buf = self.read_head(conn, buf)
                if head is None:
                    break
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = []
                for ln in lines[1:]:
                    if ":" in ln:
                        k, v = ln.split(":", 1)
                        headers.append((k.strip(), v.strip()))
                hmap = {k.lower(): v for k, v in headers}
                if hmap.get("transfer-encoding", "").lower() == "chunked":
                    body, buf = self.read_chunked(conn, buf)
                else:
                    body, buf = self.read_exact(conn, int(hmap.get("content-length", "0")), buf)
                keep = hmap.get("connection", "").lower() != "close"
                rng = hmap.get("range", "-")
                delay = self.ctl.delay()
                if delay > 0:
                    with self.log_lock:
                        self.inflight += 1
                        n = self.inflight
                    self.log("begin %s %s inflight=%d" % (method, target, n))
                    time.sleep(delay)
                    with self.log_lock:
                        self.inflight -= 1
                fault = self.ctl.decide(method, target)
                strip = self.ctl.ranges() if "," in rng else ""
                if strip:
                    rng = "%s:%s" % (rng, strip)
                    headers = [(k, v) for k, v in headers if k.lower() != "range"]
                    if strip == "first":
                        headers.append(("Range", hmap["range"].split(",")[0]))
                    elif strip == "416":
                        self.log("%s %s range=%s -> 416 pass bytes=0" % (method, target, rng))
                        conn.sendall(b"HTTP/1.1 416 Range Not Satisfiable\r\n"
                                     b"Content-Length: 0\r\n\r\n")
                        if not keep:
                            break
                        continue
                if self.ctl.mode() == "refuse":
                    self.log("%s %s range=%s -> rst fault:refuse bytes=0" % (method, target, rng))
                    self.rst_close(conn)
                    conn = None
                    break
                if fault and fault["mode"] == "rst":
                    self.log("%s %s range=%s -> rst fault:rst bytes=0" % (method, target, rng))
                    self.rst_close(conn)
                    conn = None
                    break
                if fault and fault["mode"] == "status":
                    code = int(fault.get("code", "503"))
                    msg = b'{"errors":[{"code":"UNAVAILABLE","message":"fault proxy"}]}\n'
                    extra = ""
                    if fault.get("retry_after"):
                        extra = "Retry-After: %s\r\n" % fault["retry_after"]
                    self.log("%s %s range=%s -> %d fault:status bytes=%d" %
                             (method, target, rng, code, len(msg)))
                    conn.sendall(("HTTP/1.1 %d Fault\r\nContent-Type: application/json\r\n"
                                  "Content-Length: %d\r\n%s\r\n" % (code, len(msg), extra))
                                 .encode("latin-1") + (msg if method != "HEAD" else b""))
                    if not keep:
                        break
                    continue
                # forward
                if up is None:
                    up = http.client.HTTPConnection(self.upstream[0], self.upstream[1],
                                                    timeout=120)
                fwd = {}
                for k, v in headers:
                    if k.lower() in HOP_BY_HOP or k.lower() == "content-length":
                        continue
                    fwd[k] = v
                try:
                    up.request(method, target, body=body if body or method in
                               ("POST", "PUT", "PATCH") else None, headers=fwd)
                    resp = up.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as e:
                    self.log("%s %s range=%s -> upstream error %s" % (method, target, rng, e))
                    up.close()
                    up = None
                    msg = b"upstream unavailable\n"
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n"
                                 b"Connection: close\r\n\r\n%s" % (len(msg), msg))
                    break
                out = ["HTTP/1.1 %d %s" % (resp.status, resp.reason)]
                length = None
                link = self.ctl.link() if "/tags/list" in target and method == "GET" else ""
                if link:
                    self.pages += 1
                    base = target.split("?")[0]
                    if link == "loop":
                        nxt = base + ("?n=1&loop=b" if "loop=a" in target else "?n=1&loop=a")
                    else:
                        nxt = base + "?n=1&last=zzzz%d" % self.pages
                    out.append('Link: <%s>; rel="next"' % nxt)
                for k, v in resp.getheaders():
                    if k.lower() in HOP_BY_HOP or (link and k.lower() == "link"):
                        continue
                    if k.lower() == "content-length":
                        length = v
                        if method != "HEAD":
                            continue
                    out.append("%s: %s" % (k, v))
                if method != "HEAD":
                    out.append("Content-Length: %d" % len(data))
                elif length is None:
                    out.append("Content-Length: 0")
                if not keep:
                    out.append("Connection: close")
                hdr = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
                if method == "HEAD":
                    data = b""
                mode = fault["mode"] if fault else "pass"
                if mode == "corrupt" and data:
                    at = fault.get("at", str(len(data) // 2))
                    if at == "part":
                        at = len(data) // 2
                        ctype = resp.getheader("content-type", "")
                        if ctype.startswith("multipart/byteranges"):
                            # the first part's data: after its header block
                            at = data.index(b"\r\n\r\n") + 4 + 10
                    at = int(at)
                    at = min(max(at, 0), len(data) - 1)
                    data = data[:at] + bytes([data[at] ^ 0x5a]) + data[at + 1:]
                if mode in ("reset", "truncate", "stall"):
                    after = int(fault.get("after", "0"))
                    if after < 0:
                        after = len(data) // 2
                    after = min(after, len(data))
                    # logged before the bytes go out (here and below): a test
                    # that counts log lines after its read returned must see
                    # every request that read was answered by
                    self.log("%s %s range=%s -> %d fault:%s bytes=%d of %d" %
                             (method, target, rng, resp.status, mode, after, len(data)))
                    conn.sendall(hdr + data[:after])
                    if mode == "reset":
                        self.rst_close(conn)
                        conn = None
                    elif mode == "stall":
                        self.hold(conn, fault)
                    break
                self.log("%s %s range=%s -> %d %s bytes=%d" %
                         (method, target, rng, resp.status,
                          "fault:" + mode if fault else "pass", len(data)))
                conn.sendall(hdr + data)
                if not keep or resp.getheader("connection", "").lower() == "close":
                    break
        except (OSError, ValueError, ConnectionError) as e:
            self.log("connection error: %s" % e)
        finally:
            if up is not None:
                up.close()
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass

    def hold(self, conn, fault):
        """stall: keep the connection open and silent until the fault changes
        or the client hangs up."""
        text = self.ctl.text
        while True:
            self.ctl.mode()
            if self.ctl.text != text:
                self.log("stall released by a control change")
                return
            r, _, _ = select.select([conn], [], [], 0.1)
            if r:
                try:
                    if not conn.recv(4096, socket.MSG_PEEK):
                        self.log("stall: client hung up")
                        return
                except OSError:
                    return
                # the client sent more (a pipelined request): drain and ignore
                try:
                    conn.recv(65536)
                except OSError:
                    return


def main():
    ap = argparse.ArgumentParser(description="fault-injecting HTTP/1.1 proxy (tests only)")
    ap.add_argument("--upstream", required=True, help="HOST:PORT of the real registry")
    ap.add_argument("--control", required=True, help="control file, re-read at every request")
    ap.add_argument("--port-file", required=True, help="the chosen port is written here")
    ap.add_argument("--port", type=int, default=0, help="listen here instead of a free port")
    ap.add_argument("--log", help="request log (default stderr)")
    args = ap.parse_args()
    p = Proxy(args)
    p.port = args.port
    try:
        p.serve()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
