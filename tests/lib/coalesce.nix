# A program and one large shared library it names, in store paths of their
# own (t0176, shared requests). Built like elf.nix: the host's
# /usr/bin/python3 runs tests/lib/mkelf.py (the tests build with sandbox
# false). libbig.so.1 is 1.5 MB of filler after its dynamic section, so
# its start (one frame) and its rest (several) are two runs of one blob
# that two walkers claim at once when the program's header is read.
let
  mk = name: files: derivation {
    inherit name files;
    links = "";
    scripts = "";
    system = "x86_64-linux";
    builder = "/usr/bin/python3";
    args = [ ./mkelf.py ];
  };
  big = mk "coal-libbig" ''
    lib/libbig.so.1 - - 1500000
  '';
in
mk "coal-prog" ''
  bin/prog libbig.so.1 ${big}/lib 100000
''
