#!/usr/bin/python3
"""promparse.py FILE: checks FILE against the Prometheus text exposition
format 0.0.4, as far as nixoci uses it: every sample line is
NAME{LABELS} VALUE with a legal name, well-quoted labels and a float value;
every metric family has one HELP and one TYPE line before its samples;
histogram buckets are cumulative (non-decreasing in le), end with le="+Inf",
and _count equals the +Inf bucket. Exit 0 when valid, 1 with the reason."""
import re, sys

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(r"^(%s)(?:\{((?:%s)(?:,%s)*)?\})? (\S+)$" % (NAME, LABEL, LABEL))

def fail(n, line, why):
    print("line %d: %s: %s" % (n, why, line))
    sys.exit(1)

def main():
    types, helps, hist = {}, set(), {}
    for n, line in enumerate(open(sys.argv[1]), 1):
        line = line.rstrip("\n")
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            if name in helps:
                fail(n, line, "second HELP")
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            parts = line.split(" ")
            if len(parts) != 4 or parts[3] not in ("counter", "gauge", "histogram", "summary", "untyped"):
                fail(n, line, "bad TYPE")
            if parts[2] in types:
                fail(n, line, "second TYPE")
            types[parts[2]] = parts[3]
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            fail(n, line, "not a sample line")
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        try:
            v = float(value)
        except ValueError:
            fail(n, line, "bad value")
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in types and not (family in types and types[family] == "histogram"):
            fail(n, line, "sample before its TYPE")
        if family in types and types[family] == "histogram" and name != family:
            lab = re.sub(r',?le="[^"]*"', "", labels)
            h = hist.setdefault((family, lab), {"le": [], "count": None})
            if name.endswith("_bucket"):
                le = re.search(r'le="([^"]*)"', labels)
                if not le:
                    fail(n, line, "bucket without le")
                h["le"].append((float(le.group(1)), v))
            elif name.endswith("_count"):
                h["count"] = v
    for (family, lab), h in hist.items():
        les = h["le"]
        if not les or les[-1][0] != float("inf"):
            fail(0, family + "{" + lab + "}", "no +Inf bucket")
        for a, b in zip(les, les[1:]):
            if b[0] <= a[0] or b[1] < a[1]:
                fail(0, family + "{" + lab + "}", "buckets not cumulative")
        if h["count"] != les[-1][1]:
            fail(0, family + "{" + lab + "}", "_count is not the +Inf bucket")
    print("ok: %d families, %d histograms" % (len(types), len(hist)))

main()
