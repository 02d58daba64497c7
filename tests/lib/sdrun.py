#!/usr/bin/python3
"""sdrun.py UNIT INSTANCE CACHE -- CMD...: run a unit's ExecStart as systemd
would, without systemd: EnvironmentFile= read and ${VAR} expanded, %i/%f
replaced, NOTIFY_SOCKET pointing at our own datagram socket. Waits (bounded)
for READY=1, then checks that the store was open by then (CACHE/index.mdb
exists) and the mountpoint is mounted, runs CMD, sends the unit's
KillSignal= and waits for the daemon to exit. Prints one line per step;
exit 0 when every step passed. The daemon's stderr (the journal's share) is
left in $TRASH/sdrun.log."""
import os, re, shlex, signal, socket, subprocess, sys, time

def unit_section(path, name):
    out, cur = {}, None
    for line in open(path):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            cur = line.strip("[]")
            continue
        if cur == name and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out

def unescape_instance(i):
    # systemd-escape --path: "-" is "/", "\xNN" a byte
    s = re.sub(r"\\x([0-9a-f]{2})", lambda m: "\0" + m.group(1), i.replace("-", "/"))
    s = re.sub(r"\0([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), s)
    return "/" + s

def main():
    unit, inst, cache = sys.argv[1:4]
    cmd = sys.argv[sys.argv.index("--") + 1:]
    svc = unit_section(unit, "Service")
    path = unescape_instance(inst)
    spec = lambda s: s.replace("%i", inst).replace("%f", path)
    env = dict(os.environ)
    for f in svc.get("EnvironmentFile", []):
        f = spec(f.lstrip("-"))
        for line in open(f):
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v.strip('"')
    execstart = svc["ExecStart"][-1].lstrip("-@")
    words = []
    for w in shlex.split(spec(execstart)):
        # ${VAR}: one word; $VAR: split on whitespace (systemd.service(5))
        w = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), w)
        if re.fullmatch(r"\$(\w+)", w):
            words += env.get(w[1:], "").split()
        else:
            words.append(w)
    sig = getattr(signal, svc.get("KillSignal", ["SIGTERM"])[-1])
    sock_path = os.path.join(os.environ.get("TRASH", "/tmp"), "notify.sock")
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(1)
    env["NOTIFY_SOCKET"] = sock_path
    print("exec:", " ".join(shlex.quote(w) for w in words), flush=True)
    log = open(os.path.join(os.environ.get("TRASH", "/tmp"), "sdrun.log"), "w")
    p = subprocess.Popen(words, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    ok = True
    ready = False
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        try:
            msg = s.recv(4096).decode()
        except socket.timeout:
            continue
        print("notify:", msg.replace("\n", " | "), flush=True)
        fields = dict(l.split("=", 1) for l in msg.split("\n") if "=" in l)
        if fields.get("READY") == "1":
            # checked at once, before anything else can happen
            store_open = os.path.exists(os.path.join(cache, "index.mdb"))
            mounted = os.path.ismount(path)
            print("at READY=1: store open %s, mounted %s" % (store_open, mounted), flush=True)
            ok = ok and store_open and mounted
            if fields.get("MAINPID") not in (None, str(p.pid)):
                print("MAINPID %s is not the started process %d" % (fields["MAINPID"], p.pid))
                ok = False
            ready = True
            break
    if not ready:
        print("no READY=1 (daemon exit status %s)" % p.poll())
        if p.poll() is None:
            p.kill()
            p.wait()
        subprocess.call(["fusermount3", "-uz", path], stderr=subprocess.DEVNULL)
        return 1
    rc = subprocess.call(cmd)
    print("command exit status", rc, flush=True)
    ok = ok and rc == 0
    p.send_signal(sig)
    try:
        st = p.wait(30)
    except subprocess.TimeoutExpired:
        print("daemon did not exit within 30 s of", sig.name)
        p.kill()
        p.wait()
        st = None
    print("after %s: daemon exit status %s, still mounted %s" % (sig.name, st, os.path.ismount(path)))
    ok = ok and st == 0 and not os.path.ismount(path)
    try:
        while True:
            msg = s.recv(4096).decode()
            print("notify:", msg.replace("\n", " | "))
    except (socket.timeout, BlockingIOError):
        pass
    if os.path.ismount(path):
        subprocess.call(["fusermount3", "-uz", path])
    return 0 if ok else 1

sys.exit(main())
