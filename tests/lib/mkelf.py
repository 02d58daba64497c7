#!/usr/bin/python3
"""tests/lib/mkelf.py: writes small 64-bit little-endian ELF shared objects
and executables with a dynamic section (DT_NEEDED, DT_RUNPATH), for the
library prediction test (t0174). They are never run: the loader's view of
them (header, program headers, dynamic section, string table) is what
matters, plus PAD bytes of deterministic filler in the loadable segment.

  mkelf.py OUT [--needed NAME]... [--runpath DIRS] [--pad BYTES] [--exec]
  mkelf.py --malformed DIR     a directory of broken ELF files
As a Nix builder (no arguments but the environment): $out, $files (lines
"PATH NEEDED,NEEDED RUNPATH PAD", "-" for none) and $links ("LINK TARGET").
"""
import os
import random
import struct
import sys


def elf(needed, runpath, pad, exe=False, seed="x"):
    strtab = b"\0"
    offs = []
    for n in needed:
        offs.append(len(strtab))
        strtab += n.encode() + b"\0"
    rp_off = None
    if runpath:
        rp_off = len(strtab)
        strtab += runpath.encode() + b"\0"
    phnum = 3
    ehsize, phsz = 64, 56
    strtab_off = ehsize + phnum * phsz
    dyn = []
    for o in offs:
        dyn.append((1, o))           # DT_NEEDED
    if rp_off is not None:
        dyn.append((29, rp_off))     # DT_RUNPATH
    dyn.append((5, 0))               # DT_STRTAB, patched below
    dyn.append((10, len(strtab)))    # DT_STRSZ
    dyn.append((0, 0))
    filler = random.Random(seed).randbytes(pad)
    dyn_off = strtab_off + len(strtab)
    dyn_off = (dyn_off + 7) & ~7
    dyn_sz = 16 * len(dyn)
    end = dyn_off + dyn_sz + len(filler)
    base = 0x400000 if exe else 0
    dynb = b"".join(struct.pack("<QQ", t, (base + strtab_off) if t == 5 else v)
                    for t, v in dyn)
    ph = b""
    ph += struct.pack("<IIQQQQQQ", 6, 4, ehsize, base + ehsize, base + ehsize,
                      phnum * phsz, phnum * phsz, 8)                      # PT_PHDR
    ph += struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, end, end, 0x1000)  # PT_LOAD
    ph += struct.pack("<IIQQQQQQ", 2, 6, dyn_off, base + dyn_off, base + dyn_off,
                      dyn_sz, dyn_sz, 8)                                  # PT_DYNAMIC
    hdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    hdr += struct.pack("<HHIQQQIHHHHHH", 2 if exe else 3, 62, 1, base + 0x1000,
                       ehsize, 0, 0, ehsize, phsz, phnum, 64, 0, 0)
    out = hdr + ph + strtab
    out += bytes(dyn_off - len(out)) + dynb + filler
    return out


def malformed(d):
    good = elf(["libc.so.6"], "/nix/store/none/lib", 0)
    os.makedirs(d, exist_ok=True)
    files = {
        "truncated": good[:100],                       # program headers cut off
        "header-only": good[:64],
        "no-dynamic": good[:64 + 56] + bytes(56) * 2 + good[64 + 3 * 56:],
        "phnum-huge": good[:56] + struct.pack("<H", 65535) + good[58:],
        "phoff-past-end": good[:32] + struct.pack("<Q", 1 << 40) + good[40:],
        "dyn-past-end": bytearray(good),
        "strtab-unmapped": bytearray(good),
        "garbage": b"\x7fELF\x02\x01\x01" + random.Random("g").randbytes(5000),
        "elf32": b"\x7fELF\x01\x01\x01" + good[7:],
    }
    # PT_DYNAMIC's offset (third header, offset field) far past the end
    struct.pack_into("<Q", files["dyn-past-end"], 64 + 2 * 56 + 8, 1 << 50)
    # DT_STRTAB pointing at an address no PT_LOAD maps
    dyn = bytes(files["strtab-unmapped"]).index(struct.pack("<Q", 5))
    struct.pack_into("<Q", files["strtab-unmapped"], dyn + 8, 1 << 60)
    for name, b in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(bytes(b))
        os.chmod(os.path.join(d, name), 0o755)


def main():
    a = sys.argv[1:]
    if a and a[0] == "--malformed":
        malformed(a[1])
        return
    if not a:
        out = os.environ["out"]
        for line in os.environ.get("files", "").strip().splitlines():
            path, needed, runpath, pad = line.split()
            needed = [] if needed == "-" else needed.split(",")
            runpath = "" if runpath == "-" else runpath
            p = os.path.join(out, path)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            exe = path.startswith("bin/")
            with open(p, "wb") as f:
                f.write(elf(needed, runpath, int(pad), exe, seed=path))
            os.chmod(p, 0o755 if exe else 0o555)
        # "ld.so --library-path DIRS PROGRAM" wrappers: "PATH TEXT", @out@
        # standing for $out, a literal \n for a new line; "#!/bin/sh" first
        # unless TEXT starts with its own "#!"
        for line in os.environ.get("scripts", "").strip().splitlines():
            path, text = line.split(" ", 1)
            p = os.path.join(out, path)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            text = text.replace("@out@", out).replace("\\n", "\n")
            if not text.startswith("#!"):
                text = "#!/bin/sh\n" + text
            with open(p, "w") as f:
                f.write(text + "\n")
            os.chmod(p, 0o755)
        for line in os.environ.get("links", "").strip().splitlines():
            link, target = line.split()
            p = os.path.join(out, link)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            os.symlink(target, p)
        return
    needed, runpath, pad, exe = [], "", 0, False
    out = a.pop(0)
    while a:
        o = a.pop(0)
        if o == "--needed":
            needed.append(a.pop(0))
        elif o == "--runpath":
            runpath = a.pop(0)
        elif o == "--pad":
            pad = int(a.pop(0))
        elif o == "--exec":
            exe = True
    with open(out, "wb") as f:
        f.write(elf(needed, runpath, pad, exe))


main()
