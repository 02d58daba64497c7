#!/bin/bash
test_description='predicted imports: the modules a .pyc imports at module level come before the interpreter asks

When the daemon has the bytes of a .pyc file, it reads the imports of the
module-level code object, resolves them to files of the same store path
as the path finder would, and fetches them (one wave in one request), then
parses those in turn. A package tree compiled by the real CPython
(unchecked-hash .pyc files, so the interpreter uses them) is pushed and
mounted: reading the first module'"'"'s .pyc brings the transitive imports
in fewer requests than files; the real interpreter then imports the
package without another request; an import inside a function and one in
an except handler are not fetched; a module-level import of a missing
module resolves to nothing; a .pyc that does not parse predicts nothing
and reads right; an unmount while a wave is stalled exits clean. Bytes
are compared with `nix-store --dump`. Each module holds 200 KB of data so
that it has frames of its own, and each is a package of its own
(a directory with one .pyc), so the rule for a directory'"'"'s second miss
plays no part.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl /usr/bin/python3 cmp
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
SQ="'"
TAG=$(/usr/bin/python3 -c 'import sys; print(sys.implementation.cache_tag)')

# gets: NAR blob requests the proxy has answered so far
gets() { grep -c "GET /v2/[^ ]*/blobs/sha256:$NAR[^ ]* range=.* -> " "$PROXY_LOG" || true; }
# pyc MOD: the .pyc of package MOD (a/b for app.a.b; "" for app) below lib
pyc() { echo "lib/app${1:+/$1}/__pycache__/__init__.$TAG.pyc"; }
same_dump() {
	nix-store --dump "$MNT/${P##*/}" >"$TRASH/dump.mnt" &&
	nix-store --dump "$P" >"$TRASH/dump.want" &&
	cmp "$TRASH/dump.mnt" "$TRASH/dump.want"
}

test_expect_success 'setup: a package tree compiled by CPython, pushed, proxy' '
	src=$TRASH/pyapp &&
	mkdir -p "$src/lib" &&
	/usr/bin/python3 - "$src/lib" "$TEST_LIB_DIR" <<-\EOF &&
	import os, sys
	sys.dont_write_bytecode = True
	sys.path.insert(0, sys.argv[2])
	from pytree import Tree
	root = sys.argv[1]
	mod = Tree(root, 177).mod
	mod("app/__init__.py", """
	from . import a
	import app.b
	from app.c import d
	try:
	    import no_such_module_anywhere
	except ImportError:
	    pass
	try:
	    from . import b
	except ImportError:
	    from . import fallback
	def later():
	    from . import lazy
	""")
	mod("app/a/__init__.py", "from .. import e\n")
	mod("app/b/__init__.py", "")
	mod("app/c/__init__.py", "")
	mod("app/c/d.py", "")
	mod("app/e/__init__.py", "import json\n")
	mod("app/fallback/__init__.py", "")
	mod("app/lazy/__init__.py", "")
	# a .pyc of a known version whose code object does not parse
	os.makedirs(root + "/bad/__pycache__")
	open(root + "/bad/__init__.py", "w").close()
	tag = sys.implementation.cache_tag
	import importlib.util
	with open(root + "/bad/__pycache__/__init__.%s.pyc" % tag, "wb") as f:
	    f.write(importlib.util.MAGIC_NUMBER + bytes(12) + b"c" + b"\xff" * 300)
	EOF
	/usr/bin/python3 -m compileall -q --invalidation-mode unchecked-hash "$src/lib/app" &&
	test -f "$src/$(pyc c)" && test -f "$src/lib/app/c/__pycache__/d.$TAG.pyc" &&
	P=$(nix-store --add "$src") &&
	start_registry &&
	nixoci push --no-pack "$REG/pyimp" "$P" &&
	NAR=$(nar_digest pyimp "$P") &&
	test ${#NAR} = 64 &&
	# the run-time rule: the manifest as a pusher without the import
	# graph wrote it (t0178 tests the graph)
	h=${P##*/} && h=${h%%-*} &&
	mt=application/vnd.oci.image.manifest.v1+json &&
	curl -fsS -H "Accept: $mt" "http://$REG/v2/pyimp/manifests/$h" >man.json &&
	grep -q "dev.nixoci.imports" man.json &&
	/usr/bin/python3 -c "import json, sys
m = json.load(open(sys.argv[1]))
del m[\"annotations\"][\"dev.nixoci.imports\"]
sys.stdout.write(json.dumps(m, separators=(\",\", \":\"), sort_keys=True))" man.json >man-old.json &&
	curl -fsS -X PUT -H "Content-Type: $mt" --data-binary @man-old.json \
		"http://$REG/v2/pyimp/manifests/$h" &&
	start_faultproxy "$REG"
'

test_expect_success 'the first module brings its transitive imports: fewer requests than files' '
	mount_store "$PROXY/pyimp" "$MNT" "cache=$TRASH/c1" &&
	n0=$(gets) &&
	head -c 16 "$MNT/${P##*/}/$(pyc)" >/dev/null &&
	# a, b, c, c.d (one wave), then e (imported by a)
	test_wait_for 30 eval "[ \$(stats_field $MNT predict_import) -ge 5 ]" &&
	sleep 1 &&
	req=$(($(gets) - n0)) &&
	say "6 modules, $req requests, predict_import $(stats_field "$MNT" predict_import)" &&
	test "$(stats_field "$MNT" predict_import)" = 5 &&
	test "$req" -le 3 &&
	# the real interpreter imports them all from the .pyc files, and
	# reads nothing that is not here yet
	PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$MNT/${P##*/}/lib" \
		/usr/bin/python3 -v -c "import app, app.c.d, app.e; print(len(app.c.d.DATA))" \
		>out 2>err &&
	test "$(cat out)" = 200000 &&
	for m in "" a b c e; do
		grep -F "code object from ${SQ}$MNT/${P##*/}/$(pyc $m)${SQ}" err || return 1
	done &&
	test "$(($(gets) - n0))" = "$req" &&
	# not imported at module level: a function'"'"'s import, a handler'"'"'s
	n1=$(gets) &&
	cat "$MNT/${P##*/}/$(pyc lazy)" >/dev/null &&
	test "$(gets)" -gt "$n1" &&
	n1=$(gets) &&
	cat "$MNT/${P##*/}/$(pyc fallback)" >/dev/null &&
	test "$(gets)" -gt "$n1" &&
	same_dump &&
	test "$(stats_field "$MNT" verify_failures)" = 0 &&
	test "$(stats_field "$MNT" errors)" = 0 &&
	unmount_store "$MNT"
'

test_expect_success 'a .pyc that does not parse predicts nothing and reads right' '
	mount_store "$PROXY/pyimp" "$MNT" "cache=$TRASH/c2" &&
	f=lib/bad/__pycache__/__init__.$TAG.pyc &&
	cat "$MNT/${P##*/}/$f" >got &&
	cmp got "$P/$f" &&
	sleep 1 &&
	test "$(stats_field "$MNT" predict_import)" = 0 &&
	unmount_store "$MNT"
'

test_expect_success 'no prediction with readahead off' '
	mount_store "$PROXY/pyimp" "$MNT" "cache=$TRASH/c4,readahead=0" &&
	head -c 16 "$MNT/${P##*/}/$(pyc)" >/dev/null &&
	sleep 1 &&
	test "$(stats_field "$MNT" predict_import)" = 0 &&
	unmount_store "$MNT"
'

test_expect_success 'unmount while a wave is stalled: exit 0' '
	# the first request for the NAR (the .pyc read) passes, the wave stalls
	fault_set "mode=stall digest=$NAR every=2 count=1" &&
	mount_store "$PROXY/pyimp" "$MNT" "cache=$TRASH/c3" &&
	head -c 16 "$MNT/${P##*/}/$(pyc)" >/dev/null &&
	test_wait_for 30 eval "grep -q \"fault:stall\" \"\$PROXY_LOG\"" &&
	unmount_store "$MNT" &&
	fault_set pass
'

test_done
