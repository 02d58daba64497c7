#!/usr/bin/python3
"""Check what `nixoci push` wrote against docs/format.md, independently of
nixoci's own code: plain HTTP to the registry, stock zstd and nix-store.

  check-format.py paths REGISTRY REPO WORKDIR < path-info.json
      every path of `nix path-info --json` output: manifest (OCI 1.1 artifact
      tagged by the hash part, annotations = Nix's narinfo), NAR blob (digest,
      seek table footer, `zstd -d | nix-store --restore` gives Nix's NAR hash),
      TOC blob (digest, header).  Prints "ok <path>" or "FAIL <path>: why".
  check-format.py index REGISTRY REPO TAG WORKDIR ROOT... < path-info.json
      the closure index under TAG lists exactly those paths by digest.
Exit status 1 when anything failed.
"""
import base64
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import urllib.request

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
NAR = "application/vnd.nixoci.nar.v1.zstd-seekable"
TOC = "application/vnd.nixoci.toc.v1+zstd"
ART = "application/vnd.nixoci.store-path.v1"
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def nix32(data):
    """Nix's base-32: 5-bit groups taken from the end of the hash."""
    n = (len(data) * 8 - 1) // 5 + 1
    out = []
    for i in range(n - 1, -1, -1):
        b = i * 5
        c = data[b // 8] >> (b % 8)
        if b // 8 + 1 < len(data):
            c |= data[b // 8 + 1] << (8 - b % 8)
        out.append(NIX32[c & 31])
    return "".join(out)


def sri_bytes(h):
    """narHash from path-info: SRI "sha256-<b64>" (Nix 2.8) or sha256:nix32."""
    if h.startswith("sha256-"):
        return base64.b64decode(h[7:])
    raise ValueError("unexpected hash format %r" % h)


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


def get(reg, path, accept=None):
    req = urllib.request.Request("http://%s%s" % (reg, path))
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read(), r.headers


def get_blob(reg, repo, desc):
    body, _ = get(reg, "/v2/%s/blobs/%s" % (repo, desc["digest"]))
    check(len(body) == desc["size"], "blob %s: size %d, descriptor says %d"
          % (desc["digest"], len(body), desc["size"]))
    check("sha256:" + hashlib.sha256(body).hexdigest() == desc["digest"],
          "blob %s: digest mismatch" % desc["digest"])
    return body


def check_seek_table(blob, nar_size):
    check(blob[-4:] == b"\xb1\xea\x92\x8f", "NAR blob does not end with the seek table magic")
    n = struct.unpack("<I", blob[-9:-5])[0]
    check(blob[-5] == 0, "seek table descriptor: checksum flag set")
    tlen = 17 + 8 * n
    check(n >= 1 and tlen <= len(blob), "seek table: bad frame count %d" % n)
    t = blob[-tlen:]
    magic, size = struct.unpack("<II", t[:8])
    check(magic == 0x184D2A5E, "seek table: skippable frame magic %#x" % magic)
    check(size == 8 * n + 9, "seek table: frame size %d, want %d" % (size, 8 * n + 9))
    csum = usum = 0
    for i in range(n):
        c, u = struct.unpack("<II", t[8 + 8 * i:16 + 8 * i])
        check(0 < u <= 1048576, "seek table: frame %d holds %d bytes" % (i, u))
        csum += c
        usum += u
    check(csum + tlen == len(blob), "seek table: compressed sizes do not add up")
    check(usum == nar_size, "seek table: decompressed sizes %d != NarSize %d" % (usum, nar_size))
    return n


def check_toc(toc_blob, nar_size, nar_blob_size, nframes):
    r = subprocess.run(["zstd", "-dc"], input=toc_blob, capture_output=True)
    check(r.returncode == 0, "TOC blob does not decompress: %s" % r.stderr.decode().strip())
    t = r.stdout
    check(len(t) >= 64 and t[:8] == b"NIXOCTOC", "TOC: bad magic")
    ver, flags, nsz, bsz, nent, nfr, stl, fmax = struct.unpack("<IIQQIIII", t[8:48])
    check(ver == 1 and flags == 0, "TOC: version %d flags %d" % (ver, flags))
    check(t[48:64] == b"\0" * 16, "TOC: reserved bytes not zero")
    check(nsz == nar_size, "TOC: nar_size %d != NarSize %d" % (nsz, nar_size))
    check(bsz == nar_blob_size, "TOC: blob_size %d != NAR blob size %d" % (bsz, nar_blob_size))
    check(nfr == nframes, "TOC: %d frames, seek table %d" % (nfr, nframes))
    check(fmax <= 1048576, "TOC: frame_max %d" % fmax)
    check(len(t) == 64 + 40 * nent + 56 * nfr + stl, "TOC: length does not match the counts")


def restore_hash(blob, dest):
    shutil.rmtree(dest, ignore_errors=True)
    z = subprocess.Popen(["zstd", "-dc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    n = subprocess.Popen(["nix-store", "--restore", dest], stdin=z.stdout,
                         stderr=subprocess.PIPE)
    z.stdout.close()
    z.stdin.write(blob)
    z.stdin.close()
    err = n.communicate()[1]
    check(z.wait() == 0, "stock zstd -d failed on the NAR blob")
    check(n.returncode == 0, "nix-store --restore failed: %s" % err.decode().strip())
    d = subprocess.run(["nix-store", "--dump", dest], capture_output=True, check=True).stdout
    shutil.rmtree(dest, ignore_errors=True)
    return hashlib.sha256(d).digest()


def check_path(reg, repo, work, info):
    p = info["path"]
    base = os.path.basename(p)
    hashpart = base[:32]
    want_hash = sri_bytes(info["narHash"])
    body, hdr = get(reg, "/v2/%s/manifests/%s" % (repo, hashpart), MANIFEST)
    dig = "sha256:" + hashlib.sha256(body).hexdigest()
    check(hdr.get("Docker-Content-Digest") in (None, dig), "manifest digest header mismatch")
    m = json.loads(body)
    check(m.get("schemaVersion") == 2, "schemaVersion")
    check(m.get("mediaType") == MANIFEST, "mediaType %r" % m.get("mediaType"))
    check(m.get("artifactType") == ART, "artifactType %r" % m.get("artifactType"))
    c = m.get("config", {})
    check(c.get("mediaType") == EMPTY and c.get("digest") == EMPTY_DIGEST and c.get("size") == 2,
          "config is not the OCI empty descriptor")
    ls = m.get("layers", [])
    check(len(ls) == 2 and ls[0].get("mediaType") == NAR and ls[1].get("mediaType") == TOC,
          "layers are not [NAR, TOC]")
    check(body == json.dumps(m, sort_keys=True, separators=(",", ":")).encode(),
          "manifest is not compact JSON with sorted keys")
    a = m.get("annotations", {})
    check(all(k.startswith("dev.nixoci.") for k in a), "annotation outside dev.nixoci.")
    check(a.get("dev.nixoci.format") == "1", "format annotation")
    check(a.get("dev.nixoci.store-path") == p, "store-path annotation %r" % a.get("dev.nixoci.store-path"))
    check(a.get("dev.nixoci.nar-hash") == "sha256:" + nix32(want_hash),
          "nar-hash %r, Nix has sha256:%s" % (a.get("dev.nixoci.nar-hash"), nix32(want_hash)))
    check(a.get("dev.nixoci.nar-size") == str(info["narSize"]), "nar-size annotation")
    refs = " ".join(sorted(os.path.basename(r) for r in info.get("references", [])))
    check(a.get("dev.nixoci.references") == refs, "references annotation %r, want %r"
          % (a.get("dev.nixoci.references"), refs))
    if info.get("deriver") and "dev.nixoci.deriver" in a:
        check(a["dev.nixoci.deriver"] == os.path.basename(info["deriver"]), "deriver annotation")
    check("dev.nixoci.zstd" in a, "no dev.nixoci.zstd annotation")
    if "dev.nixoci.imports" in a:
        # format.md 2: "v1;E:T,T;E:T", importers ascending, each one's targets ascending
        g = a["dev.nixoci.imports"].split(";")
        check(g[0] == "v1" and len(g) > 1, "imports annotation version")
        last = -1
        for x in g[1:]:
            e, _, ts = x.partition(":")
            t = ts.split(",")
            check(all(v.isdigit() and str(int(v)) == v for v in [e] + t),
                  "imports annotation %r" % x)
            check(int(e) > last and [int(v) for v in t] == sorted(set(int(v) for v in t))
                  and int(e) not in [int(v) for v in t], "imports annotation order %r" % x)
            last = int(e)
    get_blob(reg, repo, c)
    nar = get_blob(reg, repo, ls[0])
    nframes = check_seek_table(nar, info["narSize"])
    toc = get_blob(reg, repo, ls[1])
    check_toc(toc, info["narSize"], len(nar), nframes)
    got = restore_hash(nar, os.path.join(work, "restore-" + base))
    check(got == want_hash, "zstd -d | nix-store --restore: NAR hash %s, Nix has %s"
          % (got.hex(), want_hash.hex()))
    return dig


def cmd_paths(reg, repo, work, infos):
    bad = 0
    for info in infos:
        try:
            check_path(reg, repo, work, info)
            print("ok", info["path"])
        except (Fail, OSError, ValueError, KeyError) as e:
            bad += 1
            print("FAIL %s: %s" % (info["path"], e))
    print("checked %d paths, %d failed" % (len(infos), bad))
    return 1 if bad else 0


def check_meta(reg, repo, d, ms):
    """format.md 5.1: the metadata manifest, its blob, one item per path."""
    check(d["annotations"]["dev.nixoci.closure-meta"] == "1", "closure-meta version")
    mb, _ = get(reg, "/v2/%s/manifests/%s" % (repo, d["digest"]), MANIFEST)
    check("sha256:" + hashlib.sha256(mb).hexdigest() == d["digest"], "metadata manifest digest")
    m = json.loads(mb)
    check(m.get("artifactType") == "application/vnd.nixoci.closure-meta.v1", "meta artifactType")
    check(len(m["layers"]) == 1, "metadata manifest has one layer")
    lay = m["layers"][0]
    check(lay["mediaType"] == "application/vnd.nixoci.closure-meta.v1+zstd", "meta media type")
    z = get_blob(reg, repo, lay)
    r = subprocess.run(["zstd", "-dc"], input=z, capture_output=True)
    check(r.returncode == 0, "metadata blob is not zstd")
    raw = r.stdout
    check(raw[:8] == b"NIXOCMET", "metadata magic")
    ver, flags, n = struct.unpack_from("<III", raw, 8)
    check(ver == 1 and flags == 0 and n == len(ms), "metadata header: %d items" % n)
    want = sorted(x["digest"] for x in ms)
    got = []
    off = 32 + 16 * n
    for i in range(n):
        o, ml, tl = struct.unpack_from("<QII", raw, 32 + 16 * i)
        check(o == off, "metadata item %d offset" % i)
        man = raw[o:o + ml]
        got.append("sha256:" + hashlib.sha256(man).hexdigest())
        toc = raw[o + ml:o + ml + tl]
        tocd = json.loads(man)["layers"][1]["digest"]
        check("sha256:" + hashlib.sha256(toc).hexdigest() == tocd, "metadata item %d TOC" % i)
        off += ml + tl
    check(off == len(raw), "metadata trailing bytes")
    check(sorted(got) == want, "metadata items are not the index's manifests")


def cmd_index(reg, repo, tag, work, roots, infos):
    try:
        body, _ = get(reg, "/v2/%s/manifests/%s" % (repo, tag), INDEX)
        x = json.loads(body)
        check(x.get("schemaVersion") == 2 and x.get("mediaType") == INDEX, "not an OCI index")
        a = x.get("annotations", {})
        check(a.get("dev.nixoci.closure") == "1", "no dev.nixoci.closure=1 annotation")
        check(sorted(a.get("dev.nixoci.roots", "").split()) == sorted(roots),
              "roots %r" % a.get("dev.nixoci.roots"))
        ms = x.get("manifests", [])
        metas = [d for d in ms if "dev.nixoci.closure-meta" in d.get("annotations", {})]
        ms = [d for d in ms if d not in metas]
        check(len(metas) == 1, "want one closure metadata manifest, found %d" % len(metas))
        check_meta(reg, repo, metas[0], ms)
        paths = [d.get("annotations", {}).get("dev.nixoci.store-path") for d in ms]
        check(paths == sorted(paths), "manifests not sorted by store path")
        check(sorted(paths) == sorted(i["path"] for i in infos),
              "index lists %d paths, closure has %d" % (len(paths), len(infos)))
        for d in ms:
            check(d.get("mediaType") == MANIFEST, "descriptor media type")
            p = d["annotations"]["dev.nixoci.store-path"]
            mb, _ = get(reg, "/v2/%s/manifests/%s" % (repo, d["digest"]), MANIFEST)
            check("sha256:" + hashlib.sha256(mb).hexdigest() == d["digest"], "digest of " + p)
            check(len(mb) == d["size"], "size of " + p)
            tb, _ = get(reg, "/v2/%s/manifests/%s" % (repo, os.path.basename(p)[:32]), MANIFEST)
            check(tb == mb, "the index and the tag of %s name different manifests" % p)
    except (Fail, OSError, ValueError, KeyError) as e:
        print("FAIL index %s: %s" % (tag, e))
        return 1
    print("ok index %s: %d paths" % (tag, len(infos)))
    return 0


def main():
    infos = json.load(sys.stdin)
    if sys.argv[1] == "paths":
        return cmd_paths(sys.argv[2], sys.argv[3], sys.argv[4], infos)
    if sys.argv[1] == "index":
        return cmd_index(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:], infos)
    print(__doc__, file=sys.stderr)
    return 2


sys.exit(main())
