"""tests/lib/pytree.py: Python package trees for the .pyc tests (t0177, t0178).

    tree = Tree(ROOT, SEED)
    tree.mod("app/__init__.py", "import app.x\n")

writes each module under ROOT: its body, then DATA, 200,000 characters drawn
from a generator seeded with SEED. The data makes every module's .pyc about
200 KB, so that modules do not share the mount's frames and the tests' request
counts say which modules were fetched; the seed keeps the tree, and so its
store path, the same from run to run.
"""
import os
import random


class Tree:
    def __init__(self, root, seed):
        self.root = root
        self.rnd = random.Random(seed)

    def mod(self, rel, body):
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = "".join(self.rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                       for _ in range(200000))
        with open(path, "w") as f:
            f.write(body + "\nDATA = %r\n" % data)
