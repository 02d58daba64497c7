# The small closure of the demo and the basic tests. Plain `derivation`s, no
# nixpkgs: every builder is a static busybox imported from the host, so the
# programs also run inside a sandbox that sees nothing but /nix/store.
#
#   nix-build tests/lib/small.nix --no-out-link      -> the "hello" root
#
# Shapes covered: executables and plain files, relative and absolute symlinks,
# nested and empty directories, a file larger than one NAR frame (1 MiB), a
# self-reference, a store path that is a single file and one that is a symlink.
{ busyboxDir ? "/usr/bin" }:
let
  bb = import ./busybox.nix { inherit busyboxDir; };
  inherit (bb) busybox;
  mk = name: script: derivation {
    inherit name;
    system = "x86_64-linux";
    builder = "${bb.src}/busybox";
    args = [ "sh" "-e" "-c" script ];
    PATH = "${busybox}/bin";
  };

  note = builtins.toFile "hello-note.txt" "a store path that is one regular file\n";

  data = mk "hello-data-1.0" ''
    d=$out/share/hello
    mkdir -p $d/empty $d/deep/a/b/c $out/bin $out/lib/nothing-here
    echo "Hello from a lazily mounted /nix/store!" > $d/greeting.txt
    printf 'nested\n' > $d/deep/a/b/c/leaf.txt
    : > $d/zero-bytes
    # larger than one 1 MiB frame, deterministic
    seq 1 400000 > $d/numbers.txt
    ln -s greeting.txt $d/link-relative
    ln -s ../../share/hello/deep/a $d/deep/link-up
    ln -s $out/share/hello/greeting.txt $d/link-self-absolute
    ln -s /nonexistent/dangling $d/link-dangling
    printf '#!${busybox}/bin/sh\necho helper ran\n' > $out/bin/helper
    chmod 0755 $out/bin/helper
    printf 'no newline at the end' > $d/no-final-newline
    cp ${note} $d/note-copy.txt
  '';

  shareLink = mk "hello-share-link" ''
    ln -s ${data}/share $out
  '';

  hello = mk "hello-2.12" ''
    mkdir -p $out/bin $out/share/doc
    cat > $out/bin/hello <<'EOS'
    #!${busybox}/bin/sh
    PATH=${busybox}/bin
    cat ${data}/share/hello/greeting.txt
    ${data}/bin/helper >/dev/null
    # reads one line of a 2.6 MB file: only its first frame is fetched
    echo "hello: numbers.txt starts with $(head -n 1 ${shareLink}/hello/numbers.txt), note: $(cat ${note})"
    EOS
    chmod 0555 $out/bin/hello
    echo ${note} > $out/share/doc/refs
  '';
in
hello
