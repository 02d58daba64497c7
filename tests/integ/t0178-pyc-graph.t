#!/bin/bash
test_description='the import graph at push time: a module'"'"'s whole import closure in one wave

nixoci push parses each .pyc with the parser a mount uses, resolves its
module-level imports against the path'"'"'s own TOC and records the edges
in the manifest (dev.nixoci.imports). The annotation is checked against
the edges `dis` gives. A mount that reads the first module then fetches
the transitive closure of a 3-level import chain in one wave: fewer
requests than the run-time rule, which learns each level when its bytes
arrive (checked on the same artifact with the annotation removed). A
function-level import is not fetched; bytes equal `nix-store --dump`. A
packed push (format 2) carries the same annotation and a closure mount
uses it. A malformed annotation, or one naming an entry the TOC does not have, is
ignored with one log line: the path serves and the run-time rule runs.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp
test_require_nix
test_require_fuse
test_require_binaries

SQ="'"
TAG=$(/usr/bin/python3 -c 'import sys; print(sys.implementation.cache_tag)')
MT=application/vnd.oci.image.manifest.v1+json

gets() { grep -c "GET /v2/[^ ]*/blobs/sha256:$NAR[^ ]* range=.* -> " "$PROXY_LOG" || true; }
pyc() { echo "lib/app${1:+/$1}/__pycache__/__init__.$TAG.pyc"; }
same_dump() {
	nix-store --dump "$1/${P##*/}" >"$TRASH/dump.mnt" &&
	nix-store --dump "$P" >"$TRASH/dump.want" &&
	cmp "$TRASH/dump.mnt" "$TRASH/dump.want"
}
# put_imports VALUE|-: the path's manifest again under its tag, its
# dev.nixoci.imports set to VALUE (-: removed, as an older pusher wrote it)
put_imports() {
	/usr/bin/python3 -c "import json, sys
m = json.load(open(sys.argv[1]))
a = m[\"annotations\"]
a.pop(\"dev.nixoci.imports\", None)
if sys.argv[2] != \"-\":
    a[\"dev.nixoci.imports\"] = sys.argv[2]
sys.stdout.write(json.dumps(m, separators=(\",\", \":\"), sort_keys=True))" \
		"$TRASH/man-orig.json" "$1" >"$TRASH/man-new.json" &&
	curl -fsS -X PUT -H "Content-Type: $MT" --data-binary @"$TRASH/man-new.json" \
		"http://$REG/v2/pyg/manifests/$H"
}
# first_wave MNT: read the first 16 bytes of app'"'"'s .pyc and wait for the
# 5 modules of its closure; prints the NAR requests that took
first_wave() {
	local n0
	n0=$(gets) &&
	head -c 16 "$1/${P##*/}/$(pyc)" >/dev/null &&
	test_wait_for 30 eval "[ \$(stats_field $1 predict_import) -ge 5 ]" &&
	sleep 1 &&
	test "$(stats_field "$1" predict_import)" = 5 &&
	echo $(($(gets) - n0))
}
# imports_all MNT: the interpreter imports the chain from the .pyc files
# without another request; the function-level import was not fetched
imports_all() {
	local n1
	n1=$(gets) &&
	PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$1/${P##*/}/lib" \
		/usr/bin/python3 -v -c "import app; print(len(app.z.q.DATA))" >out 2>err &&
	test "$(cat out)" = 200000 &&
	for m in "" x y z w; do
		grep -F "code object from ${SQ}$1/${P##*/}/$(pyc $m)${SQ}" err || return 1
	done &&
	test "$(gets)" = "$n1" &&
	cat "$1/${P##*/}/$(pyc lazy)" >/dev/null &&
	test "$(gets)" -gt "$n1" &&
	same_dump "$1" &&
	test "$(stats_field "$1" verify_failures)" = 0 &&
	test "$(stats_field "$1" errors)" = 0
}

test_expect_success 'setup: a 3-level import chain compiled by CPython, pushed, proxy' '
	src=$TRASH/pyapp &&
	mkdir -p "$src/lib" &&
	/usr/bin/python3 - "$src/lib" "$TEST_LIB_DIR" <<-\EOF &&
	import sys
	sys.dont_write_bytecode = True
	sys.path.insert(0, sys.argv[2])
	from pytree import Tree
	root = sys.argv[1]
	mod = Tree(root, 178).mod
	mod("app/__init__.py", "import app.x\nfrom app import w\ndef later():\n    from . import lazy\n")
	mod("app/x/__init__.py", "import app.y\n")
	mod("app/y/__init__.py", "from app.z import q\n")
	mod("app/z/__init__.py", "")
	mod("app/z/q.py", "import json\n")
	mod("app/w/__init__.py", "")
	mod("app/lazy/__init__.py", "")
	EOF
	/usr/bin/python3 -m compileall -q --invalidation-mode unchecked-hash "$src/lib/app" &&
	P=$(nix-store --add "$src") &&
	H=${P##*/} && H=${H%%-*} &&
	start_registry &&
	nixoci push --no-pack "$REG/pyg" "$P" &&
	NAR=$(nar_digest pyg "$P") &&
	test ${#NAR} = 64 &&
	curl -fsS -H "Accept: $MT" "http://$REG/v2/pyg/manifests/$H" >"$TRASH/man-orig.json" &&
	start_faultproxy "$REG"
'

test_expect_success 'the annotation is the module-level import edges dis gives' '
	/usr/bin/python3 - "$P" "$TRASH/man-orig.json" <<-\EOF
	import dis, json, marshal, os, sys
	top, man = sys.argv[1], sys.argv[2]
	# TOC entry indices (format.md 4.2): breadth-first, children sorted
	idx, queue = {top: 0}, [top]
	while queue:
	    d = queue.pop(0)
	    if os.path.isdir(d) and not os.path.islink(d):
	        for n in sorted(os.listdir(d), key=os.fsencode):
	            idx[os.path.join(d, n)] = len(idx)
	            queue.append(os.path.join(d, n))
	tag = sys.implementation.cache_tag
	lib = os.path.join(top, "lib")
	def pyc_of(d, name):
	    sub = os.path.join(d, name)
	    if os.path.isfile(os.path.join(sub, "__init__.py")):
	        return sub, os.path.join(sub, "__pycache__", "__init__.%s.pyc" % tag)
	    if os.path.isfile(sub + ".py"):
	        return None, os.path.join(d, "__pycache__", "%s.%s.pyc" % (name, tag))
	    return None, None
	want = set()
	for f in idx:
	    if not f.endswith(".pyc"):
	        continue
	    code = marshal.loads(open(f, "rb").read()[16:])
	    ins = list(dis.get_instructions(code))
	    pkg = os.path.dirname(os.path.dirname(f))
	    for i, x in enumerate(ins):
	        if x.opname != "IMPORT_NAME":
	            continue
	        level, fromlist = ins[i - 2].argval, ins[i - 1].argval
	        d = lib if level == 0 else pkg
	        for _ in range(max(level - 1, 0)):
	            d = os.path.dirname(d)
	        for part in x.argval.split(".") if x.argval else []:
	            d2, p = pyc_of(d, part)
	            if p is None:
	                break
	            want.add((idx[f], idx[p]))
	            d = d2
	            if d is None:
	                break
	        for s in fromlist or ():
	            if d is not None:
	                _, p = pyc_of(d, s)
	                if p is not None:
	                    want.add((idx[f], idx[p]))
	want = {e for e in want if e[0] != e[1]}
	got = json.load(open(man))["annotations"]["dev.nixoci.imports"]
	parts = got.split(";")
	assert parts[0] == "v1", got
	have = set()
	for g in parts[1:]:
	    a, ts = g.split(":")
	    for t in ts.split(","):
	        have.add((int(a), int(t)))
	print("annotation", got, "want", sorted(want))
	assert have == want, (sorted(have), sorted(want))
	# the chain and the submodule of a from-import are in it, the
	# function-level import is not
	assert len(want) >= 6
	assert not any(t == idx[pyc_of(os.path.join(lib, "app"), "lazy")[1]] for _, t in want)
	EOF
'

test_expect_success 'with the graph: the 3-level closure in one wave, the interpreter reads nothing more' '
	MNT=$TRASH/g1 &&
	mount_store "$PROXY/pyg" "$MNT" "cache=$TRASH/cg1" &&
	REQ_GRAPH=$(first_wave "$MNT") &&
	say "with the graph: $REQ_GRAPH requests" &&
	test "$REQ_GRAPH" -le 2 &&
	imports_all "$MNT" &&
	unmount_store "$MNT"
'

test_expect_success 'an artifact without the annotation: the run-time rule, one wave per level' '
	put_imports - &&
	MNT=$TRASH/g2 &&
	mount_store "$PROXY/pyg" "$MNT" "cache=$TRASH/cg2" &&
	REQ_RT=$(first_wave "$MNT") &&
	say "run-time rule: $REQ_RT requests (graph: $REQ_GRAPH)" &&
	test "$REQ_GRAPH" -lt "$REQ_RT" &&
	imports_all "$MNT" &&
	unmount_store "$MNT" &&
	! grep -q "dev.nixoci.imports" "$TRASH/fs-g2.log"
'

test_expect_success 'a packed push (format 2) carries the same graph, and a closure mount uses it (from the closure metadata)' '
	o=$TRASH/other && mkdir -p "$o" && echo hi >"$o/f" && O=$(nix-store --add "$o") &&
	nixoci push --pack --tag gp "$REG/pygp" "$P" "$O" &&
	curl -fsS -H "Accept: $MT" "http://$REG/v2/pygp/manifests/$H" >man-p.json &&
	/usr/bin/python3 -c "import json, sys
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))
assert a[\"annotations\"][\"dev.nixoci.format\"] == \"2\", a[\"annotations\"]
assert a[\"annotations\"][\"dev.nixoci.imports\"] == b[\"annotations\"][\"dev.nixoci.imports\"]" \
		man-p.json "$TRASH/man-orig.json" &&
	MNT=$TRASH/g4 &&
	mount_store "$REG/pygp" "$MNT" "cache=$TRASH/cg4,closure=gp" &&
	head -c 16 "$MNT/${P##*/}/$(pyc)" >/dev/null &&
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_import) -ge 5 ]" &&
	sleep 1 &&
	test "$(stats_field "$MNT" predict_import)" = 5 &&
	same_dump "$MNT" &&
	unmount_store "$MNT"
'

for bad in "v2;1:2" "v1;3:2,2" "v1;03:4" "v1;9:4;3:5" "v1;3:" "v1;1:4294967296" "v1;1:99999"; do
	test_expect_success "a bad annotation ($bad): one log line, the path serves, run-time rule" '
		put_imports "$bad" &&
		MNT=$TRASH/g3 &&
		MOUNT_LOG_ALLOW="ignoring its dev.nixoci.imports" &&
		mount_store "$PROXY/pyg" "$MNT" "cache=$TRASH/cg3" &&
		first_wave "$MNT" >/dev/null &&
		imports_all "$MNT" &&
		unmount_store "$MNT" &&
		rm -rf "$TRASH/cg3" &&
		test "$(grep -c "ignoring its dev.nixoci.imports" "$TRASH/fs-g3.log")" = 1 &&
		: >"$TRASH/fs-g3.log"
	'
done

test_done
