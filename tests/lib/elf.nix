# A program and the shared libraries it names, in store paths of their own
# (t0174, library prediction). Plain `derivation`s: the builder is the
# host's /usr/bin/python3 running tests/lib/mkelf.py (the tests build with
# sandbox false), which writes small ELF files with a dynamic section. They
# are never run; references are found by Nix's scan as for any build.
#
#   nix-build tests/lib/elf.nix --no-out-link -> the "elf-prog" root
#
# elf-prog/bin/prog needs liba.so.1, libb.so and libmissing.so.9 (in no
# directory), RUNPATH $ORIGIN/../lib, liba's, libb's and libunused's lib.
# liba.so.1 is a symlink (liba.so.1.0.0); libb.so an absolute symlink into
# elf-libb-real. Both need libbase.so.1 (elf-libbase), which needs nothing.
# libunused.so.1 (elf-libunused) is in prog's RUNPATH but named by nothing.
# elf-wrapped/bin/run runs its bin/wprog (no RUNPATH, needs libhint.so.1)
# through the loader with --library-path elf-libhint's lib, as a wrapper
# script does; the root elf-prog references it.
let
  mk = name: files: links: mkS name files links "";
  mkS = name: files: links: scripts: derivation {
    inherit name files links scripts;
    system = "x86_64-linux";
    builder = "/usr/bin/python3";
    args = [ ./mkelf.py ];
  };
  base = mk "elf-libbase" ''
    lib/libbase.so.1 - - 200000
  '' "";
  liba = mk "elf-liba" ''
    lib/liba.so.1.0.0 libbase.so.1 ${base}/lib 200000
    lib/libaside.so.1 - - 300000
  '' ''
    lib/liba.so.1 liba.so.1.0.0
  '';
  libbReal = mk "elf-libb-real" ''
    lib/libb.so libbase.so.1 ${base}/lib 200000
  '' "";
  libb = mk "elf-libb" "" ''
    lib/libb.so ${libbReal}/lib/libb.so
  '';
  unused = mk "elf-libunused" ''
    lib/libunused.so.1 - - 200000
  '' "";
  hint = mk "elf-libhint" ''
    lib/libhint.so.1 - - 200000
  '' "";
  wrapped = mkS "elf-wrapped" ''
    bin/wprog libhint.so.1 - 100000
  '' "" ''
    bin/run exec ${base}/lib/ld-linux-x86-64.so.2 --library-path ${hint}/lib:${base}/lib @out@/bin/wprog "$@"
  '';
in
mkS "elf-prog" ''
  bin/prog liba.so.1,libb.so,libmissing.so.9 $ORIGIN/../lib:${liba}/lib:${libb}/lib:${unused}/lib 100000
'' "" ''
  bin/other ${wrapped}/bin/run
''
