#!/usr/bin/python3
"""tests/lib/loadgen.py: the load test's helpers (t0420-load.t).

    loadgen.py tree DIR N          write N files (deterministic contents and sizes)
                                   in DIR/dNN/fNNNN, and DIR/../sums (sha256 per file)
    loadgen.py read ROOT SUMS THREADS SECONDS PID
                                   THREADS readers pick random files under ROOT for
                                   SECONDS, compare each with SUMS; VmRSS of PID is
                                   sampled every 0.5 s. Prints one summary line:
                                   "reads R bytes B errors E mismatches M rss_max_kb K
                                    rss_start_kb S seconds T"
"""
import hashlib
import os
import random
import sys
import threading
import time


def tree(d, n):
    rnd = random.Random(7)
    sums = []
    for i in range(n):
        sub = os.path.join(d, "d%02d" % (i % 100))
        os.makedirs(sub, exist_ok=True)
        # mostly small files, a few of several frames
        size = rnd.choice([0, 1, 100, 1000, 3000, 8000, 20000]) if i % 1000 else 3 << 20
        data = (b"%d:" % i) + rnd.randbytes(size)
        name = "d%02d/f%05d" % (i % 100, i)
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        sums.append("%s %s\n" % (hashlib.sha256(data).hexdigest(), name))
    with open(os.path.join(os.path.dirname(os.path.abspath(d)), "sums"), "w") as f:
        f.writelines(sums)


def rss(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return -1
    return 0


def read(root, sums, nthreads, seconds, pid):
    files = []
    with open(sums) as f:
        for line in f:
            h, name = line.split()
            files.append((name, h))
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    st = {"reads": 0, "bytes": 0, "errors": 0, "mismatches": 0}
    errs = []

    def reader(k):
        rnd = random.Random(k)
        r = b = e = m = 0
        while time.monotonic() < stop:
            name, h = files[rnd.randrange(len(files))]
            try:
                with open(os.path.join(root, name), "rb") as f:
                    data = f.read()
                r += 1
                b += len(data)
                if hashlib.sha256(data).hexdigest() != h:
                    m += 1
                    errs.append("mismatch " + name)
            except OSError as ex:
                e += 1
                errs.append("%s: %s" % (name, ex))
        with lock:
            for key, v in (("reads", r), ("bytes", b), ("errors", e), ("mismatches", m)):
                st[key] += v

    rss0 = rss(pid)
    rmax = rss0
    t0 = time.monotonic()
    th = [threading.Thread(target=reader, args=(k,)) for k in range(nthreads)]
    for t in th:
        t.start()
    while any(t.is_alive() for t in th):
        rmax = max(rmax, rss(pid))
        time.sleep(0.5)
    for t in th:
        t.join()
    for e in errs[:10]:
        print("error:", e)
    print("reads %d bytes %d errors %d mismatches %d rss_max_kb %d rss_start_kb %d seconds %.1f"
          % (st["reads"], st["bytes"], st["errors"], st["mismatches"], rmax, rss0,
             time.monotonic() - t0))


if __name__ == "__main__":
    if sys.argv[1] == "tree":
        tree(sys.argv[2], int(sys.argv[3]))
    else:
        read(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]))
