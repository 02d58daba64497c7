#!/usr/bin/python3
"""tests/lib/tokenserver.py: a token server for docker-registry's `auth: token`.

Issues RS256 JWTs the way distribution 2.8 checks them: the header carries
the signing certificate in x5c (verified against the registry's
rootcertbundle), the claims iss/aud/sub/exp/nbf/iat/jti and
access = [{type, name, actions}]. Anonymous requests get pull only; requests
with the right Basic credentials get what they ask for.

  tokenserver.py --key K --cert C --issuer I --user U --password P
                 --expires-in N --port-file F --log L

Every token request is one line in the log ("token <who> <scope> <granted>"),
so a test can count them. Debian packages only: python3-jwt, cryptography.
"""
import argparse
import base64
import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

ap = argparse.ArgumentParser()
ap.add_argument("--key", required=True)
ap.add_argument("--cert", required=True)
ap.add_argument("--issuer", required=True)
ap.add_argument("--user", required=True)
ap.add_argument("--password", required=True)
ap.add_argument("--expires-in", type=int, default=60)
ap.add_argument("--expires-in-file", help="when it exists, its number wins (tests change it)")
ap.add_argument("--port-file", required=True)
ap.add_argument("--log", required=True)
args = ap.parse_args()

with open(args.key, "rb") as f:
    KEY = serialization.load_pem_private_key(f.read(), password=None)
with open(args.cert, "rb") as f:
    CERT = x509.load_pem_x509_certificate(f.read())
X5C = [base64.b64encode(CERT.public_bytes(serialization.Encoding.DER)).decode()]
LOG_LOCK = threading.Lock()


def log(line):
    with LOG_LOCK, open(args.log, "a") as f:
        f.write(line + "\n")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *a):  # quiet: the token log is ours
        pass

    def who(self):
        h = self.headers.get("Authorization", "")
        if not h.startswith("Basic "):
            return "anonymous"
        try:
            user, _, pw = base64.b64decode(h[6:]).decode().partition(":")
        except Exception:
            return None
        if user == args.user and pw == args.password:
            return user
        return None

    def do_GET(self):
        u = urlparse(self.path)
        if u.path != "/token":
            self.send_error(404)
            return
        q = parse_qs(u.query)
        service = q.get("service", [""])[0]
        scopes = " ".join(q.get("scope", [])).split()
        who = self.who()
        if who is None:
            log("token rejected %s" % " ".join(scopes))
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        access = []
        for s in scopes:
            parts = s.split(":")
            if len(parts) < 3:
                continue
            typ, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            if who == "anonymous":
                actions = [a for a in actions if a == "pull"]
            access.append({"type": typ, "name": name, "actions": actions})
        now = int(time.time())
        expires_in = args.expires_in
        if args.expires_in_file and os.path.exists(args.expires_in_file):
            with open(args.expires_in_file) as f:
                expires_in = int(f.read().strip())
        claims = {
            "iss": args.issuer,
            "sub": who,
            "aud": service,
            "exp": now + expires_in,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        tok = jwt.encode(claims, KEY, algorithm="RS256", headers={"x5c": X5C})
        if isinstance(tok, bytes):
            tok = tok.decode()
        granted = ";".join("%s:%s" % (a["name"], ",".join(a["actions"])) for a in access)
        log("token %s %s %s" % (who, " ".join(scopes), granted or "-"))
        body = json.dumps({
            "token": tok,
            "access_token": tok,
            "expires_in": expires_in,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(args.port_file + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(args.port_file + ".tmp", args.port_file)
srv.serve_forever()
