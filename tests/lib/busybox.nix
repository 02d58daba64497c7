# A static busybox from the host, as two store paths:
#   src      the imported binary alone ($src/busybox); it is every builder,
#            because busybox picks its applet from argv[0] = "busybox"
#   busybox  $out/bin/busybox plus one symlink per applet the tests use
{ busyboxDir ? "/usr/bin" }:
rec {
  src = builtins.path {
    name = "busybox-static-src";
    path = /. + busyboxDir;
    filter = p: t: baseNameOf p == "busybox";
  };
  busybox = derivation {
    name = "busybox-static-1.35";
    system = "x86_64-linux";
    builder = "${src}/busybox";
    args = [ "sh" "-e" "-c" ''
      ${src}/busybox mkdir -p $out/bin
      ${src}/busybox cp ${src}/busybox $out/bin/busybox
      for a in sh cat echo ls mkdir cp ln chmod printf seq wc head tail sed grep \
               sort mv rm true false test env id sleep readlink dirname basename; do
        ${src}/busybox ln -s busybox $out/bin/$a
      done
    '' ];
  };
}
