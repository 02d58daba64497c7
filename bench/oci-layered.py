#!/usr/bin/python3
"""Lay a Nix closure out as an OCI image the way nixpkgs' buildLayeredImage does.

    oci-layered.py [--max-layers 100] [--level 6] [--jobs 2] ROOT... OUTDIR
    oci-layered.py --uncompressed [--jobs 2] GZDIR OUTDIR

Popularity of a store path = how many paths of the closure reference it
(referencesByPopularity). The max-layers - 1 most popular paths get a gzip
tar layer each; every other path goes into the last layer. Each layer holds
nix/, nix/store/ and the store paths as ./nix/store/<base>/..., owned by 0:0,
in the store's own modes and mtimes. OUTDIR becomes an OCI image layout
(oci-layout, index.json, blobs/sha256/...) that skopeo reads as oci:OUTDIR:latest.
Done once per closure: OUTDIR/root records which closure it holds, and a
second call for the same ROOT returns at once. Several ROOTs lay out their
joint closure (bench/estargz.sh: the JDK's and CPython's); the image's Cmd
is the first ROOT's bin/python3.

--uncompressed makes OUTDIR the same image as the gzip one in GZDIR (made
by the first form) with every layer gunzipped: the tar itself, media type
application/vnd.oci.image.layer.v1.tar, the same config (its diff_ids are
the tars' digests, checked here). That is the image Nix users push:
dockerTools.streamLayeredImage and nix2container hand skopeo uncompressed
layers, which skopeo compresses on the way to the registry (bench/push.sh,
skopeo-raw). It is made from GZDIR rather than from the store so that both
images hold byte for byte the same tars, whatever tarfile does. Kept like
the gzip one: OUTDIR/root records GZDIR's manifest digest, and a second
call for the same GZDIR returns at once.
"""
import argparse
import gzip
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import tarfile
import time


class HashWriter:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b) if self.f else len(b)

    def flush(self):
        if self.f:
            self.f.flush()


def closure_graph(roots):
    out = subprocess.run(["nix", "--extra-experimental-features", "nix-command",
                          "path-info", "--json", "-r"] + roots, check=True,
                         capture_output=True, text=True).stdout
    info = json.loads(out)
    return {p["path"]: [r for r in p.get("references", []) if r != p["path"]] for p in info}


def by_popularity(graph):
    pop = {p: 0 for p in graph}
    for refs in graph.values():
        for r in refs:
            pop[r] += 1
    # most referenced first; ties by name so the layout is reproducible
    return sorted(graph, key=lambda p: (-pop[p], p)), pop


def tar_filter(ti):
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def make_layer(args):
    paths, blobdir, level, idx = args
    tmp = os.path.join(blobdir, f".layer-{idx}.tmp")
    with open(tmp, "wb") as raw:
        outer = HashWriter(raw)
        with gzip.GzipFile(fileobj=outer, mode="wb", compresslevel=level, mtime=0) as gz:
            inner = HashWriter(gz)
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for d in ("nix", "nix/store"):
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1
                    tar.addfile(ti)
                for p in paths:
                    tar.add(p, arcname=p.lstrip("/"), recursive=True, filter=tar_filter)
    digest = outer.h.hexdigest()
    os.rename(tmp, os.path.join(blobdir, digest))
    return idx, digest, outer.n, "sha256:" + inner.h.hexdigest(), inner.n


def gunzip_layer(args):
    src, blobdir, diff_id = args
    tmp = os.path.join(blobdir, ".layer-" + diff_id.split(":")[1] + ".tmp")
    with open(tmp, "wb") as raw, gzip.open(src, "rb") as gz:
        out = HashWriter(raw)
        while True:
            b = gz.read(1 << 20)
            if not b:
                break
            out.write(b)
    digest = "sha256:" + out.h.hexdigest()
    if digest != diff_id:
        os.unlink(tmp)
        raise SystemExit(f"oci-layered: {src} gunzips to {digest}, its diff_id is {diff_id}")
    os.rename(tmp, os.path.join(blobdir, out.h.hexdigest()))
    return digest, out.n


def uncompressed(gzdir, outdir, jobs):
    """The image in gzdir with its layers gunzipped, in outdir."""
    def blob(digest):
        return os.path.join(gzdir, "blobs", "sha256", digest.split(":")[1])
    index = json.load(open(os.path.join(gzdir, "index.json")))
    mdesc = index["manifests"][0]
    stamp = os.path.join(outdir, "root")
    want = "uncompressed " + mdesc["digest"]
    if os.path.exists(stamp) and open(stamp).read().strip() == want:
        print(f"oci-layered: {outdir} already holds {want}", file=sys.stderr)
        return
    t0 = time.time()
    manifest = json.load(open(blob(mdesc["digest"])))
    config_bytes = open(blob(manifest["config"]["digest"]), "rb").read()
    diff_ids = json.loads(config_bytes)["rootfs"]["diff_ids"]
    assert len(diff_ids) == len(manifest["layers"])
    subprocess.run(["rm", "-rf", outdir], check=True)
    blobdir = os.path.join(outdir, "blobs", "sha256")
    os.makedirs(blobdir)
    put_blob(blobdir, config_bytes)
    jobs_ = [(blob(l["digest"]), blobdir, d) for l, d in zip(manifest["layers"], diff_ids)]
    with multiprocessing.Pool(jobs) as pool:
        layers = pool.map(gunzip_layer, jobs_, chunksize=1)
    manifest["layers"] = [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                           "digest": d, "size": n} for d, n in layers]
    md, ms = put_blob(blobdir, json.dumps(manifest, sort_keys=True).encode())
    write_layout(outdir, md, ms)
    with open(stamp, "w") as f:
        f.write(want + "\n")
    print(f"oci-layered: {len(layers)} uncompressed layers, "
          f"{sum(n for _, n in layers)} bytes tar, {time.time() - t0:.1f}s", file=sys.stderr)


def write_layout(outdir, md, ms):
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + md, "size": ms,
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    with open(os.path.join(outdir, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(outdir, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


def put_blob(blobdir, data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobdir, d), "wb") as f:
        f.write(data)
    return d, len(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-layers", type=int, default=100)
    ap.add_argument("--level", type=int, default=6)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--uncompressed", action="store_true")
    ap.add_argument("root", nargs="+")
    ap.add_argument("outdir")
    a = ap.parse_args()
    if a.uncompressed:
        if len(a.root) != 1:
            ap.error("--uncompressed takes one GZDIR and OUTDIR")
        return uncompressed(a.root[0], a.outdir, a.jobs)
    roots = [os.path.realpath(r) for r in a.root]
    root = " ".join(roots)
    stamp = os.path.join(a.outdir, "root")
    if os.path.exists(stamp) and open(stamp).read().strip() == root:
        print(f"oci-layered: {a.outdir} already holds {root}", file=sys.stderr)
        return
    t0 = time.time()
    subprocess.run(["rm", "-rf", a.outdir], check=True)
    blobdir = os.path.join(a.outdir, "blobs", "sha256")
    os.makedirs(blobdir)
    graph = closure_graph(roots)
    order, pop = by_popularity(graph)
    n = a.max_layers - 1
    groups = [[p] for p in order[:n]] + ([order[n:]] if len(order) > n else [])
    # biggest first, so the big last layer does not start at the end
    jobs = [(g, blobdir, a.level, i) for i, g in enumerate(groups)]
    jobs.sort(key=lambda j: -len(j[0]))
    layers = [None] * len(groups)
    with multiprocessing.Pool(a.jobs) as pool:
        for done, (idx, digest, size, diff_id, usize) in enumerate(
                pool.imap_unordered(make_layer, jobs), 1):
            layers[idx] = (digest, size, diff_id, usize)
            print(f"oci-layered: layer {done}/{len(groups)}", file=sys.stderr, flush=True)
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": [os.path.join(roots[0], "bin", "python3")],
                   "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [l[2] for l in layers]},
    }
    cd, cs = put_blob(blobdir, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + l[0], "size": l[1]} for l in layers],
    }
    md, ms = put_blob(blobdir, json.dumps(manifest, sort_keys=True).encode())
    write_layout(a.outdir, md, ms)
    with open(stamp, "w") as f:
        f.write(root + "\n")
    gz = sum(l[1] for l in layers)
    raw = sum(l[3] for l in layers)
    print(f"oci-layered: {len(order)} paths in {len(layers)} layers "
          f"({len(groups[-1])} in the last), {raw} bytes tar, {gz} bytes gzip, "
          f"{time.time() - t0:.1f}s", file=sys.stderr)


main()
