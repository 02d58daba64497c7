#!/usr/bin/python3
# tests/lib/restart-reader.py MODE PATH SHA256 STOPFILE RESULT: one reader of
# t0700-restart. Until STOPFILE exists, reads PATH whole and checks its
# SHA-256, then drops the file's page cache so the next pass asks the daemon
# again. MODE: open (one descriptor held across every restart), mmap (one
# descriptor, a fresh mapping per pass), reopen (open and close each pass).
# Writes "passes errors" to RESULT; every error is also printed on stderr.
import hashlib
import mmap
import os
import sys

mode, path, want, stop, result = sys.argv[1:6]
passes = errors = 0
held = open(path, 'rb') if mode in ('open', 'mmap') else None
while not os.path.exists(stop):
    try:
        if mode == 'mmap':
            m = mmap.mmap(held.fileno(), 0, prot=mmap.PROT_READ)
            got = hashlib.sha256(m).hexdigest()
            m.close()
            fd = held.fileno()
        elif mode == 'open':
            held.seek(0)
            got = hashlib.sha256(held.read()).hexdigest()
            fd = held.fileno()
        else:
            with open(path, 'rb') as f:
                got = hashlib.sha256(f.read()).hexdigest()
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            fd = None
        if got != want:
            errors += 1
            print('%s: sha256 %s, want %s' % (path, got, want), file=sys.stderr)
        passes += 1
        if fd is not None:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as e:
        errors += 1
        print('%s: %s' % (path, e), file=sys.stderr)
with open(result, 'w') as f:
    f.write('%d %d\n' % (passes, errors))
