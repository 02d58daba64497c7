#!/usr/bin/python3
"""tests/data/should-fail/upload.py REGISTRY REPO CORPUS STORAGE OVERRIDES.json:
puts every case of a gen.py corpus into a real registry (HOST:PORT, plain
HTTP): blobs by monolithic upload, the manifest under its tag. Cases the
registry itself refuses to store (not JSON, too large, ...) and the
"proxy-*" cases become canned answers of proxy.py in OVERRIDES.json;
"tamper-*" cases get their blob file in the registry's STORAGE overwritten
with other bytes of the same size. Prints one line per case.
"""
import hashlib
import http.client
import json
import os
import sys

REG, REPO, CORPUS, STORAGE, OVR = sys.argv[1:6]


def req(method, path, body=None, headers=None):
    c = http.client.HTTPConnection(REG, timeout=60)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheader("Location"), data


def put_blob(data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    st, _, _ = req("HEAD", "/v2/%s/blobs/%s" % (REPO, d))
    if st == 200:
        return
    st, loc, body = req("POST", "/v2/%s/blobs/uploads/" % REPO)
    assert st == 202, (st, body)
    if loc.startswith("http"):
        loc = "/" + loc.split("/", 3)[3]
    loc += ("&" if "?" in loc else "?") + "digest=" + d
    st, _, body = req("PUT", loc, data, {"Content-Type": "application/octet-stream",
                                          "Content-Length": str(len(data))})
    assert st == 201, (st, body)


def blob_file(hexd):
    return os.path.join(STORAGE, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")


ov = {}
for name in sorted(os.listdir(CORPUS)):
    d = os.path.join(CORPUS, name)
    if not os.path.isfile(os.path.join(d, "case.json")):
        continue  # not a case (the containment extras)
    with open(os.path.join(d, "case.json")) as f:
        info = json.load(f)
    for b in sorted(os.listdir(os.path.join(d, "blobs"))):
        with open(os.path.join(d, "blobs", b), "rb") as f:
            put_blob(f.read())
    mpath = os.path.join(d, "manifest.json")
    with open(mpath, "rb") as f:
        man = f.read()
    mdig = "sha256:" + hashlib.sha256(man).hexdigest()
    tagpath = "/v2/%s/manifests/%s" % (REPO, info["tag"])
    how = info["serve"]
    if how == "proxy-manifest":
        ov[tagpath] = {"file": mpath, "type": "application/vnd.oci.image.manifest.v1+json",
                       "digest": mdig}
    else:
        st, _, body = req("PUT", tagpath, man,
                          {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        if st != 201:
            # the real registry refuses to store it: serve it from the proxy
            how = "proxy-manifest (registry said %d)" % st
            ov[tagpath] = {"file": mpath, "digest": mdig,
                           "type": "application/vnd.oci.image.manifest.v1+json"}
    html = os.path.join(d, "page.html")
    if info["serve"].startswith("proxy-html"):
        with open(html, "w") as f:
            f.write("<html><head><title>Login</title></head><body>Please sign in"
                    "</body></html>\n")
    if info["serve"] == "proxy-html-manifest":
        ov[tagpath] = {"file": html, "type": "text/html; charset=utf-8"}
    elif info["serve"] == "proxy-html-toc":
        ov["/v2/%s/blobs/sha256:%s" % (REPO, info["toc_digest"])] = {
            "file": html, "type": "text/html; charset=utf-8"}
    elif info["serve"].startswith("tamper-"):
        hexd = info["nar_digest" if info["serve"] == "tamper-nar" else "toc_digest"]
        p = blob_file(hexd)
        with open(p, "rb") as f:
            data = bytearray(f.read())
        data[len(data) // 2] ^= 0xFF
        with open(p, "wb") as f:
            f.write(data)
    print("%-30s %s" % (name, how))
with open(OVR + ".tmp", "w") as f:
    json.dump(ov, f, indent=1)
os.rename(OVR + ".tmp", OVR)
