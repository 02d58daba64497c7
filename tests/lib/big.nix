# The big closure: the host's CPython copied into the store, split the way a
# real Nix store splits software.  Well over 100 store paths:
#   lib-<soname>        one shared library each, referencing the libraries it needs
#   ld-linux            the dynamic loader
#   python<ver>-bin     the interpreter, referencing ld-linux and its libraries
#   python<ver>-<pkg>   one per top-level stdlib package
#   python<ver>-mods-<c> single-module files grouped by first letter
#   python<ver>-ext-<m> one per extension module, referencing its libraries
#   python<ver>-env     the root: a buildEnv-like tree of symlinks (PYTHONHOME)
#                       and bin/python3, a wrapper that starts the interpreter
#                       through the loader with --library-path, so it needs
#                       nothing outside /nix/store
#
#   spec=$(tests/lib/python-spec.py); nix-build tests/lib/big.nix --arg spec "$spec"
# where spec is a JSON file written by python-spec.py (host paths, ldd output).
{ spec, busyboxDir ? "/usr/bin" }:
let
  s = builtins.fromJSON (builtins.readFile spec);
  bb = import ./busybox.nix { inherit busyboxDir; };
  inherit (bb) busybox;
  lib = {
    attrNames = builtins.attrNames;
    concatMap = f: l: builtins.concatLists (map f l);
    concatStrings = builtins.concatStringsSep "";
  };
  mk = name: script: derivation {
    inherit name;
    system = "x86_64-linux";
    builder = "${bb.src}/busybox";
    args = [ "sh" "-e" "-c" script ];
    PATH = "${busybox}/bin";
  };
  hostFile = path: name: builtins.path { path = /. + path; inherit name; };
  # Store names allow [A-Za-z0-9+._?=-]
  clean = n: builtins.replaceStrings [ "_" ] [ "-" ] n;
  noCache = p: t: baseNameOf p != "__pycache__";
  pv = "python${s.version}";

  libs = builtins.listToAttrs (map (so: {
    name = so;
    value = mk "lib-${so}" ''
      mkdir -p $out/lib $out/nix-support
      cp ${hostFile s.libs.${so} so} $out/lib/${so}
      chmod 0555 $out/lib/${so}
      echo ${toString (map (d: libs.${d}) (s.libDeps.${so} or []))} > $out/nix-support/lib-deps
    '';
  }) (lib.attrNames s.libs));

  ld = mk "ld-linux-x86-64" ''
    mkdir -p $out/lib
    cp ${hostFile s.ld "ld-linux-x86-64.so.2"} $out/lib/ld-linux-x86-64.so.2
    chmod 0555 $out/lib/ld-linux-x86-64.so.2
  '';

  python = mk "${pv}-bin" ''
    mkdir -p $out/bin $out/nix-support
    cp ${hostFile s.python "python"} $out/bin/${pv}
    chmod 0555 $out/bin/${pv}
    echo ${ld} ${toString (map (d: libs.${d}) s.pythonLibs)} > $out/nix-support/runtime-deps
  '';

  packages = map (p: {
    name = p;
    drv = mk "${pv}-${clean p}" ''
      mkdir -p $out
      cp -r ${builtins.path { path = /. + "${s.stdlib}/${p}"; name = "${pv}-${clean p}-src"; filter = noCache; }} $out/${p}
    '';
  }) s.packages;

  groups = map (g: {
    files = s.moduleGroups.${g};
    drv = mk "${pv}-mods-${clean g}" ''
      mkdir -p $out
      cp ${builtins.path {
        path = /. + s.stdlib;
        name = "${pv}-mods-${clean g}-src";
        filter = p: t: t != "directory" && builtins.elem (baseNameOf p) s.moduleGroups.${g};
      }}/* $out/
    '';
  }) (lib.attrNames s.moduleGroups);

  exts = map (m: let mod = s.modules.${m}; in {
    file = mod.file;
    drv = mk "${pv}-ext-${clean m}" ''
      mkdir -p $out/lib-dynload $out/nix-support
      cp ${hostFile "${s.dynload}/${mod.file}" (clean m)} $out/lib-dynload/${mod.file}
      chmod 0555 $out/lib-dynload/${mod.file}
      echo ${toString (map (d: libs.${d}) mod.libs)} > $out/nix-support/lib-deps
    '';
  }) (lib.attrNames s.modules);

  env = mk "${pv}-env" ''
    l=$out/lib/${pv}
    mkdir -p $out/bin $l/lib-dynload
    ${lib.concatStrings (map (so: "ln -s ${libs.${so}}/lib/${so} $out/lib/${so}\n") (lib.attrNames s.libs))}
    ${lib.concatStrings (map (p: "ln -s ${p.drv}/${p.name} $l/${p.name}\n") packages)}
    ${lib.concatStrings (lib.concatMap (g: map (f: "ln -s ${g.drv}/${f} $l/${f}\n") g.files) groups)}
    ${lib.concatStrings (map (e: "ln -s ${e.drv}/lib-dynload/${e.file} $l/lib-dynload/${e.file}\n") exts)}
    cat > $out/bin/python3 <<EOS
    #!${busybox}/bin/sh
    # only /nix/store is needed: the loader and every library come from here
    export PYTHONHOME=$out PYTHONDONTWRITEBYTECODE=1
    exec ${ld}/lib/ld-linux-x86-64.so.2 --library-path $out/lib ${python}/bin/${pv} "\$@"
    EOS
    chmod 0555 $out/bin/python3
  '';
in
env
