# The benchmark closure: ~1700 store paths, ~2.4 GiB of real files from this
# machine, with references between them (see spec.py for what goes where).
# No nixpkgs: every builder is the host's static busybox, and since the build
# runs unsandboxed (nix-build --option sandbox false) the builders copy the
# host files straight into $out. The store paths therefore depend on the spec
# (which files, which names), not on the bytes: a host upgrade keeps the old
# build until the spec changes or the paths are collected.
#
#   nix-build bench/closure/closure.nix --arg spec spec.json
# where spec.json is bench/closure/spec.py's output.
{ spec, busyboxDir ? "/usr/bin" }:
let
  s = builtins.fromJSON (builtins.readFile spec);
  bb = import ../../tests/lib/busybox.nix { inherit busyboxDir; };
  system = "x86_64-linux";

  # every applet, so the builders can use find, readlink and friends
  busybox = derivation {
    name = "busybox-static-full";
    inherit system;
    builder = "${bb.src}/busybox";
    args = [ "sh" "-e" "-c" ''
      ${bb.src}/busybox mkdir -p $out/bin
      ${bb.src}/busybox cp ${bb.src}/busybox $out/bin/busybox
      for a in $(${bb.src}/busybox --list); do
        [ "$a" = busybox ] || ${bb.src}/busybox ln -s busybox $out/bin/$a
      done
    '' ];
  };

  mk = name: script: extra: derivation ({
    inherit name system;
    builder = "${busybox}/bin/sh";
    args = [ "-e" "-c" script ];
    PATH = "${busybox}/bin";
  } // extra);

  # nix-support/runtime-deps holds the store paths of the dependencies, which
  # is what makes Nix record them as references
  depsLine = ds: "mkdir -p $out/nix-support; echo ${toString ds} > $out/nix-support/runtime-deps";

  libs = builtins.mapAttrs (pkg: v: mk "lib-${v.name}" ''
    mkdir -p $out/lib
    while read -r f; do
      [ -n "$f" ] || continue
      case $f in */*) d=$out/lib/''${f%/*} ;; *) d=$out/lib ;; esac
      mkdir -p "$d"
      cp -a "${s.libdir}/$f" "$d/"
    done < "$filesPath"
    ${depsLine (map (d: libs.${d}) v.deps)}
  '' {
    files = builtins.concatStringsSep "\n" v.files + "\n";
    passAsFile = [ "files" ];
  }) s.libs;

  docs = builtins.mapAttrs (d: name: mk "doc-${name}" ''
    mkdir -p $out/share/doc
    cp -a "/usr/share/doc/${d}" $out/share/doc/
  '' { }) s.docs;

  locales = builtins.mapAttrs (d: name: mk "locale-${name}" ''
    mkdir -p $out/share/locale
    cp -a "/usr/share/locale/${d}" $out/share/locale/
  '' { }) s.locales;

  # resolve: replace every symlink by a copy of what it points to on the
  # host (the JDK links into /usr/share and /etc), dropping dangling ones
  big = builtins.mapAttrs (name: v: mk name ''
    cp -a "${v.path}" $out
    ${if v.resolve then ''
      cd $out
      find . -type l > $TMPDIR/links
      while read -r l; do
        t=$(readlink -f "${v.path}/$l" || true)
        rm "$l"
        if [ -n "$t" ] && [ -e "$t" ]; then cp -aL "$t" "$l"; fi
      done < $TMPDIR/links
    '' else ""}
    ${depsLine (map (d: libs.${d}) v.deps)}
  '' { }) s.big;

  # CPython as nixpkgs ships it: bin/ and the whole lib/pythonX.Y in one
  # path. The sources get mtime 1 before compileall, as Nix gives them in the
  # store, so the bytecode is valid there and imports read only the .pyc
  # files (nixpkgs gets the same result from its deterministic-build patch).
  # The wrapper starts the interpreter with the loader and libraries of the
  # lib-<pkg> paths, which is what nixpkgs' RPATHs amount to.
  py = s.python;
  pyLibPath = builtins.concatStringsSep ":" (map (d: "${libs.${d}}/lib") py.deps);
  python = mk py.name ''
    mkdir -p $out/bin $out/lib
    cp "${py.exe}" $out/bin/${py.name}
    chmod 0555 $out/bin/${py.name}
    cp -r "${py.stdlib}" $out/lib/${py.name}
    find $out/lib -name __pycache__ -type d | xargs rm -rf
    find $out/lib -name '*.py' -type f -exec touch -d @1 {} +
    "${py.exe}" -I -m compileall -q -j 0 $out/lib/${py.name} >/dev/null
    cat > $out/bin/python3 <<EOS
    #!${busybox}/bin/sh
    exec ${libs.libc6}/lib/ld-linux-x86-64.so.2 --library-path ${pyLibPath} $out/bin/${py.name} "\$@"
    EOS
    chmod 0555 $out/bin/python3
    ${depsLine (map (d: libs.${d}) py.deps)}
  '' { };

  all = builtins.attrValues libs ++ builtins.attrValues docs ++ builtins.attrValues locales
    ++ builtins.attrValues big ++ [ python ];
in
mk "bench-closure" ''
  mkdir -p $out/bin $out/paths
  ln -s ${big.openjdk-17}/bin/java $out/bin/java
  ${if s.big ? temurin-25 then "ln -s ${big.temurin-25}/bin/java $out/bin/java25" else ""}
  ln -s ${python}/bin/python3 $out/bin/python3
  for p in $(cat "$pathsPath"); do ln -s "$p" $out/paths/; done
'' {
  paths = toString all;
  passAsFile = [ "paths" ];
}
