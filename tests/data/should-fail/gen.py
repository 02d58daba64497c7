#!/usr/bin/python3
"""tests/data/should-fail/gen.py: the hostile-artifact corpus, generated
deterministically (same output on every run with the same zstd CLI).

    gen.py OUTDIR            write OUTDIR/<case>/ for every case, and OUTDIR/cases.tsv
    gen.py --seeds DIR       write fuzz seed inputs into DIR/<target>/
    gen.py --list            print the case table

Each case directory holds what the registry should contain for one store
path, uploaded by tests/integ/t0400-hostile.t:
    manifest.json  the manifest bytes, PUT under tag <hash> (or served by the
                   hostile proxy, see "serve" below)
    blobs/<hex>    every blob the manifest references (config, NAR, TOC)
    case.json      {name, base, tag, detect, access, serve, hostile, frames, what}
      detect   lazy: a plain mount refuses it (lookup or read)
               keys: only full verification sees it (nixoci verify, or a mount with
                     trusted-public-keys and a narinfo-only signature); a plain mount
                     trusts the TOC for structure and may serve it
      access   path under the store path to read ("" = the store path itself)
      serve    how it reaches the reader: "put" (real registry), "proxy-manifest"
               (the proxy answers the manifest request with manifest.json),
               "proxy-html-manifest", "proxy-html-toc" (an HTML page with 200),
               "tamper-nar", "tamper-toc" (the blob file in the registry's storage is
               overwritten after upload: a 200 whose body has the wrong digest)
      hostile  digests (hex) of blobs that must never appear in the cache
      frames   frame digests (hex) of the NAR layer: never cached either
The README next to this file describes every case.
"""
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
FRAME_MAX = 1 << 20
ZSTD_PARAMS = "zstd=1.5.4;level=3;frame-max=1048576;checksum=1;pledged=1;workers=0"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_NAR = "application/vnd.nixoci.nar.v1.zstd-seekable"
MT_TOC = "application/vnd.nixoci.toc.v1+zstd"
MT_EMPTY = "application/vnd.oci.empty.v1+json"
ART = "application/vnd.nixoci.store-path.v1"
# A fixed Ed25519 seed (test only): deterministic keys and signatures.
KEY_NAME = "hostile-test-1"
KEY_SEED = hashlib.sha256(b"nixoci hostile corpus key").digest()


def nix32(h):
    n = (len(h) * 8 - 1) // 5 + 1
    out = []
    for k in range(n - 1, -1, -1):
        b = k * 5
        i, j = b // 8, b % 8
        c = h[i] >> j
        if i + 1 < len(h):
            c |= h[i + 1] << (8 - j)
        out.append(NIX32[c & 0x1F])
    return "".join(out)


def sha(b):
    return hashlib.sha256(b).digest()


# ----------------------------------------------------------------- NAR

def reg(data, exe=False):
    return {"type": "reg", "data": data, "exe": exe}


def sym(target):
    return {"type": "sym", "target": target}


def dr(*entries):
    """entries: (name, node) or (name, node, toc_name); NAR order as given"""
    return {"type": "dir", "entries": list(entries)}


class NarWriter:
    def __init__(self, pad=b"\0"):
        self.out = bytearray()
        self.pad = pad
        self.offsets = {}  # id(node) -> offset of contents
        self.size_override = {}  # id(node) -> length field to write

    def s(self, b):
        if isinstance(b, str):
            b = b.encode()
        self.out += struct.pack("<Q", len(b)) + b
        if len(b) % 8:
            self.out += self.pad * (8 - len(b) % 8)

    def node(self, n):
        self.s("(")
        self.s("type")
        if n["type"] == "reg":
            self.s("regular")
            if n["exe"]:
                self.s("executable")
                self.s("")
            self.s("contents")
            d = n["data"]
            self.out += struct.pack("<Q", self.size_override.get(id(n), len(d)))
            self.offsets[id(n)] = len(self.out)
            self.out += d
            if len(d) % 8:
                self.out += self.pad * (8 - len(d) % 8)
        elif n["type"] == "sym":
            self.s("symlink")
            self.s("target")
            self.s(n["target"])
        elif n["type"] == "dir":
            self.s("directory")
            for e in n["entries"]:
                self.s("entry")
                self.s("(")
                self.s("name")
                self.s(e[0])
                self.s("node")
                self.node(e[1])
                self.s(")")
        else:
            self.s(n["type"])
        self.s(")")

    def dump(self, root):
        self.s("nix-archive-1")
        self.node(root)
        return bytes(self.out)


# ----------------------------------------------------------------- TOC

def toc_encode(root, offsets, nar_size, frames, blob_size, *, version=1, flags=0,
               frame_max=FRAME_MAX, nentries=None, extra=b""):
    """BFS entries (docs/format.md 4.2); frames: [(coff, uoff, clen, ulen, sha)]"""
    entries = []  # [parent, name_off, name_len, type, eflags, first, nchild, size, off]
    strtab = bytearray()
    queue = [(root, 0)]
    entries.append([0, 0, 0, 0, 0, 0, 0, 0, 0])
    nodes = [root]
    qi = 0
    while qi < len(nodes):
        n = nodes[qi]
        e = entries[qi]
        t = n["type"]
        if t == "reg":
            e[3], e[4], e[7], e[8] = 1, 1 if n["exe"] else 0, n.get("toc_size", len(n["data"])), \
                n.get("toc_off", offsets.get(id(n), 0))
        elif t == "sym":
            tg = n.get("toc_target", n["target"])
            e[3], e[7], e[8] = 3, len(tg), len(strtab)
            strtab += tg
        else:
            e[3] = 2
            kids = [(x[2] if len(x) > 2 else x[0], x[1]) for x in n["entries"]]
            if not n.get("toc_unsorted"):
                kids.sort(key=lambda k: k[0])
            e[5], e[6] = len(nodes), len(kids)
            for name, child in kids:
                entries.append([qi, len(strtab), len(name), 0, 0, 0, 0, 0, 0])
                strtab += name
                nodes.append(child)
        qi += 1
    out = bytearray(b"NIXOCTOC")
    out += struct.pack("<IIQQIIII", version, flags, nar_size, blob_size,
                       nentries if nentries is not None else len(entries), len(frames),
                       len(strtab), frame_max)
    out += b"\0" * 16
    for e in entries:
        out += struct.pack("<IIIBBHIIQQ", e[0], e[1], e[2], e[3], e[4], 0, e[5], e[6], e[7],
                           e[8])
    for f in frames:
        out += struct.pack("<QQII", f[0], f[1], f[2], f[3]) + f[4]
    out += strtab
    return bytes(out) + extra


# ----------------------------------------------------------------- zstd

def zstd(data):
    """one zstd frame (level 3, checksum, content size), from the zstd CLI"""
    return subprocess.run(["zstd", "-q", "-3", "-c", "--stream-size=%d" % len(data)],
                          input=data, check=True, capture_output=True).stdout


def zstd_padded(data, nzeros):
    """one zstd frame without content size: @data then @nzeros zero bytes,
    streamed (the bombs are hundreds of MiB before compression)"""
    return subprocess.run(["sh", "-c", "{ cat; head -c %d /dev/zero; }" % nzeros +
                           " | zstd -q -3 -c --no-content-size"],
                          input=data, check=True, capture_output=True).stdout


def zstd_sized(data, total):
    """one zstd frame declaring (and holding) @total bytes: @data, then zeros"""
    return subprocess.run(["sh", "-c", "{ cat; head -c %d /dev/zero; }" % (total - len(data)) +
                           " | zstd -q -3 -c --stream-size=%d" % total],
                          input=data, check=True, capture_output=True).stdout


def toc_stream_cases(toc_case):
    """zstd bombs at different offsets of the TOC layer: refused on the
    frame header or on the first 64 inflated bytes, before any allocation
    the TOC's own header does not justify"""
    toc_case("bomb-declared-mismatch", "TOC layer declares 200 MiB, its header a few KiB",
             tocblob_fn=lambda t: zstd_sized(t, 200 << 20))
    toc_case("bomb-over-cap", "TOC layer declares 300 MiB (over the 256 MiB cap)",
             tocblob_fn=lambda t: zstd_sized(t, 300 << 20))
    toc_case("bomb-cut", "TOC layer declaring 200 MiB, cut short",
             tocblob_fn=lambda t: zstd_sized(t, 200 << 20)[:-64])
    toc_case("huge-counts", "TOC header with 2^24 entries and 2^24 frames (1.6 GB)",
             toc_fn=lambda t: t[:32] + struct.pack("<II", 1 << 24, 1 << 24) + t[40:])
    toc_case("bomb-header-garbage", "TOC layer whose first inflated bytes are not a header",
             tocblob_fn=lambda t: zstd_sized(b"\xff" * 64, 100 << 20))


def toc_neighbour_cases(toc_case):
    """neighbours of the streaming cases: the counts are plausible and one
    section lies, or the layer holds more than its one frame"""
    def strtab_short(t):
        n = struct.unpack_from("<I", t, 40)[0]
        return t[:40] + struct.pack("<I", n - 3) + t[44:-3]
    toc_case("names-short", "TOC string table 3 bytes shorter than the names it holds",
             toc_fn=strtab_short)

    def name_off_wild(t):
        e1 = 64 + 40
        return t[:e1 + 4] + struct.pack("<I", 0xFFFFFF00) + t[e1 + 8:]
    toc_case("name-off-wild", "TOC entry whose name lies 4 GiB past the string table",
             toc_fn=name_off_wild)
    toc_case("strtab-huge", "TOC header declares a 200 MiB string table, the layer holds 300 bytes",
             toc_fn=lambda t: t[:40] + struct.pack("<I", 200 << 20) + t[44:])

    def two_frames(c):
        c.tree["entries"].append((b"zbig", reg(b"z" * (FRAME_MAX + 8192))))
        return c

    def frames_at(t):
        n = struct.unpack_from("<I", t, 32)[0]
        return 64 + 40 * n

    def overlap(t):
        f1 = frames_at(t) + 56
        return t[:f1] + struct.pack("<Q", 0) + t[f1 + 8:]

    def backwards(t):
        f0 = frames_at(t)
        return t[:f0] + t[f0 + 56:f0 + 112] + t[f0:f0 + 56] + t[f0 + 112:]
    two_frames(toc_case("frames-overlap", "TOC whose second frame starts where the first does",
                        toc_fn=overlap))
    two_frames(toc_case("frames-backwards", "TOC frame table in reverse order",
                        toc_fn=backwards))
    # the TOC's own frame, then 256 frames of 1 MiB of zeros (a few KiB)
    toc_case("bomb-many-frames", "TOC layer: the TOC, then 256 zstd frames of 1 MiB each",
             tocblob_fn=lambda t: zstd(t) + zstd_sized(b"", 1 << 20) * 256)


def seektable(frames):
    body = b"".join(struct.pack("<II", f[2], f[3]) for f in frames)
    body += struct.pack("<IB", len(frames), 0) + struct.pack("<I", 0x8F92EAB1)
    return struct.pack("<II", 0x184D2A5E, len(body)) + body


def pack(nar, chunk=FRAME_MAX):
    """(blob, frames) with frames [(coff, uoff, clen, ulen, sha)]"""
    frames, blob = [], bytearray()
    for u in range(0, len(nar), chunk):
        c = zstd(nar[u:u + chunk])
        frames.append([len(blob), u, len(c), len(nar[u:u + chunk]), sha(c)])
        blob += c
    return bytes(blob), frames


# ------------------------------------------------------------ signatures

def _openssl_key(tmp):
    der = bytes.fromhex("302e020100300506032b657004220420") + KEY_SEED
    path = os.path.join(tmp, "key.der")
    with open(path, "wb") as f:
        f.write(der)
    return path


def pubkey():
    with tempfile.TemporaryDirectory() as tmp:
        pub = subprocess.run(["openssl", "pkey", "-inform", "DER", "-in", _openssl_key(tmp),
                              "-pubout", "-outform", "DER"], check=True,
                             capture_output=True).stdout[-32:]
    import base64
    return KEY_NAME + ":" + base64.b64encode(pub).decode()


def sign(msg):
    import base64
    with tempfile.TemporaryDirectory() as tmp:
        m = os.path.join(tmp, "msg")
        with open(m, "wb") as f:
            f.write(msg.encode())
        sig = subprocess.run(["openssl", "pkeyutl", "-sign", "-rawin", "-keyform", "DER",
                              "-inkey", _openssl_key(tmp), "-in", m], check=True,
                             capture_output=True).stdout
    return KEY_NAME + ":" + base64.b64encode(sig).decode()


# ---------------------------------------------------------------- cases

def good_tree(name):
    # the case name in f keeps every case's blobs apart (tampering one blob in
    # the registry's storage must not touch another case)
    return dr((b"bin", dr((b"hello", reg(b"#!/bin/sh\necho hostile\n", True)),)),
              # "good" is over 4096 bytes: its one frame is also the first
              # frame of the shared_cases paths, where it must pass the
              # reader's frame floor to reach full-NAR verification
              (b"f", reg(b"case " + name.encode() + b"\n" +
                         b"the contents of f\n" * (300 if name == "good" else 10))),
              (b"link", sym(b"f")))


class Case:
    def __init__(self, name, what, detect="lazy", access="f", serve="put"):
        self.name, self.what, self.detect, self.access, self.serve = \
            name, what, detect, access, serve
        h = sha(b"nixoci-hostile-" + name.encode())[:20]
        self.hash = nix32(h)
        self.pname = "hostile-" + name
        self.tree = good_tree(name)
        self.toc_tree = None    # default: the same tree
        self.nar_fn = None      # bytes -> bytes, after writing
        self.toc_kw = {}
        self.toc_fn = None      # raw TOC bytes -> bytes
        self.frames_fn = None   # (nar, blob, frames) -> (blob, frames), frames as in TOC
        self.tocblob_fn = None  # encoded TOC -> TOC layer bytes
        self.man_fn = None      # dict -> dict
        self.raw_manifest = None
        self.nar_size_field = None
        self.writer_pad = b"\0"
        self.size_override = None
        self.hostile = []       # "nar", "toc", "manifest"

    @property
    def base(self):
        return self.hash + "-" + self.pname


def build(c):
    w = NarWriter(c.writer_pad)
    if c.size_override:
        node, val = c.size_override(c.tree)
        w.size_override[id(node)] = val
    nar = w.dump(c.tree)
    offsets = w.offsets
    if c.nar_fn:
        nar = c.nar_fn(nar)
    blob, frames = pack(nar)
    if c.frames_fn:
        blob, frames = c.frames_fn(nar, blob, frames)
    st = seektable(frames)
    blob_full = blob + st
    toc = toc_encode(c.toc_tree or c.tree, offsets, c.toc_kw.pop("nar_size", len(nar)), frames,
                     c.toc_kw.pop("blob_size", len(blob_full)), **c.toc_kw)
    if c.toc_fn:
        toc = c.toc_fn(toc)
    tocblob = c.tocblob_fn(toc) if c.tocblob_fn else zstd(toc)
    sp = "/nix/store/" + c.base
    narhash = "sha256:" + nix32(sha(nar))
    nar_size = len(nar)
    config = b"{}"
    tocd = "sha256:" + sha(tocblob).hex()
    ann = {
        "dev.nixoci.format": "1",
        "dev.nixoci.store-path": sp,
        "dev.nixoci.nar-hash": narhash,
        "dev.nixoci.nar-size": str(c.nar_size_field or nar_size),
        "dev.nixoci.references": "",
        "dev.nixoci.zstd": ZSTD_PARAMS,
        # a narinfo signature only (no TOC signature): with trusted keys the
        # reader must fetch and verify the whole NAR before serving
        "dev.nixoci.sigs": sign("1;%s;%s;%d;" % (sp, narhash, nar_size)),
    }
    m = {
        "annotations": ann,
        "artifactType": ART,
        "config": {"digest": "sha256:" + sha(config).hex(), "mediaType": MT_EMPTY, "size": 2},
        "layers": [
            {"digest": "sha256:" + sha(blob_full).hex(), "mediaType": MT_NAR,
             "size": len(blob_full)},
            {"digest": tocd, "mediaType": MT_TOC, "size": len(tocblob)},
        ],
        "mediaType": MT_MANIFEST,
        "schemaVersion": 2,
    }
    if c.man_fn:
        m = c.man_fn(m)
    if c.raw_manifest is not None:
        mbytes = c.raw_manifest(m) if callable(c.raw_manifest) else c.raw_manifest
    else:
        mbytes = json.dumps(m, sort_keys=True, separators=(",", ":")).encode()
    hostile = []
    if "nar" in c.hostile:
        hostile.append(sha(blob_full).hex())
    if "toc" in c.hostile:
        hostile.append(sha(tocblob).hex())
    if "manifest" in c.hostile:
        hostile.append(sha(mbytes).hex())
    return {
        "manifest": mbytes,
        "blobs": [config, blob_full, tocblob],
        "nar": nar,
        "toc": toc,
        "tocblob": tocblob,
        "seektable": st,
        "frame0": blob[:frames[0][2]] if frames and frames[0][2] <= len(blob) else b"",
        "info": {
            "name": c.name, "what": c.what, "base": c.base, "tag": c.hash,
            "detect": c.detect, "access": c.access, "serve": c.serve,
            "hostile": hostile, "frames": [f[4].hex() for f in frames],
            "toc_digest": sha(tocblob).hex(), "nar_digest": sha(blob_full).hex(),
            "manifest_digest": sha(mbytes).hex(),
        },
    }


def first_file(tree):
    return [e[1] for e in tree["entries"] if e[0] == b"f"][0]


def cases():
    C = []

    def add(c):
        C.append(c)
        return c

    # The reference: a valid artifact, served after every hostile access.
    add(Case("good", "a valid store path (control)", detect="none"))

    # --- NAR rules: the TOC is sane, the NAR is not. A plain mount trusts the
    # TOC for structure, so only full verification sees these.
    def nar_entry(name, what, detect="keys"):
        c = add(Case("nar-name-" + what, "NAR entry named %r" % name, detect))
        c.tree["entries"].append((name, reg(b"x\n"), b"zz-sane"))
        c.hostile = ["nar"]
        return c
    nar_entry(b"..", "dotdot")
    nar_entry(b".", "dot")
    nar_entry(b"", "empty")
    nar_entry(b"a/b", "slash")
    nar_entry(b"a\0b", "nul")
    c = add(Case("nar-unsorted", "NAR directory entries out of order", "keys"))
    c.tree["entries"].reverse()
    c.hostile = ["nar"]
    c = add(Case("nar-duplicate", "NAR directory with a duplicate entry", "keys"))
    c.tree["entries"].append((b"f", reg(b"dup\n"), b"zz-dup"))
    c.hostile = ["nar"]
    c = add(Case("nar-bad-padding", "NAR with non-zero padding bytes", "keys"))
    c.writer_pad = b"\x01"
    c.hostile = ["nar"]
    c = add(Case("nar-truncated", "NAR cut short (missing closing tokens)", "keys"))
    c.nar_fn = lambda nar: nar[:-32]
    c.hostile = ["nar"]
    c = add(Case("nar-trailing", "NAR with trailing bytes after the archive", "keys"))
    c.nar_fn = lambda nar: nar + b"\0" * 16
    c.hostile = ["nar"]
    c = add(Case("nar-bad-magic", "NAR magic nix-archive-2", "keys"))
    c.nar_fn = lambda nar: nar[:8] + b"nix-archive-2" + nar[21:]
    c.hostile = ["nar"]
    c = add(Case("nar-symlink-empty", "NAR symlink with an empty target", "keys", "link"))
    c.tree["entries"][2] = (b"link", dict(sym(b""), toc_target=b"f"))
    c.hostile = ["nar"]
    c = add(Case("nar-symlink-long", "NAR symlink target of 4096 bytes", "keys", "link"))
    c.tree["entries"][2] = (b"link", dict(sym(b"a" * 4096), toc_target=b"f"))
    c.hostile = ["nar"]
    c = add(Case("nar-absurd-size", "NAR file length field 2^62", "keys"))
    c.size_override = lambda t: (first_file(t), 1 << 62)
    c.hostile = ["nar"]
    c = add(Case("nar-unknown-type", "NAR node of type 'fifo'", "keys"))
    c.tree["entries"].append((b"zz-fifo", {"type": "fifo"}, b"zz-fifo"))
    c.toc_tree = good_tree(c.name)
    c.toc_tree["entries"].append((b"zz-fifo", reg(b""), b"zz-fifo"))
    c.hostile = ["nar"]
    c = add(Case("nar-deep", "NAR and TOC nested 70 directories deep", "lazy", ""))
    t = reg(b"deep\n")
    for _ in range(70):
        t = dr((b"d", t))
    c.tree = t
    c.hostile = ["nar", "toc"]

    # --- TOC disagrees with the NAR (the TOC alone is well-formed)
    c = add(Case("toc-nar-size-mismatch", "TOC file size differs from the NAR's", "keys"))
    first_file(c.tree)["toc_size"] = 5
    c.hostile = ["toc"]
    c = add(Case("toc-nar-offset-mismatch", "TOC file offset points elsewhere in the NAR",
                 "keys"))
    first_file(c.tree)["toc_off"] = 8
    c.hostile = ["toc"]
    c = add(Case("toc-nar-missing-entry", "TOC lacks an entry the NAR has", "keys"))
    c.toc_tree = good_tree(c.name)
    c.tree["entries"].append((b"zz-extra", reg(b"extra\n")))
    c.hostile = ["toc"]
    c = add(Case("toc-nar-type-mismatch", "TOC says symlink where the NAR has a file",
                 "keys", "link"))
    c.toc_tree = good_tree(c.name)
    c.toc_tree["entries"][2] = (b"link", reg(b"f\n"))
    c.hostile = ["toc"]

    # --- TOC rules (a plain mount refuses these at lookup)
    def toc_case(name, what, **kw):
        c = add(Case("toc-" + name, what, "lazy", ""))
        c.hostile = ["toc"]
        for k, v in kw.items():
            setattr(c, k, v)
        return c
    toc_case("bad-magic", "TOC magic is not NIXOCTOC", toc_fn=lambda t: b"NIXOCTOX" + t[8:])
    toc_case("bad-version", "TOC version 2", toc_kw={"version": 2})
    toc_case("bad-flags", "TOC flags not zero", toc_kw={"flags": 1})
    toc_case("trailing-byte", "TOC longer than its counts say", toc_kw={"extra": b"\0"})
    toc_case("nentries-huge", "TOC nentries 2^24+1", toc_kw={"nentries": (1 << 24) + 1})
    toc_case("frame-max-over", "TOC frame_max over 1 MiB", toc_kw={"frame_max": FRAME_MAX + 1})
    toc_case("nar-size-short", "TOC nar_size smaller than the frames", toc_kw={"nar_size": 16})
    toc_case("blob-size-wrong", "TOC blob_size off by one", toc_kw={"blob_size": 1})
    c = toc_case("name-dotdot", "TOC entry named '..'")
    c.tree["entries"].append((b"..", reg(b"x\n")))
    c.detect = "lazy"
    c.hostile = ["toc", "nar"]
    c = toc_case("unsorted", "TOC siblings out of order")
    c.tree["toc_unsorted"] = True
    c.tree["entries"].reverse()
    c.hostile = ["toc", "nar"]
    c = toc_case("file-beyond-nar", "TOC file range past nar_size")
    first_file(c.tree)["toc_off"] = 1 << 40
    c = toc_case("not-zstd", "TOC layer is not zstd", tocblob_fn=lambda t: b"plain " + t)
    c = toc_case("zstd-bomb", "TOC layer decompresses to 300 MiB (no content size)",
                 tocblob_fn=lambda t: zstd_padded(t, 300 << 20))
    toc_stream_cases(toc_case)
    toc_neighbour_cases(toc_case)

    # --- frames (a plain mount refuses these on read)
    def frame_case(name, what, fn):
        c = add(Case("frame-" + name, what, "lazy", "f"))
        c.frames_fn = fn
        c.hostile = ["nar"]
        return c

    def wrong_digest(nar, blob, frames):
        frames[0][4] = sha(b"not this frame")
        return blob, frames
    frame_case("digest-mismatch", "TOC frame digest does not match the frame", wrong_digest)

    def bomb(nar, blob, frames):
        # one frame that inflates to 64 MiB, with no content size in its header
        c = zstd_padded(nar, 16 << 20)
        return c, [[0, 0, len(c), len(nar), sha(c)]]
    frame_case("bomb-no-size", "frame inflating to 16 MiB, TOC declares the NAR size", bomb)

    def bomb2(nar, blob, frames):
        # content size present and honest (2 MiB), TOC declares less
        c = zstd(nar + b"\0" * ((2 << 20) - len(nar)))
        return c, [[0, 0, len(c), len(nar), sha(c)]]
    frame_case("bomb-over-ulen", "frame's content size (2 MiB) exceeds the TOC's ulen", bomb2)

    def short(nar, blob, frames):
        c = zstd(nar[:-8])
        return c, [[0, 0, len(c), len(nar), sha(c)]]
    frame_case("short", "frame decompresses to fewer bytes than the TOC's ulen", short)

    def garbage(nar, blob, frames):
        c = b"\x28\xb5\x2f\xfd" + b"\xff" * 60
        return c, [[0, 0, len(c), len(nar), sha(c)]]
    frame_case("garbage", "frame is not valid zstd (digest matches the TOC)", garbage)

    # --- manifests
    def man_case(name, what, serve="put", **kw):
        c = add(Case("manifest-" + name, what, "lazy", ""))
        c.serve = serve
        c.hostile = ["manifest"]
        for k, v in kw.items():
            setattr(c, k, v)
        return c
    man_case("not-json", "manifest is not JSON", "proxy-manifest",
             raw_manifest=b"this is not json {")
    man_case("too-large", "manifest of 5 MiB", "proxy-manifest",
             raw_manifest=lambda m: json.dumps(dict(m, padding="x" * (5 << 20))).encode())

    def mt(m):
        m["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
        return m
    man_case("wrong-layer-type", "NAR layer with a tar media type", man_fn=mt)
    man_case("wrong-artifact-type", "artifactType is not a nixoci store path",
             man_fn=lambda m: dict(m, artifactType="application/vnd.example+type"))
    man_case("docker-media-type", "manifest mediaType is Docker's", "proxy-manifest",
             man_fn=lambda m: dict(m, mediaType="application/vnd.docker.distribution."
                                   "manifest.v2+json"))

    def drop(key):
        def f(m):
            del m["annotations"][key]
            return m
        return f
    man_case("no-nar-hash", "missing dev.nixoci.nar-hash", man_fn=drop("dev.nixoci.nar-hash"))
    man_case("no-store-path", "missing dev.nixoci.store-path",
             man_fn=drop("dev.nixoci.store-path"))
    man_case("no-annotations", "no annotations at all",
             man_fn=lambda m: {k: v for k, v in m.items() if k != "annotations"})

    def setann(key, val):
        def f(m):
            m["annotations"][key] = val
            return m
        return f
    man_case("format-2", "dev.nixoci.format is 2", man_fn=setann("dev.nixoci.format", "2"))
    man_case("bad-nar-hash", "dev.nixoci.nar-hash is not a hash",
             man_fn=setann("dev.nixoci.nar-hash", "sha256:zzzz"))
    man_case("nar-size-mismatch", "dev.nixoci.nar-size differs from the TOC",
             nar_size_field=99999)
    c = man_case("name-mismatch", "store path name does not match the name looked up")
    c.man_fn = lambda m, c=c: setann("dev.nixoci.store-path",
                                     "/nix/store/%s-other-name" % c.hash)(m)
    c = man_case("hash-mismatch", "store path hash part does not match the tag")
    c.man_fn = setann("dev.nixoci.store-path", "/nix/store/%s-%s" % (
        nix32(sha(b"another")[:20]), c.pname))

    # --- the registry itself lies
    c = add(Case("registry-html-manifest", "registry answers the manifest with an HTML page",
                 "lazy", "", "proxy-html-manifest"))
    c.hostile = ["manifest"]
    c = add(Case("registry-html-toc", "registry answers the TOC blob with an HTML page",
                 "lazy", "", "proxy-html-toc"))
    c.hostile = ["toc"]
    c = add(Case("registry-wrong-digest-nar", "200 for the NAR blob, body has the wrong digest",
                 "lazy", "f", "tamper-nar"))
    c.hostile = ["nar"]
    c = add(Case("registry-wrong-digest-toc", "200 for the TOC blob, body has the wrong digest",
                 "lazy", "", "tamper-toc"))
    c.hostile = ["toc"]
    return C


def write_case(outdir, c):
    r = build(c)
    d = os.path.join(outdir, c.name)
    os.makedirs(os.path.join(d, "blobs"), exist_ok=True)
    with open(os.path.join(d, "manifest.json"), "wb") as f:
        f.write(r["manifest"])
    for b in r["blobs"]:
        with open(os.path.join(d, "blobs", sha(b).hex()), "wb") as f:
            f.write(b)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(r["info"], f, sort_keys=True, indent=1)
    return r


# ------------------------------------------------- containment extras
# Artifacts that are not one store path each (closure indexes, ...), written
# next to the cases as OUTDIR/containment/*; the tests that use them say what.

def closure_index(entries, roots):
    """a closure index (docs/format.md): entries [(store path, manifest bytes, size)]"""
    return json.dumps({
        "annotations": {"dev.nixoci.closure": "1", "dev.nixoci.roots": " ".join(roots)},
        "artifactType": "application/vnd.nixoci.closure.v1",
        "manifests": [{"annotations": {"dev.nixoci.store-path": sp}, "artifactType": ART,
                       "digest": "sha256:" + sha(m).hex(), "mediaType": MT_MANIFEST,
                       "size": size} for sp, m, size in entries],
        "mediaType": "application/vnd.oci.image.index.v1+json", "schemaVersion": 2,
    }, sort_keys=True, separators=(",", ":")).encode()


def write_containment(outdir):
    d = os.path.join(outdir, "containment")
    os.makedirs(d, exist_ok=True)
    by_name = {c.name: c for c in cases()}
    good, other = by_name["good"], by_name["toc-nar-size-mismatch"]
    gm, om = build(good)["manifest"], build(other)["manifest"]
    gsp, osp = "/nix/store/" + good.base, "/nix/store/" + other.base
    # the second path's descriptor has the right digest and a size one byte
    # too large (then too small): EIO for that path, the good one is served
    for name, delta in (("closure-size-plus", 1), ("closure-size-minus", -1)):
        with open(os.path.join(d, name + ".json"), "wb") as f:
            f.write(closure_index([(gsp, gm, len(gm)), (osp, om, len(om) + delta)], [gsp]))
    with open(os.path.join(d, "closure-size-paths"), "w") as f:
        f.write("%s\n%s\n" % (good.base, other.base))
    cd = os.path.join(d, "cases")
    with open(os.path.join(d, "trust-cases.tsv"), "w") as tsv:
        for c in trust_cases():
            r = write_case(cd, c)
            tsv.write("%s\t%s\t%s\n" % (c.name, c.base, r["info"]["toc_digest"]))
    # another path (another tag) whose manifest names a TOC layer refused
    # before: refused by its digest, not fetched again, one line of its own
    with open(os.path.join(d, "alias-cases.tsv"), "w") as tsv:
        for orig in ("toc-bad-magic", "toc-bomb-declared-mismatch"):
            blob = build(by_name[orig])["tocblob"]
            c = Case(orig + "-alias", "another path naming %s's TOC layer" % orig, "lazy", "")
            c.tocblob_fn = lambda t, blob=blob: blob
            c.hostile = ["toc"]
            r = write_case(cd, c)
            tsv.write("%s\t%s\t%s\t%s\n" % (c.name, c.base, orig, r["info"]["toc_digest"]))
    with open(os.path.join(d, "shared-cases.tsv"), "w") as tsv:
        for c in shared_cases():
            r = write_case(cd, c)
            # the frames it shares with "good", then its own
            tsv.write("%s\t%s\t%s\t%s\n" % (c.name, c.base, r["info"]["frames"][0],
                                             " ".join(r["info"]["frames"][1:])))


def shared_cases():
    """paths whose NAR layer starts with the very frame of "good" (same
    digest, same ulen) and whose whole NAR is malformed: full verification
    (trusted keys, narinfo signature only) refuses them"""
    C = []

    def tail_frames(extra):
        def f(nar, blob, frames):
            gb, gf = pack(nar[:-len(extra)])
            e = zstd(extra)
            return gb + e, gf + [[len(gb), len(nar) - len(extra), len(e), len(extra), sha(e)]]
        return f
    for name, what, extra in (
            ("shared-trailing", "good's frame, then a frame of trailing bytes", b"\0" * 16),
            ("shared-garbage", "good's frame, then a frame of NAR garbage", b"\x07" * 4096)):
        c = Case(name, what, "keys", "f")
        c.tree = good_tree("good")
        c.nar_fn = lambda nar, extra=extra: nar + extra
        c.frames_fn = tail_frames(extra)
        C.append(c)
    return C


# ------------------------------------------- cache containment and du
# gen.py --cache OUTDIR writes OUTDIR/cachekey/ and OUTDIR/reframed/ for
# tests/integ/t0530-cache-frames.t (only these: the whole corpus is not
# needed there).

def det_data(seed, n):
    """n deterministic incompressible bytes"""
    out, i = bytearray(), 0
    while len(out) < n:
        out += hashlib.sha256(seed.encode() + struct.pack("<Q", i)).digest()
        i += 1
    return bytes(out[:n])


def pack_many(nar, chunk):
    """pack() with one zstd process for all frames (thousands of small ones)"""
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for i, u in enumerate(range(0, len(nar), chunk)):
            names.append(os.path.join(tmp, "%08d" % i))
            with open(names[-1], "wb") as f:
                f.write(nar[u:u + chunk])
        for k in range(0, len(names), 500):
            subprocess.run(["zstd", "-q", "-3", "-f"] + names[k:k + 500], check=True)
        frames, blob = [], bytearray()
        for i, u in enumerate(range(0, len(nar), chunk)):
            with open(names[i] + ".zst", "rb") as f:
                c = f.read()
            frames.append([len(blob), u, len(c), len(nar[u:u + chunk]), sha(c)])
            blob += c
    return bytes(blob), frames


def reframe(size):
    def f(nar, blob, frames):
        return pack_many(nar, size)
    return f


def cachekey_cases():
    """a good path of 64 KiB frames, and paths whose TOC lists the good
    path's very frames (same digests) with one field wrong: each read of
    theirs fails, and the good path's cached chunks stay"""
    data = det_data("cachekey", 5 * 65536 + 1000)

    def tree():
        return dr((b"f", reg(data)),)
    good = Case("ck-good", "the good path (64 KiB frames)", "lazy", "f")
    good.tree = tree()
    good.frames_fn = reframe(65536)
    C = [good]

    def lie(field, delta, where):
        def f(nar, blob, frames):
            blob, frames = pack_many(nar, 65536)
            k = 0 if where == "first" else len(frames) - 1
            frames[k][field] += delta
            if field == 3:      # ulen: the frames after it move
                for j in range(k + 1, len(frames)):
                    frames[j][1] += delta
            return blob, frames
        return f
    for name, what, field, delta, where in (
            ("ck-ulen-plus-last", "good's last frame, ulen one byte more", 3, 1, "last"),
            ("ck-ulen-minus-last", "good's last frame, ulen one byte less", 3, -1, "last"),
            ("ck-ulen-plus-first", "good's first frame, ulen one byte more", 3, 1, "first"),
            ("ck-clen-plus-first", "good's first frame, clen one byte more", 2, 1, "first")):
        c = Case(name, what, "lazy", "f")
        c.tree = tree()
        c.frames_fn = lie(field, delta, where)
        if field == 3:
            n = len(NarWriter(b"\0").dump(c.tree)) + delta
            c.toc_kw = {"nar_size": n}
            c.nar_size_field = n
        C.append(c)
    return C


def reframed_cases():
    """the same kind of path framed at several sizes down to the floor
    (4096; 4097 and 6000 take two blocks a frame), and one below it"""
    C = []
    for size, mib in ((4096, 3), (4097, 3), (6000, 3), (20000, 4), (65536, 4), (262144, 4),
                      (2048, 1)):
        c = Case("rf-%d" % size, "frames of %d bytes" % size, "lazy", "f")
        c.tree = dr((b"f", reg(det_data("rf-%d" % size, mib << 20))),)
        c.frames_fn = reframe(size)
        C.append(c)
    return C


def write_cache_cases(outdir):
    for sub, fn in (("cachekey", cachekey_cases), ("reframed", reframed_cases)):
        d = os.path.join(outdir, sub)
        os.makedirs(os.path.join(d, "expect"), exist_ok=True)
        with open(os.path.join(d, "cases.tsv"), "w") as tsv:
            for c in fn():
                write_case(os.path.join(d, "cases"), c)
                with open(os.path.join(d, "expect", c.name), "wb") as f:
                    f.write(first_file(c.tree)["data"] if "data" in first_file(c.tree)
                            else b"")
                tsv.write("%s\t%s\n" % (c.name, c.base))


def trust_cases():
    """valid paths a mount with trusted keys refuses from the manifest alone
    (no TOC fetch); a plain mount serves them"""
    import base64

    def sigs(val):
        def f(m):
            if val is None:
                del m["annotations"]["dev.nixoci.sigs"]
            else:
                m["annotations"]["dev.nixoci.sigs"] = val
            return m
        return f
    C = []
    for name, what, val in (
            ("sig-untrusted-key", "narinfo signature by a key not trusted",
             "untrusted-1:" + base64.b64encode(b"\1" * 64).decode()),
            ("sig-forged", "trusted key name, signature that does not verify",
             KEY_NAME + ":" + base64.b64encode(b"\0" * 64).decode()),
            ("sig-none", "no signature at all", None)):
        c = Case(name, what, "keys", "f")
        c.man_fn = sigs(val)
        C.append(c)
    return C


# ------------------------------------------------------- large TOCs
# gen.py --big OUTDIR N writes OUTDIR/big-toc/ (a path whose TOC is valid by
# every TOC rule and holds N entries: f, with 8 KiB of contents, and N - 2
# empty files with random names sorted before it) and the zstd bombs of toc_stream_cases, for
# tests/integ/t0541-toc-memory.t. The NAR holds only f: a plain mount trusts
# the TOC for structure, and a NAR of millions of entries would cost the test
# more than it proves (the TOC is what is measured).

def big_names(k):
    """k distinct names "e" + 8 nix32 characters, sorted, deterministic and
    random enough that the TOC layer does not compress to nothing (names
    are most of what a real TOC's compressed layer holds): name i encodes
    i * step + a random offset below step, most significant digit first,
    so the order is the numbers' (the alphabet is in byte order)"""
    import random
    rnd = random.Random(17)
    step = (1 << 40) // k
    digits = [c.encode() for c in NIX32]
    out = []
    for i in range(k):
        v = i * step + rnd.randrange(step)
        out.append(b"e" + b"".join(digits[(v >> s) & 31] for s in (35, 30, 25, 20, 15, 10, 5, 0)))
    return out


def big_toc(small, n):
    """the TOC of root + f (@small, as toc_encode wrote it), grown to @n
    entries by n - 2 empty files sorted before f"""
    ne, nf = struct.unpack_from("<II", small, 32)
    assert ne == 2
    ff = small[104:144]
    frames = small[144:144 + 56 * nf]
    fsize, foff = struct.unpack_from("<QQ", ff, 24)
    k = n - 2
    names = big_names(k)
    out = bytearray(small[:32]) + struct.pack("<III", n, nf, 9 * k + 1) + small[44:64]
    out += struct.pack("<IIIBBHIIQQ", 0, 0, 0, 2, 0, 0, 1, n - 1, 0, 0)
    rec = struct.Struct("<IIIBBHIIQQ")
    ents = bytearray(40 * k)
    for i in range(k):
        rec.pack_into(ents, 40 * i, 0, 9 * i, 9, 1, 0, 0, 0, 0, 0, 0)
    out += ents
    out += rec.pack(0, 9 * k, 1, 1, 0, 0, 0, 0, fsize, foff)
    out += frames
    out += b"".join(names) + b"f"
    return bytes(out)


def write_big(outdir, n):
    c = Case("big-toc", "a TOC of %d entries, valid by every TOC rule" % n, "none", "f")
    c.tree = dr((b"f", reg(b"case big-toc\n" + b"the contents of f\n" * 450)))
    c.toc_fn = lambda t: big_toc(t, n)
    write_case(outdir, c)
    for b in cases():
        if b.name in ("good", "toc-bomb-declared-mismatch", "toc-bomb-over-cap",
                      "toc-bomb-many-frames"):
            write_case(outdir, b)
    with open(os.path.join(outdir, "cases.tsv"), "w") as tsv:
        for name in ("good", "big-toc", "toc-bomb-declared-mismatch", "toc-bomb-over-cap",
                     "toc-bomb-many-frames"):
            with open(os.path.join(outdir, name, "case.json")) as f:
                info = json.load(f)
            tsv.write("%s\t%s\t%s\n" % (name, info["base"], info["toc_digest"]))


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "--list":
        for c in cases():
            print("%-28s %-5s %s" % (c.name, c.detect, c.what))
        return
    if len(sys.argv) == 2 and sys.argv[1] == "--pubkey":
        print(pubkey())
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        seeds(sys.argv[2])
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--big":
        write_big(sys.argv[2], int(sys.argv[3]))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--cache":
        write_cache_cases(sys.argv[2])
        return
    if len(sys.argv) != 2:
        sys.exit("usage: gen.py OUTDIR | --seeds DIR | --list | --pubkey")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "cases.tsv"), "w") as tsv:
        for c in cases():
            write_case(out, c)
            tsv.write("%s\t%s\t%s\t%s\t%s\n" % (c.name, c.detect, c.serve, c.base, c.access))
    with open(os.path.join(out, "pubkey"), "w") as f:
        f.write(pubkey() + "\n")
    write_containment(out)


def seeds(d):
    """valid and near-valid inputs for each fuzz target"""
    def put(target, name, data):
        os.makedirs(os.path.join(d, target), exist_ok=True)
        with open(os.path.join(d, target, name), "wb") as f:
            f.write(data)
    for c in cases():
        if c.name not in ("good", "nar-name-dotdot", "nar-unsorted", "nar-bad-padding",
                          "nar-deep", "nar-symlink-long", "toc-unsorted", "toc-name-dotdot",
                          "frame-short", "frame-bomb-over-ulen", "manifest-name-mismatch",
                          "manifest-no-annotations"):
            continue
        r = build(c)
        put("nar", c.name, b"\x07" + r["nar"])   # first byte: feed step
        put("toc", c.name, r["toc"])
        put("seektable", c.name, r["seektable"])
        put("frame", c.name, struct.pack("<I", len(r["nar"]) - 1) + r["frame0"])
        if not c.name.startswith("frame-"):
            put("manifest", c.name, r["manifest"])
    # the TOC layer as it streams: first byte = feed step (and bit 7: with
    # the digest), the rest the zstd frame
    for c in cases():
        if c.name not in ("good", "toc-unsorted", "toc-name-dotdot", "nar-deep", "toc-bad-magic",
                          "toc-trailing-byte", "toc-huge-counts", "toc-bomb-declared-mismatch",
                          "toc-not-zstd", "toc-bomb-header-garbage", "toc-frames-backwards",
                          "toc-strtab-huge"):
            continue
        r = build(c)
        put("toclayer", c.name, bytes([0x85 if len(r["tocblob"]) % 2 else 0x07]) + r["tocblob"])
    ix = {"annotations": {"dev.nixoci.closure": "1",
                          "dev.nixoci.roots": "/nix/store/%s-hostile-good" % Case("good", "").hash},
          "artifactType": "application/vnd.nixoci.closure.v1",
          "manifests": [{"annotations": {"dev.nixoci.store-path": "/nix/store/%s" % c.base},
                         "artifactType": ART, "digest": "sha256:" + sha(c.name.encode()).hex(),
                         "mediaType": MT_MANIFEST, "size": 1234}
                        for c in cases()[:3]],
          "mediaType": "application/vnd.oci.image.index.v1+json", "schemaVersion": 2}
    put("index", "closure", json.dumps(ix, sort_keys=True, separators=(",", ":")).encode())
    ix2 = dict(ix, manifests=[])
    put("index", "empty", json.dumps(ix2).encode())
    ix3 = json.loads(json.dumps(ix))
    ix3["manifests"][0]["annotations"]["dev.nixoci.store-path"] = "/nix/store/../x"
    put("index", "bad-path", json.dumps(ix3).encode())
    ix4 = json.loads(json.dumps(ix))
    ix4["manifests"].append({"annotations": {"dev.nixoci.closure-meta": "1"},
                             "artifactType": "application/vnd.nixoci.closure-meta.v1",
                             "digest": "sha256:" + sha(b"meta").hex(),
                             "mediaType": MT_MANIFEST, "size": 321})
    put("index", "with-meta", json.dumps(ix4, sort_keys=True, separators=(",", ":")).encode())
    g = Case("good", "")
    fields = [
        (0, "sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0"),
        (0, "sha256:" + "ab" * 32), (0, "sha256-" + "A" * 43 + "="), (0, "md5:abc"),
        (1, "/nix/store/" + g.base), (1, "/nix/store/" + g.hash + "-.."),
        (1, "/nix/store/x"), (2, g.base), (2, g.hash + "-a" * 120),
        (3, pubkey() + " " + pubkey()), (3, "a:b,c:d"), (3, "nokey"),
        (4, sign("msg")), (4, KEY_NAME + ":AAAA"), (4, "other:" + "A" * 88),
        (5, "sha256:" + "0" * 64), (5, "sha256:" + "G" * 64),
        (6, g.hash), (6, "e" * 32), (7, "aGVsbG8="), (7, "aGVsbG8"), (7, "!!!!"),
        (8, "10G"), (8, "18446744073709551615K"), (8, "-1"),
    ]
    for i, (sel, s) in enumerate(fields):
        put("fields", "f%02d" % i, bytes([sel]) + s.encode())
    auth = [
        'Bearer realm="https://auth.example/token",service="registry",scope="repository:a:pull"',
        'Basic realm="Registry Realm"', 'bearer realm=x', 'Bearer service="x"',
        'Bearer realm="a\\"b",scope=', 'Basic', 'Digest realm="x"',
        'Bearer realm="' + "r" * 1100 + '"', 'Bearer ,,, realm = "x" , a=b',
    ]
    for i, s in enumerate(auth):
        put("wwwauth", "a%02d" % i, s.encode())


if __name__ == "__main__":
    main()
