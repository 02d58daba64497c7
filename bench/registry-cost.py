#!/usr/bin/python3
"""The registry's own CPU time per request, by kind of request.

    registry-cost.py PORT PID [N]

PORT is a docker-registry on 127.0.0.1 (an empty one: this writes N blobs
and N manifests into repository t/r), PID its process. Sends N requests of
each kind a push makes (upload POST, PUT of a 1 KB blob, manifest PUT) and
of two reads (blob HEAD, GET /v2/), over one keep-alive connection, and
prints the registry's CPU time (user + system, from /proc/PID/stat) per
request of each kind. docs/benchmarks.md uses it to show why a push of
many small store paths is bounded by the registry's per-request cost.
"""
import hashlib
import http.client
import json
import os
import sys

port, pid = int(sys.argv[1]), int(sys.argv[2])
N = int(sys.argv[3]) if len(sys.argv) > 3 else 400
TCK = os.sysconf("SC_CLK_TCK")
conn = http.client.HTTPConnection("127.0.0.1", port)


def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TCK


def req(method, url, body=None, headers=None):
    conn.request(method, url, body=body, headers=headers or {})
    r = conn.getresponse()
    r.read()
    return r


def put_url(loc, digest):
    return loc + ("&" if "?" in loc else "?") + "digest=" + digest.replace(":", "%3A")


def start():
    r = req("POST", "/v2/t/r/blobs/uploads/")
    assert r.status == 202, r.status
    return r.getheader("Location")


def put(loc, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    r = req("PUT", put_url(loc, d), data, {"Content-Type": "application/octet-stream"})
    assert r.status == 201, r.status
    return d


def report(what, t0):
    print(f"{what}: {(cpu() - t0) * 1000 / N:.2f} ms of registry CPU each")


empty = put(start(), b"{}")
t0 = cpu()
locs = [start() for _ in range(N)]
report("upload POST", t0)
t0 = cpu()
blobs = [put(loc, os.urandom(1000)) for loc in locs]
report("PUT of a 1 KB blob", t0)
t0 = cpu()
for i, b in enumerate(blobs):
    m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
         "layers": [{"mediaType": "application/octet-stream", "digest": b, "size": 1000}]}
    r = req("PUT", f"/v2/t/r/manifests/tag{i}", json.dumps(m).encode(),
            {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status == 201, r.status
report("manifest PUT", t0)
t0 = cpu()
for b in blobs:
    req("HEAD", f"/v2/t/r/blobs/{b}")
report("blob HEAD", t0)
t0 = cpu()
for _ in range(N):
    req("GET", "/v2/")
report("GET /v2/", t0)
