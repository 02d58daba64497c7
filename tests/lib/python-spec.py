#!/usr/bin/python3
"""Describe the host's CPython for big.nix, as JSON on stdout.

big.nix copies the interpreter, its shared libraries, the dynamic loader and
the standard library into many store paths.  What lives where on the host
(and which libraries each extension module needs) is only known by looking,
so this script looks and big.nix stays pure Nix.

usage: python-spec.py [PYTHON]      (default /usr/bin/python3.11 or python3)
"""
import json
import os
import re
import subprocess
import sys


def ldd(path):
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    libs = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (/\S+)", line)
        if m:
            libs[m.group(1)] = os.path.realpath(m.group(2))
    return libs


def main():
    py = sys.argv[1] if len(sys.argv) > 1 else (
        "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else "/usr/bin/python3")
    py = os.path.realpath(py)
    q = subprocess.run([py, "-c", "import sys, sysconfig; print(sys.version_info[0], "
                        "sys.version_info[1]); print(sysconfig.get_path('stdlib')); "
                        "print(sysconfig.get_config_var('EXT_SUFFIX'))"],
                       capture_output=True, text=True, check=True).stdout.split("\n")
    ver = ".".join(q[0].split())
    stdlib = q[1]
    dynload = os.path.join(stdlib, "lib-dynload")
    skip = {"__pycache__", "lib-dynload", "test", "idlelib", "tkinter", "turtledemo",
            "ensurepip", "site-packages", "dist-packages", "__phello__"}
    packages, groups = [], {}
    for name in sorted(os.listdir(stdlib)):
        full = os.path.join(stdlib, name)
        if name in skip or name.startswith("config-") or os.path.islink(full):
            continue
        if os.path.isdir(full):
            if os.path.exists(os.path.join(full, "__init__.py")):
                packages.append(name)
        elif name.endswith(".py"):
            key = name[0].lower() if name[0].isalpha() else "_"
            groups.setdefault(key, []).append(name)

    libs = {}
    exe_libs = ldd(py)
    libs.update(exe_libs)
    mods = {}
    if os.path.isdir(dynload):
        for name in sorted(os.listdir(dynload)):
            if not name.endswith(".so") or "_test" in name or "xxlimited" in name:
                continue
            ml = ldd(os.path.join(dynload, name))
            libs.update(ml)
            mods[name.split(".")[0]] = {"file": name, "libs": sorted(ml)}
    lib_deps = {so: sorted(k for k in ldd(path) if k != so) for so, path in libs.items()}
    # the loader: ld.so resolves libc from --library-path, not from here
    ld = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
    spec = {
        "version": ver,
        "python": py,
        "pythonLibs": sorted(exe_libs),
        "ld": ld,
        "libs": {k: v for k, v in sorted(libs.items())},
        "libDeps": lib_deps,
        "stdlib": stdlib,
        "packages": packages,
        "moduleGroups": groups,
        "dynload": dynload,
        "modules": mods,
    }
    json.dump(spec, sys.stdout, indent=1, sort_keys=True)
    print()


main()
