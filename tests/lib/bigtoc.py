#!/usr/bin/python3
"""tests/lib/bigtoc.py OUTDIR N LINKS FILES: N valid store paths whose TOCs
are large once decoded, in the layout of tests/data/should-fail/gen.py (one
directory per path with manifest.json, blobs/, case.json), which
tests/data/should-fail/upload.py puts into a registry.

Each path holds:
  f          a regular file whose bytes name the path (OUTDIR/<name>/f.expect)
  files/     FILES empty regular files e000000...
  g          another regular file (OUTDIR/<name>/g.expect)
  links/     LINKS symlinks l000000... with 4000-byte targets

A decoded TOC entry takes 40 bytes plus its name and, for a symlink, its
target (docs/format.md 4.2: struct nx_toc_entry and the string table), so a
path takes about LINKS * 4047 + FILES * 47 bytes of decoded tables. The NAR
is about as large, but repetitive: the blobs compress to a few hundred KiB.

gen.py's generic writer takes a second per ten thousand entries; this one
lays out the same bytes from templates (every entry of a directory has the
same length), and checks itself against gen.py on a small tree first.
Prints "name<TAB>base<TAB>decoded bytes" per path.
"""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data",
                                "should-fail"))
import gen  # noqa: E402

TARGET = b"/nix/store/" + b"t" * (4000 - len(b"/nix/store/"))


def S(b):
    return struct.pack("<Q", len(b)) + b + b"\0" * (-len(b) % 8)


def reg_node(data):
    """(bytes, offset of the contents in them)"""
    head = S(b"(") + S(b"type") + S(b"regular") + S(b"contents") + struct.pack("<Q", len(data))
    return head + data + b"\0" * (-len(data) % 8) + S(b")"), len(head)


def entry_head(name):
    return S(b"entry") + S(b"(") + S(b"name") + S(name) + S(b"node")


def files_of(i):
    """f and g of path @i: the same lengths for every path, so every path
    has the same layout and only the frames holding f and g differ"""
    f = ("path %02d\n" % i).encode() + gen.det_data("bigtoc-%d" % i, 40000)
    g = ("the second file of path %02d\n" % i).encode() * 300
    return f, g


def nar_and_toc(f, g, links, files, blob_size_fn):
    """the NAR, and a function of (frames, blob size) giving the TOC"""
    out = bytearray(S(b"nix-archive-1") + S(b"(") + S(b"type") + S(b"directory"))
    off = {}

    def put_reg(name, data, key):
        nonlocal out
        out += entry_head(name)
        node, at = reg_node(data)
        off[key] = len(out) + at
        out += node + S(b")")

    put_reg(b"f", f, "f")
    out += entry_head(b"files") + S(b"(") + S(b"type") + S(b"directory")
    e_node, e_at = reg_node(b"")
    e_len = len(entry_head(b"e000000")) + len(e_node) + len(S(b")"))
    e_base = len(out) + len(entry_head(b"e000000")) + e_at
    out += b"".join(entry_head(b"e%06d" % k) + e_node + S(b")") for k in range(files))
    out += S(b")") + S(b")")
    put_reg(b"g", g, "g")
    out += entry_head(b"links") + S(b"(") + S(b"type") + S(b"directory")
    l_node = S(b"(") + S(b"type") + S(b"symlink") + S(b"target") + S(TARGET) + S(b")")
    out += b"".join(entry_head(b"l%06d" % k) + l_node + S(b")") for k in range(links))
    out += S(b")") + S(b")") + S(b")")
    nar = bytes(out)

    def toc(frames, blob_size):
        ent = struct.Struct("<IIIBBHIIQQ")
        root_names = b"f" + b"files" + b"g" + b"links"
        e_names = 12
        l_names = e_names + 7 * files
        targets = l_names + 7 * links
        rows = [ent.pack(0, 0, 0, 2, 0, 0, 1, 4, 0, 0),
                ent.pack(0, 0, 1, 1, 0, 0, 0, 0, len(f), off["f"]),
                ent.pack(0, 1, 5, 2, 0, 0, 5, files, 0, 0),
                ent.pack(0, 6, 1, 1, 0, 0, 0, 0, len(g), off["g"]),
                ent.pack(0, 7, 5, 2, 0, 0, 5 + files, links, 0, 0)]
        rows += [ent.pack(2, e_names + 7 * k, 7, 1, 0, 0, 0, 0, 0, e_base + e_len * k)
                 for k in range(files)]
        rows += [ent.pack(4, l_names + 7 * k, 7, 3, 0, 0, 0, 0, len(TARGET),
                          targets + len(TARGET) * k) for k in range(links)]
        strtab = (root_names + b"".join(b"e%06d" % k for k in range(files)) +
                  b"".join(b"l%06d" % k for k in range(links)) + TARGET * links)
        head = b"NIXOCTOC" + struct.pack("<IIQQIIII", 1, 0, len(nar), blob_size,
                                         len(rows), len(frames), len(strtab),
                                         gen.FRAME_MAX) + b"\0" * 16
        fr = b"".join(struct.pack("<QQII", x[0], x[1], x[2], x[3]) + x[4] for x in frames)
        return head + b"".join(rows) + fr + strtab

    return nar, toc


def gen_tree(f, g, links, files):
    return gen.dr((b"f", gen.reg(f)),
                  (b"files", gen.dr(*[(b"e%06d" % k, gen.reg(b"")) for k in range(files)])),
                  (b"g", gen.reg(g)),
                  (b"links", gen.dr(*[(b"l%06d" % k, gen.sym(TARGET)) for k in range(links)])))


def self_check(tmp):
    """the templates, and a Layout's parts, give gen.py's bytes on a small tree"""
    lay = Layout(3, 4, tmp)
    f, g = files_of(7)
    w = gen.NarWriter()
    t = gen_tree(f, g, 3, 4)
    want_nar = w.dump(t)
    blob, frames = lay.pack(f, g)
    z, _ = lay.tocblob(frames, 1234)
    toc = gen.subprocess.run(["zstd", "-q", "-d", "-c"], input=z, check=True,
                             capture_output=True).stdout
    if lay.sha(f, g) != gen.sha(want_nar) or toc != gen.toc_encode(t, w.offsets, len(want_nar),
                                                                   frames, 1234):
        sys.exit("bigtoc.py: a Layout's path differs from gen.py's")
    f, g = files_of(99)
    w = gen.NarWriter()
    t = gen_tree(f, g, 3, 4)
    want_nar = w.dump(t)
    nar, toc = nar_and_toc(f, g, 3, 4, None)
    frames = [[0, 0, 10, len(nar), b"\1" * 32]]
    want_toc = gen.toc_encode(t, w.offsets, len(nar), frames, 1234)
    if nar != want_nar or toc(frames, 1234) != want_toc:
        sys.exit("bigtoc.py: the fast layout differs from gen.py's")


class Layout:
    """what all paths share: the NAR around f and g, the TOC's records and
    string table, and the compressed frames that hold neither f nor g. A
    path's NAR and TOC are never put together in memory: the NAR is hashed
    and framed from its parts, the TOC written to zstd from its parts."""

    def __init__(self, links, files, tmp):
        self.links, self.files, self.tmp = links, files, tmp
        f, g = files_of(0)
        nar, toc_fn = nar_and_toc(f, g, links, files, None)
        f_at, g_at = nar.index(f), nar.index(g)
        self.flen, self.glen, self.size = len(f), len(g), len(nar)
        mv = memoryview(nar)
        # (offset, bytes) of the parts; f and g are None: the path's own
        self.parts = [(0, mv[:f_at]), (f_at, None), (f_at + len(f), mv[f_at + len(f):g_at]),
                      (g_at, None), (g_at + len(g), mv[g_at + len(g):])]
        self.own = [(f_at, f_at + len(f)), (g_at, g_at + len(g))]
        # the TOC with one frame of 0s and blob size 0: its records and
        # strings are the same for every path
        t0 = toc_fn([], 0)
        self.toc_body = memoryview(t0)[64:]
        self.chunks = {}

    def pieces(self, f, g):
        return [(off, f if i == 1 else g if i == 3 else b) for i, (off, b) in
                enumerate(self.parts)]

    def sha(self, f, g):
        h = gen.hashlib.sha256()
        for _, b in self.pieces(f, g):
            h.update(b)
        return h.digest()

    def span(self, f, g, u, end):
        out = bytearray()
        for off, b in self.pieces(f, g):
            lo, hi = max(u, off), min(end, off + len(b))
            if lo < hi:
                out += b[lo - off:hi - off]
        return bytes(out)

    def pack(self, f, g):
        """gen.pack for this layout: frames that hold f or g are compressed
        per path, the others once"""
        frames, blob = [], bytearray()
        for u in range(0, self.size, gen.FRAME_MAX):
            end = min(u + gen.FRAME_MAX, self.size)
            own = any(u < hi and lo < end for lo, hi in self.own)
            if own or u not in self.chunks:
                c = gen.zstd(self.span(f, g, u, end))
                if not own:
                    self.chunks[u] = c
            else:
                c = self.chunks[u]
            frames.append([len(blob), u, len(c), end - u, gen.sha(c)])
            blob += c
        return bytes(blob), frames

    def tocblob(self, frames, blob_size):
        """the TOC layer (zstd, content size declared), and the TOC's size"""
        head = b"NIXOCTOC" + struct.pack("<IIQQIIII", 1, 0, self.size, blob_size,
                                         5 + self.links + self.files, len(frames),
                                         len(self.toc_body) - 40 * (5 + self.links + self.files),
                                         gen.FRAME_MAX) + b"\0" * 16
        rows = self.toc_body[:40 * (5 + self.links + self.files)]
        strtab = self.toc_body[40 * (5 + self.links + self.files):]
        fr = b"".join(struct.pack("<QQII", x[0], x[1], x[2], x[3]) + x[4] for x in frames)
        path = os.path.join(self.tmp, "toc")
        with open(path, "wb") as fh:
            for b in (head, rows, fr, strtab):
                fh.write(b)
        z = gen.subprocess.run(["zstd", "-q", "-3", "-c", path], check=True,
                               capture_output=True).stdout
        size = len(head) + len(rows) + len(fr) + len(strtab)
        os.unlink(path)
        return z, size


def write_path(outdir, i, lay):
    name = "bigtoc-%02d" % i
    c = gen.Case(name, "a valid path with a large TOC", detect="none")
    c.pname = name
    f, g = files_of(i)
    blob, frames = lay.pack(f, g)
    blob_full = blob + gen.seektable(frames)
    tocblob, toclen = lay.tocblob(frames, len(blob_full))
    nar_sha = lay.sha(f, g)
    nar_len = lay.size
    sp = "/nix/store/" + c.base
    narhash = "sha256:" + gen.nix32(nar_sha)
    config = b"{}"
    m = {
        "annotations": {
            "dev.nixoci.format": "1",
            "dev.nixoci.store-path": sp,
            "dev.nixoci.nar-hash": narhash,
            "dev.nixoci.nar-size": str(nar_len),
            "dev.nixoci.references": "",
            "dev.nixoci.zstd": gen.ZSTD_PARAMS,
            "dev.nixoci.sigs": gen.sign("1;%s;%s;%d;" % (sp, narhash, nar_len)),
        },
        "artifactType": gen.ART,
        "config": {"digest": "sha256:" + gen.sha(config).hex(), "mediaType": gen.MT_EMPTY,
                   "size": 2},
        "layers": [
            {"digest": "sha256:" + gen.sha(blob_full).hex(), "mediaType": gen.MT_NAR,
             "size": len(blob_full)},
            {"digest": "sha256:" + gen.sha(tocblob).hex(), "mediaType": gen.MT_TOC,
             "size": len(tocblob)},
        ],
        "mediaType": gen.MT_MANIFEST,
        "schemaVersion": 2,
    }
    d = os.path.join(outdir, name)
    os.makedirs(os.path.join(d, "blobs"), exist_ok=True)
    with open(os.path.join(d, "manifest.json"), "wb") as fh:
        fh.write(json.dumps(m, sort_keys=True, separators=(",", ":")).encode())
    for b in (config, blob_full, tocblob):
        with open(os.path.join(d, "blobs", gen.sha(b).hex()), "wb") as fh:
            fh.write(b)
    with open(os.path.join(d, "case.json"), "w") as fh:
        json.dump({"name": name, "what": c.what, "base": c.base, "tag": c.hash,
                   "detect": "none", "access": "f", "serve": "put", "hostile": [],
                   "frames": [x[4].hex() for x in frames]}, fh, sort_keys=True, indent=1)
    for n, data in (("f.expect", f), ("g.expect", g)):
        with open(os.path.join(d, n), "wb") as fh:
            fh.write(data)
    nentries = 5 + lay.links + lay.files
    strtab = toclen - 64 - 40 * nentries - 56 * len(frames)
    return name, c.base, nentries * 40 + len(frames) * 56 + strtab


def main():
    out, n, links, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    os.makedirs(out, exist_ok=True)
    self_check(out)
    lay = Layout(links, files, out)
    for i in range(n):
        print("%s\t%s\t%d" % write_path(out, i, lay), flush=True)


if __name__ == "__main__":
    main()
