# Scripts that run programs, in store paths of their own (t0179, the
# script rule of cache/elf.c). Built like tests/lib/elf.nix: the builder
# is the host's /usr/bin/python3 running tests/lib/mkelf.py (sandbox
# false); nothing here is ever run, the mount only reads it.
#
#   nix-build tests/lib/script.nix --no-out-link -> the "sx-outer" root
#
# sx-outer/bin/outer: "#!<sx-interp>/bin/interp -e", an echo that names
# sx-aside (run by nothing), "exec <sx-inner>/bin/inner". sx-interp's
# interp needs libbase.so.1 (sx-libbase). sx-inner/bin/inner: a comment
# naming sx-aside, an exec of a file sx-target does not have, then
# 'exec -a "$0" "<sx-target>/bin/tprog" "$@"', as a makeWrapper wrapper
# ends; tprog needs libtarget.so.1 (sx-libtarget).
let
  mk = name: files: mkS name files "";
  mkS = name: files: scripts: derivation {
    inherit name files scripts;
    links = "";
    system = "x86_64-linux";
    builder = "/usr/bin/python3";
    args = [ ./mkelf.py ];
  };
  base = mk "sx-libbase" ''
    lib/libbase.so.1 - - 200000
  '';
  interp = mk "sx-interp" ''
    bin/interp libbase.so.1 ${base}/lib 150000
  '';
  tlib = mk "sx-libtarget" ''
    lib/libtarget.so.1 - - 200000
  '';
  target = mk "sx-target" ''
    bin/tprog libtarget.so.1 ${tlib}/lib 150000
  '';
  aside = mk "sx-aside" ''
    bin/aside - - 100000
  '';
  inner = mkS "sx-inner" "" ''
    bin/inner #!/bin/sh\n# exec ${aside}/bin/aside\nexport X=1\n[ -x ${target}/bin/missing ] && exec ${target}/bin/missing\nexec -a "$0" "${target}/bin/tprog" "$@"
  '';
in
mkS "sx-outer" "" ''
  bin/outer #!${interp}/bin/interp -e\necho ${aside}/bin/aside\nexec ${inner}/bin/inner "$@"
''
