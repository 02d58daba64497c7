#!/usr/bin/python3
"""Describe the host files that make the benchmark closure, as JSON on stdout.

closure.nix turns this into ~1500 store paths built by a static busybox:
  lib-<pkg>     the files a Debian package owns in /usr/lib/x86_64-linux-gnu,
                referencing the lib-<dep> paths of the package's Depends
  doc-<pkg>     /usr/share/doc/<pkg>
  locale-<lang> /usr/share/locale/<lang>
  big ones      the JDK 17 (symlinks resolved), Temurin 25 and /usr/lib/gcc,
                each referencing the lib-<dep> paths of the
                package that ships it
  python3.11    CPython packaged the way nixpkgs packages it: one store path
                with the interpreter and the whole standard library (bytecode
                compiled at build time), referencing the lib-<pkg> paths that
                own the libraries the interpreter and its extension modules load
Only the host knows which package owns what (dpkg's database), so this script
looks and the Nix stays declarative.

usage: spec.py > spec.json
"""
import json
import os
import re
import subprocess
import sys

LIBDIR = "/usr/lib/x86_64-linux-gnu"
DPKG = "/var/lib/dpkg"

# big store paths: name -> (host directory, owning Debian package, resolve symlinks)
BIG = {
    "openjdk-17": ("/usr/lib/jvm/java-17-openjdk-amd64", "openjdk-17-jre-headless", True),
    "temurin-25": ("/usr/lib/jvm/temurin-25-jdk-amd64", "temurin-25-jdk", False),
    "gcc-lib-12": ("/usr/lib/gcc", "gcc-12", False),
}


def clean(name):
    """Store names allow [A-Za-z0-9+._?=-] and may not start with a dot."""
    n = re.sub(r"[^A-Za-z0-9+._?=-]", "-", name)
    return n.lstrip(".") or "x"


def parse_status():
    """Installed packages -> list of dependency package names."""
    deps, cur, field = {}, {}, None
    with open(os.path.join(DPKG, "status"), encoding="utf-8", errors="replace") as f:
        for line in f.read().split("\n") + [""]:
            if not line:
                if cur.get("Package") and "installed" in cur.get("Status", "").split():
                    names = []
                    for key in ("Pre-Depends", "Depends"):
                        for alt in cur.get(key, "").split(","):
                            alt = alt.split("|")[0].strip()
                            if alt:
                                names.append(re.split(r"[\s(:]", alt)[0])
                    deps[cur["Package"]] = names
                cur, field = {}, None
            elif line[0] in " \t":
                continue
            elif ":" in line:
                field, val = line.split(":", 1)
                cur[field] = val.strip()
    return deps


def lib_files():
    """package -> sorted files (relative to LIBDIR) it owns there."""
    owned, seen = {}, set()
    info = os.path.join(DPKG, "info")
    for fn in sorted(os.listdir(info)):
        if not fn.endswith(".list"):
            continue
        pkg = fn[:-5].split(":")[0]
        with open(os.path.join(info, fn), encoding="utf-8", errors="replace") as f:
            for line in f:
                p = line.rstrip("\n")
                if p.startswith("/lib/x86_64-linux-gnu/"):
                    p = "/usr" + p
                if not p.startswith(LIBDIR + "/"):
                    continue
                rel = p[len(LIBDIR) + 1:]
                if rel in seen or " " in rel or "\n" in rel:
                    continue
                if os.path.islink(p) or os.path.isfile(p):
                    seen.add(rel)
                    owned.setdefault(pkg, []).append(rel)
    return {k: sorted(v) for k, v in owned.items()}


def ldd(path):
    """Host paths of the shared libraries @path loads (the loader included)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    found = set()
    for line in out.splitlines():
        m = re.match(r"\s*(?:\S+ => )?(/\S+) \(0x", line)
        if m:
            found.add(os.path.realpath(m.group(1)))
    return found


def python_spec(libs):
    """The host's CPython 3 and the lib-<pkg> packages its libraries live in."""
    exe = os.path.realpath("/usr/bin/python3")
    ver = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    stdlib = "/usr/lib/python" + ver
    owner = {}
    for pkg, files in libs.items():
        for f in files:
            full = os.path.join(LIBDIR, f)
            if not os.path.islink(full):  # -dev packages own only the links
                owner[full] = pkg
    need = ldd(exe)
    dynload = os.path.join(stdlib, "lib-dynload")
    for n in sorted(os.listdir(dynload)):
        if n.endswith(".so"):
            need |= ldd(os.path.join(dynload, n))
    deps = sorted({owner[p] for p in need if p in owner})
    missing = sorted(p for p in need if p not in owner)
    if missing:
        print(f"spec: python: no lib package owns {missing}", file=sys.stderr)
    return {"name": "python" + ver, "version": ver, "exe": exe, "stdlib": stdlib,
            "deps": deps}


def acyclic(graph):
    """Drop the edges that close a cycle (libc6 <-> libgcc-s1 and friends):
    store paths cannot reference each other both ways."""
    done, onstack, out = set(), set(), {}
    for root in sorted(graph):
        if root in done:
            continue
        stack = [(root, iter(graph[root]))]
        onstack.add(root)
        out[root] = []
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                onstack.discard(node)
                done.add(node)
            elif nxt in onstack:
                continue
            else:
                out[node].append(nxt)
                if nxt not in done:
                    onstack.add(nxt)
                    out[nxt] = []
                    stack.append((nxt, iter(graph[nxt])))
    return out


def main():
    deps = parse_status()
    libs = lib_files()
    libdeps = acyclic({p: sorted({d for d in deps.get(p, []) if d in libs and d != p})
                       for p in libs})
    doc = "/usr/share/doc"
    docs = sorted(d for d in os.listdir(doc) if not d.startswith("."))
    loc = "/usr/share/locale"
    locales = sorted(d for d in os.listdir(loc) if os.path.isdir(os.path.join(loc, d)))
    big = {}
    for name, (path, pkg, resolve) in BIG.items():
        if os.path.isdir(path):
            big[name] = {"path": path, "resolve": resolve,
                         "deps": sorted({d for d in deps.get(pkg, []) if d in libs})}
    spec = {
        "libdir": LIBDIR,
        "libs": {p: {"name": clean(p), "files": f, "deps": libdeps[p]} for p, f in libs.items()},
        "docs": {d: clean(d) for d in docs},
        "locales": {d: clean(d) for d in locales},
        "big": big,
        "python": python_spec(libs),
    }
    json.dump(spec, sys.stdout, indent=0, sort_keys=True)
    print()
    n = len(libs) + len(docs) + len(locales) + len(big)
    print(f"spec: {len(libs)} lib packages, {len(docs)} docs, {len(locales)} locales, "
          f"{len(big)} big paths and CPython ({n + 1} store paths)", file=sys.stderr)


main()
